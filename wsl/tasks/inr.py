"""Implicit neural representations (INRs): rendering networks back into images and signals.

An INR is a network ``f: [-1, 1]^d -> R`` fitted to one image (``d = 2``) or
signal (``d = 1``); its *render* on a grid of shape ``S = (s_1, ..., s_d)`` is
``f`` evaluated at the sample centres of that grid (row-major)::

    c_a(i) = (i + 1/2) / s_a * 2 - 1,     render(f)[i_1, ..., i_d] = f(c_1(i_1), ..., c_d(i_d))

exactly the coordinates the SIREN zoos were fitted on (:func:`wsl.zoo.data.grid_coordinates`),
so the render of a zoo INR is its training image up to the recorded fit error.

* :func:`render` -- one module, any grid shape.
* :class:`Renderer` -- ``N`` stacked INRs of one architecture rendered at once
  (a vectorized functional forward, differentiable in the weights: the editing
  task trains through it).
* :func:`zoo_shape` -- the grid a zoo's INRs were fitted on (its card's ``dataset.resolution``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from wsl.errors import WslError

__all__ = ["INRError", "Renderer", "check_inr_zoo", "render", "zoo_shape"]


class INRError(WslError):
    """An implicit-neural-representation input that cannot be rendered or used by an INR task."""


def _shape(shape: Sequence[int], where: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise INRError(f"{where}: shape must be a sequence of positive ints, got {shape!r}") from None
    if not dims or any(s < 1 for s in dims):
        raise INRError(f"{where}: shape must be a non-empty sequence of positive ints, got {shape!r}")
    return dims


def _in_features(module: nn.Module) -> int | None:
    first = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    return None if first is None else int(first.in_features)


@torch.no_grad()
def render(module: nn.Module, shape: Sequence[int], *, batch_size: int = 65536) -> torch.Tensor:
    """The values of INR ``module`` on the sample centres of a grid of ``shape`` -> tensor of ``shape``.

    ``len(shape)`` must equal the network's input width (2 for images, 1 for
    signals); a network with ``C > 1`` outputs gives ``(*shape, C)``.
    """
    from wsl.zoo.data import grid_coordinates

    dims = _shape(shape, "render")
    d = _in_features(module)
    if d is not None and d != len(dims):
        raise INRError(f"render: the network reads {d}-dimensional coordinates, the grid {dims} has {len(dims)}; "
                       f"give a shape with {d} sizes")
    ref = next(module.parameters(), None)
    coords = grid_coordinates(dims)
    if ref is not None:
        coords = coords.to(device=ref.device, dtype=ref.dtype)
    was_training = module.training
    module.eval()
    try:
        out = torch.cat([module(coords[lo:lo + batch_size]) for lo in range(0, coords.shape[0], batch_size)])
    finally:
        module.train(was_training)
    if out.dim() != 2:
        raise INRError(f"render: expected outputs (points, channels), got shape {tuple(out.shape)}")
    return out.reshape(*dims) if out.shape[1] == 1 else out.reshape(*dims, out.shape[1])


class Renderer:
    """Render ``N`` stacked INRs of one sequential architecture at once: ``(N, *shape)``.

    ``Renderer(description, shape)`` with a ``"wsl.arch/1"`` description (the
    zoo's); ``renderer(stacked)`` evaluates every network on the grid's sample
    centres with one batched matrix product per layer
    (:class:`wsl.zoo.vectorized.VecNet`); gradients flow to the weights.
    """

    def __init__(self, description: Mapping[str, Any], shape: Sequence[int]) -> None:
        from wsl.zoo.data import grid_coordinates
        from wsl.zoo.vectorized import VecNet

        self.shape = _shape(shape, "Renderer")
        try:
            self.net = VecNet(dict(description))
        except WslError as exc:
            raise INRError(f"Renderer: cannot evaluate this architecture functionally: {exc}") from None
        if tuple(self.net.input_shape) != (len(self.shape),):
            raise INRError(f"Renderer: the network reads inputs of shape {tuple(self.net.input_shape)}, the grid "
                           f"{self.shape} gives {len(self.shape)}-dimensional coordinates")
        self.coords = grid_coordinates(self.shape)
        self.keys = [k for k, e in self.net.entries.items() if e.role != "buffer"]

    def __call__(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(N, *shape)`` renders of the stacked state_dict ``{name: (N, *tensor shape)}``."""
        from wsl.zoo.vectorized import Ctx

        missing = [k for k in self.keys if k not in stacked]
        if missing:
            raise INRError(f"Renderer: stacked weights lack {missing[:3]} (expected {self.keys})")
        flat = self.net.flatten({k: stacked[k] for k in self.keys})
        n = flat.shape[0]
        coords = self.coords.to(device=flat.device, dtype=flat.dtype)
        out = self.net.forward(flat, {}, coords, Ctx(n, False), shared=True)
        if out.shape[-1] != 1:
            raise INRError(f"Renderer: expected one output channel, the network has {out.shape[-1]}")
        return out.reshape(n, *self.shape)


def zoo_shape(zoo: Any) -> tuple[int, ...]:
    """The grid shape a zoo's INRs were fitted on (card ``dataset.resolution``, e.g. ``[16, 16]`` or ``[40]``)."""
    ds = zoo.card.get("dataset", {}) if hasattr(zoo, "card") else {}
    res = ds.get("resolution") if isinstance(ds, dict) else None
    if isinstance(res, int) and not isinstance(res, bool):
        res = [res, res]
    if not isinstance(res, list) or not res:
        raise INRError(f"{getattr(zoo, 'root', 'zoo')}: zoo.json dataset.resolution is missing: not an INR zoo "
                       "(generate one with `wsl zoo generate zoos/digits-siren.yaml -o DIR`)")
    return _shape(res, f"{getattr(zoo, 'root', 'zoo')}: zoo.json dataset.resolution")


def check_inr_zoo(view: Any, where: str) -> None:
    """Raise :class:`INRError` unless every row of ``view`` has an integer ``image`` and ``label`` field."""
    import numpy as np

    from wsl.errors import ZooFormatError

    for field in ("image", "label"):
        try:
            col = view.column(field)
        except ZooFormatError:
            col = None
        if col is None or col.dtype != np.int64:
            raise INRError(f"{where}: rows need an integer '{field}' field: not an INR zoo written by "
                           "`wsl zoo generate` (task siren)")
