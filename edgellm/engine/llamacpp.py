"""Thin helpers over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

llama.cpp writes its log to stderr unless told otherwise. edgellm keeps the log in memory instead: the
chat UI draws on stderr, `edgellm run` keeps stderr for stats, and the memory planner reads buffer sizes
from the log lines. Errors are reported as one EdgeError line that quotes llama.cpp's last error.

Ctrl-C and callbacks: while llama.cpp runs, it calls back into Python (the log, a load's progress). A
KeyboardInterrupt raised inside such a callback never reaches the caller: ctypes prints it and drops it.
So the log callback only notes it, and long calls run under `sigint_deferred()`, where Ctrl-C sets a flag
that llama.cpp's own callbacks answer by stopping.

Aborts: llama.cpp ends the whole process on a failed assert, a CUDA or Vulkan error it cannot recover from, or
an exception nobody catches. Before it dies, `report_abort` writes its reason, the last lines of its log and
what was being done (the plan being loaded) to stderr, and gives the terminal back if the chat held it.
`EDGELLM_LLAMA_LOG=1` (or `edgellm -v`) also streams the log to stderr as it is written; a path appends it
to that file instead.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import threading
from collections import deque
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import llama_cpp as L

from ..errors import EdgeError

GGML_LOG_LEVEL_ERROR = 4  # enum ggml_log_level: NONE, DEBUG, INFO, WARN, ERROR, CONT
GGML_LOG_LEVEL_CONT = 5


_lock = threading.Lock()
_recent: deque[str] = deque(maxlen=400)  # the last lines, for error messages
_captures: list[list[str]] = []  # open `capture_log()` blocks
_errors: deque[list[str]] = deque(maxlen=20)  # bursts of consecutive error lines
_last_was_error = [False]
_partial = [""]
interrupted = threading.Event()  # Ctrl-C that came while llama.cpp was working (see sigint_deferred)
LOG_ENV = "EDGELLM_LLAMA_LOG"  # 1 / stderr: stream llama.cpp's log to stderr; a path: append it to that file
_live: list[int] = []  # the open file descriptor the log streams to, if any


def _live_fd() -> int | None:
    """Where the log streams to now (the variable is read once, when first needed)."""
    if not _live:
        target = os.environ.get(LOG_ENV, "").strip()
        if target in ("", "0"):
            _live.append(-1)
        elif target in ("1", "stderr"):
            _live.append(2)
        else:
            try:
                _live.append(os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
            except OSError:
                _live.append(2)
    return _live[0] if _live[0] >= 0 else None


@L.llama_log_callback
def _on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    try:
        chunk = text.decode("utf-8", errors="replace") if text else ""
        fd = _live_fd()
        if fd is not None and chunk:
            os.write(fd, chunk.encode())
        with _lock:
            buf = _partial[0] + chunk
            lines = buf.split("\n")
            _partial[0] = lines.pop()
            for line in lines:
                _recent.append(line)
                for cap in _captures:
                    cap.append(line)
                is_error = level == GGML_LOG_LEVEL_ERROR
                if is_error and _last_was_error[0]:
                    _errors[-1].append(line.strip())
                elif is_error:
                    _errors.append([line.strip()])
                _last_was_error[0] = is_error
    except KeyboardInterrupt:
        interrupted.set()  # raised here it would be dropped; sigint_deferred raises it when the call returns


@contextmanager
def sigint_deferred() -> Iterator[threading.Event]:
    """Run llama.cpp calls with Ctrl-C deferred: it sets the yielded event instead of raising inside a
    callback. The block hands the event to llama.cpp (a progress callback that returns False once it is set)
    and frees what it made when it is set; leaving the block then raises KeyboardInterrupt.

    Signals reach only the main thread, and a process that ignores SIGINT keeps ignoring it.
    """
    interrupted.clear()
    previous = signal.getsignal(signal.SIGINT)
    defer = threading.current_thread() is threading.main_thread() and previous not in (signal.SIG_IGN, None)
    if defer:
        signal.signal(signal.SIGINT, lambda _signum, _frame: interrupted.set())
    try:
        yield interrupted
    finally:
        if defer:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        raise KeyboardInterrupt


_initialised = False


def init() -> None:
    """Route llama.cpp's log into memory (again: other code may have routed it elsewhere meanwhile) and
    initialise its backends (once per process)."""
    global _initialised
    L.llama_log_set(_on_log, ctypes.c_void_p(0))
    if not _initialised:
        L.llama_backend_init()
        _catch_aborts()
        _initialised = True


@contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines written inside the block."""
    init()
    lines: list[str] = []
    with _lock:
        _captures.append(lines)
    try:
        yield lines
    finally:
        with _lock:
            del _captures[next(i for i, c in enumerate(_captures) if c is lines)]  # by identity: equal lists may nest


