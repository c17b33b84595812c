"""When llama.cpp aborts the process, its reason, its last log lines and what edgellm was doing reach stderr
first; `EDGELLM_LLAMA_LOG` streams its log live."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures import smollm2_gguf
from gguf_edit import copy_gguf

# A layer count of 0 makes llama.cpp's loader fail a GGML_ASSERT (edgellm's header checks refuse such a file
# before llama.cpp sees it, so this script hands it to llama.cpp directly, under edgellm's abort report).
LOAD_UNDER_REPORT = """
import sys
import llama_cpp as L
from edgellm.engine import llamacpp
llamacpp.init()
with llamacpp.doing("loading the test file"):
    model = L.llama_model_load_from_file(sys.argv[1].encode(), L.llama_model_default_params())
print("loaded", bool(model))
"""


def _python(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def no_layers(tmp_path_factory) -> Path:
    return copy_gguf(smollm2_gguf(), tmp_path_factory.mktemp("abort") / "no-layers.gguf", {"llama.block_count": 0}, data=False)


def test_an_assert_in_llama_cpp_says_why_and_what_was_being_done(no_layers):
    r = _python(LOAD_UNDER_REPORT, str(no_layers))
    assert r.returncode == -6, (r.returncode, r.stderr[-2000:])  # the process still ends with SIGABRT
    err = r.stderr
    assert "edgellm: llama.cpp aborted: GGML_ASSERT(" in err, err[-2000:]
    assert "  while loading the test file" in err
    assert "llama.cpp's last log lines:" in err
    assert "llama_model_loader" in err  # the log that led up to it, which was kept in memory until now
    assert err.count("edgellm: llama.cpp aborted") == 1  # the SIGABRT that follows does not report again
    assert "loaded" not in r.stdout


def test_an_abort_from_outside_ggml_is_reported_too():
    script = "import ctypes\nfrom edgellm.engine import llamacpp\nllamacpp.init()\nctypes.CDLL(None).abort()\n"
    r = _python(script)
    assert r.returncode == -6
    assert "edgellm: llama.cpp aborted: abort() called" in r.stderr, r.stderr[-1000:]


def test_the_report_lists_log_lines_and_work_in_order():
    from edgellm.engine import llamacpp

    llamacpp.init()
    with llamacpp.doing("loading a.gguf: 31/31 layers on Vulkan0"), llamacpp.doing("making the context"):
        text = llamacpp.abort_report("/src/ggml.c:123: GGML_ASSERT(x) failed\nmore")
    lines = text.splitlines()
    assert lines[0] == "edgellm: llama.cpp aborted: GGML_ASSERT(x) failed"  # without the source file and line
    assert lines[1:3] == ["  while loading a.gguf: 31/31 layers on Vulkan0", "  while making the context"]
    assert "EDGELLM_LLAMA_LOG=1" in lines[-1]


@pytest.mark.parametrize("target", ["1", "file"])
def test_the_log_streams_live_when_asked(tmp_path, target):
    script = "import sys\nfrom edgellm.plan.memory import llama_dry_run\nllama_dry_run(sys.argv[1], 512)\nprint('done')\n"
    log = tmp_path / "llama.log"
    r = _python(script, str(smollm2_gguf()), EDGELLM_LLAMA_LOG=str(log) if target == "file" else target)
    assert r.returncode == 0 and "done" in r.stdout, r.stderr[-1000:]
    streamed = log.read_text() if target == "file" else r.stderr
    assert "llama_model_loader: loaded meta data" in streamed and "llama_kv_cache: size =" in streamed, streamed[-1000:]
    quiet = _python(script, str(smollm2_gguf()), EDGELLM_LLAMA_LOG="0")
    assert quiet.stderr.strip() == "", quiet.stderr[-1000:]


def test_a_failed_load_with_gpu_layers_names_the_plan_and_the_flags_that_lower_it():
    from edgellm.plan.hardware import synthetic
    from edgellm.engine.launch import plan_model
    from edgellm.engine.runtime import _lower_hint

    plan = plan_model(smollm2_gguf(), ngl=31, threads=1, hw=synthetic(8 << 30, vram=4 << 30))
    hint = _lower_hint(plan)
    assert hint.startswith(" (the plan put 31/31 layers on the GPU, ") and "MiB of device memory" in hint
    assert "--ngl 24 or a smaller --ctx than" in hint
    assert _lower_hint(plan_model(smollm2_gguf(), ngl=0, threads=1, hw=synthetic(8 << 30, vram=4 << 30))) == ""
