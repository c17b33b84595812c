"""Model hubs on localhost that answer the way the live ones do, so the hubs' real client code runs in tests.

`HubServer(hub)` stands in for huggingface.co, following the requests huggingface_hub 2.x makes:

- repo info (`/api/models/<id>[/revision/<rev>]`), tree listing (`/api/models/<id>/tree/<rev>`), HEAD/GET of
  `<id>/resolve/<rev>/<file>` (a dataset's at `datasets/<id>/resolve/...`, its repo keyed "datasets/<id>"); a
  revision the repo lacks answers 404 `X-Error-Code: RevisionNotFound` (`refs/pr/N` and other revisions
  arrive URL-quoted, as the library sends them), a missing repo `RepoNotFound`, a gated one `GatedRepo`, a
  missing file `EntryNotFound`.
- Small text files are plain git blobs (200, ETag = git blob id). LFS files (weights, GGUF, anything binary
  or of 10 MiB and more) answer 302 to a storage host of another origin (as the Hub redirects to its CDN),
  with `X-Linked-Size`/`X-Linked-Etag`; stored on Xet (`hub.xet`, the live default) they also carry
  `X-Xet-Hash` and the `xet-auth` link, and the tree lists their `xetHash`. The Xet token endpoint
  (`xet-read-token`, `xet-write-token`) answers, but the CAS server it names is unreachable: hf_xet's
  transfers fail as they do where the Xet service is blocked, and only the plain HTTP path works.
- Uploads: `/api/repos/create` (409 when the repo exists), `/api/validate-yaml` (a card without YAML gets
  the Hub's warning, invalid YAML or a licence that is no identifier a 400), `preupload` (`lfs` for LFS files, `regular` for small text),
  the LFS batch API with PUT to the storage host and verify, and the NDJSON commit (which refuses binary
  content sent inline and LFS pointers to objects never uploaded).

`HubServer(hub, modelscope=True)` stands in for modelscope.cn: file listing and download
(`/api/v1/models/<id>/repo/files`, `.../repo?FilePath=`; a dataset's at `/api/v1/datasets/<id>/...`, its repo
keyed "datasets/<id>"), with its errors: 404 for a missing or private
repo (body `Code` 10010205001) and for a gated one (10010200001), 404 with 10990101004 for a revision the
repo lacks (and with another code for a missing file), 401 for a token it refuses. LFS files redirect (302) to the storage host (OSS on the live
hub), which honours byte ranges; small git files are served in place and ignore `Range`, as the live
endpoint does (modelscope_hub expects both).

Byte ranges, as the live storage hosts answer them: `bytes=a-b`, `bytes=a-` and `bytes=-n` get 206 with
`Content-Range: bytes a-b/size`, a start past the end 416 with `Content-Range: bytes */size`, other forms
(several ranges) the whole file with 200. HEAD answers like GET without the body, through the same redirects.

A `Sparse` file stands in for a big one (a GGUF level of an 8B model): its header bytes are real, the rest
reads as zeros, and its checksums are stand-ins, so it can be listed, HEADed and read by ranges but is
never served whole.

Tests can cut a transfer short once (`hub.cut`), make a file fail with 503 (`hub.failing`), send it slowly
(`hub.throttle`) or whole whatever Range asks (`hub.ranges_ignored`).
"""

from __future__ import annotations

import base64
import fnmatch
import functools
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

# The Hub's default .gitattributes sends these to LFS; anything binary or large goes there too.
LFS_PATTERNS = (
    "*.safetensors", "*.gguf", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.model", "*.onnx", "*.h5", "*.msgpack",
    "*.npy", "*.npz", "*.pkl", "*.pickle", "*.zip", "*.gz", "*.tar", "*.tar.*", "*.zst", "*.xz", "*.7z",
)  # fmt: skip
LFS_MIN_SIZE = 10 << 20
HF_DEFAULT_BRANCH = "main"
MS_DEFAULT_BRANCH = "master"
# ModelScope's business codes (the body's `Code`): the HTTP status is 404 for all three.
MS_NOT_FOUND = 10010205001  # no such repo, or a private one the caller may not see
MS_NO_ACCESS = 10010200001  # a gated repo whose licence the caller has not accepted
MS_NO_REVISION = 10990101004
SPARSE_RANGE_MAX = 64 << 20  # the most of a Sparse file one answer carries: a test reading more has a bug


