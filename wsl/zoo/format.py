"""The native model-zoo format ``"wsl.zoo/1"``: layout, card and row schema, validation.

A zoo is a directory::

    DIR/zoo.json                                  the card (one JSON object)
    DIR/metadata.jsonl                            one JSON object per row
    DIR/shards/<arch_id>-<NNNNN>.safetensors      stacked tensors, one architecture per shard

A *row* is one checkpoint of one trained network; a *model* is a trained
network, identified by ``model_id`` across its checkpoints (epochs).

Card (``zoo.json``), exactly these fields (extensions go under ``"extra"``)::

    format        "wsl.zoo/1" (any other value is refused: unknown version)
    name          non-empty string
    version       string (the zoo's own version, e.g. "1.0")
    description   string
    dataset       object, free-form (name, input_shape, num_classes, ...)
    recipe        object, free-form (the generating recipe / hyperparameter space)
    architectures {arch_id: {"arch": <"wsl.arch/1" description, canonical form>,
                             "num_parameters": int (parameters, buffers excluded),
                             "tensors": {name: [dims...]} in state_dict order}}
    splits        {"train": f, "val": f, "test": f, "seed": int, "unit": "model"},
                  fractions in [0, 1] summing to 1
    shards        [{"file": "shards/a0-00000.safetensors", "arch": arch_id,
                    "num_rows": int >= 1, "bytes": int (file size),
                    "sha256": 64 lowercase hex digits of the whole file,
                    "chunk": string or null (opaque resume token of the writer)}]
    num_rows      int = sum of the shards' num_rows = number of metadata rows
    num_models    int = number of distinct model_id
    metadata      {"file": "metadata.jsonl", "sha256": hex, "num_rows": int}
    extra         object, free-form

``arch_id`` matches ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}``; the writer assigns
``a0``, ``a1``, ... in order of first use, the same id for the same canonical
description. A shard's ``file`` is a relative POSIX path under ``shards/``
ending in ``.safetensors`` (no ``..``). The writer names shard ``k`` (its index
in ``shards``) ``shards/<arch_id>-<kkkkk>.safetensors`` for ``k < 5000`` and
``shards/<k // 5000 as 3 digits>/<arch_id>-<kkkkk>.safetensors`` beyond, so no
folder holds more than 5,000 files. Shards are at most ``shard_max_bytes``
(default 1 GiB; the Hugging Face Hub limit is 2 GB) unless a single row is bigger.

Shard (safetensors): every state_dict entry ``name`` of the architecture maps
to one tensor of shape ``(num_rows, *tensors[name])`` -- the rows' tensors
stacked along dim 0 in row order -- and nothing else. ``__metadata__`` is
``{"format": "wsl.zoo/1", "arch": arch_id}``. Dtypes are whatever was written
(usually float32; ``num_batches_tracked`` int64).

Rows (``metadata.jsonl``, UTF-8, one compact JSON object per line, ``\\n``
terminated). Fields, in this order, then extra metrics::

    row             int, = the line's position (0-based)
    model_id        non-empty string
    arch            arch_id of the row's shard
    shard           int, index into the card's shards
    index           int, position of the row inside that shard
    epoch           int or null
    seed            int or null
    split           "train" | "val" | "test"
    hparams         object (free-form, JSON)
    train_accuracy, test_accuracy, train_loss, test_loss    number or null
    <extra>         number, string, bool, null or a list of those (e.g. "psnr", "label")

Invariants: rows of a shard appear in increasing ``row`` order with ``index``
0, 1, ..., ``num_rows - 1``; every checkpoint of a model has the same split.
JSON has no NaN: non-finite metric values are written as null.
``metadata.sha256`` is the SHA-256 of the first ``num_rows`` lines (bytes,
newlines included); the file may hold further lines after those (left by an
interrupted append) and readers ignore them.

Splits: by default a model's split comes from ``u = int(sha256(f"{seed}:{model_id}")[:16], 16) / 2**64``:
``train`` if ``u < train``, ``val`` if ``u < train + val``, else ``test``. A
writer may be given an explicit ``split`` per row (e.g. a published split); it
must then be the same for all checkpoints of the model.

Crash safety (write order): each shard is written to a temp file and renamed,
then the new rows are appended to ``metadata.jsonl`` and fsynced, and only then
``zoo.json`` is atomically replaced. The card is the commit point: shards it
does not list and metadata lines beyond its ``num_rows`` do not exist.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from wsl.errors import ZooFormatError

FORMAT = "wsl.zoo/1"
CARD_FILE = "zoo.json"
METADATA_FILE = "metadata.jsonl"
SHARD_DIR = "shards"
SHARDS_PER_FOLDER = 5000
SPLIT_NAMES = ("train", "val", "test")
METRICS = ("train_accuracy", "test_accuracy", "train_loss", "test_loss")
ROW_FIELDS = ("row", "model_id", "arch", "shard", "index", "epoch", "seed", "split", "hparams", *METRICS)
WRITER_FIELDS = ("row", "arch", "shard", "index")
CARD_FIELDS = ("format", "name", "version", "description", "dataset", "recipe", "architectures",
               "splits", "shards", "num_rows", "num_models", "metadata", "extra")
SHARD_FIELDS = ("file", "arch", "num_rows", "bytes", "sha256", "chunk")
ARCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

__all__ = ["ARCH_ID", "CARD_FILE", "CARD_FIELDS", "FORMAT", "METADATA_FILE", "METRICS", "ROW_FIELDS", "SHARD_DIR",
           "SPLIT_NAMES", "assign_split", "default_splits", "is_int", "is_num", "json_value", "normalize_row",
           "shard_file", "validate_card", "validate_row", "validate_splits"]


def is_int(v: Any) -> bool:
    """True for a Python ``int`` that is not a ``bool``."""
    return type(v) is int


def is_num(v: Any) -> bool:
    """True for an ``int``/``float`` that is not a ``bool``."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _err(where: str, field: str, msg: str) -> ZooFormatError:
    return ZooFormatError(f"{where}: field '{field}': {msg}")


