"""The GPU tier: edgellm on a GPU backend of llama.cpp, whichever one the GPU build has (Vulkan on Mesa's lavapipe
in CI, CUDA on a machine with an NVIDIA GPU).

The build is a folder with libllama and the ggml it links to, which edgellm runs on through LLAMA_CPP_LIB_PATH:
`EDGELLM_GPU_LIB`, else the Vulkan build `LLAMACPP_VULKAN=1 scripts/llamacpp_tools.sh` leaves in the tools cache.
Without one (or when it sees no GPU) the tier skips and says why; with EDGELLM_REQUIRE_GPU=1 (CI) it fails instead.
Every run is a real `edgellm` process; the CPU reference runs on llama-cpp-python's own build.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import smollm2_gguf
from test_rpc import rpc_build  # noqa: F401 - the fixture: llama.cpp's RPC backend, built once

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

EDGELLM = str(Path(sys.executable).parent / "edgellm")
PROMPT = "What is the capital of France? Answer in one sentence."
N_TOKENS = 12
PLAN_TOLERANCE = 0.10  # the plan's bytes per device against what llama.cpp says it allocated
GPU_BACKENDS = {"CUDA", "Vulkan", "Metal", "ROCm", "SYCL", "MUSA", "CANN", "OpenCL"}


def gpu_build() -> Path | None:
    if os.environ.get("EDGELLM_GPU_LIB"):
        return Path(os.environ["EDGELLM_GPU_LIB"])
    cache = Path(os.environ.get("EDGELLM_TOOLS_CACHE", Path.home() / ".cache" / "edgellm-tools"))
    version = importlib.metadata.version("llama-cpp-python")
    folder = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp" / "build-vulkan" / "bin"
    return folder if (folder / "libllama.so").is_file() else None


def _unavailable(why: str):
    if os.environ.get("EDGELLM_REQUIRE_GPU") == "1":
        pytest.fail(f"the GPU tier must run here (EDGELLM_REQUIRE_GPU=1), but {why}")
    pytest.skip(why)


def gpu_env() -> dict[str, str]:
    env = {**os.environ, "LLAMA_CPP_LIB_PATH": str(GPU["lib"])}
    env.setdefault("GGML_VK_VISIBLE_DEVICES", "0")  # lavapipe, a CPU-type Vulkan device, is used only when named
    return env


def cpu_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}


def edgellm(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, *args], capture_output=True, text=True, env=env, timeout=timeout)


GPU: dict = {}  # the build and its first GPU, found once


@pytest.fixture(scope="module", autouse=True)
def gpu():
    lib = gpu_build()
    if lib is None:
        _unavailable("no GPU build of llama.cpp: LLAMACPP_VULKAN=1 scripts/llamacpp_tools.sh makes one (or set EDGELLM_GPU_LIB)")
    GPU["lib"] = lib
    r = edgellm("hw", "--json", env=gpu_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    hw = json.loads(r.stdout)
    usable = [g for g in hw["gpus"] if g["device"]]
    if not usable or not hw["llama"]["gpu_offload"]:
        _unavailable(f"the GPU build at {lib} sees no GPU here (backends {hw['llama']['backends']}; notes {hw['notes']})")
    GPU["hw"], GPU["device"] = hw, usable[0]
    return GPU


def run_json(*args: str, env: dict[str, str]) -> dict:
    r = edgellm("run", str(smollm2_gguf()), "-p", PROMPT, "-n", str(N_TOKENS), "--temp", "0", "-t", "1", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    """The same greedy reply on the CPU build and on the GPU build with all, part and none of the layers offloaded."""
    n_layers = 30  # SmolLM2-135M; +1 for the output layer
    return {
        "cpu build": run_json("--device", "none", env=cpu_env()),
        "all": run_json("--ngl", str(n_layers + 1), env=gpu_env()),
        "partial": run_json("--ngl", "12", env=gpu_env()),
        "none": run_json("--ngl", "0", env=gpu_env()),
    }


def test_hw_lists_the_gpu_of_the_llama_cpp_that_is_loaded(gpu):
    g = gpu["device"]
    assert g["source"] == "llama.cpp" and g["backend"] in GPU_BACKENDS
    assert g["device"].startswith(g["backend"]) and 0 < g["free"] <= g["total"]
    assert g["backend"] in gpu["hw"]["llama"]["backends"]
    text = edgellm("hw", env={**gpu_env(), "COLUMNS": "200"}, timeout=120).stdout
    row = next(line for line in text.splitlines() if line.startswith(g["device"]))
    assert f"({g['backend']}):" in row and g["name"] in row, text
    # the same command on llama-cpp-python's own build: a CPU build sees no GPU (nothing else was opened behind its back)
    cpu = json.loads(edgellm("hw", "--json", env=cpu_env(), timeout=120).stdout)
    if cpu["llama"]["backends"] == ["CPU"]:
        assert not any(x["device"] for x in cpu["gpus"]), cpu["gpus"]


@pytest.mark.parametrize("split", ["all", "partial", "none"])
def test_every_split_gives_the_cpu_builds_greedy_text(runs, split):
    assert runs[split]["text"] == runs["cpu build"]["text"]
    assert "Paris" in runs["cpu build"]["text"]


def test_the_engine_offloads_what_the_plan_says(runs, gpu):
    dev = gpu["device"]["device"]
    expect = {"all": 31, "partial": 12, "none": 0}
    for split, n in expect.items():
        engine, plan = runs[split]["engine"], runs[split]["plan"]
        assert engine["n_gpu_layers"] == plan["n_gpu_layers"] == n, split
        assert engine["devices"] == plan["devices"] == ([dev] if n else []), split


def test_the_kv_cache_is_on_the_device(runs, gpu):
    dev = gpu["device"]["device"]
    full = runs["all"]["engine"]["allocated"]
    assert full[dev]["kv"] > 0 and full[dev]["weights"] > 0 and "kv" not in full.get("CPU", {})
    part = runs["partial"]["engine"]["allocated"]
    assert 0 < part[dev]["kv"] < full[dev]["kv"] and part["CPU"]["kv"] > 0  # split by layer, as the weights are
    # no GPU layers: nothing at all on the GPU (llama.cpp would otherwise still send prompt batches there)
    assert not any(name.startswith(gpu["device"]["backend"]) for name in runs["none"]["engine"]["allocated"])


@pytest.mark.parametrize("split", ["all", "partial"])
def test_planned_device_memory_is_what_llama_cpp_allocated(runs, gpu, split):
    dev = gpu["device"]["device"]
    planned = runs[split]["plan"]["memory"]["vram"]
    allocated = runs[split]["engine"]["device_bytes"][dev]
    assert abs(planned - allocated) <= PLAN_TOLERANCE * allocated, (planned, allocated, runs[split]["engine"]["allocated"])


def test_the_run_line_names_the_device(gpu):
    r = edgellm("run", str(smollm2_gguf()), "-p", "Hi", "-n", "2", "-t", "1", env=gpu_env())
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"31/31 layers on {gpu['device']['device']}" in r.stderr


def test_bench_rows_name_the_device_and_layers(gpu, tmp_path):
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    r = edgellm("bench", str(smollm2_gguf()), "--ngl", "31", "-p", "16", "-n", "4", "-r", "1", "--threads", "1", "-o", str(out), "--md", str(md),
                env=gpu_env())
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(out.read_text())["results"][0]
    assert row["devices"] == [gpu["device"]["device"]] and row["n_gpu_layers"] == 31 and row["tg"]["mean"] > 0
    assert f"| 31/31 {gpu['device']['device']} |" in md.read_text()


def test_serve_answers_from_the_gpu(gpu, monkeypatch):
    from test_serve import Server

    for key, value in gpu_env().items():
        monkeypatch.setenv(key, value)
    server = Server(str(smollm2_gguf()), "--parallel", "2", "--ctx", "512", "--ngl", "31")
    try:
        models = server.http(None).get("/v1/models").json()["data"][0]
        plan = models["meta"]["plan"]
        assert plan["devices"] == [gpu["device"]["device"]] and plan["n_gpu_layers"] == 31
        reply = server.client(None).chat.completions.create(
            model=models["id"], messages=[{"role": "user", "content": PROMPT}], temperature=0, max_tokens=8)
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    finally:
        rc, log = server.interrupt()
    assert rc == 130 and "Traceback" not in log, log


def test_chat_header_shows_the_offload(gpu, tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    from test_tui_tmux import Tmux

    exit_file = tmp_path / "exit-code"
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in gpu_env().items() if k in ("LLAMA_CPP_LIB_PATH", "GGML_VK_VISIBLE_DEVICES", "EDGELLM_HOME"))
    command = f"env {env} {shlex.quote(EDGELLM)} chat --temperature 0 --max-tokens 8; echo $? > {shlex.quote(str(exit_file))}; sleep 20"
    tmux = Tmux(f"edgellm-gpu-{os.getpid()}")
    try:
        tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "24", command)
        screen = tmux.wait_for(lambda s: "ready │" in s and f"all on {gpu['device']['device']}" in s)
        assert "GPU 31/31" in screen
        tmux("send-keys", "-t", "chat", "C-q")
        tmux.wait_for(lambda s: exit_file.exists(), timeout=30)
        assert exit_file.read_text().strip() == "0"
    finally:
        tmux.kill()


def test_a_named_device_that_is_not_here_falls_back_to_the_cpu_with_one_line(gpu):
    r = edgellm("run", str(smollm2_gguf()), "-p", PROMPT, "-n", str(N_TOKENS), "--temp", "0", "-t", "1", "--device", "Vulkan7,CUDA9",
                "--json", env=gpu_env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["engine"]["n_gpu_layers"] == 0 and out["engine"]["devices"] == []
    notes = [line for line in r.stderr.splitlines() if "no such device" in line]
    assert len(notes) == 2 and f"(devices: {gpu['device']['device']})" in notes[0] and "on the CPU" in notes[1], r.stderr
    assert "Paris" in out["text"]


def test_a_named_device_takes_the_layers(gpu):
    dev = gpu["device"]["device"]
    out = json.loads(edgellm("plan", str(smollm2_gguf()), "--device", dev, "--json", env=gpu_env()).stdout)
    assert out["devices"] == [dev] and out["n_gpu_layers"] == 31
    cpu = json.loads(edgellm("plan", str(smollm2_gguf()), "--device", "none", "--json", env=gpu_env()).stdout)
    assert cpu["devices"] == [] and cpu["n_gpu_layers"] == 0


def test_rpc_workers_take_the_layers_after_the_local_gpu(gpu, runs, rpc_build):
    from test_rpc import free_port, start_worker, stop_worker

    port = free_port()
    worker = start_worker(port, "--mem", "256M")  # llama-cpp-python's own build: another machine's CPU
    try:
        rpc = f"127.0.0.1:{port}"
        dev = gpu["device"]["device"]
        plan = json.loads(edgellm("plan", str(smollm2_gguf()), "--rpc", rpc, "--ngl", "31", "-t", "1", "--json", env=gpu_env()).stdout)
        shares = {w["endpoint"]: w["n_layers"] for w in plan["workers"]}
        assert set(shares) == {dev, rpc} and shares[dev] > 0 and shares[rpc] > 0 and sum(shares.values()) == 31, shares
        assert plan["devices"] == [dev]
        out = run_json("--rpc", rpc, "--ngl", "31", env=gpu_env())
        assert out["text"] == runs["cpu build"]["text"]
        allocated = out["engine"]["allocated"]
        assert allocated[dev]["weights"] > 0 and any(name.startswith("RPC") for name in allocated), allocated
    finally:
        stop_worker(worker)
