"""Task files and llama-perplexity's task selection, without a model (the scoring is in test_eval.py)."""

from __future__ import annotations

import struct

import eval_data
import pytest

from edgellm.eval import tasks as T
from edgellm.eval.mt19937 import MT19937
from edgellm.eval.results import LevelScore, TaskSet, paired
from edgellm.eval.score import Scored


def test_mt19937_is_the_cxx_engine():
    # The C++ standard fixes the 10000th draw of a default-seeded std::mt19937.
    rng = MT19937()
    for _ in range(9999):
        rng.next()
    assert rng.next() == 4123659995
    assert MT19937(1).next() == 1791095845


def test_draws_match_libstdcxx():
    # Printed by a C++ program built with GCC 12's libstdc++: uniform_int_distribution<size_t>(0, n-1) and
    # int(scale * rng() * n), each from std::mt19937(1).
    h = MT19937(1)
    assert [h.below(n) for n in (10042, 7, 100, 3, 1, 2)] == [4187, 6, 72, 2, 0, 0]
    w = MT19937(1)
    assert [w.scaled(n) for n in (1267, 50, 3)] == [528, 49, 2]


def test_hellaswag_file(tmp_path):
    f = T.load(T.HELLASWAG, eval_data.write_hellaswag(tmp_path / "hs.txt"))
    assert f.total == len(eval_data.HELLASWAG) and len(f.tasks) == f.total  # 24 < the default 400: all, shuffled
    assert sorted(t.number for t in f.tasks) == list(range(1, 25))
    assert [t.number for t in f.tasks][:3] == [11, 24, 17]
    first = f.tasks[0]
    context, gold, endings = eval_data.HELLASWAG[first.number - 1]
    assert (first.prompt, first.choices, first.gold) == (context, tuple(endings), frozenset({gold}))
    assert len(f.sha256) == 64


def test_hellaswag_subset_is_a_prefix_of_the_shuffle(tmp_path):
    path = eval_data.write_hellaswag(tmp_path / "hs.txt")
    every = [t.number for t in T.load(T.HELLASWAG, path, 0).tasks]
    assert [t.number for t in T.load(T.HELLASWAG, path, 5).tasks] == every[:5]


def test_winogrande_file(tmp_path):
    path = eval_data.write_winogrande(tmp_path / "wg.csv", header=True)
    f = T.load(T.WINOGRANDE, path)
    # the header is skipped; llama-perplexity does not read the last line (no newline follows it once -f has
    # dropped the file's last newline)
    assert f.total == len(eval_data.WINOGRANDE) - 1
    t = f.tasks[0]
    assert (t.prompt, t.choices, t.after, t.gold) == ("Sarah was a much better surgeon than Maria so ", ("Sarah", "Maria"),
                                                     " always got the easier cases.", frozenset({1}))
    quoted = next(t for t in f.tasks if "," in t.prompt + t.after)
    assert not quoted.prompt.startswith('"') and not quoted.after.endswith('"')
    assert [t.number for t in T.load(T.WINOGRANDE, path, 4).tasks] != [2, 3, 4, 5]  # a draw, not the first 4


def test_multiple_choice_file(tmp_path):
    path = eval_data.hellaswag_as_multiple_choice(tmp_path / "mc.bin")
    f = T.load(T.MULTIPLE_CHOICE, path)
    assert f.total == 24 and [t.number for t in f.tasks] == list(range(1, 25))
    context, gold, endings = eval_data.HELLASWAG[0]
    assert (f.tasks[0].prompt, f.tasks[0].choices, f.tasks[0].gold) == (context, tuple(endings), frozenset({gold}))
    picked = T.load(T.MULTIPLE_CHOICE, path, 3).tasks
    assert [t.number for t in picked] == [n + 1 for n in _scaled_picks(24, 3)]


def _scaled_picks(n, k):
    rng, slots, out = MT19937(1), list(range(n)), []
    for _ in range(k):
        j = rng.scaled(len(slots))
        out.append(slots[j])
        slots[j] = slots[-1]
        slots.pop()
    return out


@pytest.mark.parametrize("kind, content, message", [
    (T.HELLASWAG, "ctx\n0\na\nb\nc\nd\nctx2\n1\na\n", "9 lines is not a whole number of tasks"),
    (T.HELLASWAG, "ctx\n0\na\nb\nc\nd\nctx2\nfour\na\nb\nc\nd\n", "task 2 (line 8): the gold ending is 'four'"),
    (T.HELLASWAG, "", "holds no HellaSwag tasks"),
    (T.WINOGRANDE, "0,A _ b.,x,y,1\n1,no blank here,x,y,2\n2,A _ c.,x,y,1\n\n", "task on line 2: the sentence has no _"),
    (T.WINOGRANDE, "0,A _ b.,x,y,1\n1,A _ b.,x,y,3\n2,A _ c.,x,y,1\n\n", "task on line 2: the answer is '3', not 1 or 2"),
    (T.WINOGRANDE, "0,A _ b.,x,y,1\n1,A _ b.,x\n2,A _ c.,x,y,1\n\n", "task on line 2: needs 5 comma-separated fields"),
])
def test_malformed_text_files(tmp_path, kind, content, message):
    path = tmp_path / "tasks.txt"
    path.write_text(content)
    with pytest.raises(T.TaskFileError) as err:
        T.load(kind, path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_malformed_multiple_choice(tmp_path):
    good = eval_data.write_multiple_choice(tmp_path / "mc.bin", [("Q?", ["a", "b"], 0), ("R?", ["c", "d"], 1)])
    data = good.read_bytes()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[:-9])
    with pytest.raises(T.TaskFileError, match="task 2: the file ends inside"):
        T.load(T.MULTIPLE_CHOICE, cut)
    many = tmp_path / "many.bin"
    many.write_bytes(struct.pack("<II", 1, 8) + struct.pack("<I", 1) + b"Q" + struct.pack("<I", 101))
    with pytest.raises(T.TaskFileError, match="task 1: 101 first-set answers"):
        T.load(T.MULTIPLE_CHOICE, many)
    text = tmp_path / "text.txt"
    text.write_text("not binary")
    with pytest.raises(T.TaskFileError, match="not llama.cpp's multiple-choice format"):
        T.load(T.MULTIPLE_CHOICE, text)


def test_missing_file(tmp_path):
    with pytest.raises(T.UsageError, match="no such task file"):
        T.load(T.HELLASWAG, tmp_path / "nope.txt")


def _level(name, right):
    ts = TaskSet("hellaswag", "HellaSwag", "hs.txt", "0" * 64, len(right), len(right), 8)
    s = LevelScore(level=name, file=f"{name}.gguf", size_bytes=1, bits_per_weight=1.0, task=ts)
    for i, r in enumerate(right):
        s.add(Scored(i + 1, (0.0,), 0, bool(r)))
    return s


def test_paired_difference():
    ref = _level("Q8_0", [1] * 60 + [0] * 40)
    same = _level("Q4_K", [1] * 59 + [0] + [0] * 39 + [1])  # two items swapped: no change in accuracy
    worse = _level("Q2_K", [1] * 40 + [0] * 60)
    p = paired(same, ref)
    assert p.diff == 0 and p.verdict == "no measurable loss"
    w = paired(worse, ref)
    assert w.diff == pytest.approx(-0.2) and w.verdict.startswith("−20.0 ± 4.0 points")
    assert ref.accuracy_text() == "60.00000000" and ref.stderr == pytest.approx((0.6 * 0.4 / 99) ** 0.5)