def last_error() -> str:
    """The cause of llama.cpp's most recent failure, for a one-line message.

    llama.cpp logs the specific reason first ("error loading model: unknown model architecture ...") and
    generic lines after it ("failed to load model"): the first line of the latest burst of errors is the reason.
    """
    with _lock:
        return _errors[-1][0] if _errors else ""


def tokenize(vocab, text: str, what: str = "the text"):
    """`text`'s tokens as a numpy int32 array, with the vocabulary's special prefix (BOS) and special tokens
    written in the text left as text (llama.cpp's common_tokenize(ctx, text, true))."""
    import numpy as np

    data = text.encode("utf-8")
    cap = len(data) + 16
    buf = (L.llama_token * cap)()
    n = L.llama_tokenize(vocab, data, len(data), buf, cap, True, False)
    if n < 0:
        raise EdgeError(f"tokenizing {what} failed")
    return np.ctypeslib.as_array(buf)[:n].copy()


# --- LoRA adapters --------------------------------------------------------------------------------


def load_loras(model, ctx, adapters: Sequence[tuple[str | Path, float]]) -> list:
    """Load each LoRA adapter (file, scale) onto `model` and apply them all to `ctx` at their scales. Returns the
    handles, which `free_loras` frees after the context and before the model (an adapter the model still holds
    would otherwise be freed only with the model)."""
    handles: list = []
    try:
        for path, _ in adapters:
            handle = L.llama_adapter_lora_init(model, str(path).encode())
            if not handle:
                raise EdgeError(f"llama.cpp could not load the LoRA adapter {path}: {last_error() or 'unknown error'}")
            handles.append(handle)
        if handles:
            n = len(handles)
            array = (L.llama_adapter_lora_p_ctypes * n)(*handles)
            scales = (ctypes.c_float * n)(*(scale for _, scale in adapters))
            L.llama_set_adapters_lora(ctx, array, n, scales)  # copies both arrays
    except BaseException:
        free_loras(handles)
        raise
    return handles


def free_loras(handles: list) -> None:
    while handles:
        L.llama_adapter_lora_free(handles.pop())


# --- backends and devices (ggml's registry) -------------------------------------------------------

_DEV_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


@dataclass(frozen=True)
class Device:
    name: str
    description: str
    kind: str  # cpu / gpu / igpu / accel
    backend: str
    free: int
    total: int


