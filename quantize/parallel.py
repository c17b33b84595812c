"""Work spread over the cores while one thread writes the results in order.

numpy's casts and lookups and the file reads release the GIL, so threads convert chunks side by side while the
writer streams the finished ones to disk sequentially.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ordered_results(jobs: Iterable[Callable[[], T]], workers: int, ahead: int) -> Iterator[T]:
    """Run `jobs` on `workers` threads and yield their results in the jobs' order.

    At most `ahead` jobs are submitted or finished-but-unread at once, which bounds the memory they hold.
    Closing the iterator early (an error in the consumer, Ctrl-C) cancels what has not started and waits only
    for the jobs already running.
    """
    pending: deque[Future[T]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="convert") as pool:
        try:
            for job in jobs:
                pending.append(pool.submit(job))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()
