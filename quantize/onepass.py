"""Several quantization levels from one pass over a float base.

`llama-quantize` run once per level reads the whole base, converts every tensor to F32 and quantizes it for
that level alone, though levels share much of their work: Q6_K, Q5_K_M, Q4_K_M, Q3_K_M and Q2_K all store a
Llama 3 model's (tied) token embeddings as Q6_K, a fifth of a 1B model's weights. Here each tensor is read and
converted once, each (tensor, type) pair is quantized once however many levels use it, and every level's file
is written as the pass goes.

llama.cpp still decides everything that makes a level what it is: a dry run of its quantizer lists the type it
gives each tensor and the order it writes them in, and the quantizing is ggml's `ggml_quantize_chunk` on whole
rows, as llama.cpp's quantizer calls it, with the same importance-matrix slices and the same row checks. So a
file made here is byte for byte the one `llama-quantize` writes (tests/test_onepass.py compares them).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import EdgeError
from ..fsutil import atomic_output
from ..testhooks import pause_point
from .parallel import ordered_results

if TYPE_CHECKING:
    from .imatrix import ImportanceMatrix
    from .levels import Level

ALIGNMENT = 32  # llama.cpp's quantizer pads every tensor to GGUF's default alignment
QNT_VERSION = 2  # GGML_QNT_VERSION, which llama.cpp's quantizer stamps on every file it writes
CHUNK_ELEMENTS = 1 << 20  # weights per job: a few MiB as F32, many jobs per large tensor to keep the cores busy
# Keys llama.cpp's quantizer drops from the base's metadata; the first two come back at the end, updated.
_DROPPED_KEYS = {"general.quantization_version", "general.file_type", "split.no", "split.count",
                 "split.tensors.count"}
_GGUF_U32, _GGUF_STRING = 4, 8
F32, F16, BF16 = 0, 1, 30  # ggml type ids of the float types a base may hold


@dataclass(frozen=True)
class SourceTensor:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: int
    offset: int  # of its data, from the start of the base file
    nbytes: int

    @property
    def n_rows(self) -> int:
        return int(np.prod(self.ne[1:], dtype=np.int64)) if len(self.ne) > 1 else 1

    @property
    def rows_per_matrix(self) -> int:  # an expert's rows, in a stacked 3-D tensor
        return self.ne[1] if len(self.ne) > 1 else 1


@dataclass(frozen=True)
class Recipe:
    """What llama.cpp's quantizer would write for one level: each tensor's type, in its order."""

    level: Level
    tensors: tuple[tuple[str, int], ...]  # (name, ggml type)


@dataclass(frozen=True)
class Base:
    path: Path
    kv: tuple[tuple[str, bytes], ...]  # each metadata entry as the file holds it (key, serialized entry)
    tensors: dict[str, SourceTensor]


# --- ggml, from the library llama-cpp-python ships ----------------------------------------------------


@lru_cache(maxsize=1)
def _ggml() -> ctypes.CDLL:
    from ..engine import llamacpp

    lib = llamacpp.ggml_library("ggml-base")
    i64, sz, vp, fp = ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)
    for name, args, res in [
        ("ggml_quantize_chunk", [ctypes.c_int, fp, vp, i64, i64, i64, fp], sz),
        ("ggml_validate_row_data", [ctypes.c_int, vp, sz], ctypes.c_bool),
        ("ggml_row_size", [ctypes.c_int, i64], sz),
        ("ggml_quantize_requires_imatrix", [ctypes.c_int], ctypes.c_bool),
        ("ggml_type_name", [ctypes.c_int], ctypes.c_char_p),
    ]:
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, res
    return lib


@lru_cache(maxsize=1)
def type_ids() -> dict[str, int]:
    """ggml's type names ("q4_K", "f16") -> type ids, as the linked ggml names them (removed types have none)."""
    import llama_cpp

    lib = _ggml()
    names = {i: lib.ggml_type_name(i) for i in range(llama_cpp.GGML_TYPE_COUNT)}
    return {name.decode(): i for i, name in names.items() if name}


