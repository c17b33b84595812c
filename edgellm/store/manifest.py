"""The package manifest: what each GGUF file in a package costs and how good it is.

`manifest.json` sits beside the files it describes. Schema (version 1):

    {
      "schema": "edgellm.package",  "version": 1,  "created_by": "edgellm 0.1.0",
      "model": {                      # from the base GGUF header
        "name", "arch", "n_params", "n_layers", "n_embd", "n_head", "n_head_kv",
        "head_dim_k", "head_dim_v", "n_ctx_train", "n_vocab", "chat_template": bool
      },
      "source": {"path": str, "fingerprint": sha256 of the source's file names, sizes and config} | null,
      "base":   {"file": str, "level": "F16"|"BF16"|"F32"|..., "sha256": str},
      "imatrix": {"calibration": str, "sha256": str, "chunks": int, "tokens": int, "n_ctx": int} | null,
      "eval":    {"text": str, "sha256": str, "chunks": int, "tokens": int, "n_ctx": int} | null,
      "adapters": [{                  # LoRA adapters merged into the base before quantizing (package --lora)
        "name": str,                  # the adapter folder's name
        "rank": int, "alpha": float,  # its config's r and lora_alpha
        "rslora": bool,               # scaled by alpha / sqrt(rank) instead of alpha / rank
        "scale": float,               # the strength it was merged at (1: as trained)
        "sha256": {file name: str}    # adapter_config.json and adapter_model.safetensors
      }, ...],                        # absent or empty: the checkpoint as it is
      "projector": {                  # a vision model's image encoder (mmproj GGUF), one for every level
        "file": str, "type": "F16"|"Q8_0", "bytes": int, "sha256": str,
        "projector_type": str         # clip.projector_type ("gemma3")
      } | null,
      "files": [{
        "file": "SmolLM2-Q4_K_M.gguf", "level": "Q4_K_M",   # a plain name inside the package folder
        "bytes": int,                 # file size (of all parts, for a split level)
        "parts": [{"file": str, "bytes": int, "sha256": str}, ...] | null
                                      # a level split in several files (`package --split-max-size`, or
                                      # llama-gguf-split: `<name>-<LEVEL>-00001-of-00003.gguf` ...):
                                      # every part, the first first; "file" and
                                      # "sha256" above are then the first part's. Absent or null: one file.
        "bits_per_weight": float,     # tensor bits / parameters
        "sha256": str,
        "layer_bytes": [int, ...],    # tensor bytes of each blk.N (what one offloaded layer costs)
        "non_layer_bytes": int,       # embeddings, output head, final norm
        "imatrix": bool,              # quantized with the importance matrix above
        "ppl": float | null,          # perplexity on the eval text (llama-perplexity's chunking)
        "kld": float | null,          # mean KL divergence of its token distribution from the base's
        "command": str,               # the command line that made it
        "bench": {"pp_tps", "tg_tps", "ttft_s", "peak_rss_bytes", "machine", "machine_id", "n_threads",
                  "n_gpu_layers", "created"} | null
                                      # speed measured by `edgellm bench --save` (on the machine named; the
                                      # planner uses it on the machine with that id, threads and GPU layers)
        "accuracy": {kind: {"file", "sha256", "tasks", "correct", "accuracy", "stderr", "skipped",
                            "paired": {"reference", "tasks", "diff", "stderr", "verdict"} | null,
                            "created"}} | null
                                      # task accuracy from `edgellm eval --save`, by task kind (hellaswag,
                                      # winogrande, gsm8k) or, for kinds of many datasets, kind and file
                                      # ("exam:mmlu", "multiple-choice:arc"), with the task file's name and hash
      }, ...]
    }

Readers accept any manifest whose "version" they know; a newer version raises a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .. import __version__
from ..errors import EdgeError
from ..fsutil import atomic_output, exclusive_lock
from ..formats.gguf_info import GGUFInfo

SCHEMA = "edgellm.package"
VERSION = 1
FILENAME = "manifest.json"


@dataclass
class ModelFacts:
    name: str
    arch: str
    n_params: int
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_ctx_train: int
    n_vocab: int
    chat_template: bool

    @classmethod
    def from_gguf(cls, info: GGUFInfo, name: str | None = None) -> ModelFacts:
        return cls(
            name=name or info.name or info.path.stem,
            arch=info.arch,
            n_params=info.n_params,
            n_layers=info.n_layers,
            n_embd=info.n_embd,
            n_head=info.n_head,
            n_head_kv=info.n_head_kv,
            head_dim_k=info.head_dim_k,
            head_dim_v=info.head_dim_v,
            n_ctx_train=info.n_ctx_train,
            n_vocab=info.n_vocab,
            chat_template=bool(info.chat_template),
        )


@dataclass
class TextRef:
    """A text the package was calibrated or evaluated on."""

    text: str  # file name
    sha256: str
    chunks: int
    tokens: int
    n_ctx: int


@dataclass
class AdapterRef:
    """A LoRA adapter merged into the package's weights."""

    name: str
    rank: int
    alpha: float
    rslora: bool
    scale: float
    sha256: dict[str, str]


