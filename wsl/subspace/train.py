"""Training in a subspace: only k coefficients per tensor are free.

For each tensor ``t`` of a module, an offset ``o_t`` (``P_t``) and
orthonormal directions ``V_t`` (``P_t x k_t``) fix an affine subspace; the
trainable coefficients ``c_t`` (``k_t``, zero at the start) give the tensor::

    theta_t(c) = o_t + V_t c_t,        dL/dc_t = V_t^T dL/dtheta_t

The forward pass is ``torch.func.functional_call(module, theta(c), x)``, so
gradients reach ``c`` only; the module's own parameters are frozen and never
read for the tensors the subspace covers (tensors it does not cover keep
their values and stay frozen).

Three subspaces, at equal ``k`` per tensor:

* :meth:`SubspaceModel.from_basis` -- a zoo basis: ``o = mu`` (the zoo mean),
  ``V`` its top principal directions (the Universal Subspace setting);
* :meth:`SubspaceModel.random` with ``offsets`` -- the same offset with random
  orthonormal directions (is it the directions, or only the offset?);
* :meth:`SubspaceModel.random` with the module's own init as offset -- the
  intrinsic-dimension setting of Li et al. (2018): ``o = theta_0`` a fresh
  random initialisation, ``V`` random.

With ``k_t = P_t`` for every tensor ``V_t`` is square orthogonal and plain SGD
on ``c`` takes exactly the steps of SGD on ``theta``
(``theta <- theta - lr V V^T g = theta - lr g``): full-rank subspace training
is full training, which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from wsl.errors import ConfigError, SpaceMismatchError

__all__ = ["SubspaceModel", "fit_module", "random_directions"]


def random_directions(p: int, k: int, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(p, min(k, p))`` orthonormal columns spanning a uniformly random subspace (QR of a Gaussian matrix)."""
    k = max(0, min(int(k), int(p)))
    if k == 0:
        return torch.zeros((p, 0), dtype=dtype)
    g = torch.randn((p, k), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.where(torch.diagonal(r) < 0, -1.0, 1.0)
    return q.to(dtype)


class SubspaceModel(nn.Module):
    """A module whose covered tensors are ``offset + V c`` with only ``c`` trainable (see the module docstring)."""

    def __init__(self, module: nn.Module, offsets: Mapping[str, torch.Tensor], dirs: Mapping[str, torch.Tensor],
                 info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        own = dict(module.named_parameters())
        if set(offsets) != set(dirs):
            raise ConfigError("subspace model: offsets and directions must name the same tensors")
        if not offsets:
            raise ConfigError("subspace model: no tensors to train (empty offsets)")
        for n in offsets:
            if n not in own:
                raise SpaceMismatchError(f"subspace model: the module has no parameter {n!r} (it has "
                                         f"{len(own)}: {', '.join(list(own)[:4])}...)")
            p = own[n].numel()
            o, v = offsets[n], dirs[n]
            if o.numel() != p or v.ndim != 2 or v.shape[0] != p:
                raise SpaceMismatchError(f"subspace model: tensor {n!r} has {p} entries; offset has {o.numel()} "
                                         f"and directions have shape {tuple(v.shape)}")
        self.module = module
        for q in module.parameters():
            q.requires_grad_(False)
        self.names = list(offsets)
        self.shapes = {n: tuple(own[n].shape) for n in self.names}
        dtype = own[self.names[0]].dtype
        for i, n in enumerate(self.names):
            self.register_buffer(f"offset_{i}", offsets[n].detach().reshape(-1).to(dtype).clone())
            self.register_buffer(f"dirs_{i}", dirs[n].detach().to(dtype).clone())
        self.coefficients = nn.ParameterList(
            [nn.Parameter(torch.zeros(int(dirs[n].shape[1]), dtype=dtype)) for n in self.names])
        self.info = dict(info or {})

    # ------------------------------------------------------------ constructors
    @classmethod
    def from_basis(cls, module: nn.Module, basis: Any, rank: int | Mapping[str, int] | None = None) -> "SubspaceModel":
        """Offsets: the basis means; directions: its first ``rank`` directions per tensor (all when None)."""
        b = basis if rank is None else basis.truncate(rank)
        return cls(module, b.means, b.dirs, {"kind": "basis", "rank": rank})

    @classmethod
    def random(cls, module: nn.Module, k: int, *, offsets: Mapping[str, torch.Tensor] | None = None,
               names: list[str] | None = None, seed: int = 0) -> "SubspaceModel":
        """Random orthonormal directions, ``min(k, P_t)`` per tensor, seeded per tensor.

        ``offsets`` default to the module's current parameters (its random
        init: the intrinsic-dimension setting of Li et al. 2018); ``names``
        default to the offsets' tensors, else every parameter.
        """
        if int(k) < 0:
            raise ConfigError(f"subspace model: k must be >= 0, got {k}")
        own = dict(module.named_parameters())
        if names is None:
            names = list(offsets) if offsets is not None else list(own)
        offs = {n: (offsets[n] if offsets is not None else own[n]).detach().reshape(-1) for n in names}
        dirs = {}
        for i, n in enumerate(names):
            g = torch.Generator().manual_seed(int(seed) * 1_000_003 + i)
            dirs[n] = random_directions(offs[n].numel(), int(k), g)
        return cls(module, offs, dirs, {"kind": "random", "k": int(k), "seed": int(seed),
                                        "offset": "given" if offsets is not None else "module init"})

    # ------------------------------------------------------------------- use
    def tensors(self) -> dict[str, torch.Tensor]:
        """The covered tensors ``offset + V c`` in their module shapes (differentiable in ``c``)."""
        out = {}
        for i, n in enumerate(self.names):
            o, v, c = getattr(self, f"offset_{i}"), getattr(self, f"dirs_{i}"), self.coefficients[i]
            flat = o + v @ c if v.shape[1] else o
            out[n] = flat.reshape(self.shapes[n])
        return out

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return functional_call(self.module, self.tensors(), args, kwargs, strict=False)

    def n_trainable(self) -> int:
        return sum(int(c.numel()) for c in self.coefficients)

    def materialize(self) -> dict[str, torch.Tensor]:
        """The module's full state_dict with the covered tensors reconstructed (detached copies)."""
        sd = {k: v.detach().clone() for k, v in self.module.state_dict().items()}
        with torch.no_grad():
            sd.update({k: v.detach().clone() for k, v in self.tensors().items()})
        return sd


def fit_module(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch_size: int = 32,
               seed: int = 0, optimizer: str = "adam",
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy) -> list[float]:
    """Minibatch training of ``model``'s trainable parameters (all of them, or only a SubspaceModel's ``c``).

    One loop for full and subspace training, so both see the same batches
    (seeded shuffles) and optimiser. Returns the mean loss of every epoch.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("fit_module: the model has no trainable parameters")
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr)
    else:
        raise ConfigError(f"fit_module: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
    gen = torch.Generator().manual_seed(int(seed))
    history = []
    model.train()
    for _ in range(int(epochs)):
        total, count = 0.0, 0
        for idx in torch.randperm(x.shape[0], generator=gen).split(int(batch_size)):
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        history.append(total / max(count, 1))
        if not math.isfinite(history[-1]):
            break
    model.eval()
    return history
