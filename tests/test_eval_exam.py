"""`edgellm eval --exam` and `--gsm8k`: the files of C-Eval, CMMLU, MMLU and GSM8K read in their own column
names, the answer letter's log-probability the same as one computed straight from llama.cpp's logits, and a
word problem the 135M SmolLM2 gets right answered right through its chat template."""

from __future__ import annotations

import ctypes
import json
from decimal import Decimal

import eval_data
import fixtures
import numpy as np
import pytest
from conftest import run_cli

from edgellm.eval import tasks as T
from edgellm.eval.exam_files import last_number, number
from edgellm.store.manifest import Manifest

THREADS = 2


def _as_read(tasks):
    return [(t.prompt, t.choices, t.gold) for t in tasks]


def test_exam_files_in_each_datasets_columns(tmp_path):
    want = [(q, tuple(c), frozenset({"ABCD".index(a)})) for q, c, a in eval_data.EXAM]
    ceval = eval_data.write_exam_csv(tmp_path / "ceval.csv")
    cmmlu = eval_data.write_exam_csv(tmp_path / "cmmlu.csv", header=",Question,A,B,C,D,Answer,Explanation")
    mmlu_raw = eval_data.write_exam_csv(tmp_path / "mmlu.csv", header=None)
    mmlu_jsonl = eval_data.write_exam_jsonl(tmp_path / "mmlu.jsonl")
    for path in (ceval, cmmlu, mmlu_raw, mmlu_jsonl):
        f = T.load(T.EXAM, path)
        assert _as_read(f.tasks) == want, path.name
        assert f.total == len(want) and [t.number for t in f.tasks] == [1, 2, 3, 4, 5]
    assert [t.number for t in T.load(T.EXAM, ceval, 2).tasks] == [1, 2]  # --limit: the first N


def test_gsm8k_file_and_numbers(tmp_path):
    f = T.load(T.GSM8K, eval_data.write_gsm8k(tmp_path / "gsm8k.jsonl"), 2)
    assert [(t.number, t.answer) for t in f.tasks] == [(1, "5"), (2, "2")] and f.total == 3
    assert last_number("He has 1,200 sheep, sells 250, so 950 are left.") == Decimal(950)
    assert last_number("no numbers here") is None
    assert number("1,000") == number("1000.0") and last_number("it is -3.5.") == Decimal("-3.5")


@pytest.mark.parametrize("name, content, message", [
    ("e.csv", "question,A,B,C,D,answer\nq,a,b,c,d,A\nq,a,b,c,d,E\n", "item 2: the answer is 'E', not a letter A-D"),
    ("e.csv", "question,A,B,C,D,answer\nq,a,b,c,d\n", "item 1: 5 columns, the header has 6"),
    ("e.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": "q", "choices": ["a", "b"], '
                '"answer": 2}\n', "item 2: the answer is '2', not a letter A-B or an index 0-1"),
    ("e.jsonl", '{"question": "q", "choices": ["a", "b"], "answer": 0}\n{"question": \n', "item 2 (line 2): not JSON"),
    ("e.jsonl", '{"question": "q", "answer": "A"}\n', "item 1: no choices (give A, B, C, D or a choices list)"),
    ("g.jsonl", '{"question": "q", "answer": "5"}\n', "item 1: the answer has no '#### NUMBER' line"),
    ("g.jsonl", '{"question": "q", "answer": "#### five"}\n', "item 1: the answer after #### is 'five', not a number"),
])
def test_malformed_files_are_one_line(tmp_path, capsys, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    code, out, err = run_cli(capsys, "eval", "--exam" if name[0] == "e" else "--gsm8k", str(path))
    assert code == 2 and out == ""
    assert err.startswith(f"edgellm: {path}: {message}") and err.count("\n") == 1


def test_winogrande_last_line_dropped_is_said(tmp_path, capsys):
    path = eval_data.write_winogrande(tmp_path / "wg.csv")
    assert "last line is left out" in T.load(T.WINOGRANDE, path).note
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "missing.gguf"), "--winogrande", str(path))
    assert code != 0 and err.splitlines()[0] == f"edgellm: {T.load(T.WINOGRANDE, path).note}"
    path.write_bytes(path.read_bytes() + b"\n")  # two newlines: every line is read
    f = T.load(T.WINOGRANDE, path)
    assert f.note == "" and f.total == len(eval_data.WINOGRANDE)


