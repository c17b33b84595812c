"""HF checkpoint folder -> one GGUF file, streamed tensor by tensor in row chunks.

    convert_checkpoint("Llama-3.2-1B-Instruct/", "llama-3.2-1b-f16.gguf", outtype="f16")
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import gguf
import numpy as np

from edgellm.errors import EdgeError, UsageError
from edgellm.fsutil import atomic_output, ensure_dir_for, ensure_free_space
from edgellm.testhooks import pause_point

from .arch import (
    EXPERT_LAYOUTS, REORDERS, VALUE_MAPS, ArchSpec, ExpertLayout, HParams, PlannedTensor, arch_for, check_config, metadata_values,
    permute_rows, plan_tensors, read_hparams, text_part,
)
from .checkpoint import CHUNK_BYTES, PACKED_DTYPES, Checkpoint, TensorEntry, open_checkpoint, to_float32
from .parallel import ordered_results, usable_cores
from .vocab import Vocab, load_vocab

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

Q = gguf.GGMLQuantizationType
FT = gguf.LlamaFileType

# outtype -> (GGUF file type, type of the 2-D weights)
OUTTYPES: dict[str, tuple[FT, Q]] = {
    "f32": (FT.ALL_F32, Q.F32),
    "f16": (FT.MOSTLY_F16, Q.F16),
    "bf16": (FT.MOSTLY_BF16, Q.BF16),
    "q8_0": (FT.MOSTLY_Q8_0, Q.Q8_0),
}
# `auto` keeps the precision the weights are stored in. MXFP4 experts stay MXFP4 whatever the outtype, and the
# file type names the other weights' type (llama.cpp's converter declares such a float file MXFP4_MOE, the
# name of llama-quantize's level that also makes the other weights Q8_0).
AUTO_FROM_SOURCE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
OUTTYPE_CHOICES = ("auto", *OUTTYPES)


@dataclass(frozen=True)
class OutTensor:
    """One GGUF tensor: where its data comes from and how it is stored."""

    name: str
    shape: tuple[int, ...]  # row-major (HF) order; GGUF writes it reversed
    qtype: Q
    sources: tuple[TensorEntry, ...] = ()  # concatenated along the first axis (stacked experts); none when generated
    permute_groups: int = 0  # >0: reorder rows of Q/K in this many head groups
    shift: float = 0.0  # added to every value (Gemma's norms)
    data: np.ndarray | None = None  # generated tensors (rope factors)
    reorder: Callable[[np.ndarray], np.ndarray] | None = None  # rows/columns moved between heads (2-D, whole tensor)
    values: Callable[[np.ndarray], np.ndarray] | None = None  # applied to every value (float32)
    experts: ExpertLayout | None = None  # a fused tensor of all experts, read expert by expert
    scales: TensorEntry | None = None  # MXFP4 experts: the scales beside the blocks in `sources`

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block * size


def convert_checkpoint(
    src_dir: str | Path, out_path: str | Path, outtype: str = "auto", progress: bool = True, digest: Hash | None = None,
    merge: Callable[[Checkpoint], Checkpoint] | None = None,
) -> Path:
    """Convert the HF checkpoint in `src_dir` to the GGUF file `out_path` and return its path. `digest` (a
    hashlib object) is fed the file's bytes as they are written, which spares reading them back to hash them.
    `merge` replaces weights before they are written (LoRA adapters merged in: `quantize.lora.merged`)."""
    src_dir, out_path = Path(src_dir), Path(out_path)
    if outtype not in OUTTYPE_CHOICES:
        raise UsageError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPE_CHOICES)}")
    ensure_dir_for(out_path)
    if out_path.is_dir():
        raise UsageError(f"output path is a folder: {out_path}")

    ckpt, arch, hp, planned = _read_checkpoint(src_dir)
    ftype, wtype = OUTTYPES[_resolve(outtype, ckpt, planned)]
    ckpt = merge(ckpt) if merge else ckpt
    vocab = load_vocab(src_dir, hp.n_vocab, arch.tokenizer)
    tensors = _rope_factors(arch, hp) + [_out_tensor(p, ckpt, hp, wtype) for p in planned]

    writer = gguf.GGUFWriter(None, arch.gguf_arch)
    _add_metadata(writer, arch, hp, ckpt, ftype, vocab)
    return write_gguf(writer, tensors, out_path, _vocab_bytes(vocab), "GGUF file", progress, digest)


def write_gguf(writer: gguf.GGUFWriter, tensors: list[OutTensor], out_path: Path, other_bytes: int, what: str,
               progress: bool, digest: Hash | None, pause: str = "convert.tensor") -> Path:
    """Write `writer`'s metadata and `tensors` to `out_path`, reading and encoding the tensors a few MiB at a
    time on all usable cores; `digest` is fed the file's bytes as they are written. `pause` names the test pause
    point after each tensor."""
    with gguf_output(writer, tensors, out_path, other_bytes, what) as (tmp, fout):

        def emit(data) -> None:
            fout.write(data)
            if digest is not None:
                digest.update(data)

        if digest is not None:
            fout.flush()
            digest.update(tmp.read_bytes())  # the header so far: a few MiB
        emit(bytes(-fout.tell() % writer.data_alignment))
        workers = usable_cores()
        chunks = ordered_results(_chunk_jobs(tensors), workers, ahead=2 * workers + 1)
        with _Progress(progress, sum(t.nbytes for t in tensors), out_path.name) as bar:
            for index, last, data in chunks:
                emit(data)
                bar.advance(len(data))
                if last:
                    if index + 1 < len(tensors):
                        emit(bytes(-fout.tell() % writer.data_alignment))
                    pause_point(pause, index + 1)
    return out_path


@contextlib.contextmanager
def gguf_output(writer: gguf.GGUFWriter, tensors, out_path: Path, other_bytes: int, what: str
                ) -> Iterator[tuple[Path, BinaryIO]]:
    """Describe `tensors` (each with name, shape, nbytes, qtype) in `writer`, check there is room for them and
    `other_bytes` more, and write the header, metadata and tensor descriptions to a temp file beside `out_path`.
    Yields (temp path, open file) for the tensor data; the file takes its final name when the block succeeds."""
    for t in tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    ensure_free_space(out_path.resolve().parent, sum(t.nbytes for t in tensors) + other_bytes, what)
    with atomic_output(out_path) as tmp:
        try:
            writer.write_header_to_file(tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            yield tmp, writer.fout[0]
        finally:
            writer.close()


def resolve_outtype(src_dir: str | Path, outtype: str = "auto") -> str:
    """The concrete outtype `outtype` means for this checkpoint (`auto` -> its stored precision)."""
    ckpt, _, _, planned = _read_checkpoint(Path(src_dir))
    return _resolve(outtype, ckpt, planned)


def resolve_file_type(src_dir: str | Path, outtype: str = "auto") -> str:
    """The file type the GGUF will declare, named as `read_gguf` reads it back ("F16", "BF16", "ALL_F32")."""
    return OUTTYPES[resolve_outtype(src_dir, outtype)][0].name.removeprefix("MOSTLY_")


def _read_checkpoint(src_dir: Path) -> tuple[Checkpoint, ArchSpec, HParams, list[PlannedTensor]]:
    return _plan_checkpoint(open_checkpoint(src_dir))


def _plan_checkpoint(ckpt: Checkpoint) -> tuple[Checkpoint, ArchSpec, HParams, list[PlannedTensor]]:
    text = text_part(ckpt.config, list(ckpt.tensors))
    if text is not None:
        config, names = text
        ckpt = Checkpoint(ckpt.folder, config, {new: ckpt.tensors[old] for new, old in names.items()})
    arch = arch_for(ckpt.config)
    hp = read_hparams(ckpt.config)
    check_config(arch, ckpt.config, hp)
    planned = plan_tensors(arch, hp, {n: e.shape for n, e in ckpt.tensors.items()})
    for p in planned:
        if not _is_mxfp4(p) and (stored := next((n for n in p.hf if ckpt.tensors[n].dtype in PACKED_DTYPES), None)):
            raise EdgeError(f"tensor {stored} is stored as {ckpt.tensors[stored].dtype}, which this converter reads only as MXFP4 experts")
    return ckpt, arch, hp, planned


def _is_mxfp4(p: PlannedTensor) -> bool:
    return p.experts is not None and EXPERT_LAYOUTS[p.experts].mxfp4


def _resolve(outtype: str, ckpt: Checkpoint, planned: list[PlannedTensor]) -> str:
    if outtype != "auto":
        return outtype
    by_dtype: dict[str, int] = {}  # the float dtype most weight bytes are stored in (MXFP4 experts stay as they are)
    for p in planned:
        for name in p.hf:
            entry = ckpt.tensors[name]
            if entry.dtype not in PACKED_DTYPES:
                by_dtype[entry.dtype] = by_dtype.get(entry.dtype, 0) + entry.nbytes
    return AUTO_FROM_SOURCE[max(by_dtype, key=by_dtype.__getitem__)]


def _out_tensor(p: PlannedTensor, ckpt: Checkpoint, hp: HParams, wtype: Q) -> OutTensor:
    # llama.cpp keeps 1-D tensors, biases, norms and routers in F32; Q8_0 needs rows of whole 32-value blocks.
    qtype = wtype
    layout = EXPERT_LAYOUTS[p.experts] if p.experts else None
    scales = None
    if layout and layout.mxfp4:
        qtype, scales = Q.MXFP4, ckpt.tensors[layout.scales_name(p.hf[0])]
    elif len(p.shape) <= 1 or p.gguf.endswith(("_norm.weight", ".bias")) or p.keep_f32:
        qtype = Q.F32
    elif qtype == Q.Q8_0 and p.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        qtype = Q.F16
    groups = {"q": hp.n_head, "k": hp.n_head_kv}.get(p.permute or "", 0)
    reorder = partial(REORDERS[p.reorder], hp) if p.reorder else None
    values = VALUE_MAPS[p.values] if p.values else None
    return OutTensor(p.gguf, p.shape, qtype, tuple(ckpt.tensors[n] for n in p.hf), groups, p.shift, reorder=reorder, values=values,
                     experts=layout, scales=scales)


def _rope_factors(arch: ArchSpec, hp: HParams) -> list[OutTensor]:
    """Rope scalings llama.cpp reads as per-frequency factor tensors, when the config uses the arch's kind."""
    kind = hp.rope["rope_type"]
    if kind == "su":  # Phi-3's early name for longrope
        kind = "longrope"
    if arch.rope_factors is None or kind != arch.rope_factors:
        return []
    return [OutTensor(name, data.shape, Q.F32, data=data) for name, data in ROPE_FACTORS[kind](hp)]


