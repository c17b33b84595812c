"""Reading a Hugging Face checkpoint folder: its config and its safetensors weights.

Weights are never loaded whole: each tensor is located in its file from the safetensors header and
read later in row chunks by byte range, so memory stays near one chunk, not the model (a single big
memory map would count every touched page in the process's RSS).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgellm.errors import EdgeError

# safetensors dtype -> (numpy dtype used to hold the raw bits, bytes per element)
DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bfloat16 bits; widened to float32 by to_float32()
    "U8": np.dtype("u1"),  # packed quantized values (MXFP4 blocks and scales), never read as numbers
}
PACKED_DTYPES = ("U8",)
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
# Bytes of source tensor read at once: peak memory stays near one chunk, not one tensor.
CHUNK_BYTES = 16 << 20
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: file, absolute offset, size, and its dtype/shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    offset: int
    nbytes: int

    @property
    def n_rows(self) -> int:
        """A matrix's rows; a 1-D tensor is one row."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def row_elems(self) -> int:
        return math.prod(self.shape[1:] if len(self.shape) > 1 else self.shape)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a 2-D array of the raw dtype, read with one read call."""
        dt = DTYPES[self.dtype]
        row_bytes = self.row_elems * dt.itemsize
        buf = np.empty((stop - start) * self.row_elems, dtype=dt)
        with open(self.file, "rb", buffering=0) as f:
            f.seek(self.offset + start * row_bytes)
            n = f.readinto(memoryview(buf).cast("B"))
        if n != buf.nbytes:
            raise EdgeError(f"truncated safetensors file {self.file.name}: tensor {self.name} is cut short")
        return buf.reshape(stop - start, self.row_elems)


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Widen raw tensor bits to float32 (exact for F16 and BF16)."""
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorEntry] = field(repr=False)


def open_checkpoint(folder: str | Path) -> Checkpoint:
    """Read config.json and every safetensors header in `folder`; EdgeError with one line on bad input."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgeError(f"not a checkpoint folder: {folder}")
    return Checkpoint(folder=folder, config=read_config(folder), tensors=index_tensors(folder))


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise EdgeError(f"missing config.json in {folder}")
    config = read_json_object(path)
    # Multimodal wrappers keep the language model's settings under text_config; the wrapper's class names the
    # checkpoint (SmolVLM's text_config lists its text class too).
    text = config.get("text_config")
    return {**config, **{k: v for k, v in text.items() if k != "architectures"}} if isinstance(text, dict) else config


def read_json_object(path: Path, max_bytes: int = _MAX_HEADER) -> dict[str, Any]:
    """A settings file that must hold one JSON object (config.json, adapter_config.json); EdgeError otherwise."""
    where = f"{path.name} in {path.parent}"
    if path.stat().st_size > max_bytes:
        raise EdgeError(f"{where} is {path.stat().st_size} bytes: too large for a settings file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise EdgeError(f"{where} is not a JSON object")
    return config


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint: from the shard index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise EdgeError(f"bad shard index {index.name}: {exc}") from exc
        files = [folder / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise EdgeError(f"shard(s) listed in {index.name} are missing: {', '.join(missing)}")
        return files
    if (folder / "model.safetensors").is_file():
        return [folder / "model.safetensors"]
    # Mistral repos may also carry consolidated.safetensors: the same weights in Mistral's own naming.
    files = sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("consolidated"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise EdgeError(
            f"refusing pickle weights ({', '.join(pickles[:3])}): loading a pickle can run arbitrary code; "
            "convert them to safetensors first"
        )
    raise EdgeError(f"no weights in {folder}: expected model.safetensors or sharded *.safetensors")


def index_tensors(folder: Path) -> dict[str, TensorEntry]:
    tensors: dict[str, TensorEntry] = {}
    for path in weight_files(folder):
        for entry in read_safetensors_header(path):
            if entry.name in tensors:
                raise EdgeError(f"tensor {entry.name} appears in two files ({tensors[entry.name].file.name}, {path.name})")
            tensors[entry.name] = entry
    return tensors


def read_safetensors_header(path: Path) -> Iterator[TensorEntry]:
    """Parse one safetensors header and check every tensor's bytes lie inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = header_length(f.read(8), size, path.name)
        header = f.read(n)
    yield from tensor_entries(header, n, size, path)


def header_length(first: bytes, size: int, name: str, limit: int = _MAX_HEADER) -> int:
    """The JSON header's length from a safetensors file's first 8 bytes, checked against the file's size."""
    if len(first) < 8:
        raise EdgeError(f"truncated safetensors file {name}: {size} bytes")
    (n,) = struct.unpack("<Q", first[:8])
    if n > min(size - 8, limit):
        raise EdgeError(f"corrupt or truncated safetensors file {name}: header claims {n} bytes")
    return n


def tensor_entries(header: bytes, n: int, size: int, path: Path) -> Iterator[TensorEntry]:
    """The tensors an `n`-byte safetensors header describes, each checked to lie inside the file's `size`."""
    try:
        header = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeError(f"corrupt safetensors file {path.name}: bad header ({exc})") from exc
    if not isinstance(header, dict):
        raise EdgeError(f"corrupt safetensors file {path.name}: its header is not a JSON object")
    data_start = 8 + n
    data_size = size - data_start
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = meta["dtype"], tuple(int(d) for d in meta["shape"]), meta["data_offsets"]
        except (KeyError, TypeError, ValueError) as exc:
            raise EdgeError(f"corrupt safetensors file {path.name}: bad entry for {name}") from exc
        if dtype not in DTYPES:
            raise EdgeError(f"tensor {name} in {path.name} has dtype {dtype}; supported: {', '.join(DTYPES)}")
        if not (isinstance(begin, int) and isinstance(end, int)) or min(shape, default=0) < 0:
            raise EdgeError(f"corrupt safetensors file {path.name}: bad entry for {name}")
        if end - begin != math.prod(shape) * DTYPES[dtype].itemsize or begin < 0:
            raise EdgeError(f"corrupt safetensors file {path.name}: tensor {name} size disagrees with its shape")
        if end > data_size:
            raise EdgeError(
                f"truncated safetensors file {path.name}: tensor {name} ends at byte {data_start + end}, file has {size}"
            )
        yield TensorEntry(name, dtype, shape, path, data_start + begin, end - begin)


def read_json(path: Path) -> Any:
    """A JSON side file (tokenizer.json, tokenizer_config.json...), None if absent."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgeError(f"{path.name} is not valid JSON: {exc}") from exc
