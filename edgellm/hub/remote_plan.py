"""The plan for a hub repo before anything is downloaded: which level runs here, and what it costs on disk.

A repo of GGUF files: each candidate level's header is read by byte ranges (`headers`) and judged by
the planner as the downloaded file would be. Levels are tried from the largest down. One larger than the
memory usable here (RAM, plus the VRAM of a GPU llama.cpp can use) cannot fit and is not read; once one
fits and decodes as fast as the planner asks (--min-speed, 10 tok/s by default), the smaller ones are not
read either: the planner takes the highest-quality level that does, and the levels of one model differ
only in bits per weight. When none is that fast, every level that fits is read, and the fastest chosen. F16/BF16/F32 files are bases to quantize from,
chosen only where a repo has nothing else. A level split in several files is one level: the header of
every part is read, and the planner judges their sum.

A checkpoint repo: config.json and the safetensors headers give the converter's output exactly
(`quantize.estimate`), and each published level's size from its bits per weight; the planner chooses
among those estimates as among files.

    rp = plan_repo(open_repo("bartowski/Llama-3.2-1B-Instruct-GGUF"), hardware.detect())
    rp.level, rp.plan.explain(), rp.download, rp.fetched.bytes
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import EdgeError, NotEnoughSpace
from ..fsutil import human_bytes
from ..formats.gguf_checks import check
from ..plan.hardware import HardwareProfile
from .download import FLOAT_LEVELS, LevelChoice, Remote, gguf_levels, select_files
from .clients import HUBS, Say
from .headers import checkpoint_tensors, json_file, level_header
from .ranges import Fetched, reader_for
from ..store.models import ModelFile, ModelRef
from ..plan.planner import FIT_TEXT, MIN_CTX, LevelFit, Plan, make_plan, memory_budgets
from ..plan.speed import INTERACTIVE_TPS
from ..store.store import store_name

# Beside the weights: the tokenizer, whose size stands in for the vocabulary's in a converted header.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
HEADER_BESIDES_VOCAB = 64 << 10


@dataclass(frozen=True)
class PlanOptions:
    """What the user fixed for the planner (as `edgellm plan` and the commands that load take them)."""

    ctx: int | None = None
    kv_type: str | None = None
    min_ctx: int = MIN_CTX
    ngl: int | None = None
    threads: int | None = None
    min_speed: float | None = None  # decode tokens/s the level must reach (None: the planner's default; 0: quality first)

    @property
    def target_tps(self) -> float:
        return INTERACTIVE_TPS if self.min_speed is None else self.min_speed


@dataclass(frozen=True)
class LevelRow:
    level: str
    files: tuple[str, ...]  # in the repo; for a level made from a checkpoint, the file it would be
    size: int  # bytes (estimated for a level made from a checkpoint)
    fit: LevelFit | None = None  # the planner's verdict, where it judged the level
    note: str = ""  # why it was not judged, or what it is
    estimated: bool = False

    def to_dict(self) -> dict:
        return {"level": self.level, "files": list(self.files), "size": self.size, "estimated": self.estimated,
                "fit": self.fit.fit if self.fit else None, "plan": self.fit.to_dict() if self.fit else None,
                "note": self.note}  # fmt: skip


@dataclass(frozen=True)
class RepoPlan:
    repo_id: str
    hub: str
    kind: str  # "gguf" or "checkpoint"
    name: str  # the model's name in the store
    rows: tuple[LevelRow, ...]  # largest first
    plan: Plan | None  # the planner's plan for the chosen level; None when none fits
    why_not: str = ""  # when none fits: the planner's reason
    download: int = 0  # bytes to fetch for the chosen level (what the hub's cache lacks)
    build: int = 0  # bytes written to make the level from a checkpoint: the base (removed after) and the level
    keep: int = 0  # bytes the chosen level takes in the end (a checkpoint's download stays in the hub's cache too)
    source_size: int = 0  # a checkpoint repo: the bytes of what conversion reads
    headers_read: int = 0  # a GGUF repo: levels whose headers were read
    repo_size: int = 0
    fetched: Fetched = field(default_factory=Fetched)  # what reading the headers cost
    offline: str | None = None

    @property
    def level(self) -> str | None:
        return self.plan.level if self.plan else None

    @property
    def chosen(self) -> LevelRow | None:
        return next((r for r in self.rows if r.level == self.level), None)

    def cost_lines(self) -> list[str]:
        """What the choice costs on disk, and what planning it read, for the user."""
        lines = []
        row = self.chosen
        if row and self.kind == "gguf":
            files = f"{len(row.files)} file{'s' if len(row.files) != 1 else ''}"
            lines.append(f"On disk: {human_bytes(self.download)} to download ({self.level}, {files})" if self.download
                         else f"On disk: nothing to download ({self.level} is in the hub's cache)")  # fmt: skip
        elif row:
            base = self.rows[0]
            lines.append(
                f"On disk: {human_bytes(self.download)} to download (the checkpoint: {human_bytes(self.source_size)}, "
                f"kept in the hub's cache); {human_bytes(self.build)} written to make {self.level} (the {base.level} base, "
                f"removed after); {human_bytes(self.keep)} kept ({self.level}; sizes of levels made here are estimates)"
            )
        n = self.headers_read
        what = f"the headers of {n} level{'s' if n != 1 else ''}" if self.kind == "gguf" else "config.json and the safetensors headers"
        source = "the cache" if self.offline else self.hub_title
        lines.append(f"Read to plan: {human_bytes(self.fetched.bytes)} from {source} in {self.fetched.requests} request(s) "
                     f"({what}) of the repo's {human_bytes(self.repo_size)}")  # fmt: skip
        return lines

    @property
    def hub_title(self) -> str:
        return HUBS[self.hub].title

    def to_dict(self) -> dict:
        return {
            "repo_id": self.repo_id, "hub": self.hub, "kind": self.kind, "name": self.name, "level": self.level,
            "plan": self.plan.to_dict() if self.plan else None, "why_not": self.why_not or None,
            "levels": [r.to_dict() for r in self.rows], "download_bytes": self.download, "build_bytes": self.build,
            "keep_bytes": self.keep, "repo_bytes": self.repo_size, "read_bytes": self.fetched.bytes,
            "read_requests": self.fetched.requests, "offline": self.offline,
        }  # fmt: skip


def room(hw: HardwareProfile) -> tuple[int, str]:
    """The most memory a model may take on `hw` (RAM, plus VRAM where layers can go to a GPU of its own), and
    how to say it."""
    ram, vram = memory_budgets(hw)
    shared = hw.unified_memory or not vram
    where = f"{human_bytes(ram)} of RAM" + ("" if shared else f" + {human_bytes(vram)} of VRAM") + " usable here"
    return (ram if shared else ram + vram), where


def plan_repo(remote: Remote, hw: HardwareProfile, opts: PlanOptions = PlanOptions(), say: Say | None = None) -> RepoPlan:
    """The plan for `remote` on `hw`, from its listing and the headers of the files it would need."""
    reader = reader_for(remote, say)
    kind = select_files(remote.files).kind
    planner = _plan_gguf if kind == "gguf" else _plan_checkpoint
    try:
        rp = planner(remote, hw, opts, reader)
    except EdgeError as exc:
        raise type(exc)(f"{remote.repo_id} on {remote.client.title}: {exc}") from exc
    return replace(rp, fetched=reader.fetched, offline=remote.offline, repo_size=sum(f.size for f in remote.files))


def _make_plan(files: list[ModelFile], name: str, hw: HardwareProfile, opts: PlanOptions) -> Plan:
    files = sorted(files, key=lambda f: f.info.bits_per_weight, reverse=True)
    ref = ModelRef(name=name, source=Path(name), files=tuple(files))
    return make_plan(ref, hw, ctx=opts.ctx, kv_type=opts.kv_type, min_ctx=opts.min_ctx, ngl=opts.ngl, threads=opts.threads,
                     min_speed=opts.min_speed)  # fmt: skip


def fast_enough(plan: Plan, opts: PlanOptions) -> bool:
    """Whether `plan`'s level decodes as fast as the planner asks (always, when quality comes first)."""
    return opts.target_tps <= 0 or (plan.speed is not None and plan.speed.decode_tps >= opts.target_tps)


