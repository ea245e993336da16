"""A stack with every model permuted into one shared unit order (weight matching to the barycentre).

Hidden units of a network can be permuted without changing its function,
so two trained networks may hold the same features in different rows; a
spectrum of the raw stack then counts that arbitrary order as variance.
:func:`align_stack` removes it the way :func:`wsl.align.zoo_align.align_zoo`
canonicalises a zoo: the barycentre ``theta*`` of the models (start from the
mean; repeatedly match every model to the current mean by weight matching
and average again; :class:`wsl.align.merge.Barycentre`), then every model
``theta_i`` is permuted by ``P_i = argmax_P <theta*, P theta_i>`` (one
weight-matching problem per model). Every aligned model computes the same
function as before.

The aligned models are held in memory (a :class:`TensorStack`), so this
costs ``O(N * P)`` memory, unlike the rest of the analysis.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from wsl.errors import SpaceMismatchError
from wsl.subspace.stacks import Stack, TensorStack

__all__ = ["align_stack"]


def _state_dicts(stack: Stack, space: Any) -> list[dict[str, torch.Tensor]]:
    """Every model's tensors, completed with zeros for the space's non-floating entries (counters)."""
    missing = [n for n in stack.names if n not in space.tensors]
    if missing:
        raise SpaceMismatchError(f"tensor {missing[0]!r} of the stack is not in the architecture's weight space")
    fill = {n: torch.zeros(t.shape) for n, t in space.tensors.items() if n not in stack.shapes}
    if isinstance(stack, TensorStack):
        return [{**{n: stack.tensors[n][i] for n in stack.names}, **fill} for i in range(len(stack))]
    return [{**stack.state_dict(i), **fill} for i in range(len(stack))]


def align_stack(stack: Stack, space: Any, *, max_iterations: int = 5, seed: int = 0,
                progress: bool = False) -> tuple[TensorStack, dict[str, Any]]:
    """``stack`` aligned to its barycentre (see the module docstring), and what the alignment did."""
    from tqdm.auto import tqdm

    from wsl.align.merge import Barycentre
    from wsl.align.weight_matching import weight_matching

    t0 = time.perf_counter()
    sds = _state_dicts(stack, space)
    bary = Barycentre(max_iterations, start="mean")
    target = bary.merge(sds, space=space)
    results = [weight_matching(target, sd, space, seed=seed)
               for sd in tqdm(sds, desc="align to barycentre", unit="model", disable=not progress, leave=False)]
    groups = list(results[0].perms) if results else []
    perms = {g: torch.stack([r.perms[g] for r in results]) for g in groups}
    stacked = {n: torch.stack([sd[n] for sd in sds]) for n in stack.names}
    moved = space.permute(stacked, perms, batched=True)
    out = TensorStack({n: moved[n] for n in stack.names}, stack.ids)
    n_moved = [sum(int(not torch.equal(p, torch.arange(p.numel()))) for p in r.perms.values()) for r in results]
    info = {"method": "weight matching to the barycentre (wsl.align.merge.Barycentre, start='mean')",
            "barycentre_iterations": bary.iterations, "n_models": len(stack),
            "groups": len(groups), "mean_groups_moved": sum(n_moved) / max(len(n_moved), 1),
            "mean_distance_before": sum(r.distance_before for r in results) / max(len(results), 1),
            "mean_distance_after": sum(r.distance_after for r in results) / max(len(results), 1),
            "seconds": time.perf_counter() - t0}
    return out, info
