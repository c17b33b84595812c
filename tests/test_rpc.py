"""llama.cpp RPC workers: `edgellm worker`, `--rpc` on plan and run, and what happens when a worker is gone.

The tests that run workers use llama.cpp's RPC build of the vendored sources (scripts/llamacpp_tools.sh with
LLAMACPP_RPC=1, built once and cached) and real processes: two workers on 127.0.0.1 and the local machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fixtures
from edgellm.errors import UsageError
from edgellm.engine.rpc import Worker, parse_workers
from edgellm.plan.split import shares

EDGELLM = str(Path(sys.executable).parent / "edgellm")
PROMPT = "What is the capital of France? Answer in one sentence."


def edgellm(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(r: subprocess.CompletedProcess, text: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgellm: "), r.stderr
    assert text in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- addresses, shares, refusals (no RPC build needed) ----------------------------------------------


def test_worker_addresses_are_checked():
    assert parse_workers("127.0.0.1:50052, node-2.lan:7000") == (Worker("127.0.0.1", 50052), Worker("node-2.lan", 7000))
    for bad in ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "host:port", ":50052", "a b:1", "::1:50052", "[::1]:50052",
                "1.2.3.4.5:1", "x;rm -rf:1", "127.0.0.1:1,127.0.0.1:1", ",".join(f"h:{p}" for p in range(1, 18))]:
        with pytest.raises(UsageError):
            parse_workers(bad)


def test_layers_are_shared_in_proportion_to_what_workers_lend():
    assert shares(31, [1, 1]) == [16, 15]
    assert shares(10, [3 << 30, 1 << 30]) == [8, 2]
    assert sum(shares(7, [5, 3, 9])) == 7
    assert shares(3, [0, 0]) == [0, 0]


def test_the_planner_keeps_here_what_fits_and_splits_the_rest():
    """The planner alone, with what two workers lend as data: more RAM here means fewer layers on the workers."""
    from edgellm.errors import NotEnoughSpace
    from edgellm.plan.hardware import detect
    from edgellm.store.models import resolve_model
    from edgellm.engine.rpc import WorkerInfo
    from edgellm.plan.split import plan_with_workers

    ref, hw = resolve_model(str(fixtures.smollm2_gguf())), detect()
    workers = [WorkerInfo(Worker("127.0.0.1", 1), 300 << 20, 8 << 30), WorkerInfo(Worker("127.0.0.1", 2), 100 << 20, 8 << 30)]
    tight = plan_with_workers(ref, hw, workers, ctx=2048, ram=700 << 20, threads=1)
    roomier = plan_with_workers(ref, hw, workers, ctx=2048, ram=750 << 20, threads=1)
    assert 0 < roomier.n_gpu_layers < tight.n_gpu_layers <= tight.n_layers + 1
    assert sum(w.n_layers for w in tight.workers) == tight.n_gpu_layers
    assert tight.workers[0].n_layers > tight.workers[1].n_layers  # in proportion to what each lends
    assert all(w.memory <= w.budget for w in tight.workers) and tight.memory.ram <= tight.ram_budget
    assert "Split over 3 devices" in tight.explain()
    here = plan_with_workers(ref, hw, workers, ctx=2048, threads=1)
    assert here.workers == ()  # it fits here: workers idle
    # each worker costs its round trips per token: a split is predicted slower than the same file here alone
    assert tight.speed.source == "predicted" and 0 < tight.speed.decode_tps < here.speed.decode_tps
    with pytest.raises(NotEnoughSpace, match="does not fit here and on the 2 workers"):
        plan_with_workers(ref, hw, [WorkerInfo(w.worker, 50 << 20, 8 << 30) for w in workers], ctx=2048, ram=600 << 20, threads=1)


def test_lora_adapters_count_in_a_split_beside_their_layers(tmp_path):
    """An adapter's tensors sit beside the layers they change, on the worker for offloaded layers."""
    from edgellm.engine.adapters import read_adapter
    from edgellm.plan.hardware import detect
    from edgellm.store.models import resolve_model
    from edgellm.engine.rpc import WorkerInfo
    from edgellm.plan.split import plan_with_workers

    adapter = tmp_path / "lora.gguf"
    done = edgellm("convert", str(fixtures.smollm2_lora()), "--base", str(fixtures.smollm2_checkpoint()), "-o", str(adapter))
    assert done.returncode == 0, done.stderr
    lora = read_adapter(adapter)
    ref, hw = resolve_model(str(fixtures.smollm2_gguf())), detect()
    workers = [WorkerInfo(Worker("127.0.0.1", 1), 300 << 20, 8 << 30)]
    plain = plan_with_workers(ref, hw, workers, ctx=2048, ram=700 << 20, threads=1, ngl=20)
    tuned = plan_with_workers(ref, hw, workers, ctx=2048, ram=700 << 20, threads=1, ngl=20, loras=(lora,))
    assert tuned.loras == (lora,) and tuned.n_gpu_layers == plain.n_gpu_layers == 20
    on_worker = tuned.workers[0].memory - plain.workers[0].memory
    here = tuned.memory.ram - plain.memory.ram
    assert on_worker > 0 and here > 0 and on_worker + here == tuned.memory.lora == sum(lora.layer_bytes(ref.files[0].info.n_layers))


