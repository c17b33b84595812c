"""Loaded at start-up when scripts/gpu_diag is on PYTHONPATH (scripts/gpu_check.sh diag).

GPU_PATCH=nolog,noprogress,nosigint switches off edgellm's llama.cpp log callback, its load-progress callback or
its Ctrl-C deferral, to tell which of them a crash on the GPU needs.
"""
import ctypes, os

_p = set(filter(None, os.environ.get("GPU_PATCH", "").split(",")))
if _p - {"none"}:
    import llama_cpp as L
    if "nolog" in _p:
        L.llama_log_set = lambda *a: None
    if "noprogress" in _p:
        _t = L.llama_progress_callback
        L.llama_progress_callback = lambda f: ctypes.cast(None, _t)
    if "nosigint" in _p:
        import contextlib, threading
        from edgellm.engine import llamacpp
        llamacpp.sigint_deferred = lambda: contextlib.nullcontext(threading.Event())
