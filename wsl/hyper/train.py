"""Training: a plain classifier (the base and the per-width references) and the NeuMeta fit.

NeuMeta step (one optimiser step)::

    for j < J (widths_per_step):
        r_j ~ 1 with probability p_full, else U[r_min, 1]   one global width ratio
        W_j = NeuMeta(coords(r_j) + noise on u_out, u_in)   whole network, one call
        L_j = lambda_task CE(f(x_j; W_j), y_j)              task loss on a data batch
            + lambda_kd T^2 KL(softmax(f(x_j; W_base)/T) || softmax(f(x_j; W_j)/T))   distillation
            + lambda_interp mean_k ||W_j[k] - I_j[k]||^2 / sigma_k^2   narrow r_j only (wsl.hyper.interp):
              I_j = the base bilinearly interpolated at W_j's own (jittered) unit positions
            + lambda_anchor mean_k ||W_j[k] - A_j[k]||^2 / sigma_k^2   narrow r_j, anchored hypernetworks:
              A_j = the anchor (the pruned or interpolated base, NeuMeta.anchor_values)
    L = mean_j L_j
      + lambda_rec * mean_k ||W_1[k] - W_base[k]||^2 / sigma_k^2   at full width, no noise
      (+ weight decay via AdamW)

Without the interpolation or anchor terms (``interp_weight = anchor_weight = 0``, the
defaults) nothing but the task and distillation losses constrains a narrow member; on the
digits ResNet (BatchNorm) those alone collapse the generated network to a constant output
(README §8, issue 20).

Why they collapse (measured, ``benchmarks/diagnostics/hyper_resnet/conditioning.py``): the
task gradient through the generator is correct (plain SGD lowers the loss), but an Adam step
on the generator's parameters moves every generated weight coherently, and the loss of the
very member being trained rises (7/8-width ResNet, one fixed batch, 40 full-batch Adam steps
at lr 1e-4: CE 0.37 -> 1.03, while Adam on the member's own weights takes it to 0.002).
Weight-space targets (reconstruction, interpolation, anchors) are well conditioned; hence
anchored hypernetworks (``model.anchor``) with a small learning rate, and ``anchor_weight``.

With ``rec_rows > 0`` the reconstruction term is estimated each step from that
many random coordinate rows (scaled to stay unbiased), which makes a step on a
network of many rows several times cheaper.

Every draw of step ``s``, width ``j`` (ratio, batch, noise) comes from its own
generator seeded by ``(seed, s, j)``: a resumed fit is identical to an
uninterrupted one, and under ``torchrun`` rank ``q`` of ``W`` computes the
widths ``j = q, q + W, ...`` and the gradients are summed over ranks, which
gives the one-process step with the same ``widths_per_step`` (tested).

The reconstruction targets are the (optionally smoothed) base weights; dividing
each tensor's error by its base variance ``sigma_k^2`` weighs small and large
tensors alike. Generated networks are evaluated with ``torch.func.functional_call``
on the family member built once per width, so gradients flow into NeuMeta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from wsl.errors import ConfigError
from wsl.hyper.coords import NetCoords, target_rows
from wsl.hyper.neumeta import NeuMeta


@torch.no_grad()
def accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> float:
    """Top-1 accuracy of ``module`` (eval mode) on ``(x, y)``."""
    was = module.training
    module.eval()
    hits = sum(int((module(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(y), batch))
    module.train(was)
    return hits / max(1, len(y))


def train_classifier(module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, lr: float = 3e-3,
                     batch: int = 64, weight_decay: float = 0.0, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> nn.Module:
    """Adam on random mini-batches for ``steps`` steps (cosine learning rate); returns ``module``."""
    if steps < 0 or batch < 1 or lr <= 0:
        raise ConfigError(f"train_classifier: need steps >= 0, batch >= 1, lr > 0; got {steps}, {batch}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    module.train()
    for s in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        loss = F.cross_entropy(module(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress is not None:
            progress(s)
    return module.eval()


@dataclass
class HyperTrainConfig:
    """Hyperparameters of the NeuMeta fit (JSON-able)."""

    steps: int = 2000
    batch: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-5
    min_ratio: float = 0.25
    p_full: float = 0.25
    rec_weight: float = 100.0
    task_weight: float = 1.0
    coord_noise: float = 0.5
    kd_weight: float = 0.0
    kd_temperature: float = 2.0
    widths_per_step: int = 1
    rec_rows: int = 0
    interp_weight: float = 0.0
    anchor_weight: float = 0.0
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (with ``momentum``): see the module docstring on anchored fits."""
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type in ("str", str):
                continue
            want_int = f.type in ("int", int)
            if isinstance(v, bool) or not isinstance(v, int if want_int else (int, float)):
                hint = " (YAML reads 3e-4 as a string: write 3.0e-4)" if isinstance(v, str) else ""
                raise ConfigError(f"hyper.train.{f.name}: expected {'an int' if want_int else 'a number'}, "
                                  f"got {v!r}{hint}")
        if self.steps < 0 or self.batch < 1 or self.lr <= 0 or self.weight_decay < 0 or self.rec_weight < 0 \
                or self.task_weight < 0 or self.kd_weight < 0 or self.kd_temperature <= 0 \
                or not self.interp_weight >= 0 or not self.anchor_weight >= 0:
            raise ConfigError("hyper.train: steps >= 0, batch >= 1, lr > 0, weight_decay >= 0, rec_weight >= 0, "
                              f"task_weight >= 0, kd_weight >= 0, kd_temperature > 0, interp_weight >= 0, anchor_weight >= 0 required; got {self}")
        if self.optimizer not in ("adamw", "sgd") or not 0 <= self.momentum < 1:
            raise ConfigError(f"hyper.train: optimizer must be 'adamw' or 'sgd' and momentum in [0, 1); got "
                              f"{self.optimizer!r}, {self.momentum!r}")
        if not isinstance(self.widths_per_step, int) or not 1 <= self.widths_per_step <= 64:
            raise ConfigError(f"hyper.train.widths_per_step: expected an int in [1, 64], got {self.widths_per_step!r}")
        if not isinstance(self.rec_rows, int) or self.rec_rows < 0:
            raise ConfigError(f"hyper.train.rec_rows: expected an int >= 0 (0: every row), got {self.rec_rows!r}")
        if not 0 < self.min_ratio <= 1 or not 0 <= self.p_full <= 1 or not 0 <= self.coord_noise <= 2:
            raise ConfigError("hyper.train: min_ratio in (0, 1], p_full in [0, 1], coord_noise in [0, 2] required; "
                              f"got {self.min_ratio}, {self.p_full}, {self.coord_noise}")


