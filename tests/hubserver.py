"""Small model hubs on localhost, so the hubs' real download code runs in tests.

`HubServer(hub)` answers the Hugging Face endpoints `model_info`, `snapshot_download` and `hf_hub_download`
use (repo info, tree listing, HEAD/GET of `resolve/` with byte ranges) the way the Hub does, including its
error headers (`X-Error-Code: RepoNotFound` / `GatedRepo`), so huggingface_hub raises its own exceptions.
Tests can also make it cut a download short, or fail, to check resuming. `HubServer(hub, modelscope=True)`
answers ModelScope's file listing and file download (`/api/v1/models/<id>/repo/files`, `.../repo?FilePath=`)
with its status codes (404 missing, 403 no access) for modelscope_hub.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False  # files answer 403 (HF: GatedRepo): the licence is not accepted
    private: bool = False  # everything answers 401: no login
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    # Sizes the listing reports instead of the real ones (to stand in for a repo too big for the disk).
    listed_sizes: dict[str, int] = field(default_factory=dict)


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    cut: dict[str, int] = field(default_factory=dict)  # file -> bytes to send before dropping the connection once
    failing: set[str] = field(default_factory=set)  # files that answer 503 (after their cut)
    token: str = "hf_test"  # the one token uploads are accepted with

    def downloads(self) -> list[tuple[str, str | None]]:
        """(file path in repo, Range) of each GET of a file."""
        return [(p.split("/resolve/", 1)[1].split("/", 1)[1], r) for m, p, r in self.log if m == "GET" and "/resolve/" in p]

    def modelscope_downloads(self) -> list[str]:
        """The FilePath of each ModelScope file download."""
        return [p.split("?FilePath=", 1)[1] for m, p, _ in self.log if m == "GET" and "?FilePath=" in p]


@functools.lru_cache(maxsize=64)  # bytes hash once; big files are listed many times
def _oid(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _handler(hub: Hub, modelscope: bool):
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
            if repo is None or repo.private:  # the Hub does not tell a private repo from a missing one
                self._error(401 if repo else 404, "RepoNotFound")
                return None
            return repo

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_POST(self) -> None:
            """Uploads as `HfApi.upload_folder` makes them: create the repo, ask how to send each file
            ("regular": inline in the commit), then one NDJSON commit carrying the files base64-encoded."""
            path = unquote(urlsplit(self.path).path)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hub.log.append(("POST", path, None))
            if self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._send(401, b'{"error": "Invalid credentials in Authorization header"}')
            if path == "/api/repos/create":
                req = json.loads(body)
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                hub.repos.setdefault(repo_id, Repo(files={}))
                return self._json({"url": f"http://{self.headers['Host']}/{repo_id}"})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path):
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]]
                return self._json({"files": files})
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/[^/]+", path):
                repo = hub.repos[m.group(1)]
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                repo.sha = hashlib.sha1(repr(sorted(repo.files)).encode()).hexdigest()
                url = f"http://{self.headers['Host']}/{m.group(1)}/commit/{repo.sha}"
                return self._json({"commitUrl": url, "commitOid": repo.sha})
            self._send(404)

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path = unquote(url.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            hub.log.append((self.command, path + (f"?FilePath={query['FilePath']}" if "FilePath" in query else ""),
                            self.headers.get("Range")))  # fmt: skip
            if modelscope:
                return self._modelscope(path, query)
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

        def _modelscope(self, path: str, query: dict) -> None:
            m = re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)/repo(/files)?", path)
            repo = hub.repos.get(m.group(1)) if m else None
            if repo is None:
                return self._send(404, json.dumps({"Code": 10010205001, "Message": "model not found"}).encode())
            if repo.private:
                return self._send(401, json.dumps({"Code": 401, "Message": "login required"}).encode())
            if repo.gated:
                return self._send(403, json.dumps({"Code": 403, "Message": "no access"}).encode())
            if m.group(2):
                files = [
                    {"Path": p, "Name": p.rsplit("/", 1)[-1], "Type": "blob", "Sha256": _oid(d),
                     "Size": repo.listed_sizes.get(p, len(d))}
                    for p, d in sorted(repo.files.items())
                ]  # fmt: skip
                return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
            name = query.get("FilePath", "")
            if name not in repo.files:
                return self._send(404, b"{}")
            if name in hub.failing:
                return self._send(503, b"", {"Connection": "close"})
            self._send_range(repo.files[name], {"Accept-Ranges": "bytes"})

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

    def __init__(self, hub: Hub, modelscope: bool = False) -> None:
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub, modelscope))
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
