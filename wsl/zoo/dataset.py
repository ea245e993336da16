"""``ZooDataset``: a zoo as a :class:`torch.utils.data.Dataset` for meta-model training.

Three views of a row:

* ``"state_dict"`` -- item ``(state_dict, y)``; :func:`collate_state_dicts`
  stacks a batch into ``({name: (B, *shape)}, y (B, ...))``.
* ``"graph"`` -- item a :class:`wsl.graph.ParameterGraph` with ``y`` (shape
  ``(1, ...)``) and ``row`` attributes; :func:`collate_graphs` batches graphs of
  any architectures into a PyG ``Batch`` (``batch.y`` is ``(B, ...)``).
* ``"features"`` -- item ``(state_dict, y)`` like ``"state_dict"``; the
  dataset's :meth:`ZooDataset.collate` turns a batch into
  ``(WeightSpaceFeatures, y)`` (all rows must share one tensor layout).

Pass ``collate_fn=dataset.collate`` to the ``DataLoader`` (it picks the right
function for the view). Shards are opened lazily in each worker process, so
``num_workers > 0`` works with both ``fork`` and ``spawn``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wsl.errors import ZooFormatError
from wsl.zoo.zoo import Zoo

__all__ = ["VIEWS", "ZooDataset", "collate_graphs", "collate_state_dicts"]

VIEWS = ("state_dict", "graph", "features")
StateDict = dict[str, torch.Tensor]


def collate_state_dicts(batch: Sequence[tuple[Mapping[str, torch.Tensor], torch.Tensor]]) -> tuple[StateDict, torch.Tensor]:
    """``[(state_dict, y), ...]`` -> ``(stacked state_dict, stacked y)``."""
    if not batch:
        raise ZooFormatError("collate_state_dicts: empty batch")
    names = list(batch[0][0])
    for i, (sd, _) in enumerate(batch):
        if list(sd) != names:
            raise ZooFormatError(f"collate_state_dicts: item {i} has different tensors than item 0; "
                                 "batch rows of one architecture (or use view='graph')")
    try:
        stacked = {n: torch.stack([sd[n] for sd, _ in batch]) for n in names}
    except RuntimeError as exc:
        raise ZooFormatError(f"collate_state_dicts: tensors of different shapes in one batch: {exc}") from exc
    return stacked, torch.stack([y for _, y in batch])


def collate_graphs(batch: Sequence[Any]) -> Any:
    """Parameter graphs -> one PyG ``Batch`` (``wsl.graph.collate``)."""
    from wsl.graph import collate

    return collate(list(batch))


class ZooDataset(Dataset):  # type: ignore[type-arg]
    """Rows of a :class:`~wsl.zoo.Zoo` as training examples.

    ``target`` is a numeric metadata field (``"test_accuracy"``, ``"hparams.lr"``,
    ...), a list of them (``y`` is then a vector), or ``None`` (``y`` is an
    empty tensor). Rows whose target is null raise :class:`ZooFormatError`:
    filter them out first. ``transform(state_dict) -> state_dict`` runs on each
    row before the view is built (e.g. permutation augmentation).
    """

    def __init__(self, zoo: Zoo, target: str | Sequence[str] | None = "test_accuracy", view: str = "state_dict",
                 transform: Callable[[StateDict], StateDict] | None = None, *,
                 target_dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(zoo, Zoo):
            raise ZooFormatError(f"ZooDataset: expected a Zoo (wsl.load_zoo(path)), got {type(zoo).__name__}")
        if view not in VIEWS:
            raise ZooFormatError(f"ZooDataset: unknown view {view!r}; valid: {list(VIEWS)}")
        if transform is not None and not callable(transform):
            raise ZooFormatError(f"ZooDataset: transform must be callable, got {type(transform).__name__}")
        self.zoo = zoo
        self.view = view
        self.transform = transform
        self.target = target
        names = [] if target is None else [target] if isinstance(target, str) else list(target)
        cols = []
        for name in names:
            col = zoo.column(name)
            if col.dtype == object or col.dtype == bool:
                raise ZooFormatError(f"{zoo.root}: target {name!r} is not numeric")
            col = col.astype(np.float64)
            bad = np.flatnonzero(np.isnan(col))
            if bad.size:
                row = int(zoo.row_ids[bad[0]])
                raise ZooFormatError(f"{zoo.root}: row {row}: target {name!r} is null ({bad.size} rows); "
                                     f"drop them with zoo.filter(lambda r: r[{name!r}] is not None)")
            cols.append(col)
        if isinstance(target, str):
            self.targets = torch.tensor(cols[0], dtype=target_dtype)
        else:
            y = np.stack(cols, axis=1) if cols else np.zeros((len(zoo), 0))
            self.targets = torch.tensor(y, dtype=target_dtype)
        self._arch = [str(a) for a in zoo.column("arch")] if len(zoo) else []
        if view == "features" and len(set(self._arch)) > 1:
            layouts = {str(zoo.card["architectures"][a]["tensors"]) for a in set(self._arch)}
            if len(layouts) > 1:
                raise ZooFormatError(f"{zoo.root}: view 'features' needs one architecture, got "
                                     f"{sorted(set(self._arch))}; filter(arch=...) first or use view='graph'")

    def __len__(self) -> int:
        return len(self.zoo)

    def _state_dict(self, i: int) -> StateDict:
        sd = self.zoo[i].state_dict()
        if self.transform is not None:
            sd = self.transform(sd)
            if not isinstance(sd, Mapping):
                raise ZooFormatError(f"ZooDataset: transform returned {type(sd).__name__}, expected a state_dict")
        return dict(sd)

    def __getitem__(self, i: int) -> Any:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise ZooFormatError(f"ZooDataset: index must be an int, got {type(i).__name__}")
        sd = self._state_dict(int(i))
        y = self.targets[int(i)]
        if self.view != "graph":
            return sd, y
        from wsl.graph import build_one

        model = self.zoo[int(i)]
        g = build_one(model.space, sd)
        g.y = y.unsqueeze(0)
        g.row = torch.tensor([model.row])
        return g

    def collate(self, batch: Sequence[Any]) -> Any:
        """Collate a list of items of this dataset's view (pass as ``collate_fn``)."""
        if self.view == "graph":
            return collate_graphs(batch)
        stacked, y = collate_state_dicts(batch)
        if self.view == "state_dict":
            return stacked, y
        from wsl.graph import WeightSpaceFeatures

        space = self.zoo[0].space
        return WeightSpaceFeatures.from_state_dicts(space, stacked), y
