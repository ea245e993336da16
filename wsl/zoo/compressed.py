"""The compressed zoo format ``"wsl.zoo-compressed/1"``: per-tensor bases plus per-row coefficients.

A compressed zoo is a folder laid out like a native zoo (:mod:`wsl.zoo.format`)
plus one basis file per architecture::

    DIR/zoo.json                              the card: every native field, plus "compression"
    DIR/metadata.jsonl                        the rows, byte for byte as in the native format
    DIR/shards/<arch_id>-<NNNNN>.safetensors  coefficients (one file per shard of the source zoo)
    DIR/bases/<arch_id>.safetensors           the basis of one architecture

For a *projected* tensor ``t`` of shape ``S`` (``P = prod(S)`` entries) the
basis file holds ``<t>.mean`` (``P``, float32) and ``<t>.dirs`` (``P x k``,
float32, orthonormal columns), the shard holds ``<t>`` (``num_rows x k``,
float32), and row ``i`` of the shard stands for::

    theta_i = reshape(mean + dirs @ c_i, S)          (then cast to the tensor's recorded dtype)

Every other tensor of the architecture (non-floating ones such as
BatchNorm's ``num_batches_tracked``) is stored as-is in the shard,
``(num_rows, *S)``. Shard and basis ``__metadata__`` are
``{"format": "wsl.zoo-compressed/1", "arch": arch_id}``.

Card: ``format`` is ``"wsl.zoo-compressed/1"``; the native fields keep their
native meaning (``shards`` entries describe the coefficient files: rows,
bytes, SHA-256); one more field::

    compression  {"method": "subspace",
                  "source": {"format": str, "name": str, "weight_bytes": int},
                  "fit": object (free-form: rank or variance asked, split, rows fitted per architecture),
                  "bases": {arch_id: {"file": "bases/<arch_id>.safetensors", "bytes": int,
                                      "sha256": 64 hex, "tensors": {name: {"rank": k, "dtype": "float32"}}}}}

A reader that knows only ``"wsl.zoo/1"`` refuses the card (unknown format)
rather than mistaking coefficients for weights. :func:`wsl.zoo.load_zoo`
reads a compressed zoo through :class:`CompressedZooStore` (registered as a
store opener by :mod:`wsl.zoo`): rows reconstruct on access, so
``state_dict()``, ``stacked()``, ``module()``, ``features()`` and
``graphs()`` behave as on the native zoo. Files are validated (header
against the card, size, SHA-256 unless ``verify="none"``) when first read.
"""

from __future__ import annotations

import copy
import json
import math
import posixpath
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsl.errors import CheckpointError, ZooFormatError
from wsl.zoo.format import CARD_FILE, FORMAT, validate_card
from wsl.zoo.store import ZooStore, file_sha256, read_card

__all__ = ["BASIS_DIR", "COMPRESSED_FORMAT", "CompressedZooStore", "basis_file", "open_compressed_store",
           "validate_compressed_card"]

COMPRESSED_FORMAT = "wsl.zoo-compressed/1"
BASIS_DIR = "bases"
METHODS = ("subspace",)
FLOAT_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
                "bfloat16": torch.bfloat16}
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def basis_file(arch_id: str) -> str:
    """Relative path of the basis of ``arch_id``."""
    return f"{BASIS_DIR}/{arch_id}.safetensors"


def _err(where: str, field: str, msg: str) -> ZooFormatError:
    return ZooFormatError(f"{where}: field '{field}': {msg}")


