"""Quantization levels: every file type llama.cpp's quantizer offers, and one call to make each.

A level is a llama.cpp file type ("ftype"): a recipe that picks a tensor type per tensor (Q4_K_M puts
Q6_K on half of ffn_down and attn_v, Q4_K on the rest). The quantizing itself is llama.cpp's own
`llama_model_quantize`, so a file made here is bit-for-bit what `llama-quantize` makes from the same input.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import EdgeError, NotEnoughSpace, UsageError
from ..fsutil import atomic_output, room_problem
from ..formats.gguf_info import EXPERT_TENSOR, GGUFInfo, read_gguf
from ..testhooks import pause_point

if TYPE_CHECKING:
    from .imatrix import ImportanceMatrix


@dataclass(frozen=True)
class Level:
    name: str
    ftype: int  # llama.cpp's `enum llama_ftype`
    bpw: float  # nominal bits per weight of the level's main tensor type (mixes land a little above)
    needs_imatrix: bool  # llama.cpp refuses to make it without an importance matrix
    note: str


def _levels(*rows: tuple[str, int, float, bool, str]) -> dict[str, Level]:
    return {r[0]: Level(*r) for r in rows}


# name, llama_ftype, nominal bpw, needs imatrix, note. Names and ftypes follow llama.cpp's quantizer.
TABLE: dict[str, Level] = _levels(
    ("F32", 0, 32.0, False, "no quantization"),
    ("F16", 1, 16.0, False, "half precision"),
    ("BF16", 32, 16.0, False, "bfloat16"),
    ("Q8_0", 7, 8.5, False, "near-lossless"),
    ("Q6_K", 18, 6.5625, False, "very close to the base"),
    ("Q5_K_M", 17, 5.5, False, "Q5_K with Q6_K on sensitive tensors"),
    ("Q5_K_S", 16, 5.5, False, "Q5_K throughout"),
    ("Q5_1", 9, 6.0, False, "legacy 5-bit with offset"),
    ("Q5_0", 8, 5.5, False, "legacy 5-bit"),
    ("Q4_K_M", 15, 4.5, False, "Q4_K with Q6_K on sensitive tensors: the usual default"),
    ("Q4_K_S", 14, 4.5, False, "Q4_K throughout"),
    ("Q4_1", 3, 5.0, False, "legacy 4-bit with offset"),
    ("Q4_0", 2, 4.5, False, "legacy 4-bit"),
    ("IQ4_NL", 25, 4.5, False, "non-linear 4-bit, 32-weight blocks"),
    ("IQ4_XS", 30, 4.25, False, "non-linear 4-bit, 256-weight super-blocks"),
    ("MXFP4_MOE", 38, 4.25, False, "MXFP4 for mixture-of-experts weights"),
    ("Q3_K_L", 13, 3.4375, False, "Q3_K with Q5_K on sensitive tensors"),
    ("Q3_K_M", 12, 3.4375, False, "Q3_K with Q4_K on sensitive tensors"),
    ("Q3_K_S", 11, 3.4375, False, "Q3_K throughout"),
    ("IQ3_M", 27, 3.4375, False, "IQ3_S mix"),
    ("IQ3_S", 26, 3.4375, False, "3.44 bpw non-linear"),
    ("IQ3_XS", 22, 3.3, False, "3.3 bpw non-linear mix"),
    ("IQ3_XXS", 23, 3.0625, True, "3.06 bpw non-linear"),
    ("Q2_K", 10, 2.625, False, "Q2_K with Q3_K/Q4_K on sensitive tensors"),
    ("Q2_K_S", 21, 2.625, True, "Q2_K throughout"),
    ("IQ2_M", 29, 2.5, True, "IQ2_S mix"),
    ("IQ2_S", 28, 2.5, True, "2.5 bpw non-linear"),
    ("IQ2_XS", 20, 2.3125, True, "2.31 bpw non-linear"),
    ("IQ2_XXS", 19, 2.0625, True, "2.06 bpw non-linear"),
    ("Q2_0", 41, 2.25, False, "2-bit, 64-weight groups"),
    ("TQ2_0", 37, 2.0625, False, "ternary, for ternary-trained models"),
    ("IQ1_M", 31, 1.75, True, "1.75 bpw, last resort"),
    ("TQ1_0", 36, 1.6875, False, "ternary, for ternary-trained models"),
    ("IQ1_S", 24, 1.5625, True, "1.56 bpw, last resort"),
    ("Q1_0", 40, 1.125, False, "1-bit, for binary-trained models"),
)
# Short names llama-quantize also accepts.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# The set people publish; `edgellm package` makes these unless told otherwise.
DEFAULT_LEVELS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "Q2_K")
# Tensor types a base file may hold: anything else means the weights were quantized already.
FLOAT_TYPES = {"F32", "F16", "BF16"}


def parse_levels(spec: str | Iterable[str]) -> list[Level]:
    """'q8_0,Q4_K_M' -> [Level, ...] in the order given, duplicates dropped; unknown names raise UsageError."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Level] = []
    for raw in names:
        name = raw.strip().upper()
        if not name:
            continue
        name = ALIASES.get(name, name)
        if name not in TABLE:
            raise UsageError(f"unknown quantization level {raw.strip()!r}; known: {', '.join(TABLE)}")
        if TABLE[name] not in out:
            out.append(TABLE[name])
    if not out:
        raise UsageError("no quantization levels given")
    return out


