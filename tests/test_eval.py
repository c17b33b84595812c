"""`edgellm eval` against llama-perplexity on the real SmolLM2 GGUF: the same tasks, right or wrong alike, the
same running accuracy line by line (and WinoGrande's printed scores), so the same accuracy to the last digit."""

from __future__ import annotations

import json
import re
import signal
import subprocess

import eval_data
import numpy as np
import fixtures
import pytest
from conftest import run_cli
from pausing import finish, start_paused

from edgellm.store.manifest import Manifest

from edgellm.eval import tasks as T
from edgellm.eval import score
from edgellm.eval.score import ChoiceScorer, Scored, sum_error_margin, token_logprobs

THREADS = 2


@pytest.fixture(scope="module")
def perplexity_bin():
    tools = fixtures.llamacpp_tools()
    if tools is None:
        pytest.skip("cmake and ninja are needed to build llama-perplexity")
    return tools / "build" / "bin" / "llama-perplexity"


def llama_perplexity(binary, gguf, mode: str, path, n: int | None = None) -> str:
    args = [str(binary), "-m", str(gguf), "-f", str(path), f"--{mode}", "-t", str(THREADS)]
    if n is not None:
        args += [f"--{mode}-tasks", str(n)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout + done.stderr


def running(kind: T.Kind, results: list[Scored]) -> list[str]:
    """The running accuracy after each task, printed as llama-perplexity prints it."""
    out, right = [], 0
    for i, r in enumerate(results, 1):
        right += r.correct
        out.append(f"{100.0 * right / i:.{kind.digits}f}")
    return out


def ours(kind: T.Kind, path, n: int | None = None) -> list[Scored]:
    f = T.load(kind, path, n)
    with ChoiceScorer(fixtures.smollm2_gguf(), n_parallel=max(len(t.choices) for t in f.tasks),
                      n_threads=THREADS) as scorer:
        results = list(scorer.score(kind, f.tasks))
    assert all(isinstance(r, Scored) for r in results)
    return results


@pytest.mark.parametrize("n", [None, 7])
def test_hellaswag_matches_llama_perplexity(tmp_path, perplexity_bin, n):
    path = eval_data.write_hellaswag(tmp_path / "hellaswag.txt")
    theirs = re.findall(r"^\d+\t(\d+\.\d+)%\t\[", llama_perplexity(perplexity_bin, fixtures.smollm2_gguf(),
                                                                   "hellaswag", path, n), re.M)
    mine = running(T.HELLASWAG, ours(T.HELLASWAG, path, n))
    assert len(mine) == (n or len(eval_data.HELLASWAG))
    assert mine == theirs
    assert mine[-1] not in ("0.00000000", "100.00000000")  # some right, some wrong: a test that can fail


@pytest.mark.parametrize("n", [None, 9])
def test_winogrande_matches_llama_perplexity(tmp_path, perplexity_bin, n):
    path = eval_data.write_winogrande(tmp_path / "winogrande.csv")
    out = llama_perplexity(perplexity_bin, fixtures.smollm2_gguf(), "winogrande", path, n)
    theirs = re.findall(r"^\d+\t(\d+\.\d{4})\t\s*(-?\d+\.\d+)\s+(-?\d+\.\d+)\s+(\d)\s+(\d)$", out, re.M)
    results = ours(T.WINOGRANDE, path, n)
    gold = {t.number: min(t.gold) + 1 for t in T.load(T.WINOGRANDE, path).tasks}
    # the 29 tasks llama-perplexity reads: it leaves out the file's last line (see tasks.read_winogrande)
    assert len(results) == (n or len(eval_data.WINOGRANDE) - 1)
    mine = [(acc, str(r.chosen + 1), str(gold[r.number])) for acc, r in zip(running(T.WINOGRANDE, results), results)]
    assert mine == [(acc, chosen, answer) for acc, _, _, chosen, answer in theirs]
    # scores come from a pairwise sum (within its bound of llama-perplexity's sequential one); summed its way,
    # the scores it prints (6 decimals) agree to the last digit but for rounding (expf/logf may differ by an ulp)
    margin = sum_error_margin(49152) / 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(score, "sum_error_margin", lambda n_vocab: float("inf"))  # every task scored sequentially
        sequential = ours(T.WINOGRANDE, path, n)
    for r, s, (_, one, two, _, _) in zip(results, sequential, theirs):
        assert r.scores == pytest.approx((float(one), float(two)), abs=margin)
        assert s.scores == pytest.approx((float(one), float(two)), abs=1.5e-6)
        assert s.chosen == r.chosen


def test_fast_log_probabilities_stay_within_the_bound_that_decides_when_to_rescore(tmp_path):
    """The pairwise sum against the sequential one on real logits: never further apart than the margin says
    (a task closer than that is scored again sequentially, so no decision can differ)."""
    f = T.load(T.HELLASWAG, eval_data.write_hellaswag(tmp_path / "hs.txt"))
    with ChoiceScorer(fixtures.smollm2_gguf(), n_threads=THREADS) as scorer:
        p = scorer.prepare(T.HELLASWAG, f.tasks[0])
        scorer.batch.clear()
        scorer.batch.add(p.seqs[0], 0, range(0, 1), True)
        scorer.batch.n_outputs = len(p.seqs[0])
        logits = scorer._decode().copy()
    rows = np.arange(len(logits))
    targets = np.resize(np.asarray(p.seqs[0]), len(logits))
    exact, fast = token_logprobs(logits, rows, targets), token_logprobs(logits, rows, targets, exact=False)
    assert np.all(np.isfinite(exact)) and exact.max() < 0
    gap = np.abs(exact - fast).max()
    assert 0 < gap < sum_error_margin(scorer.n_vocab) / 2  # the sums differ (else nothing was tested), within bound


def test_multiple_choice_matches_llama_perplexity(tmp_path, perplexity_bin):
    path = eval_data.hellaswag_as_multiple_choice(tmp_path / "mc.bin")
    out = llama_perplexity(perplexity_bin, fixtures.smollm2_gguf(), "multiple-choice", path)
    theirs = re.findall(r"^\d+\t(\d+\.\d{8})$", out, re.M)
    assert running(T.MULTIPLE_CHOICE, ours(T.MULTIPLE_CHOICE, path)) == theirs


def test_cli_reports_and_json(tmp_path, capsys):
    hs = eval_data.write_hellaswag(tmp_path / "hs.txt")
    code, out, err = run_cli(capsys, "eval", str(fixtures.smollm2_gguf()), "--hellaswag", str(hs), "--limit", "6",
                             "--json", "--threads", str(THREADS))
    assert code == 0, err
    report = json.loads(out)
    (row,) = report["results"]
    assert row["task"] == "hellaswag" and row["tasks"] == 6 and row["complete"]
    assert report["task_sets"][0]["sha256"] == T.load(T.HELLASWAG, hs).sha256
    assert "6/6" in err  # the progress bar on stderr


def test_cli_bad_task_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("ctx\nx\na\nb\nc\nd\n")
    code, out, err = run_cli(capsys, "eval", "--hellaswag", str(bad))
    assert code == 2 and out == ""
    assert err.strip() == f"edgellm: {bad}: task 1 (line 2): the gold ending is 'x', not 0, 1, 2 or 3"


def test_package_levels_paired_and_saved(tmp_path, capsys):
    pkg = fixtures.linked_smollm2_package(tmp_path)
    hs = eval_data.write_hellaswag(tmp_path / "hs.txt")
    code, out, err = run_cli(capsys, "eval", str(pkg), "--hellaswag", str(hs), "--limit", "5", "--save",
                             "--threads", str(THREADS), "--md", str(tmp_path / "eval.md"))
    assert code == 0, err
    levels = [f.level for f in Manifest.load(pkg).files]
    md = (tmp_path / "eval.md").read_text()
    assert "| level | size | bpw | acc % | ± se | vs reference | verdict | tasks |" in md
    for level in levels:
        assert f"| {level} |" in md
    saved = {f.level: f.accuracy["hellaswag"] for f in Manifest.load(pkg).files}
    assert set(saved) == set(levels)
    reference = max(Manifest.load(pkg).files, key=lambda f: f.bits_per_weight).level
    for level, rec in saved.items():
        assert rec["file"] == "hs.txt" and rec["sha256"] == T.load(T.HELLASWAG, hs).sha256 and rec["tasks"] == 5
        assert (rec["paired"] is None) == (level == reference)
        if rec["paired"]:
            assert rec["paired"]["reference"] == reference and rec["paired"]["tasks"] == 5
    card = (pkg / "README.md").read_text()
    assert "Accuracy on hellaswag tasks, `hs.txt`" in card and f"| {reference} | 5 |" in card


def test_ctrl_c_prints_what_was_scored(tmp_path):
    hs = eval_data.write_hellaswag(tmp_path / "hs.txt")
    proc = start_paused("eval.tasks:3", "eval", fixtures.smollm2_gguf(), "--hellaswag", hs, "--limit", "10",
                        "--threads", THREADS)
    done = finish(proc, signal.SIGINT)
    assert done.returncode == 130
    assert "3 of 10 (stopped)" in done.stdout
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr
