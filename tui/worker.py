"""The engine worker: what the chat needs of a model, and the threads that load one and write a reply.

`ChatEngine` is the contract the app codes against (edgellm.engine.runtime.Engine, or a scripted engine in the
layout tests); `tui.backend.open_model` plans and loads a real one into a `LoadedModel`. Loading and generating
run in worker threads that answer only by posting messages: `ModelReady` or `ModelFailed` after a load,
`ContextTrimmed` when the oldest messages are left out, `ThreadsChanged` when a long reply's threads follow the
load of other programs, and the reply itself to its MessageView as `Chunk`
messages, batched to a few per second so the UI thread does little work per token, then `Finished`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Protocol

from textual import work
from textual.message import Message as TextualMessage

from edgellm.engine.reasoning import CONTENT, REASONING, Reply, opened_in

from .state import ChatSettings, ContextFull, fit_context, reply_budget
from .widgets.messages import MessageView

if TYPE_CHECKING:  # the runtime loads llama.cpp: layout tests run without it
    from edgellm.engine.runtime import EngineInfo, GenStats
    from edgellm.engine.sampling import Sampling

# How often the generation thread hands text to the UI. Each update re-lays out and redraws the chat,
# CPU that llama.cpp's threads lose on a small machine: on 2 cores, 30 updates/s cost ~15% of tok/s, 4/s ~10%.
FRAME_S = 0.25


class ChatEngine(Protocol):
    """What the chat needs of a loaded model: edgellm.engine.runtime.Engine, or a scripted one in layout tests."""

    info: EngineInfo
    last_stats: GenStats | None

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True, **switch) -> str: ...

    def count_tokens(self, text: str) -> int: ...

    def stream_chat(
        self, messages: list[dict], sampling: Sampling | None = None, cancel: threading.Event | None = None, **switch
    ) -> Iterator[str]: ...

    def close(self) -> None: ...


@dataclass
class LoadedModel:
    """What `open_model` returns: the engine and the planner's one-line account of it."""

    engine: ChatEngine
    path: str  # the GGUF file in use
    plan: str  # one line for the header, e.g. "Q4_1 chosen by the planner · CPU only · ctx 8192"
    explain: str = ""  # the planner's full account of its choice
    lora: str = ""  # the LoRA adapters applied, for the status line ("" when none)
    thinks: bool = False  # the chat template teaches the model to reason in <think>…</think> before its answer
    think: bool | None = None  # the thinking switched on or off for every reply (None: the template's default)
    note: str = ""  # one line the user should see once the model is up ("" when none)


OpenModel = Callable[[str | None, ChatSettings], LoadedModel]


class ModelReady(TextualMessage):
    def __init__(self, loaded: LoadedModel) -> None:
        super().__init__()
        self.loaded = loaded


class ModelFailed(TextualMessage):
    def __init__(self, ref: str | None, reason: str) -> None:
        super().__init__()
        self.ref = ref
        self.reason = reason


class ContextTrimmed(TextualMessage):
    def __init__(self, dropped: int) -> None:
        super().__init__()
        self.dropped = dropped


class ThreadsChanged(TextualMessage):
    def __init__(self, threads: int) -> None:
        super().__init__()
        self.threads = threads


class Pending:
    """Text on its way to a MessageView, in runs of one kind (reasoning or answer); the answer's runs are kept in `parts`."""

    def __init__(self, view: MessageView, parts: list[str]) -> None:
        self.view, self.parts = view, parts
        self.kind, self.texts = CONTENT, []

    def add(self, kind: str, text: str) -> None:
        if kind != self.kind:
            self.send()
            self.kind = kind
        self.texts.append(text)

    def send(self) -> None:
        if not self.texts:
            return
        chunk = "".join(self.texts)
        self.texts.clear()
        if self.kind == CONTENT:
            self.parts.append(chunk)
        self.view.post_message(MessageView.Chunk(chunk, thinking=self.kind == REASONING))


def with_places(history: list[dict]) -> list[dict]:
    """The history with each attached image's place (vision.MARKER) before its message's text."""
    if not any(m.get("images") for m in history):
        return history
    from edgellm.engine.vision import MARKER

    return [m | {"content": MARKER * len(m["images"]) + m["content"]} if m.get("images") else m for m in history]


class EngineWorker:
    """ChatApp's worker threads (mixed into it): they read the app's `open_model`, `settings`, `engine`, `idle`
    and post what comes back."""

    @work(thread=True, exclusive=True, group="model")
    def load_model(self, ref: str | None, old=None) -> None:
        self.idle.wait()  # a stopped reply may still be finishing its last token with the old engine
        if old is not None:
            old.close()
        try:
            loaded = self.open_model(ref, self.settings)
        except Exception as exc:  # any load failure goes to the error screen with its reason
            self.post_message(ModelFailed(ref, str(exc) or type(exc).__name__))
        else:
            self.post_message(ModelReady(loaded))

    def shown_pictures(self, messages: list[dict]) -> tuple[list[dict], list]:
        """The messages as the template takes them, and the decoded pictures of those that hold images, in order
        (decoded once per file: `self.pictures`)."""
        from edgellm.engine.images import read_image

        pictures = []
        for m in messages:
            for path in m.get("images", ()):
                if path not in self.pictures:
                    self.pictures[path] = read_image(path)
                pictures.append(self.pictures[path])
        return [{k: v for k, v in m.items() if k != "images"} for m in messages], pictures

    @work(thread=True, exclusive=True, group="reply")
    def generate(self, view: MessageView, history: list[dict], settings: ChatSettings, cancel: threading.Event) -> None:
        engine, loaded = self.engine, self.loaded
        parts: list[str] = []  # the answer so far
        switch = {} if loaded.think is None else {"think": loaded.think}
        try:
            history = with_places(history)
            budget = reply_budget(engine.info.n_ctx, settings.max_tokens)
            fitted = fit_context(history, lambda ms: engine.count_tokens(engine.render_chat(ms, **switch)), budget)
            if fitted.dropped:
                self.post_message(ContextTrimmed(fitted.dropped))
            messages, pictures = self.shown_pictures(fitted.messages)
            shown = {"images": pictures} if pictures else {}  # (a text-only engine is never asked about images)
            reply = Reply(opened_in(engine.render_chat(messages, **switch))) if loaded.thinks else None
            pending = Pending(view, parts)
            last = time.monotonic()
            threads = engine.info.n_threads
            for piece in engine.stream_chat(messages, settings.sampling(), cancel, **switch, **shown):
                if reply is None:  # the plain path: no splitting
                    pending.add(CONTENT, piece)
                else:
                    for part in reply.push(piece):
                        pending.add(part.kind, part.text)
                now = time.monotonic()
                if now - last >= FRAME_S:
                    pending.send()
                    last = now
                    if engine.info.n_threads != threads:
                        threads = engine.info.n_threads
                        self.post_message(ThreadsChanged(threads))
            if reply is not None:
                for part in reply.flush():
                    pending.add(part.kind, part.text)
                if engine.last_stats is not None:
                    engine.last_stats.thinking_tokens = min(reply.thinking_pieces, engine.last_stats.gen_tokens)
            pending.send()
            view.post_message(MessageView.Finished("".join(parts), engine.last_stats))
        except ContextFull as exc:
            view.post_message(MessageView.Finished("".join(parts), error=f"Context full: {exc}. Start a new chat (Ctrl+N) or raise the context size."))
        except Exception as exc:  # keep the UI alive and show what went wrong
            view.post_message(MessageView.Finished("".join(parts), error=str(exc) or type(exc).__name__))
        finally:
            self.idle.set()
