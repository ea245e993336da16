"""SIREN zoos: one implicit neural representation per image (or signal), many fitted at once.

Each network maps a sample coordinate in ``[-1, 1]^d`` to the sample's value:
``Linear(d, h) -> sin(w0 .) -> ... -> Linear(h, 1)``, built from a
``"wsl.arch/1"`` description with ``sine`` layers (w0 = 30). Data sets:

* ``digits`` (``d = 2``) -- the scikit-learn digits upsampled to ``R x R``
  (bilinear, see :func:`wsl.zoo.data.digit_images`) with values in ``[-1, 1]``;
  coordinates ``(y, x)`` of the pixel centres, row-major.
* ``mnist1d`` (``d = 1``) -- the 5,000 MNIST-1D sequences of length 40
  (:func:`wsl.zoo.data.mnist1d_signals`: the generator's train then test
  sequences, generated offline), divided by the largest ``|x|`` of the whole
  set so that values lie in ``[-1, 1]``; coordinates ``t`` of the 40 sample
  centres.

Standard SIREN initialisation: first layer weights ``U(-1/fan_in, 1/fan_in)``,
later layers ``U(-sqrt(6/fan_in)/w0, sqrt(6/fan_in)/w0)``, biases
``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (the ``nn.Linear`` default).
Fitting: full-batch Adam on the mean squared error over all samples;
one step is one pass over the image, so a row's ``epoch`` is its step count.
Every image gets ``fits_per_image`` fits with different seeds (init only).
``training.init: independent`` (the default) draws each fit's init from its own
seed; ``shared`` gives fit ``j`` of *every* image the same init (seed
``(generation.seed, j)``), the setting in which weights of different images are
directly comparable (the ablation of the INR classification benchmark);
all fits of an image share its split (assigned from ``image<i>``), their
``model_id`` is ``img<i>-fit<j>``. Rows record ``label`` (the class),
``image`` (the image index), ``train_loss`` (MSE) and
``psnr = 10 log10(2^2 / MSE)`` (peak-to-peak range 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wsl.errors import ConfigError
from wsl.zoo.recipes import Recipe

SIREN_DATASETS = ("digits", "mnist1d")
"""Data sets a SIREN recipe can fit."""


@dataclass(frozen=True)
class ImageData:
    """Target images ``(N, *shape)``, labels ``(N,)`` and the shared coordinates ``(prod(shape), d)``."""

    images: torch.Tensor
    labels: torch.Tensor
    coords: torch.Tensor
    resolution: int
    name: str = "digits"

    @property
    def num_images(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one image (``(R, R)`` for digits, ``(40,)`` for MNIST-1D)."""
        return tuple(int(s) for s in self.images.shape[1:])

    @classmethod
    def from_recipe(cls, recipe: Recipe) -> "ImageData":
        """The recipe's data set (one of :data:`SIREN_DATASETS`)."""
        from wsl.zoo.data import coordinate_grid, digit_images, grid_coordinates, mnist1d_signals

        ds = recipe.dataset
        if ds["name"] == "mnist1d":
            if "resolution" in ds:
                raise ConfigError(f"{recipe.source}: dataset.resolution: MNIST-1D signals have a fixed length (40); "
                                  "remove the field")
            signals, labels, _ = mnist1d_signals()
            return cls(signals, labels, grid_coordinates(tuple(signals.shape[1:])), int(signals.shape[1]), "mnist1d")
        if ds["name"] != "digits":
            raise ConfigError(f"{recipe.source}: dataset.name: SIREN zoos support {', '.join(SIREN_DATASETS)}, "
                              f"got {ds['name']!r}")
        res = ds.get("resolution", 16)
        images, labels = digit_images(res)
        return cls(images, labels, coordinate_grid(res), res)

    def card(self) -> dict[str, Any]:
        """JSON description for the zoo card."""
        split = "by image: every fit of an image shares the split assigned to 'image<i>'"
        if self.name == "mnist1d":
            from wsl.zoo.data import mnist1d_signals

            scale = mnist1d_signals()[2]
            return {"name": "mnist1d", "task": "implicit neural representation", "num_images": self.num_images,
                    "resolution": list(self.shape), "input_shape": [1], "output_shape": [1], "num_classes": 10,
                    "source": "mnist1d.data.make_dataset(get_dataset_args()) (seed 42, generated offline)",
                    "preprocessing": f"the generator's 4000 train then 1000 test sequences, x / {scale:.6g} "
                                     "(the largest |x| of the set), values in [-1, 1]",
                    "value_scale": scale, "coordinates": "sample centres t in [-1, 1]", "split": split}
        r = self.resolution
        return {"name": "digits", "task": "implicit neural representation", "num_images": self.num_images,
                "resolution": [r, r], "input_shape": [2], "output_shape": [1], "num_classes": 10,
                "source": "sklearn.datasets.load_digits",
                "preprocessing": f"x / 16, bilinear upsampling 8x8 -> {r}x{r} (align_corners=False), * 2 - 1",
                "coordinates": "pixel centres (y, x) in [-1, 1], row-major", "split": split}


def siren_description(hidden: Sequence[int], w0: float = 30.0, in_features: int = 2) -> dict[str, Any]:
    """``"wsl.arch/1"`` description of a SIREN ``in_features -> hidden... -> 1``."""
    from wsl.archs.describe import validate

    if not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise ConfigError(f"architecture.hidden: expected a non-empty list of positive ints, got {hidden!r}")
    layers: list[dict[str, Any]] = []
    for h in hidden:
        layers += [{"type": "linear", "out_features": int(h)}, {"type": "sine", "w0": float(w0)}]
    layers.append({"type": "linear", "out_features": 1})
    return validate({"format": "wsl.arch/1", "kind": "sequential", "input_shape": [int(in_features)],
                     "layers": layers})


