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
CHOICE_CTX = 512  # llama-perplexity's default -c
CHAT_CTX = 2048  # an exam question or word problem with its reply


def _task_option(kind: str, default: str):
    return click.option(f"--{kind}-tasks", f"{kind.replace('-', '_')}_tasks", type=TASKS,
                        help=f"How many tasks of the {kind} file to score, chosen as llama-perplexity chooses "
                             f"them (0: all) [default: {default}].")


@click.command("eval")
@click.argument("model", required=False)
@click.option("--hellaswag", "hellaswag", metavar="FILE",
              help="HellaSwag tasks: 6 lines each (context, gold ending 0-3, 4 endings), llama-perplexity's format.")
@_task_option("hellaswag", "--limit, else 400")
@click.option("--winogrande", "winogrande", metavar="FILE",
              help="WinoGrande tasks: CSV lines index,sentence with _,option 1,option 2,answer (1 or 2).")
@_task_option("winogrande", "--limit, else all")
@click.option("--multiple-choice", "multiple_choice", metavar="FILE",
              help="Multiple-choice tasks in llama.cpp's binary format (its MMLU, ARC, TruthfulQA files).")
@_task_option("multiple-choice", "--limit, else all")
@click.option("--exam", "exam", metavar="FILE",
              help="Exam questions (C-Eval, CMMLU, MMLU): CSV with question,A,B,C,D,answer columns, or JSONL (also "
                   "MMLU's question, choices, answer index); scored by the answer letter's log-probability as the "
                   "first token of the reply under the model's chat template.")
@click.option("--gsm8k", "gsm8k", metavar="FILE",
              help="Word problems as GSM8K's JSONL (question, answer ending '#### NUMBER'): answered greedily "
                   "through the chat template; right when the reply's last number equals the gold one.")
@click.option("--max-tokens", type=Range(int, 1, 4096), default=256, show_default=True,
              help="GSM8K: the longest reply (in tokens, a thinking model's reasoning included).")
@click.option("--think/--no-think", default=None,
              help="GSM8K: switch a thinking model's reasoning on or off where its chat template has the switch "
                   "(default: the template's choice); only the answer after it is graded. Exams are asked "
                   "without thinking (the letter must come first).")
@click.option("--limit", type=TASKS, help="Tasks to score of each file: for --exam and --gsm8k the first N; for the "
                                          "others the fixed subset llama-perplexity's --*-tasks N picks (a seeded "
                                          "draw, the same every run).")
@click.option("--levels", help="Only these levels of a package, comma-separated (e.g. Q8_0,Q4_K_M).")
@click.option("-c", "--ctx", "n_ctx", type=CONTEXT,
              help="Tokens per sequence (llama-perplexity's -c); the context holds 4 sequences, or as many as the "
                   "most choices a task has [default: 512; --exam and --gsm8k: 2048 in one sequence].")
