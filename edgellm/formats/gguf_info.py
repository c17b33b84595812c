"""What a GGUF file holds, read from its header only (tensor data is never touched).

`read_gguf` reads a model on disk (all parts of a split one); `read_gguf_prefix` reads the first bytes of a file that is elsewhere (a
hub's, fetched by byte range), saying how many more it needs when they end inside the header.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EdgeError
from . import gguf_split

_LAYER = re.compile(r"^blk\.(\d+)\.")
# Expert tensors, as llama.cpp's --n-cpu-moe matches them (`blk.N` + this).
EXPERT_TENSOR = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")
# Metadata arrays longer than this (token lists, merges, scores) are summarised, not copied.
_MAX_ARRAY = 1024


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str
    shape: tuple[int, ...]  # GGUF order: fastest-varying dimension first
    n_elements: int
    n_bytes: int
    layer: int | None  # N for `blk.N.*`, None for embeddings, output and norms outside layers


RANK_POOLING = 4  # llama.cpp's LLAMA_POOLING_TYPE_RANK, as `<arch>.pooling_type` holds it


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    arch: str
    name: str | None
    file_type: str | None  # llama.cpp's file type name, e.g. "MOSTLY_Q4_K_M" -> "Q4_K_M"
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    metadata: dict[str, Any] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)
    # A model split in several files (`gguf_split`): every part, the first (`path`) first. `file_size` and
    # `tensors` are then the whole model's; () for a model in one file.
    parts: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the model takes on disk."""
        return self.parts or (self.path,)

    @property
    def ranks(self) -> bool:
        """A reranker: it scores (query, document) pairs. The GGUF says so with rank pooling, or holds a
        classifier head of one output (llama.cpp's `cls.output`, or `cls` alone), as converted cross-encoders do."""
        if self.metadata.get(f"{self.arch}.pooling_type") == RANK_POOLING:
            return True
        heads = {t.name: t.shape for t in self.tensors if t.name in ("cls.output.weight", "cls.weight")}
        head = heads.get("cls.output.weight", heads.get("cls.weight"))
        return head is not None and len(head) == 2 and head[1] == 1

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.tensor_bytes / max(self.n_params, 1)

    def layer_bytes(self) -> list[int]:
        """Bytes of tensor data in each repeating layer `blk.N`."""
        out = [0] * self.n_layers
        for t in self.tensors:
            if t.layer is not None and t.layer < self.n_layers:
                out[t.layer] += t.n_bytes
        return out

    @property
    def non_layer_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors if t.layer is None)


class Truncated(ValueError):
    """The bytes end before the header does: at least `needed` bytes are needed."""

    def __init__(self, needed: int) -> None:
        super().__init__(f"cut short: reading it needs {needed:,} bytes")
        self.needed = needed


