"""A per-tensor subspace basis: the zoo mean plus the top-k principal directions of each tensor.

For tensor ``t`` with mean ``mu_t`` (``P_t``) and orthonormal directions
``V_t`` (``P_t x k_t``), a model's coefficients and reconstruction are::

    c_t = V_t^T (theta_t - mu_t)                 (project)
    theta_t' = mu_t + V_t c_t                     (reconstruct)

so a model inside the span (every model of the fitting stack at full rank
``k_t = N - 1``) round-trips exactly up to float rounding, and ``k_t = 0``
is the mean-only projection. On disk a basis is a folder: ``basis.safetensors``
(``<name>.mean`` and ``<name>.dirs`` per tensor) and ``basis.json`` (format
``"wsl.basis/1"``: tensor shapes and ranks, the source, the fit's settings
and the architecture when known).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsl.errors import CheckpointError, SpaceMismatchError, WslError
from wsl.io import atomic_save_safetensors, atomic_write, load_safetensors, read_json_object
from wsl.subspace.spectrum import covariance_directions, directions
from wsl.subspace.stacks import BLOCK, Stack

__all__ = ["BASIS_FORMAT", "Basis", "fit", "load_basis"]

BASIS_FORMAT = "wsl.basis/1"


@dataclass
class Basis:
    """Means and directions per tensor (see the module docstring)."""

    means: dict[str, torch.Tensor]
    dirs: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]]
    info: dict[str, Any] = field(default_factory=dict)

    def rank(self, name: str) -> int:
        return int(self.dirs[name].shape[1])

    @property
    def names(self) -> list[str]:
        return list(self.shapes)

    def _check(self, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
        missing = [n for n in self.shapes if n not in state_dict]
        if missing:
            raise SpaceMismatchError(f"{where}: no tensor {missing[0]!r}, which the basis has")
        for n, shape in self.shapes.items():
            if tuple(state_dict[n].shape) != shape:
                raise SpaceMismatchError(f"{where}: tensor {n!r} has shape {tuple(state_dict[n].shape)}, the basis "
                                         f"expects {shape}")

    def project(self, state_dict: Mapping[str, torch.Tensor], where: str = "model") -> dict[str, torch.Tensor]:
        """Coefficients ``{name: (k,)}`` of one model."""
        self._check(state_dict, where)
        out = {}
        for n in self.shapes:
            v = self.dirs[n]
            x = state_dict[n].reshape(-1).to(device=v.device, dtype=v.dtype)
            out[n] = v.T @ (x - self.means[n].to(v.dtype))
        return out

    def reconstruct(self, coefficients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state_dict a set of coefficients stands for (float32; missing tensors: the mean)."""
        out = {}
        for n, shape in self.shapes.items():
            v, mu = self.dirs[n], self.means[n]
            c = coefficients.get(n)
            flat = mu.to(v.dtype) if c is None or v.shape[1] == 0 else mu.to(v.dtype) + v @ c.to(v.dtype)
            out[n] = flat.reshape(shape).to(torch.float32)
        return out

    def roundtrip(self, state_dict: Mapping[str, torch.Tensor], where: str = "model") -> dict[str, torch.Tensor]:
        """``reconstruct(project(state_dict))``, with the model's non-basis tensors carried over unchanged."""
        out = dict(state_dict)
        out.update(self.reconstruct(self.project(state_dict, where)))
        return out

    def truncate(self, rank: int | Mapping[str, int]) -> "Basis":
        """The same basis keeping the first ``rank`` directions (one number, or one per tensor)."""
        ks = {n: (rank[n] if isinstance(rank, Mapping) else int(rank)) for n in self.shapes}
        return Basis(dict(self.means), {n: d[:, :max(0, ks[n])] for n, d in self.dirs.items()}, dict(self.shapes),
                     {**self.info, "truncated": True})

    def numel(self) -> int:
        """Stored numbers: means plus directions."""
        return sum(int(m.numel()) + int(d.numel()) for m, d in zip(self.means.values(), self.dirs.values()))

    # -------------------------------------------------------------------- files
    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``basis.safetensors`` and ``basis.json`` into ``folder`` (atomically, tensors first)."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for n in self.shapes:
            tensors[f"{n}.mean"] = self.means[n].to(torch.float32).contiguous().cpu()
            tensors[f"{n}.dirs"] = self.dirs[n].to(torch.float32).contiguous().cpu()
        atomic_save_safetensors(tensors, root / "basis.safetensors", metadata={"format": BASIS_FORMAT})
        card = {"format": BASIS_FORMAT, **self.info,
                "tensors": {n: {"shape": list(s), "rank": self.rank(n)} for n, s in self.shapes.items()}}
        with atomic_write(root / "basis.json") as tmp:
            tmp.write_text(json.dumps(card, indent=1) + "\n")
        return root


