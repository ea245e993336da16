"""Hugging Face Hub integration: ``hf://`` URIs, lazy zoos, pushing predictors and zoos with cards.

* :func:`resolve` turns ``hf://ORG/NAME[@REV][/PATH]`` (model repos) or
  ``hf://datasets/ORG/NAME[@REV][/PATH]`` (dataset repos: zoos) into a local
  path in the standard Hugging Face cache, downloading only what is needed;
  importing this package registers the ``hf://`` scheme with
  :func:`wsl.io.register_scheme` (the top-level ``wsl`` package imports it), so
  every path-taking ``wsl`` function and command accepts such URIs through
  :func:`wsl.io.local_path`. It also registers :func:`cached_zoo_store` with
  :func:`wsl.zoo.zoo.register_store_opener`: ``wsl.load_zoo("hf://datasets/...")``
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
* :func:`load_hf_model` (:mod:`wsl.hub.transformers_compat`) loads Hub
  checkpoints; model types without a local port are built by
  :mod:`wsl.archs.hf` with the optional ``transformers`` extra.
* :func:`pretrained_space` (:mod:`wsl.hub.pretrained`), registered as
  ``WeightSpace.from_pretrained``: the weight space of a Hub checkpoint from
  ``config.json`` and its safetensors header only, traced on the meta device.
  Importing this package also registers :func:`wsl.archs.hf_inputs.hf_example_inputs`,
  so ``WeightSpace.from_module`` finds the inputs of ``transformers`` models.

``huggingface_hub`` is imported on first use, not with this package.
"""

from __future__ import annotations

import importlib
from typing import Any

from wsl.hub.uri import (
    PROTOCOL, HubAccessError, HubConnectionError, HubFileNotFoundError, HubOfflineError, HubRef, HubRepoNotFoundError,
    HubRevisionNotFoundError, HubURIError, hub_error, is_hub_uri, parse_uri,
)

# Imported eagerly: the function ``resolve`` must shadow the submodule of the same name.
from wsl.hub.resolve import HubZooStore, ZooFetcher, cached_zoo_store, resolve, resolve_local, zoo_store  # noqa: E402
from wsl.io.uri import register_scheme  # noqa: E402
from wsl.zoo.zoo import register_store_opener  # noqa: E402

from wsl.archs.hf_inputs import hf_example_inputs  # noqa: E402
from wsl.hub.pretrained import load_space  # noqa: E402
from wsl.space.trace import register_input_guesser  # noqa: E402
from wsl.space.weightspace import register_pretrained_loader  # noqa: E402

register_scheme(PROTOCOL, resolve_local)
register_store_opener(cached_zoo_store)
register_pretrained_loader(load_space)  # WeightSpace.from_pretrained("hf://...")
register_input_guesser(hf_example_inputs)  # WeightSpace.from_module(transformers model): inputs from its config

_LAZY = {
    "push_predictor": "wsl.hub.push", "push_zoo": "wsl.hub.push", "HubPredictor": "wsl.hub.push",
    "predictor_card": "wsl.hub.cards", "zoo_card": "wsl.hub.cards",
    "load_hf_model": "wsl.hub.transformers_compat", "build_hf_model": "wsl.archs.hf",
    "pretrained_space": "wsl.hub.pretrained", "checkpoint_header": "wsl.hub.pretrained",
    "transformers_available": "wsl.archs.hf",
}

__all__ = sorted([
    "HubAccessError", "HubConnectionError", "HubFileNotFoundError", "HubOfflineError", "HubRef",
    "HubRepoNotFoundError", "HubRevisionNotFoundError", "HubURIError", "HubZooStore", "ZooFetcher", "cached_zoo_store",
    "hub_error", "is_hub_uri", "parse_uri", "resolve", "zoo_store", *_LAZY,
])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wsl.hub' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
