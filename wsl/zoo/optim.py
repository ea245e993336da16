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

:func:`train_chunk` is the lockstep loop over a chunk of models. Epoch ``e``
of a model is one pass over a fresh permutation of *its own* training subset
in ``ceil(n_m / batch)`` batches (the last one partial, its loss averaged over
its real samples; see :func:`wsl.zoo.data.epoch_batches`). All models start
together; a model with ``s_m`` steps per epoch is active for its first
``epochs * s_m`` global steps. Rows are sorted by step count so the active
models are always a prefix of the rows and finished ones cost nothing;
checkpoints are copied when a model completes a checkpoint epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import torch
import torch.nn.functional as F

from wsl.errors import ConfigError
from wsl.zoo.data import epoch_batches
from wsl.zoo.vectorized import Ctx, VecNet

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


# ----------------------------------------------------------- the training loop
@dataclass
class ModelRun:
    """One model of a chunk: its own training configuration."""

    optimizer: str
    lr: float
    weight_decay: float
    dropout: float
    activation: str | None  # None: the description's own activations
    train_indices: torch.Tensor  # (n_m,) indices into the data set's train split
    init: torch.Tensor  # (P,) flat initial parameters
    data_seed: int  # seeds this model's per-epoch shuffles


@dataclass
class ChunkResult:
    """Checkpoints of a trained chunk, in the order of the ``runs`` given."""

    epochs: list[int]
    params: torch.Tensor  # (n, E, P) flat parameters at each checkpoint epoch
    buffers: dict[str, torch.Tensor]  # key -> (n, E, *shape)
    diverged_epoch: list[int | None]  # first epoch whose update was not finite (model frozen), or None
    steps_per_epoch: list[int]


def train_chunk(net: VecNet, runs: Sequence[ModelRun], x_train: torch.Tensor, y_train: torch.Tensor, *,
                batch_size: int, epochs: int, checkpoints: Sequence[int], seed: int,
                device: torch.device | str = "cpu", progress: Callable[[float], None] | None = None
                ) -> ChunkResult:
    """Train ``runs`` (models of ``net``'s architecture) together; snapshot at ``checkpoints`` epochs.

    Models are reordered internally so that the ones with the most steps come
    first; at global step ``t`` only the first ``k(t)`` rows (those still
    training) run, so a model with a small subset costs only its own steps.
    Dropout noise comes from one generator seeded with ``seed``. A model whose
    update becomes non-finite is frozen at its last finite parameters.
    """
    n = len(runs)
    ckpts = sorted(set(int(c) for c in checkpoints))
    sched_all, steps_all = epoch_batches([r.train_indices for r in runs], [r.data_seed for r in runs],
                                         batch_size, epochs)
    total = [epochs * s for s in steps_all]
    order = sorted(range(n), key=lambda m: (-total[m], m))
    runs = [runs[m] for m in order]
    sched = sched_all[order].to(device)
    steps = [steps_all[m] for m in order]
    t_max = max(total)
    active = [sum(1 for m in order if total[m] > t) for t in range(t_max)]
    partial = [any(len(runs[i].train_indices) % batch_size and t % steps[i] == steps[i] - 1
                   for i in range(active[t])) for t in range(t_max)]
    events: dict[int, list[tuple[int, int]]] = {}
    for i, s in enumerate(steps):
        for ci, e in enumerate(ckpts):
            if e > 0:
                events.setdefault(e * s - 1, []).append((i, ci))
    x_train, y_train = x_train.to(device), y_train.to(device)
    params = torch.stack([r.init for r in runs]).to(device=device, dtype=torch.float32)
    bufs = net.new_buffers(n, device)
    snap_p = torch.zeros(n, len(ckpts), net.num_params, device=device)
    snap_b = {k: torch.zeros(n, len(ckpts), *v.shape[1:], dtype=v.dtype, device=device) for k, v in bufs.items()}

    def snapshot(rows: list[int], cols: list[int]) -> None:
        snap_p[rows, cols] = params[rows]
        for key, b in bufs.items():
            snap_b[key][rows, cols] = b[rows]

    if 0 in ckpts:
        snapshot(list(range(n)), [ckpts.index(0)] * n)
    opt = VecOptimizer([r.optimizer for r in runs], [r.lr for r in runs], [r.weight_decay for r in runs],
                       net.num_params, device=device)
    frozen = torch.zeros(n, dtype=torch.bool, device=device)
    diverged: list[int | None] = [None] * n
    dropout = torch.tensor([r.dropout for r in runs], device=device, dtype=torch.float32)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    acts = [r.activation for r in runs]
    override = None if all(a is None for a in acts) else [a or "identity" for a in acts]
    ctxs: dict[int, Ctx] = {}
    work, done, reported = sum(active), 0, 0
    for t in range(t_max):
        k = active[t]
        if k not in ctxs:
            ctxs[k] = Ctx(k, True, override[:k] if override else None, dropout[:k], generator=gen)
        ctx = ctxs[k]
        idx = sched[:k, t]
        valid = idx >= 0
        ctx.weights = valid.to(torch.float32) if partial[t] else None
        ctx.frozen = frozen[:k]
        safe = idx.clamp(min=0)
        p = params[:k].detach().requires_grad_(True)
        logits = net.forward(p, bufs, x_train[safe], ctx)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_train[safe].reshape(-1),
                             reduction="none").view(k, -1)
        per_model = ce.mean(1) if ctx.weights is None else (ce * ctx.weights).sum(1) / ctx.weights.sum(1)
        (grad,) = torch.autograd.grad(per_model.sum(), p)
        finite = opt.step(params, grad, k, update_mask=~frozen[:k])
        if not bool(finite.all()):
            for i in (~finite & ~frozen[:k]).nonzero().flatten().tolist():
                diverged[i] = t // steps[i] + 1
            frozen[:k] |= ~finite
        if t in events:
            rows, cols = zip(*events[t])
            snapshot(list(rows), list(cols))
        done += k
        if progress is not None and ((done - reported) * 50 >= work or t == t_max - 1):
            progress((done - reported) / work)
            reported = done
    inverse = [0] * n
    for slot, m in enumerate(order):
        inverse[m] = slot
    return ChunkResult(ckpts, snap_p[inverse].cpu(), {k: v[inverse].cpu() for k, v in snap_b.items()},
                       [diverged[inverse[m]] for m in range(n)], steps_all)
