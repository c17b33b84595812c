"""One command from a hub id to an answer: the installed `edgellm run|chat|serve HUB_ID` against the test hub
(tests/hubserver.py), with the real SmolLM2 GGUF and test checkpoints; Ctrl-C at known points of the work
(tests/pausing.py) and what the next run makes of it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pausing
import pytest
from hubserver import Repo
from hubtesting import caches, edgellm_cli, fake_hub, fake_modelscope, files_under, gguf_repo  # noqa: F401  (fixtures)
from test_tui_tmux import EDGELLM, QUESTION, Tmux

import fixtures
from edgellm import paths
from edgellm.store import store

GGUF_REPO = "someone/SmolLM2-135M-Instruct-GGUF"
CKPT_REPO = "Qwen/tiny-qwen2"
ANSWER = ("-p", QUESTION, "--temp", "0", "-n", "24")


def qwen2_repo() -> Repo:
    """A tiny random Qwen2 checkpoint in four shards, as a hub holds it (with files conversion never reads)."""
    files = {p.name: p.read_bytes() for p in fixtures.qwen2_checkpoint().iterdir() if p.is_file()}
    return Repo(files | {"pytorch_model.bin": b"pickle", "original/x.pth": b"pth"})


@pytest.fixture
def hub_env(fake_hub, monkeypatch):
    """The test hub for the installed command: its address and quiet libraries in this process's environment."""
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.urls["hub"])
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return fake_hub


def entry_files(name: str) -> set[str]:
    return files_under(paths.store_dir() / name)


# ------------------------------------------------------------------------------------------------ run HUB_ID


def test_run_a_gguf_repo_pulls_the_planned_level_then_answers_and_reuses_it(hub_env):
    hub_env.repos[GGUF_REPO] = gguf_repo()
    start = time.monotonic()
    r = edgellm_cli("run", GGUF_REPO, *ANSWER)
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    lines = r.stderr.splitlines()
    size = fixtures.smollm2_gguf().stat().st_size
    assert lines[:2] == [
        f"{GGUF_REPO}: Hugging Face (default)",
        f"{GGUF_REPO}: Q4_1, the only level (93.81 MiB, 8192-token context)",
    ]
    assert "On disk: 93.81 MiB to download (Q4_1, 1 file)" in lines
    assert any(line.startswith("Read to plan: 2.00 MiB from Hugging Face in 1 request(s) (the headers of 1 level)") for line in lines)
    assert hub_env.range_reads() == [("SmolLM2-135M-Instruct-Q4_1.gguf", "bytes=0-2097151")]
    assert sorted(p for p, _ in hub_env.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf"]
    assert store.names() == ["SmolLM2-135M-Instruct"] and lines[-3].startswith("plan: Q4_1 · ")
    assert (paths.store_dir() / "SmolLM2-135M-Instruct" / "SmolLM2-135M-Instruct-Q4_1.gguf").stat().st_size == size
    print(f"run {GGUF_REPO} on the test hub, first time: {took:.1f} s")

    hub_env.forget()
    again = edgellm_cli("run", GGUF_REPO, *ANSWER)
    assert again.returncode == 0 and again.stdout == r.stdout
    assert again.stderr.splitlines()[0] == f"{GGUF_REPO}: SmolLM2-135M-Instruct in the store"
    assert hub_env.log == []  # nothing asked of the hub: it starts at once, offline too


def test_run_a_checkpoint_repo_converts_and_quantizes_only_the_planned_level(hub_env, capsys):
    hub_env.repos[CKPT_REPO] = qwen2_repo()
    start = time.monotonic()
    r = edgellm_cli("run", CKPT_REPO, "-p", "Hi", "-n", "4", "--json")
    took = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["engine"]["level"] == "Q8_0"
    assert f"{CKPT_REPO}: Q8_0, made from its checkpoint, the highest-quality level that fits" in r.stderr
    assert "Traceback" not in r.stderr
    # Only what conversion reads was fetched; the store holds the level, its manifest and card; the base is gone.
    assert {p for p, _ in hub_env.downloads()} == {n for n in qwen2_repo().files if n.endswith((".json", ".safetensors", ".jinja"))}
    assert entry_files("tiny-qwen2") == {"tiny-qwen2-Q8_0.gguf", "manifest.json", "README.md", "source.json"}
    manifest = json.loads((paths.store_dir() / "tiny-qwen2" / "manifest.json").read_text())
    assert [f["level"] for f in manifest["files"]] == ["Q8_0"] and manifest["base"]["level"] == "ALL_F32"
    assert not any((paths.store_dir() / ".building").iterdir())
    listed = json.loads(edgellm_cli("list", "--json").stdout)["packages"]
    assert [(p["name"], p["origin"], [lv["level"] for lv in p["levels"]]) for p in listed] == [
        ("tiny-qwen2", f"hf:{CKPT_REPO}", ["Q8_0"])
    ]
    assert edgellm_cli("verify", str(paths.store_dir() / "tiny-qwen2")).returncode == 0
    print(f"run {CKPT_REPO} on the test hub, first time: {took:.1f} s")

    hub_env.forget()
    assert edgellm_cli("run", CKPT_REPO, "-p", "Hi", "-n", "4").returncode == 0 and hub_env.log == []
    rm = edgellm_cli("rm", "tiny-qwen2")
    assert rm.stdout.strip().startswith("removed tiny-qwen2 (") and "the checkpoint it was made from stays in the Hugging Face cache" in rm.stdout


def test_names_that_are_neither_a_model_here_nor_a_repo_say_so(hub_env):
    r = edgellm_cli("run", "nowhere", "-p", "x")
    assert r.returncode == 2 and r.stderr.strip() == "edgellm: no such model file, package folder or store name: nowhere"
    r = edgellm_cli("run", "models/x.gguf", "-p", "x")  # a missing file is a path, never a repo
    assert r.returncode == 2 and r.stderr.strip() == "edgellm: no such model file, package folder or store name: models/x.gguf"
    r = edgellm_cli("run", "org/missing", "-p", "x")
    assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
        "edgellm: no such model file, package folder or store name here: org/missing; and no repo org/missing on "
        "Hugging Face (if it is private, log in: `hf auth login` or HF_TOKEN)"
    )


