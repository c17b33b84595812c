"""Make a package: HF checkpoint (or a float GGUF) -> base GGUF -> every level -> manifest + model card.

LoRA adapters (PEFT folders, `loras`) are merged into the checkpoint's weights as the base is written, so
every level carries the fine-tune; the manifest records each adapter and the hashes of its files.

All levels are made in one pass over the base (quantize/onepass.py): each tensor is read once and each
(tensor, type) pair quantized once, however many levels share it.
Every file is hashed as it is made; a re-run skips files whose sha256 still matches the manifest, and the
manifest is rewritten after each file so an interrupted run resumes where it stopped. A file under its
final name is always listed in the manifest: one that cannot be recorded is removed. One run at a time
writes to a package folder (an flock on LOCK_FILE there).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import EdgeError, NotEnoughSpace, UsageError
from ..fsutil import atomic_output, ensure_free_space, exclusive_lock, human_bytes, remove_abandoned_partials
from ..formats.gguf_info import read_gguf
from .manifest import (
    FILENAME, LOCK_FILE, AdapterRef, FileEntry, Manifest, ModelFacts, ProjectorEntry, TextRef, file_problem, sha256_file,
)
from ..quantize.levels import TABLE, Level, check_base, check_imatrix_needs, estimate_bytes, experts_note, mxfp4_experts, quantize
from ..quantize.parallel import usable_cores
from ..quantize.peft import PeftAdapter
from ..quantize.split import split_gguf
from ..testhooks import pause_point

BASE_TYPES = ("auto", "f16", "bf16", "f32")
IMATRIX_FILE = "imatrix.gguf"
CARD_FILE = "README.md"


@dataclass
class PackageOptions:
    levels: list[Level]
    base_type: str = "auto"
    imatrix_text: Path | None = None
    eval_text: Path | None = None
    n_ctx: int = 512
    allow_requantize: bool = False
    jobs: int = 0  # levels per pass over the base; 0: all in one
    name: str | None = None
    command: str = ""
    loras: tuple[tuple[Path, float], ...] = ()  # PEFT LoRA adapter folders merged into the weights, at these scales
    split_max_size: int = 0  # >0: a level with more tensor bytes than this is written in parts (`quantize.split`)
    projector_type: str | None = None  # a vision checkpoint's projector: f16, q8_0 or none (None: f16)


@dataclass
class Reporter:
    """What the pipeline tells the user; the CLI passes rich progress bars, the library default is silent."""

    stage: Callable[[str], None] = lambda text: None
    level_start: Callable[[str, int], None] = lambda level, total: None  # total tensors (0 = unknown yet)
    tensor: Callable[[str, int, int], None] = lambda level, index, total: None
    level_done: Callable[[str, bool], None] = lambda level, skipped: None
    chunks: Callable[[str, int, int], None] = lambda what, done, total: None


@dataclass
class PackageResult:
    manifest: Manifest
    folder: Path
    made: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def file_stem(name: str) -> str:
    """'SmolLM2 135M Instruct' -> 'SmolLM2-135M-Instruct' (safe in file names and URLs)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", name).strip("-") or "model"


