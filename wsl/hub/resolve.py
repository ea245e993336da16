"""Resolving ``hf://`` URIs to local paths through the standard Hugging Face cache.

:func:`resolve` downloads only what the target needs (``huggingface_hub``'s
``hf_hub_download`` / ``snapshot_download`` with exact ``allow_patterns``)
and returns a path inside the cache snapshot (``HF_HUB_CACHE``,
``models--ORG--NAME/snapshots/<commit>/...``):

* a file (``hf://org/name/model.safetensors``): that file, plus the
  ``config.json`` next to a weights file and the shards of a
  ``*.index.json``;
* a folder (or the repository root) holding ``zoo.json``: the card,
  ``metadata.jsonl`` and ``README.md`` only -- tensor shards are fetched one by
  one the first time the zoo reads them (:class:`ZooFetcher`,
  :class:`HubZooStore`, used by :func:`wsl.load_zoo` for zoos in the cache);
* a folder holding ``config.json`` (a checkpoint or a predictor): ``config.json``,
  ``README.md``, ``space.json`` and the weights: ``model.safetensors``, else the
  ``model.safetensors.index.json`` and its shards, else ``pytorch_model.bin``
  (or its index and shards);
* a folder holding ``hyper.safetensors`` (a NeuMeta run): the hypernetwork,
  ``base.safetensors``, ``config.json``, ``metrics.json`` and ``README.md``;
* any other folder: everything in it.

Offline (``HF_HUB_OFFLINE=1``) or when the Hub cannot be reached, the cached
snapshot of the revision is used if it holds what is needed. The token is the
usual one (``HF_TOKEN``, ``hf auth login``). Every failure is a typed
:class:`~wsl.errors.HubError` (see :mod:`wsl.hub.uri`).
"""

from __future__ import annotations

import glob
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from wsl.errors import HubError
from wsl.hub.uri import (
    HubConnectionError, HubFileNotFoundError, HubOfflineError, HubRef, cache_dir, endpoint, hub_error, huggingface,
    is_commit, is_offline, one_line, parse_uri, transport_errors,
)
from wsl.zoo.store import ZooStore

