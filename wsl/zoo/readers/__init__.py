"""Readers that convert published model-zoo layouts into the native ``wsl.zoo/1`` format.

Formats (``wsl zoo convert --from FORMAT``):

* ``small-cnn-zoo`` -- the Small CNN Zoo of Unterthiner et al. (2020):
  ``weights.npy`` + ``layout.csv`` + ``metrics.csv[.gz]``;
* ``schuerholt`` -- the model zoos of Schuerholt et al. (2022): Ray Tune trial
  directories with ``params.json``, ``result.json`` and ``checkpoint_<N>/checkpoints``;
* ``checkpoint-dir`` -- a plain directory of ``*.safetensors``/``*.pt`` files with an
  optional ``metrics.csv`` keyed by file stem.

Each reader module exposes ``open_source(src, *, limit, **options) -> Source``. It
validates everything it can without reading tensors and returns a list of
:class:`Chunk` objects; :func:`convert` loads each chunk (lazily) and appends it to a
:class:`wsl.zoo.ZooWriter`. Chunk tokens make an interrupted conversion resumable:
re-running the same command skips chunks the output zoo already holds.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib
import inspect
import io
import math
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsl.errors import ConfigError, ZooFormatError

__all__ = [
    "FORMATS", "Batch", "Chunk", "ConvertReport", "Source", "Table", "convert", "open_source",
    "parse_scalar", "read_table", "register_convert", "resolve_format",
]

FORMATS: dict[str, tuple[str, str]] = {
    "small-cnn-zoo": ("wsl.zoo.readers.small_cnn_zoo",
                      "Small CNN Zoo (Unterthiner et al. 2020): weights.npy, layout.csv, metrics.csv[.gz]"),
    "schuerholt": ("wsl.zoo.readers.schuerholt",
                   "model zoos of Schuerholt et al. 2022: Ray Tune trial dirs with params.json, "
                   "result.json, checkpoint_<N>/checkpoints"),
    "checkpoint-dir": ("wsl.zoo.readers.checkpoint_dir",
                       "a directory of *.safetensors / *.pt files plus an optional metrics.csv"),
}
"""Canonical format name -> (reader module, one-line description)."""

ALIASES = {
    "small_cnn_zoo": "small-cnn-zoo", "smallcnnzoo": "small-cnn-zoo", "unterthiner": "small-cnn-zoo",
    "schurholt": "schuerholt", "schürholt": "schuerholt", "modelzoos": "schuerholt",
    "model-zoos": "schuerholt", "checkpoint_dir": "checkpoint-dir", "checkpoints": "checkpoint-dir",
    "ckpt-dir": "checkpoint-dir", "dir": "checkpoint-dir",
}
STANDARD_METRICS = ("train_accuracy", "test_accuracy", "train_loss", "test_loss")


@dataclass
class Batch:
    """Stacked tensors of rows that share one architecture."""

    arch: dict[str, Any]
    stacked: dict[str, torch.Tensor]
    rows: list[dict[str, Any]]


@dataclass
class Chunk:
    """A resumable unit of work: ``load()`` reads its tensors only when called."""

    token: str
    num_rows: int
    load: Callable[[], Batch]


@dataclass
class Source:
    """A validated source zoo, ready to be converted chunk by chunk."""

    format: str
    path: Path
    name: str
    dataset: dict[str, Any]
    recipe: dict[str, Any]
    description: str
    chunks: list[Chunk]
    num_models: int
    notes: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows a loader dropped while reading (reason -> count), reported by :func:`convert`."""

    @property
    def num_rows(self) -> int:
        """Rows (checkpoints) the conversion writes."""
        return sum(c.num_rows for c in self.chunks)


