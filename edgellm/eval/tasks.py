"""Task files in the formats llama-perplexity reads, and its rules for which N tasks to score.

    hellaswag        6 lines a task: context, the gold ending's index (0-3), 4 endings
    winogrande       CSV lines: index, sentence with one "_", option 1, option 2, answer (1 or 2)
    multiple-choice  llama.cpp's binary format: u32 task count, u32 byte offset of each task, then per task a
                     question and two answer sets (u32 count <= 100, that many strings, as many i32 labels;
                     the first set has one label 1, the second is read and not used); a string is a u32
                     length and its bytes; all little-endian
    exam, gsm8k      exam questions and word problems asked through the chat template: see exam_files.py

A file is read the way llama-perplexity reads its `-f` file: one trailing newline dropped, lines split on
"\\n" (a "\\r" stays in the text). What llama-perplexity would skip or stop on is an error here naming the
file, the task and what is wrong, except a WinoGrande header line (line 1 that is not a task).
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .item import Task, TaskFileError, decode_text
from .mt19937 import MT19937


@dataclass(frozen=True)
class Kind:
    name: str  # as on the command line: --hellaswag
    title: str
    separator: str  # between the prompt and a choice
    max_seqs: int  # sequences in one batch at most: llama-perplexity's max_tasks_per_batch x choices a task
    digits: int  # decimals llama-perplexity prints the accuracy (in %) with
    default_tasks: int  # llama-perplexity's default --<kind>-tasks (0: all)
    chat: bool = False  # asked through the model's chat template (exam_files.py), N tasks are the first N
    many_sets: bool = False  # files of many datasets (MMLU, ARC, C-Eval...): recorded per file, not per kind



HELLASWAG = Kind("hellaswag", "HellaSwag", " ", 32 * 4, 8, 400)
WINOGRANDE = Kind("winogrande", "WinoGrande", "", 128 * 2, 4, 0)
MULTIPLE_CHOICE = Kind("multiple-choice", "Multiple choice", " ", 32 * 4, 8, 0, many_sets=True)
EXAM = Kind("exam", "Exam", "", 0, 2, 0, chat=True, many_sets=True)
GSM8K = Kind("gsm8k", "GSM8K", "", 0, 2, 0, chat=True)
KINDS = {k.name: k for k in (HELLASWAG, WINOGRANDE, MULTIPLE_CHOICE, EXAM, GSM8K)}


@dataclass(frozen=True)
class TaskFile:
    kind: Kind
    path: Path
    sha256: str
    total: int  # tasks in the file
    tasks: tuple[Task, ...]  # the ones selected, in the order they are scored
    note: str = ""  # what reading it left out that people would not expect


def load(kind: Kind, path: str | Path, n_tasks: int | None = None) -> TaskFile:
    """Read `path` as `kind` and select n_tasks of it (None: llama-perplexity's default for the kind) by
    llama-perplexity's rules (see `select`)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"no such task file: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a task file") from None
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    from .exam_files import READERS as CHAT_READERS

    data = raw[:-1] if raw.endswith(b"\n") else raw  # llama-perplexity's -f drops one trailing newline
    tasks = {**READERS, **CHAT_READERS}[kind.name](path, data)
    if not tasks:
        raise TaskFileError(path, f"holds no {kind.title} tasks")
    n = kind.default_tasks if n_tasks is None else n_tasks
    picked = (tasks[:n] if n > 0 else tasks) if kind.chat else select(kind, tasks, n)
    note = ""
    last = data.rsplit(b"\n", 1)[-1]
    if kind is WINOGRANDE and last.strip():
        note = (f"{path.name}: its last line is left out, as llama-perplexity leaves it out (the file does not "
                "end in two newlines), so both score the same tasks")
    return TaskFile(kind=kind, path=path, sha256=hashlib.sha256(raw).hexdigest(), total=len(tasks),
                    tasks=tuple(picked), note=note)


def select(kind: Kind, tasks: list[Task], n: int) -> list[Task]:
    """llama-perplexity's choice of n tasks, from a `std::mt19937` seeded with 1.

    HellaSwag always shuffles: n draws (all tasks when n is 0 or more than there are), each uniform over the
    tasks not yet drawn. WinoGrande and multiple choice keep the file's order when n is 0 or at least the
    task count; otherwise each of n draws picks a slot of the remaining list and moves the last one into it.
    """
    rng = MT19937(1)
    if kind is HELLASWAG:
        left = list(tasks)
        count = len(left) if n <= 0 else min(n, len(left))
        return [left.pop(rng.below(len(left))) for _ in range(count)]
    if n <= 0 or n >= len(tasks):
        return list(tasks)
    slots = list(range(len(tasks)))
    picked = []
    for _ in range(n):
        j = rng.scaled(len(slots))
        picked.append(tasks[slots[j]])
        slots[j] = slots[-1]
        slots.pop()
    return picked



def _lines(text: str) -> list[str]:
    """Lines as C++ `getline` gives them: no empty line after a final newline."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def read_hellaswag(path: Path, data: bytes) -> list[Task]:
    lines = _lines(decode_text(path, data))
    if len(lines) % 6:
        raise TaskFileError(path, f"{len(lines)} lines is not a whole number of tasks (6 lines each: context, gold "
                                  f"ending 0-3, 4 endings): task {len(lines) // 6 + 1} is incomplete")
    tasks = []
    for t in range(len(lines) // 6):
        context, label, *endings = lines[6 * t : 6 * t + 6]
        if label.strip() not in ("0", "1", "2", "3"):
            raise TaskFileError(path, f"task {t + 1} (line {6 * t + 2}): the gold ending is {label.strip()[:40]!r}, "
                                      "not 0, 1, 2 or 3")
        tasks.append(Task(number=t + 1, prompt=context, choices=tuple(endings), gold=frozenset({int(label)})))
    return tasks


_LEADING_INT = re.compile(r"\s*([+-]?\d+)")


def _winogrande_line(line: str) -> tuple[str, str, str, str, str] | str:
    """(before, after, option 1, option 2, answer) cut as llama-perplexity cuts the line, or what is wrong."""
    commas, quoted = [], False
    for i, c in enumerate(line):
        if quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == ",":
            commas.append(i)
            if len(commas) == 4:
                break
    if len(commas) != 4:
        return "needs 5 comma-separated fields: index, sentence, option 1, option 2, answer"
    c0, c1, c2, c3 = commas
    sentence = line[c0 + 2 : c1 - 1] if line[c0 + 1] == '"' else line[c0 + 1 : c1]
    if "_" not in sentence:
        return "the sentence has no _ for the options to fill"
    m = _LEADING_INT.match(line[c3 + 1 :])
    if not m or int(m.group(1)) not in (1, 2):
        return f"the answer is {line[c3 + 1:].strip()[:20]!r}, not 1 or 2"
    before, _, after = sentence.partition("_")
    return before, after, line[c1 + 1 : c2], line[c2 + 1 : c3], m.group(1)


def read_winogrande(path: Path, data: bytes) -> list[Task]:
    lines = decode_text(path, data).split("\n")
    # llama-perplexity stops at the `getline` that reaches the end of the text: the last line counts only when
    # a newline follows it (after -f dropped one, a file that ends in a single newline loses its last line).
    lines.pop()
    tasks = []
    for number, line in enumerate(lines, 1):
        cut = _winogrande_line(line)
        if isinstance(cut, str):
            if number == 1:
                continue  # a header ("qID,sentence,option1,option2,answer"): llama-perplexity skips it too
            raise TaskFileError(path, f"task on line {number}: {cut}")
        before, after, one, two, answer = cut
        tasks.append(Task(number=number, prompt=before, choices=(one, two), gold=frozenset({int(answer) - 1}),
                          after=after))
    return tasks


class _Reader:
    def __init__(self, path: Path, data: bytes, offset: int, task: int) -> None:
        self.path, self.data, self.at, self.task = path, data, offset, task

    def u32(self, what: str) -> int:
        if self.at + 4 > len(self.data):
            self.fail(f"the file ends inside {what}")
        (v,) = struct.unpack_from("<I", self.data, self.at)
        self.at += 4
        return v

    def string(self, what: str) -> str:
        n = self.u32(f"the length of {what}")
        if self.at + n > len(self.data):
            self.fail(f"{what} runs past the end of the file ({n} bytes)")
        raw = self.data[self.at : self.at + n]
        self.at += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8 text")

    def answers(self, which: str) -> tuple[list[str], list[int]]:
        n = self.u32(f"the {which} answer count")
        if n > 100:
            self.fail(f"{n} {which} answers (at most 100)")
        texts = [self.string(f"{which} answer {i + 1}") for i in range(n)]
        if self.at + 4 * n > len(self.data):
            self.fail(f"the file ends inside the {which} labels")
        labels = list(struct.unpack_from(f"<{n}i", self.data, self.at))
        self.at += 4 * n
        return texts, labels

    def fail(self, what: str):
        raise TaskFileError(self.path, f"task {self.task}: {what}")


def read_multiple_choice(path: Path, data: bytes) -> list[Task]:
    if len(data) < 4:
        raise TaskFileError(path, "too short for llama.cpp's multiple-choice format (no task count)")
    (n,) = struct.unpack_from("<I", data, 0)
    if n == 0:
        return []
    if 4 + 4 * n > len(data):
        raise TaskFileError(path, f"says it holds {n} tasks but ends inside their offsets: not llama.cpp's "
                                  "multiple-choice format")
    offsets = struct.unpack_from(f"<{n}I", data, 4)
    tasks = []
    at = 4 + 4 * n  # all tasks are read one after another from here (the offsets serve a subset)
    for t in range(n):
        r = _Reader(path, data, at, t + 1)
        if offsets[t] != at:
            r.fail(f"its offset says byte {offsets[t]}, it starts at byte {at}")
        question = r.string("the question")
        texts, labels = r.answers("first-set")
        r.answers("second-set")
        at = r.at
        tasks.append(Task(number=t + 1, prompt=question, choices=tuple(texts),
                          gold=frozenset(i for i, v in enumerate(labels) if v == 1)))
    return tasks


READERS: dict[str, Callable[[Path, bytes], list[Task]]] = {
    "hellaswag": read_hellaswag, "winogrande": read_winogrande, "multiple-choice": read_multiple_choice,
}