def _llama3_rope_freqs(hp: HParams) -> list[tuple[str, np.ndarray]]:
    """Llama 3.1+ rope scaling: per-frequency factors that llama.cpp reads from `rope_freqs.weight`."""
    rope = hp.rope
    dim = hp.head_dim
    f32 = np.float32
    freqs = f32(1.0) / (f32(hp.rope_theta) ** (np.arange(0, dim, 2, dtype=f32) / f32(dim)))
    factor = f32(rope.get("factor", 8.0))
    low, high = f32(rope.get("low_freq_factor", 1.0)), f32(rope.get("high_freq_factor", 4.0))
    old_ctx = f32(rope.get("original_max_position_embeddings", 8192))
    wavelen = f32(2 * math.pi) / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    middle = f32(1) / ((f32(1) - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, f32(1), np.where(wavelen > old_ctx / low, factor, middle)).astype(f32)
    return [("rope_freqs.weight", out)]


def _longrope_factors(hp: HParams) -> list[tuple[str, np.ndarray]]:
    """Phi-3's long-context rope: one factor per rotated frequency for short and for long contexts."""
    out = []
    for kind in ("long", "short"):
        factors = hp.rope.get(f"{kind}_factor")
        ok = isinstance(factors, list) and len(factors) == hp.n_rot // 2
        if not (ok and all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) for f in factors)):
            raise EdgeError(f"config.json's rope {kind}_factor must list {hp.n_rot // 2} numbers (one per rotated frequency)")
        out.append((f"rope_factors_{kind}.weight", np.asarray(factors, dtype=np.float32)))
    return out


