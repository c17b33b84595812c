"""File-system helpers: outputs appear under their final name only when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import EdgeError, NotEnoughSpace


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it to `final` only if the block succeeds.

    On any failure (including Ctrl-C) the temporary file is removed, so a half-written
    file never sits under the final name.
    """
    final = Path(final)
    ensure_dir_for(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the permissions `open` would give
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise NotEnoughSpace(f"disk full while writing {final}") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
