"""Reader for the Small CNN Zoo (Unterthiner et al. 2020, "Predicting Neural Network
Accuracy from Weights"; google-research ``dnn_predict_accuracy``).

Layout of one dataset's directory::

    weights.npy          (N, P) float32, one flattened checkpoint per row
    layout.csv           varname, start_idx, end_idx, shape -- column ranges of each TF variable
    metrics.csv[.gz]     one row per weights row: config.* hyperparameters, modeldir, step,
                         train/test accuracy and loss

The network (``build_cnn`` in the published ``train_network.py``) is a Keras
``Sequential``: ``num_layers`` x ``Conv2D(16, 3, strides=2, activation=act)`` (Keras'
default ``padding='valid'``), optional Dropout, ``GlobalAveragePooling2D`` and
``Dense(10)``. Variables are stored bias first (names sort alphabetically), kernels in
TF order: conv ``(kh, kw, in, out)`` and dense ``(in, out)``; they are transposed to
PyTorch order ``(out, in, kh, kw)`` / ``(out, in)``.

Padding: published checkpoints use 'valid' padding (no padding), which PyTorch's
``padding=0`` reproduces exactly. ``padding="same"`` is offered for zoos trained with
TF 'same' padding: TF pads ``total = max((ceil(n/s) - 1) * s + k - n, 0)`` pixels with
``total // 2`` before and the rest after, which for stride 2 on even sizes is
*asymmetric* (0 before, 1 after) and differs from PyTorch's symmetric ``padding=1``;
such layers get an explicit ``pad2d`` layer ``[left, right, top, bottom]`` and an
unpadded convolution, so the converted model reproduces TF exactly.

Dropout has no parameters and is the identity at evaluation, so it is not part of the
architecture (its rate is kept in ``hparams``). Architectures are grouped by
(activation, input channels, input size, padding).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsl.errors import ZooFormatError
from wsl.zoo.readers import (
    STANDARD_METRICS, Batch, Chunk, Source, Table, as_metric, parse_scalar, read_table, select_models,
)

FORMAT = "small-cnn-zoo"
INPUT_SIZES = {"mnist": 28, "fashion_mnist": 28, "cifar10": 32, "svhn_cropped": 32, "svhn": 32}
"""TFDS dataset name -> image size (the zoo converts all images to grayscale)."""
ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "linear": "identity",
               "swish": "silu", "silu": "silu", "gelu": "gelu"}
CHUNK_ROWS = 4096
_VAR = re.compile(r"^(?:.*/)?(conv2d|dense)(?:_(\d+))?/(kernel|bias)(?::\d+)?$")
_CKPT_SUFFIX = re.compile(r"[/\\](?:permanent_)?ckpt-\d+[/\\]?$")
_SHAPE = re.compile(r"^\(?\s*(\d+(?:\s*,\s*\d+)*)?\s*,?\s*\)?$")


class _Var:
    """One TF variable of the layout: columns ``[start, end)`` reshaped to ``shape``."""

    def __init__(self, name: str, start: int, end: int, shape: tuple[int, ...]) -> None:
        self.name, self.start, self.end, self.shape = name, start, end, shape


def _layout(path: Path) -> list[tuple[str, _Var, _Var]]:
    """Parse layout.csv into ordered layers ``(kind, kernel, bias)``; kind is conv2d or dense."""
    table = read_table(path)
    names, starts, ends, shapes = (table.col(c) for c in ("varname", "start_idx", "end_idx", "shape"))
    layers: dict[tuple[int, int], dict[str, _Var]] = {}
    for i in range(table.num_rows):
        m = _VAR.match(names[i].strip())
        if not m:
            raise ZooFormatError(f"{table.where(i, 'varname')}: unsupported variable {names[i]!r} "
                                 "(expected .../conv2d[_k]/kernel:0, .../dense[_k]/bias:0, ...)")
        try:
            start, end = int(starts[i]), int(ends[i])
        except ValueError:
            raise ZooFormatError(f"{table.where(i, 'start_idx')}: start_idx/end_idx must be integers, "
                                 f"got {starts[i]!r}, {ends[i]!r}") from None
        sm = _SHAPE.match(shapes[i].strip())
        if not sm or not sm.group(1):
            raise ZooFormatError(f"{table.where(i, 'shape')}: cannot parse shape {shapes[i]!r}")
        shape = tuple(int(s) for s in sm.group(1).split(","))
        if start < 0 or end - start != math.prod(shape):
            raise ZooFormatError(f"{table.where(i)}: range [{start}, {end}) holds {end - start} values "
                                 f"but shape {shape} needs {math.prod(shape)}")
        kind, idx, what = m.group(1), int(m.group(2) or 0), m.group(3)
        key = (0 if kind == "conv2d" else 1, idx)
        if what in layers.setdefault(key, {}):
            raise ZooFormatError(f"{table.where(i, 'varname')}: duplicate variable {names[i]!r}")
        layers[key][what] = _Var(names[i], start, end, shape)
    out = []
    for key in sorted(layers):
        kind = "conv2d" if key[0] == 0 else "dense"
        parts = layers[key]
        for what in ("kernel", "bias"):
            if what not in parts:
                other = next(iter(parts.values())).name
                raise ZooFormatError(f"{path}: layer of {other!r} has no {what} variable")
        out.append((kind, parts["kernel"], parts["bias"]))
    return out


def _check_chain(path: Path, layers: list[tuple[str, _Var, _Var]], num_cols: int) -> tuple[int, int]:
    """Check shapes chain up as convs -> GAP -> one dense; return (in_channels, num_classes)."""
    if not layers or layers[0][0] != "conv2d" or [k for k, _, _ in layers].count("dense") != 1 \
            or layers[-1][0] != "dense":
        kinds = [k for k, _, _ in layers]
        raise ZooFormatError(f"{path}: expected conv2d layers followed by one dense layer "
                             f"(the 'cnn' architecture), got {kinds}")
    prev = None
    for kind, kernel, bias in layers:
        nd = 4 if kind == "conv2d" else 2
        if len(kernel.shape) != nd or len(bias.shape) != 1 or bias.shape[0] != kernel.shape[-1]:
            raise ZooFormatError(f"{path}: {kernel.name} {kernel.shape} / {bias.name} {bias.shape}: expected "
                                 f"a {nd}-d kernel whose last dim matches a 1-d bias")
        if kind == "conv2d" and kernel.shape[0] != kernel.shape[1]:
            raise ZooFormatError(f"{path}: {kernel.name}: non-square kernel {kernel.shape[:2]}")
        fan_in = kernel.shape[-2]
        if prev is not None and fan_in != prev:
            raise ZooFormatError(f"{path}: {kernel.name} expects {fan_in} input channels, "
                                 f"the previous layer has {prev}")
        prev = kernel.shape[-1]
    spans = sorted((v.start, v.end, v.name) for _, k, b in layers for v in (k, b))
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise ZooFormatError(f"{path}: {name} starts at column {start}, expected {pos} "
                                 "(variables must tile the weight columns without gaps or overlaps)")
        pos = end
    if pos != num_cols:
        raise ZooFormatError(f"{path}: layout covers {pos} columns but weights.npy rows have {num_cols}")
    return layers[0][1].shape[2], layers[-1][1].shape[-1]


def _tf_same_pads(size: int, k: int, s: int) -> tuple[int, int, int]:
    """(before, after, output size) of TF 'same' padding on one spatial dimension."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


