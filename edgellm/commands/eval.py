"""`edgellm eval`: task accuracy per quant level, scored as llama-perplexity scores its task modes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from ..errors import UsageError
from ..fsutil import atomic_output
from .options import C_INT_MAX, CONTEXT, THREADS, Range

TASKS = Range(int, 0, C_INT_MAX)


def _task_option(kind: str, default: str):
    return click.option(f"--{kind}-tasks", f"{kind.replace('-', '_')}_tasks", type=TASKS,
                        help=f"How many tasks of the {kind} file to score, chosen as llama-perplexity chooses "
                             f"them (0: all) [default: {default}].")


@click.command("eval")
@click.argument("model", required=False)
@click.option("--hellaswag", "hellaswag", type=click.Path(path_type=Path), metavar="FILE",
              help="HellaSwag tasks: 6 lines each (context, gold ending 0-3, 4 endings), llama-perplexity's format.")
@_task_option("hellaswag", "--limit, else 400")
@click.option("--winogrande", "winogrande", type=click.Path(path_type=Path), metavar="FILE",
              help="WinoGrande tasks: CSV lines index,sentence with _,option 1,option 2,answer (1 or 2).")
@_task_option("winogrande", "--limit, else all")
@click.option("--multiple-choice", "multiple_choice", type=click.Path(path_type=Path), metavar="FILE",
              help="Multiple-choice tasks in llama.cpp's binary format (its MMLU, ARC, TruthfulQA files).")
@_task_option("multiple-choice", "--limit, else all")
@click.option("--limit", type=TASKS, help="Tasks to score of each file (the fixed subset llama-perplexity's "
                                          "--*-tasks N picks: a seeded draw, the same every run).")
@click.option("--levels", help="Only these levels of a package, comma-separated (e.g. Q8_0,Q4_K_M).")
@click.option("-c", "--ctx", "n_ctx", type=CONTEXT, default=512, show_default=True,
              help="Tokens per sequence (llama-perplexity's -c); the context holds 4 sequences, or as many as the "
                   "most choices a task has.")
@click.option("--threads", type=THREADS, help=f"CPU threads, 1 to {THREADS.high} [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (with which tasks each level got right).")
@click.option("-o", "--output", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown table.")
@click.option("--save", "save_manifest", is_flag=True, help="Record the accuracies in the package manifest.")
def eval_(model, hellaswag, hellaswag_tasks, winogrande, winogrande_tasks, multiple_choice, multiple_choice_tasks,
          limit, levels, n_ctx, threads, as_json, json_path, md_path, save_manifest) -> int:
    """Accuracy of MODEL (a GGUF file or a package: every level, on the same tasks) on task files in the
    formats llama-perplexity reads, with the same scores. With no MODEL, the default model.

    \b
    edgellm eval pkg/ --hellaswag hellaswag_val_full.txt --limit 400
    edgellm eval model.gguf --winogrande winogrande-debiased-eval.csv --json
    """
    from ..eval import tasks as T
    from ..eval.report import print_tables, save_into_manifest, to_markdown
    from ..eval.results import EvalReport
    from ..store.models import resolve_model

    asked = [(T.HELLASWAG, hellaswag, hellaswag_tasks), (T.WINOGRANDE, winogrande, winogrande_tasks),
             (T.MULTIPLE_CHOICE, multiple_choice, multiple_choice_tasks)]
    asked = [(kind, path, n if n is not None else limit) for kind, path, n in asked if path is not None]
    if not asked:
        raise UsageError("give a task file: --hellaswag FILE, --winogrande FILE or --multiple-choice FILE")
    files = [T.load(kind, path, n) for kind, path, n in asked]  # every file checked before a model loads
    ref = resolve_model(model)
    chosen = _levels(ref, levels)
    if save_manifest and not Path(ref.source).is_dir():
        raise UsageError(f"--save needs a package folder; {ref.source} is a single file")

    report = EvalReport(model=ref.name, scores=[],
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    interrupted = False
    try:
        _run(report, files, chosen, n_ctx, threads)
    except KeyboardInterrupt:
        interrupted = True

    if save_manifest and not interrupted:
        save_into_manifest(report, Path(ref.source))
    for path, text in ((json_path, lambda: json.dumps(report.to_dict(), indent=2) + "\n"),
                       (md_path, lambda: to_markdown(report))):
        if path:
            with atomic_output(path) as tmp:
                tmp.write_text(text())
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_tables(report)
    if interrupted:
        click.echo("edgellm: interrupted: the table holds what was scored so far", err=True)
        return 130
    return 0


def _levels(ref, value: str | None) -> list:
    if value is None:
        return list(ref.files)
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if not wanted:
        raise UsageError("--levels is empty: give levels like Q8_0,Q4_K_M, or leave it out for all of them")
    return [ref.file(level) for level in wanted]


def _run(report, files, chosen, n_ctx: int, threads: int | None) -> None:
    """Score every task file on every level, appending to `report` as it goes (so Ctrl-C keeps what is done)."""
    from ..eval.results import LevelScore, TaskSet
    from ..store.models import verify_file
    from ..progress import progress_bar
    from ..testhooks import pause_point

    sets = [TaskSet(kind=f.kind.name, title=f.kind.title, file=f.path.name, sha256=f.sha256, total=f.total,
                    selected=len(f.tasks), digits=f.kind.digits) for f in files]
    with progress_bar("items") as bar:
        for mf in chosen:
            verify_file(mf)
            for f, ts in zip(files, sets):
                score = LevelScore(level=mf.level, file=mf.path.name, size_bytes=mf.size,
                                   bits_per_weight=mf.info.bits_per_weight, task=ts)
                report.scores.append(score)
                task = bar.add_task(f"{mf.level} {f.kind.title}", total=len(f.tasks), what="")

                def shown(done: int, score=score, task=task) -> None:
                    bar.update(task, completed=done, what=f"acc {score.accuracy_text()}%" if score.n else "")
                    pause_point("eval.tasks", done)

                _score_file(mf.path, f, score, n_ctx, threads, shown)


def _score_file(path: Path, f, score, n_ctx: int, threads: int | None, shown) -> None:
    from ..eval.score import ChoiceScorer

    start = time.perf_counter()
    # sequences: 4, or the most choices a task of the file has (llama-perplexity's -np)
    most = max(len(t.choices) for t in f.tasks)
    try:
        with ChoiceScorer(path, n_ctx=n_ctx, n_parallel=most, n_threads=threads) as scorer:
            for result in scorer.score(f.kind, f.tasks, on_batch=shown):
                score.add(result)
    finally:
        score.seconds = time.perf_counter() - start
    score.complete = True
