"""A model split in several GGUF files (`llama-gguf-split --split`): one model, read from all its parts.

The parts are named `<prefix>-00001-of-00003.gguf` ... `<prefix>-00003-of-00003.gguf` and sit side by side;
each holds `split.no` (0-based), `split.count` and `split.tensors.count`, and only the first the model's
metadata. llama.cpp opens the first and finds the others by that name, so a part that is missing, misnamed
or from another split is named here, in one line, before it does. Parts are looked for only beside the
first: a name is built from the first's own file name, never taken from a header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any, Protocol, TypeVar

from ..errors import EdgeError


class Header(Protocol):
    """What is read here of a part's header (`gguf_info.GGUFInfo`, which imports this module)."""

    path: Path
    file_size: int
    metadata: dict[str, Any]
    tensors: list


H = TypeVar("H", bound=Header)

SPLIT_COUNT, SPLIT_NO, SPLIT_TENSORS = "split.count", "split.no", "split.tensors.count"
MAX_PARTS = 9999  # llama.cpp writes split.count as a uint16; no published model comes near this
_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


@dataclass(frozen=True)
class SplitName:
    """`<prefix>-<no>-of-<count>.gguf`, `no` counted from 1 as in the name."""

    prefix: str
    no: int
    count: int

    def part(self, no: int) -> str:
        return f"{self.prefix}-{no:05d}-of-{self.count:05d}.gguf"

    @property
    def first(self) -> str:
        return self.part(1)

    @property
    def whole(self) -> str:
        """The name the model would have in one file (`<prefix>.gguf`): where its level is read from."""
        return f"{self.prefix}.gguf"


def split_name(name: str) -> SplitName | None:
    """The split a file name says it belongs to, or None for a name that says none."""
    m = _NAME.match(PurePath(name).name)
    if not m:
        return None
    no, count = int(m.group("no")), int(m.group("count"))
    return SplitName(m.group("prefix"), no, count) if 1 <= no <= count else None


def is_later_part(name: str) -> bool:
    """A split part other than the first: listings show a split model once, by its first part."""
    s = split_name(name)
    return s is not None and s.count > 1 and s.no > 1


def orphans(names: Sequence[str]) -> list[str]:
    """The first parts that later parts among `names` (file names in one folder) need and do not find there."""
    have = {PurePath(n).name for n in names}
    return sorted({s.first for n in have if is_later_part(n) and (s := split_name(n)) and s.first not in have})


def whole_name(name: str) -> str:
    """The file name without a split's `-00001-of-00003`."""
    s = split_name(name)
    return s.whole if s and s.count > 1 else PurePath(name).name


def _count(meta: dict[str, Any], key: str, where: str, high: int) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise EdgeError(f"{where}: {key} = {value!r} is not a count of 0 to {high}; the file is damaged")
    return value


def split_count(meta: dict[str, Any], where: str) -> int:
    """How many files the model whose header this is takes: 1 for one not split."""
    if SPLIT_COUNT not in meta:
        return 1
    return max(_count(meta, SPLIT_COUNT, where, MAX_PARTS), 1)


def part_names(first: str, meta: dict[str, Any]) -> list[str]:
    """The file names of all parts of the model whose first file is named `first` (its header `meta`), first
    included; [first] for a model in one file. EdgeError when `first` is not the name of a first part."""
    n = split_count(meta, first)
    if n == 1:
        return [PurePath(first).name]
    no = _count(meta, SPLIT_NO, first, n - 1) if SPLIT_NO in meta else 0
    s = split_name(first)
    if no != 0:
        hint = f": open its first part, {s.first}" if s and s.count == n else ""
        raise EdgeError(f"{PurePath(first).name} is part {no + 1} of {n} of a split model{hint}")
    if s is None or s.no != 1 or s.count != n:
        raise EdgeError(
            f"{PurePath(first).name} is the first of {n} parts of a split model, but its name does not end in "
            f"-00001-of-{n:05d}.gguf, by which llama.cpp finds the other parts"
        )
    return [s.part(i) for i in range(1, n + 1)]


def join(first: H, rest: Sequence[H]) -> H:
    """The model of the first part `first` and the other parts `rest` (in order): its size the sum of theirs,
    its tensors all of theirs. EdgeError naming the part that does not belong or is short of tensors."""
    n = 1 + len(rest)
    for i, part in enumerate(rest, start=1):
        name = part.path.name
        if split_count(part.metadata, name) != n:
            raise EdgeError(f"{name}: {SPLIT_COUNT} is {part.metadata.get(SPLIT_COUNT)}, the first part says {n}: "
                            f"it is from another split of the model")  # fmt: skip
        got = _count(part.metadata, SPLIT_NO, name, MAX_PARTS) if SPLIT_NO in part.metadata else None
        if got != i:
            raise EdgeError(f"{name}: {SPLIT_NO} is {got}, part {i + 1} of {n} should say {i}; the file is misnamed or damaged")
    tensors = [t for part in (first, *rest) for t in part.tensors]
    want = _count(first.metadata, SPLIT_TENSORS, first.path.name, 1 << 31) if SPLIT_TENSORS in first.metadata else None
    if want is not None and want != len(tensors):
        raise EdgeError(f"{first.path.name}: its {n} parts hold {len(tensors)} tensors, {SPLIT_TENSORS} says {want}; "
                        f"a part is damaged or from another split")  # fmt: skip
    seen: set[str] = set()
    for part in (first, *rest):
        for t in part.tensors:
            if t.name in seen:
                raise EdgeError(f"{part.path.name}: tensor {t.name} is in an earlier part too; the parts are from different splits")
            seen.add(t.name)
    return replace(first, file_size=first.file_size + sum(p.file_size for p in rest), tensors=tensors,
                   parts=(first.path, *(p.path for p in rest)))  # fmt: skip


def gather(first: H, read_one: Callable[[Path], H]) -> H:
    """`first` as the whole model: unchanged when it is not split, else joined with the parts beside it, each
    read with `read_one`. A missing part is named with the folder it should be in."""
    names = part_names(first.path.name, first.metadata)
    if len(names) == 1:
        return first
    folder = first.path.parent
    rest = []
    for i, name in enumerate(names[1:], start=2):
        path = folder / name
        if path.is_symlink() and not path.exists():  # a store entry links to parts that live elsewhere
            raise EdgeError(f"{name} is missing: the model is split in {len(names)} files and part {i} links to "
                            f"{os.readlink(path)}, which is gone")  # fmt: skip
        if not path.is_file():
            raise EdgeError(f"{name} is missing: the model is split in {len(names)} files and part {i} is not in {folder}")
        rest.append(read_one(path))
    return join(first, rest)
