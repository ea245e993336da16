"""Optimizers vectorized over a stack of models.

Every model of a chunk is one row of a flat ``(M, P)`` parameter matrix. Each
row has its own optimizer type, learning rate and L2 weight decay; all three
optimizer types share one fused update so a mixed chunk costs about as much as
a single optimizer. With ``g' = g + wd * p`` (L2 added to the gradient, as
``weight_decay`` in :mod:`torch.optim`)::

    m <- a1 * m + b1 * g'
    v <- a2 * v + b2 * g'^2
    p <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + e)

with per-row coefficients

============  =====  ========  ======  ========  ==========  ==========  =====
optimizer     a1     b1        a2      b2        bc1         bc2         e
============  =====  ========  ======  ========  ==========  ==========  =====
sgd           0.9    1         0       0         1           1           1
adam          0.9    0.1       0.999   0.001     1 - 0.9^t   1-0.999^t   1e-8
rmsprop       0      1         0.99    0.01      1           1           1e-8
============  =====  ========  ======  ========  ==========  ==========  =====

which reproduces ``torch.optim.SGD(momentum=0.9)``, ``torch.optim.Adam`` and
``torch.optim.RMSprop`` (default betas/alpha/eps, no centering, no Nesterov,
no dampening) step for step (``v`` stays 0 for SGD, so its denominator is 1).
Each row counts its own steps ``t`` (Adam's bias corrections use it).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from wsl.errors import ConfigError

KINDS: tuple[str, ...] = ("sgd", "adam", "rmsprop")
"""Supported optimizer names."""


def _column(values: torch.Tensor | Sequence[float], n: int, name: str, device: torch.device | str,
            dtype: torch.dtype) -> torch.Tensor:
    """``values`` as an ``(n, 1)`` tensor, checked for length and finiteness."""
    col = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if col.numel() != n:
        raise ConfigError(f"vectorized optimizer: {name} has {col.numel()} values for {n} models")
    if not torch.isfinite(col).all() or (col < 0).any():
        raise ConfigError(f"vectorized optimizer: {name} must be finite and >= 0, got {col.tolist()}")
    return col.to(device=device, dtype=dtype).reshape(n, 1)


class VecOptimizer:
    """SGD(momentum) / Adam / RMSprop over the rows of a flat ``(M, P)`` parameter matrix.

    ``kinds[i]`` is the optimizer of row ``i`` (one of :data:`KINDS`), ``lr[i]``
    and ``weight_decay[i]`` its learning rate and L2 coefficient. :meth:`step`
    updates the first ``k`` rows in place (a chunk keeps its still-training
    models first, see :mod:`wsl.zoo.vectorized`).
    """

    def __init__(self, kinds: Sequence[str], lr: torch.Tensor | Sequence[float],
                 weight_decay: torch.Tensor | Sequence[float], num_params: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 momentum: float = 0.9, betas: tuple[float, float] = (0.9, 0.999),
                 alpha: float = 0.99, eps: float = 1e-8) -> None:
        n = len(kinds)
        bad = [(i, k) for i, k in enumerate(kinds) if k not in KINDS]
        if bad:
            i, k = bad[0]
            raise ConfigError(f"vectorized optimizer: model {i}: unknown optimizer {k!r}; valid: {', '.join(KINDS)}")
        self.num_models = n
        self.lr = _column(lr, n, "lr", device, dtype)
        self.weight_decay = _column(weight_decay, n, "weight_decay", device, dtype)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        table = {
            "sgd": (momentum, 1.0, 0.0, 0.0, 1.0),
            "adam": (self.beta1, 1.0 - self.beta1, self.beta2, 1.0 - self.beta2, eps),
            "rmsprop": (0.0, 1.0, alpha, 1.0 - alpha, eps),
        }
        coef = torch.tensor([table[k] for k in kinds], dtype=torch.float64).reshape(n, 5)
        cols = coef.to(device=device, dtype=dtype).unbind(1)
        self.a1, self.b1, self.a2, self.b2, self.e = (c.reshape(n, 1).contiguous() for c in cols)
        self.is_adam = torch.tensor([k == "adam" for k in kinds], device=device).reshape(n, 1)
        self.uses_v = any(k != "sgd" for k in kinds)
        self.m = torch.zeros(n, num_params, device=device, dtype=dtype)
        self.v = torch.zeros(n, num_params, device=device, dtype=dtype) if self.uses_v else None
        self.t = torch.zeros(n, 1, device=device, dtype=torch.float64)

    def step(self, params: torch.Tensor, grads: torch.Tensor, k: int | None = None,
             update_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Update ``params[:k]`` in place from ``grads`` (shape ``(k, P)``).

        Rows where ``update_mask`` (bool ``(k,)``) is False, and rows whose
        update is not finite (a diverged model), keep their parameters; their
        optimizer state still advances, so the caller should freeze them for
        good. Returns the bool ``(k,)`` mask of rows whose update was finite.
        """
        k = params.shape[0] if k is None else k
        if grads.shape != (k, params.shape[1]):
            raise ValueError(f"grads shape {tuple(grads.shape)} != ({k}, {params.shape[1]})")
        p = params[:k]
        m = self.m[:k]
        self.t[:k] += 1
        t = self.t[:k]
        g = grads.addcmul(p, self.weight_decay[:k])
        m.mul_(self.a1[:k]).addcmul_(g, self.b1[:k])
        adam = self.is_adam[:k]
        bc1 = torch.where(adam, 1.0 - self.beta1 ** t, torch.ones_like(t)).to(p.dtype)
        step_size = self.lr[:k] / bc1
        if self.v is None:
            update = m * step_size
        else:
            v = self.v[:k]
            v.mul_(self.a2[:k]).addcmul_(g, g * self.b2[:k])
            bc2_sqrt = torch.where(adam, (1.0 - self.beta2 ** t).sqrt(), torch.ones_like(t)).to(p.dtype)
            denom = (v.sqrt() / bc2_sqrt).add_(self.e[:k])
            update = (m * step_size).div_(denom)
        finite = torch.isfinite(update.sum(1))  # a non-finite entry (or an overflow) makes the sum non-finite
        keep = finite if update_mask is None else finite & update_mask
        update = torch.where(keep.reshape(k, 1), update, torch.zeros((), dtype=p.dtype, device=p.device))
        p.sub_(update)
        return finite

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The optimizer state (moments and step counts), e.g. for tests."""
        out = {"m": self.m, "t": self.t}
        if self.v is not None:
            out["v"] = self.v
        return out
