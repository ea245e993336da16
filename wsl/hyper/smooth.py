"""Smoothing by permutation: order each group's units along a short path.

A continuous function of the unit position ``u = index / (size - 1)`` is
easier to fit when neighbouring units carry similar weights. For every
permutable group ``g`` each unit ``j`` gets a feature vector ``f_j``: the
concatenation of every slice of every tensor that the group indexes, taken at
unit ``j`` (its incoming weights, bias and norm parameters, and its outgoing
weights). Permuting *another* group reorders the entries of every ``f_j`` the
same way, so the distances ``d(j, k) = ||f_j - f_k||_2`` within a group do not
depend on the other groups' orders and every group is solved independently.

The order is a shortest Hamiltonian *path* over the units: a TSP tour over the
units plus one dummy node at distance 0 from all, cut at the dummy. The solver
is ``fast-tsp`` when installed (integer costs ``round(d / max d * 65535)``: fast-tsp
accepts edge costs up to 2^16 - 1), else :func:`two_opt_path`
(nearest-neighbour start, then best-improvement 2-opt).

The path is oriented to start at its end unit of smaller L1 norm. With the
2-opt solver (deterministic, every start tried for up to 64 units) and no ties
between distances, the smoothed state_dict is then the same for a network and
any relabelling of it: smoothing picks a canonical representative of the
permutation orbit. fast-tsp runs against a clock and carries no such promise.

The permutation is applied with :meth:`WeightSpace.permute`, so the network's
function is unchanged. The total variation of a state_dict,
``TV = sum_t sum_{unit axes a of t} sum |w[.., j+1, ..] - w[.., j, ..]|``,
measures how smooth the weights are along the unit axes.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from wsl.errors import WslError
from wsl.space import WeightSpace

COST_SCALE = 65_535
"""Integer cost of the longest edge handed to fast-tsp."""


def unit_features(space: WeightSpace, state: dict[str, torch.Tensor], gid: int) -> torch.Tensor:
    """``(size, D)``: every parameter that unit ``j`` of group ``gid`` indexes, as row ``j``."""
    parts = []
    for t in space.spec.tensors:
        if t.name not in state:
            continue
        w = state[t.name].detach().float()
        if t.diagonal and gid in t.groups():
            raise WslError(f"smooth: tensor {t.name} is a grouped (block-diagonal) weight; not supported")
        for a, ax in enumerate(t.axes):
            if len(ax) == 1 and len(ax[0]) == 1 and ax[0][0][0] == gid:
                parts.append(w.movedim(a, 0).reshape(w.shape[a], -1))
            elif any(f[0] == gid for seg in ax for f in seg):
                raise WslError(f"smooth: tensor {t.name} axis {a} mixes group {gid} with other factors; "
                               "not supported")
    if not parts:
        raise WslError(f"smooth: group {gid} indexes no tensor of the state_dict")
    return torch.cat(parts, dim=1)


def path_length(dist: np.ndarray, order: np.ndarray) -> float:
    """Sum of ``dist`` along consecutive entries of ``order``."""
    return float(dist[order[:-1], order[1:]].sum())


def two_opt_path(dist: np.ndarray, max_rounds: int = 10_000) -> np.ndarray:
    """Short Hamiltonian path: nearest-neighbour start from every end, then 2-opt on the path.

    A 2-opt move reverses ``order[i+1..j]``; its gain is
    ``d(o_i, o_{i+1}) + d(o_j, o_{j+1}) - d(o_i, o_j) - d(o_{i+1}, o_{j+1})``, with a
    free end when ``j`` is last. The best move over all ``(i, j)`` is applied until none gains.
    """
    n = dist.shape[0]
    if n <= 2:
        return np.arange(n)
    best = None
    for start in range(n) if n <= 64 else range(0, n, max(1, n // 64)):
        seen = np.zeros(n, dtype=bool)
        order = [start]
        seen[start] = True
        for _ in range(n - 1):
            d = np.where(seen, np.inf, dist[order[-1]])
            nxt = int(np.argmin(d))
            order.append(nxt)
            seen[nxt] = True
        o = np.array(order)
        if best is None or path_length(dist, o) < path_length(dist, best):
            best = o
    order = best
    assert order is not None
    for _ in range(max_rounds):
        a = order[:-1]
        b = order[1:]
        # moves reversing order[i+1..j], j < n-1: edges (a_i,b_i) and (a_j,b_j) -> (a_i,a_j), (b_i,b_j)
        old = dist[a, b]
        gain = old[:, None] + old[None, :] - dist[a[:, None], a[None, :]] - dist[b[:, None], b[None, :]]
        gain = np.triu(gain, 1)
        # reversing a prefix order[0..j] drops edge (a_j, b_j) and adds (a_0... no: new edge (order[0], b_j)
        pre = old - dist[order[0], b]
        # reversing a suffix order[i+1..] drops edge (a_i, b_i), adds (a_i, order[-1])
        suf = old - dist[a, order[-1]]
        cands = [(gain.max(), "mid"), (pre.max(), "pre"), (suf.max(), "suf")]
        g, kind = max(cands, key=lambda c: c[0])
        if g <= 1e-12 * max(1.0, float(old.sum())):
            break
        if kind == "mid":
            i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
            order[i + 1:j + 1] = order[i + 1:j + 1][::-1].copy()
        elif kind == "pre":
            j = int(np.argmax(pre))
            order[:j + 1] = order[:j + 1][::-1].copy()
        else:
            i = int(np.argmax(suf))
            order[i + 1:] = order[i + 1:][::-1].copy()
    return order


def fast_tsp_path(dist: np.ndarray, seconds: float = 0.5) -> np.ndarray | None:
    """Shortest path with ``fast-tsp`` (tour over the units + a dummy node); None if not installed."""
    try:
        import fast_tsp
    except ImportError:
        return None
    n = dist.shape[0]
    if n <= 2:
        return np.arange(n)
    top = float(dist.max())
    scaled = np.zeros((n + 1, n + 1), dtype=np.int64)
    if top > 0:
        scaled[:n, :n] = np.rint(dist / top * COST_SCALE).astype(np.int64)
    tour = list(fast_tsp.find_tour(scaled.tolist(), duration_seconds=seconds, max_threads=1,
                                   stop_when_converged=True))
    k = tour.index(n)
    return np.array(tour[k + 1:] + tour[:k])


def shortest_path(dist: np.ndarray, solver: str = "auto") -> np.ndarray:
    """Order of the units along a short Hamiltonian path (``auto``: fast-tsp if installed, else 2-opt)."""
    if solver not in ("auto", "fast_tsp", "two_opt"):
        raise WslError(f"smooth: solver must be 'auto', 'fast_tsp' or 'two_opt', got {solver!r}")
    if solver in ("auto", "fast_tsp"):
        order = fast_tsp_path(dist)
        if order is not None:
            return order
        if solver == "fast_tsp":
            raise WslError("smooth: solver 'fast_tsp' needs the fast-tsp package (pip install fast-tsp)")
        warnings.warn("fast-tsp is not installed; smoothing uses the built-in 2-opt", stacklevel=2)
    return two_opt_path(dist)


def smoothing_permutation(space: WeightSpace, state: dict[str, torch.Tensor],
                          solver: str = "auto") -> dict[int, torch.Tensor]:
    """``{group: perm}`` ordering every permutable root group along a short path of unit features."""
    perms = {}
    for g in space.spec.groups:
        if g.fixed or g.parent is not None or g.size <= 2:
            continue
        if any(h.parent == g.id for h in space.spec.groups):
            continue  # groups with nested children (heads) keep their order
        f = unit_features(space, state, g.id).double()
        dist = torch.cdist(f, f).numpy()
        order = torch.as_tensor(shortest_path(dist, solver), dtype=torch.long)
        norms = f.abs().sum(1)
        if norms[order[0]] > norms[order[-1]]:  # orient: the path starts at the lighter end
            order = order.flip(0)
        perms[g.id] = order
    return perms


def smooth(space: WeightSpace, state: dict[str, torch.Tensor],
           solver: str = "auto") -> tuple[dict[str, torch.Tensor], dict[int, torch.Tensor]]:
    """The smoothed (function-preserving permuted) state_dict and the permutation applied."""
    perms = smoothing_permutation(space, state, solver)
    return space.permute(state, perms), perms


def total_variation(space: WeightSpace, state: dict[str, torch.Tensor]) -> float:
    """``sum |w[.., j+1, ..] - w[.., j, ..]|`` over every permutable unit axis of every tensor."""
    tv = 0.0
    for t in space.spec.tensors:
        if t.name not in state:
            continue
        w = state[t.name].detach().double()
        for a, ax in enumerate(t.axes):
            if len(ax) == 1 and len(ax[0]) == 1 and ax[0][0][0] is not None:
                if not space.spec.groups[ax[0][0][0]].fixed and w.shape[a] > 1:
                    tv += float(w.diff(dim=a).abs().sum())
    return tv
