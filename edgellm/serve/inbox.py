"""Events from the scheduler thread to the event loop, one wake-up per batching step.

Waking an asyncio loop from another thread writes to its self-pipe, a system call; one per token per stream
cost the scheduler thread about 3% of its time at four streams, time in which llama.cpp's threads waited. So the
scheduler only queues events here while it steps (`put`) and wakes the loop once after each step (`wake`): the
tokens of every slot sampled in one step travel together.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = weakref.WeakKeyDictionary()
_INBOXES_LOCK = threading.Lock()


class LoopInbox:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue, Any]] = []
        self._closed = False

    def put(self, queue: asyncio.Queue, event: Any) -> None:
        """Queue `event` for `queue` until the next `wake` (any thread). RuntimeError once the loop is gone."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the event loop is closed")
            self._items.append((queue, event))

    def wake(self) -> None:
        """Have the loop hand over everything queued so far (any thread; never raises)."""
        with self._lock:
            if not self._items:
                return
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is gone: nobody is listening, and the next put says so
            with self._lock:
                self._closed = True
                self._items.clear()

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, event in items:
            queue.put_nowait(event)


def inbox_for(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    with _INBOXES_LOCK:
        inbox = _INBOXES.get(loop)
        if inbox is None:
            inbox = _INBOXES[loop] = LoopInbox(loop)
        return inbox
