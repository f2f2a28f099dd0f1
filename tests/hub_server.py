"""A small Hugging Face Hub emulator on 127.0.0.1 (aiohttp), for the real `huggingface_hub` and `datasets` clients.

It serves the part of the Hub HTTP API that `HfApi`, `hf_hub_download`, `HfFileSystem` and `datasets.load_dataset`
use once `HF_ENDPOINT` points at it and Xet is off (`HF_HUB_DISABLE_XET=1`: uploads then go through the
preupload -> Git LFS batch -> PUT -> commit flow). State is in memory: repos (model, dataset, space) with a linear
history of commits (40-hex shas), branches, tags, and for each commit the full file tree (path -> bytes, regular or
LFS with its sha256).

    with FakeHub(token="hf_test") as srv, hub_env(srv, tmp_path):
        api = HfApi(token="hf_test")
        api.create_repo("tester/ds", repo_type="dataset", private=True)
        api.upload_folder(folder_path=folder, repo_id="tester/ds", repo_type="dataset")
        srv.counts["lfs-upload"], srv.files("tester/ds")  # requests per route family, server-side state

`hub_env(server, home)` is the switch the clients need (see its docstring): `huggingface_hub.constants` and
`datasets.config` copy HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET and the cache paths at import time, so
setting environment variables in a running process is not enough; it patches those copies, points every cache at
`home`, and restores everything on exit.

Auth: write endpoints need `Authorization: Bearer <token>` (401 without it); a wrong token is a 401 everywhere
with `X-Error-Message: Invalid credentials in Authorization header` (as the Hub sends it); a private repo read
without a token is a 401 with `X-Error-Code: RepoNotFound` (the client raises RepositoryNotFoundError). Errors
carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) and a `{"error": message}` body.

Fault injection: `srv.inject("commit", 429, 500)` makes the next two requests of the route family "commit" answer
429 and then 500 (with `Retry-After: 0` unless `retry_after=None`) before the route answers normally again;
`srv.counts[family]` counts every request (faulted ones included) and `srv.statuses(family)` lists what was
answered. Families: see FAMILIES. Unknown routes answer 404 and are printed to stderr (family "unknown").

Which client calls retry by themselves (huggingface_hub 2.4, Xet off): the ones that go through
`utils.http_backoff` retry up to 5 times on 408/429/500/502/503/504, sleeping `Retry-After + 1` s when the header
is there, else 1, 2, 4, 8 s:
  preupload, the LFS batch call, the LFS PUT (and multipart parts/completion, verify), tree listings and commit
  lists (`_paginate_pages`), `HfFileSystem` range reads; `hf_hub_download`'s HEAD is retried only after a first
  failed try when the file is not cached; its GET is retried on 408/429 only.
These do not retry and raise HfHubHTTPError at once: the commit POST (`create_commit`/`upload_folder`/`upload_file`;
only the Xet pipelined upload passes `retry_on_error=True`), create_repo, repo_info/dataset_info, list_repo_refs,
create_tag/delete_tag, get_paths_info, whoami, the README validate-yaml call.

As a script (for manual use); prints `URL http://127.0.0.1:PORT`, then serves forever:

    python tests/hub_server.py --port 8123 --token T
    HF_ENDPOINT=http://127.0.0.1:8123 HF_HUB_DISABLE_XET=1 HF_TOKEN=T python -c "..."

Endpoints: GET /api/whoami-v2, POST /api/repos/create, DELETE /api/repos/delete, POST /api/validate-yaml,
GET /api/agent-harnesses; under /api/{models,datasets,spaces}/{repo_id}: GET (repo info), GET revision/{rev},
POST preupload/{rev}, POST commit/{rev}, GET refs, POST/DELETE tag/{rev}, POST/DELETE branch/{branch},
GET commits/{rev}, GET tree/{rev}[/{path}], POST paths-info/{rev}, PUT settings; POST
/[{type}s/]{repo_id}.git/info/lfs/objects/{batch,verify}; PUT /lfs-upload/{oid}[/{part}], POST
/lfs-upload/{oid}/complete; GET/HEAD /[{type}s/]{repo_id}/resolve/{rev}/{path} (with Range).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import fnmatch
import hashlib
import json
import os
import re
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import yaml
from aiohttp import web

try:
    from tests.loopback import LoopbackServer
except ImportError:  # run as a script: python tests/X.py
    from loopback import LoopbackServer

# ---------------------------------------------------------------------------------------------------------------
# constants

#: Route families, the unit of fault injection and of `counts`.
FAMILIES: tuple[str, ...] = (
    "whoami", "create-repo", "delete-repo", "validate-yaml", "agent-harnesses", "repo-info", "preupload", "commit",
    "refs", "tag", "branch", "commits", "tree", "paths-info", "settings", "lfs-batch", "lfs-verify", "lfs-upload",
    "resolve", "unknown",
)
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
DEFAULT_TOKEN = "hf_test_token"
DEFAULT_USER = "tester"
LFS_THRESHOLD = 10 * 1024 * 1024  # regular (non-LFS) files must stay below this, as on the Hub
TREE_PAGE_SIZE = 1000
MAX_BODY_BYTES = 4 * 1024 * 1024 * 1024
#: Patterns of the .gitattributes every new repo starts with (what the Hub stores as LFS by extension).
LFS_PATTERNS: tuple[str, ...] = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.lz4",
    "*.mds", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
    "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar",
    "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*", "*.wav", "*.mp3", "*.flac", "*.ogg",
    "*.jpg", "*.jpeg", "*.png", "*.webp", "*.gif", "*.mp4", "*.webm",
)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
HEX40 = re.compile(r"[0-9a-f]{40}")
HEX64 = re.compile(r"[0-9a-f]{64}")
SHORT_SHA = re.compile(r"[0-9a-f]{7,40}")
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")


def gitattributes_text(patterns: tuple[str, ...] = LFS_PATTERNS) -> str:
    return "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in patterns)


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob: sha1 of `blob <len>\\0<data>`."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _front_matter(text: str) -> dict | None:
    """The YAML header of a README (None if there is none); raises yaml.YAMLError / ValueError if invalid."""
    if not text.startswith("---"):
        return None
    lines = text.splitlines()
    if lines[0].strip() != "---":
        return None
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == "---":
            data = yaml.safe_load("\n".join(lines[1:i]))
            if data is None:
                return {}
            if not isinstance(data, dict):
                raise ValueError("the YAML metadata must be a mapping")
            return data
    return None


def _glob_match(pattern: str, path: str) -> bool:
    """gitattributes/gitignore-style match: a pattern without '/' matches the basename, else the whole path."""
    pattern = pattern.strip()
    if not pattern or pattern.startswith("#"):
        return False
    if "/" in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path, pattern.lstrip("/")) or fnmatch.fnmatchcase(path, pattern.lstrip("/") + "/*")
    name = path.rsplit("/", 1)[-1]
    return fnmatch.fnmatchcase(name, pattern) or any(fnmatch.fnmatchcase(p, pattern) for p in path.split("/")[:-1])


# ---------------------------------------------------------------------------------------------------------------
# state


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit's tree. `content` is None for LFS files (their bytes live in the LFS store)."""

    size: int
    git_oid: str  # git blob sha1 (of the pointer file for LFS files)
    sha256: str | None = None  # LFS object id; None for a regular file
    content: bytes | None = None

    @property
    def lfs(self) -> bool:
        return self.sha256 is not None

    @property
    def etag(self) -> str:
        return self.sha256 or self.git_oid

    @classmethod
    def regular(cls, data: bytes) -> FileEntry:
        return cls(size=len(data), git_oid=git_blob_oid(data), content=data)

    @classmethod
    def lfs_file(cls, sha256: str, size: int) -> FileEntry:
        return cls(size=size, git_oid=git_blob_oid(lfs_pointer(sha256, size)), sha256=sha256)


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, FileEntry]
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    type: str
    id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    lfs: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo (dedup is per repo)

    @property
    def url_path(self) -> str:
        return URL_PREFIX[self.type] + self.id

    def resolve(self, rev: str | None) -> str | None:
        """Commit sha of a branch, a tag, `refs/heads/x`, `refs/tags/x`, a full or unique short sha; else None."""
        rev = rev or "main"
        for prefix, refs in (("refs/heads/", self.branches), ("refs/tags/", self.tags)):
            if rev.startswith(prefix) and rev[len(prefix):] in refs:
                return refs[rev[len(prefix):]]
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if SHORT_SHA.fullmatch(rev):
            found = [oid for oid in self.commits if oid.startswith(rev)]
            if len(found) == 1:
                return found[0]
        return None

    def history(self, oid: str) -> Iterator[Commit]:
        """The commit `oid`, then its ancestors, newest first."""
        cur: str | None = oid
        while cur is not None:
            commit = self.commits[cur]
            yield commit
            cur = commit.parent


