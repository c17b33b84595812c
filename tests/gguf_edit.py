"""Copies of a real GGUF with some metadata changed: how tests make files with impossible hyper-parameters."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

# key -> new value; None removes the key. A value's GGUF type is the old one's, or `typed(value, type)`.
Changes = dict[str, Any]


class typed:  # noqa: N801 - reads as a marker at the call site: {"llama.block_count": typed(-1, INT32)}
    def __init__(self, value: Any, vtype) -> None:
        self.value, self.vtype = value, vtype


def copy_gguf(src: Path, dst: Path, changes: Changes, data: bool = True) -> Path:
    """Write `dst`: `src`'s metadata with `changes` applied and its tensors. With data=False the tensor
    data is left a hole in the file (instant, no disk used): enough for anything that reads only the header."""
    from gguf import GGUFWriter

    reader, fields = _read(Path(src))
    writer = GGUFWriter(dst, fields["general.architecture"][2])
    todo = dict(changes)
    for name, (vtype, sub, value) in fields.items():
        if name == "general.architecture":
            continue  # the writer adds it itself
        value = todo.pop(name, value)
        if value is None:
            continue
        if isinstance(value, typed):
            value, vtype, sub = value.value, value.vtype, None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    for name, value in todo.items():  # keys the source does not have
        if isinstance(value, typed):
            writer.add_key_value(name, value.value, value.vtype)
        elif value is not None:
            raise ValueError(f"{name} is new: give its type with typed(value, GGUFValueType.X)")
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    if data:
        for t in reader.tensors:
            writer.write_tensor_data(t.data)
    else:
        fout = writer.fout[0]
        writer.write_padding(fout, fout.tell())
        fout.truncate(fout.tell() + sum(writer.ggml_pad(t.data.nbytes, writer.data_alignment) for t in reader.tensors))
    writer.close()
    return Path(dst)


@lru_cache(maxsize=4)
def _read(src: Path):
    """The reader and its metadata as {name: (type, item type, value)}, once per file (a vocabulary is slow to read)."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(src)
    fields = {}
    for name, field in reader.fields.items():
        if not name.startswith("GGUF."):
            vtype = field.types[0]
            fields[name] = (vtype, field.types[-1] if vtype == GGUFValueType.ARRAY else None, field.contents())
    return reader, fields
