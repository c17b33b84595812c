"""What a GGUF file holds, read from its header only (tensor data is never touched)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import EdgeError

_LAYER = re.compile(r"^blk\.(\d+)\.")
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


def _reader_class():
    """GGUFReader that steps over long arrays instead of making a numpy view per item.

    A Llama 3 vocabulary is ~400k strings; the stock reader takes ~25 s on them, this one well under a
    second. Long arrays keep only their type and length parts ([item type, length]) and no data."""
    import struct

    from gguf import GGUFReader, GGUFValueType

    class HeaderReader(GGUFReader):
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
                o += 8 + length(buf, o)[0]
            return o - offs

    return HeaderReader


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
    """Read a GGUF header. Missing, non-GGUF or truncated files raise EdgeError with one line."""
    from gguf import GGMLQuantizationType, LlamaFileType

    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"no such file: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise EdgeError(f"not a GGUF file: {path}")
    try:
        reader = _reader_class()(path, "r")
    except Exception as exc:  # the reader raises ValueError/IndexError/struct errors on damaged headers
        raise EdgeError(f"corrupt GGUF file {path}: {exc}") from exc

    meta = {name: _plain(f) for name, f in reader.fields.items() if not name.startswith("GGUF.")}
    arch = str(meta.get("general.architecture", "unknown"))

    def key(suffix: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{suffix}", default)

    tensors = []
    for t in reader.tensors:
        m = _LAYER.match(t.name)
        tensors.append(
            TensorInfo(
                name=t.name,
                ggml_type=GGMLQuantizationType(t.tensor_type).name,
                shape=tuple(int(x) for x in t.shape),
                n_elements=int(t.n_elements),
                n_bytes=int(t.n_bytes),
                layer=int(m.group(1)) if m else None,
            )
        )

    n_embd = _whole(key("embedding_length", 0))
    n_head = _whole(_first(key("attention.head_count", 0)))
    n_head_kv = _whole(_first(key("attention.head_count_kv", n_head)))
    head_dim = n_embd // n_head if n_head else 0
    ftype = meta.get("general.file_type")
    try:
        file_type = LlamaFileType(ftype).name.removeprefix("MOSTLY_") if ftype is not None else None
    except ValueError:
        file_type = None
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return GGUFInfo(
        path=path,
        file_size=path.stat().st_size,
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
        n_vocab=_whole(key("vocab_size", _array_len(tokens) if tokens else 0)),
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
