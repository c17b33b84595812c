"""Speculative decoding against real llama.cpp: the output is the model's own (greedy: the same tokens; sampled: the
same tokens for a seed, and the same distribution), drafts are checked by vocabulary and planned beside the model,
and the pace turns speculation off where it does not pay.

Runs use one thread: llama.cpp's sums over several threads split a batch differently from single tokens, which
can swap two near-equal logits (speculation there is as exact as llama.cpp's own)."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import llama_cpp as L
import pytest

from conftest import run_cli
from edgellm.engine import draft as drafts
from edgellm.engine.launch import open_engine, plan_model
from edgellm.engine.measure import CODE_FILE
from edgellm.engine.runtime import Sampling
from edgellm.engine.speculate import NgramProposer, Pace, Speculation, expected_tokens
from fixtures import smollm2_converted_gguf, smollm2_gguf, smollm2_package, write_llama3_tiny_gguf

# a reply that mostly repeats its prompt: the repeat task's first two functions (a shorter reply)
CODE = CODE_FILE.split("\n\n\ndef is_prime")[0] + "\n"
REPEAT = [{"role": "user", "content": "Copy the following code, replacing `result` with `product`:\n\n```python\n" + CODE + "```"}]
CHAT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
GREEDY = Sampling(temperature=0, repeat_penalty=1.0, max_tokens=120)


@pytest.fixture(scope="module")
def smol():
    with open_engine(smollm2_gguf(), ctx=2048, threads=1) as engine:
        yield engine


def reply(engine, messages, sampling, spec):
    engine.use_speculation(spec)
    engine.reset()
    text = "".join(engine.stream_chat(messages, sampling))
    return text, engine.last_stats


# --- pure parts ----------------------------------------------------------------------------------------------


def test_ngram_proposer_continues_the_latest_earlier_occurrence():
    p = NgramProposer([1, 2, 3, 4, 5, 9, 1, 2, 3, 7, 8])
    assert p.propose(4) == []  # ...7 8: never seen before
    p.extend([1, 2, 3])
    assert p.propose(3) == [7, 8, 1]  # the most recent 1 2 3 was followed by 7 8
    p.extend([7])
    assert p.propose(2) == [8, 1]
    assert NgramProposer([5]).propose(3) == []
    two = NgramProposer([1, 2, 9, 1, 2])  # only a 2-token match: a probe does not trust it
    assert two.propose(2) == [9, 1] and two.propose(2, tentative=True) == []
    assert NgramProposer([1, 2, 3, 4, 9, 1, 2, 3, 4]).propose(1, tentative=True) == [9]


def test_expected_tokens():
    assert expected_tokens(1.0, 4) == 5
    assert expected_tokens(0.0, 4) == 1
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-9


def test_pace_stops_guessing_where_it_does_not_pay_and_probes_rarely():
    pace = Pace(1, 16)
    assert pace.length() == 0  # a plain step first: its time is the yardstick
    pace.plain_step(0.010)
    guesses = 0
    for _ in range(2000):
        k = pace.length()
        if k:
            guesses += 1
            pace.speculative_step(k, 0, 0.010 * (1 + k))  # nothing kept, each guess as dear as a token
        else:
            pace.plain_step(0.010)
    assert guesses < 12  # probes only, ever rarer: under 1% of the steps


def test_pace_guesses_long_where_guesses_come_true_and_checking_is_cheap():
    pace = Pace(1, 16)
    pace.plain_step(0.010)
    for _ in range(20):
        k = pace.length()
        assert k
        pace.speculative_step(k, k, 0.010 * (1 + 0.1 * k))
    assert pace.length() == 16 and pace.acceptance > 0.95


# --- the model's own output ---------------------------------------------------------------------------------


def test_ngram_speculation_gives_the_same_greedy_text(smol):
    plain, _ = reply(smol, REPEAT, GREEDY, None)
    for spec in (Speculation(draft_max=4, adaptive=False), Speculation(draft_max=16, adaptive=False), Speculation()):
        text, stats = reply(smol, REPEAT, GREEDY, spec)
        assert text == plain
        if not spec.adaptive:
            assert stats.spec_steps > 5 and stats.accepted > 10 and stats.draft == "n-gram"
            assert stats.tokens_per_step > 1.5
        # the cache holds exactly the tokens the engine says it holds: rejected guesses are gone
        mem = L.llama_get_memory(smol.context)
        assert L.llama_memory_seq_pos_max(mem, 0) == len(smol._kv) - 1


def test_sampled_speculation_gives_the_same_tokens_for_a_seed(smol):
    s = Sampling(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=7, max_tokens=80)
    plain, _ = reply(smol, REPEAT, s, None)
    text, stats = reply(smol, REPEAT, s, Speculation(draft_max=6, adaptive=False))
    assert stats.spec_steps > 3
    assert text == plain  # one draw per token sent out, from the same distribution: the same draws


def test_sampled_speculation_keeps_the_distribution(smol):
    """Chi-square over the first three tokens of many seeds, with and without speculation: guesses are checked
    against every position (the prompt repeats, so the n-gram proposer guesses from the first token on)."""
    prompt = "a b c d a b c d a b c d a b c d a b c"
    tokens = smol.tokenize(prompt)
    counts: dict[str, dict[tuple, int]] = {"plain": {}, "spec": {}}
    n = 300
    for label, spec in (("plain", None), ("spec", Speculation(draft_max=3, adaptive=False))):
        smol.use_speculation(spec)
        smol.reset()
        drafted = 0
        for seed in range(n):
            s = Sampling(temperature=1.5, top_k=4, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=1000 + seed, max_tokens=3)
            out = tuple(smol.tokenize("".join(smol.stream_tokens(tokens, s)), add_bos=False))
            drafted += smol.last_stats.drafted
            counts[label][out] = counts[label].get(out, 0) + 1
        if spec is not None:
            assert drafted > n  # guesses were checked in most replies
    keys = sorted(set(counts["plain"]) | set(counts["spec"]))
    common = [k for k in keys if counts["plain"].get(k, 0) + counts["spec"].get(k, 0) >= 10]
    rare = [k for k in keys if k not in common]
    table = [[counts[label].get(k, 0) for k in common] + [sum(counts[label].get(k, 0) for k in rare)] for label in counts]
    assert len(common) >= 3  # a spread distribution, not one answer
    p = chi_square_p(table)
    assert p > 0.001, (p, table)


def chi_square_p(table: list[list[int]]) -> float:
    """p-value of Pearson's chi-square test that the rows of `table` come from one distribution (Wilson-Hilferty's
    normal approximation of the chi-square tail)."""
    import math

    rows, cols = [sum(r) for r in table], [sum(c) for c in zip(*table)]
    total = sum(rows)
    stat = sum((table[i][j] - rows[i] * cols[j] / total) ** 2 / (rows[i] * cols[j] / total)
               for i in range(len(rows)) for j in range(len(cols)) if cols[j])
    df = (len(rows) - 1) * (sum(1 for c in cols if c) - 1)
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_a_draft_model_gives_the_same_greedy_text():
    target = smollm2_package() / "smollm2-hf-Q8_0.gguf"
    with open_engine(target, ctx=2048, threads=1) as engine:
        plain, _ = reply(engine, REPEAT, GREEDY, None)
        choice = drafts.choose(engine.info.plan, str(smollm2_gguf()))
        assert choice.kind == "model" and choice.plan.n_ctx == engine.info.n_ctx
        spec = drafts.speculation(choice, 1, 5)
        spec.adaptive = False
        text, stats = reply(engine, REPEAT, GREEDY, spec)
        assert text == plain
        assert stats.draft.endswith("Q4_1") and stats.accepted > 20 and stats.tokens_per_step > 2


# --- choosing a draft -----------------------------------------------------------------------------------------


def test_auto_picks_the_small_smollm2_for_a_larger_one_in_the_store(capsys, tmp_path):
    big = tmp_path / "SmolLM2-F32.gguf"
    os.link(smollm2_converted_gguf("f32"), big)
    code, _, err = run_cli(capsys, "import", str(big), "--name", "smollm2-large")
    assert code == 0, err
    target = plan_model("smollm2-large", ctx=1024, threads=1)
    ref, why = drafts.pick_auto(target)
    assert ref is not None, why
    assert ref.files[0].path.resolve() == smollm2_gguf().resolve()
    choice = drafts.choose(target, "auto")
    assert choice.kind == "model" and "Q4_1" in choice.notes[0], choice.notes
    # a tiny target has no 4x smaller draft: n-gram lookup
    small = plan_model(smollm2_gguf(), ctx=1024, threads=1)
    assert drafts.choose(small, "auto").kind == "ngram"


def test_a_draft_that_does_not_fit_is_dropped_with_a_note():
    from edgellm.plan.hardware import detect

    target = plan_model(smollm2_package() / "smollm2-hf-Q8_0.gguf", ctx=1024, threads=1)
    hw = detect()
    full = replace(hw, ram_available=target.memory.ram + 1)  # nothing left beside the model
    choice = drafts.choose(target, str(smollm2_gguf()), hw=full)
    assert choice.kind == "ngram" and "dropped" in choice.notes[0] and len(choice.notes) == 1


def test_cli_refuses_a_draft_with_another_vocabulary(tmp_path):
    from test_run_cli import edgellm, one_line_error

    other = write_llama3_tiny_gguf(tmp_path / "llama3-tiny.gguf", favourite=1000)
    r = edgellm("run", str(smollm2_gguf()), "-p", "hi", "--draft", str(other), "-t", "1")
    one_line_error(r, 2, "vocabulary differs")
    r = edgellm("run", str(smollm2_gguf()), "-p", "hi", "--draft", "ngram", "--draft-min", "5", "--draft-max", "2")
    one_line_error(r, 2, "--draft-min")


def test_run_reports_speculation(tmp_path):
    from test_run_cli import edgellm

    prompt = REPEAT[0]["content"]
    r = edgellm("run", str(smollm2_gguf()), "-p", prompt, "--temp", "0", "-n", "60", "-t", "1", "--draft", "ngram", "--json")
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)["stats"]
    assert stats["draft"] == "n-gram" and "acceptance" in stats and "tokens_per_step" in stats
    plain = edgellm("run", str(smollm2_gguf()), "-p", prompt, "--temp", "0", "-n", "60", "-t", "1", "--json")
    assert json.loads(plain.stdout)["text"] == json.loads(r.stdout)["text"]
    r = edgellm("run", str(smollm2_gguf()), "-p", prompt, "--temp", "0", "-n", "20", "-t", "1", "--draft", "ngram")
    assert r.returncode == 0 and "speculation: n-gram" in r.stderr


def test_serve_speculates_per_slot_and_answers_the_same():
    """Requests on a two-slot server, with and without n-gram speculation: the same greedy replies."""
    from serving import Server

    # texts whose greedy replies hold no near-tie: a batch of guesses rounds logits apart from one token's evaluation
    asks = [[{"role": "user", "content": "Copy this list exactly: apples, pears, plums, apples, pears, plums, figs."}],
            [{"role": "user", "content": "Repeat exactly: the quick brown fox jumps over the lazy dog, the quick brown fox jumps over the lazy dog."}]]
    replies = {}
    for label, extra in (("plain", ()), ("spec", ("--draft", "ngram", "--draft-max", "8"))):
        s = Server(str(smollm2_gguf()), "--parallel", "2", "--ctx", "1024", *extra)
        try:
            client = s.client()
            ask = lambda m: client.chat.completions.create(model="x", messages=m, temperature=0, max_tokens=100).choices[0].message.content  # noqa: E731
            # one at a time: which replies share a batch depends on timing, and a batch of another make-up can
            # round a near-tie the other way with or without speculation
            replies[label] = [ask(m) for m in asks]
            if extra:
                assert s.metric("draft_tokens_accepted_total") > 10
        finally:
            rc, log = s.interrupt()
        assert rc == 130 and "Traceback" not in log, log
        if extra:
            assert "n-gram lookup per slot" in log
    assert replies["spec"] == replies["plain"]


def test_bench_reports_acceptance_and_speedup_per_draft():
    from test_run_cli import edgellm

    r = edgellm("bench", str(smollm2_gguf()), "-p", "0", "-n", "16", "-r", "1", "--threads", "1", "--draft", "ngram", "--json")
    assert r.returncode == 0, r.stderr
    (result,) = json.loads(r.stdout)["results"]
    rows = {row["task"]: row for row in result["speculation"]}
    assert set(rows) == {"repeat", "chat"}
    for row in rows.values():
        assert row["draft"] == "n-gram" and row["speedup"] > 0 and 0 <= row["acceptance"] <= 1 and row["same_text"]
    r = edgellm("bench", str(smollm2_gguf()), "-p", "0", "-n", "16", "-r", "1", "--threads", "1", "--draft", "ngram")
    assert r.returncode == 0 and "speculative decoding" in r.stdout and "tokens/step" in r.stdout


# --- whether speculation pays here: tune's decision, used when --draft is left out ------------------------------


def test_the_draft_that_pays_is_never_slower_and_faster_somewhere():
    from edgellm.plan.tune import paying_draft

    rows = lambda use, *x: [{"use": use, "task": t, "speedup": s} for t, s in zip(("repeat", "chat"), x)]  # noqa: E731
    assert paying_draft(rows("ngram", 1.3, 0.97)) == "ngram"
    assert paying_draft(rows("ngram", 1.6, 0.90)) == "off"  # too slow on free-form text
    assert paying_draft(rows("ngram", 1.03, 1.01)) == "off"  # pays nowhere
    assert paying_draft(rows("ngram", 1.2, 1.0) + rows("/m/draft.gguf", 1.5, 1.0)) == "/m/draft.gguf"
    assert paying_draft([]) == "off"


def _saved_draft(value) -> None:
    """Give the demo model's tuned entry this draft, as `tune --draft` writes it."""
    from edgellm.paths import data_dir

    path = data_dir() / "tuned.json"
    entries = json.loads(path.read_text())
    (key,) = [k for k in entries if str(smollm2_gguf().resolve()) in k]
    entries[key]["draft"] = value
    path.write_text(json.dumps(entries))