def loaded_files(name: str) -> list[str]:
    """The files of library `name` ("ggml", "ggml-base") mapped into this process, the one libllama links to
    (the versioned name) first. Empty where /proc/self/maps does not exist (macOS, Windows)."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    is_lib = re.compile(rf"/lib{re.escape(name)}\.so(\.\d+)*$")
    found = {line.split(None, 5)[-1] for line in maps.read_text().splitlines() if is_lib.search(line)}
    return sorted((f for f in found if Path(f).is_file()), key=lambda f: (f.endswith(".so"), f))


def library_dir() -> Path:
    """The folder llama-cpp-python loaded libllama from: its own lib/ or LLAMA_CPP_LIB_PATH."""
    import llama_cpp.llama_cpp as bindings

    return Path(bindings._base_path)


def ggml_library(name: str) -> ctypes.CDLL:
    """ggml's library `name` ("ggml", "ggml-base") as libllama uses it: the very file libllama loaded, so that
    its device registry and state are the ones llama.cpp works with.

    llama-cpp-python's wheel holds file copies, not links, of libggml.so and libggml.so.0 (and of ggml-base),
    and LLAMA_CPP_LIB_PATH can point at another build altogether: opening a file by name could load a second
    ggml. On Linux the mapped file is opened (already loaded, it is the same copy); elsewhere the names in the
    folder libllama came from are tried, the versioned one first."""
    import llama_cpp  # noqa: F401 - loads libllama, and with it the ggml it links to

    loaded = loaded_files(name)
    if loaded:
        return ctypes.CDLL(loaded[0])
    lib_dir = library_dir()
    for file in (f"lib{name}.so.0", f"lib{name}.so", f"lib{name}.dylib", f"{name}.dll", f"lib{name}.dll"):
        if (lib_dir / file).is_file():
            return ctypes.CDLL(str(lib_dir / file))
    raise EdgeError(f"llama.cpp's {name} library is not in {lib_dir}")


# --- aborts that explain themselves ---------------------------------------------------------------

ABORT_LOG_LINES = 12  # log lines shown with an abort
_doing: list[str] = []  # what llama.cpp is doing now, innermost last ("loading model.gguf: 31/31 layers on Vulkan0")
_reported = threading.Event()


@contextmanager
def doing(what: str) -> Iterator[None]:
    """Name what the calls in this block do, for the report if llama.cpp aborts inside them."""
    _doing.append(what)
    try:
        yield
    finally:
        _doing.remove(what)


def abort_report(message: str) -> str:
    """What `report_abort` writes: the reason, what was being done, llama.cpp's last log lines."""
    reason = re.sub(r"^\S+:\d+: ", "", message.strip().splitlines()[0]) if message.strip() else "no reason given"
    lines = [f"edgellm: llama.cpp aborted: {reason}"]
    lines += [f"  while {what}" for what in _doing]
    locked = _lock.acquire(timeout=1.0)  # the thread that holds it may be the one that is dying
    try:
        recent = [line.rstrip() for line in list(_recent) if line.strip()][-ABORT_LOG_LINES:]
    finally:
        if locked:
            _lock.release()
    if recent:
        lines.append("  llama.cpp's last log lines:")
        lines += [f"    {line}" for line in recent]
    lines.append(f"  (set {LOG_ENV}=1 or run edgellm -v to see its whole log)")
    return "\n".join(lines) + "\n"


def report_abort(message: str) -> None:
    """Write the abort report to stderr once (ggml's abort callback and the SIGABRT handler may both call)."""
    if _reported.is_set():
        return
    _reported.set()
    restore_terminal()
    try:
        os.write(2, b"\n" + abort_report(message).encode(errors="replace"))
    except OSError:
        pass


def restore_terminal() -> None:
    """The chat UI holds the terminal (raw mode, another screen, mouse reports): give it back before dying."""
    try:
        import termios

        if not os.isatty(0):
            return
        attrs = termios.tcgetattr(0)
        attrs[0] |= termios.ICRNL
        attrs[1] |= termios.OPOST
        attrs[3] |= termios.ICANON | termios.ECHO | termios.ISIG
        termios.tcsetattr(0, termios.TCSANOW, attrs)
        if os.isatty(1):
            os.write(1, b"\x1b[?1000l\x1b[?1003l\x1b[?1006l\x1b[?1049l\x1b[?25h")  # mouse off, main screen, cursor
    except (OSError, ImportError):
        pass


ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@ABORT_CALLBACK
def _on_ggml_abort(message: bytes) -> None:
    """ggml is about to abort (GGML_ASSERT, GGML_ABORT, a CUDA error): report, then let it."""
    report_abort((message or b"").decode(errors="replace"))


