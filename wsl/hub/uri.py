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
:class:`wsl.errors.HubError` with a one-line message naming the URI.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from wsl.errors import HubError

__all__ = [
    "HubAccessError", "HubConnectionError", "HubFileNotFoundError", "HubOfflineError", "HubRef",
    "HubRepoNotFoundError", "HubRevisionNotFoundError", "HubURIError", "is_hub_uri", "parse_uri",
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