def architecture(layers: list[tuple[str, _Var, _Var]], activation: str, in_channels: int,
                 input_size: int, stride: int, padding: str) -> tuple[dict[str, Any], list[str]]:
    """The ``wsl.arch/1`` description and, per layout layer, its module index in the Sequential."""
    specs: list[dict[str, Any]] = []
    index: list[str] = []
    size = input_size
    for kind, kernel, _ in layers:
        if kind == "dense":
            specs.append({"type": "global_avg_pool"})
            index.append(str(len(specs)))
            specs.append({"type": "linear", "out_features": kernel.shape[1]})
            continue
        k = kernel.shape[0]
        pad: int | list[int] = 0
        if padding == "same":
            before, after, out = _tf_same_pads(size, k, stride)
            if before == after:
                pad = before
            else:
                specs.append({"type": "pad2d", "padding": [before, after, before, after]})
            size = out
        else:
            size = (size - k) // stride + 1
        if size < 1:
            raise ZooFormatError(f"input size {input_size} is too small for {len(layers) - 1} stride-{stride} "
                                 f"convolutions with '{padding}' padding")
        index.append(str(len(specs)))
        specs.append({"type": "conv2d", "out_channels": kernel.shape[3], "kernel_size": k,
                      "stride": stride, "padding": pad})
        specs.append({"type": activation})
    desc = {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [in_channels, input_size, input_size],
            "layers": specs}
    return desc, index