def row_size(ggml_type: int, n_per_row: int) -> int:
    return _ggml().ggml_row_size(ggml_type, n_per_row)


# --- the base ------------------------------------------------------------------------------------------


def read_base(path: Path) -> Base | None:
    """The base's metadata entries and tensors, or None when only llama.cpp's own quantizer can take it (weights
    that are quantized already, an alignment other than the default)."""
    from ..formats.gguf_info import header_reader_class

    reader = header_reader_class()(path, "r")
    if "general.alignment" in reader.fields:
        return None
    fields = [f for name, f in reader.fields.items() if not name.startswith("GGUF.")]  # not the header's counts
    # An entry runs to where the next begins; the last one to the first tensor's description.
    ends = [f.offset for f in fields[1:]] + [min(t.field.offset for t in reader.tensors)]
    with open(path, "rb") as f:
        kv = tuple((field.name, os.pread(f.fileno(), end - field.offset, field.offset))
                   for field, end in zip(fields, ends))
    tensors = {}
    for t in reader.tensors:
        if int(t.tensor_type) not in (F32, F16, BF16):
            return None
        tensors[t.name] = SourceTensor(t.name, tuple(int(n) for n in t.shape), int(t.tensor_type),
                                       int(t.data_offset), int(t.n_bytes))
    return Base(Path(path), kv, tensors)


# --- llama.cpp's recipe for a level --------------------------------------------------------------------

# "[  12/ 147] blk.0.ffn_up.weight  - [  2048,   8192,      1,      1], type =    f16, size =   32.00 MiB ->
#  5.25 MiB (q2_K)"; a tensor kept as it is ends at its size.
_DRY_LINE = re.compile(
    r"\[\s*\d+/\s*\d+\]\s+(?P<name>\S+)\s+- \[[^\]]*\], type =\s*(?P<src>\w+), size =\s*[\d.]+ MiB"
    r"(?: ->\s*[\d.]+ MiB \((?P<dst>\w+)\))?"
)


def recipe(base: Base, level: Level, imatrix: ImportanceMatrix | None = None) -> Recipe:
    """Ask llama.cpp's quantizer, in a dry run, which type each tensor gets at `level` and in what order."""
    import llama_cpp

    from .levels import thread_log

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.dry_run = level.ftype, True
    entries = imatrix.as_ctypes() if imatrix is not None else None
    if entries is not None:
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    log = io.StringIO()
    with thread_log(lambda _lvl, text: log.write(text)):
        rc = llama_cpp.llama_model_quantize(str(base.path).encode(), b"", ctypes.byref(params))
    text = log.getvalue()
    if rc != 0:
        why = text.split("failed to quantize:", 1)[1].strip() if "failed to quantize:" in text else f"error {rc}"
        raise EdgeError(f"quantizing {base.path.name} to {level.name} failed: {why}")
    ids = type_ids()
    out = []
    for m in _DRY_LINE.finditer(text):
        name, dst = m.group("name"), m.group("dst") or m.group("src")
        if name not in base.tensors or dst not in ids:
            raise EdgeError(f"llama.cpp's plan for {level.name} names {name} as {dst}, which this base does not hold")
        out.append((name, ids[dst]))
    if sorted(n for n, _ in out) != sorted(base.tensors):
        raise EdgeError(f"llama.cpp's plan for {level.name} does not list every tensor of {base.path.name}")
    return Recipe(level, tuple(out))


# --- writing ---------------------------------------------------------------------------------------------


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _pad(n: int) -> int:
    return -n % ALIGNMENT


