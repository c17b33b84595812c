"""A tiny reranker: a random BertForSequenceClassification (one label) with a WordPiece tokenizer trained here,
saved with transformers' own classes and converted by llama.cpp's converter. Cached like fixtures.py's builders.

The converter drops BERT's pooler (a dense layer and tanh over [CLS]) that transformers applies before the
classifier; llama.cpp's ranking head is exactly that (`cls`, tanh, then `cls.output`), so the copy it converts
names the pooler as the head's first layer, and llama.cpp computes what transformers does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from fixtures import _build_once

WORDS = ("the a of to in is on for with and cat dog bird fish sat mat tree sky blue red green runs swims flies "
         "water river paris france capital city berlin germany rome italy weather rain sun cold hot what where "
         "which who how food bread cheese apple eats").split()


def reranker_checkpoint() -> Path:
    def build(tmp: Path) -> None:
        import torch
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
        from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        pieces = sorted({c for w in WORDS for c in w}) + sorted({"##" + c for w in WORDS for c in w})
        vocab = {t: i for i, t in enumerate(dict.fromkeys([*specials, *pieces, *WORDS, "?", ".", ","]))}
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        cls, sep = vocab["[CLS]"], vocab["[SEP]"]
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
                          mask_token="[MASK]", do_lower_case=True).save_pretrained(tmp)
        config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                            max_position_embeddings=512, type_vocab_size=2, num_labels=1, initializer_range=0.2,
                            architectures=["BertForSequenceClassification"])
        torch.manual_seed(0)
        BertForSequenceClassification(config).eval().save_pretrained(tmp)

    return _build_once("reranker-bert-tiny-v2-hf", build)


def reranker_gguf() -> Path:
    """reranker_checkpoint() as llama.cpp's converter writes it (f32), its pooler named as the ranking head's first layer."""
    from safetensors.torch import load_file, save_file

    from arch_fixtures import llamacpp_reference_gguf

    src = reranker_checkpoint()

    def build(tmp: Path) -> None:
        for f in src.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, tmp / f.name)
        names = {"bert.pooler.dense.": "classifier.dense.", "classifier.weight": "classifier.out_proj.weight", "classifier.bias": "classifier.out_proj.bias"}
        tensors = {}
        for key, value in load_file(src / "model.safetensors").items():
            tensors[next((key.replace(a, b) for a, b in names.items() if key.startswith(a)), key)] = value
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})

    # the WordPiece pre-tokenizer trained here is not in the converter's table of known ones; BERT's vocabulary ignores it
    return llamacpp_reference_gguf("reranker-bert-tiny", _build_once("reranker-bert-tiny-v2-for-llamacpp", build), "f32", pre="default")


def transformers_scores(pairs: list[list[int]], type_ids: list[list[int]]) -> list[float]:
    """The checkpoint's logit for each pair's token ids, as transformers computes it."""
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(reranker_checkpoint()).eval()
    with torch.no_grad():
        return [float(model(input_ids=torch.tensor([ids]), token_type_ids=torch.tensor([tt])).logits[0, 0]) for ids, tt in zip(pairs, type_ids)]


if __name__ == "__main__":
    print(json.dumps({"hf": str(reranker_checkpoint()), "gguf": str(reranker_gguf())}))
