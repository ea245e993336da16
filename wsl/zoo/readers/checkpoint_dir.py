"""Reader for a plain directory of checkpoints::

    SRC/<stem>.safetensors | .pt | .pth | .bin | .ckpt    one state_dict per file
    SRC/metrics.csv[.gz]                                    optional, one row per file

``metrics.csv`` is keyed by file stem (or file name) in a column ``file`` or ``id``.
Reserved columns: ``arch`` (architecture reference of that row), ``model_id`` (default:
the stem), ``epoch``, ``seed`` (ints) and ``split`` (train/val/test, optional). Other
columns: ``hp.<name>``/``hparam.<name>``/``config.<name>`` go to ``hparams``; any other
column whose values are all numbers (or empty) becomes a metric (``test_acc``/``train_acc``
are read as ``test_accuracy``/``train_accuracy``); the remaining ones are hyperparameters.

The architecture of a file is, in order: its row's ``arch`` (a registered name or a
JSON description/file, never code), the ``arch`` option (``--arch REF``, any reference
:func:`wsl.io.resolve_arch` accepts), its safetensors ``wsl_arch`` metadata, or a
``config.json`` in SRC. It must be describable as ``wsl.arch/1`` JSON (the native zoo
stores descriptions, not code). Checkpoint names and shapes must match it exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsl.errors import ArchitectureError, CheckpointError, ZooFormatError
from wsl.zoo.readers import STANDARD_METRICS, Batch, Chunk, Source, Table, parse_scalar, read_table, select_models

FORMAT = "checkpoint-dir"
SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
BATCH_FILES = 256
RESERVED = ("file", "id", "arch", "model_id", "epoch", "seed", "split")
HPARAM_PREFIXES = ("hp.", "hparam.", "hparams.", "config.")
ALIASES = {"test_acc": "test_accuracy", "train_acc": "train_accuracy", "val_acc": "val_accuracy"}


def _stem(path: Path) -> str:
    return path.name[: -len(path.suffix)] if path.suffix else path.name


def _files(src: Path) -> dict[str, Path]:
    """Checkpoint files of ``src`` by stem, sorted by name."""
    found: dict[str, Path] = {}
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix.lower() in SUFFIXES:
            stem = _stem(p)
            if stem in found:
                raise ZooFormatError(f"{src}: two checkpoints share the stem {stem!r}: {found[stem].name}, {p.name}")
            found[stem] = p
    if not found:
        raise ZooFormatError(f"{src}: no checkpoint files ({', '.join('*' + s for s in SUFFIXES)})")
    return found


def _match_rows(table: Table, files: dict[str, Path]) -> dict[str, int]:
    """stem -> metrics row index; every row must name an existing checkpoint."""
    keycol = "file" if table.has("file") else "id" if table.has("id") else None
    if keycol is None:
        raise ZooFormatError(f"{table.path}: needs a 'file' or 'id' column naming each checkpoint (by stem)")
    by_name = {p.name: s for s, p in files.items()}
    out: dict[str, int] = {}
    for i, key in enumerate(table.col(keycol)):
        k = key.strip()
        stem = k if k in files else by_name.get(k) or by_name.get(Path(k).name)
        if stem is None:
            raise ZooFormatError(f"{table.where(i, keycol)}: no checkpoint {k!r} in {table.path.parent}")
        if stem in out:
            raise ZooFormatError(f"{table.where(i, keycol)}: checkpoint {k!r} already described by row {out[stem] + 1}")
        out[stem] = i
    return out


def _numeric_columns(table: Table) -> set[str]:
    """Columns whose non-empty values all parse as numbers."""
    out = set()
    for name, values in table.columns.items():
        parsed = [parse_scalar(v) for v in values]
        if all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in parsed):
            out.add(name)
    return out


def _describe(module: torch.nn.Module, where: str) -> dict[str, Any]:
    from wsl.archs import describe

    try:
        return describe(module)
    except ArchitectureError as exc:
        raise ZooFormatError(f"{where}: the architecture cannot be stored in a native zoo, which needs a "
                             f"wsl.arch/1 JSON description: {exc}") from exc


class _Archs:
    """Resolves and caches architecture references -> (description, expected shapes)."""

    def __init__(self, src: Path, option: Any) -> None:
        self.src, self.option = src, option
        self.cache: dict[str, tuple[dict[str, Any], dict[str, tuple[int, ...]]]] = {}

    def _entry(self, key: str, make: Any, where: str) -> str:
        if key not in self.cache:
            module = make()
            desc = _describe(module, where)
            shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
            self.cache[key] = (desc, shapes)
        return key

    def for_file(self, path: Path, row_ref: str | None, where: str) -> str:
        """Cache key of the architecture of ``path``."""
        from wsl.io import load_checkpoint_dir_config, read_checkpoint_metadata, resolve_arch

        if row_ref:
            ref = row_ref
            if ref.lower().endswith(".json") and (self.src / ref).is_file():
                ref = str(self.src / ref)

            def from_row() -> torch.nn.Module:
                try:
                    return resolve_arch(ref, allow_code=False)
                except ArchitectureError as exc:
                    raise ZooFormatError(f"{where}: {exc}") from exc

            return self._entry("row:" + ref, from_row, where)
        if self.option is not None:
            return self._entry("option", lambda: resolve_arch(self.option), "--arch")
        try:
            meta = read_checkpoint_metadata(path).get("wsl_arch")
        except CheckpointError as exc:
            raise ZooFormatError(str(exc)) from exc
        if meta is not None:
            return self._entry("meta:" + meta, lambda: resolve_arch(meta, allow_code=False),
                               f"{path} (wsl_arch metadata)")
        cfg = load_checkpoint_dir_config(path)
        if cfg is not None:
            where_cfg = str(self.src / "config.json")
            return self._entry("config.json", lambda: resolve_arch(cfg, allow_code=False), where_cfg)
        raise ZooFormatError(f"{path}: no architecture: pass --arch REF, add an 'arch' column to metrics.csv, "
                             "or save the file with 'wsl_arch' safetensors metadata")


def _row(stem: str, table: Table | None, i: int | None, numeric: set[str], path: Path, src: Path) -> dict[str, Any]:
    """Metadata row of one checkpoint."""
    row: dict[str, Any] = {"model_id": stem, "epoch": None, "seed": None, "hparams": {},
                           **{m: None for m in STANDARD_METRICS}}
    if table is not None and i is not None:
        for name, values in table.columns.items():
            if name in ("file", "id", "arch"):
                continue
            value = parse_scalar(values[i])
            if name == "model_id":
                row["model_id"] = values[i].strip() or stem
            elif name in ("epoch", "seed"):
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ZooFormatError(f"{table.where(i, name)}: expected an integer, got {values[i]!r}")
                row[name] = value
            elif name == "split":
                if value is not None:
                    row["split"] = str(value)
            elif name.startswith(HPARAM_PREFIXES):
                row["hparams"][name.split(".", 1)[1]] = value
            elif name in numeric:
                row[ALIASES.get(name, name)] = None if value is None else float(value)
            else:
                row["hparams"][name] = value
    row["source"] = path.relative_to(src).as_posix()
    return row


def open_source(src: Path, *, limit: int | None = None, arch: Any = None, device: str = "cpu") -> Source:
    """Validate a checkpoint directory and plan chunks of up to 256 files of one architecture."""
    files = _files(src)
    mpath = next((src / n for n in ("metrics.csv", "metrics.csv.gz") if (src / n).is_file()), None)
    table = read_table(mpath) if mpath is not None else None
    rows = _match_rows(table, files) if table is not None else {}
    numeric = _numeric_columns(table) if table is not None else set()
    ids = {s: (table.columns["model_id"][rows[s]].strip() or s) if table is not None and s in rows
           and table.has("model_id") else s for s in files}
    keep = select_models(list(ids.values()), limit)
    archs = _Archs(src, arch)
    groups: dict[str, list[str]] = {}
    first_key: dict[str, str] = {}  # description JSON -> cache key of its group
    for stem, path in files.items():
        if keep is not None and ids[stem] not in keep:
            continue
        i = rows.get(stem)
        ref = table.columns["arch"][i].strip() if table is not None and i is not None and table.has("arch") else None
        where = table.where(i, "arch") if table is not None and i is not None else str(path)
        key = archs.for_file(path, ref, where)
        text = json.dumps(archs.cache[key][0], sort_keys=True)
        first_key.setdefault(text, key)
        groups.setdefault(first_key[text], []).append(stem)
    chunks = []
    for key, stems in groups.items():
        tag = hashlib.sha256(json.dumps(archs.cache[key][0], sort_keys=True).encode()).hexdigest()[:12]
        for s in range(0, len(stems), BATCH_FILES):
            part = stems[s:s + BATCH_FILES]
            chunks.append(Chunk(f"{FORMAT}:{tag}:{part[0]}..{part[-1]}:{len(part)}", len(part),
                                _loader(src, files, part, archs.cache[key], table, rows, numeric, device)))
    notes = []
    missing = [s for ss in groups.values() for s in ss if s not in rows]
    if table is not None and missing:
        notes.append(f"{len(missing)} checkpoint(s) have no row in {mpath.name}: their metrics are null")
    descs = [d for d, _ in archs.cache.values()]
    shape = descs[0].get("input_shape") if len(descs) == 1 else None
    return Source(FORMAT, src, src.name or "checkpoints", {"name": None, "input_shape": shape},
                  {"source": "directory of checkpoints"}, f"Converted from the checkpoint directory {src.name}.",
                  chunks, len({ids[s] for ss in groups.values() for s in ss}), notes)


def _loader(src: Path, files: dict[str, Path], stems: list[str],
            arch: tuple[dict[str, Any], dict[str, tuple[int, ...]]], table: Table | None, rows: dict[str, int],
            numeric: set[str], device: str) -> Callable[[], Batch]:
    """A closure loading ``stems`` into a Batch."""

    def load() -> Batch:
        from wsl.io import check_state_dict, load_state_dict

        desc, shapes = arch
        sds = []
        for stem in stems:
            path = files[stem]
            try:
                sd = load_state_dict(path, device=device)
                check_state_dict(shapes, sd, where=str(path))
            except CheckpointError as exc:
                raise ZooFormatError(str(exc)) from exc
            sds.append(sd)
        first = sds[0]
        stacked = {k: torch.stack([sd[k].to(first[k].dtype) for sd in sds]) for k in shapes}
        meta = [_row(s, table, rows.get(s), numeric, files[s], src) for s in stems]
        return Batch(desc, stacked, meta)

    return load