def load_basis(folder: str | os.PathLike[str]) -> Basis:
    """Read a basis written by :meth:`Basis.save` (validated: typed errors on a bad or mismatched folder)."""
    root = Path(folder)
    card = read_json_object(root / "basis.json", what="basis card")
    if card.get("format") != BASIS_FORMAT:
        raise CheckpointError(f"{root / 'basis.json'}: format {card.get('format')!r}, expected {BASIS_FORMAT!r}")
    entries = card.get("tensors")
    if not isinstance(entries, dict) or not entries:
        raise CheckpointError(f"{root / 'basis.json'}: no 'tensors' mapping")
    tensors = load_safetensors(root / "basis.safetensors")
    means, dirs, shapes = {}, {}, {}
    for n, e in entries.items():
        shape = tuple(int(s) for s in e["shape"])
        p = 1
        for s in shape:
            p *= s
        mu, d = tensors.get(f"{n}.mean"), tensors.get(f"{n}.dirs")
        if mu is None or d is None or tuple(mu.shape) != (p,) or d.ndim != 2 or d.shape[0] != p \
                or d.shape[1] != int(e["rank"]):
            raise CheckpointError(f"{root / 'basis.safetensors'}: tensor {n!r} is missing or does not match the card "
                                  f"(shape {list(shape)}, rank {e['rank']})")
        means[n], dirs[n], shapes[n] = mu, d, shape
    info = {k: v for k, v in card.items() if k not in ("format", "tensors")}
    return Basis(means, dirs, shapes, info)


def fit(stack: Stack, *, rank: int | None = None, variance: float | None = None,
        models: Sequence[int] | None = None, block: int = BLOCK, progress: bool = False,
        info: Mapping[str, Any] | None = None) -> Basis:
    """Fit a basis on ``stack``: ``rank`` directions per tensor, or as many as explain ``variance`` of each.

    Exactly one of ``rank`` (>= 0) and ``variance`` (in (0, 1]) is given.
    Tensors with fewer models than ``rank + 1`` keep what the stack spans.
    """
    from tqdm.auto import tqdm

    if (rank is None) == (variance is None):
        raise WslError("give exactly one of rank= and variance=")
    if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 0):
        raise WslError(f"rank must be an int >= 0, got {rank!r}")
    if variance is not None and not 0 < float(variance) <= 1:
        raise WslError(f"variance must be in (0, 1], got {variance}")
    means, dirs, shapes, ranks = {}, {}, {}, {}
    count = len(stack) if models is None else len(models)
    for n in tqdm(stack.names, desc="fit basis", unit="tensor", disable=not progress):
        if count > stack.numel(n):  # more models than entries: the P x P covariance is the smaller problem
            mu, v = covariance_directions(stack, n, rank=rank, variance=variance, models=models)
        elif variance is not None:
            from wsl.subspace.spectrum import gram, spectrum_from_values

            g = gram(stack, n, models=models, block=block)
            sp, _ = spectrum_from_values(n, stack.shapes[n], len(stack) if models is None else len(models), g)
            k = sp.rank_for(float(variance))
            _, mu, v = directions(stack, n, k, models=models, block=block, g=g)
        else:
            _, mu, v = directions(stack, n, int(rank), models=models, block=block)
        means[n], dirs[n], shapes[n], ranks[n] = mu.to(torch.float32), v.to(torch.float32), stack.shapes[n], v.shape[1]
    meta = {"n_models": len(stack) if models is None else len(models), "rank": rank, "variance": variance,
            **(dict(info) if info else {})}
    return Basis(means, dirs, shapes, meta)
