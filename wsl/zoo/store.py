"""On-disk access to a ``"wsl.zoo/1"`` zoo shared by the reader and the writer.

Card and metadata I/O (:func:`read_card`, :func:`read_metadata_lines`,
:func:`write_card`, :func:`row_line`, :func:`file_sha256`), card entries of
architectures (:func:`arch_entry`) and
:class:`ZooStore`, the state every view of one opened zoo shares: the parsed
card and rows, per-process safetensors handles, which shards were validated,
and per-architecture caches. Shards are validated (header against the card,
size, SHA-256 unless ``verify="none"``) when first touched, never at open.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsl.errors import CheckpointError, WslError, ZooFormatError
from wsl.zoo.format import CARD_FILE, FORMAT, METADATA_FILE, validate_card, validate_row

__all__ = ["ZooStore", "arch_entry", "file_sha256", "read_card", "read_metadata_lines", "row_line", "write_card"]


def file_sha256(path: str | os.PathLike[str], limit: int | None = None) -> str:
    """SHA-256 hex digest of a file (or of its first ``limit`` bytes)."""
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            if left is not None:
                left -= len(block)
    return h.hexdigest()


def read_card(root: Path, validate: Callable[[Any, str], dict[str, Any]] = validate_card) -> dict[str, Any]:
    """Parse ``root/zoo.json`` and check it with ``validate`` (default: the native card's rules)."""
    path = root / CARD_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ZooFormatError(f"{root}: not a wsl zoo ({CARD_FILE} is missing)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooFormatError(f"{path}: cannot read: {exc}") from exc
    try:
        card = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ZooFormatError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    return validate(card, str(path))


def read_metadata_lines(root: Path, card: Mapping[str, Any], verify: bool = True) -> list[bytes]:
    """The first ``num_rows`` lines of ``metadata.jsonl`` (newlines kept), checksum-verified if ``verify``."""
    path = root / METADATA_FILE
    n = card["num_rows"]
    try:
        with open(path, "rb") as fh:
            lines = [fh.readline() for _ in range(n)] if n else []
    except FileNotFoundError:
        raise ZooFormatError(f"{path}: missing (the card lists {n} rows)") from None
    except OSError as exc:
        raise ZooFormatError(f"{path}: cannot read: {exc}") from exc
    if n and not lines[-1].endswith(b"\n"):
        got = sum(1 for line in lines if line.endswith(b"\n"))
        raise ZooFormatError(f"{path}: has {got} complete rows but {CARD_FILE} field 'num_rows' is {n}")
    digest = hashlib.sha256(b"".join(lines)).hexdigest()
    if verify and digest != card["metadata"]["sha256"]:
        raise ZooFormatError(f"{path}: sha256 of the first {n} rows is {digest[:12]}..., but {CARD_FILE} "
                             f"field 'metadata.sha256' says {card['metadata']['sha256'][:12]}... (corrupt or edited)")
    return lines


def write_card(root: Path, card: Mapping[str, Any]) -> None:
    """Atomically (re)write ``root/zoo.json``."""
    from wsl.io import atomic_open

    text = json.dumps(card, indent=1, allow_nan=False) + "\n"
    with atomic_open(root / CARD_FILE, "w", encoding="utf-8") as fh:
        fh.write(text)


def row_line(row: Mapping[str, Any]) -> bytes:
    """One ``metadata.jsonl`` line (compact JSON + newline)."""
    return (json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n").encode()


def arch_entry(desc: Mapping[str, Any] | nn.Module, where: str = "architecture") -> dict[str, Any]:
    """Card entry ``{"arch", "num_parameters", "tensors"}`` for a description or module."""
    from wsl.archs.describe import build, describe, validate

    if isinstance(desc, nn.Module):
        desc = describe(desc)
    if not isinstance(desc, Mapping):
        raise ZooFormatError(f"{where}: expected a 'wsl.arch/1' description dict, got {type(desc).__name__}")
    canonical = validate(dict(desc))
    try:
        with torch.device("meta"):
            module = build(canonical)
    except WslError:
        raise
    except Exception as exc:  # a builtin that cannot be built on the meta device
        raise ZooFormatError(f"{where}: cannot build the architecture: {type(exc).__name__}: {exc}") from exc
    stored = getattr(module, "wsl_arch", None)
    if isinstance(stored, dict) and stored != canonical:  # builtin factories record every argument
        canonical = validate(copy.deepcopy(stored))
    tensors = {k: [int(d) for d in v.shape] for k, v in module.state_dict().items()}
    if not tensors:
        raise ZooFormatError(f"{where}: the architecture has no tensors")
    params = sum(p.numel() for p in module.parameters())
    return {"arch": canonical, "num_parameters": int(params), "tensors": tensors}


class ZooStore:
    """State shared by all views of one opened zoo: card, rows, shard handles, caches."""

    def __init__(self, root: Path, verify: str) -> None:
        self.root = root
        self.verify = verify
        self.card = self.read_card(root)
        self.card_path = str(root / CARD_FILE)
        lines = read_metadata_lines(root, self.card, verify != "none")
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

    def read_card(self, root: Path) -> dict[str, Any]:
        """The validated card (a subclass reading another zoo format overrides this)."""
        return read_card(root)

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
            h = self.handle(int(shards[g[0]]))
            slices = {name: h.get_slice(name) for name in layout}
            loc = self.index_col[rows[g]]
            lo, hi = int(loc.min()), int(loc.max()) + 1
            if hi - lo == len(g) and np.all(np.diff(loc) == 1) and np.all(np.diff(g) == 1):
                for name, sl in slices.items():  # a run of rows in order: copy straight in
                    out[name][int(g[0]):int(g[0]) + len(g)].copy_(sl[lo:hi])
                continue
            if hi - lo <= 2 * len(loc):  # dense enough: read the span once, then pick rows
                pick, pos = torch.from_numpy(loc - lo), torch.from_numpy(g)
                for name, sl in slices.items():
                    out[name].index_copy_(0, pos, sl[lo:hi].to(dtypes[name]).index_select(0, pick))
                continue
            srt = np.argsort(loc, kind="stable")
            loc_s, pos_s = loc[srt], g[srt]
            cuts = np.flatnonzero(np.diff(loc_s) != 1) + 1  # runs of consecutive rows
            for a_i, b_i in zip([0, *cuts.tolist()], [*cuts.tolist(), len(loc_s)]):
                a, b = int(loc_s[a_i]), int(loc_s[b_i - 1]) + 1
                pos = torch.from_numpy(pos_s[a_i:b_i])
                for name, sl in slices.items():
                    out[name].index_copy_(0, pos, sl[a:b].to(dtypes[name]))
        return {name: t.to(device) for name, t in out.items()} if device is not None else out


def _promote(dtypes: list[torch.dtype]) -> torch.dtype:
    out = dtypes[0]
    for d in dtypes[1:]:
        out = torch.promote_types(out, d)
    return out