def _check_basis_entry(where: str, aid: str, entry: Any, arch: dict[str, Any]) -> None:
    f = f"compression.bases.{aid}"
    if not isinstance(entry, dict) or set(entry) != {"file", "bytes", "sha256", "tensors"}:
        raise _err(where, f, "expected an object with keys ['bytes', 'file', 'sha256', 'tensors']")
    file = entry["file"]
    if (not isinstance(file, str) or posixpath.normpath(file) != file or ".." in file.split("/")
            or not file.startswith(f"{BASIS_DIR}/") or not file.endswith(".safetensors") or "\\" in file):
        raise _err(where, f"{f}.file", f"expected a path 'bases/....safetensors' inside the zoo, got {file!r}")
    if type(entry["bytes"]) is not int or entry["bytes"] < 9:
        raise _err(where, f"{f}.bytes", f"expected an int >= 9, got {entry['bytes']!r}")
    if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
        raise _err(where, f"{f}.sha256", "expected 64 lowercase hex digits")
    tensors = entry["tensors"]
    if not isinstance(tensors, dict):
        raise _err(where, f"{f}.tensors", "expected an object {name: {rank, dtype}}")
    shapes = arch["tensors"]
    for name, t in tensors.items():
        if name not in shapes:
            raise _err(where, f"{f}.tensors.{name}", f"architecture {aid} has no tensor {name!r}")
        if not isinstance(t, dict) or set(t) != {"rank", "dtype"}:
            raise _err(where, f"{f}.tensors.{name}", "expected an object with keys ['dtype', 'rank']")
        p = math.prod(shapes[name])
        if type(t["rank"]) is not int or not 0 <= t["rank"] <= p:
            raise _err(where, f"{f}.tensors.{name}.rank", f"expected an int in [0, {p}], got {t['rank']!r}")
        if t["dtype"] not in FLOAT_DTYPES:
            raise _err(where, f"{f}.tensors.{name}.dtype",
                       f"expected one of {sorted(FLOAT_DTYPES)}, got {t['dtype']!r}")


def validate_compressed_card(card: Any, where: str) -> dict[str, Any]:
    """Check a ``"wsl.zoo-compressed/1"`` card: the native fields by the native rules, then ``compression``."""
    if not isinstance(card, dict):
        raise ZooFormatError(f"{where}: expected a JSON object, got {type(card).__name__}")
    if card.get("format") != COMPRESSED_FORMAT:
        raise _err(where, "format", f"expected {COMPRESSED_FORMAT!r}, got {card.get('format')!r}")
    if "compression" not in card:
        raise _err(where, "compression", "missing (a compressed zoo describes its bases there)")
    native = {k: v for k, v in card.items() if k != "compression"}
    native["format"] = FORMAT
    card["splits"] = validate_card(native, where)["splits"]
    comp = card["compression"]
    if not isinstance(comp, dict) or set(comp) != {"method", "source", "fit", "bases"}:
        raise _err(where, "compression", "expected an object with keys ['bases', 'fit', 'method', 'source']")
    if comp["method"] not in METHODS:
        raise _err(where, "compression.method", f"expected one of {list(METHODS)}, got {comp['method']!r}")
    source = comp["source"]
    if not isinstance(source, dict) or type(source.get("weight_bytes")) is not int or source["weight_bytes"] < 0:
        raise _err(where, "compression.source", "expected an object with an int 'weight_bytes' >= 0")
    if not isinstance(comp["fit"], dict):
        raise _err(where, "compression.fit", "expected an object")
    bases = comp["bases"]
    if not isinstance(bases, dict) or set(bases) != set(card["architectures"]):
        raise _err(where, "compression.bases", f"expected one entry per architecture {sorted(card['architectures'])}")
    files = set()
    for aid, entry in bases.items():
        _check_basis_entry(where, aid, entry, card["architectures"][aid])
        if entry["file"] in files:
            raise _err(where, f"compression.bases.{aid}.file", f"{entry['file']!r} is listed twice")
        files.add(entry["file"])
    return card


def _stored_shape(entry: dict[str, Any] | None, shape: list[int], rows: int) -> list[int]:
    return [rows, entry["rank"]] if entry is not None else [rows, *shape]


