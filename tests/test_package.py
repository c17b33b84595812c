"""`edgellm package` end to end on the real SmolLM2 checkpoint through llama.cpp, and `edgellm verify`."""

from __future__ import annotations

import errno
import json
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import fixtures
import llama_cpp
import pausing
import pytest
from gguf import GGUFReader

from conftest import run_cli as run
from edgellm.cli import main
from edgellm.store.manifest import Manifest
from edgellm.quantize.levels import estimate_bytes, parse_levels

LEVELS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K"]
CTX = "128"


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("texts")
    (d / "calib.txt").write_text(fixtures.english_text("calib", 3000))
    (d / "eval.txt").write_text(fixtures.english_text("eval", 2500))
    return d


@pytest.fixture(scope="module")
def package(tmp_path_factory, texts):
    """Six levels with quality numbers, made once from the HF checkpoint by the CLI."""
    out = tmp_path_factory.mktemp("pkg") / "smollm2"
    rc = main(["package", str(fixtures.smollm2_checkpoint()), "-o", str(out), "--levels", ",".join(LEVELS),
               "--base", "f16", "--eval", str(texts / "eval.txt"), "--ctx", CTX, "--name", "SmolLM2", "--json"])
    assert rc == 0
    return out


def test_package_layout_and_manifest(package):
    names = sorted(p.name for p in package.iterdir())
    assert names == sorted(["manifest.json", "README.md", "SmolLM2-F16.gguf"] + [f"SmolLM2-{lv}.gguf" for lv in LEVELS])
    m = Manifest.load(package)
    assert [f.level for f in m.files] == ["F16", *LEVELS]  # most to fewest bits
    assert m.base == {"file": "SmolLM2-F16.gguf", "level": "F16", "sha256": m.files[0].sha256}
    assert m.model.name == "SmolLM2" and m.model.arch == "llama" and m.model.chat_template
    assert m.eval.text == "eval.txt" and m.eval.n_ctx == 128 and m.eval.chunks >= 3
    for f in m.files:
        assert f.command.startswith("edgellm package ") and "--levels Q8_0,Q6_K" in f.command


def test_each_level_loads_and_generates(package):
    for f in Manifest.load(package).files:
        llm = llama_cpp.Llama(str(package / f.file), n_ctx=128, n_threads=1, verbose=False)
        try:
            out = llm("The capital of France is", max_tokens=6, temperature=0.0)["choices"][0]["text"]
        finally:
            llm.close()
        assert out.strip(), f.level


def test_quality_falls_with_fewer_bits(package):
    m = Manifest.load(package)
    ppl = {f.level: f.ppl for f in m.files}
    kld = {f.level: f.kld for f in m.files}
    assert kld["F16"] == 0.0
    assert ppl["Q8_0"] == pytest.approx(ppl["F16"], rel=0.01)  # Q8_0 within 1% of the base
    assert ppl["Q2_K"] > 1.05 * ppl["F16"]  # Q2_K clearly worse
    order = ["F16", *LEVELS]
    for hi, lo in zip(order, order[1:]):  # roughly monotonic: a level never beats the one above by > 2%
        assert ppl[lo] >= 0.98 * ppl[hi], (hi, lo, ppl)

    def inversions(score):
        return sum(score[a] > score[b] for i, a in enumerate(order) for b in order[i + 1 :])

    # SmolLM2's 576-wide rows push some tensors of the K-quant mixes to legacy types, so neighbours may
    # swap (here Q5_K_M's KLD lands above Q4_K_M's); the trend must hold otherwise.
    assert inversions(kld) <= 1 and inversions(ppl) <= 1, (ppl, kld)
    assert kld["Q2_K"] > 5 * kld["Q6_K"] > 5 * kld["Q8_0"]


def test_model_card(package):
    card = (package / "README.md").read_text()
    m = Manifest.load(package)
    for f in m.files:
        assert f"`{f.file}`" in card and f"edgellm run {f.file} -p 'Hello'" in card
        assert f"{f.ppl:.3f}" in card
    assert "edgellm verify ." in card


