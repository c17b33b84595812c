"""Speed and quality per quant level: the numbers behind "which file should I use?".

Speed is measured the way llama-bench measures it, through the same runtime that `edgellm run` and the chat
use, each file in a child process (so peak RAM is that file's own, and a file that crashes llama.cpp
does not take the others down):

- pp: `n_prompt` random tokens evaluated as one prompt (batch 2048, micro-batch 512), KV cache cleared first;
- tg: `n_gen` tokens generated one at a time after a 1-token prompt (greedy sampling, end-of-turn ignored),
  KV cache cleared first — the full per-token path a chat pays for, sampling and detokenizing included;
- one warm-up run of each is discarded; the rest give mean ± stddev (tokens per second);
- TTFT: a one-line chat question through the chat template, from the call to the first token, cache cleared.

Quality is perplexity on a text (chunked like llama-perplexity; see `edgellm.engine.quality`) and, when the
package holds a 16/32-bit base file, KL divergence, Δp and same-top-token rate against that base.

With LoRA adapters (`loras`), every file is measured twice: as it is, and with the adapters applied (a row
whose `lora` names them). The adapter rows' KL divergence is from the base without adapters: how far the
fine-tune moves the model, quantization included.

Each row names where its layers ran: `n_gpu_layers` of `n_layers` + 1, on the GPUs in `devices` (ggml's names).

The JSON report (`BenchReport.to_dict`, schema "edgellm.bench", version 1) is stable: fields are only added.
"""

from __future__ import annotations

import math
import multiprocessing
import platform
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import EdgeError, UsageError
from ..engine.measure import pp_tg
from ..store.models import ModelFile, ModelRef
from ..procmem import peak_rss_bytes

SCHEMA, VERSION = "edgellm.bench", 1
BASE_LEVELS = ("F32", "BF16", "F16")  # files that can serve as the reference for KL divergence
TTFT_QUESTION = "What is the capital of France? Answer in one sentence."

METHOD = (
    "pp: {p} random tokens as one prompt, KV cache cleared before each run; "
    "tg: {n} tokens generated one by one after a 1-token prompt (greedy, end-of-turn ignored), KV cache cleared; "
    "1 warm-up run discarded, mean ± stddev over {r} runs; each file in its own process, {threads} threads"
)


@dataclass(frozen=True)
class BenchConfig:
    n_prompt: int = 512
    n_gen: int = 128
    reps: int = 5
    ngl: int | None = None  # None: what the planner chooses
    threads: int | None = None
    n_ctx: int | None = None  # None: just enough for the longer of the two tests
    quality_text: str | None = None  # None: no quality test
    quality_ctx: int = 512
    rpc: str | None = None  # HOST:PORT,... of `edgellm worker`s (ngl: the layers on them)
    devices: tuple[str, ...] | None = None  # --device: these GPUs alone (None: every one)
    loras: tuple[tuple[str, float], ...] = ()  # LoRA adapter files and scales: each file measured with and without
    drafts: tuple[str, ...] = ()  # --draft modes: each file's speed-up with each, on a repeating and a free-form task

    def context(self) -> int:
        return self.n_ctx or max(self.n_prompt, self.n_gen + 1, 256) + 16


@dataclass
class Measure:
    mean: float
    std: float
    samples: list[float]

    @classmethod
    def of(cls, samples: list[float]) -> Measure:
        std = statistics.stdev(samples) if len(samples) > 1 else 0.0
        return cls(statistics.fmean(samples), std, samples)

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f}"


@dataclass
class FileResult:
    file: str
    level: str
    size_bytes: int
    bits_per_weight: float
    error: str | None = None
    pp: Measure | None = None  # prompt tokens/s
    tg: Measure | None = None  # generated tokens/s
    ttft_s: float | None = None
    load_s: float | None = None
    peak_rss_bytes: int | None = None
    n_threads: int | None = None
    n_ctx: int | None = None
    n_layers: int | None = None
    n_gpu_layers: int | None = None
    ppl: float | None = None
    ppl_stderr: float | None = None
    kld: float | None = None
    kld_p99: float | None = None
    delta_p: float | None = None
    same_top: float | None = None
    lora: str | None = None  # the LoRA adapters applied ("name" or "name ×scale"), None for the file alone
    devices: list[str] | None = None  # the GPUs the offloaded layers ran on (ggml device names: CUDA0, Vulkan0)
    # per --draft and task: speed-up over plain decoding, acceptance rate, tokens per checking step
    speculation: list[dict] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        """The level, and the adapters when applied: "Q4_K_M", "Q4_K_M + my-tune"."""
        return self.level if self.lora is None else f"{self.level} + {self.lora}"


