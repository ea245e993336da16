"""A collection of PEFT LoRA adapters and its views as stacks: the update ``dW``, and the factors ``A`` and ``B``.

One adapter folder, its config rules and the maths of ``dW = s B A`` are in
:mod:`wsl.subspace.lora_format`. A collection (:func:`open_adapters`: adapter
folders, ``hf://`` URIs, or parent folders holding them) must agree on the
base model (``base_model_name_or_path`` and ``revision``), the set of target
modules and every module's kind and ``dW`` shape, else
:class:`SpaceMismatchError` naming the adapter and the first difference.
Ranks may differ between adapters (``dW`` keeps its shape); the ``A`` and
``B`` views then refuse, because their shapes differ.

Views (each a streaming :class:`~wsl.subspace.stacks.Stack`, one target and
one block of rows at a time; ``dW`` rows are computed from slices of the
factors, never a whole ``dW``): ``"delta"`` (names ``<module>.delta``),
``"lora_A"`` and ``"lora_B"`` (``<module>.lora_A`` / ``<module>.lora_B``, in
their stored shapes). ``A`` and ``B`` alone are defined only up to
``B A = (B M)(M^-1 A)``; only ``dW`` is invariant, so read their spectra as
statements about the training recipe (shared inits, drift), not about the
update.

The public entry point is :mod:`wsl.subspace.adapters`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from wsl.errors import SpaceMismatchError, WslError
from wsl.io import local_path
from wsl.subspace.lora_format import CONFIG, Adapter
from wsl.subspace.stacks import Stack

__all__ = ["VIEWS", "AdapterCollection", "AdapterStack", "find_adapter_folders", "is_adapter_source",
           "open_adapters"]

VIEWS = ("delta", "lora_A", "lora_B")

def find_adapter_folders(item: str | os.PathLike[str]) -> list[Path]:
    """The adapter folders an item names: itself if it holds ``adapter_config.json``, else those below it."""
    p = Path(local_path(item))
    if (p / CONFIG).is_file():
        return [p]
    if p.is_dir():
        return sorted(q.parent for q in p.rglob(CONFIG))
    return []


def is_adapter_source(items: Sequence[str | os.PathLike[str]]) -> bool:
    """True when every item is (or holds) a PEFT adapter folder."""
    try:
        return bool(items) and all(find_adapter_folders(i) for i in items)
    except WslError:
        return False


class AdapterCollection:
    """N LoRA adapters of one base model with the same target modules and ``dW`` shapes (see the module docs)."""

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        if not adapters:
            raise WslError("no LoRA adapters given")
        self.adapters = list(adapters)
        ref = self.adapters[0]
        self.modules = list(ref.targets)
        for ad in self.adapters[1:]:
            self._check_same(ref, ad)
        self.base_model = ref.base_model[0]
        self.ids = [a.label for a in self.adapters]

    @staticmethod
    def _check_same(ref: Adapter, ad: Adapter) -> None:
        where = f"adapter {ad.label} ({ad.folder})"
        for field, mine, theirs in zip(("base_model_name_or_path", "revision"), ad.base_model, ref.base_model):
            if mine != theirs:
                raise SpaceMismatchError(f"{where}: {field} is {mine!r}, adapter {ref.label} has {theirs!r}")
        extra = [m for m in ad.targets if m not in ref.targets]
        missing = [m for m in ref.targets if m not in ad.targets]
        if extra or missing:
            what = f"has target module {extra[0]!r}" if extra else f"lacks target module {missing[0]!r}"
            raise SpaceMismatchError(f"{where} {what} that adapter {ref.label} "
                                     f"{'lacks' if extra else 'has'}")
        for m, t in ref.targets.items():
            u = ad.targets[m]
            if (u.kind, u.shape) != (t.kind, t.shape):
                raise SpaceMismatchError(f"{where}: module {m!r} is a {u.kind} update of shape {u.shape}, adapter "
                                         f"{ref.label} has a {t.kind} update of shape {t.shape}")

    def __len__(self) -> int:
        return len(self.adapters)

    def stack(self, view: str = "delta") -> "AdapterStack":
        """The ``delta``, ``lora_A`` or ``lora_B`` view as a streaming stack."""
        return AdapterStack(self, view)

    def describe(self) -> dict[str, Any]:
        """JSON facts: base model, targets (kind, shape, ranks and scales seen), ignored tensors."""
        targets = {}
        for m in self.modules:
            ts = [a.targets[m] for a in self.adapters]
            targets[m] = {"kind": ts[0].kind, "shape": list(ts[0].shape), "ranks": sorted({t.r for t in ts}),
                          "scales": sorted({t.scale for t in ts})}
        ignored = sorted({k for a in self.adapters for k in a.ignored})
        return {"n_adapters": len(self), "base_model": self.base_model, "targets": targets, "ignored_tensors": ignored}


class AdapterStack(Stack):
    """One view of a collection (``delta``, ``lora_A`` or ``lora_B``), read one target and row block at a time."""

    def __init__(self, collection: AdapterCollection, view: str = "delta") -> None:
        if view not in VIEWS:
            raise WslError(f"unknown adapter view {view!r}; choose one of {', '.join(VIEWS)}")
        self.collection, self.view = collection, view
        self.modules = {f"{m}.{view}": m for m in collection.modules}
        self.names = list(self.modules)
        self.ids = list(collection.ids)
        self.shapes = {}
        for name, m in self.modules.items():
            ref = collection.adapters[0].targets[m]
            shape = ref.shape if view == "delta" else ref.a_shape if view == "lora_A" else ref.b_shape
            if view != "delta":
                for ad in collection.adapters[1:]:
                    t = ad.targets[m]
                    other = t.a_shape if view == "lora_A" else t.b_shape
                    if other != shape:
                        raise SpaceMismatchError(f"adapter {ad.label}: {view} of module {m!r} has shape {other}, "
                                                 f"adapter {collection.ids[0]} has {shape} (ranks differ: analyse "
                                                 "the delta view, or adapters of one rank)")
            self.shapes[name] = tuple(shape)

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        m = self.modules[name]
        ads = self.collection.adapters
        if self.view == "delta":
            rows = [ads[i].delta_rows(m, r0, r1, dtype).reshape(-1) for i in models]
        else:
            rows = [ads[i].factor_rows(m, self.view[-1], r0, r1, dtype) for i in models]
        return torch.stack(rows)


def open_adapters(items: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
                  adapter_name: str | None = None, limit: int | None = None) -> AdapterCollection:
    """Open adapter folders (paths, ``hf://`` URIs, or parent folders holding them) as one checked collection."""
    items = [items] if isinstance(items, (str, os.PathLike)) else list(items)
    folders: list[Path] = []
    for item in items:
        found = find_adapter_folders(item)
        if not found:
            raise WslError(f"{item}: no LoRA adapter here (a folder with {CONFIG}, or a folder holding such folders)")
        folders.extend(found)
    if limit is not None:
        folders = folders[:int(limit)]
    names = [f.name for f in folders]
    labels = names if len(set(names)) == len(names) else [str(f) for f in folders]
    return AdapterCollection([Adapter(f, adapter_name, lab) for f, lab in zip(folders, labels)])

