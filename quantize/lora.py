"""A PEFT LoRA adapter as llama.cpp uses it: a GGUF adapter file, or merged into the base weights.

GGUF adapter (what `llama_adapter_lora_init` loads, and `convert_lora_to_gguf.py` writes): `general.type =
adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for every adapted matrix `<tensor>.lora_a` (the
rank x in matrix A) and `<tensor>.lora_b` (out x rank B), named after the base's GGUF tensor. llama.cpp
multiplies B @ A by scale * alpha / rank, the rank read from each B. Where the base converter reorders the
rows of Q and K for llama.cpp's rope, B's rows (the output side) get the same order; A is unchanged.

Merged: W' = W + scale * s * B @ A in float32 (s = alpha / rank, or alpha / sqrt(rank) with rsLoRA), one
row chunk of W at a time, before the base GGUF is written; quantizing then carries the fine-tune into every
level.

    write_adapter_gguf(open_adapter("my-lora/"), read_config(base_dir), "my-lora.gguf")
    convert_checkpoint(base_dir, "merged-f16.gguf", "f16", merge=merged([(open_adapter("my-lora/"), 1.0)]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from edgellm.errors import UsageError

from .arch import arch_for, permute_groups, permute_rows, read_hparams
from .checkpoint import Checkpoint, TensorEntry, to_float32
from .convert import AUTO_FROM_SOURCE, OUTTYPE_CHOICES, OUTTYPES, gguf_output
from .peft import LoraPair, PeftAdapter, match

Q = gguf.GGMLQuantizationType


@dataclass(frozen=True)
class AdapterTensor:
    name: str
    source: TensorEntry
    qtype: Q
    groups: int = 0  # >0: rows reordered in this many head groups (B of Q and K)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size

    def data(self) -> np.ndarray:
        """The tensor's GGUF bytes. Adapter matrices are rank rows or columns wide: each is read whole."""
        values = to_float32(self.source.read_rows(0, self.source.n_rows), self.source.dtype)
        if self.groups:
            values = permute_rows(values, self.groups)
        return gguf.quants.quantize(values, self.qtype)


def gguf_alpha(adapter: PeftAdapter, pairs: Sequence[LoraPair]) -> float:
    """The alpha for which llama.cpp's alpha / rank is PEFT's scaling. rsLoRA scales by alpha / sqrt(rank):
    alpha * sqrt(rank) gives that, when every matrix has the same rank."""
    if not adapter.rslora:
        return adapter.alpha
    ranks = sorted({p.rank for p in pairs})
    if len(ranks) > 1:
        raise UsageError(
            f"cannot write the adapter {adapter.name} as GGUF: it uses rsLoRA with ranks {ranks}, and llama.cpp takes "
            "one alpha per adapter (merge it instead: edgellm package ... --lora)"
        )
    return adapter.alpha * math.sqrt(ranks[0])


def write_adapter_gguf(
    adapter: PeftAdapter, base_config: dict[str, Any], out_path: str | Path, outtype: str = "auto"
) -> Path:
    """Write `adapter` (trained on the base whose config.json is `base_config`) as a GGUF LoRA adapter."""
    out_path = Path(out_path)
    if outtype not in OUTTYPE_CHOICES:
        raise UsageError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPE_CHOICES)}")
    if out_path.is_dir():
        raise UsageError(f"output path is a folder: {out_path}")
    pairs = match(adapter, base_config)
    alpha = gguf_alpha(adapter, pairs)
    h = read_hparams(base_config)
    if outtype == "auto":  # the precision the adapter is stored in
        outtype = AUTO_FROM_SOURCE[pairs[0].a.dtype]
    ftype, wtype = OUTTYPES[outtype]
    tensors = []
    for p in pairs:
        for suffix, entry, groups in ((".lora_a", p.a, 0), (".lora_b", p.b, permute_groups(p.target.permute, h))):
            # as for base weights, Q8_0 needs rows of whole 32-value blocks (B's rows are rank values long)
            qtype = Q.F16 if wtype == Q.Q8_0 and entry.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] else wtype
            tensors.append(AdapterTensor(p.target.gguf + suffix, entry, qtype, groups))

    writer = gguf.GGUFWriter(None, arch_for(base_config).gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(adapter.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    with gguf_output(writer, tensors, out_path, 1 << 20, "adapter GGUF") as (_, fout):
        for t in tensors:
            writer.write_padding(fout, fout.tell())
            fout.write(t.data().tobytes())
    return out_path


# --- merging into the base weights ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MergedEntry(TensorEntry):
    """A base matrix with a LoRA update added, read like any checkpoint tensor: rows of W + scale * B @ A in
    float32. `base` may itself be merged (several adapters)."""

    base: TensorEntry
    a: TensorEntry
    b: TensorEntry
    scale: float

    @classmethod
    def over(cls, base: TensorEntry, pair: LoraPair, scale: float) -> MergedEntry:
        nbytes = math.prod(base.shape) * 4
        return cls(name=base.name, dtype="F32", shape=base.shape, file=base.file, offset=base.offset, nbytes=nbytes,
                   base=base, a=pair.a, b=pair.b, scale=scale)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        w = to_float32(self.base.read_rows(start, stop), self.base.dtype)
        a = to_float32(self.a.read_rows(0, self.a.n_rows), self.a.dtype)
        b = to_float32(self.b.read_rows(start, stop), self.b.dtype)
        return w + (b @ a) * np.float32(self.scale)  # as PEFT merges: delta = (B @ A) * scaling, then W += delta


def merged(adapters: Sequence[tuple[PeftAdapter, float]]) -> Callable[[Checkpoint], Checkpoint]:
    """A checkpoint view with each (adapter, scale) added to the weights it changes, for convert_checkpoint."""

    def apply(ckpt: Checkpoint) -> Checkpoint:
        tensors = dict(ckpt.tensors)
        for adapter, scale in adapters:
            for p in match(adapter, ckpt.config):
                if p.hf not in tensors:
                    raise UsageError(f"the adapter {adapter.name} changes {p.hf}, which the checkpoint lacks")
                tensors[p.hf] = MergedEntry.over(tensors[p.hf], p, scale * adapter.scaling(p.rank))
        return replace(ckpt, tensors=tensors)

    return apply
