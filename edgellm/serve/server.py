"""Start the scheduler and the HTTP server on one loaded Engine, and stop both cleanly on Ctrl-C.

The listening socket is opened here, before the model loads: a port in use is one readable error, and the
address printed is the real one (also with --port 0), ready to take connections once printed.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

import uvicorn

from ..errors import EdgeError
from ..engine.embedding import LazyEmbedder
from ..engine.runtime import Engine
from . import anthropic, embeddings, ollama, responses
from .api import ServeState, build_app
from .metrics import Metrics
from .scheduler import Scheduler

BACKLOG = 2048  # uvicorn's default
GRACEFUL_S = 5  # how long open connections get to finish once the replies have been ended


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    n_slots: int
    max_queue: int
    model_id: str
    api_key: str | None
    cors: tuple[str, ...]


def bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)  # connections wait here until uvicorn runs: the printed address is ready when printed
    except OSError as exc:
        raise EdgeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server; a stop signal also ends every reply in progress, so streams do not hold it open."""

    def __init__(self, config: uvicorn.Config, scheduler: Scheduler):
        super().__init__(config)
        self._scheduler = scheduler

    def handle_exit(self, sig, frame) -> None:
        self._scheduler.request_stop()
        super().handle_exit(sig, frame)


def serve(engine: Engine, plan: dict, opts: ServeOptions, sock: socket.socket) -> None:
    """Answer requests until Ctrl-C (KeyboardInterrupt) or SIGTERM."""
    metrics = Metrics()
    scheduler = Scheduler(engine, opts.n_slots, opts.max_queue, metrics)
    state = ServeState(engine, scheduler, metrics, opts.model_id, plan, opts.n_slots, scheduler.n_ctx_slot, opts.api_key, int(time.time()),
                       LazyEmbedder(engine.model, scheduler.n_ctx_slot, engine.info.n_threads))
    app = build_app(state, opts.cors, (ollama.DIALECT, anthropic.DIALECT, responses.DIALECT, embeddings.DIALECT))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_S)
    server = _Server(config, scheduler)
    scheduler.start()
    print(
        f"serving {opts.model_id} at {url(sock)}/v1 · {opts.n_slots} slots × {scheduler.n_ctx_slot} tokens · Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.run(sockets=[sock])
    finally:
        scheduler.stop()
        state.embedder.close()  # before the engine frees the model it reads
