"""What an eval run found: per level and task file, which items were right, with the statistics people read.

Accuracy's standard error is the sample one lm-evaluation-harness reports, sqrt(p(1 - p) / (n - 1)). Levels
of a package are compared on the same items: the paired difference of each level from the reference (the
level with the most bits per weight) is the mean of per-item differences (-1, 0, +1) and its standard error
that of those differences, which leaves out the sampling noise both levels share. A difference within two
standard errors of zero is "no measurable loss".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ask import Answered
from .score import Scored, Skipped


@dataclass(frozen=True)
class TaskSet:
    """One task file as it was scored."""

    kind: str  # hellaswag, winogrande, multiple-choice, exam, gsm8k
    title: str
    file: str  # its name
    sha256: str
    total: int  # tasks in the file
    selected: int  # tasks chosen to score (llama-perplexity's rules)
    digits: int  # decimals llama-perplexity prints the accuracy with

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "file": self.file, "sha256": self.sha256, "total": self.total,
                "selected": self.selected}

    @property
    def record_key(self) -> str:
        """Where `eval --save` records it in a level's accuracy: the kind ("hellaswag"), or for kinds whose files
        are many datasets the kind and the file's stem ("exam:mmlu"), so one does not replace another."""
        from .tasks import KINDS

        if not KINDS[self.kind].many_sets:
            return self.kind
        return f"{self.kind}:{re.sub(r'[^A-Za-z0-9_.-]', '_', Path(self.file).stem)[:64]}"


@dataclass
class LevelScore:
    """One level (file) on one task set."""

    level: str
    file: str
    size_bytes: int
    bits_per_weight: float
    task: TaskSet
    items: list[int] = field(default_factory=list)  # task numbers scored, in order
    right: list[bool] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    replies: list[dict[str, Any]] = field(default_factory=list)  # GSM8K: what the model wrote, per item
    seconds: float = 0.0
    complete: bool = False  # False: interrupted (the numbers cover what was scored)

    def add(self, result: Scored | Answered | Skipped) -> None:
        if isinstance(result, Skipped):
            self.skipped.append(result)
            return
        self.items.append(result.number)
        self.right.append(result.correct)
        if isinstance(result, Answered):
            self.replies.append({"task": result.number, "reply": result.reply, "predicted": result.predicted,
                                 **({"reasoning": result.reasoning} if result.reasoning is not None else {})})

    @property
    def n(self) -> int:
        return len(self.right)

    @property
    def correct(self) -> int:
        return sum(self.right)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    @property
    def stderr(self) -> float | None:
        p = self.accuracy
        return math.sqrt(p * (1 - p) / (self.n - 1)) if p is not None and self.n > 1 else None

    def accuracy_text(self) -> str:
        """The accuracy in % as llama-perplexity prints it (its number of decimals)."""
        return "-" if self.accuracy is None else f"{100.0 * self.correct / self.n:.{self.task.digits}f}"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "file": self.file, "size_bytes": self.size_bytes,
                "bits_per_weight": self.bits_per_weight, "task": self.task.kind, "task_file": self.task.file,
                "tasks": self.n, "correct": self.correct, "accuracy": self.accuracy, "stderr": self.stderr,
                "skipped": [{"task": s.number, "why": s.why} for s in self.skipped],
                "seconds": round(self.seconds, 3), "complete": self.complete,
                "items": self.items, "right": "".join("1" if r else "0" for r in self.right),
                **({"replies": self.replies} if self.replies else {})}


@dataclass(frozen=True)
class Paired:
    """A level against the reference level on the items both scored."""

    reference: str
    n: int
    diff: float  # accuracy difference (level - reference), a fraction
    stderr: float

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return "no items in common"
        if abs(self.diff) <= 2 * self.stderr:
            return "no measurable loss" if self.diff <= 0 else "no measurable difference"
        sign = "−" if self.diff < 0 else "+"
        return f"{sign}{abs(self.diff) * 100:.1f} ± {self.stderr * 100:.1f} points"

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "tasks": self.n, "diff": self.diff, "stderr": self.stderr,
                "verdict": self.verdict}


def paired(level: LevelScore, reference: LevelScore) -> Paired:
    ref = dict(zip(reference.items, reference.right))
    d = [int(r) - int(ref[i]) for i, r in zip(level.items, level.right) if i in ref]
    n = len(d)
    mean = sum(d) / n if n else 0.0
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return Paired(reference=reference.level, n=n, diff=mean, stderr=math.sqrt(var / n) if n else 0.0)


@dataclass
class EvalReport:
    model: str
    scores: list[LevelScore]  # per task set, levels from most to fewest bits
    created: str = ""

    def task_sets(self) -> list[TaskSet]:
        seen: dict[str, TaskSet] = {}
        for s in self.scores:
            seen.setdefault(s.task.kind + s.task.sha256, s.task)
        return list(seen.values())

    def levels_of(self, task: TaskSet) -> list[LevelScore]:
        return [s for s in self.scores if s.task == task]

    def paired(self, score: LevelScore) -> Paired | None:
        """`score` against the reference of its task set (None for the reference itself, or alone)."""
        rows = [s for s in self.levels_of(score.task) if s.n]
        if len(rows) < 2 or rows[0] is score or score.n == 0:
            return None
        return paired(score, rows[0])

    @property
    def complete(self) -> bool:
        return all(s.complete for s in self.scores)

    def to_dict(self) -> dict[str, Any]:
        out = []
        for s in self.scores:
            d = s.to_dict()
            p = self.paired(s)
            d["paired"] = p.to_dict() if p else None
            out.append(d)
        return {"schema": "edgellm.eval", "version": 1, "model": self.model, "created": self.created,
                "complete": self.complete, "task_sets": [t.to_dict() for t in self.task_sets()], "results": out}
