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
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsl.errors import CheckpointError, WslError, ZooFormatError
from wsl.zoo.format import CARD_FILE, FORMAT, METADATA_FILE, SPLIT_NAMES, validate_row
from wsl.zoo.writer import file_sha256, read_card, read_metadata_lines

__all__ = ["Zoo", "ZooIndexError", "ZooModel", "load_zoo"]

VERIFY_MODES = ("lazy", "eager", "none")


class ZooIndexError(ZooFormatError, IndexError):
    """A row index outside the zoo (also an ``IndexError`` so iteration works)."""


class _Store:
    """State shared by all views of one opened zoo: card, rows, shard handles, caches."""

    def __init__(self, root: Path, verify: str) -> None:
        self.root = root
        self.verify = verify
        self.card = read_card(root)
        self.card_path = str(root / CARD_FILE)
        lines = read_metadata_lines(root, self.card) if verify != "none" else _lines(root, self.card)
        where = str(root / METADATA_FILE)
        rows: list[dict[str, Any]] = []
        slot = [0] * len(self.card["shards"])
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ZooFormatError(f"{where}: row {i}: not valid JSON ({exc})") from exc
            validate_row(row, i, self.card, where)
            if row["index"] != slot[row["shard"]]:
                raise ZooFormatError(f"{where}: row {i}: field 'index' is {row['index']}, expected "
                                     f"{slot[row['shard']]} (rows of a shard are stored in row order)")
            slot[row["shard"]] += 1
            rows.append(row)
        for k, s in enumerate(self.card["shards"]):
            if slot[k] != s["num_rows"]:
                raise ZooFormatError(f"{where}: {slot[k]} rows point to shard {k} but {CARD_FILE} field "
                                     f"'shards[{k}].num_rows' is {s['num_rows']}")
        split_of: dict[str, str] = {}
        for i, row in enumerate(rows):
            if split_of.setdefault(row["model_id"], row["split"]) != row["split"]:
                raise ZooFormatError(f"{where}: row {i}: model {row['model_id']!r} is in split "
                                     f"{split_of[row['model_id']]!r} in an earlier row but {row['split']!r} here")
        if len(split_of) != self.card["num_models"]:
            raise ZooFormatError(f"{self.card_path}: field 'num_models' is {self.card['num_models']} but "
                                 f"{METADATA_FILE} has {len(split_of)} distinct model_id")
        self.rows = rows
        self.shard_col = np.array([r["shard"] for r in rows], dtype=np.int64)
        self.index_col = np.array([r["index"] for r in rows], dtype=np.int64)
        self.fields: set[str] = set().union(*(r.keys() for r in rows)) if rows else set()
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self.checked: set[int] = set()
        self.dtypes: dict[int, dict[str, torch.dtype]] = {}
        self.arch_ok: set[str] = set()
        self.spaces: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["spaces"] = {}
        return state

    # ----------------------------------------------------------------- shards
    def shard_path(self, k: int) -> Path:
        return self.root / self.card["shards"][k]["file"]

    def check_shard(self, k: int, verify: str | None = None) -> None:
        """Validate shard ``k`` (header vs card, size, checksum) once."""
        if k in self.checked:
            return
        from wsl.io import read_safetensors_header
        from wsl.io.safetensors_check import SAFETENSORS_DTYPES

        entry = self.card["shards"][k]
        path = self.shard_path(k)
        where = f"{path} (shard {k})"
        if not path.is_file():
            raise ZooFormatError(f"{where}: missing ({CARD_FILE} lists it)")
        try:
            header = read_safetensors_header(path)
        except CheckpointError as exc:
            raise ZooFormatError(f"{where}: corrupt or truncated header: {exc}") from exc
        meta = header.metadata
        if meta.get("format") != FORMAT or meta.get("arch") != entry["arch"]:
            raise ZooFormatError(f"{where}: __metadata__ is {meta}, expected "
                                 f"{{'format': {FORMAT!r}, 'arch': {entry['arch']!r}}}")
        want = self.card["architectures"][entry["arch"]]["tensors"]
        if set(header.tensors) != set(want):
            raise ZooFormatError(f"{where}: tensors {sorted(set(header.tensors) ^ set(want))[:6]} differ from "
                                 f"{CARD_FILE} field 'architectures.{entry['arch']}.tensors'")
        for name, shape in want.items():
            got = list(header.tensors[name][1])
            if got != [entry["num_rows"], *shape]:
                raise ZooFormatError(f"{where}: tensor {name!r} has shape {got}, the card says "
                                     f"[{entry['num_rows']}, {', '.join(map(str, shape))}] (num_rows, *shape)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise ZooFormatError(f"{where}: file is {size} bytes, {CARD_FILE} field 'shards[{k}].bytes' "
                                 f"says {entry['bytes']} (truncated or modified)")
        if (verify or self.verify) != "none":
            digest = file_sha256(path)
            if digest != entry["sha256"]:
                raise ZooFormatError(f"{where}: sha256 mismatch: file {digest[:12]}..., {CARD_FILE} field "
                                     f"'shards[{k}].sha256' {entry['sha256'][:12]}... (corrupt shard)")
        self.dtypes[k] = {n: SAFETENSORS_DTYPES[i[0]][0] for n, i in header.tensors.items()}
        self.checked.add(k)

    def handle(self, k: int) -> Any:
        """The (per-process) open safetensors handle of shard ``k``."""
        if self._pid != os.getpid():  # forked worker: do not share handles with the parent
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(k)
        if h is None:
            self.check_shard(k)
            from safetensors import safe_open

            try:
                h = safe_open(str(self.shard_path(k)), framework="pt")
            except Exception as exc:
                raise ZooFormatError(f"{self.shard_path(k)} (shard {k}): cannot open: {exc}") from exc
            self._handles[k] = h
        return h

    # ------------------------------------------------------------ architectures
    def tensors(self, aid: str) -> dict[str, list[int]]:
        """Card tensor shapes of ``aid``, checked once against the built architecture."""
        entry = self.card["architectures"][aid]
        if aid not in self.arch_ok:
            from wsl.zoo.writer import arch_entry

            where = f"{self.card_path}: field 'architectures.{aid}'"
            try:
                built = arch_entry(entry["arch"], where)
            except WslError as exc:
                raise ZooFormatError(f"{where}: {exc}") from exc
            if list(built["tensors"].items()) != list(entry["tensors"].items()):
                raise ZooFormatError(f"{where}.tensors: does not match the state_dict of the described architecture")
            self.arch_ok.add(aid)
        return entry["tensors"]  # type: ignore[no-any-return]

    def build(self, aid: str) -> nn.Module:
        from wsl.archs.describe import build

        self.tensors(aid)
        try:
            return build(self.card["architectures"][aid]["arch"])
        except WslError as exc:
            raise ZooFormatError(f"{self.card_path}: field 'architectures.{aid}.arch': {exc}") from exc

    def space(self, aid: str) -> Any:
        if aid not in self.spaces:
            from wsl.space import WeightSpace

            self.spaces[aid] = WeightSpace.from_module(self.build(aid))
        return self.spaces[aid]

    # -------------------------------------------------------------------- data
    def gather(self, rows: np.ndarray, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Stack the tensors of global ``rows`` (in that order); arches must share tensor layouts."""
        if len(rows) == 0:
            raise ZooFormatError(f"{self.root}: no rows selected")
        shards = self.shard_col[rows]
        archs = sorted({self.card["shards"][k]["arch"] for k in np.unique(shards).tolist()})
        layout = self.tensors(archs[0])
        for aid in archs[1:]:
            if list(self.tensors(aid).items()) != list(layout.items()):
                raise ZooFormatError(f"{self.root}: rows of architectures {archs[0]} and {aid} have different "
                                     "tensor names/shapes and cannot be stacked; select one architecture")
        order = np.argsort(shards, kind="stable")
        bounds = np.flatnonzero(np.diff(shards[order])) + 1
        groups = np.split(order, bounds)
        for k in np.unique(shards).tolist():
            self.handle(k)
        dtypes = {n: _promote([self.dtypes[int(shards[g[0]])][n] for g in groups]) for n in layout}
        n = len(rows)
        if len(groups) == 1:
            k, loc = int(shards[0]), self.index_col[rows]
            if loc[0] + n - 1 == loc[-1] and np.all(np.diff(loc) == 1):
                h = self.handle(k)
                lo = int(loc[0])
                return {name: h.get_slice(name)[lo:lo + n].to(device=device, dtype=dtypes[name])
                        for name in layout}
        out = {name: torch.empty((n, *shape), dtype=dtypes[name]) for name, shape in layout.items()}
        for g in groups:
            k = int(shards[g[0]])
            h = self.handle(k)
            loc = self.index_col[rows[g]]
            srt = np.argsort(loc, kind="stable")
            loc_s, pos_s = loc[srt], g[srt]
            cuts = np.flatnonzero(np.diff(loc_s) != 1) + 1
            for lo_i, hi_i in zip([0, *cuts.tolist()], [*cuts.tolist(), len(loc_s)]):
                a, b = int(loc_s[lo_i]), int(loc_s[hi_i - 1]) + 1
                pos = torch.from_numpy(pos_s[lo_i:hi_i])
                for name in layout:
                    block = h.get_slice(name)[a:b]
                    if len(pos) == b - a:
                        out[name].index_copy_(0, pos, block.to(dtypes[name]))
                    else:  # repeated rows within a run
                        out[name][pos] = block[torch.from_numpy(loc_s[lo_i:hi_i] - a)].to(dtypes[name])
        return {name: t.to(device) for name, t in out.items()} if device is not None else out


def _promote(dtypes: list[torch.dtype]) -> torch.dtype:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out


def _lines(root: Path, card: Mapping[str, Any]) -> list[bytes]:
    """First ``num_rows`` metadata lines without checksum verification."""
    path = root / METADATA_FILE
    try:
        with open(path, "rb") as fh:
            lines = [fh.readline() for _ in range(card["num_rows"])]
    except OSError as exc:
        raise ZooFormatError(f"{path}: cannot read: {exc}") from exc
    if lines and not lines[-1].endswith(b"\n"):
        raise ZooFormatError(f"{path}: fewer rows than {CARD_FILE} field 'num_rows' ({card['num_rows']})")
    return lines


class ZooModel:
    """One row of a zoo: metadata plus lazily read weights."""

    def __init__(self, store: _Store, row: int) -> None:
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

    def __init__(self, store: _Store, rows: np.ndarray | None = None) -> None:
        self._store = store
        self._rows = np.arange(len(store.rows), dtype=np.int64) if rows is None else rows.astype(np.int64)

    # ------------------------------------------------------------------- basics
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


def load_zoo(path: str | os.PathLike[str], verify: str = "lazy") -> Zoo:
    """Open a zoo directory (or ``hf://`` dataset) without reading any tensor.

    ``verify``: ``"lazy"`` checks each shard's SHA-256 the first time it is
    read, ``"eager"`` checks every shard now, ``"none"`` skips checksums (the
    shard headers are still validated).
    """
    if verify not in VERIFY_MODES:
        raise ZooFormatError(f"load_zoo: verify must be one of {list(VERIFY_MODES)}, got {verify!r}")
    p = str(path)
    if p.startswith("hf://"):
        from wsl.cli.common import local_path

        p = local_path(p, repo_type="dataset")
    root = Path(p)
    if not root.is_dir():
        raise ZooFormatError(f"{root}: not a zoo directory ({'no such path' if not root.exists() else 'not a directory'})")
    zoo = Zoo(_Store(root, verify))
    if verify == "eager":
        zoo.verify()
    return zoo

