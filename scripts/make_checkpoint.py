#!/usr/bin/env python3
"""Write an HF checkpoint with random weights at a real model's shape, for timing the converter and the
packager at the sizes people convert (nothing is downloaded; the Llama 3 tokenizer comes from the test data).

    .venv/bin/python scripts/make_checkpoint.py llama3.2-1b /tmp/llama-1b      # 1.24B parameters, 2.5 GB bf16

Weights are N(0, 0.02) in bf16, norms around 1, written tensor by tensor in bounded memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fixtures import write_llama3_tokenizer  # noqa: E402

# config.json fields of the published checkpoints (weights aside, what the converter reads)
SHAPES = {
    "llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True, rope_factor=32.0),
    "llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, rope_factor=32.0),
    "llama3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, rope_factor=8.0),
}
VOCAB = 128256
CHUNK = 1 << 24  # values generated at a time


def config(shape: dict) -> dict:
    s = dict(shape)
    factor = s.pop("rope_factor")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "bos_token_id": 128000,
        "eos_token_id": [128001, 128008, 128009],
        "hidden_act": "silu",
        "torch_dtype": "bfloat16",
        **s,
    }


def tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    d, ff, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (VOCAB, d))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (q, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, q)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (ff, d)),
            (p + "mlp.up_proj.weight", (ff, d)),
            (p + "mlp.down_proj.weight", (d, ff)),
        ]
    out.append(("model.norm.weight", (d,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (VOCAB, d)))
    return out


def bf16_bits(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def write_safetensors(path: Path, cfg: dict, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    plan = tensors(cfg)
    for name, shape in plan:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for name, shape in plan:
            total = int(np.prod(shape))
            for start in range(0, total, CHUNK):
                n = min(CHUNK, total - start)
                if len(shape) == 1:
                    values = 1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32)
                else:
                    values = 0.02 * rng.standard_normal(n, dtype=np.float32)
                f.write(bf16_bits(values).tobytes())
    return offset


def cached_checkpoint(shape: str) -> Path:
    """A checkpoint at `shape`, generated once into the test cache (for the benchmarks)."""
    from fixtures import cache_root

    folder = cache_root() / f"bench-{shape}-hf"
    if not (folder / "model.safetensors").exists():
        tmp = folder.with_name(folder.name + ".partial")
        write_checkpoint(shape, tmp)
        tmp.rename(folder)
    return folder


def write_checkpoint(shape: str, out: Path, seed: int = 0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(SHAPES[shape])
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    write_llama3_tokenizer(out)
    return write_safetensors(out / "model.safetensors", cfg, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    nbytes = write_checkpoint(args.shape, args.out, args.seed)
    print(f"{args.out}: {args.shape}, {nbytes / 2:.3g} parameters, {nbytes / 1e9:.2f} GB bf16")


if __name__ == "__main__":
    main()
