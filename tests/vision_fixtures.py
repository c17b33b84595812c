"""A tiny Gemma 3 vision checkpoint (Gemma3ForConditionalGeneration, random seeded weights) with its tokenizer
and processor files, and what llama.cpp's own converter makes of it (text GGUF + mmproj GGUF). Cached like
fixtures.py's builders.

Shapes are what llama.cpp's clip code for Gemma 3 accepts: a 64x64 image in 8x8 patches (8 per side) pooled
by 2 per side to 16 image tokens, written as the projector's scale factor by the converter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from arch_fixtures import GEMMA_SPECIALS, _copy_tokenizer, write_gemma_tokenizer
from fixtures import _build_once, llamacpp_converter

# Gemma 3's image markers; the real model has them at 255999, 256000 and 262144.
IMAGE_SPECIALS = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
BOI_ID, EOI_ID, IMAGE_ID = (len(GEMMA_SPECIALS) + i for i in range(3))
IMAGE_SIZE, PATCH_SIZE, MM_TOKENS_PER_IMAGE = 64, 8, 16


def gemma3_vision_tokenizer_dir() -> Path:
    """The Gemma tokenizer fixture's style with the image markers as special tokens after the turn markers."""

    def build(tmp: Path) -> None:
        write_gemma_tokenizer(tmp, GEMMA_SPECIALS + IMAGE_SPECIALS)
        cfg = json.loads((tmp / "tokenizer_config.json").read_text())
        # the names Gemma3Processor reads from the tokenizer
        cfg["extra_special_tokens"] = dict(zip(("boi_token", "eoi_token", "image_token"), IMAGE_SPECIALS))
        (tmp / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False))

    return _build_once("gemma3-vision-tokenizer", build)


def gemma3_vision_checkpoint() -> Path:
    """A tiny Gemma3ForConditionalGeneration (bf16): the Gemma 3 text fixture's shape (5 sliding layers to 1
    global, q/k norms) under text_config, a 2-layer SigLIP vision tower (width 32) and Gemma 3's projector
    (average pool, soft-embedding norm, input projection to the text width); tokenizer, preprocessor and
    processor configs saved by transformers' own Gemma3Processor."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import (
            AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
            Gemma3TextConfig, SiglipVisionConfig,
        )

        text = Gemma3TextConfig(
            vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=6, num_attention_heads=4,
            num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
            max_position_embeddings=32768,
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            pad_token_id=0, eos_token_id=[1, 6], bos_token_id=2,
        )
        vision = SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE, vision_use_head=False, layer_norm_eps=1e-6,
        )
        config = Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
            boi_token_index=BOI_ID, eoi_token_index=EOI_ID, image_token_index=IMAGE_ID,
            architectures=["Gemma3ForConditionalGeneration"],
        )
        torch.manual_seed(0)
        model = Gemma3ForConditionalGeneration(config)
        with torch.no_grad():  # as _save_random_model does: norms near 1, larger weights than the default init
            for p in model.parameters():
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.1 * torch.randn_like(p))
        model.to(torch.bfloat16).save_pretrained(tmp)
        _hub_vision_names(tmp / "model.safetensors")

        tok_dir = gemma3_vision_tokenizer_dir()
        images = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        processor = Gemma3Processor(image_processor=images, tokenizer=AutoTokenizer.from_pretrained(tok_dir),
                                    image_seq_length=MM_TOKENS_PER_IMAGE)
        processor.save_pretrained(tmp)
        images.save_pretrained(tmp)  # preprocessor_config.json too, as Google's repos ship it
        _copy_tokenizer(tok_dir, tmp)  # with tokenizer.model, which the processor does not save

    return _build_once("gemma3-vision-tiny-hf", build)


def _hub_vision_names(path: Path) -> None:
    """transformers 5 saves the vision tower as `vision_tower.*`; Google's repos (and what llama.cpp's converter
    maps) have `vision_tower.vision_model.*`, which transformers 5 still loads."""
    from safetensors.torch import load_file, save_file

    prefix = "vision_tower."
    tensors = load_file(path)
    renamed = {f"{prefix}vision_model.{k[len(prefix):]}" if k.startswith(prefix) else k: v for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def llamacpp_reference_pair(src: Path, name: str, outtype: str) -> tuple[Path, Path]:
    """The text GGUF and the mmproj GGUF llama.cpp's own converter writes for the checkpoint `src` at `outtype`,
    cached as `llamacpp-ref-NAME-OUTTYPE`."""
    script = llamacpp_converter()

    def build(tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(script.parent / "gguf-py")}
        for extra, out in (([], "text.gguf"), (["--mmproj"], "mmproj.gguf")):
            cmd = [sys.executable, str(script), str(src), "--outtype", outtype, "--outfile", str(tmp / out), *extra]
            subprocess.run(cmd, check=True, env=env, capture_output=True)

    folder = _build_once(f"llamacpp-ref-{name}-{outtype}", build)
    return folder / "text.gguf", folder / "mmproj.gguf"


def llamacpp_vision_reference(outtype: str = "f16") -> tuple[Path, Path]:
    """llama.cpp's text and mmproj GGUFs for gemma3_vision_checkpoint() at `outtype` (f16 by default; q8_0 for the
    projector's q8_0 check)."""
    return llamacpp_reference_pair(gemma3_vision_checkpoint(), "gemma3-vision", outtype)
