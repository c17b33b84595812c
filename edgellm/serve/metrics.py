"""Counters for /metrics, in Prometheus' text format. The scheduler thread and the HTTP handlers both
update them, so every change holds the lock."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

RATE_WINDOW_S = 10.0  # tokens/s is measured over this recent window
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings", "/v1/models", "/health", "/metrics")


@dataclass
class Metrics:
    requests: Counter = field(default_factory=Counter)  # (endpoint, status) -> count
    prompt_tokens: int = 0  # prompt tokens of admitted requests
    prompt_tokens_evaluated: int = 0  # of those, evaluated (the rest came from a slot's cache)
    completion_tokens: int = 0
    cancelled: int = 0  # requests whose client went away before the end
    drafted: int = 0  # tokens slots guessed ahead (speculation)
    accepted: int = 0  # of those, the ones the model agreed with
    _recent: deque = field(default_factory=deque)  # (time, tokens generated in one step)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"  # a label per unknown path would grow without bound
        with self._lock:
            self.requests[endpoint, status] += 1

    def admitted(self, prompt_tokens: int, evaluated: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.prompt_tokens_evaluated += evaluated

    def generated(self, n: int) -> None:
        now = time.monotonic()
        with self._lock:
            self.completion_tokens += n
            self._recent.append((now, n))
            self._trim(now)

    def guessed(self, drafted: int, accepted: int) -> None:
        with self._lock:
            self.drafted += drafted
            self.accepted += accepted

    def ended(self, cancelled: bool) -> None:
        if cancelled:
            with self._lock:
                self.cancelled += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - RATE_WINDOW_S:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            if not self._recent:
                return 0.0
            span = max(now - self._recent[0][0], 1e-3)
            return sum(n for _, n in self._recent) / span

    def render(self, slots: int, busy: int, queued: int, threads: int) -> str:
        tps = self.tokens_per_second()
        with self._lock:
            rows = [
                ("requests_total", "counter", "Requests answered, by endpoint and HTTP status.",
                 [(f'{{endpoint="{e}",status="{s}"}}', n) for (e, s), n in sorted(self.requests.items())]),
                ("requests_cancelled_total", "counter", "Requests whose client went away before the reply ended.", [("", self.cancelled)]),
                ("prompt_tokens_total", "counter", "Prompt tokens of the requests given a slot.", [("", self.prompt_tokens)]),
                ("prompt_tokens_evaluated_total", "counter", "Prompt tokens evaluated (the rest were still in a slot's cache).",
                 [("", self.prompt_tokens_evaluated)]),
                ("completion_tokens_total", "counter", "Tokens generated.", [("", self.completion_tokens)]),
                ("draft_tokens_total", "counter", "Tokens guessed ahead by speculation.", [("", self.drafted)]),
                ("draft_tokens_accepted_total", "counter", "Guessed tokens the model agreed with.", [("", self.accepted)]),
                ("tokens_per_second", "gauge", f"Tokens generated per second over the last {RATE_WINDOW_S:g} s.", [("", round(tps, 3))]),
                ("slots", "gauge", "Slots: requests decoded together.", [("", slots)]),
                ("slots_busy", "gauge", "Slots serving a request now.", [("", busy)]),
                ("queue_depth", "gauge", "Requests waiting for a free slot.", [("", queued)]),
                ("threads", "gauge", "CPU threads llama.cpp decodes with now, the most of the loaded models' (they follow other programs' load).", [("", threads)]),
            ]
        lines = []
        for name, kind, help_text, samples in rows:
            lines += [f"# HELP edgellm_{name} {help_text}", f"# TYPE edgellm_{name} {kind}"]
            lines += [f"edgellm_{name}{labels} {value}" for labels, value in samples]
        return "\n".join(lines) + "\n"
