"""Ctrl-C while a library works on threads of its own.

The hubs' libraries download on a pool of threads and, when interrupted, wait for every file in flight to
finish before they let go (minutes for a large level). Their work runs here on a thread of its own instead,
so Ctrl-C reaches edgellm at once; the interruption is noted, and `leave` ends the process without waiting
for the library's threads. Nothing lands under a final name: both libraries write to `.incomplete` files and
rename them when complete. modelscope_hub resumes its `.incomplete` file by byte range on the next run;
huggingface_hub (2.4) names its own after the process and removes it when a download fails (it would never
be read again), so `leave` removes the ones this process still has open.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_S = 0.1  # how often the waiting thread looks up (a signal can only land between its waits)
# huggingface_hub's per-process partial download: <blob>.<8 hex digits>.incomplete
HF_PARTIAL = re.compile(r"\.[0-9a-f]{8}\.incomplete$")
_left: list[threading.Thread] = []  # work interrupted: its threads (and the library's) may still run


def run_interruptibly(work: Callable[[], T]) -> T:
    """`work()`, run on a thread of its own: its result or exception here, or KeyboardInterrupt at once."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="edgellm-hub-work", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(POLL_S)
    except KeyboardInterrupt:
        _left.append(worker)
        raise
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def leave(code: int) -> int:
    """`code`, or, when work was interrupted, the end of the process now with that code (its output flushed
    first): the threads the library started for it would keep the process alive until they finish."""
    if _left:
        _drop_partial_downloads()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass
        os._exit(code)
    return code


def _drop_partial_downloads() -> None:
    """Remove the partial files huggingface_hub's threads are writing for this process (see above)."""
    import psutil

    try:
        open_files = psutil.Process().open_files()
    except psutil.Error:
        return
    for f in open_files:
        if HF_PARTIAL.search(f.path):
            try:
                os.unlink(f.path)
            except OSError:
                pass
