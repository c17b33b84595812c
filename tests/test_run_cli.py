"""`edgellm run` end to end: the installed command against transformers as the oracle, and its bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgellm.cli import main
from edgellm.formats.gguf_info import read_gguf
from edgellm.plan.hardware import synthetic
from edgellm.store.manifest import FileEntry, Manifest, ModelFacts, sha256_file
from edgellm.store.models import resolve_model
from edgellm.plan.planner import make_plan
from edgellm.engine.runtime import Engine
from fixtures import smollm2_checkpoint, smollm2_converted_gguf, smollm2_gguf, write_llama3_shaped_gguf

EDGELLM = str(Path(sys.executable).parent / "edgellm")
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]


def edgellm(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, *args], capture_output=True, text=True, input=stdin, timeout=300)


@pytest.fixture(scope="module")
def transformers_answers():
    """Greedy continuations of the HF checkpoint for each question, through its own chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = smollm2_checkpoint()
    tok = AutoTokenizer.from_pretrained(ckpt)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    out = {}
    for q in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=32, do_sample=False)
        out[q] = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
    return out


@pytest.mark.parametrize("question", QUESTIONS)
def test_run_gives_the_transformers_greedy_continuation(transformers_answers, question):
    r = edgellm("run", str(smollm2_converted_gguf("f32")), "-p", question, "--temp", "0", "-n", "32", "--repeat-penalty", "1.0")
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == transformers_answers[question]
    assert r.stdout.count("\n") == transformers_answers[question].count("\n") + 1


def test_run_streams_the_reply_and_puts_stats_on_stderr():
    r = edgellm("run", "-p", "What is the capital of France? Answer in one sentence.", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "The capital of France is Paris.\n"
    err = r.stderr
    assert "plan: Q4_1 · 0/31 layers on the GPU" in err
    assert "prompt: " in err and "tok/s" in err and "first token after" in err
    assert "reply: 7 tokens" in err and "ended by stop" in err


def test_run_json_and_overrides():
    r = edgellm("run", str(smollm2_gguf()), "-p", "Say hi.", "--temp", "0", "-n", "4", "--ctx", "512", "--ngl", "0", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["engine"]["n_ctx"] == 512 and out["engine"]["n_threads"] == 1 and out["engine"]["n_gpu_layers"] == 0
    assert out["stats"]["gen_tokens"] <= 4 and out["stats"]["finish_reason"] in ("stop", "length")
    assert out["plan"]["level"] == "Q4_1" and out["text"]


def test_run_reads_the_prompt_from_stdin_and_takes_a_system_message():
    r = edgellm("run", "--system", "Answer with one word.", "--temp", "0", "-n", "8", "--json", stdin="What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "Paris" in json.loads(r.stdout)["text"]


def test_vanished_gpu_falls_back_to_the_cpu_on_load():
    ref = resolve_model(smollm2_gguf())
    plan = make_plan(ref, synthetic(16 << 30, 6 << 30), ctx=1024)
    assert plan.n_gpu_layers == plan.n_layers + 1
    with Engine.load(plan) as engine:  # this machine has no GPU llama.cpp can use
        assert engine.info.n_gpu_layers == 0
        assert any("the GPU is gone" in n for n in engine.info.plan.notes)
        assert "".join(engine.stream_chat([{"role": "user", "content": "Hi"}]))


# --- bad input -------------------------------------------------------------------------------------


def one_line_error(r: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgellm: ") and text in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_empty_prompt():
    one_line_error(edgellm("run", "-p", "   "), 2, "the prompt is empty")


def test_prompt_longer_than_the_context():
    # --threads: on a busy machine the planner's note about the cores it left would be a second line
    r = edgellm("run", "--ctx", "256", "--threads", "1", "-p", "word " * 400)
    one_line_error(r, 2, "tokens but the context holds 256")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 definitely a zip")
    one_line_error(edgellm("run", str(bad), "-p", "hi"), 1, "not a GGUF file")


def test_model_that_cannot_fit_is_refused_before_loading(tmp_path):
    big = write_llama3_shaped_gguf(tmp_path / "llama3-70b-Q4_K_M.gguf", "llama3-70b", "Q4_K_M")
    r = edgellm("run", str(big), "-p", "hi")
    one_line_error(r, 3, "does not fit this machine")
    assert "GiB" in r.stderr


def make_package(folder: Path, sha256: str | None = None) -> Path:
    folder.mkdir()
    path = folder / "SmolLM2-Q4_1.gguf"
    shutil.copyfile(smollm2_gguf(), path)
    info = read_gguf(path)
    Manifest(
        model=ModelFacts.from_gguf(info, name="SmolLM2 test package"),
        base={"file": path.name, "level": "Q4_1", "sha256": sha256 or sha256_file(path)},
        files=[FileEntry.from_gguf(info, "Q4_1", sha256 or sha256_file(path))],
    ).save(folder)
    return folder


def test_package_runs_and_its_hash_is_checked(tmp_path, capsys):
    good = make_package(tmp_path / "good")
    assert main(["run", str(good), "-p", "What is the capital of France? Answer in one sentence.", "--temp", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plan"]["name"] == "SmolLM2 test package" and "Paris" in out["text"]

    bad = make_package(tmp_path / "bad", sha256="0" * 64)
    one_line_error(edgellm("run", str(bad), "-p", "hi"), 1, "does not match its manifest's sha256")

    with open(good / "SmolLM2-Q4_1.gguf", "ab") as f:
        f.write(b"\0" * 100)
    one_line_error(edgellm("run", str(good), "-p", "hi"), 1, "the package is damaged")