class CompressedZooStore(ZooStore):
    """A :class:`~wsl.zoo.store.ZooStore` over a compressed zoo: ``gather`` reconstructs the rows."""

    def __init__(self, root: Path, verify: str) -> None:
        super().__init__(root, verify)
        self.bases: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}

    def read_card(self, root: Path) -> dict[str, Any]:
        return read_card(root, validate_compressed_card)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["bases"] = {}
        return state

    def _projected(self, aid: str) -> dict[str, dict[str, Any]]:
        return self.card["compression"]["bases"][aid]["tensors"]  # type: ignore[no-any-return]

    def check_shard(self, k: int, verify: str | None = None) -> None:
        """Validate coefficient shard ``k`` (header vs card, size, checksum) and its architecture's basis, once."""
        if k in self.checked:
            return
        from wsl.io.safetensors_check import SAFETENSORS_DTYPES

        entry = self.card["shards"][k]
        aid = entry["arch"]
        path, where = self.shard_path(k), f"{self.shard_path(k)} (shard {k})"
        header = self._header(path, where, entry["bytes"], entry["sha256"], f"shards[{k}]", aid, verify)
        projected = self._projected(aid)
        want = self.card["architectures"][aid]["tensors"]
        if set(header.tensors) != set(want):
            raise ZooFormatError(f"{where}: tensors {sorted(set(header.tensors) ^ set(want))[:6]} differ from "
                                 f"{CARD_FILE} field 'architectures.{aid}.tensors'")
        for name, shape in want.items():
            got, exp = list(header.tensors[name][1]), _stored_shape(projected.get(name), shape, entry["num_rows"])
            if got != exp:
                what = "coefficients (num_rows, rank)" if name in projected else "(num_rows, *shape)"
                raise ZooFormatError(f"{where}: tensor {name!r} has shape {got}, the card says {exp} {what}")
            if name in projected and header.tensors[name][0] != "F32":
                raise ZooFormatError(f"{where}: coefficients {name!r} are {header.tensors[name][0]}, expected F32")
        if verify == "eager":
            self.bases.pop(aid, None)
        self.basis(aid, verify)
        self.dtypes[k] = {n: SAFETENSORS_DTYPES[i[0]][0] for n, i in header.tensors.items()}
        self.checked.add(k)

    def _header(self, path: Path, where: str, size: int, sha: str, field: str, aid: str, verify: str | None) -> Any:
        from wsl.io import read_safetensors_header

        if not path.is_file():
            raise ZooFormatError(f"{where}: missing ({CARD_FILE} lists it)")
        try:
            header = read_safetensors_header(path)
        except CheckpointError as exc:
            raise ZooFormatError(f"{where}: corrupt or truncated header: {exc}") from exc
        if header.metadata.get("format") != COMPRESSED_FORMAT or header.metadata.get("arch") != aid:
            raise ZooFormatError(f"{where}: __metadata__ is {header.metadata}, expected "
                                 f"{{'format': {COMPRESSED_FORMAT!r}, 'arch': {aid!r}}}")
        got = path.stat().st_size
        if got != size:
            raise ZooFormatError(f"{where}: file is {got} bytes, {CARD_FILE} field '{field}.bytes' says {size} "
                                 "(truncated or modified)")
        if (verify or self.verify) != "none":
            digest = file_sha256(path)
            if digest != sha:
                raise ZooFormatError(f"{where}: sha256 mismatch: file {digest[:12]}..., {CARD_FILE} field "
                                     f"'{field}.sha256' {sha[:12]}... (corrupt file)")
        return header

    def basis(self, aid: str, verify: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{name: (mean (P,), dirs (P, k))}`` of architecture ``aid`` (validated and loaded once)."""
        if aid in self.bases:
            return self.bases[aid]
        from safetensors.torch import load_file

        entry = self.card["compression"]["bases"][aid]
        path = self.root / entry["file"]
        where = f"{path} (basis of {aid})"
        header = self._header(path, where, entry["bytes"], entry["sha256"], f"compression.bases.{aid}", aid, verify)
        shapes = self.card["architectures"][aid]["tensors"]
        want = {}
        for name, t in entry["tensors"].items():
            p = math.prod(shapes[name])
            want[f"{name}.mean"], want[f"{name}.dirs"] = [p], [p, t["rank"]]
        missing = sorted(set(want) - set(header.tensors))
        if missing:
            raise ZooFormatError(f"{where}: missing basis tensor {missing[0]!r} ({len(missing)} missing)")
        extra = sorted(set(header.tensors) - set(want))
        if extra:
            raise ZooFormatError(f"{where}: unexpected tensor {extra[0]!r} (not in {CARD_FILE} 'compression.bases')")
        for key, shape in want.items():
            dtype, got = header.tensors[key][0], list(header.tensors[key][1])
            if got != shape or dtype != "F32":
                raise ZooFormatError(f"{where}: tensor {key!r} is {dtype} {got}, expected F32 {shape}")
        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise ZooFormatError(f"{where}: cannot read: {exc}") from exc
        self.bases[aid] = {n: (tensors[f"{n}.mean"], tensors[f"{n}.dirs"]) for n in entry["tensors"]}
        return self.bases[aid]

    def _coefficients(self, rows: np.ndarray, aid: str) -> dict[str, torch.Tensor]:
        """The stored tensors (coefficients, or as-is tensors) of ``rows`` of one architecture, in order."""
        shards = self.shard_col[rows]
        layout = self.card["architectures"][aid]["tensors"]
        out: dict[str, torch.Tensor] = {}
        for k in np.unique(shards).tolist():
            pos = np.flatnonzero(shards == k)
            loc = self.index_col[rows[pos]]
            lo, hi = int(loc.min()), int(loc.max()) + 1
            h, pick, at = self.handle(k), torch.from_numpy(loc - lo), torch.from_numpy(pos)
            for name in layout:
                part = h.get_slice(name)[lo:hi].index_select(0, pick)
                if name not in out:
                    out[name] = torch.empty((len(rows), *part.shape[1:]), dtype=part.dtype)
                out[name].index_copy_(0, at, part.to(out[name].dtype))
        return out

    def gather(self, rows: np.ndarray, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Reconstruct and stack the tensors of global ``rows`` (in that order); arches must share layouts."""
        if len(rows) == 0:
            raise ZooFormatError(f"{self.root}: no rows selected")
        rows = np.asarray(rows, dtype=np.int64)
        arch_of = np.array([self.card["shards"][k]["arch"] for k in self.shard_col[rows].tolist()], dtype=object)
        archs = list(dict.fromkeys(arch_of.tolist()))
        layout = self.tensors(archs[0])
        for aid in archs[1:]:
            if list(self.tensors(aid).items()) != list(layout.items()):
                raise ZooFormatError(f"{self.root}: rows of architectures {archs[0]} and {aid} have different "
                                     "tensor names/shapes and cannot be stacked; select one architecture")
        out: dict[str, torch.Tensor] = {}
        for aid in archs:
            pos = np.flatnonzero(arch_of == aid)
            stored = self._coefficients(rows[pos], aid)
            basis, projected = self.basis(aid), self._projected(aid)
            for name, shape in layout.items():
                t = stored[name]
                if name in projected:
                    mean, dirs = basis[name]
                    t = torch.addmm(mean.unsqueeze(0), t, dirs.T).reshape(len(pos), *shape)
                    t = t.to(FLOAT_DTYPES[projected[name]["dtype"]])
                if name not in out:
                    out[name] = t if len(archs) == 1 else torch.empty((len(rows), *shape), dtype=t.dtype)
                if len(archs) > 1:
                    if out[name].dtype != t.dtype:
                        out[name] = out[name].to(torch.promote_types(out[name].dtype, t.dtype))
                    out[name][torch.from_numpy(pos)] = t.to(out[name].dtype)
        return {name: t.to(device) for name, t in out.items()} if device is not None else out


def open_compressed_store(root: Path, verify: str) -> CompressedZooStore | None:
    """Store opener (see :func:`wsl.zoo.zoo.register_store_opener`): a compressed zoo's store, else None."""
    try:
        with open(root / CARD_FILE, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if COMPRESSED_FORMAT.encode() not in head:  # cheap test before parsing
        return None
    try:
        fmt = json.loads((root / CARD_FILE).read_text(encoding="utf-8")).get("format")
    except (ValueError, OSError, AttributeError, UnicodeDecodeError):
        return None  # the native reader reports the broken card
    return CompressedZooStore(root, verify) if fmt == COMPRESSED_FORMAT else None


def compressed_summary(card: dict[str, Any]) -> dict[str, Any] | None:
    """What ``wsl zoo info`` says about compression: None for a native zoo."""
    comp = card.get("compression")
    if card.get("format") != COMPRESSED_FORMAT or not isinstance(comp, dict):
        return None
    basis = sum(b["bytes"] for b in comp["bases"].values())
    coef = sum(s["bytes"] for s in card["shards"])
    ranks = {aid: sorted({t["rank"] for t in b["tensors"].values()}) for aid, b in comp["bases"].items()}
    return {"method": comp["method"], "fit": copy.deepcopy(comp["fit"]), "source": copy.deepcopy(comp["source"]),
            "basis_bytes": basis, "coefficient_bytes": coef, "ranks": ranks,
            "ratio": comp["source"]["weight_bytes"] / max(basis + coef, 1)}
