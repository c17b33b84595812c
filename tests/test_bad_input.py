"""Bad input to the installed `edgellm` ends in one `edgellm: ...` line and a non-zero exit: no traceback,
no crash of llama.cpp, nothing lost. Each case here once crashed, hung or was silently accepted."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgellm.cli import main
from edgellm.commands.options import GGML_MAX_N_THREADS, THREADS, max_threads
from edgellm.paths import store_dir
from fixtures import smollm2_gguf

EDGELLM = str(Path(sys.executable).parent / "edgellm")


def edgellm(*args: str, **kw) -> subprocess.CompletedProcess:
    """`edgellm ARGS`: in a child process when the case sets up its streams or environment (`kw`), else the
    same `main` in this process, which spares an interpreter start per case."""
    if kw:
        return subprocess.run([EDGELLM, *args], capture_output=True, text=True, timeout=600, **kw)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess([EDGELLM, *args], code, out.getvalue(), err.getvalue())


def one_line_error(r: subprocess.CompletedProcess, code: int, *texts: str) -> str:
    """The run failed with `code` and said so in exactly one `edgellm: ...` line holding every text."""
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgellm: "), r.stderr[-2000:]
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


# --- thread counts and GPU layers --------------------------------------------------------------------


def test_the_thread_bound_stays_inside_llama_cpp():
    assert THREADS.high == max_threads() <= GGML_MAX_N_THREADS
    assert max_threads() >= 64


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["bench", "-p", "8", "-n", "2", "-r", "1"]])
@pytest.mark.parametrize("threads", ["0", "-1", str(max_threads() + 1), "100000", "two"])
def test_thread_counts_out_of_range_are_refused(command, threads):
    r = edgellm(*command, "--threads", threads)
    one_line_error(r, 2, "--threads", f"from 1 to {max_threads()}", threads)


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["bench", "-p", "8", "-n", "2", "-r", "1"]])
@pytest.mark.parametrize("ngl", ["-1", "-5", "some"])
def test_negative_gpu_layers_are_refused(command, ngl):
    one_line_error(edgellm(*command, "--ngl", ngl), 2, "--ngl", "auto or a whole number", ngl)


def test_in_range_threads_and_auto_layers_still_run():
    r = edgellm("run", str(smollm2_gguf()), "-p", "Hi", "--temp", "0", "-n", "2", "-t", "3", "--ngl", "auto", "--json")
    assert r.returncode == 0, r.stderr
    assert '"n_threads": 3' in r.stdout


@pytest.mark.parametrize("option", ["--ctx", "--quality-ctx"])
def test_bench_context_sizes_below_256_are_refused(option):
    one_line_error(edgellm("bench", option, "-5"), 2, option, "256 or more")


# --- sampling values and other arguments -------------------------------------------------------------

SAMPLING_BAD = [
    ("--temp", "nan"), ("--temp", "inf"), ("--temp", "-1"), ("--temp", "5.5"),
    ("--top-p", "2"), ("--top-p", "0"), ("--top-p", "nan"),
    ("--min-p", "nan"), ("--min-p", "-0.1"), ("--min-p", "1.5"),
    ("--repeat-penalty", "0"), ("--repeat-penalty", "-1"), ("--repeat-penalty", "inf"), ("--repeat-penalty", "11"),
    ("--top-k", "-3"), ("--top-k", "1.5"),
]


@pytest.mark.parametrize("option,value", SAMPLING_BAD)
def test_run_refuses_impossible_sampling_values(option, value):
    one_line_error(edgellm("run", "-p", "hi", option, value), 2, option, value)


def test_sampling_edges_are_accepted():
    r = edgellm("run", str(smollm2_gguf()), "-p", "Hi", "-n", "2", "-t", "1", "--temp", "5", "--top-p", "1",
                "--min-p", "0", "--repeat-penalty", "10", "--top-k", "0", "--seed", "1")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-0.5", "6"])
def test_chat_refuses_a_temperature_outside_0_to_5(value):
    # Refused while the options are read: the terminal UI never starts.
    one_line_error(edgellm("chat", "--temperature", value), 2, "--temperature", "from 0 to 5")


def test_options_accept_only_finite_numbers():
    from edgellm.commands.options import MIN_P, REPEAT_PENALTY, TEMPERATURE, TOP_P

    for kind, good, bad in [
        (TEMPERATURE, [0, 0.7, 5], [math.nan, math.inf, -0.01, 5.01]),
        (TOP_P, [1e-6, 0.95, 1], [0, math.nan, 1.01]),
        (MIN_P, [0, 0.05, 1], [-0.01, math.nan, 1.01]),
        (REPEAT_PENALTY, [0.5, 1, 10], [0, -1, math.inf, math.nan, 10.5]),
    ]:
        assert all(kind.allows(v) for v in good), kind.describe()
        assert not any(kind.allows(v) for v in bad), kind.describe()


@pytest.mark.parametrize("command", [["bench"], ["package", "no/such-repo", "-o", "out"]])
@pytest.mark.parametrize("levels", ["", " , "])
def test_empty_levels_are_a_usage_error_not_all_levels(command, levels, tmp_path):
    r = edgellm(*command, "--levels", levels, cwd=tmp_path)
    one_line_error(r, 2, "levels")
    assert not (tmp_path / "out").exists()


def test_plan_refuses_a_minimum_context_above_the_context():
    one_line_error(edgellm("plan", "--ctx", "512", "--min-ctx", "4096"), 2, "--min-ctx 4096", "--ctx 512")


def test_plan_takes_a_context_below_the_default_minimum():
    r = edgellm("plan", "--ctx", "512", "--json")
    assert r.returncode == 0, r.stderr
    assert '"n_ctx": 512' in r.stdout


# --- run's standard streams --------------------------------------------------------------------------


def test_run_with_stdin_closed_says_there_is_no_prompt():
    # As under cron: file descriptor 0 is not open at all.
    r = edgellm("run", stdin=None, preexec_fn=lambda: os.close(0))
    one_line_error(r, 2, "no prompt", "stdin is closed")


def test_run_with_stdout_closed_refuses_before_loading():
    r = edgellm("run", "-p", "hi", preexec_fn=lambda: os.close(1))
    assert r.returncode == 2 and "stdout is closed" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("how", ["stdin", "stdin decoded strictly", "argument"])
def test_a_prompt_that_is_not_utf8_is_refused(how):
    bad = b"caf\xe9 au lait"  # Latin-1, not UTF-8
    if how.startswith("stdin"):
        env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"} if how.endswith("strictly") else None
        r = subprocess.run([EDGELLM, "run"], input=bad, capture_output=True, timeout=600, env=env)
    else:
        r = subprocess.run([EDGELLM.encode(), b"run", b"-p", bad], capture_output=True, timeout=600)
    r = subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())
    one_line_error(r, 2, "not UTF-8")


# --- impossible GGUF hyper-parameters (the rules themselves: test_gguf_checks.py) -----------------------


@pytest.fixture(scope="module")
def no_layers(tmp_path_factory) -> Path:
    """SmolLM2 with block_count 0: llama.cpp aborts the whole process on it."""
    from gguf_edit import copy_gguf

    return copy_gguf(smollm2_gguf(), tmp_path_factory.mktemp("bad") / "no-layers.gguf", {"llama.block_count": 0}, data=False)


@pytest.mark.parametrize("command", [["run", "-p", "hi"], ["plan"], ["bench", "-p", "8", "-n", "2", "-r", "1"],
                                     ["bench", "-p", "8", "-n", "2", "-r", "1", "--json"],
                                     ["quantize", "--levels", "Q8_0", "--allow-requantize"]])
def test_commands_refuse_a_gguf_with_impossible_values(command, no_layers):
    r = edgellm(*command[:1], str(no_layers), *command[1:])
    one_line_error(r, 1, str(no_layers), "llama.block_count = 0", "impossible")
    assert r.stdout == ""


def test_inspect_still_shows_such_a_file(no_layers):
    r = edgellm("inspect", str(no_layers))
    assert r.returncode == 0 and "llama.block_count" in r.stdout, r.stderr


def test_list_shows_the_entry_as_broken_and_the_others(no_layers):
    for name, gguf in [("broken", no_layers), ("good", smollm2_gguf())]:
        (store_dir() / name).mkdir(parents=True)
        (store_dir() / name / gguf.name).symlink_to(gguf)
    r = edgellm("list", "--json")
    assert r.returncode == 0, r.stderr
    entries = {e["name"]: e for e in json.loads(r.stdout)["packages"]}
    assert "llama.block_count = 0" in entries["broken"]["error"]
    assert entries["good"]["error"] is None and entries["good"]["levels"]


# --- manifest file names -----------------------------------------------------------------------------


def _package_listing(folder: Path, name: str, target: Path) -> Path:
    """A package folder whose manifest lists `name`, with the size and sha256 of `target` (a real file)."""
    from edgellm.formats.gguf_info import read_gguf
    from edgellm.store.manifest import FileEntry, Manifest, ModelFacts, sha256_file

    folder.mkdir()
    info = read_gguf(smollm2_gguf())
    entry = FileEntry(file=name, level="Q4_1", bytes=target.stat().st_size, bits_per_weight=5.0,
                      sha256=sha256_file(target), layer_bytes=[], non_layer_bytes=0)
    Manifest(ModelFacts.from_gguf(info), {"file": name, "level": "Q4_1", "sha256": entry.sha256}, [entry]).save(folder)
    return folder


@pytest.mark.parametrize("name", ["../outside.bin", "{outside}", "sub/inside.bin", ".hidden.bin", "..", ".", "",
                                  "C:outside.bin", "back\\slash.bin"])
def test_verify_refuses_manifest_entries_that_leave_the_package(name, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"a file next to the package, not in it")
    name = name.format(outside=outside)  # an absolute path
    pkg = _package_listing(tmp_path / "pkg", name, outside)
    r = edgellm("verify", str(pkg))
    one_line_error(r, 1, "manifest.json", "not a plain file name", repr(name))
    assert "match" not in r.stdout


def test_a_package_whose_manifest_leaves_it_is_refused_by_run_too(tmp_path):
    pkg = _package_listing(tmp_path / "pkg", "../SmolLM2-Q4_1.gguf", smollm2_gguf())
    (pkg / "SmolLM2-Q4_1.gguf").symlink_to(smollm2_gguf())
    one_line_error(edgellm("run", str(pkg), "-p", "hi"), 1, "not a plain file name")


@pytest.mark.parametrize("data", [[], None, "manifest", {"schema": "edgellm.package", "version": 1, "model": {},
                                                          "base": {}, "files": ["x"]}])
def test_manifests_of_the_wrong_shape_are_one_line(data, tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    one_line_error(edgellm("verify", str(tmp_path)), 1, "malformed manifest")


# --- rm of a folder linked into the store ------------------------------------------------------------


def test_rm_of_a_linked_folder_removes_the_link_and_leaves_the_folder(tmp_path):
    mine = tmp_path / "my-models" / "SmolLM2"
    mine.mkdir(parents=True)
    (mine / "SmolLM2-Q4_1.gguf").symlink_to(smollm2_gguf())
    (mine / "notes.txt").write_text("kept")
    store_dir().mkdir(parents=True)
    (store_dir() / "linked").symlink_to(mine, target_is_directory=True)
    assert "linked" in edgellm("list").stdout

    r = edgellm("rm", "linked")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.strip() == f"removed linked, a link to {mine}: that folder and its files were left as they are"
    assert not (store_dir() / "linked").exists() and not (store_dir() / "linked").is_symlink()
    assert sorted(p.name for p in mine.iterdir()) == ["SmolLM2-Q4_1.gguf", "notes.txt"]
    assert (mine / "notes.txt").read_text() == "kept"


# --- a chat template that never ends -----------------------------------------------------------------


def test_run_stops_a_chat_template_that_would_loop_for_ever(tmp_path):
    from gguf_edit import copy_gguf

    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    model = copy_gguf(smollm2_gguf(), tmp_path / "endless-template.gguf", {"tokenizer.chat_template": endless})
    r = edgellm("run", str(model), "-p", "hi", "-t", "1")
    one_line_error(r, 1, "chat template exceeded its budget")
    assert r.stdout == ""


# --- click's own argument checks ------------------------------------------------------------------------


@pytest.mark.parametrize("args, text", [
    (["run", "-n", "0", "-p", "hi"], "'-n' / '--max-tokens'"),
    (["run", "--bogus"], "No such option '--bogus'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["serve", "--port", "70000"], "'--port'"),
])
def test_argument_errors_are_one_line_with_where_to_read_more(args, text):
    line = one_line_error(edgellm(*args), 2, text)
    assert line.endswith("--help')")


def test_plain_edgellm_prints_the_help():
    r = edgellm()
    assert r.returncode == 2 and "Commands:" in r.stdout + r.stderr and "Traceback" not in r.stderr
