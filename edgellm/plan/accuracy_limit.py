"""Which levels lose at most POINTS of task accuracy: `plan --max-loss`, from what `eval --save` recorded.

Each task's best level is the one with the highest recorded accuracy; a level is within the limit when, on
every task considered (all recorded ones, or the one named), it has a record of the same task file (its
sha256 as the best level's) and its accuracy is at most POINTS percentage points below the best. A level
without such a record is not eligible.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..store.models import ModelFile

_SLACK = 1e-9  # accuracies are rounded fractions: a loss of exactly POINTS counts as within


@dataclass(frozen=True)
class AccuracyLimit:
    eligible: frozenset[str]  # levels within the limit on every task
    tasks: tuple[str, ...]  # the tasks considered
    notes: tuple[str, ...]  # levels left out for want of a record

    def describe(self, points: float) -> str:
        return f"recorded {', '.join(self.tasks)} accuracy within {points:g} points of the best level"


def accuracy_limit(files: tuple[ModelFile, ...], points: float, task: str | None = None) -> AccuracyLimit:
    recorded = sorted({k for f in files for k in (f.accuracy or {})})
    if not recorded:
        raise UsageError("--max-loss needs task accuracy recorded in the package manifest: run "
                         "`edgellm eval PACKAGE --hellaswag FILE --save` (or --exam, --gsm8k ...) first")
    tasks = tuple(recorded) if task is None else tuple(k for k in recorded if k == task or k.startswith(task + ":"))
    if not tasks:  # a kind names each of its files' records ("exam": "exam:mmlu", "exam:ceval_val")
        raise UsageError(f"--max-loss-task {task}: no level has a recorded {task} accuracy "
                         f"(recorded: {', '.join(recorded)})")
    eligible = {f.level for f in files}
    notes = []
    for name in tasks:
        records = {f.level: (f.accuracy or {}).get(name) for f in files}
        best_level, best = max(((lv, r) for lv, r in records.items() if r), key=lambda lr: lr[1]["accuracy"])
        for level, r in records.items():
            if r is None or r.get("sha256") != best.get("sha256"):
                why = f"no recorded {name} accuracy" if r is None else f"its {name} accuracy recorded on another task file"
                notes.append(f"{level} has {why}: not eligible with --max-loss")
                eligible.discard(level)
            elif (best["accuracy"] - r["accuracy"]) * 100 > points + _SLACK:
                eligible.discard(level)
    return AccuracyLimit(frozenset(eligible), tasks, tuple(notes))