@dataclass
class ConvertReport:
    """What :func:`convert` did."""

    dst: Path
    rows_written: int
    rows_already_present: int
    num_models: int
    architectures: list[str]
    seconds: float
    notes: list[str]

    def summary(self) -> str:
        """One human-readable paragraph."""
        rate = self.rows_written / self.seconds if self.seconds > 0 else float("inf")
        text = (f"wrote {self.rows_written:,} rows ({self.num_models:,} models, "
                f"{len(self.architectures)} architecture(s)) to {self.dst} in {self.seconds:.1f} s "
                f"({rate:,.0f} rows/s)")
        if self.rows_already_present:
            text += f"; {self.rows_already_present:,} rows were already converted (resumed)"
        return "\n".join([text, *self.notes])


# --------------------------------------------------------------------------- tables
@dataclass
class Table:
    """A CSV file read column-wise (values kept as strings)."""

    path: Path
    columns: dict[str, list[str]]
    num_rows: int

    def has(self, name: str) -> bool:
        """Whether the column exists."""
        return name in self.columns

    def col(self, name: str) -> list[str]:
        """The values of a required column; ZooFormatError naming the file if it is missing."""
        if name not in self.columns:
            raise ZooFormatError(f"{self.path}: missing column {name!r} (columns: {', '.join(self.columns)})")
        return self.columns[name]

    def where(self, row: int, column: str | None = None) -> str:
        """``file row N (column C)`` for error messages (row 1 = first data row)."""
        return f"{self.path} row {row + 1}" + (f" (column {column!r})" if column else "")