@dataclass(frozen=True)
class Sparse:
    """A big file held as its first bytes and its size; the bytes after `head` read as zeros."""

    head: bytes
    size: int

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: slice) -> bytes:
        start, stop, _ = key.indices(self.size)
        if stop - start > SPARSE_RANGE_MAX:
            raise ValueError(f"a Sparse file is not served whole ({stop - start} bytes asked)")
        return self.head[start:stop] + bytes(max(0, stop - max(start, len(self.head))))


def _digest_input(data: bytes | Sparse) -> bytes:
    """What the checksums of `data` are taken over: a Sparse file's are stand-ins (it is never downloaded)."""
    return b"sparse %d " % data.size + data.head if isinstance(data, Sparse) else data


@dataclass
class Repo:
    files: dict[str, bytes | Sparse]
    gated: bool = False  # downloads need the licence accepted (HF: GatedRepo; ModelScope: Code 10010200001)
    private: bool = False  # seen by nobody without its owner's login: answers as a missing repo
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    refs: set[str] = field(default_factory=set)  # tags and refs/pr/N beside the default branch
    # Sizes repo info (HF) or the file listing (ModelScope) report instead of the real ones: a repo too big
    # for the disk, or levels too big for the machine, that are never downloaded.
    listed_sizes: dict[str, int] = field(default_factory=dict)

    def has_revision(self, revision: str, default_branch: str) -> bool:
        return revision in (default_branch, self.sha) or revision in self.refs


@dataclass
class Hub:
    repos: dict[str, Repo] = field(default_factory=dict)
    log: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)
    cut: dict[str, int] = field(default_factory=dict)  # file -> bytes to send before dropping the connection once
    failing: set[str] = field(default_factory=set)  # files that answer 503 (after their cut)
    throttle: dict[str, int] = field(default_factory=dict)  # file -> bytes per second its content is sent at
    ranges_ignored: set[str] = field(default_factory=set)  # files whose every answer is the whole file (a CDN dropping Range)
    token: str = "hf_test"  # the one token uploads are accepted with
    xet: bool = True  # LFS files live on Xet storage, as on the live Hub
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content uploaded through LFS
    card_checks: list[str] = field(default_factory=list)  # READMEs sent to /api/validate-yaml
    urls: dict[str, str] = field(default_factory=dict)  # "hub", "storage", "cas": set by HubServer

    served: list[tuple[str, str | None]] = field(default_factory=list)  # (file, Range): downloads, resumes
    ranges: list[tuple[str, str]] = field(default_factory=list)  # (file, Range) of each bounded range read
    bytes_sent: dict[str, int] = field(default_factory=dict)  # file -> bytes of its content sent, all answers

    def forget(self) -> None:
        """Clear the record of requests and downloads (before the part of a test that counts them)."""
        self.log.clear()
        self.served.clear()
        self.ranges.clear()
        self.bytes_sent.clear()

    def downloads(self) -> list[tuple[str, str | None]]:
        """(file path in repo, Range) of each answer that carried a file's bytes to download it: whole, or the
        rest of it from a byte on (a resume). From the Hub or its storage host; a redirect carries none."""
        return list(self.served)

    def range_reads(self) -> list[tuple[str, str]]:
        """(file path in repo, Range) of each answer to a bounded range `bytes=a-b` (a header read)."""
        return list(self.ranges)

    def xet_requests(self) -> list[str]:
        """The Xet token requests (each Xet transfer asks for one first)."""
        return [p for _, p, _ in self.log if "/xet-read-token/" in p or "/xet-write-token/" in p]

    def modelscope_downloads(self) -> list[str]:
        """The FilePath of each ModelScope file download."""
        return [p.split("?FilePath=", 1)[1] for m, p, _ in self.log if m == "GET" and "?FilePath=" in p]


def is_lfs(path: str, data: bytes | Sparse) -> bool:
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) for p in LFS_PATTERNS) or len(data) >= LFS_MIN_SIZE or b"\0" in data[:8000]


@functools.lru_cache(maxsize=64)  # bytes hash once; big files are listed many times
def _sha256(data: bytes | Sparse) -> str:
    return hashlib.sha256(_digest_input(data)).hexdigest()


@functools.lru_cache(maxsize=64)
def _git_oid(data: bytes | Sparse) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + _digest_input(data)).hexdigest()


@functools.lru_cache(maxsize=64)
def _xet_hash(data: bytes | Sparse) -> str:
    """Stands in for Xet's Merkle hash: 64 hex digits, not the sha256."""
    return hashlib.sha256(b"xet" + _digest_input(data)).hexdigest()