@dataclass
class PartEntry:
    """One file of a level split in several."""

    file: str
    bytes: int
    sha256: str


@dataclass
class ProjectorEntry:
    """A vision model's projector (mmproj) GGUF, shared by every level of the package."""

    file: str
    type: str  # its file type: F16 or Q8_0
    bytes: int
    sha256: str
    projector_type: str  # clip.projector_type: which image encoder llama.cpp runs

    @property
    def part(self) -> PartEntry:
        return PartEntry(self.file, self.bytes, self.sha256)


@dataclass
class FileEntry:
    file: str
    level: str
    bytes: int
    bits_per_weight: float
    sha256: str
    layer_bytes: list[int]
    non_layer_bytes: int
    imatrix: bool = False
    ppl: float | None = None
    kld: float | None = None
    command: str = ""
    bench: dict[str, Any] | None = None
    accuracy: dict[str, dict[str, Any]] | None = None
    parts: list[PartEntry] | None = None

    @property
    def listed(self) -> list[PartEntry]:
        """The files of this level as the manifest lists them: every part, or the one file."""
        return self.parts or [PartEntry(self.file, self.bytes, self.sha256)]

    @classmethod
    def from_gguf(cls, info: GGUFInfo, level: str, sha256: str, **extra: Any) -> FileEntry:
        """The entry for the level `info` reads (`sha256`: of its file, or its first part; the other parts of a
        split level are hashed here)."""
        if info.parts and "parts" not in extra:
            extra["parts"] = [PartEntry(p.name, p.stat().st_size, sha256 if i == 0 else sha256_file(p))
                              for i, p in enumerate(info.parts)]  # fmt: skip
        return cls(
            file=info.path.name,
            level=level,
            bytes=info.file_size,
            bits_per_weight=round(info.bits_per_weight, 4),
            sha256=sha256,
            layer_bytes=info.layer_bytes(),
            non_layer_bytes=info.non_layer_bytes,
            **extra,
        )