def test_rerun_skips_unchanged_files(package, texts, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in package.glob("*.gguf")}
    rc, out, err = run(capsys, "package", str(fixtures.smollm2_checkpoint()), "-o", str(package), "--levels",
                       "Q8_0,Q2_K", "--base", "f16", "--eval", str(texts / "eval.txt"), "--ctx", CTX, "--name",
                       "SmolLM2", "--json")
    assert rc == 0, err
    assert {p.name: p.stat().st_mtime_ns for p in package.glob("*.gguf")} == before  # nothing rewritten
    m = json.loads(out)
    assert len(m["files"]) == 1 + len(LEVELS)  # levels not asked for this time stay listed
    assert "converting" not in err and "evaluating" not in err


def test_verify_ok_and_flipped_byte(package, tmp_path, capsys):
    rc, out, _ = run(capsys, "verify", str(package), "--json")
    assert rc == 0 and json.loads(out)["ok"] is True
    # A copy of the package with one byte flipped in the middle of a file.
    copy = tmp_path / "copy"
    copy.mkdir()
    m = Manifest.load(package)
    shutil.copy(package / "manifest.json", copy)
    victim = m.files[-1].file
    for f in m.files:
        (copy / f.file).symlink_to(package / f.file) if f.file != victim else shutil.copy(package / f.file, copy)
    with open(copy / victim, "r+b") as fh:
        fh.seek(m.files[-1].bytes // 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    rc, out, err = run(capsys, "verify", str(copy))
    assert rc == 1
    assert f"{victim}: sha256 does not match the manifest" in err
    assert "edgellm: 1 of 7 file(s)" in err


def test_imatrix_lowers_kld_on_other_text(tmp_path_factory, texts, package, capsys):
    """Same base, Q4_K_M and below with an importance matrix from calib.txt, scored on eval.txt."""
    out = tmp_path_factory.mktemp("pkg-imatrix") / "smollm2"
    base = package / "SmolLM2-F16.gguf"
    rc, _, err = run(capsys, "package", str(base), "-o", str(out), "--levels", "Q4_K_M,Q3_K_M,Q2_K",
                     "--imatrix", str(texts / "calib.txt"), "--eval", str(texts / "eval.txt"), "--ctx", CTX)
    assert rc == 0, err
    with_im = {f.level: f for f in Manifest.load(out).files}
    without = {f.level: f for f in Manifest.load(package).files}
    assert (out / "imatrix.gguf").is_file()
    for lv in ("Q4_K_M", "Q3_K_M", "Q2_K"):
        assert with_im[lv].imatrix and not without[lv].imatrix
        assert with_im[lv].kld < 0.9 * without[lv].kld, (lv, with_im[lv].kld, without[lv].kld)
    # llama-quantize reading our imatrix.gguf writes the same tensors as our in-process quantizing.
    tools = fixtures.llamacpp_tools()
    if tools is None:
        pytest.skip("llama.cpp's tools cannot be built here: cmake and ninja are needed")
    ref = out.parent / "ref-Q4_K_M.gguf"
    subprocess.run([str(tools / "build/bin/llama-quantize"), "--imatrix", str(out / "imatrix.gguf"), str(base),
                    str(ref), "Q4_K_M"], check=True, capture_output=True, timeout=300)

    def tensors(path):
        return {t.name: (t.tensor_type, t.data.tobytes()) for t in GGUFReader(path).tensors}

    assert tensors(out / with_im["Q4_K_M"].file) == tensors(ref)


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--levels", "Q4_K_M,Q5_K_X"], 2, "unknown quantization level 'Q5_K_X'"),
        (["--levels", "IQ2_XS"], 2, "IQ2_XS need an importance matrix"),
        (["--imatrix", "/nonexistent/calib.txt"], 2, "calibration text not found"),
    ],
)
def test_bad_arguments(tmp_path, capsys, extra, code, message):
    out = tmp_path / "pkg"
    rc, _, err = run(capsys, "package", str(fixtures.smollm2_checkpoint()), "-o", str(out), *extra)
    assert rc == code and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_not_a_checkpoint_or_gguf(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    rc, _, err = run(capsys, "package", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "pkg"))
    assert rc == 1 and "edgellm: not a GGUF file" in err
    rc, _, err = run(capsys, "package", str(tmp_path), "-o", str(tmp_path / "pkg"))
    assert rc == 2 and "neither a GGUF file nor a Hugging Face checkpoint folder" in err


