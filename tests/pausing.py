"""Run the installed `edgellm` until it pauses at a named point (edgellm/testhooks.py), then signal it.

The signal then lands at a known moment of the work on any machine, fast or slow: no sleeping, no polling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edgellm.testhooks import ENV

EDGELLM = Path(sys.executable).parent / "edgellm"  # the venv's installed command
HANG_GUARD_S = 900  # only so that a broken run fails the test instead of hanging it


def edgellm(*args, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed CLI to the end."""
    return subprocess.run([str(EDGELLM), *map(str, args)], capture_output=True, text=True, timeout=HANG_GUARD_S,
                          **kwargs)


def start_paused(point: str, *args, **kwargs) -> subprocess.Popen:
    """Start `edgellm ARGS` with EDGELLM_TEST_PAUSE=point and return once it says it waits there."""
    proc = subprocess.Popen([str(EDGELLM), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, ENV: point}, **kwargs)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"edgellm-test: paused at {point}" in line:
            return proc
    proc.wait(timeout=HANG_GUARD_S)
    raise AssertionError(f"edgellm exited ({proc.returncode}) before pausing at {point}:\n{''.join(seen)[-3000:]}")


def finish(proc: subprocess.Popen, sig: int = signal.SIGUSR1) -> subprocess.CompletedProcess:
    """Send `sig` (SIGUSR1: go on) to a paused run and wait for its end (stderr: what came after the pause)."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=HANG_GUARD_S)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).glob(".*"))
