"""Hugging Face Hub integration: ``hf://`` URIs, lazy zoos, pushing predictors and zoos with cards.

* :func:`resolve` turns ``hf://ORG/NAME[@REV][/PATH]`` (model repos) or
  ``hf://datasets/ORG/NAME[@REV][/PATH]`` (dataset repos: zoos) into a local
  path in the standard Hugging Face cache, downloading only what is needed;
  every path-taking ``wsl`` command accepts such URIs through
  :func:`wsl.cli.common.local_path`. ``wsl.load_zoo("hf://datasets/...")``
  reads ``zoo.json`` and ``metadata.jsonl`` only; each tensor shard is
  downloaded the first time a row in it is read (:class:`ZooFetcher`).
* Failures are typed (:mod:`wsl.hub.uri`): :class:`HubURIError`,
  :class:`HubRepoNotFoundError`, :class:`HubRevisionNotFoundError`,
  :class:`HubFileNotFoundError`, :class:`HubAccessError`,
  :class:`HubOfflineError`, :class:`HubConnectionError` -- all
  :class:`wsl.errors.HubError`.
* :func:`push_predictor` / :func:`push_zoo` (``wsl push``, ``wsl zoo push``)
  upload with generated cards (:mod:`wsl.hub.cards`); :class:`HubPredictor`
  gives predictors ``from_pretrained`` / ``save_pretrained`` / ``push_to_hub``.
* :mod:`wsl.hub.transformers_compat` builds Hub checkpoints of model types
  without a local port with the optional ``transformers`` extra.

``huggingface_hub`` is imported on first use, not with this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from wsl.hub.uri import (
    HubAccessError, HubConnectionError, HubFileNotFoundError, HubOfflineError, HubRef, HubRepoNotFoundError,
    HubRevisionNotFoundError, HubURIError, hub_error, is_hub_uri, parse_uri,
)

# Imported eagerly: the function ``resolve`` must shadow the submodule of the same name.
from wsl.hub.resolve import HubZooStore, ZooFetcher, resolve, zoo_store  # noqa: E402

_LAZY = {
    "push_predictor": "wsl.hub.push", "push_zoo": "wsl.hub.push", "HubPredictor": "wsl.hub.push",
    "predictor_card": "wsl.hub.cards", "zoo_card": "wsl.hub.cards",
    "load_hf_model": "wsl.hub.transformers_compat", "build_hf_model": "wsl.hub.transformers_compat",
    "transformers_available": "wsl.hub.transformers_compat",
}

__all__ = sorted([
    "HubAccessError", "HubConnectionError", "HubFileNotFoundError", "HubOfflineError", "HubRef",
    "HubRepoNotFoundError", "HubRevisionNotFoundError", "HubURIError", "HubZooStore", "ZooFetcher", "hub_error",
    "is_hub_uri", "parse_uri", "resolve", "zoo_store", *_LAZY,
])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsl.hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