def test_worker_refuses_a_network_address_without_allow_remote():
    one_line_error(edgellm("worker", "--host", "0.0.0.0"), "--allow-remote")
    one_line_error(edgellm("worker", "--host", "10.1.2.3", "--port", "1"), "--allow-remote")
    one_line_error(edgellm("worker", "--host", "::1"), "not IPv6")
    one_line_error(edgellm("worker", "--mem", "lots"), "--mem: not a size")
    one_line_error(edgellm("worker", "--mem", "10M"), "too little")


def test_worker_without_the_rpc_build_says_how_to_build_it(tmp_path):
    env = {**os.environ, "EDGELLM_TOOLS_CACHE": str(tmp_path)}
    r = subprocess.run([EDGELLM, "worker"], capture_output=True, text=True, timeout=60, env=env)
    one_line_error(r, "LLAMACPP_RPC=1 scripts/llamacpp_tools.sh")


def test_an_unreachable_worker_is_one_line_within_seconds():
    t0 = time.monotonic()
    r = edgellm("run", "--rpc", f"127.0.0.1:{free_port()}", "-p", "hi", "-n", "4", timeout=60)
    one_line_error(r, "cannot be reached")
    assert time.monotonic() - t0 < 30
    one_line_error(edgellm("plan", "--rpc", "127.0.0.1:99999"), "not HOST:PORT")


