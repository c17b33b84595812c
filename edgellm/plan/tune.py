"""The llama.cpp settings `edgellm tune` found fastest for one model file on this machine, kept per machine and
file under edgellm's data folder; `run`, `chat`, `serve` and `bench` use them unless their options say otherwise
(`engine.launch` lays them over the plan). With `tune --draft`, whether speculative decoding pays is kept too: the
draft that did, or "off" (`engine.draft` uses it when `--draft` is left out).

A setting is scored by the time of a typical chat turn: a 256-token prompt and a 128-token reply. The sweep that
measures them loads the model, so it lives in the engine (`edgellm.engine.measure.tune`); this module holds only
what it finds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import EdgeError
from ..paths import data_dir

UBATCHES = (128, 256, 512)
TURN_PROMPT, TURN_REPLY = 256, 128  # the chat turn a setting is scored on
MAX_ENTRIES = 200  # files remembered; the oldest go first
SPEC_FLOOR, SPEC_PAYS = 0.95, 1.05  # a draft pays: never below the floor on a task, and above PAYS on one
MAX_DRAFT_REF = 4096  # characters of a saved draft (a model's path); a longer one is not ours
FILENAME = "tuned.json"


@dataclass(frozen=True)
class Settings:
    threads: int
    n_ubatch: int
    kv_type: str

    def text(self) -> str:
        return f"{self.threads} thread{'s' if self.threads != 1 else ''}, micro-batch {self.n_ubatch}, KV {self.kv_type}"


@dataclass(frozen=True)
class Trial:
    settings: Settings
    pp_tps: float
    tg_tps: float

    @property
    def turn_s(self) -> float:
        return TURN_PROMPT / self.pp_tps + TURN_REPLY / self.tg_tps

    def to_dict(self) -> dict:
        return {**asdict(self.settings), "pp_tps": self.pp_tps, "tg_tps": self.tg_tps, "turn_s": self.turn_s}


@dataclass(frozen=True)
class TuneResult:
    path: Path
    level: str
    machine_id: str
    baseline: Trial  # llama.cpp's defaults: every physical core, micro-batch 512, f16 KV
    best: Trial
    trials: tuple[Trial, ...]

    @property
    def gain(self) -> float:
        """How much faster a chat turn is with the best settings than with llama.cpp's defaults."""
        return self.baseline.turn_s / self.best.turn_s

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "level": self.level, "machine_id": self.machine_id,
            "baseline": self.baseline.to_dict(), "best": self.best.to_dict(), "gain": self.gain,
            "trials": [t.to_dict() for t in self.trials],
        }


# --- the store of tuned settings -----------------------------------------------------------------------


def _key(path: Path, machine_id: str) -> str:
    """A file is the same file while its path, size and modification time are."""
    st = Path(path).stat()
    return f"{machine_id}|{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _load_all() -> dict:
    try:
        data = json.loads((data_dir() / FILENAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def paying_draft(rows: list[dict]) -> str:
    """From speed-ups measured per draft and task (rows with "use", "task" and "speedup"), the draft to speculate
    with by default: of those never below SPEC_FLOOR and above SPEC_PAYS on some task, the best on average; or "off"."""
    by_draft: dict[str, list[float]] = {}
    for r in rows:
        by_draft.setdefault(r["use"], []).append(r["speedup"])
    paying = {d: sum(x) / len(x) for d, x in by_draft.items() if min(x) >= SPEC_FLOOR and max(x) >= SPEC_PAYS}
    return max(paying, key=paying.__getitem__) if paying else "off"


def save(result: TuneResult, draft: str | None = None) -> None:
    """Keep `result`'s best settings for its file here, and `draft` (what paying_draft chose) when measured; a draft
    measured before stays while the file is the same."""
    from ..fsutil import atomic_output

    entries = _load_all()
    key = _key(result.path, result.machine_id)
    before = entries.get(key)
    if draft is None and isinstance(before, dict):
        draft = before.get("draft")
    entries[key] = {**asdict(result.best.settings), **({"draft": draft} if draft else {}), "created": time.time()}
    kept = dict(sorted(entries.items(), key=lambda kv: kv[1].get("created", 0) if isinstance(kv[1], dict) else 0)[-MAX_ENTRIES:])
    path = data_dir() / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(kept, indent=1))
    except OSError as exc:
        raise EdgeError(f"cannot save the tuned settings to {path}: {exc.strerror or exc}") from exc


def _entry(path: Path, machine_id: str) -> dict | None:
    try:
        entry = _load_all().get(_key(path, machine_id))
    except OSError:
        return None
    return entry if isinstance(entry, dict) else None


def lookup_draft(path: Path, machine_id: str) -> str | None:
    """What `tune --draft` found for this file here: the draft that pays ("ngram" or a model), "off", or None
    (never measured, or not a value tune writes)."""
    draft = (_entry(path, machine_id) or {}).get("draft")
    return draft if isinstance(draft, str) and 0 < len(draft) <= MAX_DRAFT_REF and "\0" not in draft else None


def lookup(path: Path, machine_id: str) -> Settings | None:
    """The settings `tune` found for this file on this machine, if any (and only sane ones)."""
    entry = _entry(path, machine_id)
    if entry is None:
        return None
    threads, ubatch, kv = entry.get("threads"), entry.get("n_ubatch"), entry.get("kv_type")
    ok = (
        isinstance(threads, int) and 1 <= threads <= (os.cpu_count() or 1)
        and ubatch in UBATCHES and kv in ("f16", "q8_0")
    )
    return Settings(threads, ubatch, kv) if ok else None