def _plan_gguf(remote: Remote, hw: HardwareProfile, opts: PlanOptions, reader) -> RepoPlan:
    name = store_name(remote.repo_id)
    by_level = gguf_levels(remote.files)
    quantized = {lv: fs for lv, fs in by_level.items() if lv.upper() not in FLOAT_LEVELS}
    candidates = quantized or by_level
    limit, where = room(hw)
    rows: dict[str, LevelRow] = {}
    read: list[ModelFile] = []
    fitting, chosen, why_not = 0, None, ""
    for lv, fs in sorted(by_level.items(), key=lambda kv: -sum(f.size for f in kv[1])):
        size, paths = sum(f.size for f in fs), tuple(f.path for f in fs)
        note = (
            "a base to quantize from, not to run" if lv not in candidates
            else "smaller: not read" if chosen
            else f"larger than the {where}: not read" if size > limit
            else ""
        )  # fmt: skip
        if note:
            rows[lv] = LevelRow(lv, paths, size, note=note)
            continue
        try:
            info = level_header(reader, fs)
            mf = ModelFile(lv, info.path, info)
        except EdgeError as exc:
            rows[lv] = LevelRow(lv, paths, size, note=f"not chosen: {exc}")
            continue
        read.append(mf)
        rows[lv] = LevelRow(lv, paths, size)
        try:
            alone = _make_plan([mf], name, hw, opts)
        except NotEnoughSpace as exc:
            why_not = str(exc)
            need = why_not.split(" does not fit this machine: ", 1)[-1].replace(f"its smallest level {lv} ", "")
            rows[lv] = LevelRow(lv, paths, size, note=f"does not fit: {need}")
            continue
        fitting += 1
        if fast_enough(alone, opts):  # the planner takes it: smaller levels would be lower quality
            chosen = lv
    unreadable = [rows[lv].note.removeprefix("not chosen: ") for lv in candidates if rows[lv].note.startswith("not chosen: ")]
    if not read and not why_not and len(unreadable) == len(candidates):
        why_not = f"{name} has no level that can be read: {unreadable[0]}"
    if not read and not why_not:
        smallest = min(candidates, key=lambda lv: rows[lv].size)
        why_not = f"{name} does not fit this machine: its smallest level {smallest} is {human_bytes(rows[smallest].size)}, and there is {where}"
    plan = _make_plan(read, name, hw, opts) if fitting else None
    if plan is not None and len(read) == 1 < len(candidates):  # one level judged of several: why, as the planner says it
        plan = replace(plan, why=_why(opts, fast_enough(plan, opts)))
    for lf in plan.levels if plan else ():
        rows[lf.level] = LevelRow(lf.level, rows[lf.level].files, rows[lf.level].size, lf)
    level = plan.level if plan else None
    download = sum(f.size for f in by_level.get(level, ()) if not f.cached)
    return RepoPlan(remote.repo_id, remote.hub, "gguf", name, tuple(rows.values()), plan, why_not if not plan else "",
                    download=download, keep=rows[level].size if level else 0, headers_read=len(read))  # fmt: skip