def header(base: Base, rcp: Recipe) -> bytes:
    """The level's metadata as llama.cpp's quantizer writes it: the base's entries in their order (less the
    dropped keys), the quantization version and file type last, then the tensors' names, shapes, types and
    offsets, padded to the alignment."""
    kv = [blob for key, blob in base.kv if key not in _DROPPED_KEYS]
    for key, value in (("general.quantization_version", QNT_VERSION), ("general.file_type", rcp.level.ftype)):
        kv.append(_gguf_string(key) + struct.pack("<II", _GGUF_U32, value))
    infos, offset = [], 0
    for name, ggml_type in rcp.tensors:
        t = base.tensors[name]
        n_dims = max([1] + [i + 1 for i, n in enumerate(t.ne) if n > 1])  # ggml_n_dims: trailing 1s dropped
        infos.append(_gguf_string(name) + struct.pack(f"<I{n_dims}QIQ", n_dims, *t.ne[:n_dims], ggml_type, offset))
        size = row_size(ggml_type, t.ne[0]) * t.n_rows
        offset += size + _pad(size)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(rcp.tensors), len(kv)) + b"".join(kv) + b"".join(infos)
    return head + bytes(_pad(len(head)))


def _as_f32(raw: np.ndarray, ggml_type: int) -> np.ndarray:
    if ggml_type == F32:
        return raw.view(np.float32)
    if ggml_type == F16:
        return raw.view(np.float16).astype(np.float32)
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)  # bf16: the high half of an f32


def _encoded_rows(t: SourceTensor, raw: bytes, first_row: int, types: tuple[int, ...],
                  imatrix: np.ndarray | None) -> dict[int, bytes | np.ndarray]:
    """Rows [first_row, first_row + n) of `t` (within one expert) in each of `types`; its own type is `raw`."""
    out: dict[int, bytes | np.ndarray] = {ty: raw for ty in types if ty == t.ggml_type}  # kept as the base holds it
    todo = [ty for ty in types if ty != t.ggml_type]
    if not todo:
        return out
    lib, n_per_row = _ggml(), t.ne[0]
    values = np.ascontiguousarray(_as_f32(np.frombuffer(raw, dtype=np.uint8), t.ggml_type))
    if not np.isfinite(values).all():  # llama.cpp's loader refuses such a base too
        raise EdgeError(f"{t.name} holds weights that are not finite (NaN or infinity): the base is damaged")
    n_rows = values.size // n_per_row
    src = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    weights = None
    if imatrix is not None:
        expert = first_row // t.rows_per_matrix
        weights = imatrix[expert * n_per_row:(expert + 1) * n_per_row].ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    for ggml_type in todo:
        dst = np.empty(row_size(ggml_type, n_per_row) * n_rows, dtype=np.uint8)
        size = lib.ggml_quantize_chunk(ggml_type, src, dst.ctypes.data, 0, n_rows, n_per_row, weights)
        if not lib.ggml_validate_row_data(ggml_type, dst.ctypes.data, size):
            name = lib.ggml_type_name(ggml_type).decode()
            raise EdgeError(f"quantizing {t.name} to {name} gave values that are not finite: its weights are too "
                            "large for the type")
        out[ggml_type] = dst
    return out


def _importance(t: SourceTensor, means: dict[str, np.ndarray]) -> np.ndarray | None:
    """The tensor's importance weights as llama.cpp's quantizer looks them up (none found: quantized without)."""
    if t.name not in means:
        return None
    values = means[t.name]
    n_matrices = t.ne[2] if len(t.ne) > 2 else 1
    if values.size != t.ne[0] * n_matrices:
        if t.name == "token_embd.weight":
            return None  # llama.cpp lets this one through without
        raise EdgeError(f"imatrix size {values.size} is different from tensor size {t.ne[0] * n_matrices} "
                        f"for {t.name}")
    return values


# One job's result: (tensor index, first row, rows, {ggml type: bytes})
Piece = tuple[int, int, int, dict[int, bytes | np.ndarray]]


