"""``ZooWriter``: create or extend a ``"wsl.zoo/1"`` zoo, crash-safely.

Every :meth:`ZooWriter.append` writes new shards (temp file + rename), appends
the new rows to ``metadata.jsonl`` (fsynced) and then atomically replaces
``zoo.json``, the commit point. A kill at any moment leaves a zoo that opens
with only complete appends; :meth:`ZooWriter.open` resumes it, truncating
metadata lines the card does not count and overwriting unlisted shard files.
See :mod:`wsl.zoo.format` for the layout.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import nn

from wsl.errors import ZooFormatError
from wsl.zoo.format import (
    CARD_FILE, FORMAT, METADATA_FILE, SHARD_DIR, assign_split, default_splits, normalize_row, shard_file,
    validate_splits,
)
from wsl.zoo.store import arch_entry, file_sha256, read_card, read_metadata_lines, row_line, write_card

__all__ = ["ZooWriter"]


class ZooWriter:
    """Write a zoo at ``root`` (see module docstring).

    ``ZooWriter(root, name=..., dataset=..., recipe=...)`` creates the zoo (an
    empty directory or a new path); if an identical zoo (same name, dataset,
    recipe, splits, version, description) already exists there it is resumed,
    a different one raises :class:`ZooFormatError`. Use as a context manager or
    call :meth:`close`. One process may write a zoo at a time (``flock``).
    """

    def __init__(self, root: str | os.PathLike[str], *, name: str, dataset: Mapping[str, Any],
                 recipe: Mapping[str, Any], splits: Mapping[str, Any] | None = None, version: str = "1.0",
                 description: str = "", shard_max_bytes: int = 1 << 30,
                 extra: Mapping[str, Any] | None = None) -> None:
        from wsl.zoo.format import json_value

        self.root = Path(root)
        where = f"{self.root}: new zoo"
        if not isinstance(name, str) or not name.strip():
            raise ZooFormatError(f"{where}: name must be a non-empty string, got {name!r}")
        if not isinstance(version, str) or not isinstance(description, str):
            raise ZooFormatError(f"{where}: version and description must be strings")
        if not isinstance(shard_max_bytes, int) or shard_max_bytes < 1:
            raise ZooFormatError(f"{where}: shard_max_bytes must be a positive int, got {shard_max_bytes!r}")
        for field, value in (("dataset", dataset), ("recipe", recipe)):
            if not isinstance(value, Mapping):
                raise ZooFormatError(f"{where}: {field} must be a dict, got {type(value).__name__}")
        card: dict[str, Any] = {
            "format": FORMAT, "name": name, "version": version, "description": description,
            "dataset": json_value(dataset, f"{where}: dataset"), "recipe": json_value(recipe, f"{where}: recipe"),
            "architectures": {}, "splits": validate_splits(splits if splits is not None else default_splits(), where),
            "shards": [], "num_rows": 0, "num_models": 0,
            "metadata": {"file": METADATA_FILE, "sha256": hashlib.sha256(b"").hexdigest(), "num_rows": 0},
            "extra": json_value(extra or {}, f"{where}: extra"),
        }
        self.shard_max_bytes = shard_max_bytes
        self._lock_fd: int | None = None
        if (self.root / CARD_FILE).exists():
            existing = read_card(self.root)
            diff = [k for k in ("name", "dataset", "recipe", "splits", "version", "description")
                    if existing[k] != card[k]]
            if diff:
                raise ZooFormatError(f"{self.root}: a different zoo already exists here (fields {diff} differ); "
                                     "choose another directory, or use ZooWriter.open to append to it")
            self._resume()
            return
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise ZooFormatError(f"{self.root}: exists and is not an empty directory (nor a wsl zoo)")
        try:
            (self.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            (self.root / METADATA_FILE).write_bytes(b"")
        except OSError as exc:
            raise ZooFormatError(f"{self.root}: cannot create the zoo: {exc}") from exc
        self._lock()
        self.card = card
        self._model_split: dict[str, str] = {}
        self._meta_hash = hashlib.sha256()
        self._write_card()

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, shard_max_bytes: int = 1 << 30) -> "ZooWriter":
        """Reopen an existing zoo to append more rows (resume after a crash)."""
        self = cls.__new__(cls)
        self.root = Path(root)
        self.shard_max_bytes = shard_max_bytes
        self._lock_fd = None
        self._resume()
        return self

    def _resume(self) -> None:
        self.card = read_card(self.root)
        self._lock()
        lines = read_metadata_lines(self.root, self.card)
        keep = sum(len(line) for line in lines)
        path = self.root / METADATA_FILE
        try:
            if path.stat().st_size != keep:  # discard rows of an interrupted append
                with open(path, "r+b") as fh:
                    fh.truncate(keep)
                    os.fsync(fh.fileno())
        except OSError as exc:
            raise ZooFormatError(f"{path}: cannot truncate to {len(lines)} rows: {exc}") from exc
        self._meta_hash = hashlib.sha256(b"".join(lines))
        self._model_split = {}
        for i, line in enumerate(lines):
            try:
                row = json.loads(line)
                self._model_split.setdefault(row["model_id"], row["split"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ZooFormatError(f"{path}: row {i}: not a valid row ({exc})") from exc

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX
            return
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ZooFormatError(f"{self.root}: another process is writing this zoo") from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ queries
    @property
    def num_rows(self) -> int:
        """Rows committed so far."""
        return int(self.card["num_rows"])

    @property
    def architectures(self) -> dict[str, Any]:
        """A copy of the card's architectures."""
        return copy.deepcopy(self.card["architectures"])

    def completed_chunks(self) -> set[str]:
        """Resume tokens of all committed appends."""
        return {s["chunk"] for s in self.card["shards"] if s["chunk"] is not None}

    def model_ids(self) -> set[str]:
        """model_ids of all committed rows."""
        return set(self._model_split)

    # ------------------------------------------------------------------ writing
    def _check_open(self) -> None:
        if getattr(self, "card", None) is None:
            raise ZooFormatError(f"{self.root}: the writer is closed")

    def _write_card(self) -> None:
        write_card(self.root, self.card)

    def set_extra(self, **values: Any) -> None:
        """Set keys of the card's free-form ``extra`` object (committed immediately)."""
        from wsl.zoo.format import json_value

        self._check_open()
        self.card["extra"].update(json_value(values, f"{self.root}: extra"))
        self._write_card()

    def add_architecture(self, desc: Mapping[str, Any] | nn.Module) -> str:
        """Register an architecture (description or module); same description -> same id."""
        self._check_open()
        entry = arch_entry(desc, f"{self.root}: add_architecture")
        for aid, existing in self.card["architectures"].items():
            if existing["arch"] == entry["arch"]:
                return str(aid)
        k = len(self.card["architectures"])
        while f"a{k}" in self.card["architectures"]:
            k += 1
        aid = f"a{k}"
        self.card["architectures"][aid] = entry
        self._write_card()
        return aid

    def _check_stacked(self, arch_id: str, stacked: Any, n: int, where: str) -> dict[str, torch.Tensor]:
        if arch_id not in self.card["architectures"]:
            raise ZooFormatError(f"{where}: unknown architecture id {arch_id!r}; call add_architecture first "
                                 f"(known: {sorted(self.card['architectures'])})")
        if not isinstance(stacked, Mapping):
            raise ZooFormatError(f"{where}: stacked must be a dict of tensors, got {type(stacked).__name__}")
        want = self.card["architectures"][arch_id]["tensors"]
        missing, unexpected = sorted(set(want) - set(stacked)), sorted(set(stacked) - set(want))
        if missing or unexpected:
            raise ZooFormatError(f"{where}: tensors do not match architecture {arch_id}: missing {missing[:6]}, "
                                 f"unexpected {unexpected[:6]}")
        out = {}
        for name, shape in want.items():
            t = stacked[name]
            if not isinstance(t, torch.Tensor):
                raise ZooFormatError(f"{where}: tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
            if t.dim() != len(shape) + 1 or list(t.shape[1:]) != shape or t.shape[0] != n:
                raise ZooFormatError(f"{where}: tensor {name!r} has shape {list(t.shape)}, expected "
                                     f"[{n}, {', '.join(map(str, shape))}] ({n} rows)")
            if t.device.type == "meta" or t.layout != torch.strided:
                raise ZooFormatError(f"{where}: tensor {name!r} must be a dense tensor with data")
            out[name] = t.detach()
        return out

    def append(self, arch_id: str, stacked: Mapping[str, torch.Tensor], rows: Sequence[Mapping[str, Any]],
               chunk: str | None = None) -> list[int]:
        """Append ``len(rows)`` rows of architecture ``arch_id``; returns their global row numbers.

        ``stacked[name]`` has shape ``(len(rows), *shape)``. ``chunk`` is an
        opaque resume token recorded on the new shards (see
        :meth:`completed_chunks`); appending a completed chunk again is an error.
        """
        self._check_open()
        where = f"{self.root}: append"
        if chunk is not None and not isinstance(chunk, str):
            raise ZooFormatError(f"{where}: chunk must be a string or None, got {type(chunk).__name__}")
        if chunk is not None and chunk in self.completed_chunks():
            raise ZooFormatError(f"{where}: chunk {chunk!r} was already written (see completed_chunks())")
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or not rows:
            raise ZooFormatError(f"{where}: rows must be a non-empty list of dicts")
        n = len(rows)
        tensors = self._check_stacked(arch_id, stacked, n, where)
        start = self.card["num_rows"]
        splits = dict(self._model_split)
        norm = []
        for i, row in enumerate(rows):
            r = normalize_row(row, f"{where}: rows[{i}]")
            mid = r["model_id"]
            split = r.pop("split", None) or splits.get(mid) or assign_split(mid, self.card["splits"])
            if splits.setdefault(mid, split) != split:
                raise ZooFormatError(f"{where}: rows[{i}]: model {mid!r} is in split {splits[mid]!r}; "
                                     f"all its checkpoints must share it (got {split!r})")
            norm.append((r, split))
        per_row = sum(t[0].numel() * t.element_size() for t in tensors.values())
        rows_per_shard = max(1, self.shard_max_bytes // max(per_row, 1))
        new_shards, lines = [], []
        for lo in range(0, n, rows_per_shard):
            hi = min(n, lo + rows_per_shard)
            k = len(self.card["shards"]) + len(new_shards)
            new_shards.append(self._write_shard(arch_id, k, {name: t[lo:hi] for name, t in tensors.items()},
                                                hi - lo, chunk))
            for j in range(lo, hi):
                r, split = norm[j]
                full = {"row": start + j, "model_id": r.pop("model_id"), "arch": arch_id, "shard": k,
                        "index": j - lo, "epoch": r.pop("epoch"), "seed": r.pop("seed"), "split": split, **r}
                lines.append(row_line(full))
        self._commit(new_shards, lines, splits)
        return list(range(start, start + n))

    def _write_shard(self, arch_id: str, k: int, tensors: dict[str, torch.Tensor], n: int,
                     chunk: str | None) -> dict[str, Any]:
        from wsl.io import atomic_save_safetensors

        rel = shard_file(arch_id, k)
        path = self.root / rel
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ZooFormatError(f"{path.parent}: cannot create: {exc}") from exc
        atomic_save_safetensors(tensors, path, {"format": FORMAT, "arch": arch_id})
        return {"file": rel, "arch": arch_id, "num_rows": n, "bytes": path.stat().st_size,
                "sha256": file_sha256(path), "chunk": chunk}

    def _commit(self, shards: list[dict[str, Any]], lines: list[bytes], splits: dict[str, str]) -> None:
        path = self.root / METADATA_FILE
        old_size = path.stat().st_size
        try:
            with open(path, "ab") as fh:
                fh.write(b"".join(lines))
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            with contextlib.suppress(OSError), open(path, "r+b") as fh:
                fh.truncate(old_size)
            raise ZooFormatError(f"{path}: cannot append rows: {exc}") from exc
        card = copy.deepcopy(self.card)
        card["shards"].extend(shards)
        card["num_rows"] += len(lines)
        card["num_models"] = len(splits)
        card["metadata"]["num_rows"] = card["num_rows"]
        digest = self._meta_hash.copy()
        digest.update(b"".join(lines))
        card["metadata"]["sha256"] = digest.hexdigest()
        previous, self.card = self.card, card
        try:
            self._write_card()
        except BaseException:
            self.card = previous
            with contextlib.suppress(OSError), open(path, "r+b") as fh:
                fh.truncate(old_size)
            raise
        self._model_split = splits
        self._meta_hash = digest

    def close(self) -> None:
        """Release the zoo (further appends raise)."""
        self.card = None  # type: ignore[assignment]
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "ZooWriter":
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
