"""`edgellm bench` on real SmolLM2 levels through llama.cpp (small -p/-n/-r to stay quick)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from edgellm import cli
from edgellm.bench.run import BenchReport, pareto
from edgellm.bench.plot import panels
from fixtures import smollm2_package

REPORT_KEYS = {"schema", "version", "model", "config", "method", "machine", "results", "base_level", "created",
               "edgellm_version"}
RESULT_KEYS = {"file", "level", "size_bytes", "bits_per_weight", "error", "pp", "tg", "ttft_s", "load_s",
               "peak_rss_bytes", "n_threads", "n_ctx", "n_layers", "n_gpu_layers", "ppl", "ppl_stderr", "kld",
               "kld_p99", "delta_p", "same_top", "lora", "devices", "speculation"}
QUICK = ["-p", "32", "-n", "8", "-r", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One full bench of three levels with every output format."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", str(smollm2_package()), "--levels", "F16,Q8_0,Q2_K", *QUICK, "--quality",
            "-o", str(out / "r.json"), "--csv", str(out / "r.csv"), "--md", str(out / "r.md"), "--plot", str(out / "r.png")]
    assert cli.main(args) == 0
    return out


def test_speed_numbers_are_positive_with_spread(run):
    data = json.loads((run / "r.json").read_text())
    assert set(data) == REPORT_KEYS and data["schema"] == "edgellm.bench" and data["version"] == 1
    assert [r["level"] for r in data["results"]] == ["F16", "Q8_0", "Q2_K"]
    for r in data["results"]:
        assert set(r) == RESULT_KEYS
        assert r["error"] is None
        for key in ("pp", "tg"):
            m = r[key]
            assert len(m["samples"]) == 2 and all(math.isfinite(x) and x > 0 for x in m["samples"])
            assert m["std"] >= 0 and math.isclose(m["mean"], sum(m["samples"]) / 2)
        assert math.isfinite(r["ttft_s"]) and r["ttft_s"] > 0 and r["load_s"] > 0
        assert r["peak_rss_bytes"] > r["size_bytes"] // 4  # the weights were really read
        assert r["n_ctx"] >= 32 and r["n_layers"] == 30
    assert "random tokens" in data["method"] and "warm-up" in data["method"]


def test_quality_against_the_base(run):
    data = json.loads((run / "r.json").read_text())
    assert data["base_level"] == "F16"
    by = {r["level"]: r for r in data["results"]}
    assert abs(by["F16"]["kld"]) < 1e-5 and by["F16"]["same_top"] == 1.0
    assert 0 < by["Q8_0"]["kld"] < by["Q2_K"]["kld"]
    assert by["Q2_K"]["ppl"] > by["Q8_0"]["ppl"] > 1
    assert math.isclose(by["F16"]["ppl"], by["Q8_0"]["ppl"], rel_tol=0.02)


def test_table_formats_and_plot(run):
    rows = (run / "r.csv").read_text().splitlines()
    assert rows[0].startswith("file,level,size_bytes") and len(rows) == 4
    md = (run / "r.md").read_text()
    assert "| Q2_K |" in md and "random tokens" in md
    png = (run / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    report = BenchReport.from_dict(json.loads((run / "r.json").read_text()))
    shown = panels(report)
    assert [p.label for p in shown] == ["generation tokens/s", "KL divergence vs base"]
    for p in shown:
        assert p.levels == ["F16", "Q8_0", "Q2_K"] and len(p.points) == 3
    # Q2_K is the smallest file and F16 the best: both ends of the KLD front are on it.
    kld_front = [shown[1].levels[i] for i in shown[1].front]
    assert kld_front[0] == "Q2_K" and kld_front[-1] == "F16"


def test_pareto_front():
    pts = [(1.0, 10.0), (2.0, 5.0), (3.0, 20.0), (4.0, 20.0)]
    assert pareto(pts, higher_is_better=True) == [0, 2]
    assert pareto(pts, higher_is_better=False) == [0, 1]


def test_compare_two_runs(run, tmp_path, capsys):
    data = json.loads((run / "r.json").read_text())
    for r in data["results"]:
        r["tg"]["mean"] *= 2
    other = tmp_path / "b.json"
    other.write_text(json.dumps(data))
    assert cli.main(["bench", "compare", str(run / "r.json"), str(other), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["level"] for r in rows] == ["F16", "Q8_0", "Q2_K"]
    for r in rows:
        assert math.isclose(r["tg"]["ratio"], 2.0) and math.isclose(r["pp"]["ratio"], 1.0)
    assert cli.main(["bench", "compare", str(run / "r.json"), str(other)]) == 0
    assert "B/A" in capsys.readouterr().out


def test_save_into_manifest(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    for f in smollm2_package().iterdir():
        (os.link if f.suffix == ".gguf" else shutil.copy)(f, pkg / f.name)
    assert cli.main(["bench", str(pkg), "--levels", "Q8_0", "-p", "16", "-n", "4", "-r", "1", "--save"]) == 0
    entry = next(f for f in json.loads((pkg / "manifest.json").read_text())["files"] if f["level"] == "Q8_0")
    assert entry["bench"]["tg_tps"] > 0 and entry["bench"]["machine"]


def test_files_that_do_not_load_fail_alone(tmp_path, capsys):
    src = smollm2_package()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    os.link(src / "smollm2-hf-Q8_0.gguf", pkg / "smollm2-hf-Q8_0.gguf")
    # A readable header llama.cpp refuses to load: an architecture it does not know.
    data = (src / "smollm2-hf-Q2_K.gguf").read_bytes()
    arch = data.index(b"general.architecture") + len(b"general.architecture")
    assert data[arch : arch + 17] == b"\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00llama"
    (pkg / "smollm2-hf-Q2_K.gguf").write_bytes(data[: arch + 12] + b"llamb" + data[arch + 17 :])
    # A file cut short: not even its header reads.
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])

    assert cli.main(["bench", str(pkg), str(cut), *QUICK, "--json"]) == 1
    captured = capsys.readouterr()
    results = {r["file"]: r for r in json.loads(captured.out)["results"]}
    assert results["smollm2-hf-Q8_0.gguf"]["error"] is None and results["smollm2-hf-Q8_0.gguf"]["tg"]["mean"] > 0
    assert "llamb" in results["smollm2-hf-Q2_K.gguf"]["error"] and results["smollm2-hf-Q2_K.gguf"]["tg"] is None
    assert results[str(cut)]["error"]
    assert "smollm2-hf-Q2_K.gguf" in captured.err and "cut.gguf" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--levels", "Q5_K_M"], 2, "has no level Q5_K_M"),
        (["--levels", "Q8_0", "-r", "0"], 2, "--reps must be at least 1"),
    ],
)
def test_bad_arguments(extra, code, message, capsys):
    assert cli.main(["bench", str(smollm2_package()), *QUICK, *extra]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_quality_text_too_short(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a chunk.")
    assert cli.main(["bench", str(smollm2_package()), "--levels", "Q8_0", "-p", "8", "-n", "2", "-r", "1",
                     "--quality", str(short)]) == 2
    err = capsys.readouterr().err
    assert "too short" in err and "Traceback" not in err


def test_ngl_beyond_the_layers_means_all_of_them(capsys):
    # llama.cpp's users write --ngl 99 for "everything on the GPU"; without a GPU every layer stays in RAM
    assert cli.main(["bench", "-p", "16", "-n", "4", "-r", "1", "--ngl", "99", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["error"] is None and result["n_gpu_layers"] <= result["n_layers"] + 1