@dataclass
class BenchReport:
    model: str
    config: BenchConfig
    method: str
    machine: dict[str, Any]
    results: list[FileResult]
    base_level: str | None = None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    edgellm_version: str = __version__

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if not r.ok]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"].pop("quality_text")
        d["config"]["quality"] = self.config.quality_text is not None
        return {"schema": SCHEMA, "version": VERSION, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchReport:
        if d.get("schema") != SCHEMA:
            raise EdgeError(f"not an edgellm bench report (schema {d.get('schema')!r})")
        cfg = {k: v for k, v in d["config"].items() if k in BenchConfig.__dataclass_fields__}
        cfg["loras"] = tuple((str(p), float(s)) for p, s in cfg.get("loras", ()))  # JSON has lists
        cfg["drafts"] = tuple(cfg.get("drafts", ()))
        results = []
        for r in d["results"]:
            r = dict(r)
            for key in ("pp", "tg"):
                r[key] = Measure(**r[key]) if r.get(key) else None
            results.append(FileResult(**r))
        rest = {k: d[k] for k in ("base_level", "created", "edgellm_version") if k in d}
        return cls(model=d["model"], config=BenchConfig(**cfg), method=d["method"], machine=d["machine"],
                   results=results, **rest)


def default_quality_text() -> str:
    """A small English + Chinese text shipped with edgellm (a few chunks of 512 tokens)."""
    return resources.files("edgellm").joinpath("data/quality.txt").read_text(encoding="utf-8")


# --- speed, in a child process -------------------------------------------------------------------------


def _speed(path: str, cfg: BenchConfig, loras: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    """Runs in the child: load, warm up, time pp and tg, TTFT. Returns plain values (or raises)."""
    from ..engine.launch import open_engine
    from ..engine.runtime import Sampling

    engine = open_engine(path, ctx=cfg.context(), ngl=cfg.ngl, devices=cfg.devices, threads=cfg.threads, rpc=cfg.rpc,
                         loras=[(Path(p), s) for p, s in loras])
    with engine:
        out: dict[str, Any] = dict(pp_tg(engine, cfg.n_prompt, cfg.n_gen, cfg.reps))
        for _ in engine.stream_chat([{"role": "user", "content": TTFT_QUESTION}], Sampling(temperature=0.0, max_tokens=1)):
            pass
        out["ttft_s"] = engine.last_stats.ttft_s
        if cfg.drafts:
            out["speculation"] = _speculation(engine, cfg)
        info = engine.info
        out.update(load_s=info.load_s, n_threads=info.n_threads, n_ctx=info.n_ctx, n_layers=info.n_layers,
                   n_gpu_layers=info.n_gpu_layers, devices=list(info.devices))
    out["peak_rss_bytes"] = peak_rss_bytes()
    return out


def _speculation(engine, cfg: BenchConfig) -> list[dict]:
    """Each --draft's speed-up over plain decoding on each task (engine.measure.SPEC_TASKS)."""
    from ..engine.draft import for_plan
    from ..engine.measure import SPEC_TASKS, speculation_speedup

    rows = []
    for mode in cfg.drafts:
        spec, notes = for_plan(engine.info.plan, mode)
        if spec is None:
            continue
        try:
            for task in SPEC_TASKS:
                rows.append({**speculation_speedup(engine, spec, task, max(cfg.n_gen, 32), cfg.reps), "mode": mode,
                             "notes": list(notes)})
        finally:
            spec.close()
    return rows


def _child(path: str, cfg: BenchConfig, loras: tuple[tuple[str, float], ...], conn) -> None:
    try:
        conn.send(("ok", _speed(path, cfg, loras)))
    except EdgeError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # reported as that file's failure; the other files still run
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def measure_speed(path: Path, cfg: BenchConfig, loras: tuple[tuple[str, float], ...] = ()) -> dict[str, Any]:
    """Speed of one file (with the LoRA adapters given), measured in a fresh process. Raises EdgeError when it
    fails there."""
    mp = multiprocessing.get_context("spawn")
    recv, send = mp.Pipe(duplex=False)
    proc = mp.Process(target=_child, args=(str(path), cfg, loras, send), daemon=True)
    proc.start()
    send.close()
    try:
        kind, payload = recv.recv()
    except EOFError:
        proc.join()
        raise EdgeError(f"the benchmark process died (exit code {proc.exitcode})") from None
    finally:
        proc.join()
    if kind == "error":
        raise EdgeError(payload)
    return payload


# --- whole runs ----------------------------------------------------------------------------------------


def _base_file(files: list[ModelFile]) -> ModelFile | None:
    for level in BASE_LEVELS:
        for f in files:
            if f.level.upper() == level:
                return f
    return None


def _lora_label(loras: tuple[tuple[str, float], ...]) -> str:
    from ..engine.adapters import read_adapter

    return ", ".join(read_adapter(Path(path), scale).label for path, scale in loras)


def select_files(model: ModelRef, levels: list[str] | None) -> list[ModelFile]:
    if not levels:
        return list(model.files)
    return [model.file(level) for level in levels]


def _check_config(cfg: BenchConfig) -> None:
    if cfg.reps < 1:
        raise UsageError("--reps must be at least 1")
    if cfg.n_prompt < 0 or cfg.n_gen < 0 or cfg.n_prompt + cfg.n_gen == 0:
        raise UsageError("-p and -n must not be negative, and not both 0")


def run_bench(
    model: ModelRef,
    cfg: BenchConfig,
    levels: list[str] | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> BenchReport:
    """Benchmark every selected file of `model`; failures are recorded per file, not raised."""
    from ..plan.hardware import detect

    files = select_files(model, levels)
    _check_config(cfg)
    base = _base_file(list(model.files))
    with_quality = cfg.quality_text is not None
    variants = [(), cfg.loras] if cfg.loras else [()]
    runs = [(f, lora) for f in files for lora in variants]
    total = len(runs) * (2 if with_quality else 1) + (1 if with_quality and base else 0)
    step = (lambda msg: on_step(msg, total)) if on_step else (lambda _msg: None)
    label = _lora_label(cfg.loras)
    results = [
        FileResult(file=f.path.name, level=f.level, size_bytes=f.size, bits_per_weight=round(f.info.bits_per_weight, 3),
                   lora=label if lora else None)
        for f, lora in runs
    ]
    for (f, lora), r in zip(runs, results):
        step(f"speed {r.label}")
        try:
            s = measure_speed(f.path, cfg, lora)
        except EdgeError as exc:
            r.error = str(exc)
            continue
        r.pp = Measure.of(s.pop("pp")) if "pp" in s else None
        r.tg = Measure.of(s.pop("tg")) if "tg" in s else None
        for key, value in s.items():
            setattr(r, key, value)

    if with_quality:
        _quality(runs, results, base, cfg, step)
    hw = detect()
    machine = {"summary": hw.summary(), "id": hw.machine_id, "platform": platform.platform(), "python": platform.python_version()}
    threads = next((r.n_threads for r in results if r.n_threads), cfg.threads)
    method = METHOD.format(p=cfg.n_prompt, n=cfg.n_gen, r=cfg.reps, threads=threads)
    return BenchReport(model=model.name, config=cfg, method=method, machine=machine, results=results,
                       base_level=base.level if base and with_quality else None)


def _quality(runs: list[tuple[ModelFile, tuple]], results: list[FileResult], base: ModelFile | None, cfg: BenchConfig,
             step) -> None:
    from ..engine import quality

    text = cfg.quality_text
    ok = [(f, lora, r) for (f, lora), r in zip(runs, results) if r.ok]
    if base is None:
        for f, lora, r in ok:
            step(f"perplexity {r.label}")
            try:
                p = quality.perplexity(f.path, text, n_ctx=cfg.quality_ctx, n_threads=cfg.threads, loras=lora)
            except EdgeError as exc:
                r.error = str(exc)
                continue
            r.ppl, r.ppl_stderr = p.ppl, p.ppl_stderr
        return
    step(f"base log-probs {base.level}")
    with quality.BaseLogProbs(base.path, text, n_ctx=cfg.quality_ctx, n_threads=cfg.threads) as ref:
        for f, lora, r in ok:
            step(f"KL divergence {r.label}")
            try:
                k = ref.compare(f.path, loras=lora)
            except EdgeError as exc:
                r.error = str(exc)
                continue
            r.ppl, r.ppl_stderr = k.ppl.ppl, k.ppl.ppl_stderr
            r.kld, r.kld_p99, r.delta_p, r.same_top = k.kld, k.kld_p99, k.delta_p, k.same_top


# --- comparing two runs --------------------------------------------------------------------------------

COMPARED = ("pp", "tg", "ttft_s", "ppl", "kld")


def _value(r: FileResult, key: str) -> float | None:
    v = getattr(r, key)
    return v.mean if isinstance(v, Measure) else v


def compare(a: BenchReport, b: BenchReport) -> list[dict[str, Any]]:
    """Rows per level present in both runs: each metric in A and B and the ratio B/A."""
    by_level = {r.label: r for r in a.results}
    rows = []
    for rb in b.results:
        ra = by_level.get(rb.label)
        if ra is None:
            continue
        row: dict[str, Any] = {"level": rb.label}
        for key in COMPARED:
            va, vb = _value(ra, key), _value(rb, key)
            ratio = vb / va if va and vb is not None and math.isfinite(va) and va != 0 else None
            row[key] = {"a": va, "b": vb, "ratio": ratio}
        rows.append(row)
    if not rows:
        raise UsageError("the two reports have no level in common")
    return rows


# --- the Pareto front, for the plot ----------------------------------------------------------------------


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both size (smaller) and value."""
    better = (lambda x, y: x >= y) if higher_is_better else (lambda x, y: x <= y)
    front = []
    for i, (size, value) in enumerate(points):
        dominated = any(
            j != i and s <= size and better(v, value) and (s < size or v != value)
            for j, (s, v) in enumerate(points)
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])
