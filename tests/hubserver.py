"""A small Hugging Face Hub on localhost, so huggingface_hub's real download code runs in tests.

It answers the endpoints `model_info`, `snapshot_download` and `hf_hub_download` use (repo info, tree
listing, HEAD/GET of `resolve/` with byte ranges) the way the Hub does, including its error headers
(`X-Error-Code: RepoNotFound` / `GatedRepo`), so the library raises its own exceptions. Tests can also
make it cut a download short, or fail, to check resuming.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    # Sizes the listing reports instead of the real ones (to stand in for a repo too big for the disk).
    listed_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    cut: dict[str, int] = field(default_factory=dict)  # file -> bytes to send before dropping the connection once
    failing: set[str] = field(default_factory=set)  # files that answer 503 (after their cut)

    def downloads(self) -> list[tuple[str, str | None]]:
        """(file path in repo, Range) of each GET of a file."""
        return [(p.split("/resolve/", 1)[1].split("/", 1)[1], r) for m, p, r in self.log if m == "GET" and "/resolve/" in p]


@functools.lru_cache(maxsize=64)  # bytes hash once; big files are listed many times
def _oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _handler(hub: Hub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, length: int | None = None):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj) -> None:
            self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"})

        def _error(self, code: int, error_code: str) -> None:
            self._send(code, b"{}", {"X-Error-Code": error_code, "Content-Type": "application/json"})

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
            return repo

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.log.append((self.command, path, self.headers.get("Range")))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
                if repo := self._repo(m.group(1)):
                    self._json(
                        {
                            "id": m.group(1),
                            "sha": repo.sha,
                            "gated": "manual" if repo.gated else False,
                            "siblings": [
                                {"rfilename": p, "size": repo.listed_sizes.get(p, len(d)), "blobId": _oid(d)}
                                for p, d in sorted(repo.files.items())
                            ],
                        }
                    )
            elif m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
                if repo := self._repo(m.group(1)):
                    self._json(
                        [
                            {"type": "file", "path": p, "size": len(d), "oid": _oid(d),
                             "lfs": {"oid": _oid(d), "size": len(d), "pointerSize": 130}}
                            for p, d in sorted(repo.files.items())
                        ]
                    )
            elif m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                self._resolve(m.group(1), m.group(3))
            else:
                self._send(404)

        def _resolve(self, repo_id: str, name: str) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if repo.gated:
                return self._error(403, "GatedRepo")
            if name not in repo.files:
                return self._error(404, "EntryNotFound")
            data = repo.files[name]
            meta = {"X-Repo-Commit": repo.sha, "ETag": f'"{_oid(data)}"', "Accept-Ranges": "bytes"}
            if self.command == "HEAD":
                return self._send(200, data, meta)
            if name in hub.cut:
                keep = hub.cut.pop(name)
                self._send_range(data, meta, keep)
                self.close_connection = True
                return
            if name in hub.failing:
                return self._send(503, b"", {"Connection": "close"})
            self._send_range(data, meta)

        def _send_range(self, data: bytes, meta: dict, keep: int | None = None) -> None:
            start = 0
            if (r := self.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", r)):
                start = int(m.group(1))
                meta = {**meta, "Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
            body = data[start:]
            self.send_response(206 if start else 200)
            for k, v in meta.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body if keep is None else body[:keep])

    return Handler


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on localhost until the block ends."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
