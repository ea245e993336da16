"""``hf://`` URIs and the typed Hub errors.

Grammar (the one ``huggingface_hub``'s ``HfFileSystem`` uses)::

    hf://[models/|datasets/]ORG/NAME[@REVISION][/PATH]

No prefix (or ``models/``) names a model repository, ``datasets/`` a dataset
repository (zoos live in dataset repos). ``REVISION`` is a branch, a tag or a
40-hex commit; a branch name holding ``/`` is written with ``%2F``
(``@feature%2Fx``), except the Hub's special refs ``refs/pr/N`` and
``refs/convert/NAME`` which are written as is. ``PATH`` is a file or a folder
inside the repository. Spaces, buckets and web URLs are not accepted.

Every failure to reach something on the Hub raises a subclass of
:class:`wsl.errors.HubError` with a one-line message naming the URI
(:func:`hub_error` translates ``huggingface_hub``'s exceptions). The Hub
environment (endpoint, cache, offline mode) is read from
``huggingface_hub.constants`` at call time (:func:`endpoint`,
:func:`cache_dir`, :func:`is_offline`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from wsl.errors import HubError

__all__ = [
    "HubAccessError", "HubConnectionError", "HubFileNotFoundError", "HubOfflineError", "HubRef",
    "HubRepoNotFoundError", "HubRevisionNotFoundError", "HubURIError", "cache_dir", "endpoint", "hub_error",
    "huggingface", "is_hub_uri", "is_offline", "one_line", "parse_uri", "transport_errors",
]

PROTOCOL = "hf://"
REPO_TYPES = ("model", "dataset")
_PREFIXES = {"models": "model", "datasets": "dataset"}
_UNSUPPORTED = {"spaces": "Spaces", "buckets": "buckets", "kernels": "kernel repos"}
_PART = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_SPECIAL_REF = re.compile(r"^refs/(?:pr/\d+|convert/[\w.-]+)")
_BAD_REV = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


class HubURIError(HubError):
    """A malformed ``hf://`` URI (or one naming something ``wsl`` cannot use)."""


class HubRepoNotFoundError(HubError):
    """The repository does not exist (or is private and no valid token was sent)."""


class HubRevisionNotFoundError(HubError):
    """The repository exists but the branch, tag or commit does not."""


class HubFileNotFoundError(HubError):
    """The repository and revision exist but the file (entry) does not."""


class HubAccessError(HubError):
    """Access refused: gated repository, missing or insufficient token (HTTP 401/403)."""


class HubOfflineError(HubError):
    """``HF_HUB_OFFLINE=1`` and what is needed is not in the local cache."""