def test_tune_saves_whether_speculation_pays_and_run_plan_and_serve_follow_it(capsys):
    from edgellm.plan.hardware import detect
    from edgellm.plan.tune import lookup_draft, paying_draft

    code, out, err = run_cli(capsys, "tune", str(smollm2_gguf()), "-p", "16", "-n", "8", "-r", "1", "--draft", "ngram", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["draft"] == paying_draft(result["speculation"]) in ("ngram", "off")
    assert {r["use"] for r in result["speculation"]} == {"ngram"}
    assert lookup_draft(smollm2_gguf(), detect().machine_id) == result["draft"]

    prompt = REPEAT[0]["content"]
    run = lambda *extra: run_cli(capsys, "run", str(smollm2_gguf()), "-p", prompt, "--temp", "0", "-n", "40", "-t", "1", "--json", *extra)  # noqa: E731
    _saved_draft("ngram")
    code, out, err = run()
    assert code == 0 and json.loads(out)["stats"]["draft"] == "n-gram", err
    assert "speculation: n-gram lookup (found to pay here by `edgellm tune`)" in err
    code, out, _ = run("--draft", "off")  # the user's choice stays
    assert code == 0 and not json.loads(out)["stats"]["draft"]
    code, out, _ = run_cli(capsys, "plan", str(smollm2_gguf()), "--json")
    assert json.loads(out)["speculation"] == {"draft": "ngram"}
    assert any("found to pay here by `edgellm tune`" in n for n in json.loads(out)["notes"])
    target = plan_model(smollm2_gguf(), ctx=1024, threads=1)
    assert drafts.serving_notes(target, None) == ("speculation: n-gram lookup per slot (found to pay here by `edgellm tune`)",)

    _saved_draft("off")
    code, out, _ = run()
    assert code == 0 and not json.loads(out)["stats"]["draft"]
    assert drafts.serving_notes(target, None) == ()
    _saved_draft(str(smollm2_gguf().parent / "gone.gguf"))  # a draft model since deleted: plain decoding, said once
    code, out, err = run()
    assert code == 0 and not json.loads(out)["stats"]["draft"]
    assert "cannot be used now" in err and "no speculation" in err, err
    _saved_draft(["not", "a", "draft"])  # not what tune writes: ignored
    code, out, _ = run()
    assert code == 0 and not json.loads(out)["stats"]["draft"]


def test_plan_shows_the_draft_model_and_its_memory(capsys, tmp_path):
    big = tmp_path / "SmolLM2-F32.gguf"
    os.link(smollm2_converted_gguf("f32"), big)
    code, out, err = run_cli(capsys, "plan", str(big), "--ctx", "2048", "--draft", str(smollm2_gguf()), "--json")
    assert code == 0, err
    spec = json.loads(out)["speculation"]
    assert spec["draft"] == "model" and spec["path"] == str(smollm2_gguf())
    own = run_cli(capsys, "plan", str(smollm2_gguf()), "--ctx", "2048", "--json")[1]
    assert spec["memory"]["weights_cpu"] == json.loads(own)["memory"]["weights_cpu"]  # the draft's own plan, same context
    assert spec["memory"]["kv_cpu"] == json.loads(own)["memory"]["kv_cpu"]
    code, out, _ = run_cli(capsys, "plan", str(big), "--ctx", "2048", "--draft", str(smollm2_gguf()))
    assert code == 0 and "speculation: draft model" in out and "the draft takes" in out
    code, _, err = run_cli(capsys, "plan", str(big), "--draft", str(smollm2_gguf()), "--rpc", "127.0.0.1:1")
    assert code == 2 and "--draft" in err
