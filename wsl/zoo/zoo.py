"""Reading zoos: :func:`load_zoo`, :class:`Zoo` (a view of rows) and :class:`ZooModel` (one row).

Opening a zoo reads only ``zoo.json`` and ``metadata.jsonl``. A shard is
opened (``safetensors.safe_open``, memory-mapped) the first time one of its
rows is read; its header is then validated against the card and, unless
``verify="none"``, its SHA-256 checked once per process. Views made by
:meth:`Zoo.filter`, :meth:`Zoo.split`, :meth:`Zoo.latest`, slicing, ... share
the open shards and caches of the zoo they come from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsl.errors import ZooFormatError
from wsl.io.uri import local_path
from wsl.zoo.format import SPLIT_NAMES
from wsl.zoo.store import ZooStore

__all__ = ["Zoo", "ZooIndexError", "ZooModel", "load_zoo", "open_store", "register_store_opener"]

VERIFY_MODES = ("lazy", "eager", "none")


class ZooIndexError(ZooFormatError, IndexError):
    """A row index outside the zoo (also an ``IndexError`` so iteration works)."""


class ZooModel:
    """One row of a zoo: metadata plus lazily read weights."""

    def __init__(self, store: ZooStore, row: int) -> None:
        self._store = store
        self.row = row

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the row's metadata."""
        return copy.deepcopy(self._store.rows[self.row])

    @property
    def model_id(self) -> str:
        return str(self._store.rows[self.row]["model_id"])

    @property
    def arch_id(self) -> str:
        return str(self._store.rows[self.row]["arch"])

    @property
    def arch(self) -> dict[str, Any]:
        """The row's ``"wsl.arch/1"`` description."""
        return copy.deepcopy(self._store.card["architectures"][self.arch_id]["arch"])

    def state_dict(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The row's tensors, in the architecture's state_dict order."""
        stacked = self._store.gather(np.array([self.row]), device)
        return {name: t[0] for name, t in stacked.items()}

    def module(self, device: torch.device | str | None = None) -> nn.Module:
        """The architecture built from its description with the row's weights (eval mode)."""
        module = self._store.build(self.arch_id)
        try:
            module.load_state_dict(self.state_dict(), strict=True)
        except RuntimeError as exc:
            raise ZooFormatError(f"{self._store.root}: row {self.row}: weights do not load into "
                                 f"architecture {self.arch_id}: {exc}") from exc
        module.eval()
        return module.to(device) if device is not None else module

    @property
    def space(self) -> Any:
        """The architecture's :class:`~wsl.space.WeightSpace` (cached per architecture)."""
        return self._store.space(self.arch_id)

    def __repr__(self) -> str:
        r = self._store.rows[self.row]
        return (f"ZooModel(row={self.row}, model_id={r['model_id']!r}, arch={r['arch']!r}, epoch={r['epoch']}, "
                f"split={r['split']!r}, test_accuracy={r['test_accuracy']})")


class Zoo:
    """A sequence of zoo rows (all of them, or a view: filtered, split, sliced)."""

    def __init__(self, store: ZooStore, rows: np.ndarray | None = None) -> None:
        self._store = store
        self._rows = np.arange(len(store.rows), dtype=np.int64) if rows is None else rows.astype(np.int64)

    # ------------------------------------------------------------------- basics
    @property
    def store(self) -> ZooStore:
        """The on-disk store this view reads, shared by every view of one opened zoo (card, rows, shards,
        per-architecture modules and weight spaces). Read from it; do not modify it."""
        return self._store

    @property
    def root(self) -> Path:
        return self._store.root

    @property
    def card(self) -> dict[str, Any]:
        """A copy of the card (``zoo.json``)."""
        return copy.deepcopy(self._store.card)

    @property
    def name(self) -> str:
        return str(self._store.card["name"])

    @property
    def architectures(self) -> dict[str, Any]:
        return copy.deepcopy(self._store.card["architectures"])

    @property
    def row_ids(self) -> np.ndarray:
        """Global row numbers of this view's rows."""
        return self._rows.copy()

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Copies of the metadata rows of this view."""
        return [copy.deepcopy(self._store.rows[i]) for i in self._rows.tolist()]

    def iter_metadata(self) -> Iterator[dict[str, Any]]:
        """The metadata rows of this view without copying (shared: do not modify them)."""
        rows = self._store.rows
        for r in self._rows.tolist():
            yield rows[r]

    def __len__(self) -> int:
        return len(self._rows)

    def _view(self, rows: np.ndarray) -> "Zoo":
        return Zoo(self._store, rows)

    def _positions(self, indices: Any) -> np.ndarray:
        """View positions -> global rows, validated."""
        if indices is None:
            return self._rows
        if isinstance(indices, slice):
            return self._rows[indices]
        if isinstance(indices, torch.Tensor):
            indices = indices.detach().cpu().numpy()
        arr = np.asarray(indices)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.dtype == bool and arr.shape == (len(self),):
            return self._rows[arr]
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ZooFormatError(f"{self.root}: indices must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64).reshape(-1)
        bad = arr[(arr < -len(self)) | (arr >= len(self))]
        if bad.size:
            raise ZooIndexError(f"{self.root}: index {int(bad[0])} out of range for a zoo view of {len(self)} rows")
        return self._rows[arr]

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, (int, np.integer)) and not isinstance(i, bool):
            return ZooModel(self._store, int(self._positions(int(i))[0]))
        return self._view(self._positions(i))

    def __iter__(self) -> Iterator[ZooModel]:
        for r in self._rows.tolist():
            yield ZooModel(self._store, r)

    def __repr__(self) -> str:
        return f"Zoo({self.name!r}, {len(self)} rows, {len(self.model_ids())} models, root={str(self.root)!r})"

    # ------------------------------------------------------------------ queries
    def _field(self, name: str) -> None:
        if name in self._store.fields or not self._store.rows:
            return
        if name.startswith("hparams."):
            return
        raise ZooFormatError(f"{self.root}: no row has a field {name!r}; fields: {sorted(self._store.fields)}")

    def _get(self, row: Mapping[str, Any], name: str) -> Any:
        if name.startswith("hparams.") and name not in row:
            return row["hparams"].get(name[len("hparams."):])
        return row.get(name)

    def filter(self, fn: Callable[[dict[str, Any]], bool] | None = None, **equals: Any) -> "Zoo":
        """Rows whose metadata satisfies ``fn(row)`` and ``row[key] == value`` for each keyword."""
        for key in equals:
            self._field(key)
        keep = []
        rows = self._store.rows
        for r in self._rows.tolist():
            row = rows[r]
            if all(row.get(k) == v for k, v in equals.items()) and (fn is None or fn(row)):
                keep.append(r)
        return self._view(np.array(keep, dtype=np.int64))

    def split(self, name: str) -> "Zoo":
        """The rows of split ``name`` ("train", "val" or "test")."""
        if name not in SPLIT_NAMES:
            raise ZooFormatError(f"{self.root}: unknown split {name!r}; valid: {list(SPLIT_NAMES)}")
        return self.filter(split=name)

    def latest(self) -> "Zoo":
        """The last-epoch row of each model (ties and null epochs: the later row), in row order."""
        best: dict[str, tuple[float, int]] = {}
        rows = self._store.rows
        for r in self._rows.tolist():
            e = rows[r]["epoch"]
            key = (float("-inf") if e is None else float(e), r)
            mid = rows[r]["model_id"]
            if mid not in best or key >= best[mid]:
                best[mid] = key
        return self._view(np.array(sorted(r for _, r in best.values()), dtype=np.int64))

    def model_ids(self) -> list[str]:
        """Distinct model_ids of this view, in order of first appearance."""
        rows = self._store.rows
        return list(dict.fromkeys(rows[r]["model_id"] for r in self._rows.tolist()))

    def column(self, name: str) -> np.ndarray:
        """One metadata field over the rows (``"hparams.x"`` reads a hyperparameter).

        Numbers give float64 (null -> NaN; int64 if all ints), bools a bool
        array, anything else an object array.
        """
        self._field(name)
        rows = self._store.rows
        values = [self._get(rows[r], name) for r in self._rows.tolist()]
        if values and all(isinstance(v, bool) for v in values):
            return np.array(values, dtype=bool)
        if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            if values and all(type(v) is int for v in values):
                return np.array(values, dtype=np.int64)
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out

    # --------------------------------------------------------------------- data
    def stacked(self, indices: Any = None, *, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Tensors of the selected rows (default: all) stacked along dim 0, in selection order."""
        return self._store.gather(self._positions(indices), device)

    def _arch_groups(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        archs = np.array([self._store.rows[r]["arch"] for r in rows.tolist()], dtype=object)
        return {str(a): np.flatnonzero(archs == a) for a in dict.fromkeys(archs.tolist())}

    def features(self, indices: Any = None, *, device: torch.device | str | None = None) -> Any:
        """:class:`wsl.graph.WeightSpaceFeatures` of the selected rows (one architecture)."""
        from wsl.graph import WeightSpaceFeatures

        rows = self._positions(indices)
        groups = self._arch_groups(rows)
        if len(groups) > 1:
            raise ZooFormatError(f"{self.root}: features() needs rows of one architecture, got {sorted(groups)}; "
                                 "filter(arch=...) first")
        aid = next(iter(groups)) if groups else None
        if aid is None:
            raise ZooFormatError(f"{self.root}: no rows selected")
        return WeightSpaceFeatures.from_state_dicts(self._store.space(aid), self._store.gather(rows, device))

    def graphs(self, indices: Any = None, *, device: torch.device | str | None = None) -> Any:
        """Parameter graphs of the selected rows as one PyG ``Batch``, in selection order."""
        from wsl.graph import build, collate, to_graphs

        rows = self._positions(indices)
        if len(rows) == 0:
            raise ZooFormatError(f"{self.root}: no rows selected")
        groups = self._arch_groups(rows)
        if len(groups) == 1:
            aid = next(iter(groups))
            return build(self._store.space(aid), self._store.gather(rows, device))
        graphs: list[Any] = [None] * len(rows)
        for aid, pos in groups.items():
            batch = build(self._store.space(aid), self._store.gather(rows[pos], device))
            for p, g in zip(pos.tolist(), to_graphs(batch)):
                graphs[p] = g
        return collate(graphs)

    def verify(self) -> None:
        """Validate and checksum every shard now (raises ZooFormatError on the first bad one)."""
        from tqdm.auto import tqdm

        for k in tqdm(range(len(self._store.card["shards"])), desc="verify shards", unit="shard",
                      disable=len(self._store.card["shards"]) < 2):
            self._store.checked.discard(k)
            self._store.check_shard(k, verify="eager")


StoreOpener = Callable[[Path, str], "ZooStore | None"]
"""``opener(root, verify)``: the store of a zoo folder it recognises, else None."""

_OPENERS: list[StoreOpener] = []


def register_store_opener(opener: StoreOpener) -> None:
    """Let ``opener`` open the zoo folders it recognises (:func:`load_zoo` asks each, newest first).

    :mod:`wsl.hub` registers one for zoos in the Hugging Face cache: their shards
    are downloaded the first time a row in them is read.
    """
    if not callable(opener):
        raise ZooFormatError(f"register_store_opener: expected a callable, got {type(opener).__name__}")
    if opener not in _OPENERS:
        _OPENERS.insert(0, opener)


def open_store(root: Path, verify: str) -> ZooStore:
    """The store of the zoo folder ``root``: a registered opener's, else a plain :class:`ZooStore`."""
    for opener in _OPENERS:
        store = opener(root, verify)
        if store is not None:
            return store
    return ZooStore(root, verify)


def load_zoo(path: str | os.PathLike[str], verify: str = "lazy") -> Zoo:
    """Open a zoo directory (or ``hf://`` dataset) without reading any tensor.

    ``verify``: ``"lazy"`` checks each shard's SHA-256 the first time it is
    read, ``"eager"`` checks every shard now, ``"none"`` skips checksums (the
    shard headers are still validated).
    """
    if verify not in VERIFY_MODES:
        raise ZooFormatError(f"load_zoo: verify must be one of {list(VERIFY_MODES)}, got {verify!r}")
    root = Path(local_path(path, repo_type="dataset"))
    if not root.is_dir():
        raise ZooFormatError(f"{root}: not a zoo directory ({'no such path' if not root.exists() else 'not a directory'})")
    zoo = Zoo(open_store(root, verify))
    if verify == "eager":
        zoo.verify()
    return zoo

