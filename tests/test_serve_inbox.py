"""The scheduler's events reach the event loop through an inbox that wakes the loop once per batching step."""

import asyncio
import threading

import pytest

from edgellm.serve.inbox import LoopInbox, inbox_for


def test_events_wait_for_the_wake_and_then_arrive_in_order():
    loop = asyncio.new_event_loop()
    try:
        inbox = inbox_for(loop)
        assert inbox_for(loop) is inbox
        a, b = asyncio.Queue(), asyncio.Queue()

        def scheduler_step():
            inbox.put(a, "Hel")
            inbox.put(b, "Wor")
            inbox.put(a, "lo")

        t = threading.Thread(target=scheduler_step)
        t.start()
        t.join()
        loop.run_until_complete(asyncio.sleep(0.01))
        assert a.empty() and b.empty()  # queued, not yet handed over
        t = threading.Thread(target=inbox.wake)
        t.start()
        t.join()
        loop.run_until_complete(asyncio.sleep(0.01))
        assert [a.get_nowait(), a.get_nowait()] == ["Hel", "lo"] and b.get_nowait() == "Wor"
        calls = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: calls.append(a) or real(*a)
        inbox.wake()  # nothing queued: the loop is not woken at all
        assert calls == []
        inbox.put(a, "!")
        inbox.put(b, "?")
        inbox.wake()  # two events, one wake-up
        assert len(calls) == 1
        loop.run_until_complete(asyncio.sleep(0.01))
        assert a.get_nowait() == "!" and b.get_nowait() == "?"
    finally:
        loop.close()


def test_a_closed_loop_is_told_on_the_next_put_and_wake_never_raises():
    loop = asyncio.new_event_loop()
    inbox = LoopInbox(loop)
    inbox.put(asyncio.Queue(), "x")
    loop.close()
    inbox.wake()
    with pytest.raises(RuntimeError):
        inbox.put(asyncio.Queue(), "y")