def _to_torch(block: np.ndarray, kind: str, what: str, shape: tuple[int, ...]) -> torch.Tensor:
    """(n, prod(shape)) TF-order values -> (n, *torch_shape) tensor."""
    arr = block.reshape((block.shape[0], *shape))
    if what == "kernel":
        arr = arr.transpose(0, 4, 3, 1, 2) if kind == "conv2d" else arr.transpose(0, 2, 1)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def model_id(modeldir: str) -> str:
    """The training run of a ``modeldir`` value (a trailing ``permanent_ckpt-N`` is dropped)."""
    return _CKPT_SUFFIX.sub("", modeldir.strip()) or modeldir


def _row(table: Table, i: int, extra_cols: list[str], config_cols: list[str]) -> dict[str, Any]:
    """Metadata row (without tensors) for metrics row ``i``."""
    step = parse_scalar(table.col("step")[i])
    if not isinstance(step, int) and not (isinstance(step, float) and step.is_integer()):
        raise ZooFormatError(f"{table.where(i, 'step')}: expected an integer step, got {table.col('step')[i]!r}")
    hparams = {c[len("config."):]: parse_scalar(table.columns[c][i]) for c in config_cols}
    seed = hparams.get("random_seed")
    row: dict[str, Any] = {"model_id": model_id(table.col("modeldir")[i]), "epoch": int(step), "step": int(step),
                           "seed": seed if isinstance(seed, int) else None, "hparams": hparams}
    for m in STANDARD_METRICS:
        row[m] = as_metric(table.columns[m][i], table.where(i, m)) if m in table.columns else None
    for c in extra_cols:
        value = parse_scalar(table.columns[c][i])
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[c] = float(value)
        else:
            hparams[c] = value
    return row


