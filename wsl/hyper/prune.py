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


def unit_scores(space: WeightSpace, state: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """``{group: (size,) L1 score}`` of every unit of every group (the pruning criterion).

    A group that indexes no tensor itself (a head group: its heads are scored through the
    groups nested in it, see :func:`kept_units`) gets zeros.
    """
    def indexes(gid: int) -> bool:
        return any(f[0] == gid for t in space.spec.tensors if t.name in state
                   for ax in t.axes for seg in ax for f in seg)

    return {g.id: unit_features(space, state, g.id).abs().sum(1) if indexes(g.id) else torch.zeros(g.size)
            for g in space.spec.groups}


def kept_units(space: WeightSpace, state: dict[str, torch.Tensor] | None, sizes: dict[int, int],
               scores: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """``{group: sorted kept unit indices}`` by L1 score, ``sizes[g]`` units per group.

    The scores are computed from ``state`` unless given (``scores``, from :func:`unit_scores`).
    Nested groups (attention heads): a head group keeps its ``n`` heads of highest
    summed score over the units of every group nested in it; a nested group keeps,
    inside each kept head (in the head's new place), its ``d'`` best units, so the
    member's units still come in whole head blocks.
    """
    groups = space.spec.groups
    def score(g: int) -> torch.Tensor:
        if scores is not None:
            return scores[g]
        assert state is not None
        return unit_features(space, state, g).abs().sum(1)

    keep = {}
    for g, n in sizes.items():
        if groups[g].parent is not None:
            continue
        children = [c.id for c in groups if c.parent == g]
        s = score(g) if not children else sum(score(c).reshape(groups[g].size, -1).sum(1) for c in children)
        keep[g] = torch.sort(torch.topk(s, n).indices).values
    for g, n in sizes.items():
        p = groups[g].parent
        if p is None:
            continue
        heads, d = groups[p].size, groups[g].size // groups[p].size
        kept_heads = keep.get(p, torch.arange(heads))
        d_new = n // len(kept_heads)
        blocks = score(g).reshape(heads, d)[kept_heads]
        inner = torch.sort(torch.topk(blocks, d_new, dim=1).indices, dim=1).values
        keep[g] = (kept_heads[:, None] * d + inner).reshape(-1)
    return keep


def prune(module: nn.Module, ratio: Ratio, heads: str = "count") -> nn.Module:
    """The family member at ``ratio`` holding the base's highest-L1 units (no fine-tune).

    ``heads`` is the transformer family's head knob (``count``, ``dim`` or ``both``).
    """
    fam = WidthFamily.from_module(module, heads)
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
