"""LoRA adapter collections in a subspace analysis: the public entry point.

A collection of PEFT LoRA adapters (folders with ``adapter_config.json`` and
``adapter_model.safetensors``; paths, ``hf://`` URIs, or parent folders of
them) is analysed through three streaming stacks per target module:

* ``<module>.delta``: the update ``dW = s B A`` the adapter adds to the base
  weight (``s = alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA; see
  :mod:`wsl.subspace.lora_format` for the exact PEFT conventions);
* ``<module>.lora_A`` and ``<module>.lora_B``: the factors as stored.

Pieces: :mod:`.lora_format` (one adapter folder), :mod:`.adapter_collection`
(checked collections and their views), :mod:`.adapter_nulls` (the factors at
PEFT's initialisation), :mod:`.adapter_confounders` (shared-``A`` and
duplicate detection). :func:`adapter_source` gives what
:func:`wsl.subspace.sources.open_source` needs to return a Source.

**Nulls.** ``dW`` has no init null: PEFT's default init sets ``B = 0``, so
every adapter's ``dW`` is 0 at init, a degenerate stack. The ``A`` view has
one: ``A`` drawn independently per adapter from PEFT's init distribution
(kaiming-uniform, bound ``1/sqrt(fan_in)``, by default). The most important
control for a published collection is not a null spectrum but
:func:`adapter_confounders`: adapters trained from one shared ``A`` make any
"shared subspace" of ``dW`` trivial.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from wsl.errors import SpaceMismatchError, WslError
from wsl.subspace.adapter_collection import (VIEWS, AdapterCollection, AdapterStack, find_adapter_folders,
                                             is_adapter_source, open_adapters)
from wsl.subspace.adapter_confounders import ConfounderReport, ConfounderWarning, adapter_confounders
from wsl.subspace.adapter_nulls import LoraInitStack
from wsl.subspace.lora_format import Adapter, LoraTarget

__all__ = ["DELTA_INIT_REASON", "VIEWS", "Adapter", "AdapterCollection", "AdapterStack", "ConfounderReport",
           "ConfounderWarning", "LoraInitStack", "LoraTarget", "adapter_confounders", "adapter_source",
           "find_adapter_folders", "is_adapter_source", "open_adapters"]

DELTA_INIT_REASON = ("LoRA initialises B = 0, so dW = s B A = 0 for every adapter at init (a degenerate null); the "
                     "A-at-init null of the lora_A view is in info['init_views'], and adapter_confounders() tests "
                     "for a shared A init")


def adapter_source(items: Sequence[str | os.PathLike[str]], *, limit: int | None = None, init_seed: int = 0,
                   adapter_name: str | None = None) -> dict[str, Any]:
    """The parts of a Source for an adapter collection: ``label``, ``stack`` (``dW``), ``init_reason``, ``info``.

    ``info`` carries the collection's facts (:meth:`AdapterCollection.describe`),
    ``collection``, ``views`` (the ``lora_A`` / ``lora_B`` stacks; None with
    ``views_reason`` when ranks differ) and ``init_views`` (those views at
    PEFT's init; None with ``init_views_reason`` when the init is not random).
    """
    col = open_adapters(items, adapter_name=adapter_name, limit=limit)
    if len(col) < 2:
        raise WslError(f"a subspace analysis needs at least 2 adapters, got {len(col)}")
    label = str(items[0]) if len(items) == 1 else f"{len(col)} LoRA adapters"
    info: dict[str, Any] = {"kind": "lora_adapters", **col.describe(), "collection": col, "views": None,
                            "init_views": None}
    try:
        info["views"] = {v: AdapterStack(col, v) for v in ("lora_A", "lora_B")}
    except SpaceMismatchError as exc:
        info["views_reason"] = str(exc)
    if info["views"] is not None:
        try:
            info["init_views"] = {v: LoraInitStack(col, v, seed=init_seed) for v in ("lora_A", "lora_B")}
            info["init"] = "lora_A / lora_B drawn independently per adapter from PEFT's init distribution"
        except WslError as exc:
            info["init_views_reason"] = str(exc)
    return {"label": label, "stack": AdapterStack(col, "delta"), "init_reason": DELTA_INIT_REASON, "info": info}
