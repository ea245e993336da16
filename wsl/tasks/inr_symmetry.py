"""Sign symmetries of networks with odd activations (SIRENs), for augmentation.

A hidden unit ``i`` of layer ``h = sigma(W x + b)`` followed by ``y = W' h + b'``
can change sign when ``sigma`` is odd (``sin(-z) = -sin(z)``, ``tanh`` too)::

    W[i, :] -> -W[i, :],   b[i] -> -b[i],   W'[:, i] -> -W'[:, i]      leaves y unchanged.

So next to the permutations ``P`` of every hidden group the network has the
sign flips ``D = diag(s)``, ``s in {-1, +1}^n``, acting on every tensor axis
that the group indexes: ``T[..., i, ..., j, ...] -> s_g[i] s_h[j] T[...]``.

The :class:`~wsl.space.WeightSpace` does not expose these symmetries: it
records which unit axis belongs to which group, not whether an activation is
odd. This module derives them from the architecture description: a
sequential stack of ``linear`` layers whose activations are all odd
(``sine``, ``tanh``; ``identity`` and ``dropout`` pass signs through). Anything
else is refused with :class:`~wsl.tasks.inr.INRError` rather than flipped
wrongly. No meta-model in ``wsl`` is sign-*equivariant* (ScaleGMN is); sign
flips serve as data augmentation, as random permutations do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wsl.tasks.inr import INRError

__all__ = ["ODD_ACTIVATIONS", "flip_signs", "random_signs", "sign_groups"]

ODD_ACTIVATIONS = ("sine", "tanh")
_PASS = ("identity", "dropout")


def sign_groups(space: Any, description: Mapping[str, Any]) -> list[int]:
    """The permutable groups whose units may flip sign (all hidden groups of an odd-activation MLP).

    Raises :class:`INRError` when the description is not a sequential stack of
    linear layers and odd activations, or a tensor axis is not one plain group.
    """
    layers = description.get("layers") if isinstance(description, Mapping) else None
    if description.get("kind") != "sequential" or not isinstance(layers, list):
        raise INRError("sign flips need a sequential architecture description (kind 'sequential')")
    acts = [spec.get("type") for spec in layers if spec.get("type") != "linear"]
    bad = sorted({a for a in acts if a not in ODD_ACTIVATIONS + _PASS})
    if bad:
        raise INRError(f"sign flips need odd activations ({', '.join(ODD_ACTIVATIONS)}) between linear layers; "
                       f"this network has {bad}: turn augment.sign_flip off")
    if not any(a in ODD_ACTIVATIONS for a in acts):
        raise INRError("sign flips need at least one odd activation (sine, tanh); turn augment.sign_flip off")
    for name, t in space.tensors.items():
        for axis in t.axes:
            if len(axis) != 1 or len(axis[0]) != 1:
                raise INRError(f"sign flips: axis of tensor {name} is not one plain unit group")
    return [g.id for g in space.groups if not g.fixed]


def random_signs(space: Any, groups: list[int], generator: torch.Generator | None,
                 batch: int) -> dict[int, torch.Tensor]:
    """Independent uniform signs ``(batch, size)`` in ``{-1, +1}`` for every group in ``groups`` (CPU)."""
    out = {}
    for g in groups:
        size = space.groups[g].size
        out[g] = torch.randint(0, 2, (batch, size), generator=generator).float() * 2 - 1
    return out


def flip_signs(space: Any, stacked: Mapping[str, torch.Tensor],
               signs: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply per-model signs ``{group: (N, size)}`` to a stacked state_dict ``{name: (N, *shape)}``.

    Tensor ``T`` is multiplied, along every axis tagged with a group in
    ``signs``, by that group's signs (see the module docstring).
    """
    out = dict(stacked)
    for name, t in stacked.items():
        spec = space.tensors.get(name)
        if spec is None or not t.is_floating_point():
            continue
        factor = None
        for a, axis in enumerate(spec.axes):
            g = axis[0][0][0]
            if g is None or g not in signs:
                continue
            s = signs[g].to(device=t.device, dtype=t.dtype)
            shape = [s.shape[0]] + [1] * (t.dim() - 1)
            shape[a + 1] = s.shape[1]
            s = s.reshape(shape)
            factor = s if factor is None else factor * s
        if factor is not None:
            out[name] = t * factor
    return out