def _direct_letter_logprobs(prompt_tokens: list[int], letters: list[int]) -> np.ndarray:
    """The letters' log-probabilities after the prompt, from a context of its own: llama_get_logits_ith on the
    prompt's last token, a float64 log-softmax."""
    import llama_cpp as L

    model = L.llama_model_load_from_file(str(fixtures.smollm2_gguf()).encode(), L.llama_model_default_params())
    p = L.llama_context_default_params()
    p.n_ctx = p.n_batch = 1024
    p.n_threads = p.n_threads_batch = THREADS
    ctx = L.llama_init_from_model(model, p)
    try:
        batch = L.llama_batch_init(len(prompt_tokens), 0, 1)
        for i, t in enumerate(prompt_tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = t, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(prompt_tokens) - 1
        batch.n_tokens = len(prompt_tokens)
        assert L.llama_decode(ctx, batch) == 0
        n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
        row = np.array(ctypes.cast(L.llama_get_logits_ith(ctx, len(prompt_tokens) - 1),
                                   ctypes.POINTER(ctypes.c_float * n_vocab)).contents, dtype=np.float64)
        L.llama_batch_free(batch)
    finally:
        L.llama_free(ctx)
        L.llama_model_free(model)
    logz = np.log(np.exp(row - row.max()).sum()) + row.max()
    return row[letters] - logz


def test_exam_scores_are_the_letters_logprobs(tmp_path):
    from edgellm.engine.launch import open_engine
    from edgellm.eval.ask import ChatAsker, exam_message

    f = T.load(T.EXAM, eval_data.write_exam_csv(tmp_path / "exam.csv"), 2)
    with open_engine(fixtures.smollm2_gguf(), ctx=1024, threads=THREADS) as engine:
        asker = ChatAsker(engine)
        results = list(asker.exam(f.tasks))
        letters = asker.letter_tokens(4)
        assert [engine.piece(t) for t in letters] == [b"A", b"B", b"C", b"D"]
        prompts = [engine.tokenize(engine.render_chat([{"role": "user", "content": exam_message(t)}]))
                   for t in f.tasks]
        # an empty choice and a question longer than the context are skipped, each with why
        odd = (T.Task(7, "Which?", ("a", " ", "c", "d"), frozenset({0})),
               T.Task(8, "word " * 1500, ("a", "b", "c", "d"), frozenset({0})))
        skipped = list(asker.exam(odd))
        assert [(s.number, s.why) for s in skipped] == [(7, "an empty question or choice"), (8, skipped[1].why)]
        assert skipped[1].why.startswith("its prompt is ") and skipped[1].why.endswith("the context holds 1024")
    assert "<|im_start|>assistant\n" in engine.render_chat([{"role": "user", "content": "x"}])
    for task, result, prompt in zip(f.tasks, results, prompts):
        direct = _direct_letter_logprobs(prompt, letters)
        assert result.scores == pytest.approx(list(direct), abs=2e-3)
        assert result.chosen == int(np.argmax(direct)) and result.correct == (result.chosen in task.gold)


def test_package_exam_and_gsm8k_paired_saved_and_plotted(tmp_path, capsys):
    pkg = fixtures.linked_smollm2_package(tmp_path)
    exam = eval_data.write_exam_jsonl(tmp_path / "mmlu.jsonl")
    gsm8k = eval_data.write_gsm8k(tmp_path / "gsm8k.jsonl")
    code, out, err = run_cli(capsys, "eval", str(pkg), "--exam", str(exam), "--gsm8k", str(gsm8k), "--limit", "2",
                             "--max-tokens", "24", "--save", "--json", "--plot", str(tmp_path / "acc.png"),
                             "--threads", str(THREADS))
    assert code == 0, err
    report = json.loads(out)
    levels = [f.level for f in Manifest.load(pkg).files]
    reference = max(Manifest.load(pkg).files, key=lambda f: f.bits_per_weight).level
    rows = {(r["level"], r["task"]): r for r in report["results"]}
    assert set(rows) == {(lv, k) for lv in levels for k in ("exam", "gsm8k")}
    for (level, kind), r in rows.items():
        assert r["tasks"] == 2 and r["complete"] and r["items"] == [1, 2]
        assert (r["paired"] is None) == (level == reference)
    # "What is 2+3?" and "What is 1+1?": the levels with 8 bits or more answer them right
    for level in levels:
        if level != "Q2_K":
            assert rows[(level, "gsm8k")]["right"] == "11", rows[(level, "gsm8k")]["replies"]
    assert rows[(reference, "gsm8k")]["replies"][0]["predicted"] == "5"
    saved = {f.level: f.accuracy for f in Manifest.load(pkg).files}
    assert all(set(acc) == {"exam:mmlu", "gsm8k"} for acc in saved.values())
    assert saved[reference]["gsm8k"]["accuracy"] == 1.0 and saved[reference]["exam:mmlu"]["file"] == "mmlu.jsonl"
    assert (tmp_path / "acc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second exam's records go beside the first's, and --max-loss-task exam weighs both
    ceval = eval_data.write_exam_csv(tmp_path / "ceval_val.csv")
    code, _, err = run_cli(capsys, "eval", str(pkg), "--exam", str(ceval), "--limit", "2", "--save", "--threads", str(THREADS))
    assert code == 0, err
    saved = {f.level: f.accuracy for f in Manifest.load(pkg).files}
    assert all(set(acc) == {"exam:mmlu", "exam:ceval_val", "gsm8k"} for acc in saved.values())
    code, out, err = run_cli(capsys, "plan", str(pkg), "--max-loss", "100", "--max-loss-task", "exam", "--json")
    assert code == 0, err
    assert "recorded exam:ceval_val, exam:mmlu accuracy within 100 points" in json.loads(out)["why"], out


def test_ctrl_c_during_word_problems_prints_what_was_answered(tmp_path):
    import signal

    from pausing import finish, start_paused

    gsm8k = eval_data.write_gsm8k(tmp_path / "gsm8k.jsonl")
    proc = start_paused("eval.tasks:1", "eval", fixtures.smollm2_gguf(), "--gsm8k", gsm8k, "--max-tokens", "16",
                        "--threads", THREADS)
    done = finish(proc, signal.SIGINT)
    assert done.returncode == 130
    assert "1 of 3 (stopped)" in done.stdout and "GSM8K: gsm8k.jsonl" in done.stdout
    assert "interrupted" in done.stderr and "Traceback" not in done.stderr


def test_a_thinking_model_is_graded_on_its_answer_and_asked_exams_without_thinking(tmp_path, capsys):
    """SmolLM2 with Qwen3's switchable thinking template: a word problem's reasoning is kept apart and only the
    answer after it is read for the number; an exam prompt closes the reasoning, so the letter comes first."""
    from serving import make_template_gguf
    from thinking import SWITCHABLE_TEMPLATE

    from edgellm.engine.launch import open_engine
    from edgellm.engine.reasoning import split_reasoning
    from edgellm.engine.sampling import Sampling
    from edgellm.eval.ask import ChatAsker, exam_message

    model = make_template_gguf(tmp_path, "switch", SWITCHABLE_TEMPLATE)
    gsm8k = T.load(T.GSM8K, eval_data.write_gsm8k(tmp_path / "gsm8k.jsonl"), 1)
    exam = T.load(T.EXAM, eval_data.write_exam_jsonl(tmp_path / "mmlu.jsonl"), 1)
    with open_engine(model, ctx=2048, threads=1) as engine:
        for think in (True, None):
            (answered,) = ChatAsker(engine, 48, think).gsm8k(gsm8k.tasks)
            prompt = engine.render_chat([{"role": "user", "content": gsm8k.tasks[0].prompt}], think=think)
            raw = "".join(engine.stream_prompt(prompt, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=48, seed=0)))
            reasoning, answer = split_reasoning(raw, inside=True)
            assert (answered.reasoning, answered.reply) == (reasoning, answer) and reasoning
            assert answered.predicted == (None if last_number(answer) is None else str(last_number(answer)))
        (answered,) = ChatAsker(engine, 48, False).gsm8k(gsm8k.tasks)
        assert answered.reasoning is None and answered.reply
        message = [{"role": "user", "content": exam_message(exam.tasks[0])}]
        closed = engine.render_chat(message, think=False)
        assert closed.endswith("<think>\n\n</think>\n\n")
        assert ChatAsker(engine, 48, True)._prompt(exam_message(exam.tasks[0])) == engine.tokenize(closed)  # whatever `think` says
    code, out, err = run_cli(capsys, "eval", str(model), "--gsm8k", str(tmp_path / "gsm8k.jsonl"), "--limit", "1",
                             "--max-tokens", "48", "--think", "--threads", "1", "--json")
    assert code == 0, err
    (reply,) = json.loads(out)["results"][0]["replies"]
    assert reply["reasoning"] and "<think>" not in reply["reply"]