def open_source(src: Path, *, limit: int | None = None, padding: str = "valid",
                input_size: int | None = None, keep_nonfinite: bool = False) -> Source:
    """Validate a Small CNN Zoo directory and plan its conversion in chunks of rows."""
    if padding not in ("valid", "same"):
        raise ZooFormatError(f"padding must be 'valid' or 'same', got {padding!r}")
    wpath = src / "weights.npy"
    if not wpath.is_file():
        raise ZooFormatError(f"{wpath}: file not found (a Small CNN Zoo directory holds weights.npy, "
                             "layout.csv and metrics.csv[.gz])")
    mpath = next((src / n for n in ("metrics.csv", "metrics.csv.gz") if (src / n).is_file()), None)
    if mpath is None:
        raise ZooFormatError(f"{src}: neither metrics.csv nor metrics.csv.gz found")
    try:
        weights = np.load(wpath, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ZooFormatError(f"{wpath}: not a readable .npy array: {exc}") from exc
    if weights.ndim != 2 or weights.dtype.kind != "f":
        raise ZooFormatError(f"{wpath}: expected a 2-d float array (N, P), got {weights.dtype} {weights.shape}")
    layers = _layout(src / "layout.csv")
    in_ch, num_classes = _check_chain(src / "layout.csv", layers, weights.shape[1])
    table = read_table(mpath)
    if table.num_rows != weights.shape[0]:
        raise ZooFormatError(f"{mpath}: {table.num_rows} rows but {wpath} has {weights.shape[0]}")
    for needed in ("modeldir", "step"):
        table.col(needed)
    config_cols = [c for c in table.columns if c.startswith("config.")]
    extra_cols = [c for c in table.columns if not c.startswith("config.")
                  and c not in ("modeldir", "step", *STANDARD_METRICS)]
    acts = table.col("config.activation")
    stride_col = table.columns.get("config.cnn_stride")
    dataset_col = table.columns.get("config.dataset")
    ids = [model_id(m) for m in table.col("modeldir")]
    keep = select_models(ids, limit)
    indices = [i for i, m in enumerate(ids) if keep is None or m in keep]

    archs: dict[tuple[str, int, int, str], tuple[dict[str, Any], list[str]]] = {}
    groups: dict[tuple[int, tuple[str, int, int, str]], list[int]] = {}
    dataset_names: set[str] = set()
    for i in indices:
        act = ACTIVATIONS.get(acts[i].strip().lower())
        if act is None:
            raise ZooFormatError(f"{table.where(i, 'config.activation')}: unsupported activation {acts[i]!r} "
                                 f"(supported: {', '.join(ACTIVATIONS)})")
        stride = parse_scalar(stride_col[i]) if stride_col is not None else 2
        if not isinstance(stride, int) or stride < 1:
            raise ZooFormatError(f"{table.where(i, 'config.cnn_stride')}: expected a positive int, got {stride!r}")
        size = input_size
        if size is None:
            name = dataset_col[i].strip() if dataset_col is not None else ""
            dataset_names.add(name)
            size = INPUT_SIZES.get(name)
            if size is None:
                where = table.where(i, "config.dataset") if dataset_col is not None else str(mpath)
                raise ZooFormatError(f"{where}: cannot infer the input size from dataset {name or '<missing>'!r} "
                                     f"(known: {', '.join(INPUT_SIZES)}); pass --input-size")
        key = (act, size, stride, padding)
        if key not in archs:
            archs[key] = architecture(layers, act, in_ch, size, stride, padding)
        groups.setdefault((i // CHUNK_ROWS, key), []).append(i)

    skipped: dict[str, int] = {}
    chunks = [Chunk(f"{FORMAT}:rows{c * CHUNK_ROWS}-{(c + 1) * CHUNK_ROWS}:{'-'.join(map(str, key))}", len(rows),
                    _loader(weights, table, layers, archs[key], rows, (extra_cols, config_cols),
                            None if keep_nonfinite else skipped))
              for (c, key), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[1][0]))]
    sizes = sorted({key[1] for key in archs})
    dataset = {"name": "/".join(sorted(n for n in dataset_names if n)) or None,
               "input_shape": [in_ch, sizes[0], sizes[0]] if len(sizes) == 1 else None,
               "num_classes": num_classes, "grayscale": in_ch == 1}
    recipe = {"source": "Small CNN Zoo (Unterthiner et al. 2020)", "padding": padding,
              "architecture": f"{len(layers) - 1} x conv{layers[0][1].shape[0]}x{layers[0][1].shape[0]} "
                              f"({layers[0][1].shape[3]} ch) -> global avg pool -> dense {num_classes}",
              "hparam_columns": [c[len('config.'):] for c in config_cols]}
    models = {ids[i] for i in indices}
    return Source(FORMAT, src, f"small-cnn-zoo-{dataset['name'] or src.name}".replace("/", "-"), dataset,
                  recipe, "Converted from the Small CNN Zoo (weights.npy/layout.csv/metrics.csv).",
                  chunks, len(models), [], skipped)


NONFINITE = "NaN/inf weights (pass --keep-nonfinite to keep them)"


def _loader(weights: np.ndarray, table: Table, layers: list[tuple[str, _Var, _Var]],
            arch: tuple[dict[str, Any], list[str]], rows: list[int], columns: tuple[list[str], list[str]],
            skipped: dict[str, int] | None) -> Callable[[], Batch]:
    """A closure that reads ``rows`` of weights.npy and converts them to a Batch.

    With ``skipped`` given, rows with NaN/inf weights are dropped and counted there.
    """

    def load() -> Batch:
        desc, index = arch
        idx = np.asarray(rows)
        block = np.asarray(weights[idx[0]:idx[-1] + 1])[idx - idx[0]]
        if skipped is not None:
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                skipped[NONFINITE] = skipped.get(NONFINITE, 0) + int((~finite).sum())
                block, idx = block[finite], idx[finite]
        stacked: dict[str, torch.Tensor] = {}
        for (kind, kernel, bias), pos in zip(layers, index):
            stacked[f"{pos}.weight"] = _to_torch(block[:, kernel.start:kernel.end], kind, "kernel", kernel.shape)
            stacked[f"{pos}.bias"] = _to_torch(block[:, bias.start:bias.end], kind, "bias", bias.shape)
        meta = [_row(table, int(i), *columns) for i in idx]
        return Batch(desc, stacked, meta)

    return load