# `Range: bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; anything else is ignored, as servers may)
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_BOUNDED = re.compile(r"bytes=\d+-\d+")


def byte_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """The inclusive (first, last) byte a Range header asks of a file of `size` bytes; "unsatisfiable" for a
    start at or past the end; None when there is no Range to honour (the whole file is sent)."""
    m = _RANGE.fullmatch(header.strip()) if header else None
    if not m or not (m.group(1) or m.group(2)):
        return None
    if not m.group(1):  # the last n bytes
        n = int(m.group(2))
        return (max(0, size - n), size - 1) if n and size else "unsatisfiable"
    first = int(m.group(1))
    last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if m.group(2) and int(m.group(2)) < first:
        return None  # invalid: ignored
    return (first, last) if first < size else "unsatisfiable"


def _pointer_size(data: bytes) -> int:
    return len(f"version https://git-lfs.github.com/spec/v1\noid sha256:{_sha256(data)}\nsize {len(data)}\n")


def front_matter(card: str) -> tuple[dict | None, str | None]:
    """(metadata, error) of a model card as the Hub reads it: YAML between `---` lines at the top."""
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", card, re.S)
    if not m:
        return None, None
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as exc:
        return None, f"Invalid YAML in the metadata: {str(exc).splitlines()[0]}"
    if meta is not None and not isinstance(meta, dict):
        return None, "The metadata must be a YAML mapping"
    licence = (meta or {}).get("license")
    if licence is not None and not (isinstance(licence, str) and re.fullmatch(r"[a-z0-9][a-z0-9.+-]*", licence)):
        return None, '"license" must be one of the Hub\'s licence identifiers (or "other" with license_name)'
    return meta or {}, None


