"""How the next token is picked: plain values shared by the runtime, the chat's settings and the server
(nothing here loads llama.cpp)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sampling:
    """How the next token is picked. temperature <= 0 means greedy (always the most likely token)."""

    temperature: float = 0.7
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int | None = None  # None: a new random seed each time
    max_tokens: int | None = 512  # None: until the model stops or the context is full
    ignore_eos: bool = False  # keep going past end-of-turn tokens (benchmarks want exactly max_tokens)
    presence_penalty: float = 0.0  # subtracted once from each token already in the recent text (OpenAI's meaning)
    frequency_penalty: float = 0.0  # subtracted per occurrence in the recent text