def default_splits() -> dict[str, Any]:
    """The default split rule: 80/10/10 per model, seed 0."""
    return {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0, "unit": "model"}


def validate_splits(splits: Any, where: str, field: str = "splits") -> dict[str, Any]:
    """Check a split rule and return it normalised (fractions as floats, fixed key order)."""
    if not isinstance(splits, Mapping):
        raise _err(where, field, f"expected an object, got {type(splits).__name__}")
    keys = set(splits)
    want = {"train", "val", "test", "seed", "unit"}
    if keys - want:
        raise _err(where, field, f"unknown keys {sorted(keys - want)}; valid: {sorted(want)}")
    for k in ("train", "val", "test"):
        if k not in splits:
            raise _err(where, f"{field}.{k}", "missing")
        v = splits[k]
        if not is_num(v) or not 0.0 <= float(v) <= 1.0:
            raise _err(where, f"{field}.{k}", f"expected a fraction in [0, 1], got {v!r}")
    total = float(splits["train"]) + float(splits["val"]) + float(splits["test"])
    if abs(total - 1.0) > 1e-6:
        raise _err(where, field, f"train + val + test must be 1, got {total:g}")
    seed, unit = splits.get("seed", 0), splits.get("unit", "model")
    if not is_int(seed) or unit != "model":
        bad = "seed" if not is_int(seed) else "unit"
        raise _err(where, f"{field}.{bad}", f"expected an int seed and unit 'model', got {splits[bad]!r}")
    return {"train": float(splits["train"]), "val": float(splits["val"]),
            "test": float(splits["test"]), "seed": seed, "unit": "model"}


def assign_split(model_id: str, splits: Mapping[str, Any]) -> str:
    """The split of ``model_id`` under a (validated) split rule; deterministic."""
    digest = hashlib.sha256(f"{splits['seed']}:{model_id}".encode()).hexdigest()
    u = int(digest[:16], 16) / 2.0**64
    if u < splits["train"]:
        return "train"
    if u < splits["train"] + splits["val"]:
        return "val"
    return "test"


def shard_file(arch_id: str, k: int) -> str:
    """Relative path the writer uses for shard ``k`` of architecture ``arch_id``."""
    folder = k // SHARDS_PER_FOLDER
    sub = f"{SHARD_DIR}/" if folder == 0 else f"{SHARD_DIR}/{folder:03d}/"
    return f"{sub}{arch_id}-{k:05d}.safetensors"


