"""Many models from one server: the store's models, each loaded when a request first names it (OpenAI's and
Anthropic's `model`, Ollama's `name:tag`), with its own slots and scheduler, so requests to different models
run side by side. Requests to a model that is loading wait for it; models load one at a time.

Memory: each load is planned for what the loaded models leave (`--ram`, else the RAM free when the server
started, and never more than is free now); when the next model does not fit, the least recently used idle one
is unloaded first. An idle model is unloaded once its keep-alive has passed (the server's `--keep-alive`, or
the request's Ollama `keep_alive`: 0 unloads it as soon as the reply ends, a negative one never).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import sys
import threading
import time
from dataclasses import dataclass, field, replace

from ..engine.launch import with_projector
from ..errors import EdgeError
from ..plan.hardware import detect
from ..plan.planner import NotEnoughSpace
from ..store import store
from .api import ServeState
from .errors import ApiError, bad_request
from .loading import LoadOptions, load, options_for, plan_slots, ready, unload
from .metrics import Metrics
from .names import LATEST, slug

LEASES = "edgellm.leases"  # the ASGI scope's list of the models a request holds, released when its reply ends
FOREVER = math.inf
LOAD_GRACE_S = 30.0  # a model just loaded stays at least this long, for the requests that waited to take it


@dataclass
class Held:
    """A model in memory, or on its way there."""

    key: tuple[str, str | None]  # (store name, the level a `name:LEVEL` pinned; None: the planner's pick)
    loading: concurrent.futures.Future
    state: ServeState | None = None  # set once loaded
    users: int = 0  # requests holding it now
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = FOREVER  # Unix time an idle model is unloaded
    ram: int = 0  # what its plan counts
    vram: int = 0

    @property
    def name(self) -> str:
        entry, level = self.key
        return f"{entry}:{level}" if level else entry


class ModelPool:
    def __init__(self, opts: LoadOptions, keep_alive: float, ram: int | None, metrics: Metrics):
        self.opts = opts
        self.keep_alive = keep_alive  # seconds; FOREVER for -1
        self._ram = ram if ram is not None else detect().ram_available  # what the models may take together
        self._ram_given = ram is not None
        self._metrics = metrics
        self._held: dict[tuple[str, str | None], Held] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._loader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edgellm-load")
        self._reaper = threading.Thread(target=self._reap, name="edgellm-unload", daemon=True)
        self._reaper.start()

    # --- names ----------------------------------------------------------------------------------------

    @staticmethod
    def names() -> list[str]:
        return store.names()

    def resolve(self, name) -> tuple[str, str | None]:
        """The store entry (and pinned level) a request's model name means: the entry's name or its Ollama
        spelling, in any letter case, bare, `:latest` or `:LEVEL`. An unknown one is a 404 naming those there are."""
        if not isinstance(name, str) or not name.strip():
            raise bad_request(f"'model' is required: one of {', '.join(self.names()) or 'the store is empty'}", "model")
        base, _, tag = name.strip().partition(":")
        entries = self.names()
        entry = next((e for e in entries if base.lower() in (e.lower(), slug(e))), None)
        if entry is None:
            raise ApiError(404, f"model '{name}' not found: the store has {', '.join(entries) or 'no models'}", "model_not_found", "model")
        return entry, (None if tag.lower() in ("", LATEST) else tag.upper())

    # --- holding a model for a request ----------------------------------------------------------------

    async def lease(self, scope: dict, name, keep_alive: float | None) -> ServeState:
        """The model `name` for one request, loaded first if it is not; the pool's middleware gives it back
        when the reply has been sent, and `keep_alive` (None: the server's) counts from then."""
        held = await self.acquire(self.resolve(name))
        scope.setdefault(LEASES, []).append((held, keep_alive))
        return held.state

    async def acquire(self, key: tuple[str, str | None]) -> Held:
        while True:
            with self._cond:
                held = self._held.get(key) or self._same_file(key)
                if held is not None and held.state is not None:
                    held.users += 1
                    held.last_used = time.monotonic()
                    return held
                if held is None:
                    held = self._held[key] = Held(key, self._loader.submit(self._load, key))
                loading = held.loading
            try:
                await asyncio.wrap_future(loading)
            except ApiError:
                raise
            except EdgeError as exc:
                raise ApiError(500, f"cannot load {held.name}: {exc}", "model_load_failed") from None

    def _same_file(self, key: tuple[str, str | None]) -> Held | None:
        """For `name:LEVEL`, the model loaded as `name` when the planner chose that level for it (not a second copy)."""
        entry, level = key
        return next((h for h in self._held.values() if level is not None and h.key == (entry, None) and h.state is not None
                     and h.state.plan.get("level", "").upper() == level), None)

    def release(self, held: Held, keep_alive: float | None) -> None:
        with self._cond:
            held.users -= 1
            held.last_used = time.monotonic()
            if held.users == 0:
                wait = self.keep_alive if keep_alive is None else keep_alive
                held.expires_at = time.time() + wait if wait >= 0 else FOREVER
                self._cond.notify()

    def loaded(self) -> list[Held]:
        with self._cond:
            return [h for h in self._held.values() if h.state is not None]

    # --- loading and unloading (the loader and unloader threads) --------------------------------------

    def _free_ram(self) -> int:
        with self._cond:
            used = sum(h.ram for h in self._held.values() if h.state is not None)
        free = self._ram - used
        return free if self._ram_given else min(free, detect().ram_available)

    def _load(self, key: tuple[str, str | None]) -> None:
        entry, level = key
        try:
            ref = with_projector(entry, None, images=False)  # a damaged projector leaves the text model serving
            if level is not None:
                if level not in (f.level.upper() for f in ref.files):
                    have = ", ".join(f"{entry}:{f.level}" for f in ref.files)
                    raise ApiError(404, f"model '{entry}:{level}' not found: {entry} has {have}", "model_not_found", "model")
                ref = replace(ref, files=(ref.file(level),))
            opts = options_for(ref, self.opts)
            while True:
                hw = detect()
                try:
                    plan, per_slot = plan_slots(ref, opts, replace(hw, ram_available=max(0, self._free_ram())))
                    break
                except NotEnoughSpace as exc:
                    if not self._unload_idle():
                        busy = [h.name for h in self.loaded()]
                        if busy:
                            raise ApiError(503, f"{entry} does not fit beside the models in use ({', '.join(busy)}): try again when they are "
                                                f"idle. {exc}", "server_busy", "model", headers={"Retry-After": "5"}) from None
                        raise ApiError(400, f"{entry} does not fit in this machine's memory: {exc}", "model_too_large", "model") from None
            t0 = time.perf_counter()
            engine = load(plan, per_slot, opts, ref.projector)
            try:
                state = ready(engine, plan, entry, opts, self._metrics)
            except BaseException:
                engine.close()
                raise
            state.scheduler.start()
        except BaseException:
            with self._cond:
                self._held.pop(key, None)
            raise
        memory = plan.memory
        print(f"loaded {entry} {plan.level} in {time.perf_counter() - t0:.1f}s · {opts.parallel} slots × {per_slot} tokens",
              file=sys.stderr, flush=True)
        with self._cond:
            held = self._held[key]
            held.state, held.ram, held.vram = state, memory.ram, memory.vram
            # the requests that waited hold it within moments; should they all have gone, it is not kept for ever
            held.expires_at = time.time() + max(self.keep_alive, LOAD_GRACE_S)
            self._cond.notify()  # the unloader counts this one's time from now

    def _unload_idle(self) -> bool:
        """Unload the least recently used idle model; False if none is idle."""
        with self._cond:
            idle = [h for h in self._held.values() if h.state is not None and h.users == 0]
            if not idle:
                return False
            victim = min(idle, key=lambda h: h.last_used)
            del self._held[victim.key]
        self._unload(victim, "to make room")
        return True

    def _unload(self, held: Held, why: str) -> None:
        unload(held.state)
        print(f"unloaded {held.name} ({why})", file=sys.stderr, flush=True)

    def _reap(self) -> None:
        """Unload each idle model whose keep-alive has passed."""
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.time()
                expired = [h for h in self._held.values() if h.state is not None and h.users == 0 and h.expires_at <= now]
                for h in expired:
                    del self._held[h.key]
                if not expired:
                    waits = [h.expires_at - now for h in self._held.values() if h.state is not None and h.users == 0]
                    soonest = min(waits, default=FOREVER)
                    self._cond.wait(None if soonest == FOREVER else soonest)
                    continue
            for h in expired:
                self._unload(h, "idle")

    # --- stopping -------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """End every reply in progress (a signal handler may call it)."""
        for held in list(self._held.values()):
            if held.state is not None:
                held.state.scheduler.request_stop()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._reaper.join()
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            held, self._held = list(self._held.values()), {}
        for h in held:
            if h.state is not None:
                unload(h.state)


class ReleaseLeases:
    """ASGI middleware: gives back the models a request held, once its reply (a stream too) has ended."""

    def __init__(self, app, pool: ModelPool):
        self.app = app
        self.pool = pool

    async def __call__(self, scope, receive, send):
        try:
            await self.app(scope, receive, send)
        finally:
            for held, keep_alive in scope.pop(LEASES, ()):
                self.pool.release(held, keep_alive)