def siren_init(net: Any, seeds: Sequence[int], w0: float) -> torch.Tensor:
    """Flat initial parameters ``(n, P)`` with the standard SIREN scheme (see module docstring)."""
    rows = torch.zeros(len(seeds), net.num_params)
    keys = list(net.entries)
    for i, seed in enumerate(seeds):
        g = torch.Generator().manual_seed(int(seed))
        for li, key in enumerate(k for k in keys if net.entries[k].role == "weight"):
            e = net.entries[key]
            bound = 1.0 / e.fan_in if li == 0 else math.sqrt(6.0 / e.fan_in) / w0
            rows[i, e.offset:e.offset + e.numel] = (torch.rand(e.numel, generator=g) * 2 - 1) * bound
            b = net.entries.get(key[: -len("weight")] + "bias")
            if b is not None:
                rows[i, b.offset:b.offset + b.numel] = (torch.rand(b.numel, generator=g) * 2 - 1) / math.sqrt(e.fan_in)
    return rows


def psnr(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for signals in ``[-1, 1]`` (peak-to-peak 2)."""
    return 10.0 * torch.log10(4.0 / mse.clamp(min=1e-12))


def fit(net: Any, init: torch.Tensor, coords: torch.Tensor, targets: torch.Tensor, *, steps: int, lr: float,
        checkpoints: Sequence[int], device: torch.device | str = "cpu",
        progress: Callable[[float], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``V`` SIRENs (rows of ``init``) to ``targets`` ``(V, R*R)`` with full-batch Adam.

    Returns parameters ``(V, E, P)`` and MSE ``(V, E)`` at the ``checkpoints`` steps.
    """
    from wsl.zoo.optim import VecOptimizer
    from wsl.zoo.vectorized import Ctx

    v = init.shape[0]
    ckpts = sorted(set(int(c) for c in checkpoints))
    params = init.to(device=device, dtype=torch.float32).clone()
    x = coords.to(device).unsqueeze(0).expand(v, *coords.shape)
    y = targets.to(device)
    opt = VecOptimizer(["adam"] * v, [lr] * v, [0.0] * v, net.num_params, device=device)
    ctx = Ctx(v, True)
    snaps = torch.zeros(v, len(ckpts), net.num_params)
    mses = torch.zeros(v, len(ckpts))

    def snapshot(ci: int) -> None:
        with torch.no_grad():
            mses[:, ci] = (net.forward(params, {}, x, ctx).squeeze(-1) - y).square().mean(1).cpu()
        snaps[:, ci] = params.cpu()

    for t in range(steps + 1):
        if t in ckpts:
            snapshot(ckpts.index(t))
        if t == steps:
            break
        p = params.detach().requires_grad_(True)
        loss = (net.forward(p, {}, x, ctx).squeeze(-1) - y).square().mean(1).sum()
        (grad,) = torch.autograd.grad(loss, p)
        opt.step(params, grad)
        if progress is not None and (t + 1) % 25 == 0:
            progress(25 / steps)
    if progress is not None:
        progress((steps % 25) / steps)
    return snaps, mses


Append = tuple[dict[str, Any], dict[str, torch.Tensor], list[dict[str, Any]]]  # (arch, stacked, rows)


def fit_chunk(recipe: Recipe, data: ImageData, images: list[int], chunk: int, device: torch.device,
              splits: dict[str, Any], progress: Callable[[float], None]) -> list[Append]:
    """Fit all fits of ``images``; returns one ``(arch, stacked, rows)`` append.

    ``progress`` is told how many *images* are done (their fits included): the generator's bar counts images."""
    from wsl.zoo.format import assign_split
    from wsl.zoo.vectorized import VecNet

    a, tr = recipe.architecture, recipe.training
    w0 = float(a.get("w0", 30.0))
    desc = siren_description(a.get("hidden", [32, 32]), w0, int(data.coords.shape[1]))
    net = VecNet(desc)
    fits = int(tr.get("fits_per_image", 2))
    seed = int(recipe.generation.get("seed", 0))
    jobs = [(i, j) for i in images for j in range(fits)]
    shared = tr.get("init", "independent") == "shared"
    seeds = [int(np.random.SeedSequence([seed, j] if shared else [seed, i, j]).generate_state(1, np.uint32)[0])
             for i, j in jobs]
    targets = torch.stack([data.images[i].reshape(-1) for i, _ in jobs])
    steps = int(tr["steps"])
    snaps, mses = fit(net, siren_init(net, seeds, w0), data.coords, targets, steps=steps, lr=float(tr.get("lr", 1e-3)),
                      checkpoints=tr.get("checkpoints", [steps]), device=device,
                      progress=lambda f: progress(f * len(images)))
    ckpts = sorted(set(int(c) for c in tr.get("checkpoints", [steps])))
    quality = psnr(mses)
    rows = []
    for v, ((i, j), s) in enumerate(zip(jobs, seeds)):
        split = assign_split(f"image{i:04d}", splits)
        for ci, step in enumerate(ckpts):
            mse = float(mses[v, ci])
            rows.append({"model_id": f"img{i:04d}-fit{j}", "epoch": step, "seed": s, "split": split,
                         "hparams": {"image": i, "fit": j, "lr": float(tr.get("lr", 1e-3)), "steps": steps,
                                     "w0": w0, "hidden": list(a.get("hidden", [32, 32])), "optimizer": "adam",
                                     "init": "shared" if shared else "independent"},
                         "train_loss": mse if math.isfinite(mse) else None, "psnr": float(quality[v, ci]),
                         "label": int(data.labels[i]), "image": i})
    stacked = net.unflatten(snaps.reshape(len(jobs) * len(ckpts), -1))
    return [(desc, stacked, rows)]
