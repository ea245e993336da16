"""Activation matching: pair units that respond alike on the same data.

For every permutable group, the outputs of the layers whose units form that
group (its *sites*: Linear/conv/norm/embedding outputs) are recorded with
forward hooks on both networks over the same batches. The units of the
model are assigned to the reference's by the Pearson correlation of their
activations, summed over the group's sites::

    C[i, j] = sum over sites  corr(ref unit i, model unit j)      p = argmax_p sum_i C[i, p[i]]

Unlike weight matching this needs no iteration: a unit's activations do not
depend on how the other groups are ordered. Nested groups are assigned as
blocks exactly as in weight matching. Groups none of whose sites is a hookable
layer output (units that only exist inside a fused projection or after an
elementwise operation) are then solved by weight matching with the
activation-matched groups held fixed.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from wsl.errors import WslError
from wsl.space import WeightSpace

from wsl.align.space_match import shared_space
from wsl.align.weight_matching import AlignResult, Perms, WeightProblem, descend, tops_of, update

_LAST = (nn.Linear, nn.LayerNorm, nn.Embedding)
_CHANNEL = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm,
            nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _unit_dim(mod: nn.Module, out: torch.Tensor) -> int | None:
    if isinstance(mod, _LAST) or type(mod).__name__ == "Conv1D":
        return out.dim() - 1
    if isinstance(mod, _CHANNEL):
        return 1 if out.dim() > 2 else out.dim() - 1
    return None


class _Stats:
    """Running sums for the cross-correlation of two sets of ``n`` units."""

    def __init__(self, n: int) -> None:
        self.count = 0
        self.sx = torch.zeros(n, dtype=torch.float64)
        self.sy = torch.zeros(n, dtype=torch.float64)
        self.sxx = torch.zeros(n, dtype=torch.float64)
        self.syy = torch.zeros(n, dtype=torch.float64)
        self.sxy = torch.zeros(n, n, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.double().cpu(), y.double().cpu()
        self.count += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += x.T @ y

    def correlation(self) -> torch.Tensor:
        n = max(self.count, 1)
        mx, my = self.sx / n, self.sy / n
        cov = self.sxy / n - mx[:, None] * my[None, :]
        sdx = (self.sxx / n - mx * mx).clamp_min(0).sqrt()
        sdy = (self.syy / n - my * my).clamp_min(0).sqrt()
        return cov / (sdx[:, None] * sdy[None, :]).clamp_min(1e-12)


def _hook_sites(space: WeightSpace, net: nn.Module) -> dict[str, tuple[int, nn.Module]]:
    """Hookable sites: site name -> (group, module), for permutable groups and their nested children."""
    movable = {g.id for g in space.groups if g.permutable}
    out = {}
    names = dict(net.named_modules())
    for s in space.sites:
        mod = names.get(s.name)
        if s.group in movable and mod is not None and (isinstance(mod, _LAST + _CHANNEL)
                                                        or type(mod).__name__ == "Conv1D"):
            out[s.name] = (s.group, mod)
    return out


def _record(net: nn.Module, sites: dict[str, tuple[int, nn.Module]], x: Any) -> dict[str, torch.Tensor]:
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for name, (_, mod) in sites.items():
        def hook(m: nn.Module, _in: Any, out: Any, name: str = name) -> None:
            o = out[0] if isinstance(out, (tuple, list)) else out
            d = _unit_dim(m, o)
            if d is not None:
                acts[name] = o.detach().movedim(d, -1).reshape(-1, o.shape[d])
        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return acts


def activation_matching(ref: nn.Module, model: nn.Module, batches: Iterable[Any],
                        space: WeightSpace | None = None, *, max_passes: int = 100, seed: int = 0) -> AlignResult:
    """Permutations of ``model``'s groups that best correlate its unit activations with ``ref``'s.

    ``batches`` yields inputs (or ``(input, target)`` pairs). Both networks run
    in eval mode on the same batches. The objective fields of the result are
    the weight-space inner product and distance (as for weight matching).
    """
    if not (isinstance(ref, nn.Module) and isinstance(model, nn.Module)):
        raise WslError("activation matching needs both networks as nn.Modules (it runs them on data)")
    space, ref_sd, model_sd = shared_space(ref, model, space)
    sites = _hook_sites(space, ref)
    msites = _hook_sites(space, model)
    stats: dict[str, _Stats] = {}
    was = ref.training, model.training
    ref.eval(), model.eval()
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            ra, ma = _record(ref, sites, x), _record(model, msites, x)
            for name in ra.keys() & ma.keys():
                stats.setdefault(name, _Stats(ra[name].shape[1])).add(ra[name], ma[name])
    finally:
        ref.train(was[0]), model.train(was[1])
    if not stats:
        raise WslError("activation matching: the data yielded no batch, or no layer output carries a movable group")
    corr: dict[int, torch.Tensor] = {}
    for name, st in stats.items():
        g = sites[name][0]
        corr[g] = corr.get(g, 0) + st.correlation()  # type: ignore[assignment,operator]
    problem = WeightProblem(space, ref_sd, model_sd, False)
    perms: Perms = {g.id: torch.arange(g.size) for g in space.groups if g.permutable}
    dot0, dist0 = problem.objective(perms)
    rest = []
    for top in tops_of(space):
        kids = [c.id for c in space.groups if c.parent == top and c.permutable]
        if all(c in corr for c in kids) and (bool(kids) or top in corr):
            update(space, top, perms, corr.get)
        else:
            rest.append(top)
    passes, converged = (descend(problem, perms, rest, max_passes, seed, False) if rest else (1, True))
    dot1, dist1 = problem.objective(perms)
    return AlignResult({g: p for g, p in perms.items() if space.groups[g].permutable}, space, dot0, dot1,
                       dist0, dist1, passes, converged)
