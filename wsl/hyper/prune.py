"""Structured magnitude pruning of a network to a width-family member (the baseline NeuMeta must beat).

Unit ``j`` of a permutable group ``g`` scores ``s_j = sum |theta|`` over every
parameter that ``j`` indexes (its incoming weights, bias, norm parameters and
its outgoing weights: the row of :func:`wsl.hyper.smooth.unit_features`). The
member at ratio ``r`` keeps, in every group, the ``n_g(r)`` highest-scoring units
(in their original order) and slices every tensor axis that the group indexes
with the same kept indices, so the pruning is consistent across the group.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.archs.width import Ratio, WidthFamily
from wsl.errors import SpaceMismatchError
from wsl.hyper.smooth import unit_features
from wsl.space import WeightSpace


def kept_units(space: WeightSpace, state: dict[str, torch.Tensor], sizes: dict[int, int]) -> dict[int, torch.Tensor]:
    """``{group: sorted kept unit indices}`` by L1 score, ``sizes[g]`` units per group."""
    keep = {}
    for g, n in sizes.items():
        score = unit_features(space, state, g).abs().sum(1)
        keep[g] = torch.sort(torch.topk(score, n).indices).values
    return keep


def prune(module: nn.Module, ratio: Ratio) -> nn.Module:
    """The family member at ``ratio`` holding the base's highest-L1 units (no fine-tune)."""
    fam = WidthFamily.from_module(module)
    space = WeightSpace.from_module(module)
    target = fam.space(ratio)
    state = {k: v.detach() for k, v in module.state_dict().items()}
    sizes = {g.id: target.spec.groups[g.id].size for g in space.spec.groups if g.size != target.spec.groups[g.id].size}
    for g in sizes:
        if space.spec.groups[g].fixed:
            raise SpaceMismatchError(f"prune: group {space.group_name(g)} is fixed but changes size")
    keep = kept_units(space, state, sizes)
    out = {}
    for t in space.spec.tensors:
        w = state[t.name]
        if t.diagonal:
            raise SpaceMismatchError(f"prune: tensor {t.name} is a grouped (block-diagonal) weight; not supported")
        for a, ax in enumerate(t.axes):
            gid = ax[0][0][0] if len(ax) == 1 and len(ax[0]) == 1 else None
            if gid in keep:
                w = w.index_select(a, keep[gid])
        out[t.name] = w.clone()
    net = fam.build(ratio)
    net.load_state_dict(out)
    return net.eval()
