"""`edgellm worker`: lend this machine's memory and CPU to another machine's `--rpc` (llama.cpp's rpc-server).

llama.cpp's RPC protocol has no authentication: whoever reaches the port can use the machine's memory and
run its code paths on data they send. So it binds 127.0.0.1 unless told otherwise, and a non-loopback address
needs --allow-remote, after which the risk and the safe patterns are printed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import click

from .options import THREADS

STARTUP_S = 10.0  # rpc-server binds within this or has failed
STOP_S = 5.0  # after Ctrl-C, the server gets this long before it is killed
REMOTE_RISK = (
    "warning: llama.cpp's RPC protocol has no authentication or encryption: anyone who can reach {addr} can use "
    "this machine's memory and CPU and send it data llama.cpp parses. Bind it only on a private network, or keep "
    "the default 127.0.0.1 and reach it through an SSH tunnel (ssh -N -L {port}:127.0.0.1:{port} this-machine)."
)


PR_SET_PDEATHSIG = 1


def _in_child(mem: int):
    """In the server's process before it starts: die with this one (a killed `edgellm worker` must not leave a
    server lending the machine), and cap the data it may allocate to `mem` (what is lent)."""

    def apply() -> None:
        import ctypes
        import resource

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))

    return apply


@click.command("worker")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (IPv4).")
@click.option("--port", type=click.IntRange(1, 65535), default=50052, show_default=True)
@click.option("--mem", metavar="SIZE", help="Lend at most this much memory (e.g. 8G; default: what is free at start).")
@click.option("-t", "--threads", type=THREADS, help="CPU threads for the layers run here (default: llama.cpp's).")
@click.option("--allow-remote", is_flag=True, help="Allow listening on a non-loopback address (no authentication!).")
def worker(host: str, port: int, mem: str | None, threads: int | None, allow_remote: bool) -> int:
    """Lend this machine's free RAM (or --mem) and CPU to `edgellm run/chat/serve/plan --rpc HOST:PORT` on
    another machine, until Ctrl-C. Needs llama.cpp's RPC build: LLAMACPP_RPC=1 scripts/llamacpp_tools.sh."""
    import psutil

    from ..errors import EdgeError, UsageError
    from ..fsutil import human_bytes
    from ..plan.hardware import parse_size
    from ..plan.planner import RAM_MARGIN, _budget
    from ..engine.rpc import SERVER_OWN, find_build, is_loopback, parse_host

    host = "127.0.0.1" if host == "localhost" else parse_host(host)
    if not is_loopback(host) and not allow_remote:
        raise UsageError(f"--host {host} would expose this machine to the network without authentication: "
                         "add --allow-remote if you mean it (or use an SSH tunnel to 127.0.0.1)")
    try:
        limit = parse_size(mem) if mem else None
    except UsageError as exc:
        raise UsageError(f"--mem: {exc}") from None
    if limit is not None and limit < 64 << 20:
        raise UsageError(f"--mem {mem} is too little to hold any layer: give 64M or more")
    build = find_build()
    _check_port_free(host, port)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as cleanly as Ctrl-C
    free = psutil.virtual_memory().available
    lent = min(free, limit) if limit else _budget(free, RAM_MARGIN)  # the OS and other programs keep their margin
    cmd = [str(build.server), "--host", host, "--port", str(port)] + (["--threads", str(threads)] if threads else [])
    # what it lends is what its server may allocate, plus its own data and thread stacks: the planner elsewhere
    # finds the lent size by trying buffers (a CPU device reports all of its RAM as free)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_in_child(lent + SERVER_OWN))
    try:
        _wait_listening(proc, host, port)
        if not is_loopback(host):
            click.echo(REMOTE_RISK.format(addr=f"{host}:{port}", port=port), err=True)
        click.echo(f"worker on {host}:{port}: lending {human_bytes(lent)} of RAM"
                   + (f" (--mem; {human_bytes(free)} free)" if limit else f" (of {human_bytes(free)} free now)") + " and the CPU; Ctrl-C to stop")
        sys.stdout.flush()
        rc = proc.wait()
        raise EdgeError(f"the RPC server stopped by itself (exit code {rc})")
    except KeyboardInterrupt:
        _stop(proc)
        click.echo("worker stopped", err=True)
        return 0
    finally:
        if proc.poll() is None:
            _stop(proc)


def _check_port_free(host: str, port: int) -> None:
    """Another program on the port would answer in the server's place: refuse before starting."""
    import socket

    from ..errors import EdgeError

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise EdgeError(f"the RPC server did not start on {host}:{port}: {exc.strerror or exc}") from None


def _wait_listening(proc: subprocess.Popen, host: str, port: int) -> None:
    """Until the server accepts connections; its own last line if it exits first (port taken, ...)."""
    from ..errors import EdgeError
    from ..engine.rpc import Worker, reachable

    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = [ln for ln in (proc.stdout.read() if proc.stdout else "").splitlines() if ln.strip()]
            raise EdgeError(f"the RPC server did not start on {host}:{port}: {out[-1] if out else f'exit code {proc.returncode}'}")
        if reachable(Worker("127.0.0.1" if host == "0.0.0.0" else host, port), 0.5) is None:
            if proc.stdout:  # its chatter is not ours to print; keep the pipe from filling up
                import threading

                threading.Thread(target=proc.stdout.read, daemon=True).start()
            return
        time.sleep(0.1)
    raise EdgeError(f"the RPC server did not listen on {host}:{port} within {STARTUP_S:g} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()  # not SIGINT: started in the background, the server inherits an ignored SIGINT
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=STOP_S)