def read_text(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {exc}") from exc


def _text_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_fingerprint(src: Path, adapters: Sequence[AdapterRef] = ()) -> str:
    """Names, sizes and mtimes of a checkpoint's files, and the adapters merged into it: changes when the
    checkpoint or an adapter does, costs no reading of the checkpoint."""
    h = hashlib.sha256()
    for p in sorted(src.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for a in adapters:
        h.update(json.dumps(asdict(a), sort_keys=True).encode())
    return h.hexdigest()


def open_adapters(src: Path, loras: tuple[tuple[Path, float], ...]) -> list[tuple[PeftAdapter, float]]:
    """The LoRA adapters to merge into the checkpoint in `src`, each checked against its config first."""
    from ..quantize.checkpoint import read_config
    from ..quantize.peft import match, open_adapter

    if not loras:
        return []
    if src.is_file():
        raise UsageError(f"--lora merges a PEFT adapter into a Hugging Face checkpoint's weights, and {src.name} is a "
                         "GGUF file; apply a GGUF adapter at run time instead (--lora on run, chat and serve)")
    config = read_config(src)
    adapters = [(open_adapter(path), scale) for path, scale in loras]
    for adapter, _ in adapters:
        match(adapter, config)
    return adapters


def adapter_refs(adapters: list[tuple[PeftAdapter, float]]) -> list[AdapterRef]:
    return [AdapterRef(a.name, a.rank, a.alpha, a.rslora, scale, a.sha256()) for a, scale in adapters]


def _estimate_base(src: Path, base_type: str) -> tuple[int, int]:
    """(base file bytes, parameter count), guessed from the checkpoint's weight files before converting."""
    weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    try:
        dtype = json.loads((src / "config.json").read_text()).get("torch_dtype", "float16")
    except (OSError, json.JSONDecodeError):
        dtype = "float16"
    src_bytes = 4 if dtype == "float32" else 2
    n_params = weights // src_bytes
    out_bytes = {"auto": src_bytes, "f32": 4}.get(base_type, 2)
    return n_params * out_bytes, n_params


def _entry_ok(folder: Path, entry: FileEntry | None) -> bool:
    """Every file of the level (every part of a split one) is there, of its size and sha256."""
    return entry is not None and not any(file_problem(folder / f.file, f) for f in entry.listed)


def quantize_levels(
    base: Path,
    out_dir: Path,
    stem: str,
    levels: list[Level],
    *,
    imatrix=None,
    allow_requantize: bool = False,
    jobs: int = 0,
    reporter: Reporter | None = None,
    on_done: Callable[[Level, Path, str], None] | None = None,
) -> dict[str, tuple[Path, str]]:
    """Quantize `base` to every level, `jobs` levels per pass over the base (0: all in one pass); returns
    {level: (path, sha256)}. Levels made in one pass share the tensors they quantize alike and are all done
    when the pass is; `on_done` records each as it is done."""
    from ..quantize.onepass import quantize_together, read_base

    rep = reporter or Reporter()
    results: dict[str, tuple[Path, str]] = {}
    source = read_base(base)
    size = 1 if source is None else jobs or len(levels)
    for at in range(0, len(levels), size):
        group = levels[at:at + size]
        outs = [(lv, out_dir / f"{stem}-{lv.name}.gguf") for lv in group]
        for lv in group:
            rep.level_start(lv.name, 0)
        if source is not None:
            shas = quantize_together(source, outs, imatrix=imatrix, nthread=usable_cores(),
                                     on_tensor=rep.tensor)
        else:  # weights quantized already (--allow-requantize): llama.cpp's quantizer takes them, level by level
            shas = {}
            for lv, out in outs:
                quantize(base, out, lv, imatrix=imatrix, allow_requantize=allow_requantize, nthread=usable_cores(),
                         on_tensor=lambda i, n, _name, lv=lv: rep.tensor(lv.name, i, n))
                shas[lv.name] = sha256_file(out)
        for lv, out in outs:
            results[lv.name] = (out, shas[lv.name])
            rep.level_done(lv.name, False)
            if on_done:
                on_done(lv, out, shas[lv.name])
    return results


def build_package(src: Path, out_dir: Path, opts: PackageOptions, reporter: Reporter | None = None) -> PackageResult:
    """Convert (unless `src` is already a float GGUF), quantize, evaluate and describe a package in out_dir."""
    src, out_dir = Path(src), Path(out_dir)
    if opts.base_type not in BASE_TYPES:
        raise UsageError(f"unknown base type {opts.base_type!r}; choose one of {', '.join(BASE_TYPES)}")
    from_gguf = src.is_file()
    if not from_gguf and not (src / "config.json").is_file():
        raise UsageError(f"{src} is neither a GGUF file nor a Hugging Face checkpoint folder (no config.json)")
    adapters = open_adapters(src, opts.loras)
    calib = read_text(opts.imatrix_text, "calibration text") if opts.imatrix_text else None
    eval_text = read_text(opts.eval_text, "evaluation text") if opts.eval_text else None
    check_imatrix_needs(opts.levels, calib is not None)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output path is not a folder: {out_dir}")
    # The source is checked before the folder is touched.
    src_info = convert_to = projector = None
    if from_gguf:
        if opts.projector_type is not None:
            raise UsageError(f"--projector-type is for vision checkpoints, and {src.name} is a GGUF file")
        src_info = read_gguf(src)
        check_base(src_info, opts.allow_requantize)
    else:
        from ..quantize.checkpoint import read_config
        from ..quantize.convert import resolve_file_type
        from ..quantize.projector import DEFAULT_PROJECTOR_TYPE, check_projector_type, prepare_projector

        convert_to = resolve_file_type(src, opts.base_type)
        if check_projector_type(read_config(src), opts.projector_type) is not None:
            projector = prepare_projector(src, opts.projector_type or DEFAULT_PROJECTOR_TYPE)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out_dir / LOCK_FILE, f"another edgellm package run is writing to {out_dir}"):
        remove_abandoned_partials(out_dir)  # temp files of runs that were killed outright
        return _build(src, out_dir, opts, reporter or Reporter(), src_info, convert_to, calib, eval_text, adapters,
                      projector)


def _build(src, out_dir, opts, rep, src_info, convert_to, calib, eval_text, adapters, projector) -> PackageResult:
    """build_package's work, with the folder locked. `src_info` is the source GGUF's header when that file is
    the base; `convert_to` the base's file type when a checkpoint is converted; `adapters` are merged into it;
    `projector` is the vision checkpoint's projector to write beside the levels."""
    refs = adapter_refs(adapters)
    try:
        old = Manifest.load(out_dir) if (out_dir / FILENAME).exists() else None
    except EdgeError:
        old = None  # an unreadable manifest is rebuilt from scratch

    # --- room: files already there, complete and matching, are kept and need none --------------------
    if src_info is not None:
        n_params, base_need, fingerprint, kept_base = src_info.n_params, 0, None, None
    else:
        base_bytes, n_params = _estimate_base(src, opts.base_type)
        fingerprint = source_fingerprint(src, refs)
        kept_base = _kept_base(out_dir, old, fingerprint)
        base_need = 0 if kept_base else base_bytes
    stem = file_stem(opts.name or (src_info.name if src_info and src_info.name else src.name))
    matching = {lv.name for lv in opts.levels if old and _entry_ok(out_dir, old.entry(lv.name))}
    planned = [lv for lv in opts.levels if lv.name not in matching]
    need = base_need + sum(estimate_bytes(n_params, lv) for lv in planned)
    ensure_free_space(out_dir, need, f"package ({len(planned)} file(s) to make)")

    # --- base -------------------------------------------------------------------------------------
    if src_info is not None:
        base_path, base_sha = src, None
    elif kept_base is not None:
        base_path, base_sha = out_dir / kept_base.file, kept_base.sha256
        rep.level_done(kept_base.level, True)
    else:
        base_path, base_sha = _convert_base(src, out_dir / f"{stem}-{convert_to}.gguf", opts.base_type, rep, adapters)
    info = read_gguf(base_path)
    check_base(info, opts.allow_requantize)
    base_level = info.file_type or "F16"
    if base_sha is None:
        rep.stage(f"hashing {base_path.name}")
        base_sha = sha256_file(base_path)

    same_inputs = old is not None and old.base.get("sha256") == base_sha
    manifest = Manifest(
        model=ModelFacts.from_gguf(info, name=opts.name),
        base={"file": base_path.name, "level": base_level, "sha256": base_sha},
        source={"path": str(src.resolve()), "fingerprint": fingerprint} if fingerprint else None,
        adapters=refs,
    )
    if src_info is None:
        manifest.put(FileEntry.from_gguf(info, base_level, base_sha, command=opts.command))
    if projector is not None:
        manifest.projector = _ensure_projector(projector, out_dir, stem, old, fingerprint, rep)

    # --- importance matrix -------------------------------------------------------------------------
    imatrix = None
    if calib is not None:
        imatrix = _ensure_imatrix(base_path, out_dir, calib, opts, old if same_inputs else None, rep)
        manifest.imatrix = TextRef(Path(opts.imatrix_text).name, _text_sha(calib), imatrix.chunks,
                                   imatrix.tokens, imatrix.n_ctx)

    # --- levels ----------------------------------------------------------------------------------
    result = PackageResult(manifest, out_dir)
    todo = []
    for lv in opts.levels:
        prev = old.entry(lv.name) if same_inputs else None
        if prev and prev.imatrix == (imatrix is not None) and lv.name in matching and (
            not prev.imatrix or (old.imatrix and old.imatrix.sha256 == manifest.imatrix.sha256)
        ):
            manifest.put(prev)
            result.skipped.append(lv.name)
            rep.level_done(lv.name, True)
        else:
            todo.append(lv)
    if same_inputs:  # files an earlier run made at other levels stay listed while they still match
        wanted = {lv.name for lv in opts.levels} | {base_level}
        for prev in old.files:
            if prev.level not in wanted and _entry_ok(out_dir, prev):
                manifest.put(prev)

    def record(level: Level, path: Path, sha: str) -> None:
        files = [path]
        if opts.split_max_size:
            ensure_free_space(out_dir, path.stat().st_size, f"the parts of {path.name}")
            files = split_gguf(path, opts.split_max_size)
            if files != [path]:
                path.unlink()
                sha = sha256_file(files[0])
        entry = FileEntry.from_gguf(read_gguf(files[0]), level.name, sha, imatrix=imatrix is not None,
                                    command=opts.command)
        manifest.put(entry)
        try:
            manifest.save(out_dir)
        except BaseException as exc:
            # A file under its final name is always listed: one that cannot be listed goes.
            manifest.files.remove(entry)
            for f in files:
                f.unlink(missing_ok=True)
            if isinstance(exc, NotEnoughSpace):
                raise NotEnoughSpace(f"{exc}: {path.name} was made but could not be recorded, so it was "
                                     "removed; free some space and run again") from exc
            raise
        result.made.append(level.name)
        pause_point("package.level", len(result.made))

    manifest.save(out_dir)
    pause_point("package.base")
    if todo:
        rep.stage(f"quantizing {len(todo)} level(s)")
        quantize_levels(base_path, out_dir, stem, todo, imatrix=imatrix, allow_requantize=opts.allow_requantize,
                        jobs=opts.jobs, reporter=rep, on_done=record)

    # --- quality -----------------------------------------------------------------------------------
    if eval_text is not None:
        _evaluate(base_path, out_dir, eval_text, opts, manifest, old if same_inputs else None, result, rep)

    manifest.save(out_dir)
    write_card(out_dir, manifest)
    return result


def _kept_base(out_dir: Path, old: Manifest | None, fingerprint: str) -> FileEntry | None:
    """The base an earlier run converted from this same source, if it is still intact."""
    if old and old.source and old.source.get("fingerprint") == fingerprint:
        prev = old.entry(old.base.get("level", ""))
        if _entry_ok(out_dir, prev):
            return prev
    return None


def _convert_base(
    src: Path, final: Path, base_type: str, rep: Reporter, adapters: list[tuple[PeftAdapter, float]]
) -> tuple[Path, str]:
    """The converted base (with the adapters merged in) and its sha256 (hashed as it is written)."""
    from ..quantize.convert import convert_checkpoint
    from ..quantize.lora import merged

    merging = f" with {', '.join(a.name for a, _ in adapters)} merged in" if adapters else ""
    rep.stage(f"converting {src.name}{merging}")
    digest = hashlib.sha256()
    path = convert_checkpoint(
        src, final, outtype=base_type, progress=True, digest=digest, merge=merged(adapters) if adapters else None
    )
    return path, digest.hexdigest()


def _ensure_projector(job, out_dir: Path, stem: str, old: Manifest | None, fingerprint: str, rep: Reporter) -> ProjectorEntry:
    """The package's projector GGUF: the one an earlier run wrote from this same source at this type while it
    is intact, else written now (hashed as it is written)."""
    from ..quantize.projector import projector_file_name, write_projector

    prev = old.projector if old and old.source and old.source.get("fingerprint") == fingerprint else None
    name = projector_file_name(stem, job.ptype)
    if prev is not None and prev.file == name and not file_problem(out_dir / name, prev.part):
        rep.level_done(f"projector {prev.type}", True)
        return prev
    if old is not None and old.projector is not None and old.projector.file != name:
        (out_dir / old.projector.file).unlink(missing_ok=True)  # of another type: one projector per package
    rep.stage(f"writing the projector {name}")
    digest = hashlib.sha256()
    path = write_projector(job, out_dir / name, progress=True, digest=digest)
    return ProjectorEntry(name, job.ptype.upper(), path.stat().st_size, digest.hexdigest(), job.kind)


def _ensure_imatrix(base_path, out_dir, calib, opts, old, rep):
    from ..quantize.imatrix import ImportanceMatrix, compute_imatrix

    path = out_dir / IMATRIX_FILE
    if old and old.imatrix and old.imatrix.sha256 == _text_sha(calib) and old.imatrix.n_ctx == opts.n_ctx \
            and path.is_file():
        return ImportanceMatrix.load(path)
    rep.stage("computing the importance matrix")
    im = compute_imatrix(base_path, calib, n_ctx=opts.n_ctx, dataset=Path(opts.imatrix_text).name,
                         progress=lambda d, t: rep.chunks("imatrix", d, t))
    im.save(path)
    return im


def _evaluate(base_path, out_dir, text, opts, manifest, old, result, rep) -> None:
    from ..engine.quality import BaseLogProbs

    sha = _text_sha(text)
    reuse = old is not None and old.eval is not None and old.eval.sha256 == sha and old.eval.n_ctx == opts.n_ctx
    # Entries kept from the last run carry their numbers; new files (and all, if the text changed) need them.
    todo = [f for f in manifest.files if f.file != base_path.name
            and not (reuse and f.ppl is not None and f.kld is not None)]
    base_entry = manifest.entry(manifest.base["level"])
    prev_base = old.entry(base_entry.level) if reuse and base_entry else None
    if prev_base is not None and prev_base.ppl is not None:
        base_entry.ppl, base_entry.kld = prev_base.ppl, prev_base.kld
    if not todo and (base_entry is None or base_entry.ppl is not None):
        manifest.eval = old.eval if reuse else manifest.eval
        return
    rep.stage("evaluating the base")
    with BaseLogProbs(base_path, text, opts.n_ctx, folder=out_dir,
                      progress=lambda d, t: rep.chunks("base", d, t)) as base:
        manifest.eval = TextRef(Path(opts.eval_text).name, sha, base.ppl.chunks, base.ppl.tokens, opts.n_ctx)
        if base_entry is not None:
            base_entry.ppl, base_entry.kld = round(base.ppl.ppl, 4), 0.0
        for f in todo:
            rep.stage(f"evaluating {f.level}")
            r = base.compare(out_dir / f.file, progress=lambda d, t, lv=f.level: rep.chunks(lv, d, t))
            f.ppl, f.kld = round(r.ppl.ppl, 4), round(r.kld, 6)
            manifest.save(out_dir)


def write_card(folder: Path, m: Manifest) -> Path:
    """The package's README.md: what the files are, what each costs, how good it is, how to run it."""
    facts = m.model
    has_q = any(f.ppl is not None for f in m.files)
    lines = [
        f"# {facts.name} — GGUF package",
        "",
        f"{facts.arch} model, {facts.n_params / 1e6:.0f}M parameters, {facts.n_layers} layers, "
        f"{facts.n_head} heads ({facts.n_head_kv} KV heads), trained context {facts.n_ctx_train}, "
        f"vocabulary {facts.n_vocab}{', chat template included' if facts.chat_template else ''}.",
        "",
        f"Made by {m.created_by} with llama.cpp's quantizer from the base file `{m.base['file']}` "
        f"({m.base['level']}).",
    ]
    for a in m.adapters:
        lines.append(f"LoRA adapter `{a.name}` (rank {a.rank}, alpha {a.alpha:g}{', rsLoRA' if a.rslora else ''}) merged "
                     f"into the weights at scale {a.scale:g}.")
    if m.projector:
        p = m.projector
        lines.append(f"Images: the projector `{p.file}` ({p.projector_type}, {p.type}, {human_bytes(p.bytes)}) goes with "
                     "every level (llama.cpp's `--mmproj`).")
    if m.imatrix:
        lines.append(f"Importance matrix from `{m.imatrix.text}` ({m.imatrix.tokens} tokens), file `{IMATRIX_FILE}`.")
    lines += ["", "| file | level | size | bits/weight |" + (" PPL | KLD vs base |" if has_q else ""),
              "|---|---|---|---|" + ("---|---|" if has_q else "")]
    for f in m.files:
        split = f" (split in {len(f.parts)} files)" if f.parts else ""
        row = f"| `{f.file}`{split} | {f.level} | {human_bytes(f.bytes)} | {f.bits_per_weight:.2f} |"
        if has_q:
            row += f" {_num(f.ppl, 3)} | {_num(f.kld, 4)} |"
        lines.append(row)
    if has_q and m.eval:
        lines += ["", f"Perplexity and KL divergence on `{m.eval.text}`: {m.eval.chunks} chunks of {m.eval.n_ctx} "
                      "tokens, second half of each scored (llama-perplexity's method). Lower is better."]
    lines += _experts_lines(folder, m)
    lines += _accuracy_lines(m)
    lines += ["", "## Run", "", "Let edgellm pick the best file for this machine, or name one:", "", "```sh",
              "edgellm plan .                 # which file fits here, GPU layers, context: and why",
              "edgellm chat .                 # chat with the file the planner picks"]
    lines += [f"edgellm run {f.file} -p 'Hello'" for f in m.files]
    lines += ["edgellm verify .               # re-hash every file against manifest.json", "```", ""]
    path = folder / CARD_FILE
    with atomic_output(path) as tmp:
        tmp.write_text("\n".join(lines))
    return path


def _experts_lines(folder: Path, m: Manifest) -> list[str]:
    """What each level did with experts the base holds in MXFP4, as released (GPT-OSS)."""
    base = folder / m.base["file"]
    if not base.is_file() or not mxfp4_experts(read_gguf(base)):
        return []
    made = [f for f in m.files if f.file != m.base["file"] and f.level in TABLE]
    return ["", "The base keeps the experts in MXFP4, as the model was released. Per level:", "",
            *(f"- {f.level}: {experts_note(TABLE[f.level])}" for f in made)]


def _accuracy_lines(m: Manifest) -> list[str]:
    """Task accuracy recorded by `edgellm eval --save`: one table per task kind."""
    kinds = sorted({k for f in m.files for k in (f.accuracy or {})})
    lines = []
    for kind in kinds:
        rows = [(f, f.accuracy[kind]) for f in m.files if kind in (f.accuracy or {})]
        lines += ["", f"Accuracy on {kind} tasks, `{rows[0][1]['file']}` (sha256 {rows[0][1]['sha256'][:12]}…), as "
                      "llama-perplexity scores them; paired with the most precise level on the same tasks:", "",
                  "| level | tasks | accuracy % | vs reference |", "|---|---|---|---|"]
        for f, r in rows:
            se = f" ± {r['stderr'] * 100:.2f}" if r.get("stderr") is not None else ""
            vs = r["paired"]["verdict"] if r.get("paired") else "reference"
            lines.append(f"| {f.level} | {r['tasks']} | {r['accuracy'] * 100:.2f}{se} | {vs} |")
    return lines


def _num(x: float | None, digits: int) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def levels_summary(m: Manifest) -> list[dict]:
    return [
        {"level": f.level, "file": f.file, "bytes": f.bytes, "bits_per_weight": f.bits_per_weight,
         "ppl": f.ppl, "kld": f.kld, "imatrix": f.imatrix}
        for f in m.files
    ]