def test_quantized_base_refused(tmp_path, capsys):
    rc, _, err = run(capsys, "package", str(fixtures.smollm2_gguf()), "-o", str(tmp_path / "pkg"), "--levels", "Q4_0")
    assert rc == 2 and "already quantized (Q4_1)" in err
    assert not any((tmp_path / "pkg").glob("*.gguf"))


def test_calibration_text_too_short(tmp_path, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("Far too short to calibrate anything.")
    out = tmp_path / "pkg"
    rc, _, err = run(capsys, "package", str(fixtures.smollm2_f16_gguf()), "-o", str(out), "--levels", "Q4_K_M",
                     "--imatrix", str(calib), "--ctx", CTX)
    assert rc == 2 and "calibration text too short" in err and "needs at least 128" in err
    assert not any(out.glob("*.gguf")) and not (out / "imatrix.gguf").exists()


def test_not_enough_disk_is_checked_before_starting(tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=50 << 20))
    out = tmp_path / "pkg"
    rc, _, err = run(capsys, "package", str(fixtures.smollm2_checkpoint()), "-o", str(out), "--levels", "Q8_0,Q4_K_M")
    assert rc == 3 and "not enough disk space" in err and "package (2 file(s) to make)" in err
    assert not any(out.iterdir())


def test_interrupted_run_leaves_only_complete_files_and_resumes(tmp_path, capsys):
    """Ctrl-C once the first level is recorded: exit 130, every .gguf left is complete and listed; a re-run resumes."""
    out = tmp_path / "pkg"
    base = fixtures.smollm2_f16_gguf()
    levels = "Q8_0,Q6_K,Q4_K_M"
    proc = pausing.start_paused("package.level:1", "package", base, "-o", out, "--levels", levels, "--jobs", "1")
    done = pausing.finish(proc, signal.SIGINT)
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().endswith("edgellm: interrupted") and "Traceback" not in done.stderr
    listed = {f.file for f in Manifest.load(out).files}
    assert len(listed) == 1
    assert {p.name for p in out.glob("*.gguf")} == listed  # nothing under a final name that is not complete
    assert pausing.hidden_files(out) == []  # no temp files, no lock left
    assert Manifest.load(out).verify(out) == []

    rc, js, err = run(capsys, "package", str(base), "-o", str(out), "--levels", levels, "--json")
    assert rc == 0, err
    assert len(json.loads(js)["files"]) == 3 and err.count("unchanged, skipped") == 1


def test_second_run_into_the_same_folder_is_refused_and_the_first_finishes(tmp_path):
    """A second `package` into a folder another run is writing says so and stops, touching nothing."""
    out = tmp_path / "pkg"
    args = ["package", fixtures.smollm2_checkpoint(), "-o", out, "--levels", "Q8_0", "--jobs", "1", "--name", "SmolLM2"]
    first = pausing.start_paused("convert.tensor:5", *args)  # converting the base: its temp file is there
    partials = sorted(out.glob(".*.partial"))
    assert partials
    second = pausing.edgellm(*args)
    assert second.returncode == 1
    assert second.stderr.strip() == f"edgellm: another edgellm package run is writing to {out} (pid {first.pid})"
    assert sorted(out.glob(".*.partial")) == partials
    done = pausing.finish(first)
    assert done.returncode == 0, done.stderr[-2000:]
    assert Manifest.load(out).verify(out) == [] and pausing.hidden_files(out) == []
    assert sorted(p.name for p in out.glob("*.gguf")) == ["SmolLM2-ALL_F32.gguf", "SmolLM2-Q8_0.gguf"]


