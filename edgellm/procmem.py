"""How much memory this process has used at its peak.

`getrusage().ru_maxrss` is not it on Linux: a process started by fork + exec inherits the parent's peak
(the kernel keeps it across exec), so a child of a big test runner reports the runner's memory. The
kernel's per-address-space high-water mark (VmHWM) starts fresh at exec.
"""

from __future__ import annotations

import re
import resource
import sys


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"^VmHWM:\s*(\d+) kB", f.read(), re.MULTILINE)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
