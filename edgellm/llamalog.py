"""Route llama.cpp's log (process-wide, set with `llama_log_set`) to a Python function for a while.

llama.cpp logs a lot while it loads and quantizes; edgellm shows progress bars instead and keeps the
error lines for a one-line message. On exit, llama-cpp-python's own logger is put back.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

ERROR = 3  # enum ggml_log_level: GGML_LOG_LEVEL_ERROR


class LlamaLog:
    """`with LlamaLog(on_text) as log:` — on_text(level, text) sees every fragment; log.errors keeps errors."""

    def __init__(self, on_text: Callable[[int, str], None] | None = None) -> None:
        import llama_cpp

        self.errors: list[str] = []
        self.interrupted = False

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            try:
                line = text.decode("utf-8", errors="replace")
                if level == ERROR and line.strip().strip("="):
                    self.errors.append(line.strip())
                if on_text:
                    on_text(level, line)
            except KeyboardInterrupt:
                # A C loop cannot be stopped from a callback: remember, and stop once it returns.
                self.interrupted = True

        self._callback = callback  # keep the ctypes thunk alive while llama.cpp holds it

    def __enter__(self) -> LlamaLog:
        import llama_cpp

        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc: object) -> None:
        import llama_cpp
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))

    def last_error(self, default: str) -> str:
        return self.errors[-1] if self.errors else default
