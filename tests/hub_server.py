"""A loopback fake of the Hugging Face Hub HTTP API, for tests (no internet).

:class:`FakeHub` runs a threaded ``http.server`` on ``127.0.0.1`` (random
port) speaking just enough of the Hub protocol for the real
``huggingface_hub`` client (2.x, httpx2):

* ``GET /api/{models,datasets}/ORG/NAME[/revision/REV]``: repo info (``sha``, ``siblings``);
* ``GET /api/.../tree/REV[/PATH]``: tree listing (``snapshot_download``);
* ``HEAD``/``GET /[datasets/]ORG/NAME/resolve/REV/PATH``: files, with ``ETag``,
  ``X-Repo-Commit``, ``Content-Length``; binary ("LFS") files answer ``302`` to a
  relative ``/cdn/COMMIT/SHA256`` path (``X-Linked-Etag``/``X-Linked-Size``);
* errors as the Hub sends them: ``404`` + ``X-Error-Code: RepoNotFound`` /
  ``RevisionNotFound`` / ``EntryNotFound``; private repos ``401 RepoNotFound``
  without a token; gated repos ``401``/``403`` + ``X-Error-Code: GatedRepo``;
* uploads: ``POST /api/repos/create``, ``/api/validate-yaml`` (the README's
  YAML front matter must parse to a mapping), ``/api/.../preupload/REV``,
  ``/api/.../commit/REV`` (NDJSON), ``/api/.../branch/NAME``.

Uploads: the preupload answer sends every file down the *regular* path
(base64 inside the NDJSON commit) with the ``oid`` (git blob SHA-1) of the
file already stored at that path, so unchanged files are skipped by the
client exactly as on the Hub. LFS/Xet transfers are not implemented (an
``lfsFile`` commit line is refused). Writes need ``Authorization: Bearer
<token>`` with a token from ``FakeHub.tokens``. Every request is logged in
``FakeHub.requests`` as ``(method, path)``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npy", ".h5", ".msgpack")
_TYPES = {"models": "model", "datasets": "dataset"}


def git_oid(data: bytes) -> str:
    """The git blob SHA-1 of ``data`` (the Hub's ``oid`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str, data: bytes) -> bool:
    return path.endswith(LFS_SUFFIXES) or len(data) >= 10 * 1024 * 1024


@dataclass
class FakeRepo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool = False
    granted: set[str] = field(default_factory=set)  #: tokens allowed into a gated repo
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    history: list[tuple[str, str]] = field(default_factory=list)  #: (commit, summary), oldest first

    def commit(self, branch: str, adds: Mapping[str, bytes], deletes: tuple[str, ...] = (),
               message: str = "update") -> str:
        parent = self.branches.get(branch)
        files = dict(self.commits.get(parent, {})) if parent else {}
        for d in deletes:
            for p in [p for p in files if p == d or p.startswith(d.rstrip("/") + "/")]:
                del files[p]
        files.update(adds)
        h = hashlib.sha1(f"{parent}:{message}:{len(self.history)}".encode())
        for p in sorted(files):
            h.update(p.encode() + git_oid(files[p]).encode())
        sha = h.hexdigest()
        self.commits[sha] = files
        self.branches[branch] = sha
        self.history.append((sha, message))
        return sha

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


class FakeHub:
    """The fake Hub: an in-memory set of repositories behind a loopback HTTP server."""

    def __init__(self, token: str = "hf_fake_write_token") -> None:
        self.token = token
        self.tokens = {token}
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.blobs: dict[str, tuple[str, bytes]] = {}  #: sha256 -> (path, content) of "LFS" files (/cdn/)
        self.served: list[str] = []  #: repo paths whose content was sent (GET), in order
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeHub":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ content
    def add_repo(self, repo_id: str, files: Mapping[str, bytes | str | Path] | None = None, *,
                 repo_type: str = "model", private: bool = False, gated: bool = False,
                 message: str = "initial commit") -> str:
        """Create (or update) a repository with ``files`` on ``main``; return the commit id."""
        repo = self.repos.setdefault((repo_type, repo_id), FakeRepo(repo_type, repo_id, private, gated))
        data = {k: v.read_bytes() if isinstance(v, Path) else v.encode() if isinstance(v, str) else v
                for k, v in (files or {}).items()}
        with self.lock:
            return repo.commit("main", data, message=message)

    def add_folder(self, repo_id: str, folder: Path, *, repo_type: str = "model", prefix: str = "",
                   **kw: Any) -> str:
        """Add every file under ``folder`` (at ``prefix/...`` in the repo)."""
        files = {(f"{prefix}/" if prefix else "") + p.relative_to(folder).as_posix(): p
                 for p in sorted(folder.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, repo_type=repo_type, **kw)

    def repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> dict[str, bytes]:
        r = self.repo(repo_id, repo_type)
        return dict(r.commits[r.resolve(revision) or ""])

    def downloads(self) -> list[str]:
        """Repository paths of the files whose content was sent (GET on ``/resolve/`` or on a CDN blob)."""
        with self.lock:
            return list(self.served)


class _Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None,
                 code: str | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, dict(headers or {})
        if code:
            self.headers["X-Error-Code"] = code
        if status >= 400:
            msg = body if isinstance(body, str) else str((body or {}).get("error", code or "Error"))
            self.headers["X-Error-Message"] = msg
            self.body = {"error": msg} if isinstance(body, str) or body is None else body


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _send(self, method: str, r: _Reply) -> None:
        body = r.body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            r.headers.setdefault("Content-Type", "application/json")
        else:
            data = body if isinstance(body, bytes) else (body or "").encode()
        self.send_response(r.status)
        for k, v in r.headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _serve(self) -> None:
        method, raw = self.command, urlsplit(self.path)
        with self.hub.lock:
            self.hub.requests.append((method, unquote(raw.path)))
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else b""
        try:
            self._route(method, [s for s in raw.path.split("/") if s != ""], parse_qs(raw.query), payload)
            raise _Reply(404, f"no route for {method} {raw.path}")
        except _Reply as r:
            self._send(method, r)

    do_GET = do_HEAD = do_POST = _serve

    def _authed(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        tok = auth[7:] if auth.startswith("Bearer ") else None
        return tok if tok in self.hub.tokens else None

    def _repo(self, rtype: str, org: str, name: str, *, write: bool = False) -> FakeRepo:
        repo = self.hub.repos.get((rtype, f"{org}/{name}"))
        if repo is None or (repo.private and self._authed() is None):
            raise _Reply(401 if self._authed() is None else 404, "Repository not found", code="RepoNotFound")
        if write and self._authed() is None:
            raise _Reply(401, "Invalid credentials in Authorization header")
        return repo

    def _commit_of(self, repo: FakeRepo, rev: str) -> str:
        sha = repo.resolve(rev)
        if sha is None:
            raise _Reply(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return sha

    # ------------------------------------------------------------------ routes
    def _route(self, method: str, seg: list[str], query: dict[str, list[str]], payload: bytes) -> None:
        if seg[:1] == ["cdn"] and len(seg) == 3 and method in ("GET", "HEAD"):
            self._cdn(seg[1], seg[2])
        if seg[:1] == ["api"]:
            self._api(method, seg[1:], query, payload)
        rtype = "model"
        if seg[:1] == ["datasets"]:
            rtype, seg = "dataset", seg[1:]
        if len(seg) >= 5 and seg[2] == "resolve" and method in ("GET", "HEAD"):
            self._resolve(rtype, seg[0], seg[1], unquote(seg[3]), "/".join(unquote(s) for s in seg[4:]))

    def _api(self, method: str, seg: list[str], query: dict[str, list[str]], payload: bytes) -> None:
        hub = self.hub
        if seg == ["agent-harnesses"]:
            raise _Reply(200, {"standardEnvVars": [], "harnesses": {}})
        if seg == ["whoami-v2"]:
            if self._authed() is None:
                raise _Reply(401, "Invalid credentials in Authorization header")
            raise _Reply(200, {"type": "user", "name": "tester", "orgs": []})
        if seg == ["validate-yaml"] and method == "POST":
            self._validate_yaml(json.loads(payload)["content"])
        if seg == ["repos", "create"] and method == "POST":
            self._create(json.loads(payload))
        if len(seg) < 3 or seg[0] not in _TYPES:
            return
        rtype, org, name, rest = _TYPES[seg[0]], seg[1], seg[2], seg[3:]
        if method == "GET" and (not rest or rest[0] == "revision"):
            repo = self._repo(rtype, org, name)
            self._info(repo, unquote(rest[1]) if len(rest) > 1 else "main")
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            repo = self._repo(rtype, org, name)
            self._tree(repo, unquote(rest[1]), "/".join(unquote(s) for s in rest[2:]),
                       query.get("recursive", ["false"])[0].lower() == "true")
        if method == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit", "branch"):
            repo = self._repo(rtype, org, name, write=True)
            with hub.lock:
                getattr(self, f"_{rest[0]}")(repo, unquote(rest[1]), payload)

    def _info(self, repo: FakeRepo, rev: str) -> None:
        sha = self._commit_of(repo, rev)
        raise _Reply(200, {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0],
                           "sha": sha, "private": repo.private, "gated": "manual" if repo.gated else False,
                           "disabled": False, "lastModified": "2025-01-01T00:00:00.000Z", "tags": [],
                           "downloads": 0, "likes": 0,
                           "siblings": [{"rfilename": p} for p in sorted(repo.commits[sha])]})

    def _tree(self, repo: FakeRepo, rev: str, path: str, recursive: bool) -> None:
        files = repo.commits[self._commit_of(repo, rev)]
        prefix = path + "/" if path else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                dirs.add(prefix + "/".join(parts[:i]))
            if recursive or len(parts) == 1:
                data = files[p]
                entry: dict[str, Any] = {"type": "file", "oid": git_oid(data), "size": len(data), "path": p}
                if is_lfs(p, data):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                out.append(entry)
        if path and not out and not dirs:
            raise _Reply(404, f"{path} does not exist", code="EntryNotFound")
        out += [{"type": "directory", "oid": git_oid(d.encode()), "size": 0, "path": d} for d in sorted(dirs)]
        raise _Reply(200, out)

    def _resolve(self, rtype: str, org: str, name: str, rev: str, path: str) -> None:
        repo = self._repo(rtype, org, name)
        if repo.gated:
            tok = self._authed()
            if tok is None:
                raise _Reply(401, f"Access to {repo.repo_id} is restricted. You must be authenticated.",
                             code="GatedRepo")
            if tok not in repo.granted:
                raise _Reply(403, f"Access to {repo.repo_id} is restricted and you are not in the authorized list.",
                             code="GatedRepo")
        sha = self._commit_of(repo, rev)
        data = repo.commits[sha].get(path)
        if data is None:
            raise _Reply(404, "Entry not found", {"X-Repo-Commit": sha}, code="EntryNotFound")
        if is_lfs(path, data):
            digest = hashlib.sha256(data).hexdigest()
            with self.hub.lock:
                self.hub.blobs[digest] = (path, data)
            raise _Reply(302, b"", {"Location": f"/cdn/{sha}/{digest}", "X-Repo-Commit": sha,
                                    "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)),
                                    "ETag": f'"{git_oid(digest.encode())}"'})
        self._sent(path)
        raise _Reply(200, data, {"ETag": f'"{git_oid(data)}"', "X-Repo-Commit": sha,
                                 "Content-Type": "application/octet-stream"})

    def _sent(self, path: str) -> None:
        if self.command == "GET":
            with self.hub.lock:
                self.hub.served.append(path)

    def _cdn(self, sha: str, digest: str) -> None:
        if digest not in self.hub.blobs:
            raise _Reply(404, "no such blob")
        path, data = self.hub.blobs[digest]
        self._sent(path)
        raise _Reply(200, data, {"ETag": f'"{digest}"', "X-Repo-Commit": sha,
                                 "Content-Type": "application/octet-stream"})

    # ------------------------------------------------------------------ writes
    def _validate_yaml(self, content: str) -> None:
        errors = []
        if content.startswith("---\n"):
            end = content.find("\n---", 4)
            try:
                meta = yaml.safe_load(content[4:end]) if end > 0 else None
                if end < 0 or not isinstance(meta, dict):
                    errors.append("YAML front matter must be a mapping closed by '---'")
                elif not isinstance(meta.get("license", ""), str) or not all(
                        isinstance(t, str) for t in meta.get("tags", [])):
                    errors.append("'license' must be a string and 'tags' a list of strings")
            except yaml.YAMLError as exc:
                errors.append(f"invalid YAML: {exc}")
        raise _Reply(400 if errors else 200, {"errors": [{"message": e} for e in errors], "warnings": []})

    def _create(self, body: dict[str, Any]) -> None:
        if self._authed() is None:
            raise _Reply(401, "Invalid credentials in Authorization header")
        rtype = body.get("type") or "model"
        repo_id = f"{body.get('organization') or 'tester'}/{body['name']}"
        url = f"{self.hub.url}/{'datasets/' if rtype == 'dataset' else ''}{repo_id}"
        with self.hub.lock:
            if (rtype, repo_id) in self.hub.repos:
                raise _Reply(409, {"error": "You already created this repo", "url": url})
            repo = FakeRepo(rtype, repo_id, private=bool(body.get("private") or body.get("visibility") == "private"))
            repo.commit("main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                        message="initial commit")
            self.hub.repos[(rtype, repo_id)] = repo
        raise _Reply(200, {"url": url, "name": repo_id})

    def _preupload(self, repo: FakeRepo, rev: str, payload: bytes) -> None:
        files = repo.commits[self._commit_of(repo, rev)]
        out = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                "oid": git_oid(files[f["path"]]) if f["path"] in files else None}
               for f in json.loads(payload)["files"]]
        raise _Reply(200, {"files": out, "commitOid": repo.resolve(rev)})

    def _commit(self, repo: FakeRepo, rev: str, payload: bytes) -> None:
        self._commit_of(repo, rev)
        if rev not in repo.branches:
            raise _Reply(400, f"cannot commit to {rev}: not a branch")
        adds: dict[str, bytes] = {}
        deletes: list[str] = []
        summary = "update"
        for line in payload.decode().splitlines():
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary") or summary
            elif key == "file":
                adds[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deletes.append(value["path"])
            else:
                raise _Reply(400, f"the fake hub does not support {key!r} commit operations (LFS/Xet uploads)")
        sha = repo.commit(rev, adds, tuple(deletes), summary)
        prefix = "datasets/" if repo.repo_type == "dataset" else ""
        raise _Reply(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha,
                           "pullRequestUrl": None, "success": True})

    def _branch(self, repo: FakeRepo, branch: str, payload: bytes) -> None:
        if branch in repo.branches:
            raise _Reply(409, f"branch {branch} already exists")
        start = (json.loads(payload) if payload else {}).get("startingPoint") or "main"
        repo.branches[branch] = self._commit_of(repo, start)
        raise _Reply(200, {})