def read_table(path: Path) -> Table:
    """Read a ``.csv`` or ``.csv.gz`` file with a header line into a :class:`Table`.

    An unnamed leading column (a pandas index) is dropped. Ragged rows raise
    :class:`ZooFormatError` naming the file and row.
    """
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise ZooFormatError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ZooFormatError(f"{path}: cannot read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ZooFormatError(f"{path}: not valid UTF-8 text (byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ZooFormatError(f"{path}: empty file (expected a header line)") from None
    except csv.Error as exc:
        raise ZooFormatError(f"{path}: malformed CSV header: {exc}") from exc
    header = [h.strip() for h in header]
    keep = [i for i, h in enumerate(header) if h and not (i == 0 and h.startswith("Unnamed"))]
    names = [header[i] for i in keep]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ZooFormatError(f"{path}: duplicate column(s) {', '.join(dupes)}")
    columns: dict[str, list[str]] = {n: [] for n in names}
    lists = [columns[n] for n in names]
    n = 0
    try:
        for values in reader:
            if not values:
                continue
            if len(values) != len(header):
                raise ZooFormatError(f"{path} row {n + 1}: {len(values)} fields, header has {len(header)}")
            for lst, i in zip(lists, keep):
                lst.append(sys.intern(values[i]))
            n += 1
    except csv.Error as exc:
        raise ZooFormatError(f"{path} row {n + 1}: malformed CSV: {exc}") from exc
    return Table(path, columns, n)


_INT = re.compile(r"^[+-]?\d+$")
_NULLS = {"", "nan", "none", "null", "na", "n/a"}


@functools.lru_cache(maxsize=1 << 16)
def parse_scalar(text: str) -> None | bool | int | float | str:
    """``"3"`` -> 3, ``"0.5"`` -> 0.5, ``"True"`` -> True, ``""``/``"nan"`` -> None, else the string."""
    s = text.strip()
    low = s.lower()
    if low in _NULLS:
        return None
    if low in ("true", "false"):
        return low == "true"
    if _INT.match(s):
        return int(s)
    try:
        value = float(s)
    except ValueError:
        return s
    return value if math.isfinite(value) else None


def as_metric(value: Any, where: str) -> float | None:
    """A finite float or None; ZooFormatError naming ``where`` for non-numbers."""
    if value is None or (isinstance(value, str) and value.strip().lower() in _NULLS):
        return None
    if isinstance(value, bool):
        raise ZooFormatError(f"{where}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ZooFormatError(f"{where}: expected a number, got {value!r}") from None
    return out if math.isfinite(out) else None


def select_models(model_ids: list[str], limit: int | None) -> set[str] | None:
    """The first ``limit`` distinct model ids in order of appearance (None = all)."""
    if limit is None:
        return None
    if limit < 1:
        raise ConfigError(f"--limit must be a positive number of models, got {limit}")
    chosen: dict[str, None] = {}
    for m in model_ids:
        if m not in chosen:
            if len(chosen) >= limit:
                break
            chosen[m] = None
    return set(chosen)


# --------------------------------------------------------------------------- registry
def resolve_format(fmt: str) -> str:
    """Canonical format name for ``fmt`` (aliases accepted); ConfigError if unknown."""
    key = fmt.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ConfigError(f"unknown zoo format {fmt!r}; valid: {', '.join(FORMATS)}")
    return key


def open_source(fmt: str, src: str | Path, *, limit: int | None = None, **options: Any) -> Source:
    """Validate ``src`` in format ``fmt`` and plan its conversion (no tensors are read)."""
    key = resolve_format(fmt)
    module = importlib.import_module(FORMATS[key][0])
    opener = module.open_source
    accepted = [p for p in inspect.signature(opener).parameters if p not in ("src", "limit")]
    for opt in options:
        if opt not in accepted:
            raise ConfigError(f"option {opt!r} does not apply to format {key!r} (its options: "
                              f"{', '.join(accepted) or 'none'})")
    path = Path(src).expanduser()
    if not path.is_dir():
        raise ZooFormatError(f"{path}: not a directory" if path.exists() else f"{path}: no such directory")
    source: Source = opener(path, limit=limit, **options)
    return source


def _card_source(source: Source, options: dict[str, Any], limit: int | None) -> dict[str, Any]:
    """What the output zoo records about its origin (compared on resume)."""
    opts = {k: (str(v) if isinstance(v, (Path, torch.device)) else v) for k, v in sorted(options.items())
            if k != "device"}
    return {"format": source.format, "path": str(source.path.resolve()), "limit": limit, "options": opts}


def _open_writer(dst: Path, source: Source, name: str | None, origin: dict[str, Any],
                 shard_max_bytes: int | None) -> Any:
    """A new ZooWriter at ``dst``, or the existing one when resuming the same conversion."""
    from wsl.zoo import ZooWriter
    from wsl.zoo.store import read_card

    size = {} if shard_max_bytes is None else {"shard_max_bytes": shard_max_bytes}
    if (dst / "zoo.json").exists():
        previous = read_card(dst).get("extra", {}).get("converted_from")
        if previous != origin:
            raise ZooFormatError(
                f"{dst}: already holds a different zoo (converted from {previous!r}, not {origin!r}); "
                "choose another output directory or delete it")
        return ZooWriter.open(dst, **size)
    return ZooWriter(dst, name=name or source.name, dataset=source.dataset, recipe=source.recipe,
                     description=source.description, extra={"converted_from": origin}, **size)


def convert(fmt: str, src: str | Path, dst: str | Path, *, name: str | None = None,
            limit: int | None = None, progress: bool = True, shard_max_bytes: int | None = None,
            **options: Any) -> ConvertReport:
    """Convert the zoo at ``src`` (format ``fmt``) into a native ``wsl.zoo/1`` zoo at ``dst``.

    ``limit`` keeps the first N models (all their checkpoints). Format options:
    ``small-cnn-zoo``: ``padding`` ("valid"/"same"), ``input_size``, ``keep_nonfinite``;
    ``schuerholt``: ``input_size``, ``device``; ``checkpoint-dir``: ``arch``, ``device``.
    Re-running an interrupted conversion with the same arguments resumes it.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    source = open_source(fmt, src, limit=limit, **options)
    dst_path = Path(dst).expanduser()
    origin = _card_source(source, options, limit)
    created = not (dst_path / "zoo.json").exists()
    writer = _open_writer(dst_path, source, name, origin, shard_max_bytes)
    written = present = 0
    arch_ids: list[str] = []
    models: set[str] = set()
    try:
        done: dict[str, int] = {}  # token -> rows it committed
        for shard in writer.card["shards"]:
            if shard["chunk"] is not None:
                done[shard["chunk"]] = done.get(shard["chunk"], 0) + int(shard["num_rows"])
        with tqdm(total=source.num_rows, unit="ckpt", desc=f"convert {source.format}",
                  disable=not progress, dynamic_ncols=True) as bar:
            for chunk in source.chunks:
                if chunk.token in done:
                    present += done[chunk.token]
                    bar.update(chunk.num_rows)
                    continue
                batch = chunk.load()
                if not batch.rows:
                    bar.update(chunk.num_rows)
                    continue
                arch_id = writer.add_architecture(batch.arch)
                if arch_id not in arch_ids:
                    arch_ids.append(arch_id)
                writer.append(arch_id, batch.stacked, batch.rows, chunk=chunk.token)
                models.update(str(r["model_id"]) for r in batch.rows)
                written += len(batch.rows)
                bar.update(chunk.num_rows)
    except BaseException:
        empty = writer.num_rows == 0
        writer.close()
        if created and empty:  # leave no empty zoo behind a conversion that failed before its first row
            shutil.rmtree(dst_path, ignore_errors=True)
        raise
    writer.close()
    notes = list(source.notes) + [f"skipped {n:,} checkpoint(s): {why}" for why, n in source.skipped.items() if n]
    return ConvertReport(dst_path, written, present, len(models) or source.num_models, arch_ids,
                         time.perf_counter() - start, notes)


# --------------------------------------------------------------------------- CLI
def register_convert(zsub: Any) -> None:
    """Add ``convert`` to the ``wsl zoo`` subcommands."""
    formats = "\n".join(f"  {k:15s} {d}" for k, (_, d) in FORMATS.items())
    import argparse

    p = zsub.add_parser(
        "convert", help="convert a published zoo (Small CNN Zoo, Schuerholt et al., checkpoint dir)",
        description="Convert a published model zoo into the native wsl.zoo/1 format.\n\nformats:\n" + formats,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="fmt", required=True, metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("src", metavar="SRC", help="source zoo directory")
    p.add_argument("-o", "--output", required=True, metavar="DST", help="output zoo directory")
    p.add_argument("--name", help="zoo name (default: derived from the source)")
    p.add_argument("--limit", type=int, metavar="N", help="convert only the first N models")
    p.add_argument("--arch", metavar="REF", help="checkpoint-dir: architecture of every file without "
                   "an 'arch' column (registered name, JSON description/file, module:factory)")
    p.add_argument("--padding", choices=("valid", "same"), help="small-cnn-zoo: convolution padding "
                   "the zoo was trained with (default: valid, as in the published train_network.py)")
    p.add_argument("--input-size", type=int, metavar="N", help="small-cnn-zoo/schuerholt: square input "
                   "size when it cannot be inferred from the dataset name")
    p.add_argument("--keep-nonfinite", action="store_true", help="small-cnn-zoo: keep checkpoints with "
                   "NaN/inf weights (skipped by default)")
    p.add_argument("--device", help="schuerholt/checkpoint-dir: device to load checkpoints on")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_convert)


def _run_convert(args: Any) -> int:
    options: dict[str, Any] = {}
    for opt in ("arch", "padding", "input_size", "device"):
        if getattr(args, opt, None) is not None:
            options[opt] = getattr(args, opt)
    if getattr(args, "keep_nonfinite", False):
        options["keep_nonfinite"] = True
    from wsl.io import local_path

    report = convert(args.fmt, local_path(args.src, repo_type="dataset"), args.output, name=args.name, limit=args.limit,
                     progress=not args.quiet, **options)
    print(report.summary())
    return 0