class HubError(Exception):
    """An HTTP error the way the Hub sends it: status, `{"error": message}`, `X-Error-Code`/`X-Error-Message`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})
        self.extra = extra or {}

    def response(self, head: bool = False) -> web.Response:
        safe = " ".join(self.message.split()).encode("ascii", "backslashreplace").decode()  # header-safe
        headers = {"X-Error-Message": safe, **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        if head:
            return web.Response(status=self.status, headers=headers)
        return _json_response({"error": self.message, **self.extra}, self.status, headers)


def _json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> web.Response:
    return web.Response(body=json.dumps(obj, ensure_ascii=False).encode(), status=status, headers=headers,
                        content_type=content_type)


def _repo_not_found(status: int = 404) -> HubError:
    return HubError(status, "Repository not found", code="RepoNotFound")


def _revision_not_found(rev: str) -> HubError:
    return HubError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")


def _entry_not_found(path: str, commit: str | None = None) -> HubError:
    headers = {"X-Repo-Commit": commit} if commit else None
    return HubError(404, f"Entry not found: {path}", code="EntryNotFound", headers=headers)


# ---------------------------------------------------------------------------------------------------------------
# routing

_API_REPO = r"/api/(?P<t>models|datasets|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_GIT_REPO = r"/(?:(?P<t>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects"
_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    # (methods, raw-path regex, family, handler name), first match wins
    ("GET", r"/api/whoami-v2", "whoami", "_whoami"),
    ("POST", r"/api/repos/create", "create-repo", "_create_repo"),
    ("DELETE", r"/api/repos/delete", "delete-repo", "_delete_repo"),
    ("POST", r"/api/validate-yaml", "validate-yaml", "_validate_yaml"),
    ("GET", r"/api/agent-harnesses", "agent-harnesses", "_agent_harnesses"),
    ("GET", _API_REPO, "repo-info", "_repo_info"),
    ("GET", _API_REPO + r"/revision/(?P<rev>[^/]+)", "repo-info", "_repo_info"),
    ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)", "preupload", "_preupload"),
    ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)", "commit", "_commit"),
    ("GET", _API_REPO + r"/refs", "refs", "_refs"),
    ("POST DELETE", _API_REPO + r"/tag/(?P<rev>[^/]+)", "tag", "_tag"),
    ("POST DELETE", _API_REPO + r"/branch/(?P<rev>[^/]+)", "branch", "_branch"),
    ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)", "commits", "_commits"),
    ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree", "_tree"),
    ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)", "paths-info", "_paths_info"),
    ("PUT", _API_REPO + r"/settings", "settings", "_settings"),
    ("POST", _GIT_REPO + r"/batch", "lfs-batch", "_lfs_batch"),
    ("POST", _GIT_REPO + r"/verify", "lfs-verify", "_lfs_verify"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs-upload", "_lfs_put"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})/(?P<part>[0-9]+)", "lfs-upload", "_lfs_put_part"),
    ("POST", r"/lfs-upload/(?P<oid>[0-9a-f]{64})/complete", "lfs-upload", "_lfs_complete"),
    ("GET HEAD", r"/(?:(?P<t>datasets|spaces)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)",
     "resolve", "_resolve"),
)


@dataclass
class _Upload:
    """An LFS upload the batch call granted: where it goes, what it must hash to, its parts if multipart."""

    repo_key: tuple[str, str]
    size: int
    sig: str
    parts: dict[int, bytes] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# the server


class FakeHub(LoopbackServer):
    """A Hugging Face Hub emulator on 127.0.0.1 in a background thread (see the module docstring).

    Args:
        token: the one access token accepted (`Authorization: Bearer <token>`); it belongs to `user`.
        user: the user name whoami returns and the default namespace of new repos.
        lfs_threshold: files at least this big go LFS (besides .gitattributes patterns and binary samples); a
            regular file this big is refused in a commit, as on the Hub.
        multipart_chunk_size: if set, LFS objects bigger than this are offered as multipart uploads (parts of
            this size) when the client accepts "multipart"; else "basic" (one PUT) unless the client refuses it.
        tree_page_size: entries per page of the tree listing (pagination through a `Link: rel="next"` header).
        host, port: where to listen (port 0: a free port).
    """

    def __init__(self, *, token: str = DEFAULT_TOKEN, user: str = DEFAULT_USER, lfs_threshold: int = LFS_THRESHOLD,
                 multipart_chunk_size: int | None = None, tree_page_size: int = TREE_PAGE_SIZE,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__()
        self.token, self.user = token, user
        self.lfs_threshold = int(lfs_threshold)
        self.multipart_chunk_size = multipart_chunk_size
        self.tree_page_size = int(tree_page_size)
        self.host, self.port = host, port
        self.repos: dict[tuple[str, str], Repo] = {}  # (type, id) -> Repo
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> bytes
        self.counts: Counter[str] = Counter()  # family -> requests seen (faulted ones included)
        self.log: list[dict] = []  # one dict per request: method, path, family, status, fault
        self._faults: dict[str, deque[tuple[int, int | None]]] = {}
        self._lock = threading.Lock()
        self._uploads: dict[str, _Upload] = {}
        self._clock = 0.0
        self._seq = 0
        self._routes = [(frozenset(methods.split()), re.compile(rx), fam, getattr(self, name))
                        for methods, rx, fam, name in _ROUTES]

    # -- lifecycle --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The endpoint to give as HF_ENDPOINT (no trailing slash)."""
        if not self.port:
            raise RuntimeError("FakeHub is not started")
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # -- faults and counters ------------------------------------------------------------------------------------
    def inject(self, family: str, *statuses: int, retry_after: int | None = 0) -> None:
        """Make the next len(statuses) requests of `family` answer these statuses, in order, then answer normally.

        Each faulted answer has a `{"error": ...}` body and, unless `retry_after` is None, `Retry-After`.
        Calls add up (a queue per family).
        """
        if family not in FAMILIES:
            raise ValueError(f"unknown route family {family!r}; known: {', '.join(FAMILIES)}")
        for status in statuses:
            if not 400 <= int(status) <= 599:
                raise ValueError(f"fault status {status} is not an HTTP error status")
        with self._lock:
            self._faults.setdefault(family, deque()).extend((int(s), retry_after) for s in statuses)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self, family: str) -> int:
        with self._lock:
            return len(self._faults.get(family, ()))

    def reset_stats(self) -> None:
        """Forget counts and the request log (not the repos)."""
        with self._lock:
            self.counts.clear()
            self.log.clear()

    def statuses(self, family: str) -> list[int]:
        """The statuses answered to the requests of `family`, in order."""
        with self._lock:
            return [e["status"] for e in self.log if e["family"] == family]

    def _next_fault(self, family: str) -> tuple[int, int | None] | None:
        with self._lock:
            queue = self._faults.get(family)
            return queue.popleft() if queue else None

    # -- server-side views for tests -------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """path -> content of every file at `revision` (LFS files resolved from the LFS store)."""
        repo = self.repo(repo_id, repo_type)
        oid = repo.resolve(revision)
        if oid is None:
            raise KeyError(f"{repo_id}: no revision {revision!r}")
        return {p: self._content(e) for p, e in repo.commits[oid].files.items()}

    def entry(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> FileEntry:
        repo = self.repo(repo_id, repo_type)
        return repo.commits[repo.resolve(revision) or ""].files[path]

    def _content(self, entry: FileEntry) -> bytes:
        return entry.content if entry.content is not None else self.lfs_store[entry.sha256 or ""]

    # -- dispatch -----------------------------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        raw = request.rel_url.raw_path
        head = request.method == "HEAD"
        family, handler, match = "unknown", None, None
        for methods, rx, fam, fn in self._routes:
            m = rx.fullmatch(raw)
            if m is not None and request.method in methods:
                family, handler, match = fam, fn, m
                break
        with self._lock:
            self.counts[family] += 1
        fault = self._next_fault(family) if handler is not None else None
        if handler is None:
            print(f"FakeHub: unknown route {request.method} {request.rel_url}", file=sys.stderr, flush=True)
            resp: web.StreamResponse = HubError(404, f"Not found: {request.method} {raw}").response(head)
        elif fault is not None:
            status, retry_after = fault
            headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
            resp = HubError(status, f"Injected fault {status}", headers=headers).response(head)
        else:
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            try:
                resp = await handler(request, groups)
            except HubError as e:
                resp = e.response(head)
        with self._lock:
            self.log.append({"method": request.method, "path": raw, "family": family, "status": resp.status,
                             "fault": fault is not None})
        return resp

    # -- auth and lookups ---------------------------------------------------------------------------------------
    def _user(self, request: web.Request) -> str | None:
        """The authenticated user, None without an Authorization header; a wrong token is a 401."""
        auth = request.headers.get("Authorization")
        if auth is None:
            return None
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.token:
            raise HubError(401, INVALID_CREDENTIALS)
        return self.user

    def _require_user(self, request: web.Request) -> str:
        user = self._user(request)
        if user is None:
            raise HubError(401, "Invalid username or password.")
        return user

    def _lookup(self, request: web.Request, g: dict[str, str], *, write: bool = False) -> Repo:
        user = self._require_user(request) if write else self._user(request)
        rtype = REPO_TYPES[g.get("t") or "models"]
        repo = self.repos.get((rtype, f"{g['ns']}/{g['name']}"))
        if repo is None:
            raise _repo_not_found()
        if repo.private and user is None:
            raise _repo_not_found(401)
        return repo

    @staticmethod
    def _commit_of(repo: Repo, rev: str | None) -> Commit:
        oid = repo.resolve(rev)
        if oid is None:
            raise _revision_not_found(rev or "main")
        return repo.commits[oid]

    @staticmethod
    def _base(request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    async def _json_body(self, request: web.Request) -> Any:
        try:
            return json.loads(await request.read() or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HubError(400, "Invalid JSON body") from None

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, FileEntry], title: str,
                    message: str = "") -> Commit:
        with self._lock:
            self._seq += 1
            self._clock = max(time.time(), self._clock + 0.001)
            seq, clock = self._seq, self._clock
        date = datetime.fromtimestamp(clock, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        tree = hashlib.sha1("".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(files.items())).encode()).hexdigest()
        oid = hashlib.sha1(f"tree {tree}\nparent {parent}\nrepo {repo.type}/{repo.id}\nauthor {self.user}\n"
                           f"date {date}\nseq {seq}\n\n{title}\n{message}".encode()).hexdigest()
        commit = Commit(oid, parent, files, title, message, self.user, date)
        repo.commits[oid] = commit
        return commit

    # -- account, repos ----------------------------------------------------------------------------------------
    async def _whoami(self, request: web.Request, g: dict[str, str]) -> web.Response:
        user = self._require_user(request)
        return _json_response({
            "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user, "fullname": user,
            "email": f"{user}@example.com", "emailVerified": True, "canPay": False, "isPro": False,
            "periodEnd": None, "avatarUrl": "", "orgs": [],
            "auth": {"type": "access_token", "accessToken": {"displayName": "test token", "role": "write",
                                                             "createdAt": "2024-01-01T00:00:00.000Z"}},
        })

    async def _create_repo(self, request: web.Request, g: dict[str, str]) -> web.Response:
        user = self._require_user(request)
        body = await self._json_body(request)
        if not isinstance(body, dict):
            raise HubError(400, "Invalid JSON body")
        rtype = body.get("type") or "model"
        if rtype not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type: {rtype}")
        name, org = body.get("name"), body.get("organization") or user
        if isinstance(name, str) and "/" in name and not body.get("organization"):
            org, name = name.split("/", 1)
        if not (isinstance(name, str) and REPO_NAME.fullmatch(name) and REPO_NAME.fullmatch(org)
                and "--" not in name and ".." not in name and not name.endswith(".git")):
            raise HubError(400, f"Invalid repo name: {name!r}")
        repo_id = f"{org}/{name}"
        visibility = body.get("visibility")
        private = visibility == "private" if visibility is not None else bool(body.get("private", False))
        url = f"{self._base(request)}/{URL_PREFIX[rtype]}{repo_id}"
        if (rtype, repo_id) in self.repos:
            raise HubError(409, f"You already created this {rtype} repo", extra={"url": url})
        repo = Repo(rtype, repo_id, private, _now_iso())
        first = self._new_commit(repo, None, {".gitattributes": FileEntry.regular(gitattributes_text().encode())},
                                 "initial commit")
        repo.branches["main"] = first.oid
        self.repos[(rtype, repo_id)] = repo
        return _json_response({"url": url, "name": repo_id, "id": first.oid[:24]})

    async def _delete_repo(self, request: web.Request, g: dict[str, str]) -> web.Response:
        user = self._require_user(request)
        body = await self._json_body(request)
        if not isinstance(body, dict) or not body.get("name"):
            raise HubError(400, "Invalid JSON body")
        key = (body.get("type") or "model", f"{body.get('organization') or user}/{body['name']}")
        if self.repos.pop(key, None) is None:
            raise _repo_not_found()
        return _json_response({})

    async def _settings(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        body = await self._json_body(request)
        if isinstance(body, dict):
            if body.get("visibility") in ("private", "public"):
                repo.private = body["visibility"] == "private"
            elif isinstance(body.get("private"), bool):
                repo.private = body["private"]
        return _json_response({})

    async def _validate_yaml(self, request: web.Request, g: dict[str, str]) -> web.Response:
        self._user(request)
        body = await self._json_body(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise HubError(400, "Missing 'content'")
        try:
            _front_matter(content)
        except (yaml.YAMLError, ValueError) as e:
            msg = f"Invalid YAML metadata: {e}"
            return _json_response({"error": msg, "errors": [{"message": msg}], "warnings": []}, 400)
        return _json_response({"errors": [], "warnings": []})

    async def _agent_harnesses(self, request: web.Request, g: dict[str, str]) -> web.Response:
        return _json_response({"standardEnvVars": [], "harnesses": {}})

    # -- repo info, refs, commits -------------------------------------------------------------------------------
    def _card_data(self, commit: Commit) -> dict | None:
        readme = commit.files.get("README.md")
        if readme is None:
            return None
        with contextlib.suppress(yaml.YAMLError, ValueError, UnicodeDecodeError):
            return _front_matter(self._content(readme).decode())
        return None

    async def _repo_info(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        commit = self._commit_of(repo, g.get("rev"))
        blobs = _truthy(request.query.get("blobs"))
        siblings = []
        for path, e in sorted(commit.files.items()):
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=e.size, blobId=e.git_oid)
                if e.lfs:
                    sib["lfs"] = {"size": e.size, "sha256": e.sha256, "pointerSize": len(lfs_pointer(e.etag, e.size))}
            siblings.append(sib)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(f"{repo.type}/{repo.id}".encode()).hexdigest()[:24], "id": repo.id,
            "author": repo.id.split("/")[0], "sha": commit.oid, "lastModified": commit.date,
            "createdAt": repo.created_at, "private": repo.private, "gated": False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            "usedStorage": sum(e.size for e in commit.files.values()),
        }
        card = self._card_data(commit)
        if card is not None:
            info["cardData"] = card
            info["tags"] = [t for t in card.get("tags") or [] if isinstance(t, str)]
        if repo.type == "model":
            info["modelId"] = repo.id
        return _json_response(info)

    async def _refs(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        out: dict[str, Any] = {
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()],
            "converts": [],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
        }
        if _truthy(request.query.get("include_prs")):
            out["pullRequests"] = []
        return _json_response(out)

    async def _tag(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        if request.method == "DELETE":
            if repo.tags.pop(g["rev"], None) is None:
                raise HubError(404, f"Tag {g['rev']} not found", code="RevisionNotFound")
            return _json_response({})
        commit = self._commit_of(repo, g["rev"])
        body = await self._json_body(request)
        tag = body.get("tag") if isinstance(body, dict) else None
        if not isinstance(tag, str) or not REF_NAME.fullmatch(tag) or ".." in tag or tag.endswith((".", "/")):
            raise HubError(400, f"Invalid tag name: {tag!r}")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists (it points at {repo.tags[tag]})")
        repo.tags[tag] = commit.oid
        return _json_response({"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.oid})

    async def _branch(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        branch = g["rev"]
        if request.method == "DELETE":
            if branch == "main":
                raise HubError(403, "You cannot delete the default branch")
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Branch {branch} not found", code="RevisionNotFound")
            return _json_response({})
        body = await self._json_body(request)
        start = body.get("startingPoint") if isinstance(body, dict) else None
        commit = self._commit_of(repo, start or "main")
        if not REF_NAME.fullmatch(branch) or ".." in branch:
            raise HubError(400, f"Invalid branch name: {branch!r}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = commit.oid
        return _json_response({})

    async def _commits(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        commit = self._commit_of(repo, g["rev"])
        formatted = request.query.get("expand[]") == "formatted"
        out = []
        for c in repo.history(commit.oid):
            item: dict[str, Any] = {"id": c.oid, "title": c.title, "message": c.message, "date": c.date,
                                    "authors": [{"user": c.author, "avatar": ""}]}
            if formatted:
                item["formatted"] = {"title": c.title, "message": c.message}
            out.append(item)
        return _json_response(out)

    # -- tree, paths-info ---------------------------------------------------------------------------------------
    @staticmethod
    def _tree_oid(commit: Commit, folder: str) -> str:
        prefix = folder + "/"
        items = "".join(f"{p}\0{e.git_oid}\n" for p, e in sorted(commit.files.items()) if p.startswith(prefix))
        return hashlib.sha1(f"tree {folder}\n{items}".encode()).hexdigest()

    def _last_commit(self, repo: Repo, commit: Commit, path: str, folder: bool) -> dict:
        """The newest commit (from `commit` back) that last changed `path`."""
        def value(c: Commit) -> str | None:
            if folder:
                return self._tree_oid(c, path) if any(p.startswith(path + "/") for p in c.files) else None
            e = c.files.get(path)
            return e.git_oid if e else None

        current = value(commit)
        last = commit
        for c in repo.history(commit.oid):
            if value(c) != current:
                break
            last = c
        return {"id": last.oid, "title": last.title, "date": last.date}

    def _path_info(self, repo: Repo, commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.files.get(path)
        if entry is None:
            info: dict[str, Any] = {"type": "directory", "oid": self._tree_oid(commit, path), "size": 0, "path": path}
        else:
            info = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": path}
            if entry.lfs:
                info["lfs"] = {"oid": entry.sha256, "size": entry.size,
                               "pointerSize": len(lfs_pointer(entry.etag, entry.size))}
        if expand:
            info["lastCommit"] = self._last_commit(repo, commit, path, folder=entry is None)
        return info

    @staticmethod
    def _is_dir(commit: Commit, path: str) -> bool:
        return not path or any(p.startswith(path + "/") for p in commit.files)

    async def _tree(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        commit = self._commit_of(repo, g["rev"])
        folder = (g.get("path") or "").strip("/")
        if not self._is_dir(commit, folder):
            raise _entry_not_found(folder, commit.oid)
        recursive, expand = _truthy(request.query.get("recursive")), _truthy(request.query.get("expand"))
        prefix = folder + "/" if folder else ""
        dirs: set[str] = set()
        files: list[str] = []
        for path in commit.files:
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            if len(parts) == 1 or recursive:
                files.append(path)
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
        paths = sorted(dirs) + sorted(files)
        try:
            cursor = int(request.query.get("cursor", "0"))
        except ValueError:
            raise HubError(400, "Invalid cursor") from None
        page_size = max(1, min(self.tree_page_size, 50) if expand else self.tree_page_size)
        page = paths[cursor:cursor + page_size]
        headers = {}
        if cursor + page_size < len(paths):
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            query["cursor"] = str(cursor + page_size)
            headers["Link"] = f'<{self._base(request)}{request.rel_url.raw_path}?{urlencode(query)}>; rel="next"'
        return _json_response([self._path_info(repo, commit, p, expand) for p in page], headers=headers)

    async def _paths_info(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        commit = self._commit_of(repo, g["rev"])
        if request.content_type == "application/json":
            body = await self._json_body(request)
            paths, expand = body.get("paths") or [], bool(body.get("expand"))
        else:
            form = await request.post()
            paths, expand = [str(p) for p in form.getall("paths", [])], _truthy(str(form.get("expand", "")))
        out = []
        for path in dict.fromkeys(p.strip("/") for p in paths if isinstance(p, str)):
            if path in commit.files or (path and self._is_dir(commit, path)):
                out.append(self._path_info(repo, commit, path, expand))
        return _json_response(out)

    # -- uploads: preupload, LFS batch + PUT, commit ------------------------------------------------------------
    def _branch_head(self, repo: Repo, rev: str) -> Commit:
        """The head commit of branch `rev`: a 404 if the revision does not exist, a 400 if it is not a branch."""
        name = rev.removeprefix("refs/heads/")
        if name in repo.branches:
            return repo.commits[repo.branches[name]]
        if repo.resolve(rev) is None:
            raise _revision_not_found(rev)
        raise HubError(400, f"Invalid rev id: {rev} is not a branch")

    def _is_lfs(self, commit: Commit, path: str, size: int, sample: bytes) -> bool:
        if size >= self.lfs_threshold or b"\x00" in sample:
            return True
        attrs = commit.files.get(".gitattributes")
        lines = self._content(attrs).decode(errors="replace").splitlines() if attrs else []
        patterns = [ln.split()[0] for ln in lines if ln.strip() and not ln.startswith("#") and "filter=lfs" in ln]
        return any(_glob_match(p, path) for p in patterns)

    async def _preupload(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        head = self._branch_head(repo, g["rev"])
        body = await self._json_body(request)
        files = body.get("files") if isinstance(body, dict) else None
        if not isinstance(files, list):
            raise HubError(400, "Invalid preupload body: 'files' must be a list")
        gitignore = body.get("gitIgnore")
        if gitignore is None and ".gitignore" in head.files:
            gitignore = self._content(head.files[".gitignore"]).decode(errors="replace")
        ignore = [ln for ln in (gitignore or "").splitlines() if ln.strip() and not ln.startswith(("#", "!"))]
        out = []
        for f in files:
            if not isinstance(f, dict) or not isinstance(f.get("path"), str) or not isinstance(f.get("size"), int):
                raise HubError(400, "Invalid preupload body: each file needs 'path' and 'size'")
            try:
                sample = base64.b64decode(f.get("sample") or "")
            except (binascii.Error, ValueError):
                raise HubError(400, f"Invalid base64 sample for {f['path']}") from None
            mode = "lfs" if self._is_lfs(head, f["path"], f["size"], sample) else "regular"
            remote = head.files.get(f["path"])
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": any(_glob_match(p, f["path"])
                                                                                    for p in ignore),
                        "oid": remote.etag if remote else None})
        return _json_response({"files": out, "commitOid": head.oid})

    async def _lfs_batch(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        body = await self._json_body(request)
        if not isinstance(body, dict) or body.get("operation") != "upload" or not isinstance(body.get("objects"), list):
            raise HubError(400, "Only LFS batch 'upload' operations with a list of objects are supported")
        if body.get("hash_algo", "sha256") != "sha256":
            raise HubError(400, "Only sha256 is supported")
        transfers = body.get("transfers") or ["basic"]
        if "basic" not in transfers and "multipart" not in transfers:
            raise HubError(422, f"None of the transfers {transfers} is supported (basic, multipart)")
        base = self._base(request)
        objects, chosen = [], set()
        for obj in body["objects"]:
            oid, size = (obj.get("oid"), obj.get("size")) if isinstance(obj, dict) else (None, None)
            if not isinstance(oid, str) or not HEX64.fullmatch(oid) or not isinstance(size, int) or size < 0:
                objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            if oid in repo.lfs and len(self.lfs_store.get(oid, b"")) == size:
                objects.append({"oid": oid, "size": size})  # already in this repo: no actions
                continue
            sig = secrets.token_hex(8)
            self._uploads[oid] = _Upload((repo.type, repo.id), size, sig)
            chunk = self.multipart_chunk_size
            multipart = "multipart" in transfers and ("basic" not in transfers or (chunk and size > chunk))
            verify = {"href": f"{base}/{repo.url_path}.git/info/lfs/objects/verify", "header": {}}
            if multipart:
                chunk = chunk or max(size, 1)
                nparts = max(1, -(-size // chunk))
                header = {"chunk_size": str(chunk)}
                header.update({f"{i:05d}": f"{base}/lfs-upload/{oid}/{i}?sig={sig}" for i in range(1, nparts + 1)})
                upload = {"href": f"{base}/lfs-upload/{oid}/complete?sig={sig}", "header": header}
                chosen.add("multipart")
            else:
                upload = {"href": f"{base}/lfs-upload/{oid}?sig={sig}", "header": {}}
                chosen.add("basic")
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": upload, "verify": verify}})
        transfer = "multipart" if chosen == {"multipart"} else "basic"
        return _json_response({"transfer": transfer, "objects": objects, "hash_algo": "sha256"},
                              content_type="application/vnd.git-lfs+json")

    def _pending_upload(self, request: web.Request, oid: str) -> _Upload:
        up = self._uploads.get(oid)
        if up is None or request.query.get("sig") != up.sig:
            raise HubError(403, "Upload URL is not valid (unknown object or bad signature)")
        return up

    def _store_lfs(self, oid: str, up: _Upload, data: bytes) -> None:
        if len(data) != up.size:
            raise HubError(400, f"Size mismatch: expected {up.size} bytes, received {len(data)}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "sha256 mismatch: the uploaded content does not hash to the object id")
        self.lfs_store[oid] = data
        repo = self.repos.get(up.repo_key)
        if repo is not None:
            repo.lfs.add(oid)
        self._uploads.pop(oid, None)

    async def _lfs_put(self, request: web.Request, g: dict[str, str]) -> web.Response:
        up = self._pending_upload(request, g["oid"])
        self._store_lfs(g["oid"], up, await request.read())
        return web.Response(status=200)

    async def _lfs_put_part(self, request: web.Request, g: dict[str, str]) -> web.Response:
        up = self._pending_upload(request, g["oid"])
        data = await request.read()
        up.parts[int(g["part"])] = data
        return web.Response(status=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})

    async def _lfs_complete(self, request: web.Request, g: dict[str, str]) -> web.Response:
        up = self._pending_upload(request, g["oid"])
        body = await self._json_body(request)
        parts = body.get("parts") if isinstance(body, dict) else None
        if not isinstance(parts, list) or not parts:
            raise HubError(400, "Invalid completion body: 'parts' must be a non-empty list")
        data = []
        for i, part in enumerate(sorted(parts, key=lambda p: p.get("partNumber", 0)), start=1):
            got = up.parts.get(i)
            if part.get("partNumber") != i or got is None:
                raise HubError(400, f"Part {i} is missing")
            if str(part.get("etag", "")).strip('"') != hashlib.md5(got).hexdigest():
                raise HubError(400, f"Part {i}: etag mismatch")
            data.append(got)
        self._store_lfs(g["oid"], up, b"".join(data))
        return _json_response({"success": True})

    async def _lfs_verify(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        body = await self._json_body(request)
        oid, size = (body.get("oid"), body.get("size")) if isinstance(body, dict) else (None, None)
        if oid not in repo.lfs or oid not in self.lfs_store or len(self.lfs_store[oid]) != size:
            raise HubError(404, f"Object {oid} not found")
        return _json_response({"success": True})

    @staticmethod
    def _check_path(path: Any) -> str:
        if not isinstance(path, str) or not path or path.startswith("/") or "\\" in path:
            raise HubError(400, f"Invalid path: {path!r}")
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
            raise HubError(400, f"Invalid path: {path!r}")
        return path

    async def _commit(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g, write=True)
        if _truthy(request.query.get("create_pr")):
            raise HubError(400, "Pull requests are not supported by this emulator")
        head = self._branch_head(repo, g["rev"])
        try:
            lines = [json.loads(ln) for ln in (await request.read()).splitlines() if ln.strip()]
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HubError(400, "Invalid NDJSON body") from None
        if not lines or not isinstance(lines[0], dict) or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the header")
        header = lines[0].get("value") or {}
        title = header.get("summary")
        if not isinstance(title, str) or not title.strip():
            raise HubError(400, "Missing commit summary")
        parent = header.get("parentCommit")
        if parent is not None and not (isinstance(parent, str) and len(parent) >= 5
                                       and head.oid.startswith(parent.lower())):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        for line in lines[1:]:
            key, value = (line.get("key"), line.get("value")) if isinstance(line, dict) else (None, None)
            if not isinstance(value, dict):
                raise HubError(400, f"Invalid operation line: {line!r}")
            if key == "file":
                path = self._check_path(value.get("path"))
                if value.get("encoding", "utf-8") == "base64":
                    try:
                        data = base64.b64decode(value.get("content") or "", validate=True)
                    except (binascii.Error, ValueError):
                        raise HubError(400, f"Invalid base64 content for {path}") from None
                else:
                    data = str(value.get("content") or "").encode()
                if len(data) >= self.lfs_threshold:
                    raise HubError(400, f"Your push was rejected because it contains a file larger than "
                                        f"{self.lfs_threshold} bytes ({path}): store it with Git LFS.")
                files[path] = FileEntry.regular(data)
            elif key == "lfsFile":
                path = self._check_path(value.get("path"))
                oid = value.get("oid")
                if oid not in repo.lfs or oid not in self.lfs_store:
                    raise HubError(422, f"Your push was rejected because an LFS pointer ({path}) points to an "
                                        f"object that was not uploaded: {oid}")
                size = len(self.lfs_store[oid])
                if value.get("size") not in (None, size):
                    raise HubError(422, f"LFS object {oid} has size {size}, not {value.get('size')}")
                files[path] = FileEntry.lfs_file(oid, size)
            elif key == "deletedFile":
                path = str(value.get("path", ""))
                if files.pop(path, None) is None:
                    raise _entry_not_found(path, head.oid)
            elif key == "deletedFolder":
                folder = str(value.get("path", "")).strip("/")
                gone = [p for p in files if p.startswith(folder + "/")] if folder else list(files)
                if not gone:
                    raise _entry_not_found(folder, head.oid)
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"Unknown operation key: {key!r}")
        commit = self._new_commit(repo, head.oid, files, title.strip(), str(header.get("description") or ""))
        repo.branches[g["rev"].removeprefix("refs/heads/")] = commit.oid
        return _json_response({"success": True, "commitOid": commit.oid, "hookOutput": "", "pullRequestUrl": None,
                               "commitUrl": f"{self._base(request)}/{repo.url_path}/commit/{commit.oid}"})

    # -- downloads ------------------------------------------------------------------------------------------------
    async def _resolve(self, request: web.Request, g: dict[str, str]) -> web.Response:
        repo = self._lookup(request, g)
        commit = self._commit_of(repo, g["rev"])
        path = g["path"]
        entry = commit.files.get(path)
        if entry is None:
            raise _entry_not_found(path, commit.oid)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        if request.method == "HEAD":
            headers["Content-Length"] = str(entry.size)
            return web.Response(status=200, headers=headers)
        data = self._content(entry)
        rng = request.headers.get("Range")
        if rng:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if m is None or (not m[1] and not m[2]):
                raise HubError(400, f"Unsupported Range header: {rng}")
            size = len(data)
            if m[1]:
                start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
            else:
                start, end = max(0, size - int(m[2])), size - 1
            if start >= size or start > end:
                raise HubError(416, "Requested range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return web.Response(status=206, body=data[start:end + 1], headers=headers)
        return web.Response(status=200, body=data, headers=headers)


# ---------------------------------------------------------------------------------------------------------------
# pointing the real clients at a FakeHub


class _Patches:
    """setattr/setenv that remember the previous values, undone in reverse order."""

    _MISSING = object()

    def __init__(self) -> None:
        self._undo: list[tuple[str, Any, str, Any]] = []

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        self._undo.append(("attr", obj, name, getattr(obj, name, self._MISSING)))
        setattr(obj, name, value)

    def setenv(self, name: str, value: str | None) -> None:
        self._undo.append(("env", None, name, os.environ.get(name, self._MISSING)))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def undo(self) -> None:
        while self._undo:
            kind, obj, name, old = self._undo.pop()
            if kind == "attr":
                if old is self._MISSING:
                    delattr(obj, name)
                else:
                    setattr(obj, name, old)
            elif old is self._MISSING:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


@contextlib.contextmanager
def hub_env(server: FakeHub, home: str | os.PathLike, *, token: str | None = None) -> Iterator[Path]:
    """Point `huggingface_hub` and `datasets` (already imported or not) at `server`, online, with caches in `home`.

    Sets HF_ENDPOINT, HF_HUB_DISABLE_XET=1, HF_HUB_OFFLINE=0, HF_DATASETS_OFFLINE=0, HF_HOME and the cache
    variables, removes HF_TOKEN/HUGGING_FACE_HUB_TOKEN/HF_OIDC_RESOURCE (or sets HF_TOKEN to `token`), and
    patches the import-time copies:
      huggingface_hub.constants: ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE (hf_hub_url, datasets' hf_dataset_url),
        HF_URL_HOSTS, HF_HUB_OFFLINE, HF_HUB_DISABLE_XET, HF_HUB_DISABLE_TELEMETRY, HF_HOME, HF_HUB_CACHE,
        HF_ASSETS_CACHE, HF_XET_CACHE, HF_TOKEN_PATH, HF_STORED_TOKENS_PATH, AGENT_HARNESSES_PATH and the
        CHECK_FOR_*_DONE_PATH files;
      datasets.config: HF_ENDPOINT, HUB_DATASETS_URL, HF_HUB_OFFLINE, HF_DATASETS_OFFLINE, HF_CACHE_HOME,
        HF_DATASETS_CACHE, HF_MODULES_CACHE, DOWNLOADED_DATASETS_PATH, EXTRACTED_DATASETS_PATH, plus
        HF_UPDATE_DOWNLOAD_COUNTS=False (a HEAD to s3.amazonaws.com) and USE_PARQUET_EXPORT=False (calls to
        datasets-server.<endpoint host>, which a loopback endpoint cannot serve).
    Cached `HfFileSystem` instances are dropped on entry and exit. Everything is restored on exit. Yields `home`.
    """
    import huggingface_hub
    from huggingface_hub import constants as hc

    home = Path(home)
    hub_cache, datasets_cache = home / "hub", home / "datasets"
    url = server.url
    p = _Patches()
    try:
        env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
               "HF_HOME": str(home), "HF_HUB_CACHE": str(hub_cache), "HF_DATASETS_CACHE": str(datasets_cache),
               "HF_XET_CACHE": str(home / "xet"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0",
               "HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": None, "HF_OIDC_RESOURCE": None}
        for name, value in env.items():
            p.setenv(name, value)
        host = url.split("://", 1)[1].split(":", 1)[0]
        for name, value in {
            "ENDPOINT": url, "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": hc.HF_URL_HOSTS | {host}, "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_TELEMETRY": True, "HF_HOME": str(home), "HF_HUB_CACHE": str(hub_cache),
            "HF_ASSETS_CACHE": str(home / "assets"), "HF_XET_CACHE": str(home / "xet"),
            "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
            "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
            "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        }.items():
            if hasattr(hc, name):
                p.setattr(hc, name, value)
        try:
            from datasets import config as dc
        except ImportError:  # pragma: no cover - datasets is a project dependency
            dc = None
        if dc is not None:
            for name, value in {
                "HF_ENDPOINT": url, "HUB_DATASETS_URL": url + "/datasets/{repo_id}/resolve/{revision}/{path}",
                "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False, "HF_CACHE_HOME": str(home),
                "HF_DATASETS_CACHE": datasets_cache, "HF_MODULES_CACHE": home / "modules",
                "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
                "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
                "HF_UPDATE_DOWNLOAD_COUNTS": False, "USE_PARQUET_EXPORT": False,
            }.items():
                p.setattr(dc, name, value)
        huggingface_hub.HfFileSystem.clear_instance_cache()
        yield home
    finally:
        with contextlib.suppress(Exception):
            huggingface_hub.HfFileSystem.clear_instance_cache()
        p.undo()


# ---------------------------------------------------------------------------------------------------------------
# script


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Serve a fake Hugging Face Hub on 127.0.0.1 (prints 'URL <endpoint>').")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--token", default=DEFAULT_TOKEN, help="the access token accepted for writes")
    ap.add_argument("--user", default=DEFAULT_USER)
    ap.add_argument("--multipart-chunk-size", type=int, default=None)
    args = ap.parse_args(argv)
    srv = FakeHub(token=args.token, user=args.user, multipart_chunk_size=args.multipart_chunk_size,
                  host=args.host, port=args.port)
    srv.serve_until_stopped("# export HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1 HF_TOKEN=" + args.token)


if __name__ == "__main__":
    sys.exit(main())
