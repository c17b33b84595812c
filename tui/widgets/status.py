"""What the chat runs on and how it goes: the model line on top, the stats line above the footer."""

from __future__ import annotations

from dataclasses import dataclass

from textual.reactive import reactive
from textual.widgets import Static


class ModelHeader(Static):
    """Model name, quant level and the planner's choice, e.g. `SmolLM2 · Q4_1 · CPU only · ctx 2048`."""


@dataclass(frozen=True)
class Stats:
    state: str = "loading model…"
    tok_s: float | None = None
    ctx_used: int = 0
    ctx_size: int = 0
    level: str = "?"
    gpu_layers: str = "?"
    lora: str = ""  # LoRA adapters applied, e.g. "my-tune ×0.5"
    note: str = ""  # e.g. "context full: 2 oldest messages left out"
    threads: int = 0  # CPU threads llama.cpp decodes with (chosen again before each reply and during long ones)


class StatsBar(Static):
    stats: reactive[Stats] = reactive(Stats)

    def render(self) -> str:
        s = self.stats
        speed = f"{s.tok_s:.1f} tok/s" if s.tok_s is not None else "– tok/s"
        parts = [s.state, speed, f"ctx {s.ctx_used}/{s.ctx_size}", s.level, f"GPU {s.gpu_layers}"]
        if s.threads:
            parts.append(f"{s.threads} thread{'s' if s.threads != 1 else ''}")
        if s.lora:
            parts.append(f"LoRA {s.lora}")
        if s.note:
            parts.append(s.note)
        return " │ ".join(parts)