@click.option("--threads", type=THREADS, help=f"CPU threads, 1 to {THREADS.high} [default: physical cores].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (with which tasks each level got right).")
@click.option("-o", "--output", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report.")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), help="Write a Markdown table.")
@click.option("--save", "save_manifest", is_flag=True, help="Record the accuracies in the package manifest.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE.png",
              help="Draw accuracy against file size per level, with standard-error bars.")
def eval_(model, hellaswag, hellaswag_tasks, winogrande, winogrande_tasks, multiple_choice, multiple_choice_tasks,
          exam, gsm8k, max_tokens, think, limit, levels, n_ctx, threads, as_json, json_path, md_path, save_manifest,
          plot_path) -> int:
    """Accuracy of MODEL (a GGUF file or a package: every level, on the same tasks) on task files in the
    formats llama-perplexity reads, with the same scores, and on exams and word problems asked through the
    chat template. With no MODEL, the default model. A FILE may be a dataset's file on Hugging Face,
    hf://OWNER/NAME[@REV]/PATH, or ModelScope, ms://OWNER/NAME[@REV]/PATH (fetched into the hub's cache;
    offline, the cached copy).

    \b
    edgellm eval pkg/ --hellaswag hellaswag_val_full.txt --limit 400
    edgellm eval model.gguf --winogrande winogrande-debiased-eval.csv --json
    edgellm eval pkg/ --exam mmlu_college_biology.csv --gsm8k gsm8k_test.jsonl --limit 100 --save
    """
    from ..eval import tasks as T
    from ..eval.report import print_tables, save_into_manifest, to_markdown
    from ..eval.results import EvalReport
    from ..store.models import resolve_model

    asked = [(T.HELLASWAG, hellaswag, hellaswag_tasks), (T.WINOGRANDE, winogrande, winogrande_tasks),
             (T.MULTIPLE_CHOICE, multiple_choice, multiple_choice_tasks), (T.EXAM, exam, None), (T.GSM8K, gsm8k, None)]
    asked = [(kind, _task_path(path), n if n is not None else limit) for kind, path, n in asked if path is not None]
    if not asked:
        raise UsageError("give a task file: --hellaswag, --winogrande, --multiple-choice, --exam or --gsm8k FILE")
    files = [T.load(kind, path, n) for kind, path, n in asked]  # every file checked before a model loads
    for f in files:
        if f.note:
            click.echo(f"edgellm: {f.note}", err=True)
    ref = resolve_model(model)
    chosen = _levels(ref, levels)
    if save_manifest and not Path(ref.source).is_dir():
        raise UsageError(f"--save needs a package folder; {ref.source} is a single file")

    report = EvalReport(model=ref.name, scores=[],
                        created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    interrupted = False
    try:
        _run(report, files, chosen, n_ctx, threads, max_tokens, think)
    except KeyboardInterrupt:
        interrupted = True

    if save_manifest and not interrupted:
        save_into_manifest(report, Path(ref.source))
    for path, text in ((json_path, lambda: json.dumps(report.to_dict(), indent=2) + "\n"),
                       (md_path, lambda: to_markdown(report))):
        if path:
            with atomic_output(path) as tmp:
                tmp.write_text(text())
    if plot_path:
        from ..eval.plot import plot_accuracy

        plot_accuracy(report, plot_path)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_tables(report)
    if interrupted:
        click.echo("edgellm: interrupted: the table holds what was scored so far", err=True)
        return 130
    return 0


def _task_path(value: str) -> Path:
    """A task file: a local path, or a file of a dataset on Hugging Face (hf://OWNER/NAME/PATH) or ModelScope
    (ms://OWNER/NAME/PATH), fetched into the hub's cache (the cached copy offline)."""
    from ..hub.datasets import dataset_file, is_dataset_ref

    if not is_dataset_ref(value):
        return Path(value)
    return dataset_file(value, say=lambda line: click.echo(f"edgellm: {line}", err=True))


def _levels(ref, value: str | None) -> list:
    if value is None:
        return list(ref.files)
    wanted = [v.strip() for v in value.split(",") if v.strip()]
    if not wanted:
        raise UsageError("--levels is empty: give levels like Q8_0,Q4_K_M, or leave it out for all of them")
    return [ref.file(level) for level in wanted]


def _run(report, files, chosen, n_ctx: int | None, threads: int | None, max_tokens: int, think: bool | None) -> None:
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

                if f.kind.chat:
                    _ask_file(mf.path, f, score, n_ctx or CHAT_CTX, threads, max_tokens, think, shown)
                else:
                    _score_file(mf.path, f, score, n_ctx or CHOICE_CTX, threads, shown)


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


def _ask_file(path: Path, f, score, n_ctx: int, threads: int | None, max_tokens: int, think: bool | None, shown) -> None:
    from ..engine.launch import open_engine
    from ..eval.ask import ChatAsker
    from ..eval.tasks import EXAM

    start = time.perf_counter()
    try:
        with open_engine(path, ctx=n_ctx, threads=threads) as engine:
            asker = ChatAsker(engine, max_tokens, think)
            items = asker.exam if f.kind is EXAM else asker.gsm8k
            for result in items(f.tasks, on_item=shown):
                score.add(result)
    finally:
        score.seconds = time.perf_counter() - start
    score.complete = True
