"""A GGUF file split in parts of at most a given size, as `llama-gguf-split --split --split-max-size` splits
it: `<stem>-00001-of-00003.gguf` ... beside it, the metadata in the first part, each part's tensors whole.

Hosts cap a file's size (the Hugging Face Hub at 50 GB): a package's larger levels go up in parts, and
llama.cpp opens them from the first (`edgellm.formats.gguf_split` reads them back as one model).

    split_gguf(Path("pkg/Llama-Q8_0.gguf"), 40 << 30)   # -> [pkg/Llama-Q8_0-00001-of-00002.gguf, ...]
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UsageError

ALIGNMENT_KEY = "general.alignment"
MIN_PART = 1 << 20  # a smaller limit would make a part per tensor


def split_gguf(path: Path, max_bytes: int) -> list[Path]:
    """Write `path`'s tensors into parts of at most `max_bytes` of tensor data each (a tensor larger than that
    gets a part of its own) beside it, and return them, the first first; [path] when it fits in one. The parts
    are written in a folder beside them and moved in once all are complete; `path` itself is left as it is."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    if max_bytes < MIN_PART:
        raise UsageError(f"a split size of {max_bytes} bytes is too small: give at least 1M")
    path = Path(path)
    reader = GGUFReader(path)
    if sum(int(t.n_bytes) for t in reader.tensors) <= max_bytes or len(reader.tensors) < 2:
        return [path]
    arch = reader.fields["general.architecture"].contents()
    work = Path(tempfile.mkdtemp(prefix=f".{path.stem}.split-", dir=path.parent))
    try:
        writer = GGUFWriter(work / path.name, arch, split_max_size=max_bytes)
        for field in reader.fields.values():
            if field.name == "general.architecture" or field.name.startswith("GGUF."):
                continue  # written by the writer itself
            if field.name == ALIGNMENT_KEY:
                writer.data_alignment = int(field.contents())
            kind = field.types[0]
            sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
        for t in reader.tensors:  # views of the memory-mapped file: the data is read as it is written
            writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)  # quantized: the shape in bytes, as read
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        made = sorted(work.iterdir())
        for part in made:
            os.replace(part, path.parent / part.name)
        return [path.parent / part.name for part in made]
    finally:
        shutil.rmtree(work, ignore_errors=True)
