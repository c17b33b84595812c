"""Start the HTTP server on one loaded Engine and its scheduler, or on the store's models (loaded when asked
for), and stop cleanly on Ctrl-C.

The listening socket is opened here, before the model loads: a port in use is one readable error, and the
address printed is the real one (also with --port 0), ready to take connections once printed.
"""

from __future__ import annotations

import socket
import sys

import uvicorn
from starlette.middleware import Middleware

from ..errors import EdgeError
from ..engine.runtime import Engine
from ..plan.planner import Plan
from . import anthropic, embeddings, ollama, rerank, responses
from .api import build_app
from .loading import LoadOptions, ready
from .metrics import Metrics
from .pool import ModelPool, ReleaseLeases

BACKLOG = 2048  # uvicorn's default
GRACEFUL_S = 5  # how long open connections get to finish once the replies have been ended
DIALECTS = (ollama.DIALECT, anthropic.DIALECT, responses.DIALECT, embeddings.DIALECT, rerank.DIALECT)


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

    def __init__(self, config: uvicorn.Config, request_stop):
        super().__init__(config)
        self._request_stop = request_stop

    def handle_exit(self, sig, frame) -> None:
        self._request_stop()
        super().handle_exit(sig, frame)


def _run(app, sock: socket.socket, request_stop) -> None:
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=GRACEFUL_S)
    _Server(config, request_stop).run(sockets=[sock])


def serve(engine: Engine, plan: Plan, opts: LoadOptions, model_id: str, sock: socket.socket, cors: tuple[str, ...]) -> None:
    """Answer requests for one loaded model until Ctrl-C (KeyboardInterrupt) or SIGTERM."""
    metrics = Metrics()
    state = ready(engine, plan, model_id, opts, metrics)
    app = build_app(state, metrics, cors, DIALECTS, api_key=opts.api_key)
    state.scheduler.start()
    print(f"serving {model_id} at {url(sock)}/v1 · {opts.parallel} slots × {state.n_ctx_slot} tokens · Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        _run(app, sock, state.scheduler.request_stop)
    finally:
        state.scheduler.stop()
        state.embedder.close()  # before the engine frees the model it reads


def serve_store(opts: LoadOptions, keep_alive: float, ram: int | None, sock: socket.socket, cors: tuple[str, ...]) -> None:
    """Answer requests for the store's models, each loaded when first named, until Ctrl-C or SIGTERM."""
    metrics = Metrics()
    pool = ModelPool(opts, keep_alive, ram, metrics)
    app = build_app(None, metrics, cors, DIALECTS, pool=pool, api_key=opts.api_key, inner=(Middleware(ReleaseLeases, pool=pool),))
    names = pool.names()
    print(f"serving the store ({len(names)} models: {', '.join(names)}) at {url(sock)}/v1 · each loaded when first asked for · Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        _run(app, sock, pool.request_stop)
    finally:
        pool.close()