# ------------------------------------------------------------------------------------ interrupted, then again


def test_ctrl_c_while_converting_leaves_no_entry_and_the_next_run_goes_on(hub_env):
    hub_env.repos[CKPT_REPO] = qwen2_repo()
    proc = pausing.start_paused("convert.tensor:3", "run", CKPT_REPO, "-p", "Hi", "-n", "2")
    done = pausing.finish(proc, signal.SIGINT)
    assert done.returncode == 130 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"edgellm: interrupted while converting and quantizing {CKPT_REPO}; run the same command again to go on"
    )
    assert store.names() == [] and not list((paths.store_dir() / ".building").rglob("*.gguf"))

    hub_env.forget()
    again = edgellm_cli("run", CKPT_REPO, "-p", "Hi", "-n", "2")
    assert again.returncode == 0, again.stderr
    assert hub_env.downloads() == [] and store.names() == ["tiny-qwen2"]  # the checkpoint came from the hub's cache


def test_ctrl_c_after_the_base_keeps_it_for_the_next_run(hub_env):
    hub_env.repos[CKPT_REPO] = qwen2_repo()
    proc = pausing.start_paused("package.base", "run", CKPT_REPO, "-p", "Hi", "-n", "2")
    done = pausing.finish(proc, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    work = paths.store_dir() / ".building" / "tiny-qwen2"
    (base,) = work.glob("*-ALL_F32.gguf")
    made = base.stat().st_mtime_ns
    assert store.names() == []

    proc = pausing.start_paused("package.level:1", "run", CKPT_REPO, "-p", "Hi", "-n", "2")
    assert base.stat().st_mtime_ns == made  # converted once: this run quantized the kept base
    again = pausing.finish(proc)
    assert again.returncode == 0, again.stderr
    assert entry_files("tiny-qwen2") == {"tiny-qwen2-Q8_0.gguf", "manifest.json", "README.md", "source.json"}
    assert not work.exists()


def test_ctrl_c_while_downloading_ends_at_once_and_leaves_no_partial_file(hub_env, caches):
    name = "SmolLM2-135M-Instruct-Q4_1.gguf"
    hub_env.repos[GGUF_REPO] = gguf_repo()
    hub_env.throttle[name] = 4 << 20  # 94 MiB at 4 MiB/s: still coming when Ctrl-C arrives
    proc = subprocess.Popen([str(EDGELLM), "run", GGUF_REPO, *ANSWER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("On disk:"):
            break
    while hub_env.bytes_sent.get(name, 0) < 4 << 20:  # the download is under way
        time.sleep(0.05)
    interrupted = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - interrupted < 5, "Ctrl-C waited for the download"
    assert proc.returncode == 130 and out == "" and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"edgellm: interrupted while downloading {GGUF_REPO}; run the same command again to go on"
    )
    assert not [p for p in caches["hf"].rglob("*") if p.name.endswith(".incomplete")]
    assert store.names() == []

    hub_env.throttle.clear()
    again = edgellm_cli("run", GGUF_REPO, *ANSWER)
    assert again.returncode == 0 and "Paris" in again.stdout, again.stderr


# ---------------------------------------------------------------------------------------- chat and serve


def test_chat_hub_id_shows_progress_then_opens_the_chat(hub_env, tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (.ci/run installs it)")
    hub_env.repos[GGUF_REPO] = gguf_repo()
    env = {k: os.environ[k] for k in ("EDGELLM_HOME", "HF_HOME", "HF_HUB_CACHE", "MODELSCOPE_CACHE", "HF_ENDPOINT",
                                      "HF_XET_CLIENT_RETRY_MAX_ATTEMPTS")}  # fmt: skip
    exit_file = tmp_path / "exit-code"
    command = (
        "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        + f" {shlex.quote(str(EDGELLM))} chat {GGUF_REPO} --temperature 0 --max-tokens 32; echo $? > {shlex.quote(str(exit_file))}"
    )
    tmux = Tmux(f"edgellm-hub-{os.getpid()}")
    try:
        tmux("new-session", "-d", "-s", "chat", "-x", "100", "-y", "30", command)
        tmux.wait_for(lambda s: "ready │" in s)
        assert "Q4_1" in tmux.ask_and_quit(exit_file)
    finally:
        tmux.kill()
    assert store.names() == ["SmolLM2-135M-Instruct"]
    assert sorted(p for p, _ in hub_env.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf"]


def test_serve_hub_id_serves_the_pulled_level(hub_env):
    import socket
    import urllib.request

    hub_env.repos[GGUF_REPO] = gguf_repo()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(EDGELLM), "serve", GGUF_REPO, "--port", str(port), "--parallel", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        end = time.monotonic() + 300
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    models = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, proc.stderr.read() if proc.poll() is not None else "slow"
                time.sleep(0.2)
        entry = store.resolve("SmolLM2-135M-Instruct")
        assert entry is not None and str(entry / "SmolLM2-135M-Instruct-Q4_1.gguf") in json.dumps(models)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert err.splitlines()[0] == f"{GGUF_REPO}: Hugging Face (default)" and store.names() == ["SmolLM2-135M-Instruct"]


def test_run_a_modelscope_repo(fake_modelscope):
    """The same flow on ModelScope: headers through its file endpoint's redirect to OSS, then the download."""
    fake_modelscope.repos["LLM-Research/SmolLM2-GGUF"] = gguf_repo()
    r = edgellm_cli("run", "LLM-Research/SmolLM2-GGUF", *ANSWER, modelscope=fake_modelscope.urls["hub"])
    assert r.returncode == 0 and "Paris" in r.stdout, r.stderr
    assert r.stderr.splitlines()[0] == "LLM-Research/SmolLM2-GGUF: ModelScope (LLM-Research publishes on ModelScope)"
    assert fake_modelscope.range_reads() == [("SmolLM2-135M-Instruct-Q4_1.gguf", "bytes=0-2097151")]
    assert sorted(p for p, _ in fake_modelscope.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf"]
    assert store.names() == ["SmolLM2"]
