"""Offline data sets for zoo generation.

Nothing here touches the network:

* ``digits`` -- :func:`sklearn.datasets.load_digits` (1,797 8x8 images, 10
  classes, shipped with scikit-learn). Pixels ``x / 16 * 2 - 1`` in
  ``[-1, 1]``, shape ``(1, 8, 8)``. Test split: samples whose index
  ``% 5 == 0`` (360 test, 1,437 train).
* ``mnist1d`` -- the MNIST-1D benchmark generated locally with
  ``mnist1d.data.make_dataset(mnist1d.data.get_dataset_args())`` (its default
  arguments, seed 42; ``get_dataset`` would download). 4,000 train and 1,000
  test sequences of length 40 (the package's own 80/20 split), already
  standardised by the generator, shape ``(40,)``. The arrays are cached
  atomically under ``~/.cache/wsl/`` (or ``$WSL_CACHE_DIR``).
* :func:`digit_images` -- the digits as images for implicit neural
  representations: ``x / 16`` upsampled to ``R x R`` with bilinear
  interpolation (``align_corners=False``), then mapped to ``[-1, 1]``.
* :func:`mnist1d_signals` -- the 5,000 MNIST-1D sequences (train then test)
  as signals for 1-D implicit neural representations, divided by the
  largest ``|x|`` of the set (values in ``[-1, 1]``).
* :func:`grid_coordinates` -- sample-centre coordinates in ``[-1, 1]^d`` of
  any grid shape (:func:`coordinate_grid` is its square 2-D case).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsl.errors import ConfigError, WslError

DATASETS: tuple[str, ...] = ("digits", "mnist1d")
"""Names accepted by :func:`load_dataset`."""


@dataclass(frozen=True)
class Dataset:
    """A classification data set with a fixed train/test split (CPU tensors)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.x_train.shape[1:])

    def card(self) -> dict[str, Any]:
        """JSON description for the zoo card's ``dataset`` field."""
        return {"name": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "num_train": int(self.x_train.shape[0]), "num_test": int(self.x_test.shape[0]), **self.info}


