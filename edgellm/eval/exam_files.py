"""Exam questions (C-Eval, CMMLU, MMLU) and GSM8K word problems, in the files those datasets ship.

    exam   CSV with a header naming question, A, B, C, D (more letters allowed) and answer columns, in any
           case and order (C-Eval's id,question,A,B,C,D,answer,explanation; CMMLU's ,Question,A,B,C,D,Answer);
           CSV without a header as MMLU's raw files: question,A,B,C,D,answer;
           JSONL with question, A..D and an answer letter, or MMLU's question, choices (a list) and answer
           (the index of the right choice, or its letter)
    gsm8k  JSONL with question and answer, the gold answer the number after "####"

Items are numbered from 1 in file order (header lines not counted); `--limit N` takes the first N.
"""

from __future__ import annotations

import csv
import io
import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .item import Task, TaskFileError, decode_text

LETTERS = "ABCDEFGHIJ"  # exams with up to 10 choices (MMLU-Pro has 10)
MAX_ITEMS = 1_000_000  # a bound on what one file may hold
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def number(text: str) -> Decimal | None:
    """A number as people write it ("1,234", "-3.50"), or None."""
    try:
        return Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None


def last_number(text: str) -> Decimal | None:
    """The last number in a reply: GSM8K's usual reading of a model's answer."""
    found = _NUMBER.findall(text)
    return number(found[-1]) if found else None



def _jsonl(path: Path, data: bytes) -> list[dict]:
    rows = []
    for line_no, line in enumerate(decode_text(path, data, "utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskFileError(path, f"item {len(rows) + 1} (line {line_no}): not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TaskFileError(path, f"item {len(rows) + 1} (line {line_no}): not a JSON object")
        rows.append({str(k).lower(): v for k, v in row.items()})
        if len(rows) > MAX_ITEMS:
            raise TaskFileError(path, f"more than {MAX_ITEMS} items")
    return rows


def _is_jsonl(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{"


def _gold_letter(path: Path, item: int, answer, n_choices: int, index_ok: bool) -> int:
    if index_ok and isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return answer
    letter = str(answer).strip().upper() if isinstance(answer, str) else ""
    if len(letter) == 1 and letter in LETTERS[:n_choices]:
        return LETTERS.index(letter)
    want = f"a letter A-{LETTERS[n_choices - 1]}" + (f" or an index 0-{n_choices - 1}" if index_ok else "")
    raise TaskFileError(path, f"item {item}: the answer is {str(answer)[:20]!r}, not {want}")


def _choices_of(path: Path, item: int, row: dict) -> tuple[tuple[str, ...], bool]:
    """The choices of a row, and whether they came as a list (MMLU's form, whose answer is an index)."""
    if "choices" in row:
        choices = row["choices"]
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(
                isinstance(c, (str, int, float)) for c in choices):
            raise TaskFileError(path, f"item {item}: choices is not a list of 2 to {len(LETTERS)} texts")
        return tuple(str(c) for c in choices), True
    letters = [c.lower() for c in LETTERS]
    present = 0
    while present < len(letters) and letters[present] in row:
        present += 1
    if present < 2:
        raise TaskFileError(path, f"item {item}: no choices (give A, B, C, D or a choices list)")
    return tuple("" if row[c] is None else str(row[c]) for c in letters[:present]), False


def _exam_item(path: Path, item: int, row: dict) -> Task:
    if "question" not in row or "answer" not in row:
        missing = " and ".join(k for k in ("question", "answer") if k not in row)
        raise TaskFileError(path, f"item {item}: no {missing}")
    choices, as_list = _choices_of(path, item, row)
    gold = _gold_letter(path, item, row["answer"], len(choices), index_ok=as_list)
    question = row["question"]
    return Task(number=item, prompt="" if question is None else str(question).strip(), choices=choices,
                gold=frozenset({gold}))


def read_exam(path: Path, data: bytes) -> list[Task]:
    if _is_jsonl(data):
        return [_exam_item(path, i, row) for i, row in enumerate(_jsonl(path, data), 1)]
    rows = list(csv.reader(io.StringIO(decode_text(path, data, "utf-8-sig"), newline="")))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) > MAX_ITEMS:
        raise TaskFileError(path, f"more than {MAX_ITEMS} items")
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    if "question" in header and "answer" in header:
        columns, body = header, rows[1:]
    else:  # MMLU's raw files: question, the choices, the answer letter, no header
        if len(rows[0]) < 4:
            raise TaskFileError(path, "item 1: needs a header naming question, A-D and answer, or the columns "
                                      "question,A,B,C,D,answer")
        columns, body = ["question", *(c.lower() for c in LETTERS[: len(rows[0]) - 2]), "answer"], rows
    tasks = []
    for i, r in enumerate(body, 1):
        if len(r) != len(columns):
            raise TaskFileError(path, f"item {i}: {len(r)} columns, the header has {len(columns)}")
        tasks.append(_exam_item(path, i, dict(zip(columns, r))))
    return tasks


def read_gsm8k(path: Path, data: bytes) -> list[Task]:
    tasks = []
    for i, row in enumerate(_jsonl(path, data), 1):
        if "question" not in row or "answer" not in row:
            raise TaskFileError(path, f"item {i}: needs question and answer")
        answer = str(row["answer"])
        _, mark, gold = answer.rpartition("####")
        if not mark:
            raise TaskFileError(path, f"item {i}: the answer has no '#### NUMBER' line")
        if number(gold) is None:
            raise TaskFileError(path, f"item {i}: the answer after #### is {gold.strip()[:20]!r}, not a number")
        question = row["question"]
        tasks.append(Task(number=i, prompt="" if question is None else str(question).strip(), choices=(),
                          gold=frozenset(), answer=gold.strip()))
    return tasks


READERS = {"exam": read_exam, "gsm8k": read_gsm8k}