def check_base(info: GGUFInfo, allow_requantize: bool = False) -> None:
    """A base must be one file llama.cpp can load (impossible header values abort it) and hold float weights:
    quantizing quantized weights compounds the error."""
    from ..formats.gguf_checks import check

    check(info)
    if info.parts:  # the one-pass quantizer reads tensor data from one file
        raise UsageError(
            f"{info.path.name} is the first of {len(info.parts)} parts of a split model: quantize from one file "
            f"(llama-gguf-split --merge {info.path.name} merged.gguf makes it)"
        )
    quantized = sorted({t.ggml_type for t in info.tensors if len(t.shape) > 1 and not _released_mxfp4(t)} - FLOAT_TYPES)
    if quantized and not allow_requantize:
        raise UsageError(
            f"{info.path.name} is already quantized ({info.file_type or ', '.join(quantized)}); "
            "quantize from an F32/F16/BF16 base, or pass --allow-requantize to accept the extra loss"
        )


def _released_mxfp4(t) -> bool:
    """An expert tensor in MXFP4, as GPT-OSS is released (no float original exists to quantize from)."""
    return t.ggml_type == "MXFP4" and EXPERT_TENSOR.search(t.name) is not None


def mxfp4_experts(info: GGUFInfo) -> bool:
    """Whether the base's experts are MXFP4 as released."""
    return any(_released_mxfp4(t) for t in info.tensors)


def experts_note(level: Level) -> str:
    """What llama.cpp's quantizer does at `level` with experts that are MXFP4 in the base: only MXFP4_MOE keeps
    them (it copies tensors already of the type it picks); every other level rounds them again to its own types."""
    if level.name == "MXFP4_MOE":
        return "experts kept in MXFP4 as released; the other weights Q8_0"
    if level.name in FLOAT_TYPES:
        return f"experts widened from MXFP4 to {level.name}: the same values in more bytes"
    return f"experts requantized from MXFP4 to {level.name}'s types: a second rounding of the released 4-bit values"


def check_imatrix_needs(levels: Iterable[Level], have_imatrix: bool) -> None:
    needy = [lv.name for lv in levels if lv.needs_imatrix]
    if needy and not have_imatrix:
        raise UsageError(
            f"level(s) {', '.join(needy)} need an importance matrix: "
            "give calibration text with --imatrix CALIB.txt (edgellm package) or drop them"
        )


@dataclass(frozen=True)
class QuantizeJob:
    base: GGUFInfo
    levels: list[Level]
    out_dir: Path
    stem: str  # output files are <stem>-<LEVEL>.gguf


def prepare(base: Path, levels: list[Level], out_dir: Path | None, allow_requantize: bool = False) -> QuantizeJob:
    """Everything checked before quantizing starts: the base is a float GGUF llama.cpp can load, the levels need
    no importance matrix, the output folder (default: beside the base) exists and has room."""
    from ..fsutil import ensure_free_space

    info = read_gguf(base)
    check_base(info, allow_requantize)
    check_imatrix_needs(levels, have_imatrix=False)
    out_dir = out_dir or base.resolve().parent
    if not out_dir.is_dir():
        raise UsageError(f"output folder does not exist: {out_dir}")
    ensure_free_space(out_dir, sum(estimate_bytes(info.n_params, lv) for lv in levels), f"{len(levels)} quantized file(s)")
    # model-F16.gguf -> model-Q4_K_M.gguf rather than model-F16-Q4_K_M.gguf
    stem = re.sub(rf"[-_.]{info.file_type}$", "", base.name.removesuffix(".gguf"), flags=re.I) or "model"
    return QuantizeJob(info, levels, out_dir, stem)


