"""llama.cpp's RPC backend: worker addresses, where the RPC build lives, asking a worker what it lends, and
attaching workers as devices of this process.

llama-cpp-python is built without the RPC backend, so edgellm uses a second build of the same vendored
sources (`scripts/llamacpp_tools.sh` with LLAMACPP_RPC=1): `rpc-server` for `edgellm worker`, and
`libggml-rpc.so`, loaded into this process next to llama-cpp-python's own ggml (same sources and sonames, so
the ggml-base already loaded is the one it uses).

ggml's RPC client aborts the process when a worker cannot be reached or stops answering. So a worker is
first asked in a child process (bounded by a timeout; an abort there costs nothing), and once attached, the
abort is turned into one line naming the workers that are gone (`ggml_set_abort_callback`).
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgeError, UsageError

DEFAULT_PORT = 50052  # rpc-server's own default
MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS
CONNECT_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 15.0  # connect + handshake + memory query in a child process
BUILD_HINT = "LLAMACPP_RPC=1 scripts/llamacpp_tools.sh"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


@dataclass(frozen=True)
class Worker:
    host: str
    port: int

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker reported: its device's free and total memory."""

    worker: Worker
    free: int
    total: int


def parse_host(host: str) -> str:
    """An IPv4 address or a host name (llama.cpp's RPC client takes no IPv6 literal)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if _HOSTNAME.match(host) and not host.replace(".", "").isdigit():
            return host
        raise UsageError(f"{host!r} is not a host name or an IPv4 address") from None
    if ip.version != 4:
        raise UsageError(f"{host}: llama.cpp's RPC backend takes IPv4 addresses or host names, not IPv6")
    return str(ip)


def parse_workers(text: str) -> tuple[Worker, ...]:
    """`HOST:PORT[,HOST:PORT...]`, each checked; no duplicates, at most MAX_WORKERS."""
    out: list[Worker] = []
    for item in text.split(","):
        item = item.strip()
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(f"--rpc: {item!r} is not HOST:PORT (a port from 1 to 65535)")
        w = Worker(parse_host(host), int(port))
        if w in out:
            raise UsageError(f"--rpc: {w.endpoint} is given twice")
        out.append(w)
    if len(out) > MAX_WORKERS:
        raise UsageError(f"--rpc: at most {MAX_WORKERS} workers (llama.cpp's limit), not {len(out)}")
    return tuple(out)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- the RPC build ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RpcBuild:
    server: Path  # llama.cpp's rpc-server (ggml-rpc-server)
    lib: Path  # libggml-rpc.so


def build_dir() -> Path:
    """Where `scripts/llamacpp_tools.sh` (LLAMACPP_RPC=1) puts the RPC build of llama-cpp-python's sources."""
    import importlib.metadata

    cache = Path(os.environ.get("EDGELLM_TOOLS_CACHE") or Path.home() / ".cache" / "edgellm-tools")
    ver = importlib.metadata.version("llama-cpp-python")
    return cache / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp" / "build-rpc" / "bin"


def find_build() -> RpcBuild:
    """The RPC build, or one line saying how to make it."""
    d = build_dir()
    b = RpcBuild(d / "ggml-rpc-server", d / "libggml-rpc.so")
    if not (os.access(b.server, os.X_OK) and b.lib.is_file()):
        raise EdgeError(f"llama.cpp's RPC backend is not built (looked in {d}): build it once with `{BUILD_HINT}`")
    return b


# --- asking a worker ---------------------------------------------------------------------------------


