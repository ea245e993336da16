"""Paths that name a remote resource: ``scheme://...`` URIs, resolved to local paths by registered hooks.

``wsl.io`` knows no remote store. A package that does registers a resolver
for its scheme with :func:`register_scheme` when it is imported --
:mod:`wsl.hub` registers ``hf://`` -- and the top-level :mod:`wsl` package
imports it, so every path-taking entry point (``wsl.load_zoo``,
``wsl.predict``, training configs, the CLI) accepts those URIs through
:func:`local_path`. A plain path is returned unchanged; a URI whose scheme
nobody registered raises :class:`~wsl.errors.UnknownSchemeError`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from wsl.errors import UnknownSchemeError, WslError

__all__ = ["Resolver", "local_path", "register_scheme", "registered_schemes", "uri_scheme"]

Resolver = Callable[[str, str], "str | os.PathLike[str]"]
"""``resolver(uri, repo_type) -> local path`` (a file or a folder, fetched or found in a cache)."""

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_RESOLVERS: dict[str, Resolver] = {}


def register_scheme(prefix: str, resolver: Resolver) -> None:
    """Resolve paths starting with ``prefix`` (``"hf://"``) with ``resolver``; registering again replaces it."""
    if not isinstance(prefix, str) or _SCHEME.fullmatch(prefix) is None:
        raise WslError(f"register_scheme: prefix must look like 'name://', got {prefix!r}")
    if not callable(resolver):
        raise WslError(f"register_scheme({prefix!r}): the resolver must be callable, got {type(resolver).__name__}")
    _RESOLVERS[prefix] = resolver


def registered_schemes() -> tuple[str, ...]:
    """The prefixes :func:`local_path` resolves, sorted."""
    return tuple(sorted(_RESOLVERS))


def uri_scheme(ref: str | os.PathLike[str]) -> str | None:
    """The scheme prefix of ``ref`` (``"hf://"`` for ``"hf://org/name"``), or None for a plain path."""
    m = _SCHEME.match(os.fspath(ref)) if isinstance(ref, (str, os.PathLike)) else None
    return m.group(0) if m else None


def local_path(ref: str | os.PathLike[str], *, repo_type: str = "model") -> str:
    """A local path for ``ref``: unchanged for a plain path, else its registered scheme's resolver's answer.

    ``repo_type`` says what the caller expects there (``"model"``: a checkpoint
    or a predictor; ``"dataset"``: a zoo); resolvers may use it to phrase errors.
    """
    text = os.fspath(ref)
    scheme = uri_scheme(text)
    if scheme is None:
        return text
    resolver = _RESOLVERS.get(scheme)
    if resolver is None:
        known = ", ".join(registered_schemes()) or "none"
        raise UnknownSchemeError(f"{text}: no resolver for {scheme} URIs is installed (registered schemes: "
                                 f"{known}); pass a local path or a URI of a registered scheme")
    return os.fspath(resolver(text, repo_type))