def estimate_bytes(n_params: int, level: Level) -> int:
    """A generous estimate of a level's file size, for the disk check before any work starts."""
    # Mixes keep some tensors at higher precision (a small model's Q2_K averages ~5 bpw): allow 25% + 1 bpw,
    # plus room for the vocabulary and metadata.
    return int(n_params * min(level.bpw * 1.25 + 1.0, 32.0) / 8) + (8 << 20)


TensorHook = Callable[[int, int, str], None]  # (index from 1, total, tensor name)
_TENSOR_LINE = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")

# llama.cpp's log is process-wide while levels may be made on several threads at once: while any
# quantizer runs, one callback hands each log fragment to the thread that wrote it (the quantizer logs
# from its calling thread). Afterwards edgellm's usual in-memory log handler is put back.
_hooks: dict[int, Callable[[int, str], None]] = {}
_hooks_lock = threading.Lock()


_interrupted = threading.Event()  # Ctrl-C that arrived inside the callback, where it cannot propagate


def _dispatch(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    try:
        hook = _hooks.get(threading.get_ident())
        if hook:
            hook(level, text.decode("utf-8", errors="replace"))
    except KeyboardInterrupt:
        _interrupted.set()


_callback = None  # the ctypes thunk, made once llama_cpp is imported and kept alive


@contextlib.contextmanager
def thread_log(hook: Callable[[int, str], None]) -> Iterator[None]:
    global _callback
    import llama_cpp

    from ..engine import llamacpp

    tid = threading.get_ident()
    with _hooks_lock:
        if not _hooks:
            llamacpp.init()
            _callback = _callback or llama_cpp.llama_log_callback(_dispatch)
            llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
        _hooks[tid] = hook
    try:
        yield
    finally:
        with _hooks_lock:
            del _hooks[tid]
            if not _hooks:
                llamacpp.init()


def quantize(
    base: Path,
    out: Path,
    level: Level,
    *,
    imatrix: ImportanceMatrix | None = None,
    allow_requantize: bool = False,
    nthread: int = 0,
    on_tensor: TensorHook | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Quantize `base` to `level` at `out` through llama.cpp; `out` appears only when complete.

    llama.cpp's quantizer cannot be stopped midway: a set `cancel` event (or Ctrl-C) discards the
    output once the current call returns.
    """
    import llama_cpp

    base, out = Path(base), Path(out)
    info = read_gguf(base)
    check_base(info, allow_requantize)
    check_imatrix_needs([level], imatrix is not None)

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = nthread
    params.ftype = level.ftype
    # MXFP4 experts are the released weights: the levels that do not keep them requantize them
    params.allow_requantize = allow_requantize or mxfp4_experts(info)
    entries = imatrix.as_ctypes() if imatrix is not None else None
    if entries is not None:
        params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    errors: list[str] = []

    def hook(lvl: int, text: str) -> None:
        if "failed to quantize:" in text:
            errors.append(text.split("failed to quantize:", 1)[1].strip())
        m = _TENSOR_LINE.match(text)
        if m and on_tensor:
            on_tensor(int(m.group(1)), int(m.group(2)), m.group(3))
        if m:
            pause_point("quantize.tensor", int(m.group(1)), until=cancel.is_set if cancel else None)

    _interrupted.clear()
    with atomic_output(out) as tmp, thread_log(hook):
        rc = llama_cpp.llama_model_quantize(str(base).encode(), str(tmp).encode(), ctypes.byref(params))
        if (cancel is not None and cancel.is_set()) or _interrupted.is_set():
            raise KeyboardInterrupt
        if rc != 0:
            # llama.cpp reports a failed write as "iostream error", without the reason: ask the file system
            room = room_problem(tmp, max(estimate_bytes(info.n_params, level) - tmp.stat().st_size, 1 << 20))
            if room:
                raise NotEnoughSpace(f"no room to write {out.name}: {room}")
            why = errors[-1] if errors else f"llama_model_quantize returned {rc}"
            raise EdgeError(f"quantizing {base.name} to {level.name} failed: {why}")
    return out