def closed_port() -> socket.socket:
    """A bound socket that never listens: connections to its port are refused, and nobody else gets it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def _handler(hub: Hub, modelscope: bool, urls: dict[str, str]):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        # ------------------------------------------------------------------ replies

        def _send(self, code: int, body: bytes = b"", headers: dict | None = None, length: int | None = None):
            self.send_response(code)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj, code: int = 200, headers: dict | None = None) -> None:
            self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _error(self, code: int, error_code: str, message: str, headers: dict | None = None) -> None:
            head = {"X-Error-Code": error_code, "X-Error-Message": message, **(headers or {})}
            self._json({"error": message}, code, head)

        def _authorized(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def _record(self, path: str) -> None:
            hub.log.append((self.command, path, self.headers.get("Range")))

        # ------------------------------------------------------------------ routing

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if modelscope:
                self._record(unquote(url.path) + (f"?FilePath={query['FilePath']}" if "FilePath" in query else ""))
                if url.path.startswith("/storage/"):
                    return self._storage(url.path)
                return self._modelscope(unquote(url.path), query)
            self._record(unquote(url.path))
            raw = url.path  # revisions and paths stay quoted until matched: refs%2Fpr%2F1 is one segment
            if raw.startswith("/storage/"):
                return self._storage(raw)
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", raw):
                return self._info(m.group(1), unquote(m.group(2) or HF_DEFAULT_BRANCH))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", raw):
                return self._tree(m.group(1), unquote(m.group(2)), query.get("recursive") in ("True", "true", "1"))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/xet-(read|write)-token/([^/]+)", raw):
                return self._xet_token(m.group(1), m.group(2), unquote(m.group(3)))
            if m := re.fullmatch(r"/((?:datasets/)?[^/]+/[^/]+)/resolve/([^/]+)/(.+)", raw):
                return self._resolve(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
            self._error(404, "NotFound", "Not Found")

        def do_POST(self) -> None:
            raw = urlsplit(self.path).path
            body = self._body()
            self._record(unquote(raw))
            if raw == "/api/validate-yaml":  # answered without a login, before any upload
                return self._validate_yaml(json.loads(body))
            if not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            if raw == "/api/repos/create":
                return self._create(json.loads(body))
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", raw):
                return self._preupload(m.group(1), unquote(m.group(2)), json.loads(body))
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", raw):
                return self._lfs_batch(m.group(1), json.loads(body))
            if m := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/verify", raw):
                req = json.loads(body)
                ok = _sha256(hub.lfs_objects.get(req["oid"], b"")) == req["oid"]
                return self._json({}) if ok else self._error(404, "EntryNotFound", "Object not found")
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", raw):
                return self._commit(m.group(1), unquote(m.group(2)), body)
            self._error(404, "NotFound", "Not Found")

        def do_PUT(self) -> None:
            """The storage host takes LFS uploads (a presigned PUT, no Hub login)."""
            raw = urlsplit(self.path).path
            self._record(unquote(raw))
            data = self._body()
            m = re.fullmatch(r"/storage/lfs/([0-9a-f]{64})", raw)
            if not m or _sha256(data) != m.group(1):
                return self._send(400, b"<Error><Code>BadDigest</Code></Error>")
            hub.lfs_objects[m.group(1)] = data
            self._send(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

        # ------------------------------------------------------------------ Hugging Face: reading

        def _repo(self, repo_id: str, revision: str | None = None) -> Repo | None:
            """The repo, or None after answering the Hub's error for it."""
            repo = hub.repos.get(repo_id)
            if repo is None or (repo.private and not self._authorized()):
                # The Hub does not tell a private repo from a missing one; without a login both answer 401.
                self._error(401 if "Authorization" not in self.headers else 404, "RepoNotFound", "Repository not found")
                return None
            if revision is not None and not repo.has_revision(revision, HF_DEFAULT_BRANCH):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return repo

        def _gated(self, repo_id: str) -> None:
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."  # fmt: skip
            self._error(403 if self._authorized() else 401, "GatedRepo", message)

        def _info(self, repo_id: str, revision: str) -> None:
            if repo := self._repo(repo_id, revision):
                siblings = []
                for p, d in sorted(repo.files.items()):
                    entry = {"rfilename": p, "size": repo.listed_sizes.get(p, len(d)), "blobId": _git_oid(d)}
                    if is_lfs(p, d):
                        entry["lfs"] = {"size": entry["size"], "sha256": _sha256(d), "pointerSize": _pointer_size(d)}
                    siblings.append(entry)
                self._json({"id": repo_id, "sha": repo.sha, "private": repo.private,
                            "gated": "manual" if repo.gated else False, "siblings": siblings})  # fmt: skip

        def _tree(self, repo_id: str, revision: str, recursive: bool) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            entries, folders = [], set()
            for p, d in sorted(repo.files.items()):
                if "/" in p and not recursive:
                    folders.add(p.split("/", 1)[0])
                    continue
                folders.update("/".join(p.split("/")[:i]) for i in range(1, p.count("/") + 1))
                entry = {"type": "file", "oid": _git_oid(d), "size": len(d), "path": p}
                if is_lfs(p, d):
                    entry["lfs"] = {"oid": _sha256(d), "size": len(d), "pointerSize": _pointer_size(d)}
                    if hub.xet:
                        entry["xetHash"] = _xet_hash(d)
                entries.append(entry)
            entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)]
            self._json(entries)

        def _resolve(self, repo_id: str, revision: str, name: str) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            if repo.gated:
                return self._gated(repo_id)
            commit = {"X-Repo-Commit": repo.sha}
            if name not in repo.files:
                return self._error(404, "EntryNotFound", "Entry not found", commit)
            data = repo.files[name]
            if not is_lfs(name, data):
                meta = {**commit, "ETag": f'"{_git_oid(data)}"', "Accept-Ranges": "bytes"}
                return self._file(name, data, meta)
            # LFS: the bytes come from the storage host; this answer carries what the client needs to know.
            meta = {
                **commit,
                "ETag": f'"{_git_oid(data)}"',
                "X-Linked-Etag": f'"{_sha256(data)}"',
                "X-Linked-Size": str(len(data)),
                "Location": f"{urls['storage']}/storage/{_sha256(data)}/{repo_id}/{quote(name)}",
            }
            if hub.xet:
                token_url = f"{urls['hub']}/api/models/{repo_id}/xet-read-token/{repo.sha}"
                meta |= {
                    "X-Xet-Hash": _xet_hash(data),
                    "Link": f'<{token_url}>; rel="xet-auth", <{urls["cas"]}/v1/reconstructions/{_xet_hash(data)}>; '
                    'rel="xet-reconstruction-info"',
                }
            self._send(302, b"", meta)

        def _storage(self, raw: str) -> None:
            """The CDN / storage host: plain bytes by sha256, with byte ranges."""
            m = re.fullmatch(r"/storage/([0-9a-f]{64})/((?:datasets/)?[^/]+/[^/]+)/(.+)", raw)
            repo = hub.repos.get(m.group(2)) if m else None
            name = unquote(m.group(3)) if m else ""
            if repo is None or _sha256(repo.files.get(name, b"")) != m.group(1):
                return self._send(403, b"<Error><Code>AccessDenied</Code></Error>")
            self._file(name, repo.files[name], {"ETag": f'"{_sha256(repo.files[name])}"', "Accept-Ranges": "bytes"})

        def _file(self, name: str, data: bytes | Sparse, meta: dict, ranges: bool = True) -> None:
            """Send a file's bytes: the range asked for where `ranges` (else the whole file, as an endpoint
            that ignores Range does)."""
            if self.command == "HEAD":
                return self._send(200, b"", meta, length=len(data))
            if name in hub.failing and name not in hub.cut:
                return self._send(503, b"", {"Connection": "close"})
            asked = self.headers.get("Range")
            ranges = ranges and name not in hub.ranges_ignored
            if ranges and asked and _BOUNDED.fullmatch(asked.strip()):
                hub.ranges.append((name, asked))
            else:
                hub.served.append((name, asked))
            self._send_range(name, data, meta, hub.cut.pop(name, None), ranges)

        def _xet_token(self, repo_id: str, kind: str, revision: str) -> None:
            if kind == "write" and not self._authorized():
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            repo = self._repo(repo_id, revision if kind == "read" else None)
            if repo is None:
                return
            if repo.gated and kind == "read":
                return self._gated(repo_id)
            token = {"accessToken": "xet_test_token", "exp": 4102444800, "casUrl": urls["cas"]}
            self._json(token, headers={"X-Xet-Cas-Url": token["casUrl"], "X-Xet-Access-Token": token["accessToken"],
                                       "X-Xet-Token-Expiration": str(token["exp"])})  # fmt: skip

        # ------------------------------------------------------------------ Hugging Face: writing

        def _create(self, req: dict) -> None:
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            url = f"{urls['hub']}/{repo_id}"
            if repo_id in hub.repos:
                return self._json({"error": "You already created this model repo", "url": url}, 409)
            hub.repos[repo_id] = Repo(files={}, private=req.get("visibility") == "private", sha="0" * 40)
            self._json({"url": url, "name": repo_id})

        def _validate_yaml(self, req: dict) -> None:
            hub.card_checks.append(req["content"])
            meta, error = front_matter(req["content"])
            if error:
                return self._json({"errors": [{"message": error}], "warnings": []}, 400)
            warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
            self._json({"errors": [], "warnings": warnings})

        def _preupload(self, repo_id: str, revision: str, req: dict) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            files = []
            for f in req["files"]:
                sample = base64.b64decode(f["sample"])
                lfs = is_lfs(f["path"], sample) or f["size"] >= LFS_MIN_SIZE
                old = repo.files.get(f["path"])
                oid = None if old is None else (_sha256(old) if lfs else _git_oid(old))
                files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
            self._json({"files": files, "commitOid": repo.sha})

        def _lfs_batch(self, repo_id: str, req: dict) -> None:
            if self._repo(repo_id) is None:
                return
            objects = []
            for obj in req["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.lfs_objects:  # already stored objects need no upload
                    entry["actions"] = {
                        "upload": {"href": f"{urls['storage']}/storage/lfs/{obj['oid']}", "header": {}},
                        "verify": {"href": f"{urls['hub']}/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                    }
                objects.append(entry)
            self._json({"transfer": "basic", "objects": objects})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            repo = self._repo(repo_id, revision)
            if repo is None:
                return
            files = dict(repo.files)
            for line in body.splitlines():
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    data = base64.b64decode(value["content"])
                    if is_lfs(value["path"], data):
                        return self._json({"error": "Your push was rejected because it contains binary files. Please use https://huggingface.co/docs/hub/xet to store binary files."}, 400)  # fmt: skip
                    files[value["path"]] = data
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs_objects:
                        return self._json({"error": "Your push was rejected because an LFS pointer pointed to a file that does not exist."}, 422)  # fmt: skip
                    files[value["path"]] = hub.lfs_objects[value["oid"]]
            repo.files = files
            repo.sha = hashlib.sha1(repr(sorted((p, _sha256(d)) for p, d in files.items())).encode()).hexdigest()
            self._json({"commitUrl": f"{urls['hub']}/{repo_id}/commit/{repo.sha}", "commitOid": repo.sha})

        # ------------------------------------------------------------------ ModelScope

        def _ms_error(self, code: int, message: str, status: int = 404) -> None:
            self._json({"Code": code, "Message": message, "Success": False, "RequestId": "test"}, status)

        def _modelscope(self, path: str, query: dict) -> None:
            m = re.fullmatch(r"/api/v1/(models|datasets)/([^/]+/[^/]+)/repo(/files)?", path)
            if not m:
                return self._ms_error(10000000404, "not found")
            auth = self.headers.get("Authorization") or self.headers.get("Cookie")
            if auth and hub.token not in auth:
                return self._ms_error(10010103009, "AccessToken is invalid or expired", 401)
            kind = m.group(1)[:-1]
            key = m.group(2) if kind == "model" else f"datasets/{m.group(2)}"
            repo = hub.repos.get(key)
            if repo is None or (repo.private and not auth):
                return self._ms_error(MS_NOT_FOUND, f"{kind} not found")
            if repo.gated:
                return self._ms_error(MS_NO_ACCESS, f"no access to this {kind}: accept its licence first")
            revision = query.get("Revision", MS_DEFAULT_BRANCH)
            if not repo.has_revision(revision, MS_DEFAULT_BRANCH):
                return self._ms_error(MS_NO_REVISION, f"revision {revision} not found")
            if m.group(3):
                files = [
                    {"Path": p, "Name": p.rsplit("/", 1)[-1], "Type": "blob", "Sha256": _sha256(d),
                     "Size": repo.listed_sizes.get(p, len(d)), "Revision": repo.sha}
                    for p, d in sorted(repo.files.items())
                ]  # fmt: skip
                return self._json({"Code": 200, "Success": True, "Data": {"Files": files}})
            name = query.get("FilePath", "")
            if name not in repo.files:
                return self._ms_error(10010205002, f"file {name} not found")
            data = repo.files[name]
            if is_lfs(name, data):  # LFS objects live on OSS: a redirect there, which honours byte ranges
                location = f"{urls['storage']}/storage/{_sha256(data)}/{key}/{quote(name)}"
                return self._send(302, b"", {"Location": location})
            self._file(name, data, {}, ranges=False)  # git blobs come in place, whole: Range is ignored

        def _send_range(self, name: str, data: bytes | Sparse, meta: dict, keep: int | None, ranges: bool) -> None:
            """200 with the file, 206 with the range asked for, or 416; `keep` bytes of the body, then the
            connection drops (a cut transfer)."""
            size = len(data)
            asked = byte_range(self.headers.get("Range"), size) if ranges else None
            if asked == "unsatisfiable":
                return self._send(416, b"", {**meta, "Content-Range": f"bytes */{size}"})
            first, last = asked or (0, size - 1)
            if asked:
                meta = {**meta, "Content-Range": f"bytes {first}-{last}/{size}"}
            body = data[first : last + 1]
            self.send_response(206 if asked else 200)
            for k, v in meta.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = body if keep is None else body[:keep]
            rate = hub.throttle.get(name)
            step = max(1, rate // 10) if rate else len(sent) or 1
            for at in range(0, len(sent), step):  # a slow link: a tenth of a second's bytes at a time
                # counted before they go: the client may act on them before this thread runs again
                hub.bytes_sent[name] = hub.bytes_sent.get(name, 0) + len(sent[at : at + step])
                self.wfile.write(sent[at : at + step])
                if rate:
                    time.sleep(0.1)
            if keep is not None:
                self.close_connection = True

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-answer (an interrupted download) is no error of the hub's."""
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on localhost until the block ends.

    Each hub has a second origin beside it, the storage host that LFS downloads are redirected to (and, on
    Hugging Face, uploads are PUT to); Hugging Face has a Xet CAS address too, where nothing answers.
    """

    def __init__(self, hub: Hub, modelscope: bool = False) -> None:
        self.hub = hub
        self.urls = hub.urls
        self._cas = closed_port()
        handler = _handler(hub, modelscope, self.urls)
        self.servers = [_Server(("127.0.0.1", 0), handler) for _ in range(2)]
        ports = [s.server_address[1] for s in self.servers]
        self.urls["hub"] = f"http://127.0.0.1:{ports[0]}"
        self.urls["storage"] = f"http://127.0.0.1:{ports[-1]}"  # another origin, as the Hub's CDN is
        self.urls["cas"] = f"http://127.0.0.1:{self._cas.getsockname()[1]}"

    def __enter__(self) -> str:
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()
        return self.urls["hub"]

    def __exit__(self, *exc) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()
        self._cas.close()