def header_reader_class():
    """GGUFReader that steps over long arrays instead of making a numpy view per item, and never reads past
    the end of its bytes (`Truncated` says how far it wanted to read).

    A Llama 3 vocabulary is ~400k strings; the stock reader takes ~25 s on them, this one well under a
    second. Long arrays keep only their type and length parts ([item type, length]) and no data."""
    import struct

    from gguf import GGUFReader, GGUFValueType

    class HeaderReader(GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            end = int(offset) + np.dtype(dtype).itemsize * int(count)
            if end > len(self.data):  # a damaged or cut file: numpy would hand back fewer items, silently
                raise Truncated(end)
            return super()._get(offset, dtype, count, override_order)

        def _get_field_parts(self, orig_offs, raw_type):
            if raw_type == GGUFValueType.ARRAY:
                itype = self._get(orig_offs, np.uint32)
                alen = self._get(orig_offs + 4, np.uint64)
                item = GGUFValueType(int(itype[0]))
                if int(alen[0]) > _MAX_ARRAY and item != GGUFValueType.ARRAY:
                    size = self._array_bytes(orig_offs + 12, item, int(alen[0]))
                    return 12 + size, [itype, alen], [], [GGUFValueType.ARRAY, item]
            return super()._get_field_parts(orig_offs, raw_type)

        def _array_bytes(self, offs, item, n):
            if item != GGUFValueType.STRING:
                return n * np.dtype(self.gguf_scalar_to_np[item]).itemsize
            length = struct.Struct(">Q" if self.byte_order == "S" else "<Q").unpack_from
            buf, o = memoryview(self.data), offs
            for _ in range(n):
                if o + 8 > len(buf):
                    raise Truncated(o + 8)
                o += 8 + length(buf, o)[0]
            return o - offs

    return HeaderReader


def _prefix_reader_class():
    """HeaderReader for the first bytes of a file: tensors are described from their infos (type, shape,
    offset) without views of their data, which is not there."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, ReaderTensor

    class PrefixReader(header_reader_class()):
        def _build_tensors(self, start_offs, fields):
            self.tensors = []
            for f in fields:
                _, name, _, dims, raw_type, offset = f.parts
                qtype = GGMLQuantizationType(int(raw_type[0]))  # ValueError for a type llama.cpp does not have
                n_elements = math.prod(int(d) for d in dims)  # Python ints: a forged shape cannot wrap around
                block, size = GGML_QUANT_SIZES[qtype]
                self.tensors.append(ReaderTensor(
                    name=bytes(name).decode("utf-8"), tensor_type=qtype, shape=dims, n_elements=n_elements,
                    n_bytes=n_elements * size // block, data_offset=int(start_offs) + int(offset[0]),
                    data=np.empty(0, np.uint8), field=f,
                ))  # fmt: skip

    return PrefixReader


def _array_len(field_) -> int:
    """Items in an array field (long arrays carry no data parts, only their length)."""
    return len(field_.data) if field_.data else int(field_.parts[-1][0])


def _plain(field_) -> Any:
    """A metadata value as a plain Python value (long arrays become a short summary)."""
    from gguf import GGUFValueType

    types = field_.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        n = _array_len(field_)
        if n > _MAX_ARRAY:
            return f"<array of {n}>"
        return [_scalar(field_.parts[i], types[-1]) for i in field_.data]
    return _scalar(field_.parts[field_.data[0]], types[0])


def _scalar(part: np.ndarray, vtype) -> Any:
    from gguf import GGUFValueType

    if vtype == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="replace")
    value = part.tolist()
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def read_gguf(path: str | Path) -> GGUFInfo:
    """Read a GGUF header: of a model split in several files, the first part's, with the tensors and sizes of
    all parts (`gguf_split`). Missing, non-GGUF or truncated files (or parts) raise EdgeError with one line."""
    return gguf_split.gather(read_gguf_file(path), read_gguf_file)


def read_gguf_file(path: str | Path) -> GGUFInfo:
    """Read the header of one GGUF file, whatever split it is part of."""
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"no such file: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise EdgeError(f"not a GGUF file: {path}")
    try:
        reader = header_reader_class()(path, "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damaged headers
        raise EdgeError(f"corrupt GGUF file {path}: {exc}") from exc
    return _info(reader, path, path.stat().st_size)


def read_gguf_prefix(data: bytes, name: str, file_size: int) -> GGUFInfo:
    """The header of a GGUF file of `file_size` bytes from its first bytes, `data` (the file is elsewhere:
    `name` is how it is called there). Raises Truncated when `data` ends inside the header, and EdgeError for
    bytes no GGUF file could start with, including tensors said to lie beyond the file's end."""
    import tempfile

    if data[:4] != b"GGUF":
        raise EdgeError(f"not a GGUF file: {name}")
    with tempfile.TemporaryFile() as f:  # GGUFReader maps a file; this one has no name and leaves nothing
        f.write(data)
        f.flush()
        try:
            reader = _prefix_reader_class()(f, "r")
        except Truncated:
            raise
        except Exception as exc:
            raise EdgeError(f"corrupt GGUF header in {name}: {exc}") from exc
        end = max((t.data_offset + t.n_bytes for t in reader.tensors), default=reader.data_offset)
        if end > file_size:
            raise EdgeError(f"corrupt GGUF header in {name}: its tensors need {end:,} bytes, the file has {file_size:,}")
        return _info(reader, Path(name), file_size)


def _info(reader, path: Path, file_size: int) -> GGUFInfo:
    """GGUFInfo from a parsed header."""
    from gguf import GGMLQuantizationType

    meta = {name: _plain(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = [
        TensorInfo(
            name=t.name,
            ggml_type=GGMLQuantizationType(t.tensor_type).name,
            shape=tuple(int(x) for x in t.shape),
            n_elements=int(t.n_elements),
            n_bytes=int(t.n_bytes),
            layer=None,  # set by make_info
        )
        for t in reader.tensors
    ]
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return make_info(path, file_size, meta, tensors, _array_len(tokens) if tokens else 0)


def make_info(path: Path, file_size: int, meta: dict[str, Any], tensors: list[TensorInfo], n_tokens: int = 0) -> GGUFInfo:
    """GGUFInfo from a header's metadata and tensors (read from a file, or estimated before one exists);
    `n_tokens`: the vocabulary's length, for files without a vocab_size key."""
    from gguf import LlamaFileType

    arch = str(meta.get("general.architecture", "unknown"))

    def key(suffix: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{suffix}", default)

    tensors = [replace(t, layer=int(m.group(1)) if (m := _LAYER.match(t.name)) else None) for t in tensors]
    n_embd = _whole(key("embedding_length", 0))
    n_head = _whole(_first(key("attention.head_count", 0)))
    kv = key("attention.head_count_kv", n_head)
    # hybrids list 0 KV heads for their recurrent layers: the attention layers' count is the one that says something
    n_head_kv = _whole(max(kv, key=_whole) if isinstance(kv, list) and kv else kv)
    head_dim = n_embd // n_head if n_head else 0
    ftype = meta.get("general.file_type")
    try:
        file_type = LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        file_type = None
    return GGUFInfo(
        path=path,
        file_size=file_size,
        arch=arch,
        name=meta.get("general.name"),
        file_type=file_type,
        n_layers=_whole(key("block_count", 0)),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=_whole(key("attention.key_length", head_dim)),
        head_dim_v=_whole(key("attention.value_length", head_dim)),
        n_ctx_train=_whole(key("context_length", 0)),
        n_vocab=_whole(key("vocab_size", n_tokens)),
        chat_template=meta.get("tokenizer.chat_template"),
        metadata=meta,
        tensors=tensors,
    )


def _whole(value: Any) -> int:
    """A count from the header. A damaged one may hold text, a list or NaN there: read as 0, which
    `gguf_checks` refuses for a model to load, while `inspect` can still show the file."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return 0
    return int(value)


def _first(value: Any) -> Any:
    """Per-layer arrays (some archs vary head counts by layer): take the first layer's value."""
    return value[0] if isinstance(value, list) and value else value