def cache_dir() -> Path:
    """Directory for generated data (``$WSL_CACHE_DIR`` or ``~/.cache/wsl``)."""
    env = os.environ.get("WSL_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "wsl"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return np.asarray(bunch.data, dtype=np.float32), np.asarray(bunch.target, dtype=np.int64)


def digits() -> Dataset:
    """The scikit-learn digits, ``(1, 8, 8)`` in ``[-1, 1]``, test = index % 5 == 0."""
    data, target = _digits_arrays()
    x = torch.from_numpy(data / 16.0 * 2.0 - 1.0).float().reshape(-1, 1, 8, 8)
    y = torch.from_numpy(target)
    test = torch.arange(len(y)) % 5 == 0
    return Dataset("digits", x[~test].contiguous(), y[~test].contiguous(), x[test].contiguous(),
                   y[test].contiguous(), 10,
                   {"source": "sklearn.datasets.load_digits", "preprocessing": "x / 16 * 2 - 1",
                    "split": "test = samples whose index % 5 == 0"})


def _mnist1d_arrays() -> dict[str, np.ndarray]:
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise WslError("the mnist1d data set needs the 'mnist1d' package (pip install mnist1d)") from None
    args = get_dataset_args()
    spec = {k: v for k, v in sorted(vars(args).items()) if isinstance(v, (int, float, str, bool, type(None)))}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    names = ("x", "y", "x_test", "y_test")
    if path.is_file():
        try:
            with np.load(path) as z:
                arrays = {n: z[n] for n in names}
            if arrays["x"].shape[0] == arrays["y"].shape[0] and arrays["x_test"].shape[0] == arrays["y_test"].shape[0]:
                return arrays
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is regenerated below
    made = make_dataset(args)
    arrays = {n: np.asarray(made[n]) for n in names}
    try:
        from wsl.io import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except (OSError, WslError):
        pass  # caching is an optimisation; an unwritable cache directory is not an error
    return arrays


def mnist1d() -> Dataset:
    """MNIST-1D generated offline with the package's default arguments (4,000/1,000 split)."""
    a = _mnist1d_arrays()
    return Dataset("mnist1d", torch.from_numpy(a["x"]).float(), torch.from_numpy(a["y"]).long(),
                   torch.from_numpy(a["x_test"]).float(), torch.from_numpy(a["y_test"]).long(), 10,
                   {"source": "mnist1d.data.make_dataset(get_dataset_args()) (seed 42, generated offline)",
                    "preprocessing": "none (the generator standardises the sequences)",
                    "split": "the generator's own split: first 4000 sequences train, last 1000 test"})


def load_dataset(name: str) -> Dataset:
    """A classification data set by name (one of :data:`DATASETS`)."""
    if name == "digits":
        return digits()
    if name == "mnist1d":
        return mnist1d()
    raise ConfigError(f"dataset.name: unknown data set {name!r}; valid: {', '.join(DATASETS)}")


def digit_images(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images (N, R, R) in [-1, 1], labels (N,))`` of the scikit-learn digits."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or not 2 <= resolution <= 256:
        raise ConfigError(f"dataset.resolution: expected an int in [2, 256], got {resolution!r}")
    data, target = _digits_arrays()
    x = torch.from_numpy(data / 16.0).float().reshape(-1, 1, 8, 8)
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (x[:, 0] * 2.0 - 1.0).contiguous(), torch.from_numpy(target)


def mnist1d_signals() -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(signals (5000, 40) in [-1, 1], labels (5000,), scale)``: MNIST-1D train then test, ``x / scale``.

    ``scale`` is the largest ``|x|`` over all 5,000 sequences (generated offline, see :func:`mnist1d`).
    """
    a = _mnist1d_arrays()
    x = np.concatenate([a["x"], a["x_test"]]).astype(np.float64)
    y = np.concatenate([a["y"], a["y_test"]]).astype(np.int64)
    scale = float(np.abs(x).max())
    return torch.from_numpy(x / scale).float(), torch.from_numpy(y), scale


def grid_coordinates(shape: Sequence[int]) -> torch.Tensor:
    """``(prod(shape), d)`` sample-centre coordinates in ``[-1, 1]`` of a ``d``-dimensional grid, row-major.

    Axis ``a`` of size ``n`` has centres ``(i + 0.5) / n * 2 - 1``; the columns
    follow the axes' order (``(y, x)`` for images).
    """
    dims = tuple(int(n) for n in shape)
    if not dims or any(n < 1 for n in dims):
        raise ConfigError(f"grid_coordinates: expected a non-empty shape of positive sizes, got {tuple(shape)!r}")
    lins = [(torch.arange(n, dtype=torch.float32) + 0.5) / n * 2.0 - 1.0 for n in dims]
    mesh = torch.meshgrid(*lins, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def coordinate_grid(resolution: int) -> torch.Tensor:
    """``(R*R, 2)`` pixel-centre coordinates in ``[-1, 1]``, row-major ``(y, x)``."""
    return grid_coordinates((resolution, resolution))


def epoch_batches(subsets: Sequence[torch.Tensor], seeds: Sequence[int], batch_size: int,
                  epochs: int) -> tuple[torch.Tensor, list[int]]:
    """Every model's batches: ``(n, epochs * max_steps, batch)`` train indices (-1 = empty slot).

    Model ``m`` shuffles its own training subset ``subsets[m]`` afresh each
    epoch (generator seeded with ``seeds[m]``) and cuts it into
    ``s_m = ceil(len / batch)`` batches, the last one possibly partial; its
    epochs follow each other, so its step ``t`` is batch ``t % s_m`` of epoch
    ``t // s_m``. Also returns ``s_m`` per model.
    """
    steps = [max(1, math.ceil(len(s) / batch_size)) for s in subsets]
    out = torch.full((len(subsets), epochs * max(steps, default=1), batch_size), -1, dtype=torch.int64)
    for i, (subset, s) in enumerate(zip(subsets, steps)):
        g = torch.Generator().manual_seed(int(seeds[i]))
        n = len(subset)
        order = torch.full((s * batch_size,), -1, dtype=torch.int64)
        for e in range(epochs):
            order[:n] = subset[torch.randperm(n, generator=g)]
            out[i, e * s:(e + 1) * s] = order.view(s, batch_size)
    return out, steps