def _draw_generator(cfg: HyperTrainConfig, step: int, j: int) -> torch.Generator:
    """The generator of width ``j`` at step ``step`` (independent of resuming and of the number of ranks)."""
    return torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 128 + j) % (2 ** 63))


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_neumeta(hyper: NeuMeta, base_state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  cfg: HyperTrainConfig, progress: Callable[[int, dict[str, float]], None] | None = None,
                  start_step: int = 0, optimizer_state: dict[str, Any] | None = None,
                  on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
                  checkpoint_every: int = 0) -> dict[str, Any]:
    """Fit ``hyper`` (in place) to reproduce ``base_state`` at full width and solve the task at every width.

    Returns ``{"optimizer": state_dict, "history": [{"step", "ratio", "task", "kd", "rec"}...]}``
    (``ratio``/``task``/``kd`` of this rank's first width). ``on_checkpoint(steps_done, optimizer_state)``
    is called every ``checkpoint_every`` steps. Resuming (``start_step``, ``optimizer_state``)
    continues the schedule and the random draws exactly. Under an initialised process group the
    widths of a step are dealt across ranks (``widths_per_step`` must be a multiple of the world
    size) and gradients are summed; every rank keeps identical parameters.
    """
    rank, world = _rank_world()
    if cfg.widths_per_step % world:
        raise ConfigError(f"hyper.train.widths_per_step={cfg.widths_per_step} must be a multiple of the "
                          f"number of processes ({world})")
    if cfg.anchor_weight > 0 and hyper.config.anchor == "none":
        raise ConfigError("hyper.train.anchor_weight > 0 needs an anchored hypernetwork (model.anchor: prune or interp)")
    dev = hyper.mu.device
    x, y = x.to(dev), y.to(dev)
    full = hyper.coords(1.0)
    target, mask = target_rows(base_state, full, hyper.taps_max)
    target, mask = target.to(dev), mask.to(dev)
    inv_var = (1.0 / hyper.sigma[full.tensor.to(dev)] ** 2).unsqueeze(1)
    per_entry = torch.zeros_like(target)
    for k, lay in enumerate(full.layouts):
        per_entry[full.offsets[k]:full.offsets[k + 1]] = 1.0 / (len(full.layouts) * lay.rows * lay.taps)
    weights = inv_var * per_entry * mask
    modules: dict[tuple[int, ...], nn.Module] = {}
    full_widths = hyper.family.widths(1.0)
    statistics = {t.name for t in hyper.base_space.spec.tensors if t.buffer}  # BN in train mode: batch statistics
    teacher = None
    if cfg.kd_weight > 0:
        teacher = hyper.family.build(1.0).to(dev)
        teacher.load_state_dict({k: v.detach() for k, v in base_state.items()})
        teacher.eval()
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(hyper.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                     weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(hyper.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if optimizer_state is not None:
        opt.load_state_dict(optimizer_state)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, (s + start_step) / max(1, cfg.steps)))))
    history = []
    hyper.train()
    anchor_full = hyper.anchor_values(full, full.cont.to(dev))  # anchored hypernetworks: the base rows
    mine = range(rank, cfg.widths_per_step, world)
    for step in range(start_step, cfg.steps):
        loss = torch.zeros((), device=dev)
        rec_v = 0.0
        if cfg.rec_weight > 0:
            n_rows = full.tensor.shape[0]
            if 0 < cfg.rec_rows < n_rows:  # an unbiased estimate from a random subset of rows
                rows = torch.randperm(n_rows, generator=_draw_generator(cfg, step, 127))[:cfg.rec_rows].to(dev)
                pred = hyper(full.tensor.to(dev)[rows], full.cont.to(dev)[rows],
                             None if anchor_full is None else anchor_full[rows])
                rec = ((pred - target[rows]) ** 2 * weights[rows]).sum() * (n_rows / cfg.rec_rows)
            else:
                pred = hyper(full.tensor.to(dev), full.cont.to(dev), anchor_full)
                rec = ((pred - target) ** 2 * weights).sum()
            loss = loss + cfg.rec_weight * rec / world
            rec_v = float(rec.detach())
        first: dict[str, float] = {}
        for j in mine:
            gen = _draw_generator(cfg, step, j)
            u = float(torch.rand((), generator=gen))
            ratio = 1.0 if u < cfg.p_full else cfg.min_ratio + (1 - cfg.min_ratio) * float(torch.rand((), generator=gen))
            widths = hyper.family.widths(ratio)
            if widths not in modules:
                modules[widths] = hyper.family.build_widths(widths).to(dev).train()
            coords, cont, values = hyper.generate_rows(ratio, coord_noise=cfg.coord_noise, generator=gen)
            state = coords.split(values)
            interp_v = 0.0
            if cfg.interp_weight > 0 and widths != full_widths:
                interp = _interp_loss(hyper, coords, cont, values, target)
                loss = loss + cfg.interp_weight * interp / cfg.widths_per_step
                interp_v = float(interp.detach())
            if cfg.anchor_weight > 0 and widths != full_widths:
                pull = _normalised_mse(hyper, coords, values, hyper.anchor_values(coords, cont))
                loss = loss + cfg.anchor_weight * pull / cfg.widths_per_step
            state = {k: v for k, v in state.items() if k not in statistics}  # generated ones learn by reconstruction
            idx = torch.randint(0, len(y), (cfg.batch,), generator=gen).to(dev)
            logits = functional_call(modules[widths], state, (x[idx],))
            task = F.cross_entropy(logits, y[idx])
            term = cfg.task_weight * task
            kd_v = 0.0
            if teacher is not None:
                t = cfg.kd_temperature
                with torch.no_grad():
                    soft = F.softmax(teacher(x[idx]) / t, dim=1)
                kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, reduction="batchmean") * t * t
                term = term + cfg.kd_weight * kd
                kd_v = float(kd.detach())
            loss = loss + term / cfg.widths_per_step
            if not first:
                first = {"ratio": ratio, "task": float(task.detach()), "kd": kd_v, "interp": interp_v}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if world > 1:
            _sum_gradients(hyper)
        opt.step()
        sched.step()
        history.append({"step": step, **first, "rec": rec_v})
        if progress is not None:
            progress(step, history[-1])
        if on_checkpoint is not None and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
            on_checkpoint(step + 1, opt.state_dict())
    hyper.eval()
    return {"optimizer": opt.state_dict(), "history": history}


