#!/usr/bin/env python3
"""Write a deeper copy of a Llama-architecture HF checkpoint whose extra layers pass their input through, as a
speculative-decoding target that costs N times its source per token and predicts exactly what the source does.

    .venv/bin/python scripts/make_wide_target.py ~/.cache/edgellm-tests/smollm2-hf /tmp/smollm2-wide --layers 96
    edgellm convert /tmp/smollm2-wide --outtype f16 -o /tmp/smollm2-wide-f16.gguf

Each added layer is a copy of a real one with its attention output and MLP down projections set to zero, so its
contribution to the residual stream is zero while llama.cpp still does all of its work (attention, KV cache,
every matrix product). Trained offline checkpoints here are small; this stands in for "a target at least 8x the
draft" when the draft is the source model, quantized: the two agree as a model and its quantized copy agree,
which is more often than two different sizes of a family do.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # the two writes into the residual stream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--layers", type=int, required=True, help="layers of the result (more than the source's)")
    a = ap.parse_args()
    cfg = json.loads((a.source / "config.json").read_text())
    n_src = cfg["num_hidden_layers"]
    if a.layers <= n_src:
        raise SystemExit(f"--layers must be more than the source's {n_src}")
    files = sorted(a.source.glob("*.safetensors"))
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        tensors.update(load_file(f))
    for i in range(n_src, a.layers):
        src = f"model.layers.{i % n_src}."
        for name in [n for n in tensors if n.startswith(src)]:
            part = name[len(src):]
            w = tensors[name]
            tensors[f"model.layers.{i}.{part}"] = np.zeros_like(w) if part in ZEROED else w.copy()
    a.out.mkdir(parents=True, exist_ok=True)
    for f in a.source.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy2(f, a.out / f.name)
    cfg["num_hidden_layers"] = a.layers
    (a.out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors, str(a.out / "model.safetensors"), metadata={"format": "pt"})
    params = sum(t.size for t in tensors.values())
    print(f"{a.out}: {a.layers} layers ({a.layers - n_src} pass-through), {params / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