@ctypes.CFUNCTYPE(None, ctypes.c_int)
def _on_sigabrt(_signum: int) -> None:
    """abort() from elsewhere (an exception nobody caught, e.g. from the Vulkan driver's C++ wrapper): report;
    returning lets abort() end the process as it would have."""
    report_abort("abort() called (an uncaught C++ exception or a failed check)")


def set_abort_callback(callback) -> None:
    """Install `callback` (an ABORT_CALLBACK) in every ggml-base loaded here: whichever copy the failing
    library calls ggml_abort through."""
    for path in loaded_files("ggml-base") or [None]:
        base = ctypes.CDLL(path) if path else ggml_library("ggml-base")
        base.ggml_set_abort_callback.argtypes, base.ggml_set_abort_callback.restype = [ctypes.c_void_p], ctypes.c_void_p
        base.ggml_set_abort_callback(ctypes.cast(callback, ctypes.c_void_p))


def _catch_aborts() -> None:
    set_abort_callback(_on_ggml_abort)
    if os.name == "posix":
        libc = ctypes.CDLL(None)
        libc.signal.argtypes, libc.signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p
        libc.signal(signal.SIGABRT, ctypes.cast(_on_sigabrt, ctypes.c_void_p))


def _ggml():
    lib = ggml_library("ggml")
    if not getattr(lib, "_edgellm_typed", False):
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        for name, args, res in [
            ("ggml_backend_reg_count", [], sz),
            ("ggml_backend_reg_get", [sz], vp),
            ("ggml_backend_reg_name", [vp], ctypes.c_char_p),
            ("ggml_backend_dev_count", [], sz),
            ("ggml_backend_dev_get", [sz], vp),
            ("ggml_backend_dev_by_name", [ctypes.c_char_p], vp),
            ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
            ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
            ("ggml_backend_dev_type", [vp], ctypes.c_int),
            ("ggml_backend_dev_backend_reg", [vp], vp),
            ("ggml_backend_dev_memory", [vp, ctypes.POINTER(sz), ctypes.POINTER(sz)], None),
        ]:
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = args, res
        lib._edgellm_typed = True
    return lib


def backends() -> list[str]:
    """Names of the ggml backends compiled into this llama.cpp build (e.g. CPU, CUDA, Metal)."""
    init()
    g = _ggml()
    return [g.ggml_backend_reg_name(g.ggml_backend_reg_get(i)).decode() for i in range(g.ggml_backend_reg_count())]


def devices() -> list[Device]:
    """Every device llama.cpp can use, with the free/total memory its backend reports."""
    init()
    g = _ggml()
    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append(
            Device(
                name=g.ggml_backend_dev_name(dev).decode(),
                description=(g.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=_DEV_TYPES.get(g.ggml_backend_dev_type(dev), "other"),
                backend=g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(dev)).decode(),
                free=free.value,
                total=total.value,
            )
        )
    return out


def device_handle(name: str) -> int:
    """ggml's device `name` (CUDA0, Vulkan1), for llama_model_params.devices."""
    init()
    g = _ggml()
    dev = g.ggml_backend_dev_by_name(name.encode())
    if not dev:
        raise EdgeError(f"llama.cpp has no device {name} (devices: {', '.join(d.name for d in devices())})")
    return dev


def supports_gpu_offload() -> bool:
    init()
    return bool(L.llama_supports_gpu_offload())


def system_info() -> str:
    init()
    return (L.llama_print_system_info() or b"").decode(errors="replace").strip()


def default_threads() -> int:
    """Physical cores: what llama.cpp's tools use, and faster than hyper-threads for matrix work (a thread
    that shares a core with another stalls the rest of the batch)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
