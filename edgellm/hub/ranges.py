"""Bytes of a repo's files without downloading them: byte ranges from the hub, or reads of the cached copy.

Everything a hub answers is checked before it is used: a ranged answer must be 206 with the very range
asked for and the file size the listing gave, with no compressed body, and never yields more bytes than
asked. An endpoint that ignores `Range` (small files served in place; a CDN that drops it) answers 200 with
the whole file: the bytes before the range are skipped, and nothing after it is read. One read is at most
MAX_READ bytes and starts at most MAX_SKIP bytes in; the libraries' own timeouts bound each request, and at
most two retries are made.

    reader = reader_for(remote)            # a hub's files (online) or the cached snapshot (offline)
    head = reader.read(file, 0, 2 << 20)   # the first 2 MiB of a RemoteFile
    reader.fetched                         # bytes and requests so far, to say what planning cost
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError
from .clients import RemoteFile, Say, Unreachable, quiet_hub

MAX_READ = 64 << 20
MAX_SKIP = 128 << 20  # the most of a file read past when its server ignores Range (headers lie at the start)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


@dataclass
class Fetched:
    bytes: int = 0
    requests: int = 0


class HubReader:
    """Byte ranges of a repo's files on its hub."""

    def __init__(self, remote, say: Say | None = None) -> None:
        self.remote, self.say = remote, say
        self.fetched = Fetched()

    def read(self, f: RemoteFile, first: int, length: int) -> bytes:
        """Bytes first..first+length of `f` (fewer at its end). EdgeError with one line for anything else."""
        length = min(length, f.size - first, MAX_READ)
        if first < 0 or length <= 0:
            return b""
        h, repo_id = self.remote.client, self.remote.repo_id
        where = f"{f.path} in {repo_id} on {h.title}"
        try:
            with quiet_hub(h, self.say), h.open_range(repo_id, self.remote.revision, f.path, first, first + length - 1) as ans:
                self.fetched.requests += 1
                skip = _check_answer(ans, first, length, f.size, where)
                data = bytearray()
                for chunk in ans.chunks:
                    self.fetched.bytes += len(chunk)
                    if skip:
                        chunk, skip = chunk[skip:], max(0, skip - len(chunk))
                    data += chunk[: length - len(data)]
                    if len(data) >= length:
                        break  # a 200 goes on to the end of the file: it is not read
        except EdgeError:
            raise
        except Exception as exc:
            known = h.explain(exc, repo_id, self.remote.revision)
            if isinstance(known, Unreachable) or known is None:
                raise EdgeError(f"could not read {where} ({_line(exc)})") from exc
            raise known from exc
        if len(data) < length:
            raise EdgeError(f"{h.title} sent {len(data)} of the {length} bytes asked of {where}; try again")
        return bytes(data)


def _check_answer(ans, first: int, length: int, size: int, where: str) -> int:
    """How many bytes of the answer come before the range asked for; EdgeError for an answer not to be used."""
    if ans.content_encoding not in (None, "", "identity"):
        raise EdgeError(f"the hub sent {where} compressed ({ans.content_encoding}) when asked for a byte range")
    if ans.status == 200 and first <= MAX_SKIP:
        return first  # the whole file, Range ignored: what comes before the range is skipped
    if ans.status != 206:
        raise EdgeError(f"the hub answered {ans.status} to a byte-range request for {where}")
    m = _CONTENT_RANGE.fullmatch((ans.content_range or "").strip())
    if not m or (int(m.group(1)), int(m.group(2))) != (first, first + length - 1):
        raise EdgeError(f"the hub sent another byte range of {where} than asked ({ans.content_range or 'none'})")
    if int(m.group(3)) != size:
        raise EdgeError(
            f"{where} is {int(m.group(3)):,} bytes but the repo's listing says {size:,}: it changed meanwhile; try again"
        )
    return 0


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class CacheReader:
    """The same reads from the cached snapshot, offline or when the hub is out of reach."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.fetched = Fetched()

    def read(self, f: RemoteFile, first: int, length: int) -> bytes:
        path = self.folder / f.path
        try:
            with open(path, "rb") as fh:
                fh.seek(first)
                return fh.read(min(length, MAX_READ))
        except OSError as exc:
            raise EdgeError(f"cannot read {path}: {exc.strerror or exc}") from None


def reader_for(remote, say: Say | None = None) -> HubReader | CacheReader:
    return CacheReader(remote.folder) if remote.offline else HubReader(remote, say)