@pytest.mark.slow  # the first needs the RPC build
def test_something_else_on_the_port_is_one_line(rpc_build):
    """A port where another program answers: ggml's client would abort; edgellm asks in a child process first."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)

        def answer() -> None:
            for _ in range(4):
                conn, _ = srv.accept()
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                conn.close()

        import threading

        threading.Thread(target=answer, daemon=True).start()
        r = edgellm("run", "--rpc", f"127.0.0.1:{srv.getsockname()[1]}", "-p", "hi", "-n", "2", timeout=60)
    one_line_error(r, "is not a llama.cpp RPC server of this version: Remote RPC server crashed or returned malformed response")


# --- real workers ------------------------------------------------------------------------------------

slow = pytest.mark.slow  # they load the model through llama.cpp, here and in the workers


@pytest.fixture(scope="module")
def rpc_build():
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        pytest.skip("cmake and ninja are needed to build llama.cpp's RPC backend")
    script = Path(__file__).resolve().parents[1] / "scripts" / "llamacpp_tools.sh"
    env = {**os.environ, "PYTHON": sys.executable, "LLAMACPP_RPC": "1"}
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])


def start_worker(port: int, *extra: str) -> subprocess.Popen:
    p = subprocess.Popen([EDGELLM, "worker", "--port", str(port), "--threads", "1", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    line = p.stdout.readline()
    assert f"worker on 127.0.0.1:{port}: lending" in line, line + p.stderr.read() if p.poll() is not None else line
    return p


def rpc_reachable(port: int) -> str | None:
    from edgellm.engine.rpc import reachable

    return reachable(Worker("127.0.0.1", port), 1.0)


def stop_worker(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    return err


@pytest.fixture
def two_workers(rpc_build):
    ports = [free_port(), free_port()]
    procs = [start_worker(port) for port in ports]
    yield ",".join(f"127.0.0.1:{port}" for port in ports), procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


@slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_worker_stops_cleanly_on_ctrl_c_or_kill(rpc_build, sig):
    port = free_port()
    p = start_worker(port)
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0 and err.strip() == "worker stopped", err
    assert rpc_reachable(port) is not None  # its server is gone too


@slow
def test_worker_on_the_network_with_allow_remote_states_the_risk(rpc_build):
    p = subprocess.Popen([EDGELLM, "worker", "--host", "0.0.0.0", "--port", str(free_port()), "--allow-remote"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "lending" in p.stdout.readline()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert "no authentication" in err and "SSH tunnel" in err and err.strip().endswith("worker stopped"), err


@slow
def test_worker_port_taken_is_one_line(two_workers):
    rpc, _ = two_workers
    r = edgellm("worker", "--port", rpc.split(",")[0].split(":")[1], timeout=60)
    one_line_error(r, "did not start")


@slow
def test_plan_puts_on_the_workers_what_does_not_fit_here(two_workers):
    rpc, _ = two_workers
    r = edgellm("plan", "--rpc", rpc, "--ram", "700M", "--ctx", "2048", "--json")
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    on_workers = [w["n_layers"] for w in p["workers"]]
    assert len(on_workers) == 2 and all(on_workers) and sum(on_workers) == p["n_gpu_layers"] <= p["n_layers"] + 1
    assert p["memory"]["weights_cpu"] > 0  # as much as fits stays here
    text = edgellm("plan", "--rpc", rpc, "--ram", "700M", "--ctx", "2048").stdout
    assert "Split over 3 devices" in text and f"worker {rpc.split(',')[1]}:" in text
    # a model that fits here leaves the workers idle
    r = edgellm("plan", "--rpc", rpc, "--json")
    assert json.loads(r.stdout)["workers"] == [] and "not needed" in r.stdout


@slow
def test_greedy_reply_over_two_workers_is_the_local_one(two_workers):
    rpc, _ = two_workers
    args = ["run", "-p", PROMPT, "--temp", "0", "-n", "24", "--ctx", "1024", "-t", "1"]
    local = edgellm(*args)
    split = edgellm(*args, "--rpc", rpc, "--ngl", "20")  # layers 11-29 and the output layer on the workers
    assert local.returncode == 0 and split.returncode == 0, local.stderr + split.stderr
    assert split.stdout == local.stdout and "Paris" in local.stdout


@slow
def test_a_worker_killed_mid_reply_is_one_line_within_bounded_time(two_workers):
    rpc, procs = two_workers
    p = subprocess.Popen([EDGELLM, "run", "-p", "Write a very long story about a dragon.", "--temp", "0", "-n", "2000",
                          "--ctx", "4096", "-t", "1", "--rpc", rpc, "--ngl", "31"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.read(1), p.stderr.read()  # the reply has started
    procs[1].kill()
    t0 = time.monotonic()
    _, err = p.communicate(timeout=60)
    assert time.monotonic() - t0 < 30
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode != 0 and len(lines) == 1, err
    assert lines[0].startswith(f"edgellm: worker {rpc.split(',')[1]} is gone"), err


@slow
def test_plan_over_workers_that_lend_little(rpc_build):
    """Workers lend only --mem: the planner finds that out (a CPU worker reports all its RAM as free) and a model
    that fits neither here (--ram) nor on one worker is split over both; llama.cpp then loads it within those caps."""
    ports = [free_port(), free_port()]
    procs = [start_worker(port, "--mem", "200M") for port in ports]
    try:
        rpc = ",".join(f"127.0.0.1:{port}" for port in ports)
        r = edgellm("plan", "--rpc", rpc, "--ram", "700M", "--ctx", "2048", "--json")
        assert r.returncode == 0, r.stderr
        p = json.loads(r.stdout)
        assert [w["free"] <= 200 << 20 for w in p["workers"]] == [True, True]
        assert all(0 < w["memory"] <= w["budget"] for w in p["workers"])
        run = edgellm("run", "--rpc", rpc, "-p", PROMPT, "--temp", "0", "-n", "8", "--ctx", "2048", "-t", "1")
        assert run.returncode == 0, run.stderr
        one_line_error(edgellm("plan", "--rpc", rpc.split(",")[0], "--ram", "700M", "--ctx", "2048"), "does not fit here and on the 1 worker")
    finally:
        for p in procs:
            stop_worker(p)


@slow
def test_the_connection_to_a_worker_has_bounded_waits(two_workers):
    """ggml's client has no timeout of its own: the kernel closes a connection to a machine that went silent."""
    from edgellm.engine import rpc
    from edgellm.engine.launch import plan_model
    from edgellm.engine.runtime import Engine

    w = parse_workers(two_workers[0])[0]
    engine = Engine.load(plan_model(None, ctx=512, ngl=31, threads=1, rpc=w.endpoint))
    peer = (w.host, w.port)
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            with socket.socket(fileno=os.dup(int(fd))) as s:
                if s.family == socket.AF_INET and s.getpeername() == peer:
                    found.append((s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                                  s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)))
        except OSError:
            continue
    engine.close()
    assert found == [(1, rpc.USER_TIMEOUT_MS)]


@slow
def test_bench_over_workers(two_workers):
    rpc, _ = two_workers
    r = edgellm("bench", "run", "-p", "32", "-n", "16", "-r", "1", "--threads", "1", "--rpc", rpc, "--ngl", "31", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)["results"][0]
    assert result["error"] is None and result["n_gpu_layers"] == 31 and result["tg"]["mean"] > 0
    one_line_error(edgellm("bench", "run", "--rpc", rpc, "--save"), "leave it out with --rpc")


@slow
def test_a_worker_busy_with_another_machine_is_one_line(two_workers):
    """llama.cpp's rpc-server serves one client at a time: a second one waits unanswered, edgellm no longer than its timeout."""
    rpc, _ = two_workers
    host, port = rpc.split(",")[0].split(":")
    with socket.create_connection((host, int(port))):  # another client, connected and silent
        t0 = time.monotonic()
        r = edgellm("plan", "--rpc", rpc, timeout=120)
    one_line_error(r, "is another using it?")
    assert time.monotonic() - t0 < 40