def _proportional_rope_freqs(hp: HParams) -> list[tuple[str, np.ndarray]]:
    """Gemma 4's global layers rotate only the first pairs of each head half; llama.cpp's rope rotates every
    pair, so the rest get factors that make their wavelength infinite (an angle of zero)."""
    pairs = hp.head_dim_full // 2
    rotated = int(hp.head_dim_full * float(hp.rope["partial_rotary_factor"]) / 2)
    return [("rope_freqs.weight", np.asarray([1.0] * rotated + [1e30] * (pairs - rotated), dtype=np.float32))]


ROPE_FACTORS = {"llama3": _llama3_rope_freqs, "longrope": _longrope_factors, "proportional": _proportional_rope_freqs}


# One chunk of output: (tensor index, whether it ends the tensor, its GGUF bytes)
Chunk = tuple[int, bool, memoryview]


def _chunk_jobs(tensors: list[OutTensor]) -> Iterator[Callable[[], Chunk]]:
    """Jobs that each read and encode a few MiB of one tensor (stacked experts one after the other); a tensor
    whose rows move between heads is one job, read whole."""
    for index, t in enumerate(tensors):
        if t.data is not None:
            yield partial(_as_chunk, index, True, t.data)
            continue
        for k, src in enumerate(t.sources):
            final_source = k == len(t.sources) - 1
            if t.permute_groups or t.reorder:
                yield partial(_encoded_rows, index, final_source, t, src, 0, src.n_rows)
                continue
            encode = _expert_rows if t.experts else _encoded_rows
            step = max(1, CHUNK_BYTES // max(1, src.nbytes // src.n_rows))
            for start in range(0, src.n_rows, step):
                stop = min(src.n_rows, start + step)
                yield partial(encode, index, final_source and stop == src.n_rows, t, src, start, stop)


def _as_chunk(index: int, last: bool, values: np.ndarray) -> Chunk:
    return index, last, memoryview(np.ascontiguousarray(values).reshape(-1).view(np.uint8))


def _encoded_rows(index: int, last: bool, t: OutTensor, src: TensorEntry, start: int, stop: int) -> Chunk:
    raw = src.read_rows(start, stop)
    if t.permute_groups:  # rows move between heads
        raw = permute_rows(raw.reshape(src.shape[0], -1), t.permute_groups)
    if t.reorder:
        raw = t.reorder(raw.reshape(src.shape[0], -1))
    return _as_chunk(index, last, _encode(raw, src, t))


def _expert_rows(index: int, last: bool, t: OutTensor, src: TensorEntry, start: int, stop: int) -> Chunk:
    """Experts [start, stop) of a fused experts tensor: the rows of theirs this GGUF tensor takes."""
    layout = t.experts
    assert layout is not None
    raw = src.read_rows(start, stop).reshape(stop - start, *src.shape[1:])
    if layout.transposed:
        raw = raw.swapaxes(1, 2)
    raw = raw[:, layout.rows]
    if t.scales is not None:
        scales = t.scales.read_rows(start, stop).reshape(stop - start, *t.scales.shape[1:])[:, layout.rows]
        return _as_chunk(index, last, mxfp4_to_ggml(raw, scales))
    return _as_chunk(index, last, _encode(np.ascontiguousarray(raw), src, t))


def mxfp4_to_ggml(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 as released (16 bytes per 32 values, value 2i in byte i's low nibble and 2i+1 in its high one; the
    E8M0 scale bytes apart) as ggml's blocks: the scale byte, then 16 bytes with value j in byte j's low nibble
    and value j + 16 in its high one. Only bits move; the 4-bit codes and scales mean the same to both."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], 32)
    packed = codes[..., :16] | (codes[..., 16:] << 4)
    return np.concatenate([scales[..., None], packed], axis=-1)


# stored type -> GGUF type whose bits are the same
_SAME_BITS = {("BF16", Q.BF16), ("F16", Q.F16), ("F32", Q.F32)}


def _encode(raw: np.ndarray, src: TensorEntry, t: OutTensor) -> np.ndarray:
    exact = not t.shift and t.values is None
    if exact and (src.dtype, t.qtype) in _SAME_BITS:
        return raw  # copied as they are
    if exact and (src.dtype, t.qtype) == ("BF16", Q.F16):
        return _bf16_to_f16(raw, src)
    values = to_float32(raw, src.dtype)
    if t.values is not None:
        values = t.values(values).astype(np.float32)
    if t.shift:
        values = values + np.float32(t.shift)  # in float32, as transformers computes 1 + w
    if t.qtype == Q.F32:
        return values
    if t.qtype == Q.F16:
        with np.errstate(over="ignore"):  # overflow is checked right below, with a better message
            out = values.astype(np.float16)
        if np.isinf(out).any() and (np.isinf(out) & np.isfinite(values)).any():
            _too_large_for_f16(src, values)
        return out
    return gguf.quants.quantize(values, t.qtype)


@cache
def _bf16_f16_table() -> np.ndarray:
    """Every bfloat16 bit pattern's float16 bits, rounded as numpy casts float32 to float16."""
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32).astype(np.float16).view(np.uint16)


def _bf16_to_f16(raw: np.ndarray, src: TensorEntry) -> np.ndarray:
    """bfloat16 -> float16 by table lookup: one pass, no float32 copy in between."""
    magnitude = raw & np.uint16(0x7FFF)
    if magnitude.max(initial=0) >= BF16_F16_OVERFLOW:  # rare: look closer (bfloat16 inf and nan may stay)
        if ((magnitude >= BF16_F16_OVERFLOW) & (magnitude < BF16_INF)).any():  # finite, but inf as float16
            _too_large_for_f16(src, to_float32(raw, "BF16"))
    return _bf16_f16_table()[raw]


BF16_F16_OVERFLOW = 0x4780  # 65536: the smallest bfloat16 magnitude float16 cannot hold (its largest is 65504)
BF16_INF = 0x7F80


def _too_large_for_f16(src: TensorEntry, values: np.ndarray) -> None:
    peak = float(np.abs(values[np.isfinite(values)]).max())
    raise EdgeError(
        f"tensor {src.name} has values up to {peak:.4g}, beyond float16's range (65504): "
        "converting to f16 would write inf; use --outtype bf16 or f32"
    )


def _add_metadata(w: gguf.GGUFWriter, arch: ArchSpec, hp: HParams, ckpt: Checkpoint, ftype: FT, vocab: Vocab) -> None:
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(ckpt.folder.resolve().name)
    w.add_block_count(hp.n_layers)
    w.add_context_length(hp.n_ctx)
    w.add_embedding_length(hp.n_embd)
    if hp.n_ff:
        w.add_feed_forward_length(hp.n_ff)
    w.add_head_count(hp.n_head)
    if arch.kv_heads_per_layer:
        w.add_head_count_kv([0 if hp.recurrent and hp.recurrent[il] else hp.n_head_kv for il in range(hp.n_layers)])
    else:
        w.add_head_count_kv(hp.head_count_kv)
    w.add_rope_freq_base(hp.rope_theta)
    w.add_layer_norm_rms_eps(hp.rms_eps)
    if hp.has_head_dim:
        w.add_key_length(hp.head_dim_full)
        w.add_value_length(hp.head_dim_full)
    w.add_file_type(ftype)
    w.add_vocab_size(hp.n_vocab)
    w.add_rope_dimension_count(hp.n_rot)
    if hp.n_expert:
        w.add_expert_count(hp.n_expert)
        w.add_expert_used_count(hp.n_expert_used)
    for writer, value in metadata_values(arch, ckpt.config, hp):
        if writer.startswith("{arch}."):  # a key this gguf package has no method for
            w.add_array(writer.format(arch=w.arch), value)
        else:
            getattr(w, writer)(value)
    _add_rope_scaling(w, arch, hp)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to_gguf(w)


def _add_rope_scaling(w: gguf.GGUFWriter, arch: ArchSpec, hp: HParams) -> None:
    rope = hp.rope
    kind = {"su": "longrope"}.get(rope["rope_type"], rope["rope_type"])
    if kind == "default" or kind == arch.rope_factors:  # factor tensors carry it (rope_freqs, rope_factors_*)
        return
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rope["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rope["factor"])
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
        for key, writer in YARN_KEYS:
            value = rope.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise EdgeError(f"config.json has a bad value for the rope's {key}: {value!r}")
            getattr(w, writer)(value)
    else:
        known = ", ".join(["default", "linear", "yarn", *([arch.rope_factors] if arch.rope_factors else [])])
        raise EdgeError(f"unsupported rope_type {kind!r} in config.json for {arch.hf_arch}; supported: {known}")


# YaRN's ramp and scale settings, where the config gives them (llama.cpp's defaults otherwise)
YARN_KEYS = (
    ("extrapolation_factor", "add_rope_scaling_yarn_ext_factor"),
    ("attention_factor", "add_rope_scaling_yarn_attn_factor"),
    ("beta_fast", "add_rope_scaling_yarn_beta_fast"),
    ("beta_slow", "add_rope_scaling_yarn_beta_slow"),
)


def _vocab_bytes(vocab: Vocab) -> int:
    """An upper bound for the header: token strings, merges and per-token fields."""
    merges = vocab.special.merges
    return sum(len(t) + 16 for t in vocab.tokens) + sum(len(m) + 8 for m in merges) + (1 << 20)


class _Progress:
    """A rich progress bar on stderr over bytes written (nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.bar = None
        if enabled:
            from edgellm.progress import progress_bar

            self.bar = progress_bar("bytes")
            self.task = self.bar.add_task(f"writing {label}", total=total)

    def __enter__(self) -> _Progress:
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.update(self.task, advance=n)


class _NoVocab:
    """Stands in for the vocabulary where only the model's shape is wanted."""

    def add_to_gguf(self, w: gguf.GGUFWriter) -> None:
        pass


def describe_output(ckpt: Checkpoint, outtype: str = "auto") -> tuple[dict, list[OutTensor]]:
    """What `convert_checkpoint` would write from `ckpt`, without reading a weight or the tokenizer: the
    header's metadata (key -> value, no vocabulary) and the tensors, with their types and sizes. `ckpt` may
    describe files that are not here (safetensors headers read from a hub); the same checks apply."""
    ckpt, arch, hp, planned = _plan_checkpoint(ckpt)
    ftype, wtype = OUTTYPES[_resolve(outtype, ckpt, planned)]
    writer = gguf.GGUFWriter(None, arch.gguf_arch)
    _add_metadata(writer, arch, hp, ckpt, ftype, _NoVocab())
    meta = {key: v.value for key, v in writer.kv_data[0].items()}
    return meta, _rope_factors(arch, hp) + [_out_tensor(p, ckpt, hp, wtype) for p in planned]
