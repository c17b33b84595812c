"""What a checkpoint becomes at each level before anything is converted, for the planner to judge.

The header is the one the converter would write (`convert.describe_output`: the same shape, context and
tensors), so the memory model reads it as it reads a real file. Tensor sizes: the base's are exact; a
level's are its nominal bits per weight on every tensor the converter does not keep in F32, except the
output matrix (the token embeddings where they are tied), which llama-quantize keeps at Q6_K or better.
Its other mixes put some tensors at higher precision too, so real files land a few % above (Q4_K_M: about
4.9 against 4.5 bits on Llama 3 8B; more on small models, whose rows K-quants may not divide), and the
estimates say they are estimates.
"""

from __future__ import annotations

import math
from pathlib import Path

from gguf import GGMLQuantizationType

from edgellm.formats.gguf_info import GGUFInfo, TensorInfo, make_info

from .checkpoint import Checkpoint
from .convert import describe_output
from .levels import TABLE, Level

ALIGNMENT = 32  # GGUF pads each tensor's data to this
OUTPUT_FLOOR = "Q6_K"  # llama-quantize's type for the output matrix at every level below it


def main_type(level: str) -> str:
    """The tensor type a level is named after: Q4_K_M -> Q4_K, IQ4_XS -> IQ4_XS, F16 -> F16."""
    for name in (level, level.rsplit("_", 1)[0]):
        if name in GGMLQuantizationType.__members__:
            return name
    return level


def level_infos(ckpt: Checkpoint, name: str, levels: list[Level], header_bytes: int) -> tuple[str, dict[str, GGUFInfo]]:
    """(the base level, {level: header}) for the base the converter would write and each of `levels` made
    from it. `header_bytes`: the metadata and vocabulary's size, estimated by the caller."""
    meta, tensors = describe_output(ckpt)
    # What the converter keeps in F32 whatever the outtype (norms, routers, rope factors): F32 at every level.
    kept = {t.name for t in describe_output(ckpt, "f16")[1] if t.qtype == GGMLQuantizationType.F32}
    names = {t.name for t in tensors}
    output = "output.weight" if "output.weight" in names else "token_embd.weight"
    base = base_level(meta)
    out = {base: _info(name, base, meta, [(t.name, t.shape, t.qtype.name, t.nbytes) for t in tensors], header_bytes)}
    for lv in levels:
        sized = []
        floor = TABLE[OUTPUT_FLOOR] if lv.bpw < TABLE[OUTPUT_FLOOR].bpw else lv
        for t in tensors:
            as_level = floor if t.name == output else lv
            n_bytes = t.nbytes if t.name in kept else math.ceil(math.prod(t.shape) * as_level.bpw / 8)
            sized.append((t.name, t.shape, t.qtype.name if t.name in kept else main_type(as_level.name), n_bytes))
        out[lv.name] = _info(name, lv.name, {**meta, "general.file_type": lv.ftype}, sized, header_bytes)
    return base, out


def base_level(meta: dict) -> str:
    """The base's level name from its file type (ALL_F32 -> F32, MOSTLY_BF16 -> BF16)."""
    from gguf import LlamaFileType

    return LlamaFileType(meta["general.file_type"]).name.split("_", 1)[1]


def _info(name: str, level: str, meta: dict, sized: list[tuple[str, tuple[int, ...], str, int]], header_bytes: int) -> GGUFInfo:
    tensors = [
        TensorInfo(t_name, qtype, tuple(reversed(shape)), math.prod(shape), n_bytes, None)
        for t_name, shape, qtype, n_bytes in sized
    ]  # GGUF lists dimensions fastest-varying first
    size = header_bytes + sum(-(-t.n_bytes // ALIGNMENT) * ALIGNMENT for t in tensors)
    return make_info(Path(f"{name}-{level}.gguf"), size, meta, tensors)