def _check_type(where: str, field: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _err(where, field, f"expected {what}, got {type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _nonneg_int(where: str, field: str, value: Any, lo: int = 0) -> int:
    if not is_int(value) or value < lo:
        raise _err(where, field, f"expected an int >= {lo}, got {_short(value)}")
    return int(value)


def _check_arch_entry(where: str, aid: str, entry: Any) -> None:
    f = f"architectures.{aid}"
    if not ARCH_ID.match(aid):
        raise _err(where, f, f"invalid architecture id {aid!r} (letters, digits, '_', '.', '-'; <= 64 chars)")
    _check_type(where, f, entry, dict, "an object")
    keys = set(entry)
    if keys != {"arch", "num_parameters", "tensors"}:
        raise _err(where, f, f"expected keys ['arch', 'num_parameters', 'tensors'], got {sorted(keys)}")
    _check_type(where, f"{f}.arch", entry["arch"], dict, "a 'wsl.arch/1' description object")
    if entry["arch"].get("format") != "wsl.arch/1":
        raise _err(where, f"{f}.arch.format", f"expected 'wsl.arch/1', got {entry['arch'].get('format')!r}")
    _nonneg_int(where, f"{f}.num_parameters", entry["num_parameters"])
    tensors = entry["tensors"]
    _check_type(where, f"{f}.tensors", tensors, dict, "an object {name: shape}")
    if not tensors:
        raise _err(where, f"{f}.tensors", "an architecture needs at least one tensor")
    for name, shape in tensors.items():
        if not isinstance(shape, list) or not all(is_int(d) and d >= 0 for d in shape):
            raise _err(where, f"{f}.tensors.{name}", f"expected a list of non-negative ints, got {_short(shape)}")


def _check_shard_entry(where: str, i: int, entry: Any, archs: Mapping[str, Any], seen: set[str]) -> None:
    f = f"shards[{i}]"
    _check_type(where, f, entry, dict, "an object")
    keys = set(entry)
    if keys != set(SHARD_FIELDS):
        missing, extra = sorted(set(SHARD_FIELDS) - keys), sorted(keys - set(SHARD_FIELDS))
        raise _err(where, f, f"missing keys {missing}, unknown keys {extra}")
    file = entry["file"]
    _check_type(where, f"{f}.file", file, str, "a relative path")
    norm = posixpath.normpath(file)
    if (norm != file or file.startswith("/") or ".." in file.split("/") or "\\" in file
            or not file.startswith(f"{SHARD_DIR}/") or not file.endswith(".safetensors")):
        raise _err(where, f"{f}.file", f"expected a path 'shards/....safetensors' inside the zoo, got {file!r}")
    if file in seen:
        raise _err(where, f"{f}.file", f"{file!r} is listed twice")
    seen.add(file)
    if entry["arch"] not in archs:
        raise _err(where, f"{f}.arch", f"unknown architecture id {entry['arch']!r}")
    _nonneg_int(where, f"{f}.num_rows", entry["num_rows"], 1)
    _nonneg_int(where, f"{f}.bytes", entry["bytes"], 9)
    if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
        raise _err(where, f"{f}.sha256", f"expected 64 lowercase hex digits, got {_short(entry['sha256'])}")
    if entry["chunk"] is not None and not isinstance(entry["chunk"], str):
        raise _err(where, f"{f}.chunk", f"expected a string or null, got {_short(entry['chunk'])}")


def validate_card(card: Any, where: str) -> dict[str, Any]:
    """Check every field of a card (``zoo.json``) object; raise ZooFormatError naming it."""
    if not isinstance(card, dict):
        raise ZooFormatError(f"{where}: expected a JSON object, got {type(card).__name__}")
    if "format" not in card:
        raise _err(where, "format", f"missing (expected {FORMAT!r}); is this a wsl zoo?")
    if card["format"] != FORMAT:
        raise _err(where, "format", f"unsupported zoo format {card['format']!r}; this wsl reads {FORMAT!r}")
    missing, extra = [k for k in CARD_FIELDS if k not in card], sorted(set(card) - set(CARD_FIELDS))
    if missing or extra:
        raise _err(where, (missing or extra)[0], f"missing (missing fields: {missing})" if missing else
                   f"unknown field (unknown: {extra}); put extensions under 'extra'")
    _check_type(where, "name", card["name"], str, "a string")
    if not card["name"].strip():
        raise _err(where, "name", "must not be empty")
    for key in ("version", "description"):
        _check_type(where, key, card[key], str, "a string")
    for key in ("dataset", "recipe", "extra", "architectures"):
        _check_type(where, key, card[key], dict, "an object")
    for aid, entry in card["architectures"].items():
        _check_arch_entry(where, aid, entry)
    card["splits"] = validate_splits(card["splits"], where)
    _check_type(where, "shards", card["shards"], list, "a list")
    seen: set[str] = set()
    for i, entry in enumerate(card["shards"]):
        _check_shard_entry(where, i, entry, card["architectures"], seen)
    n = _nonneg_int(where, "num_rows", card["num_rows"])
    total = sum(s["num_rows"] for s in card["shards"])
    if total != n:
        raise _err(where, "num_rows", f"is {n} but the shards hold {total} rows")
    models = _nonneg_int(where, "num_models", card["num_models"])
    if models > n:
        raise _err(where, "num_models", f"is {models}, more than num_rows ({n})")
    meta = card["metadata"]
    _check_type(where, "metadata", meta, dict, "an object")
    if set(meta) != {"file", "sha256", "num_rows"}:
        raise _err(where, "metadata", f"expected keys ['file', 'num_rows', 'sha256'], got {sorted(meta)}")
    if meta["file"] != METADATA_FILE:
        raise _err(where, "metadata.file", f"expected {METADATA_FILE!r}, got {_short(meta['file'])}")
    if not isinstance(meta["sha256"], str) or not _HEX64.match(meta["sha256"]):
        raise _err(where, "metadata.sha256", f"expected 64 lowercase hex digits, got {_short(meta['sha256'])}")
    if _nonneg_int(where, "metadata.num_rows", meta["num_rows"]) != n:
        raise _err(where, "metadata.num_rows", f"is {meta['num_rows']} but num_rows is {n}")
    return card


def _extra_value_ok(v: Any) -> bool:
    scalar = (str, int, float, bool, type(None))
    return isinstance(v, scalar) or isinstance(v, list) and all(isinstance(x, scalar) for x in v)


def validate_row(row: Any, pos: int, card: Mapping[str, Any], where: str) -> None:
    """Check one parsed metadata row (line ``pos``) against the card."""
    loc = f"{where}: row {pos}"
    if not isinstance(row, dict):
        raise ZooFormatError(f"{loc}: expected a JSON object, got {type(row).__name__}")
    for key in ROW_FIELDS:
        if key not in row:
            raise ZooFormatError(f"{loc}: field '{key}': missing")
    if row["row"] != pos or not is_int(row["row"]):
        raise ZooFormatError(f"{loc}: field 'row': is {_short(row['row'])}, expected {pos} (its line position)")
    mid = row["model_id"]
    if not isinstance(mid, str) or not mid:
        raise ZooFormatError(f"{loc}: field 'model_id': expected a non-empty string, got {_short(mid)}")
    shards = card["shards"]
    s = row["shard"]
    if not is_int(s) or not 0 <= s < len(shards):
        raise ZooFormatError(f"{loc}: field 'shard': expected an int in [0, {len(shards)}), got {_short(s)}")
    if row["arch"] != shards[s]["arch"]:
        raise ZooFormatError(f"{loc}: field 'arch': is {_short(row['arch'])} but shard {s} holds "
                             f"architecture {shards[s]['arch']!r}")
    idx = row["index"]
    if not is_int(idx) or not 0 <= idx < shards[s]["num_rows"]:
        raise ZooFormatError(f"{loc}: field 'index': expected an int in [0, {shards[s]['num_rows']}), "
                             f"got {_short(idx)}")
    for key in ("epoch", "seed"):
        if row[key] is not None and not is_int(row[key]):
            raise ZooFormatError(f"{loc}: field '{key}': expected an int or null, got {_short(row[key])}")
    if row["split"] not in SPLIT_NAMES:
        raise ZooFormatError(f"{loc}: field 'split': expected one of {list(SPLIT_NAMES)}, got {_short(row['split'])}")
    if not isinstance(row["hparams"], dict):
        raise ZooFormatError(f"{loc}: field 'hparams': expected an object, got {_short(row['hparams'])}")
    for key in METRICS:
        if row[key] is not None and not is_num(row[key]):
            raise ZooFormatError(f"{loc}: field '{key}': expected a number or null, got {_short(row[key])}")
    for key, v in row.items():
        if key not in ROW_FIELDS and not _extra_value_ok(v):
            raise ZooFormatError(f"{loc}: field '{key}': extra metrics must be numbers, strings, bools, "
                                 f"null or lists of those, got {type(v).__name__}")


def json_value(value: Any, where: str, *, nan_to_null: bool = False) -> Any:
    """Convert ``value`` to plain JSON (numpy/torch scalars to Python, tuples to lists).

    Non-finite floats become ``None`` if ``nan_to_null`` else raise.
    """
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        if nan_to_null:
            return None
        raise ZooFormatError(f"{where}: {value} is not representable in JSON; use null")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v, f"{where}[{i}]", nan_to_null=nan_to_null) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ZooFormatError(f"{where}: key {k!r} is not a string")
            out[k] = json_value(v, f"{where}.{k}", nan_to_null=nan_to_null)
        return out
    if hasattr(value, "tolist") and callable(value.tolist):
        return json_value(value.tolist(), where, nan_to_null=nan_to_null)
    raise ZooFormatError(f"{where}: {type(value).__name__} is not JSON-serialisable")


def normalize_row(row: Any, where: str) -> dict[str, Any]:
    """Check a row given to the writer and return its JSON form (without writer fields).

    ``model_id`` is required; ``epoch``/``seed`` default to null, ``hparams`` to
    ``{}``, metrics to null; ``split`` is kept only if given.
    """
    if not isinstance(row, Mapping):
        raise ZooFormatError(f"{where}: expected a dict, got {type(row).__name__}")
    given = [key for key in WRITER_FIELDS if key in row]
    if given:
        raise ZooFormatError(f"{where}: field '{given[0]}' is filled by the writer; do not pass it")
    mid = row.get("model_id")
    if not isinstance(mid, str) or not mid:
        raise ZooFormatError(f"{where}: field 'model_id': expected a non-empty string, got {_short(mid)}")
    out: dict[str, Any] = {"model_id": mid}
    for key in ("epoch", "seed"):
        v = json_value(row.get(key), f"{where}: field '{key}'")
        if v is not None and not is_int(v):
            raise ZooFormatError(f"{where}: field '{key}': expected an int or None, got {_short(v)}")
        out[key] = v
    if "split" in row and row["split"] is not None:
        if row["split"] not in SPLIT_NAMES:
            raise ZooFormatError(f"{where}: field 'split': expected one of {list(SPLIT_NAMES)}, got {_short(row['split'])}")
        out["split"] = row["split"]
    hp = row.get("hparams", {})
    if not isinstance(hp, Mapping):
        raise ZooFormatError(f"{where}: field 'hparams': expected a dict, got {type(hp).__name__}")
    out["hparams"] = json_value(hp, f"{where}: field 'hparams'")
    for key in METRICS:
        v = json_value(row.get(key), f"{where}: field '{key}'", nan_to_null=True)
        if v is not None and not is_num(v):
            raise ZooFormatError(f"{where}: field '{key}': expected a number or None, got {_short(v)}")
        out[key] = None if v is None else float(v)
    for key, v in row.items():
        if key in out or key in ROW_FIELDS:
            continue
        if not isinstance(key, str):
            raise ZooFormatError(f"{where}: field name {key!r} is not a string")
        jv = json_value(v, f"{where}: field '{key}'", nan_to_null=True)
        if not _extra_value_ok(jv):
            raise ZooFormatError(f"{where}: field '{key}': extra metrics must be numbers, strings, bools, "
                                 f"None or lists of those (put nested data in 'hparams'), got {type(v).__name__}")
        out[key] = jv
    return out
