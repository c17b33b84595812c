"""Threads that fit the moment: a program keeping a core busy takes that core away from llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from conftest import run_cli
from edgellm.plan.hardware import cpu_load

N_CPUS = psutil.cpu_count() or 1
pytestmark = pytest.mark.skipif(N_CPUS < 2 or not hasattr(os, "sched_setaffinity"), reason="needs 2 CPUs and affinity")


@pytest.fixture
def busy_core():
    """Another program spinning on CPU 0, as a build or a browser tab would."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    time.sleep(0.3)
    yield
    spin.kill()
    spin.wait()


def test_a_busy_program_costs_llamacpp_a_thread(busy_core):
    load = cpu_load(cores=N_CPUS)
    assert load.busy_cores >= 0.7
    assert 1 <= load.threads <= N_CPUS - 1


def test_own_work_is_not_counted_as_another_programs():
    # this process spins (in a child thread of its own) while it measures: that is not another program's load
    import threading

    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass

    before = cpu_load(cores=N_CPUS)
    t = threading.Thread(target=spin)
    t.start()
    try:
        while_spinning = cpu_load(cores=N_CPUS)
    finally:
        stop.set()
        t.join()
    assert while_spinning.busy_cores < before.busy_cores + 0.5


def test_plan_and_run_say_the_threads_they_chose(capsys, busy_core):
    code, out, _ = run_cli(capsys, "plan", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["n_threads"] <= N_CPUS - 1
    assert any("other programs keep" in n and "--threads" in n for n in plan["notes"])

    code, out, _ = run_cli(capsys, "plan", "--json", "--threads", "2")
    plan = json.loads(out)
    assert code == 0 and plan["n_threads"] == 2 and not any("other programs" in n for n in plan["notes"])

    code, _, err = run_cli(capsys, "run", "-p", "Hi", "-n", "4")
    assert code == 0 and "other programs keep" in err
    threads = int(err.split(" thread")[0].rsplit("· ", 1)[1])
    assert threads <= N_CPUS - 1


@pytest.fixture(scope="module")
def idle_machine_engine():
    """The demo model loaded as if every core were idle, threads chosen by the planner (not by the user)."""
    from dataclasses import replace

    from edgellm.engine.launch import plan_model
    from edgellm.engine.runtime import Engine

    plan = plan_model(None)
    with Engine.load(replace(plan, n_threads=N_CPUS, adaptive_threads=N_CPUS)) as engine:
        yield engine


def test_each_reply_takes_the_threads_the_moment_leaves(idle_machine_engine):
    from edgellm.engine.runtime import Sampling

    engine = idle_machine_engine
    assert engine.info.n_threads == N_CPUS
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    try:
        time.sleep(0.5)  # the window since the engine looked last: a busy core in it
        "".join(engine.stream_prompt("Hi", Sampling(temperature=0, max_tokens=4)))
    finally:
        spin.kill()
        spin.wait()
    assert engine.last_stats.n_threads <= N_CPUS - 1 and engine.info.n_threads == engine.last_stats.n_threads


def test_threads_the_user_fixed_stay(capsys, busy_core):
    code, out, _ = run_cli(capsys, "run", "-p", "Hi", "-n", "4", "--threads", "2", "--json")
    assert code == 0 and json.loads(out)["stats"]["n_threads"] == 2


def spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=lambda: os.sched_setaffinity(0, {0}))


@pytest.mark.slow  # a long reply, or a server streaming one
def test_a_long_reply_follows_the_load_while_it_writes(idle_machine_engine, monkeypatch):
    from edgellm.engine.runtime import Sampling
    from edgellm.plan.hardware import LoadTracker

    monkeypatch.setattr(LoadTracker, "RECHECK_S", 0.5)
    engine = idle_machine_engine
    time.sleep(0.3)
    engine.adapt_threads()  # closes the window an earlier test's busy program may be in
    time.sleep(0.3)  # and opens one of this test's own for the reply's first look
    pieces = engine.stream_prompt("Once upon a time", Sampling(temperature=0, max_tokens=100_000, ignore_eos=True))
    next(pieces)
    at_start = engine.info.n_threads
    if at_start < N_CPUS:
        pieces.close()
        pytest.skip("other programs kept a core busy before the reply began: nothing to follow")
    spin = spinner()
    try:
        deadline = time.monotonic() + 4 * LoadTracker.RECHECK_S + 1.0
        for _ in pieces:
            if time.monotonic() > deadline:
                break
        during = engine.info.n_threads
    finally:
        pieces.close()
        spin.kill()
        spin.wait()
    assert during <= N_CPUS - 1, "a program started in the middle of a reply did not cost it a thread"
    assert engine.last_stats.n_threads == during


@pytest.mark.slow  # a long reply, or a server streaming one
def test_serve_takes_back_the_cores_a_busy_start_left():
    """Started while another program spins it decodes with fewer threads; once that program ends, the
    threads come back between batches of a running stream, and /metrics shows the count."""
    import httpx2

    from serving import KEY, Server

    spin = spinner()
    try:
        time.sleep(0.5)
        server = Server("--api-key", KEY, threads=None)
        assert server.metric("threads") <= N_CPUS - 1
    finally:
        spin.kill()
        spin.wait()
    try:
        body = {"model": "x", "prompt": "Once upon a time", "max_tokens": 100_000, "ignore_eos": True, "stream": True}
        with httpx2.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as http:
            with http.stream("POST", "/v1/completions", json=body) as stream:
                seen, deadline = [], time.monotonic() + 15
                for line in stream.iter_lines():
                    if line.startswith("data:") and len(seen) % 20 == 0:
                        seen.append(server.metric("threads"))
                        if seen[-1] == N_CPUS or time.monotonic() > deadline:
                            break
                    elif line.startswith("data:"):
                        seen.append(None)
            if seen[-1] != N_CPUS and others_load(server.proc.pid) >= 0.5:
                pytest.skip("other programs kept a core busy while the server streamed: fewer threads is right")
        assert seen and seen[-1] == N_CPUS, f"threads while streaming: {[s for s in seen if s is not None]}"
    finally:
        server.interrupt()


def others_load(pid: int, seconds: float = 1.0) -> float:
    """Cores kept busy by programs other than this test and the server `pid`, over `seconds`."""
    procs = [psutil.Process(), psutil.Process(pid)]

    def snap():
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + t.irq + t.softirq + t.steal
        return busy - sum(sum(p.cpu_times()[:2]) for p in procs)

    before = snap()
    time.sleep(seconds)
    return max(0.0, snap() - before) / seconds