def _why(opts: PlanOptions, fast: bool) -> str:
    """How the planner words its choice (`plan.choose_level`), for a level judged alone."""
    if opts.target_tps <= 0:
        return "the highest-quality level that fits"
    if fast:
        return f"the highest-quality level that fits and decodes at {opts.target_tps:g} tok/s or more"
    return f"the fastest level that fits (none decodes at {opts.target_tps:g} tok/s here)"


def _plan_checkpoint(remote: Remote, hw: HardwareProfile, opts: PlanOptions, reader) -> RepoPlan:
    from ..quantize.checkpoint import Checkpoint
    from ..quantize.estimate import level_infos
    from ..quantize.levels import DEFAULT_LEVELS, parse_levels

    name = store_name(remote.repo_id)
    selection = select_files(remote.files)
    by_path = {f.path: f for f in selection.files}
    if "config.json" not in by_path:
        raise EdgeError("holds no config.json: not a checkpoint edgellm can convert")
    config = json_file(reader, by_path["config.json"])
    config = {**config, **config.get("text_config", {})}  # multimodal wrappers: the language model's settings
    weights = [f for f in selection.files if f.path.endswith(".safetensors")]
    ckpt = Checkpoint(Path(name), config, checkpoint_tensors(reader, weights))
    vocab = sum(by_path[t].size for t in TOKENIZER_FILES if t in by_path) or 32 * int(config.get("vocab_size") or 0)
    base, infos = level_infos(ckpt, name, parse_levels(DEFAULT_LEVELS), vocab + HEADER_BESIDES_VOCAB)
    check(infos[base])  # what llama.cpp would refuse (or abort on) is refused before anything is downloaded
    files = [ModelFile(lv, info.path, info) for lv, info in infos.items() if lv != base]
    try:
        plan, why_not = _make_plan(files, name, hw, opts), ""
    except NotEnoughSpace as exc:
        plan, why_not = None, str(exc)
    fits = {lf.level: lf for lf in plan.levels} if plan else {}
    rows = [LevelRow(base, (infos[base].path.name,), infos[base].file_size, note="the base the levels are made from "
                     "(written on the way, removed after)", estimated=True)]  # fmt: skip
    rows += [LevelRow(f.level, (f.path.name,), f.size, fits.get(f.level), estimated=True) for f in files]
    level = plan.level if plan else None
    size = infos[level].file_size if level else 0
    return RepoPlan(
        remote.repo_id, remote.hub, "checkpoint", name, tuple(rows), plan, why_not, download=selection.missing_bytes,
        build=infos[base].file_size + size if level else 0, keep=size, source_size=sum(f.size for f in selection.files),
    )  # fmt: skip


def choose_level(remote: Remote, say: Say | None = None) -> LevelChoice:
    """The level of a GGUF repo the planner picks for this machine, judged from the levels' headers before
    anything is downloaded (`remote_plan`): the highest-quality quantized level that fits, with the most GPU
    layers and context. Floats only when there is nothing else."""
    from ..plan import hardware

    rp = plan_repo(remote, hardware.detect(), say=say)  # detect looked up on the module: tests describe machines
    levels = gguf_levels(remote.files)
    others = f"; --level for another of its {len(levels)}, --all for every one ({human_bytes(sum(f.size for f in remote.files if f.path.endswith('.gguf')))})"
    if rp.plan is None:
        reason = rp.why_not.split(" does not fit this machine: ", 1)[-1]
        raise NotEnoughSpace(f"has no level that fits this machine: {reason}; name one with --level (or take every one with --all)")
    p, row = rp.plan, rp.chosen
    why = (f"{p.level} ({human_bytes(row.size)}): the planner's choice here, {p.why} ({FIT_TEXT[p.fit]}, "
           f"{p.n_ctx}-token context; read {human_bytes(rp.fetched.bytes)} of headers){others if len(levels) > 1 else ''}")  # fmt: skip
    return LevelChoice(p.level, row.size, why)