def _interp_loss(hyper: NeuMeta, coords: NetCoords, cont: torch.Tensor, values: torch.Tensor,
                 target: torch.Tensor) -> torch.Tensor:
    """Per-tensor-normalised MSE of a narrow member's rows to the base interpolated at their positions."""
    return _normalised_mse(hyper, coords, values, hyper.interpolated(coords, cont, target))


def _normalised_mse(hyper: NeuMeta, coords: NetCoords, values: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """``mean_k ||values[k] - goal[k]||^2 / sigma_k^2`` over a member's tensors (entries of a tensor averaged)."""
    dev = values.device
    tensor = coords.tensor.to(dev)
    per_row = torch.zeros(values.shape[0], device=dev)
    for k, lay in enumerate(coords.layouts):
        per_row[coords.offsets[k]:coords.offsets[k + 1]] = 1.0 / (len(coords.layouts) * lay.rows * lay.taps)
    w = (per_row / hyper.sigma[tensor] ** 2).unsqueeze(1) * hyper.taps_mask(tensor)
    return ((values - goal) ** 2 * w).sum()


def _sum_gradients(module: nn.Module) -> None:
    """All-reduce (sum) every parameter's gradient; a missing gradient counts as zeros."""
    import torch.distributed as dist

    for p in module.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
