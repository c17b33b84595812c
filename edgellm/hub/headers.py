"""What a repo's files say about the model before they are downloaded: GGUF headers, safetensors headers
and config.json, read through `ranges` (byte ranges online, the cached copy offline).

A GGUF header holds the shape, the context length and every tensor's type and size, but also the
tokenizer's vocabulary before the tensor list: about 1.7 MiB for SmolLM2, 7.5 MiB for Llama 3. It is read
from the start in growing steps (2 MiB, then at least twice as much each time), never past
MAX_GGUF_HEADER. A safetensors header is an 8-byte length and that much JSON, at most MAX_SAFETENSORS_HEADER:
its first 256 KiB, then the rest if it is longer.
Every header is checked as a file on disk would be (`read_gguf_prefix`, `gguf_checks`, the converter's
own safetensors checks) before anything is planned from it.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from ..errors import EdgeError
from ..formats import gguf_split
from ..formats.gguf_checks import check
from ..formats.gguf_info import GGUFInfo, Truncated, read_gguf_prefix
from .clients import RemoteFile

FIRST_READ = 2 << 20
PART_FIRST_READ = 64 << 10  # a split's later parts hold no vocabulary: their headers list tensors only
SAFETENSORS_FIRST_READ = 256 << 10  # a shard's header lists its tensors: tens of KiB, a MoE shard's a few hundred
# Below the planner's runtime overhead (72 MiB): a file larger than the memory usable here by more than its
# header cannot fit, so the planner may judge it by its size without reading it.
MAX_GGUF_HEADER = 64 << 20
MAX_SAFETENSORS_HEADER = 100 << 20  # as the converter allows
MAX_CONFIG = 4 << 20  # config.json is a few KiB


def level_header(reader, files: list[RemoteFile]) -> GGUFInfo:
    """The checked header of a level in the GGUF files `files`: one file, or every part of a split one (its
    sizes and tensors all theirs, `gguf_split`), each part's header read and the set found complete."""
    by_path = {f.path: f for f in files}
    first = by_path[min(by_path)]
    info = _prefix(reader, first, FIRST_READ)
    folder = PurePosixPath(first.path).parent
    names = gguf_split.part_names(first.path, info.metadata)
    rest = []
    for i, name in enumerate(names[1:], start=2):
        part = by_path.get(str(folder / name))
        if part is None:
            raise EdgeError(f"{name} is missing from the repo: the level is split in {len(names)} files and part {i} "
                            f"is not listed beside {first.path}")  # fmt: skip
        rest.append(_prefix(reader, part, PART_FIRST_READ))
    return check(gguf_split.join(info, rest)) if rest else check(info)


def _prefix(reader, f: RemoteFile, first_read: int) -> GGUFInfo:
    """The unchecked header of the GGUF file `f`, read from its start in growing steps."""
    data = b""
    want = min(first_read, f.size)
    while True:
        got = reader.read(f, len(data), want - len(data))
        data += got
        try:
            return read_gguf_prefix(data, f.path, f.size)
        except Truncated as cut:
            if not got or len(data) >= f.size:
                raise EdgeError(f"corrupt GGUF header in {f.path}: it runs past the end of the file") from None
            if cut.needed > MAX_GGUF_HEADER:
                raise EdgeError(
                    f"{f.path} has a GGUF header of more than {MAX_GGUF_HEADER >> 20} MiB: refused (none is that large)"
                ) from None
            want = min(max(cut.needed, 2 * len(data)), MAX_GGUF_HEADER, f.size)


def safetensors_header(reader, f: RemoteFile) -> tuple[bytes, int]:
    """(the JSON header, its length) of the safetensors file `f`."""
    from ..quantize.checkpoint import header_length

    first = reader.read(f, 0, min(SAFETENSORS_FIRST_READ, f.size))
    n = header_length(first[:8], f.size, f.path, MAX_SAFETENSORS_HEADER)
    rest = reader.read(f, len(first), 8 + n - len(first)) if 8 + n > len(first) else b""
    return (first + rest)[8 : 8 + n], n


def json_file(reader, f: RemoteFile) -> dict[str, Any]:
    """A small JSON settings file of the repo (config.json), which must hold one object."""
    if f.size > MAX_CONFIG:
        raise EdgeError(f"{f.path} is {f.size:,} bytes: too large for a settings file")
    data = reader.read(f, 0, f.size)
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgeError(f"{f.path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EdgeError(f"{f.path} is not a JSON object")
    return value


def checkpoint_tensors(reader, weights: list[RemoteFile]) -> dict:
    """Every tensor of the checkpoint's safetensors files, as the converter indexes them (name -> TensorEntry,
    its file named by its path in the repo); the converter's checks apply (dtypes, extents, duplicates)."""
    from ..quantize.checkpoint import tensor_entries

    out: dict = {}
    for f in weights:
        header, n = safetensors_header(reader, f)
        for entry in tensor_entries(header, n, f.size, Path(f.path)):
            if entry.name in out:
                raise EdgeError(f"tensor {entry.name} appears in two files ({out[entry.name].file}, {f.path})")
            out[entry.name] = entry
    return out
