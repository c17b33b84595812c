"""File-system helpers: outputs appear under their final name only when complete, and a writer that was
killed outright leaves nothing the next run does not clean up."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import EdgeError, NotEnoughSpace

PARTIAL_SUFFIX = ".partial"
# errno of a write that failed for lack of room -> how the message says it
NO_ROOM = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit reached",
}


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def ensure_dir_for(path: Path) -> None:
    """The parent folder of an output must exist: creating folders silently hides typos."""
    parent = path.resolve().parent
    if not parent.is_dir():
        raise EdgeError(f"output folder does not exist: {parent}")


def ensure_free_space(folder: Path, needed: int, what: str = "output") -> None:
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise NotEnoughSpace(
            f"not enough disk space in {folder} for the {what}: "
            f"needs {human_bytes(needed)}, {human_bytes(free)} free"
        )


def no_room(exc: OSError, what: str) -> NotEnoughSpace | None:
    """The one-line error for a write of `what` that failed for lack of room, or None for other failures."""
    why = NO_ROOM.get(exc.errno)
    return NotEnoughSpace(f"{why} while writing {what}") if why else None


def room_problem(path: Path, needed_more: int) -> str | None:
    """Why a write to `path` failed if it was for lack of room, judged from the file system afterwards, for
    writers that do not pass errno on; None when room is not why. `needed_more`: bytes the file still lacked."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and path.stat().st_size >= limit:
        return f"the file size limit (ulimit -f) of {human_bytes(limit)} was reached"
    free = shutil.disk_usage(path.parent).free
    if free < needed_more:
        return f"disk full, {human_bytes(free)} free and about {human_bytes(needed_more)} more needed"
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_if_abandoned(path: Path) -> None:
    """Remove a temp file whose writer is gone. Every writer holds an flock on its temp file while it
    writes, and the kernel drops the lock when the writer dies, however it dies."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return  # gone already, or not ours to open
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)  # still holding the lock: see _locked_temp
    except BlockingIOError:
        pass  # a live writer
    finally:
        os.close(fd)


def remove_abandoned_partials(folder: Path, pattern: str = f".*{PARTIAL_SUFFIX}") -> None:
    """Remove the temp files matching `pattern` in `folder` whose writers were killed."""
    for path in Path(folder).glob(pattern):
        _remove_if_abandoned(path)


def _locked_temp(final: Path) -> tuple[int, Path]:
    """A new temp file beside `final`, named after it and this process, with an flock held on it."""
    for _ in range(8):
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=PARTIAL_SUFFIX, dir=final.parent)
        # A cleaner that found the new file before the lock removes it while it holds the lock: once the
        # lock is ours, a file still linked is safe.
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions `open` would give
            return fd, Path(name)
        os.close(fd)
    raise EdgeError(f"cannot keep a temp file in {final.parent}: something removes them as they are made")


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    On any failure (including Ctrl-C) the temporary file is removed, so a half-written file never sits
    under the final name. Temp files of the same output left by a writer that was killed (SIGKILL, power
    loss) are removed first; those of a writer still running are left alone.
    """
    final = Path(final)
    ensure_dir_for(final)
    remove_abandoned_partials(final.parent, f".{glob.escape(final.name)}.*{PARTIAL_SUFFIX}")
    fd, tmp = _locked_temp(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = no_room(exc, str(final))
        if full:
            raise full from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an flock on the file `path` (created, holding this process's pid) for the block.

    If another process holds it for longer than `wait_s`, raise EdgeError("<busy> (pid N)"). The file is
    removed afterwards; a process that opened it just before is told by the changed inode to start again.
    """
    path = Path(path)
    deadline = time.monotonic() + wait_s
    for _ in range(8):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise EdgeError(f"{busy} (pid {holder or 'unknown'})") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed it as we opened it: lock the new one
    else:
        raise EdgeError(f"{busy} (its lock file {path} keeps changing)")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # while locked, so no one else locks this inode afterwards
        os.close(fd)