def _no_room_above(limit: int):
    """For Popen's preexec_fn: files may not grow past `limit` bytes (the kernel's RLIMIT_FSIZE, as `ulimit -f`);
    a write past it fails with EFBIG instead of killing the process with SIGXFSZ."""

    def limit_child() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_child


def test_level_that_does_not_fit_is_named_and_the_rest_is_kept(tmp_path, capsys):
    """Q4_K_M (101 MiB) fits under a 120 MiB file size limit, Q8_0 (138 MiB) does not: the error names Q8_0,
    Q4_K_M stays recorded, and a re-run with room makes only Q8_0."""
    out = tmp_path / "pkg"
    args = ["package", fixtures.smollm2_f16_gguf(), "-o", out, "--levels", "Q4_K_M,Q8_0", "--jobs", "1",
            "--name", "SmolLM2"]
    done = pausing.edgellm(*args, preexec_fn=_no_room_above(120 << 20))
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"edgellm: file size limit reached while writing {out / 'SmolLM2-Q8_0.gguf'}")
    assert "Traceback" not in done.stderr
    assert [f.file for f in Manifest.load(out).files] == ["SmolLM2-Q4_K_M.gguf"]
    assert sorted(p.name for p in out.iterdir()) == ["SmolLM2-Q4_K_M.gguf", "manifest.json"]
    assert Manifest.load(out).verify(out) == []

    rc, js, err = run(capsys, *map(str, args), "--json")
    assert rc == 0, err
    assert [f["level"] for f in json.loads(js)["files"]] == ["Q8_0", "Q4_K_M"] and "unchanged, skipped" in err


def test_disk_full_when_recording_a_level(tmp_path, capsys, monkeypatch):
    """The manifest cannot be rewritten after Q8_0 is made (ENOSPC): the error names Q8_0, which is removed
    rather than left unlisted; the base and Q4_K_M stay recorded. The re-run needs room only for Q8_0."""
    out = tmp_path / "pkg"
    args = ["package", str(fixtures.smollm2_checkpoint()), "-o", str(out), "--levels", "Q4_K_M,Q8_0", "--jobs", "1",
            "--name", "SmolLM2"]
    real_write_text = Path.write_text

    def write_text(path, data, *a, **kw):
        if path.name.startswith(".manifest.json.") and "SmolLM2-Q8_0.gguf" in data:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_text(path, data, *a, **kw)

    monkeypatch.setattr(Path, "write_text", write_text)
    rc, _, err = run(capsys, *args)
    assert rc == 3
    assert err.strip().splitlines()[-1] == (
        f"edgellm: disk full while writing {out / 'manifest.json'}: SmolLM2-Q8_0.gguf was made but could not be "
        "recorded, so it was removed; free some space and run again")
    m = Manifest.load(out)
    assert [f.file for f in m.files] == ["SmolLM2-ALL_F32.gguf", "SmolLM2-Q4_K_M.gguf"]
    assert sorted(p.name for p in out.iterdir()) == ["SmolLM2-ALL_F32.gguf", "SmolLM2-Q4_K_M.gguf", "manifest.json"]
    assert m.verify(out) == []

    monkeypatch.setattr(Path, "write_text", real_write_text)
    q8_0 = estimate_bytes(m.model.n_params, parse_levels("Q8_0")[0])
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=q8_0 + (1 << 20)))
    rc, _, err = run(capsys, *args)
    assert rc == 0, err
    assert [f.level for f in Manifest.load(out).files] == ["ALL_F32", "Q8_0", "Q4_K_M"]
    assert "converting" not in err and Manifest.load(out).verify(out) == []