def accuracy_summary(accuracy: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """What listings show of a level's recorded task accuracy: per task, the fraction right, its standard
    error, how many tasks and on which file."""
    return {task: {k: r.get(k) for k in ("accuracy", "stderr", "tasks", "file")}
            for task, r in sorted((accuracy or {}).items()) if isinstance(r, dict)}


def accuracy_cell(record: dict[str, Any]) -> str:
    """"58.00 ± 4.96": one recorded accuracy in % with its standard error ("-" when there is none)."""
    if not isinstance(record.get("accuracy"), (int, float)):
        return "-"
    se = record.get("stderr")
    return f"{record['accuracy'] * 100:.2f}" + (f" ± {se * 100:.2f}" if isinstance(se, (int, float)) else "")


def accuracy_text(accuracy: dict[str, dict[str, Any]] | None) -> str:
    """"hellaswag 58.00 ± 4.96, exam 40.00": a level's recorded accuracies in % for a table cell."""
    return ", ".join(f"{task} {accuracy_cell(r)}" for task, r in accuracy_summary(accuracy).items())


@dataclass
class Manifest:
    model: ModelFacts
    base: dict[str, str]  # file, level, sha256
    files: list[FileEntry] = field(default_factory=list)
    source: dict[str, str] | None = None
    imatrix: TextRef | None = None
    eval: TextRef | None = None
    adapters: list[AdapterRef] = field(default_factory=list)
    projector: ProjectorEntry | None = None
    created_by: str = f"edgellm {__version__}"

    def entry(self, level: str) -> FileEntry | None:
        return next((f for f in self.files if f.level == level), None)

    def put(self, entry: FileEntry) -> None:
        """Add or replace the entry for entry.level, keeping files ordered from most to fewest bits."""
        self.files = [f for f in self.files if f.level != entry.level] + [entry]
        self.files.sort(key=lambda f: -f.bits_per_weight)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": SCHEMA, "version": VERSION, **d}

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILENAME
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        if not isinstance(d, dict):
            raise EdgeError(f"malformed manifest: a JSON {type(d).__name__}, not an object")
        if d.get("schema") != SCHEMA:
            raise EdgeError(f"not an edgellm package manifest (schema {d.get('schema')!r})")
        if d.get("version") != VERSION:
            raise EdgeError(f"manifest version {d.get('version')} is not supported (this edgellm reads {VERSION})")
        try:
            files = [FileEntry(**f) for f in d["files"]]
            for f in files:
                f.parts = [PartEntry(**p) for p in f.parts] if f.parts else None
            names = [f.file for f in files] + [p.file for f in files for p in f.parts or ()]
            names += [d["base"]["file"]] if "file" in d["base"] else []
            projector = ProjectorEntry(**d["projector"]) if d.get("projector") else None
            if projector and not (isinstance(projector.bytes, int) and all(isinstance(v, str) for v in (
                    projector.type, projector.sha256, projector.projector_type))):
                raise EdgeError(f"malformed manifest: its projector entry has a value of the wrong type: {d['projector']!r}")
            names += [projector.file] if projector else []
            for name in names:
                _plain_name(name)
            return cls(
                model=ModelFacts(**d["model"]),
                base=d["base"],
                files=files,
                source=d.get("source"),
                imatrix=TextRef(**d["imatrix"]) if d.get("imatrix") else None,
                eval=TextRef(**d["eval"]) if d.get("eval") else None,
                adapters=[AdapterRef(**a) for a in d.get("adapters") or []],
                projector=projector,
                created_by=d.get("created_by", ""),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise EdgeError(f"malformed manifest: {exc}") from exc

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / FILENAME
        if not path.is_file():
            raise EdgeError(f"no {FILENAME} in {folder}: not an edgellm package")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgeError(f"corrupt {path}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except EdgeError as exc:
            raise EdgeError(f"{path}: {exc}") from None

    def verify(self, folder: Path, on_file=None) -> list[Problem]:
        """Re-hash every file (every part of a split level) and compare with the manifest; return the problems
        (empty = all good)."""
        problems = []
        for f in self.files:
            if on_file:
                on_file(f)
            for part in f.listed:
                if what := file_problem(Path(folder) / part.file, part):
                    problems.append(Problem(part.file, what))
        if self.projector is not None and (what := file_problem(Path(folder) / self.projector.file, self.projector.part)):
            problems.append(Problem(self.projector.file, f"projector {what}"))
        return problems


def file_problem(path: Path, want: PartEntry) -> str | None:
    """What is wrong with the file `path`, listed as `want`; None when nothing."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != want.bytes:
        return f"size {path.stat().st_size} != manifest {want.bytes}"
    if sha256_file(path) != want.sha256:
        return "sha256 does not match the manifest"
    return None


def _plain_name(name: Any) -> str:
    """A manifest names files right inside its package folder: never a path out of it (`../x`, `/etc/x`) nor
    a hidden file, so whatever reads the manifest (verify, run, package, push) stays inside the package."""
    if not isinstance(name, str) or not name or name.startswith(".") or any(c in name for c in "/\\:\0"):
        raise EdgeError(f"malformed manifest: {name!r} is not a plain file name in the package folder")
    return name


@dataclass
class Problem:
    file: str
    what: str


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


LOCK_FILE = ".edgellm-package.lock"  # held by whoever writes a package's files or manifest
RECORD_WAIT_S = 60.0  # how long a finished measurement waits for another writer before it gives up


@contextlib.contextmanager
def updating(folder: Path) -> Iterator[Manifest]:
    """The package's manifest, read under its lock and saved when the block ends: a record that another run
    (package, bench --save, eval --save) writes at the same time is kept, not overwritten."""
    folder = Path(folder)
    with exclusive_lock(folder / LOCK_FILE, f"another edgellm run is writing to {folder}", RECORD_WAIT_S):
        manifest = Manifest.load(folder)
        yield manifest
        manifest.save(folder)