def reachable(w: Worker, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None if a TCP connection to `w` opens within `timeout`, else why not."""
    try:
        with socket.create_connection((w.host, w.port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g} s"
    except OSError as exc:
        return exc.strerror or str(exc)


def probe(w: Worker, timeout: float = PROBE_TIMEOUT_S) -> WorkerInfo:
    """Ask worker `w` for its device memory, in a child process so that llama.cpp's abort on a failed
    handshake (something else listening there, another protocol version) ends only the child."""
    why = reachable(w)
    if why:
        raise EdgeError(f"worker {w.endpoint} cannot be reached: {why} (is `edgellm worker` running there?)")
    b = find_build()
    cmd = [sys.executable, "-m", "edgellm.engine.rpc", str(b.lib), w.endpoint]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise EdgeError(
            f"worker {w.endpoint} did not answer within {timeout:g} s (a worker serves one machine at a time: is another using it?)"
        ) from None
    try:
        reply = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        free, total = int(reply["free"]), int(reply["total"])
    except (ValueError, TypeError, KeyError, IndexError):
        reply = None
    if reply is None or not (0 <= free <= total < 1 << 60):
        detail = (r.stderr.strip().splitlines() or ["no reply"])[-1][:200]
        raise EdgeError(f"worker {w.endpoint} is not a llama.cpp RPC server of this version: {detail}")
    return WorkerInfo(w, free, total)


def _probe_main(lib_path: str, endpoint: str) -> None:
    """Child side of `probe`: print {"free", "total"} of the worker's first device as JSON.

    A CPU device reports all of its RAM as free, so "free" is also the largest buffer the worker agrees to
    allocate (found by halving; nothing is touched, so nothing is committed): `edgellm worker` caps what its
    server may allocate at what it lends."""
    lib = ctypes.CDLL(lib_path)
    base = ctypes.CDLL("libggml-base.so.0")  # the one libggml-rpc.so linked to
    base.ggml_set_abort_callback.argtypes, base.ggml_set_abort_callback.restype = [ctypes.c_void_p], ctypes.c_void_p
    base.ggml_set_abort_callback(ctypes.cast(_probe_abort, ctypes.c_void_p))
    lib.ggml_backend_rpc_add_server.argtypes, lib.ggml_backend_rpc_add_server.restype = [ctypes.c_char_p], ctypes.c_void_p
    fn = lib.ggml_backend_rpc_get_device_memory
    fn.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    if not lib.ggml_backend_rpc_add_server(endpoint.encode()):
        sys.exit("the worker has no device")
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    fn(endpoint.encode(), 0, ctypes.byref(free), ctypes.byref(total))
    lendable = _largest_buffer(lib, endpoint, free.value)
    if lendable < free.value:  # capped: by `edgellm worker`, at what it lends plus room for the server itself
        lendable = max(0, lendable - SERVER_OWN)
    print(json.dumps({"free": lendable, "total": total.value}))


@ctypes.CFUNCTYPE(None, ctypes.c_char_p)
def _probe_abort(message: bytes) -> None:
    """In the probe's child: ggml's reason on one line (for the parent), instead of ggml's backtrace."""
    text = (message or b"").decode(errors="replace").strip().splitlines()
    os.write(2, (re.sub(r"^\S+:\d+: ", "", text[0]) if text else "llama.cpp aborted").encode() + b"\n")
    os._exit(3)


PROBE_STEP = 8 << 20  # precision of the largest-buffer search
SERVER_OWN = 64 << 20  # `edgellm worker` lets its server allocate this much more than it lends: its own data, stacks


def _largest_buffer(lib: ctypes.CDLL, endpoint: str, upper: int) -> int:
    """The largest buffer (to PROBE_STEP) the worker allocates, up to `upper`: each try is allocated and freed."""
    lib.ggml_backend_rpc_buffer_type.argtypes, lib.ggml_backend_rpc_buffer_type.restype = [ctypes.c_char_p, ctypes.c_uint32], ctypes.c_void_p
    base = ctypes.CDLL("libggml-base.so.0")  # the one libggml-rpc.so linked to
    base.ggml_backend_buft_alloc_buffer.argtypes, base.ggml_backend_buft_alloc_buffer.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p
    base.ggml_backend_buffer_free.argtypes, base.ggml_backend_buffer_free.restype = [ctypes.c_void_p], None
    buft = lib.ggml_backend_rpc_buffer_type(endpoint.encode(), 0)

    def fits(size: int) -> bool:
        buf = base.ggml_backend_buft_alloc_buffer(buft, size)
        if buf:
            base.ggml_backend_buffer_free(buf)
        return bool(buf)

    if upper <= 0 or fits(upper):
        return upper
    low, high = 0, upper  # fits(low), not fits(high)
    while high - low > PROBE_STEP:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# --- attaching workers to this process -----------------------------------------------------------------

_attached: dict[str, int] = {}  # endpoint -> ggml_backend_dev_t
_watched: list[Worker] = []


@ctypes.CFUNCTYPE(None, ctypes.c_char_p)
def _on_abort(message: bytes) -> None:
    """ggml is about to abort (a worker stopped answering): say which, in one line, and exit."""
    gone: list[str] = []
    for _ in range(5):  # its listening socket may close a moment after the connection did
        gone = [w.endpoint for w in _watched if reachable(w, 1.0)]
        if gone:
            break
        time.sleep(0.2)
    who = f"worker {', '.join(gone)} is gone" if gone else "a worker stopped answering"
    text = (message or b"").decode(errors="replace").strip().splitlines()
    why = re.sub(r"^\S+:\d+: ", "", text[0]) if text else "llama.cpp aborted"  # without the source file and line
    from . import llamacpp

    llamacpp.restore_terminal()
    os.write(2, f"\nedgellm: {who} ({why})\n".encode())
    os._exit(4)


def attach(workers: tuple[Worker, ...]) -> list[int]:
    """ggml devices for `workers` (first device of each), in this process. Probe them first: llama.cpp aborts
    on a worker it cannot reach."""
    from . import llamacpp

    llamacpp.init()  # llama-cpp-python's ggml-base is loaded first: libggml-rpc.so then links to it
    lib = ctypes.CDLL(str(find_build().lib))
    lib.ggml_backend_rpc_add_server.argtypes, lib.ggml_backend_rpc_add_server.restype = [ctypes.c_char_p], ctypes.c_void_p
    llamacpp.set_abort_callback(_on_abort)  # in whichever copy of ggml-base ggml-rpc's abort resolves to
    base = llamacpp.ggml_library("ggml-base")
    base.ggml_backend_reg_dev_get.argtypes, base.ggml_backend_reg_dev_get.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p
    out = []
    for w in workers:
        if w.endpoint not in _attached:
            probe(w)  # reachable and speaking the protocol: add_server will not abort
            reg = lib.ggml_backend_rpc_add_server(w.endpoint.encode())
            if not reg:
                raise EdgeError(f"worker {w.endpoint} has no device to lend")
            _attached[w.endpoint] = base.ggml_backend_reg_dev_get(reg, 0)
            _watched.append(w)
        out.append(_attached[w.endpoint])
    return out


KEEPALIVE = (10, 3, 3)  # idle s, between probes s, probes: a silent worker machine is dropped within ~20 s
USER_TIMEOUT_MS = 20_000  # data sent but not acknowledged for this long: the worker's machine is gone


def bound_waits(w: Worker) -> int:
    """ggml's RPC client waits on its socket without a timeout: a worker machine that vanishes (suspended,
    network cut) would hang the reply forever. Let the kernel close such a connection (TCP keepalive and
    user timeout on the client's socket to `w`); ggml then aborts, which `_on_abort` turns into one line.
    Call it once the model is loaded: the client connects when it first needs a worker and keeps that
    connection while buffers there live. Returns how many sockets were set (one per worker)."""
    peer = (socket.gethostbyname(w.host), w.port)
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            with socket.socket(fileno=os.dup(int(fd))) as s:  # a second handle on the same socket
                if s.family != socket.AF_INET or s.getpeername() != peer:
                    continue
                idle, interval, count = KEEPALIVE
                s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
                n += 1
        except OSError:
            continue  # closed meanwhile, or not a connected socket
    return n


def offload_to_workers(mp, plan) -> tuple:
    """Point llama_model_params `mp` at the plan's devices, in its order: this machine's GPUs, then the workers,
    sharing the offloaded layers as planned (tensor_split in whole layers). Returns what must stay alive until
    the load."""
    import llama_cpp as L

    from . import llamacpp

    remote = [w for w in plan.workers if not w.device]
    attached = dict(zip((w.endpoint for w in remote), attach(tuple(Worker(w.host, w.port) for w in remote))))
    devs = [llamacpp.device_handle(w.device) if w.device else attached[w.endpoint] for w in plan.workers]
    dev_list = (ctypes.c_void_p * (len(devs) + 1))(*devs)  # the last entry stays NULL: the end of the list
    split = (ctypes.c_float * L.llama_max_devices())(*(float(w.n_layers) for w in plan.workers))
    mp.devices = ctypes.addressof(dev_list)
    mp.tensor_split = ctypes.cast(split, ctypes.POINTER(ctypes.c_float))
    return dev_list, split


if __name__ == "__main__":
    _probe_main(sys.argv[1], sys.argv[2])
