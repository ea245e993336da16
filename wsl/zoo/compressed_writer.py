"""Write a ``"wsl.zoo-compressed/1"`` zoo from a zoo and one basis per architecture.

The bases are given (fitting them is :func:`wsl.subspace.compress`'s job);
this module projects every row, ``c = dirs^T (theta - mean)`` per tensor (in
float64, stored as float32), and writes the layout of
:mod:`wsl.zoo.compressed`. Everything is written into a temporary folder
beside ``out`` that is renamed to ``out`` only when complete, so an
interrupted or failed write leaves no zoo at ``out``.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsl.errors import ZooFormatError
from wsl.zoo.compressed import COMPRESSED_FORMAT, basis_file
from wsl.zoo.format import CARD_FILE, METADATA_FILE, json_value
from wsl.zoo.store import file_sha256, read_metadata_lines, write_card

__all__ = ["write_compressed_zoo"]

Bases = Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]]
"""``{arch_id: {tensor name: (mean (P,), dirs (P, k))}}``."""

BLOCK_BYTES = 64 << 20
"""Rows are read and projected in blocks of about this many bytes of weights."""


def _check_bases(zoo: Any, bases: Bases) -> None:
    card = zoo.store.card
    if set(bases) != set(card["architectures"]):
        raise ZooFormatError(f"{zoo.root}: bases are given for architectures {sorted(bases)}, the zoo has "
                             f"{sorted(card['architectures'])}")
    for aid, per in bases.items():
        shapes = card["architectures"][aid]["tensors"]
        for name, (mean, dirs) in per.items():
            if name not in shapes:
                raise ZooFormatError(f"{zoo.root}: basis of {aid} has tensor {name!r}, the architecture has not")
            p = math.prod(shapes[name])
            if tuple(mean.shape) != (p,) or dirs.dim() != 2 or dirs.shape[0] != p or dirs.shape[1] > p:
                raise ZooFormatError(f"{zoo.root}: basis of {aid}, tensor {name!r}: mean {list(mean.shape)} and dirs "
                                     f"{list(dirs.shape)} do not fit {p} entries")


def _shard_rows(zoo: Any, k: int) -> np.ndarray:
    rows = np.flatnonzero(zoo.store.shard_col == k)
    return rows[np.argsort(zoo.store.index_col[rows], kind="stable")]


def _project_shard(zoo: Any, k: int, basis: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                   dtypes: dict[str, str]) -> dict[str, torch.Tensor]:
    """Coefficients (projected tensors) and as-is tensors of the rows of shard ``k``."""
    rows = _shard_rows(zoo, k)
    aid = zoo.store.card["shards"][k]["arch"]
    shapes = zoo.store.card["architectures"][aid]["tensors"]
    row_bytes = 8 * sum(math.prod(s) for s in shapes.values())
    step = max(1, BLOCK_BYTES // max(row_bytes, 1))
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in shapes}
    for lo in range(0, len(rows), step):
        stacked = zoo.store.gather(rows[lo:lo + step])
        for name, t in stacked.items():
            if name not in basis:
                parts[name].append(t)
                continue
            if not t.is_floating_point():
                raise ZooFormatError(f"{zoo.root}: tensor {name!r} of {aid} is {t.dtype}; only floating tensors "
                                     "can be projected")
            dt = str(t.dtype).replace("torch.", "")
            if dtypes.setdefault(name, dt) != dt:
                raise ZooFormatError(f"{zoo.root}: tensor {name!r} of {aid} is {dt} in shard {k} but "
                                     f"{dtypes[name]} elsewhere")
            mean, dirs = basis[name]
            x = t.reshape(t.shape[0], -1).to(torch.float64) - mean.to(torch.float64)
            parts[name].append((x @ dirs.to(torch.float64)).to(torch.float32))
    return {name: torch.cat(ts) for name, ts in parts.items()}


def _target(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ZooFormatError(f"{out}: exists and is not an empty directory; choose a new output path")
    return out


def write_compressed_zoo(out: str | os.PathLike[str], zoo: Any, bases: Bases, *, fit: Mapping[str, Any],
                         progress: bool = True) -> Path:
    """Write every row of ``zoo`` (a whole opened zoo) as bases plus coefficients at ``out``; returns ``out``.

    ``bases`` holds, per architecture, the projected tensors' ``(mean, dirs)``
    (float32 on disk); tensors it leaves out are stored as they are. ``fit``
    is recorded under ``compression.fit``. ``out`` must not exist or be empty.
    """
    from tqdm.auto import tqdm

    from wsl.io import atomic_save_safetensors

    target = _target(Path(out))
    if len(zoo) != len(zoo.store.rows) or not np.array_equal(zoo.row_ids, np.arange(len(zoo.store.rows))):
        raise ZooFormatError(f"{zoo.root}: compress a whole zoo, not a view of {len(zoo)} of its "
                             f"{len(zoo.store.rows)} rows")
    _check_bases(zoo, bases)
    src = zoo.store.card
    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.compress-", dir=parent))
    except OSError as exc:
        raise ZooFormatError(f"{target}: cannot create the output: {exc}") from exc
    try:
        card = copy.deepcopy(src)
        card["format"] = COMPRESSED_FORMAT
        dtypes: dict[str, dict[str, str]] = {aid: {} for aid in bases}
        meta = {"format": COMPRESSED_FORMAT}
        for k, entry in enumerate(tqdm(src["shards"], desc="compress shards", unit="shard", disable=not progress)):
            aid = entry["arch"]
            tensors = _project_shard(zoo, k, bases[aid], dtypes[aid])
            path = tmp / entry["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_safetensors(tensors, path, {**meta, "arch": aid})
            card["shards"][k] = {**entry, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        entries = {}
        for aid, per in bases.items():
            rel = basis_file(aid)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            tensors = {}
            for name, (mean, dirs) in per.items():
                tensors[f"{name}.mean"] = mean.detach().to(torch.float32).contiguous().cpu()
                tensors[f"{name}.dirs"] = dirs.detach().to(torch.float32).contiguous().cpu()
            atomic_save_safetensors(tensors, tmp / rel, {**meta, "arch": aid})
            ranks = {name: {"rank": int(dirs.shape[1]), "dtype": dtypes[aid].get(name, "float32")}
                     for name, (_, dirs) in per.items()}
            entries[aid] = {"file": rel, "bytes": (tmp / rel).stat().st_size, "sha256": file_sha256(tmp / rel),
                            "tensors": ranks}
        card["compression"] = {"method": "subspace",
                               "source": {"format": src["format"], "name": src["name"],
                                          "weight_bytes": int(sum(s["bytes"] for s in src["shards"]))},
                               "fit": json_value(dict(fit), f"{target}: fit"), "bases": entries}
        lines = read_metadata_lines(zoo.store.root, src)
        with open(tmp / METADATA_FILE, "wb") as fh:
            fh.write(b"".join(lines))
            fh.flush()
            os.fsync(fh.fileno())
        write_card(tmp, card)  # the card is written last; the rename below publishes the zoo
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if not (target / CARD_FILE).is_file():  # pragma: no cover - defensive
        raise ZooFormatError(f"{target}: the compressed zoo was not published")
    return target