class HubConnectionError(HubError):
    """The Hub could not be reached and what is needed is not in the local cache."""


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` URI: repository type and id, optional revision, path inside the repo."""

    repo_type: str
    repo_id: str
    revision: str | None = None
    path: str = ""

    @property
    def uri(self) -> str:
        """The canonical URI (``datasets/`` prefix for datasets, none for models)."""
        prefix = "datasets/" if self.repo_type == "dataset" else ""
        rev = ""
        if self.revision is not None:
            r = self.revision
            rev = "@" + (r if _SPECIAL_REF.fullmatch(r) else r.replace("/", "%2F"))
        return f"{PROTOCOL}{prefix}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")

    @property
    def repo_uri(self) -> str:
        """The URI of the repository alone (no revision, no path)."""
        return HubRef(self.repo_type, self.repo_id).uri

    @property
    def cache_folder(self) -> str:
        """The repository's folder name in the Hugging Face cache (``models--org--name``)."""
        return f"{self.repo_type}s--" + self.repo_id.replace("/", "--")

    def with_(self, *, revision: str | None = None, path: str | None = None) -> "HubRef":
        """A copy with another revision and/or path."""
        return HubRef(self.repo_type, self.repo_id, self.revision if revision is None else revision,
                      self.path if path is None else path)

    def __str__(self) -> str:
        return self.uri


def is_hub_uri(text: object) -> bool:
    """Whether ``text`` is a string starting with ``hf://`` (well-formed or not)."""
    return isinstance(text, str) and text.startswith(PROTOCOL)


def is_commit(revision: str | None) -> bool:
    """Whether ``revision`` is a full 40-hex commit id."""
    return revision is not None and bool(_COMMIT.fullmatch(revision))


def _bad(uri: str, what: str) -> HubURIError:
    return HubURIError(f"{uri!r}: {what}; expected hf://ORG/NAME[@REVISION][/PATH] or "
                       "hf://datasets/ORG/NAME[@REVISION][/PATH]")


def _check_part(uri: str, part: str, what: str) -> None:
    if not _PART.fullmatch(part) or "--" in part or ".." in part:
        raise _bad(uri, f"invalid {what} {part!r} (letters, digits, '-', '_', '.'; at most 96 characters; "
                        "no '--' or '..'; must start and end with a letter or digit)")


def _split_revision(uri: str, rest: str) -> tuple[str, str]:
    """``REVISION[/PATH]`` -> (revision, path)."""
    m = _SPECIAL_REF.match(rest)
    if m:
        rev, tail = m.group(0), rest[m.end():]
        if tail and not tail.startswith("/"):
            raise _bad(uri, f"malformed special revision in {rest!r}")
        path = tail[1:]
    else:
        rev, _, path = rest.partition("/")
        rev = unquote(rev)
    _check_revision(uri, rev)
    return rev, path


def _check_revision(uri: str, rev: str) -> None:
    if not rev:
        raise _bad(uri, "empty revision after '@'")
    if _BAD_REV.search(rev) or rev.endswith((".", "/", ".lock")) or rev.startswith(("-", "/")):
        raise _bad(uri, f"invalid revision {rev!r}")


def parse_uri(uri: str) -> HubRef:
    """Parse ``hf://[models/|datasets/]ORG/NAME[@REVISION][/PATH]`` into a :class:`HubRef`.

    Raises :class:`HubURIError` (one line, naming the URI) if it is malformed.
    """
    if not isinstance(uri, str) or not uri.startswith(PROTOCOL):
        raise _bad(str(uri), f"does not start with {PROTOCOL!r}")
    body = uri[len(PROTOCOL):]
    if not body:
        raise _bad(uri, "nothing after 'hf://'")
    if any(c.isspace() or ord(c) < 32 for c in body) or "\\" in body or "?" in body or "#" in body:
        raise _bad(uri, "contains whitespace, control characters, '\\', '?' or '#'")
    repo_type = "model"
    head, _, tail = body.partition("/")
    if head in _PREFIXES:
        repo_type, body = _PREFIXES[head], tail
    elif head in _UNSUPPORTED:
        raise _bad(uri, f"{_UNSUPPORTED[head]} are not supported (only model and dataset repositories)")
    org, sep, rest = body.partition("/")
    if not sep or not org:
        raise _bad(uri, "missing repository name (ORG/NAME)")
    name_end = len(rest)
    for i, c in enumerate(rest):
        if c in "@/":
            name_end = i
            break
    name, rest = rest[:name_end], rest[name_end:]
    _check_part(uri, org, "organization/user")
    if not name:
        raise _bad(uri, "missing repository name (ORG/NAME)")
    _check_part(uri, name, "repository name")
    revision: str | None = None
    path = ""
    if rest.startswith("@"):
        revision, path = _split_revision(uri, rest[1:])
    elif rest.startswith("/"):
        path = rest[1:]
    if path.endswith("/"):
        path = path[:-1]
    if path:
        segments = path.split("/")
        if any(s in ("", ".", "..") for s in segments):
            raise _bad(uri, f"path {path!r} has empty, '.' or '..' segments")
    return HubRef(repo_type, f"{org}/{name}", revision, path)


def parse_target(uri: str, repo_type: str, revision: str | None = None) -> HubRef:
    """Parse a push destination, which must name a repository of ``repo_type``.

    ``revision`` (e.g. ``--revision``) may repeat the URI's ``@REVISION`` but not contradict it.
    """
    ref = parse_uri(uri)
    want = "hf://datasets/ORG/NAME" if repo_type == "dataset" else "hf://ORG/NAME"
    if ref.repo_type != repo_type:
        raise HubURIError(f"{uri!r}: a {repo_type} is pushed to a {repo_type} repository; use {want}")
    if revision is not None and ref.revision is not None and revision != ref.revision:
        raise HubURIError(f"{uri!r}: revision {ref.revision!r} in the URI contradicts --revision {revision!r}")
    if revision is not None:
        _check_revision(uri, revision)
        ref = ref.with_(revision=revision)
    return ref


# ------------------------------------------------------------------------ environment and errors
def huggingface() -> Any:
    """The ``huggingface_hub`` module, imported on first use (a typed HubError if it is missing)."""
    try:
        import huggingface_hub
        import huggingface_hub.constants  # noqa: F401  (read at call time below)
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise HubError(f"hf:// URIs need huggingface_hub ({exc}); pip install huggingface_hub") from exc
    return huggingface_hub


def endpoint() -> str:
    """The Hub endpoint in use (``HF_ENDPOINT``, default https://huggingface.co)."""
    return str(huggingface().constants.ENDPOINT).rstrip("/")


def cache_dir() -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``)."""
    return Path(huggingface().constants.HF_HUB_CACHE).expanduser()


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is on (as read by huggingface_hub, or set in the environment since)."""
    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return bool(huggingface().constants.HF_HUB_OFFLINE) or env


def transport_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean "the network failed" (builtins, httpx, requests)."""
    out: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for mod, names in (("httpx2", ("TransportError", "TimeoutException")), ("httpx", ("TransportError",)),
                       ("requests", ("ConnectionError", "Timeout"))):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        out += [getattr(m, n) for n in names if isinstance(getattr(m, n, None), type)]
    return tuple(out)


def _web_url(ref: HubRef) -> str:
    return f"{endpoint()}/{'datasets/' if ref.repo_type == 'dataset' else ''}{ref.repo_id}"


def one_line(exc: BaseException) -> str:
    """``str(exc)`` on one line, cut at 300 characters."""
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


class _Errors:
    """huggingface_hub's exception classes by name (``huggingface_hub.errors``, older: ``.utils``)."""

    def __init__(self, *modules: Any) -> None:
        self.modules = modules

    def __getattr__(self, name: str) -> Any:
        for m in self.modules:
            if isinstance(getattr(m, name, None), type):
                return getattr(m, name)
        return ()  # unknown in this version: isinstance(x, ()) is False


def _errors() -> Any:
    hf = huggingface()
    mods = []
    for name in ("huggingface_hub.errors", "huggingface_hub.utils"):
        try:
            mods.append(__import__(name, fromlist=["_"]))
        except ImportError:
            continue
    return _Errors(*mods, hf)


def hub_error(exc: BaseException, ref: HubRef | str, expect: str | None = None) -> HubError:
    """Translate a ``huggingface_hub`` / transport exception about ``ref`` into a one-line typed HubError."""
    if isinstance(exc, HubError):
        return exc
    errors = _errors()
    uri = str(ref)
    where = ref if isinstance(ref, HubRef) else None
    repo = where.repo_uri if where else uri
    login = "set HF_TOKEN or run `hf auth login`"
    if isinstance(exc, errors.GatedRepoError):
        url = _web_url(where) if where else repo
        return HubAccessError(f"{uri}: {repo} is a gated repository: accept its conditions at {url} and {login}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        hint = ""
        if where and expect and expect != where.repo_type and where.repo_type == "model":
            hint = f"; {expect} repositories are named hf://{expect}s/{where.repo_id}"
        return HubRepoNotFoundError(f"{uri}: repository {repo} not found on {endpoint()} "
                                    f"(if it is private, {login}){hint}")
    if isinstance(exc, errors.DisabledRepoError):
        return HubAccessError(f"{uri}: repository {repo} is disabled on {endpoint()}")
    if isinstance(exc, errors.RevisionNotFoundError):
        rev = where.revision if where else None
        return HubRevisionNotFoundError(f"{uri}: revision {rev or 'main'!r} not found in {repo}")
    local = errors.LocalEntryNotFoundError
    if isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, local):
        path = where.path if where else "?"
        rev = (where.revision if where else None) or "main"
        return HubFileNotFoundError(f"{uri}: no file {path!r} in {repo} at revision {rev}")
    if isinstance(exc, (local, errors.OfflineModeIsEnabled)) or is_offline():
        if is_offline():
            return HubOfflineError(f"{uri}: not in the local Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 "
                                   "forbids downloading it; fetch it once online (or unset HF_HUB_OFFLINE)")
        return HubConnectionError(f"{uri}: cannot reach the Hub at {endpoint()} and it is not in the local cache "
                                  f"({cache_dir()})")
    if isinstance(exc, errors.HfHubHTTPError) and getattr(exc, "response", None) is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return HubAccessError(f"{uri}: access denied by {endpoint()} (HTTP {status}); {login} with a token "
                                  f"allowed to use {repo}")
        return HubError(f"{uri}: the Hub at {endpoint()} answered HTTP {status}: {one_line(exc)}")
    if isinstance(exc, transport_errors()):
        return HubConnectionError(f"{uri}: cannot reach the Hub at {endpoint()} ({type(exc).__name__}: "
                                  f"{one_line(exc)})")
    if isinstance(exc, errors.HFValidationError):
        return HubURIError(f"{uri}: {one_line(exc)}")
    if isinstance(exc, OSError):
        return HubError(f"{uri}: cannot write to the Hugging Face cache {cache_dir()}: {one_line(exc)}")
    return HubError(f"{uri}: {type(exc).__name__}: {one_line(exc)}")