def _jobs(base: Base, order: list[str], wanted: list[tuple[int, ...]], means: dict[str, np.ndarray],
          fd: int) -> Iterator[Callable[[], Piece]]:
    for index, name in enumerate(order):
        t = base.tensors[name]
        quantized = [ty for ty in wanted[index] if ty != t.ggml_type]
        weights = _importance(t, means) if quantized else None
        for ggml_type in quantized:
            if weights is None and _ggml().ggml_quantize_requires_imatrix(ggml_type):
                raise EdgeError(f"{name} needs an importance matrix to be quantized to "
                                f"{_ggml().ggml_type_name(ggml_type).decode()}")
        step, first = max(1, CHUNK_ELEMENTS // t.ne[0]), 0
        while first < t.n_rows:
            # a job never crosses from one expert's matrix to the next: each has its own importance weights
            last = min(first + step, t.n_rows, (first // t.rows_per_matrix + 1) * t.rows_per_matrix)
            yield partial(_piece, fd, index, t, first, last, wanted[index], weights)
            first = last


def _read_rows(fd: int, t: SourceTensor, first: int, last: int) -> bytes:
    src_row = t.nbytes // t.n_rows
    size = (last - first) * src_row
    data = os.pread(fd, size, t.offset + first * src_row)
    if len(data) != size:
        raise EdgeError(f"{t.name} ends beyond the end of the base file")
    return data


def _piece(fd, index, t, first, last, types, weights) -> Piece:
    return index, first, last - first, _encoded_rows(t, _read_rows(fd, t, first, last), first, types, weights)


def quantize_together(
    base: Base,
    outs: list[tuple[Level, Path]],
    *,
    imatrix: ImportanceMatrix | None = None,
    nthread: int = 1,
    on_tensor: Callable[[str, int, int], None] | None = None,
) -> dict[str, str]:
    """Write every level in `outs` in one pass over `base`; each file appears under its name only when all are
    complete. Returns each level's sha256, hashed as it was written. `on_tensor(level, index from 1, total)`
    follows the pass."""
    means = imatrix.means() if imatrix is not None else {}
    bad = [name for name, v in means.items() if not np.isfinite(v).all()]
    if bad:
        raise EdgeError(f"the importance matrix holds values that are not finite (first in {bad[0]})")
    recipes = [recipe(base, level, imatrix) for level, _ in outs]
    order = [name for name, _ in recipes[0].tensors]
    if any([name for name, _ in r.tensors] != order for r in recipes):
        raise EdgeError("llama.cpp orders the tensors differently for different levels; make them one at a time")
    # Per tensor: the type each level takes, and the types to make (each once; its own type is copied).
    picks = list(zip(*([ty for _, ty in r.tensors] for r in recipes)))
    wanted = [tuple(sorted(set(row))) for row in picks]
    n = len(order)
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(open(base.path, "rb")).fileno()
        files = []
        for (level, out), rcp in zip(outs, recipes):
            tmp = stack.enter_context(atomic_output(out))
            f = _HashingWriter(stack.enter_context(open(tmp, "wb", buffering=4 << 20)))
            f.write(header(base, rcp))
            files.append(f)
        jobs = _jobs(base, order, wanted, means, fd)
        for index, first, count, pieces in ordered_results(jobs, nthread, ahead=2 * nthread + 2):
            t = base.tensors[order[index]]
            if first == 0:
                pause_point("quantize.tensor", index + 1)
            for f, ggml_type in zip(files, picks[index]):
                f.write(pieces[ggml_type])
            if first + count == t.n_rows:
                for f, ggml_type in zip(files, picks[index]):
                    size = row_size(ggml_type, t.ne[0]) * t.n_rows
                    f.write(bytes(_pad(size)))
                if on_tensor:
                    for level, _ in outs:
                        on_tensor(level.name, index + 1, n)
        for f in files:
            f.file.flush()
        return {level.name: f.sha256.hexdigest() for (level, _), f in zip(outs, files)}


class _HashingWriter:
    def __init__(self, file) -> None:
        self.file, self.sha256 = file, hashlib.sha256()

    def write(self, data) -> None:
        self.file.write(data)
        self.sha256.update(data)
