"""A tiny SmolVLM (SmolVLMForConditionalGeneration, random seeded weights) with the real SmolLM2 tokenizer and
SmolVLM's image tokens, and what llama.cpp's own converter makes of it (text GGUF + mmproj GGUF). Cached like
fixtures.py's builders.

Shapes: 64x64 tiles in 8x8 patches, pixel-shuffled by 2 per side into 16 tokens a tile; pictures are resized to a
longest edge of 128 pixels first, so a picture is up to 2x2 tiles and one whole-picture tile.
"""

from __future__ import annotations

import json
from pathlib import Path

from fixtures import _build_once, smollm2_checkpoint
from vision_fixtures import llamacpp_reference_pair

TILE, PATCH, LONGEST_EDGE, SCALE = 64, 8, 128, 2
IMAGE_SPECIALS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]
TILE_TOKENS = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]


def smolvlm_checkpoint() -> Path:
    """A tiny SmolVLM (f32): a 2-layer Llama text model under text_config (listed as VLlama3ForCausalLM, as
    SmolVLM2's hub config does), a 2-layer SigLIP-style vision tower (width 32) and the pixel-shuffle connector;
    tokenizer and image processor config saved by transformers."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import (
            AutoTokenizer, LlamaConfig, SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor, SmolVLMVisionConfig,
        )

        tok = AutoTokenizer.from_pretrained(smollm2_checkpoint())
        tok.add_special_tokens({"additional_special_tokens": IMAGE_SPECIALS + TILE_TOKENS})
        text = LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=False,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        vision = SmolVLMVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                     image_size=TILE, patch_size=PATCH)
        config = SmolVLMConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), scale_factor=SCALE,
                               image_token_id=tok.convert_tokens_to_ids("<image>"),
                               architectures=["SmolVLMForConditionalGeneration"])
        torch.manual_seed(0)
        model = SmolVLMForConditionalGeneration(config)
        with torch.no_grad():  # norms near 1, larger weights than the default init
            for p in model.parameters():
                p.copy_(1.0 + 0.1 * torch.randn_like(p) if p.dim() == 1 else 0.1 * torch.randn_like(p))
        model.save_pretrained(tmp)
        images = SmolVLMImageProcessor(size={"longest_edge": LONGEST_EDGE}, max_image_size={"longest_edge": TILE})
        images.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg = json.loads((tmp / "config.json").read_text())
        cfg["text_config"]["architectures"] = ["VLlama3ForCausalLM"]  # as SmolVLM2's hub config lists it
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2))

    return _build_once("smolvlm-tiny-hf", build)


def llamacpp_smolvlm_reference(outtype: str = "f16") -> tuple[Path, Path]:
    """The text GGUF and the mmproj GGUF llama.cpp's own converter writes for smolvlm_checkpoint()."""
    return llamacpp_reference_pair(smolvlm_checkpoint(), "smolvlm", outtype)
