"""Named pause points, so fault tests can stop a real run at a known moment and then signal it.

A test starts a command with EDGELLM_TEST_PAUSE set to one point, e.g. `convert.tensor:17` (after the
17th tensor is written) or `package.level:1` (after the first level is recorded). When the run reaches
that point it prints `edgellm-test: paused at <point>` on stderr and waits; the test reads stderr until
that line, then sends SIGINT or SIGKILL (the signal lands mid-work however fast the machine is), or
SIGUSR1 to let the run go on.

Points: convert.tensor:<n> (after n tensors are written), projector.tensor:<n> (the same for a vision
model's projector), quantize.tensor:<n> (a level's n-th tensor starts), package.base (the base is made and
recorded), package.level:<n> (n levels are recorded), engine.load (llama.cpp is loading the model's
tensors), eval.tasks:<n> (n tasks of a file are scored), serve.token:<n> (a server's reply has sent its n-th
token; it goes on by itself once its client leaves or the server stops).

Without the variable a point costs one comparison: the variable is read once, when this module loads.
A run pauses at most once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

ENV = "EDGELLM_TEST_PAUSE"
MAX_WAIT_S = 600.0  # a test that never signals does not leave a run waiting for ever
_POLL_S = 0.05  # how often a wait looks at `until` (a signal handler that does not raise leaves sleep running)

_target: str | None = os.environ.get(ENV) or None
_claim = threading.Lock()
_resume = threading.Event()
if _target is not None and threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGUSR1, lambda _signum, _frame: _resume.set())


def pause_point(name: str, index: int | None = None, until: Callable[[], bool] | None = None,
                before: Callable[[], None] | None = None) -> None:
    """Wait here if EDGELLM_TEST_PAUSE names this point (`name`, or `name:index`); otherwise return at once.
    `before` runs just before a wait (what the point promises is done, such as text sent, but still queued).

    The wait ends with SIGUSR1, a signal that raises (Ctrl-C's KeyboardInterrupt), when `until()` turns
    true, or after MAX_WAIT_S.
    """
    global _target
    if _target is None:
        return
    point = name if index is None else f"{name}:{index}"
    with _claim:  # levels made side by side may reach the same point together: one pauses
        if _target != point:
            return
        _target = None
    if before is not None:
        before()
    print(f"edgellm-test: paused at {point}", file=sys.stderr, flush=True)
    end = time.monotonic() + MAX_WAIT_S
    while time.monotonic() < end and not _resume.is_set() and not (until and until()):
        time.sleep(_POLL_S)
