"""`edgellm package`: one command from a checkpoint to a set of quantized GGUF files with a manifest."""

from __future__ import annotations

import json
import shlex
import threading
from pathlib import Path

import click

from .options import BYTE_SIZE, LORA, levels_per_pass

LEVELS_HELP = "Comma-separated quantization levels (e.g. Q8_0,Q4_K_M,Q2_K); `edgellm quantize --list` shows all."


class ProgressReporter:
    """Rich progress on stderr: one bar per level (tensors, ETA) and one for evaluation chunks."""

    def __init__(self) -> None:
        from ..progress import progress_bar

        self.progress = progress_bar("items", label_width=18)
        self.console = self.progress.console
        self.tasks: dict[str, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> ProgressReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _task(self, key: str, total: int | None, what: str = "") -> int:
        with self.lock:
            if key not in self.tasks:
                self.tasks[key] = self.progress.add_task(key, total=total, what=what)
            return self.tasks[key]

    # Reporter callbacks
    def stage(self, text: str) -> None:
        self.console.log(text)

    def level_start(self, level: str, total: int) -> None:
        self._task(level, total or None, "tensors")

    def tensor(self, level: str, index: int, total: int) -> None:
        self.progress.update(self._task(level, total, "tensors"), total=total, completed=index)

    def level_done(self, level: str, skipped: bool) -> None:
        task = self._task(level, 1, "")
        total = self.progress._tasks[task].total or 1
        self.progress.update(task, total=total, completed=total, what="unchanged, skipped" if skipped else "tensors")

    def chunks(self, what: str, done: int, total: int) -> None:
        self.progress.update(self._task(f"eval {what}", total, "chunks"), total=total, completed=done)

    def reporter(self):
        from ..store.package import Reporter

        return Reporter(self.stage, self.level_start, self.tensor, self.level_done, self.chunks)


def print_levels_table(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..fsutil import human_bytes

    has_q = any(r.get("ppl") is not None for r in rows)
    t = Table(title=title)
    for col in ("level", "file", "size", "bpw") + (("PPL", "KLD") if has_q else ()):
        t.add_column(col, justify="left" if col in ("level", "file") else "right")
    for r in rows:
        cells = [r["level"], r["file"], human_bytes(r["bytes"]), f"{r['bits_per_weight']:.2f}"]
        if has_q:
            cells += ["—" if r.get("ppl") is None else f"{r['ppl']:.3f}",
                      "—" if r.get("kld") is None else f"{r['kld']:.4f}"]
        t.add_row(*cells)
    Console().print(t)


@click.command("package")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Package folder (created if missing; re-running resumes and skips unchanged files).")
@click.option("--levels", default=None, metavar="LIST", help=LEVELS_HELP + " Default: the usual published set.")
@click.option("--base", "base_type", type=click.Choice(["auto", "f16", "bf16", "f32"]), default="auto",
              show_default=True, help="Precision of the base GGUF the levels are made from (auto keeps the source's).")
@click.option("--imatrix", "imatrix_text", type=click.Path(path_type=Path), default=None, metavar="CALIB.txt",
              help="Calibration text: compute an importance matrix on it and quantize with it.")
@click.option("--eval", "eval_text", type=click.Path(path_type=Path), default=None, metavar="TEXT",
              help="Evaluation text: record each file's perplexity and KL divergence from the base.")
@click.option("--ctx", "n_ctx", type=click.IntRange(64, 32768), default=512, show_default=True,
              help="Chunk size in tokens for --imatrix and --eval (as llama-perplexity's -c).")
@click.option("--name", default=None, help="Model name for file names and the card (default: from the model).")
@levels_per_pass
@click.option("--allow-requantize", is_flag=True, help="Accept an already-quantized GGUF as the base.")
@click.option("--lora", "loras", type=LORA, multiple=True, metavar="ADAPTER_DIR[:SCALE]",
              help="A PEFT LoRA adapter folder merged into the checkpoint's weights at SCALE (default 1) before "
                   "quantizing; repeatable.")
@click.option("--split-max-size", "split_max_size", type=BYTE_SIZE, default=None, metavar="SIZE",
              help="Write each level larger than SIZE (e.g. 40G: the Hugging Face Hub takes files up to 50 GB) in "
                   "parts of at most SIZE of tensors, <name>-<LEVEL>-00001-of-0000N.gguf ..., as llama-gguf-split does.")
@click.option("--projector-type", type=click.Choice(("f16", "q8_0", "none")), default=None,
              help="For a vision checkpoint: tensor type of the projector (mmproj) GGUF written once beside the "
                   "levels [default: f16]; none packages the text model alone.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON instead of a table.")
def package(src: Path, out_dir: Path, levels: str | None, base_type: str, imatrix_text: Path | None,
            eval_text: Path | None, n_ctx: int, name: str | None, jobs: int, allow_requantize: bool,
            loras: tuple, split_max_size: int | None, projector_type: str | None, as_json: bool) -> int:
    """Convert SRC (a Hugging Face checkpoint folder, a float GGUF, or a hub repo id to pull first, as
    `edgellm pull` does) and quantize it to several levels.

    Writes <name>-<LEVEL>.gguf files, manifest.json (sizes, bits per weight, sha256, per-layer bytes,
    quality, merged LoRA adapters) and a README.md model card into the output folder.
    """
    from ..hub.download import package_source
    from ..store.package import PackageOptions, build_package, levels_summary
    from ..quantize.levels import DEFAULT_LEVELS, parse_levels
    from ..quantize.peft import open_adapter

    chosen = parse_levels(DEFAULT_LEVELS if levels is None else levels)  # before any download; "" names none
    for path, _ in loras:  # a bad adapter too (whether it fits the checkpoint is checked once that is here)
        open_adapter(path)
    # A hub repo id is pulled first, only what these levels need (a GGUF repo may need nothing packaged).
    named = None if levels is None else [lv.name for lv in chosen]
    got = package_source(str(src), named, say=lambda line: click.echo(line, err=True))
    if got.note:
        click.echo(got.note, err=True)
    if got.registered is not None:
        click.echo(str(got.registered))
        return 0
    source = got.path
    opts = PackageOptions(
        levels=chosen, base_type=base_type, imatrix_text=imatrix_text,
        eval_text=eval_text, n_ctx=n_ctx, allow_requantize=allow_requantize, jobs=jobs,
        name=name or got.name,  # a pulled snapshot's folder is named after a commit
        loras=loras, split_max_size=split_max_size or 0, projector_type=projector_type,
    )
    opts.command = shlex.join(
        ["edgellm", "package", str(src), "-o", str(out_dir), "--levels", ",".join(lv.name for lv in opts.levels),
         "--base", base_type, "--ctx", str(n_ctx)]
        + (["--imatrix", str(imatrix_text)] if imatrix_text else [])
        + (["--eval", str(eval_text)] if eval_text else [])
        + (["--allow-requantize"] if allow_requantize else [])
        + [arg for path, scale in loras for arg in ("--lora", f"{path}:{scale:g}")]
        + (["--split-max-size", f"{split_max_size >> 20}M"] if split_max_size else [])
        + (["--projector-type", projector_type] if projector_type else [])
    )
    with ProgressReporter() as ui:
        result = build_package(source, out_dir, opts, ui.reporter())
    if as_json:
        click.echo(json.dumps(result.manifest.to_dict(), indent=2))
    else:
        print_levels_table(levels_summary(result.manifest), f"{out_dir} ({len(result.made)} made, "
                           f"{len(result.skipped)} unchanged)")
    return 0