__all__ = ["HubZooStore", "ZooFetcher", "cached_zoo_store", "resolve", "resolve_local", "zoo_store"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
_CHECKPOINT_EXTRAS = ("README.md", "space.json")
_WEIGHTS = (("model.safetensors",), ("model.safetensors.index.json",), ("pytorch_model.bin",),
            ("pytorch_model.bin.index.json",))
_ZOO_FILES = ("zoo.json", "metadata.jsonl", "README.md")
_HYPER_FILES = ("hyper.safetensors", "base.safetensors", "config.json", "metrics.json", "README.md")
_FEW_FILES = 8  #: up to this many files are fetched one by one, more with snapshot_download
_CACHE_REPO = re.compile(r"^(model|dataset)s--([^/]+?)--([^/]+)$")


# ------------------------------------------------------------------------------------------- listing
@dataclass(frozen=True)
class _Listing:
    commit: str
    files: frozenset[str]
    remote: bool  #: from the Hub (complete), or from the local cache


def _storage(ref: HubRef) -> Path:
    return cache_dir() / ref.cache_folder


def _cached_listing(ref: HubRef) -> _Listing | None:
    """What the cache knows about ``ref``'s revision: its commit and files (tree listing, else the snapshot)."""
    storage, rev = _storage(ref), ref.revision or "main"
    commit: str | None = rev if is_commit(rev) else None
    if commit is None:
        ref_file = storage / "refs" / rev
        commit = ref_file.read_text(encoding="utf-8").strip() if ref_file.is_file() else None
    snapshot = storage / "snapshots" / commit if commit else None
    if commit is None or snapshot is None or not snapshot.is_dir():
        return None
    try:
        tree = json.loads((storage / "trees" / f"{commit}.json").read_text(encoding="utf-8"))
        files = frozenset(str(f) for f in tree["files"])
    except (OSError, ValueError, KeyError, TypeError):
        files = frozenset(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*")
                          if p.is_file() and not p.name.endswith(".incomplete"))
    return _Listing(commit, files, False)


def _remember_ref(ref: HubRef, commit: str) -> None:
    """Record ``refs/<revision>`` -> commit in the cache (as huggingface_hub does), for offline use later."""
    rev = ref.revision or "main"
    if is_commit(rev):
        return
    path = _storage(ref) / "refs" / rev
    try:
        if path.is_file() and path.read_text(encoding="utf-8").strip() == commit:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise HubError(f"{ref}: cannot write to the Hugging Face cache {cache_dir()}: {exc}") from exc


def _api() -> Any:
    return huggingface().HfApi(endpoint=endpoint())


def _listing(ref: HubRef, expect: str | None) -> _Listing:
    if not is_offline():
        try:
            info = _api().repo_info(ref.repo_id, repo_type=ref.repo_type, revision=ref.revision)
            siblings = getattr(info, "siblings", None)
            if siblings is None:
                files = _api().list_repo_files(ref.repo_id, repo_type=ref.repo_type, revision=info.sha)
            else:
                files = [s.rfilename for s in siblings]
            _remember_ref(ref, str(info.sha))
            return _Listing(str(info.sha), frozenset(files), True)
        except Exception as exc:
            if not isinstance(exc, transport_errors()):
                raise hub_error(exc, ref, expect) from exc
            cached = _cached_listing(ref)
            if cached is None:
                raise hub_error(exc, ref, expect) from exc
            return cached
    cached = _cached_listing(ref)
    if cached is None:
        raise HubOfflineError(f"{ref}: revision {ref.revision or 'main'!r} of {ref.repo_uri} is not in the local "
                              f"Hugging Face cache ({cache_dir()}) and HF_HUB_OFFLINE=1 forbids downloading it")
    return cached


# ------------------------------------------------------------------------------------------ selection
def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _folder_selection(folder: str, names: set[str]) -> list[str]:
    """Files (relative to ``folder``) to fetch for a folder, by what it holds (see module docstring)."""
    if "hyper.safetensors" in names:
        return [n for n in _HYPER_FILES if n in names]
    if "zoo.json" in names:
        return [n for n in _ZOO_FILES if n in names]
    if "config.json" in names:
        picked = ["config.json", *(n for n in _CHECKPOINT_EXTRAS if n in names)]
        for candidates in _WEIGHTS:
            if all(c in names for c in candidates):
                return picked + list(candidates)
        return picked
    return sorted(names)


def _selection(ref: HubRef, listing: _Listing) -> list[str]:
    """Repository paths to fetch for ``ref`` (index shards are added after the index is local)."""
    path, files = ref.path, listing.files
    if path in files:
        out = [path]
        parent = str(PurePosixPath(path).parent) if "/" in path else ""
        sibling = _join(parent, "config.json")
        if path.endswith(_WEIGHT_SUFFIXES) and sibling in files:
            out.append(sibling)
        return out
    under = {f[len(path) + 1:] if path else f for f in files if not path or f.startswith(path + "/")}
    if not under:
        if not listing.remote:
            if is_offline():
                raise HubOfflineError(f"{ref}: {path!r} is not in the cached snapshot {listing.commit[:12]} of "
                                      f"{ref.repo_uri} and HF_HUB_OFFLINE=1 forbids downloading it")
            raise HubConnectionError(f"{ref}: cannot reach the Hub at {endpoint()} and {path!r} is not in the cached "
                                     f"snapshot {listing.commit[:12]} of {ref.repo_uri}")
        rev = ref.revision or "main"
        if not path:
            raise HubFileNotFoundError(f"{ref}: repository {ref.repo_uri} has no files at revision {rev}")
        raise HubFileNotFoundError(f"{ref}: no file or folder {path!r} in {ref.repo_uri} at revision {rev}")
    return [_join(path, n) for n in _folder_selection(path, under)]


def _index_shards(snapshot: Path, index_files: list[str], ref: HubRef) -> list[str]:
    out: list[str] = []
    for rel in index_files:
        parent = str(PurePosixPath(rel).parent) if "/" in rel else ""
        try:
            weight_map = json.loads((snapshot / rel).read_text(encoding="utf-8"))["weight_map"]
            names = sorted({str(v) for v in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise HubError(f"{ref}: {rel} is not a valid sharded-checkpoint index ({one_line(exc)})") from exc
        for n in names:
            if n.startswith("/") or ".." in PurePosixPath(n).parts:
                raise HubError(f"{ref}: {rel} names a shard outside its folder: {n!r}")
            out.append(_join(parent, n))
    return out


# ------------------------------------------------------------------------------------------ download
def _fetch(ref: HubRef, listing: _Listing, files: list[str], expect: str | None) -> Path:
    """Make ``files`` local in the snapshot of ``listing.commit``; return the snapshot folder."""
    snapshot = _storage(ref) / "snapshots" / listing.commit
    missing = [f for f in files if not (snapshot / f).is_file()]
    if not missing:
        return snapshot
    if not listing.remote:
        what = ", ".join(missing[:4]) + (f", ... ({len(missing) - 4} more)" if len(missing) > 4 else "")
        if is_offline():
            raise HubOfflineError(f"{ref}: {what} not in the local Hugging Face cache ({cache_dir()}) and "
                                  "HF_HUB_OFFLINE=1 forbids downloading")
        raise HubConnectionError(f"{ref}: cannot reach the Hub at {endpoint()} and {what} is not cached")
    hf, current = huggingface(), None
    try:
        if len(missing) <= _FEW_FILES:  # a HEAD + GET each; cheaper than listing a large repository's tree
            for current in missing:
                hf.hf_hub_download(ref.repo_id, current, repo_type=ref.repo_type, revision=listing.commit,
                                   endpoint=endpoint())
        else:  # parallel downloads
            hf.snapshot_download(ref.repo_id, repo_type=ref.repo_type, revision=listing.commit, endpoint=endpoint(),
                                 allow_patterns=[glob.escape(f) for f in missing])
    except Exception as exc:
        raise hub_error(exc, ref.with_(path=current) if current else ref, expect) from exc
    still = [f for f in missing if not (snapshot / f).is_file()]
    if still:
        raise HubFileNotFoundError(f"{ref}: {still[0]!r} was listed by the Hub but not downloaded")
    return snapshot


def resolve(uri: str, *, repo_type: str = "model") -> Path:
    """A local path (file or snapshot folder) for an ``hf://`` URI, downloading only what is needed.

    ``repo_type`` says what the caller expects (``"model"``: a checkpoint or a
    predictor; ``"dataset"``: a zoo). It does not change what the URI means
    (no prefix is a model repository, as in ``huggingface_hub``); it only
    improves the error message when the repository is not found.
    """
    ref = parse_uri(uri)
    listing = _listing(ref, repo_type)
    files = _selection(ref, listing)
    snapshot = _fetch(ref, listing, files, repo_type)
    index = [f for f in files if f.endswith(".index.json")]
    if index:
        _fetch(ref, listing, _index_shards(snapshot, index, ref), repo_type)
    return snapshot / ref.path if ref.path else snapshot


def resolve_local(uri: str, repo_type: str) -> Path:
    """:func:`resolve` as a :data:`wsl.io.uri.Resolver` (registered for ``hf://`` by :mod:`wsl.hub`)."""
    return resolve(uri, repo_type=repo_type)


# ----------------------------------------------------------------------------------------- lazy zoos
@dataclass(frozen=True)
class ZooFetcher:
    """``fetch(relative_path) -> local path`` for the files of a zoo in a cache snapshot.

    Files already in the snapshot are returned at once; others are downloaded
    from the zoo's repository at the snapshot's commit (so every file of one
    opened zoo comes from the same revision). Picklable (DataLoader workers).
    """

    cache: str
    repo_type: str
    repo_id: str
    commit: str
    folder: str  #: the zoo's folder inside the repository ("" for the root)

    @classmethod
    def from_root(cls, root: str | os.PathLike[str]) -> "ZooFetcher | None":
        """The fetcher of a folder inside ``<cache>/<type>s--ORG--NAME/snapshots/<commit>/``, else ``None``."""
        parts = Path(root).resolve().parts
        for i in range(len(parts) - 1, 2, -1):
            if parts[i - 1] == "snapshots" and is_commit(parts[i]):
                m = _CACHE_REPO.match(parts[i - 2])
                if m is None:
                    return None
                return cls(str(Path(*parts[:i - 2])), m.group(1), f"{m.group(2)}/{m.group(3)}", parts[i],
                           "/".join(parts[i + 1:]))
        return None

    def ref(self, rel: str = "") -> HubRef:
        return HubRef(self.repo_type, self.repo_id, self.commit, _join(self.folder, rel) if rel else self.folder)

    def local(self, rel: str) -> Path:
        repo = HubRef(self.repo_type, self.repo_id).cache_folder
        return Path(self.cache, repo, "snapshots", self.commit, *self.folder.split("/"), *rel.split("/"))

    def __call__(self, rel: str) -> Path:
        path = self.local(rel)
        if path.is_file():
            return path
        ref = self.ref(rel)
        if is_offline():
            raise HubOfflineError(f"{ref}: not in the local Hugging Face cache ({self.cache}) and HF_HUB_OFFLINE=1 "
                                  "forbids downloading it")
        try:
            got = huggingface().hf_hub_download(self.repo_id, ref.path, repo_type=self.repo_type, revision=self.commit,
                                        cache_dir=self.cache, endpoint=endpoint())
        except Exception as exc:
            raise hub_error(exc, ref) from exc
        return Path(got)


class HubZooStore(ZooStore):
    """A :class:`~wsl.zoo.store.ZooStore` whose shards are downloaded the first time they are touched."""

    def __init__(self, root: Path, verify: str, fetch: ZooFetcher) -> None:
        self.fetch = fetch
        fetch("zoo.json")
        fetch("metadata.jsonl")
        super().__init__(root, verify)

    def shard_path(self, k: int) -> Path:
        return self.fetch(self.card["shards"][k]["file"])


def cached_zoo_store(root: Path, verify: str) -> HubZooStore | None:
    """The lazy-fetching store of a zoo folder inside a Hugging Face cache snapshot, else None
    (registered with :func:`wsl.zoo.zoo.register_store_opener` by :mod:`wsl.hub`)."""
    fetch = ZooFetcher.from_root(root)
    return None if fetch is None else HubZooStore(root, verify, fetch)


def zoo_store(root: Path, verify: str) -> ZooStore:
    """The store of a zoo folder: lazy-fetching if it lies in a Hugging Face cache snapshot."""
    return cached_zoo_store(root, verify) or ZooStore(root, verify)
