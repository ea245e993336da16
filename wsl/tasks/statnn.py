"""StatNN features: per-tensor weight statistics of stacked models, for the baselines and stats meta-models.

*StatNN* (Unterthiner et al. 2020): seven statistics of every tensor -- mean,
standard deviation (population, ``ddof=0``) and the 0/25/50/75/100 percentiles
(linear interpolation, as ``numpy.percentile``; :func:`wsl.nn.stats.tensor_stats`) -- concatenated.

Two feature layouts (:func:`statnn_features`; :func:`statnn_matrix` for a zoo view):

``per_tensor``
    One block of 7 per floating-point state_dict entry, in state_dict order
    (weights, biases, normalization parameters and statistics; integer
    entries such as ``num_batches_tracked`` are skipped). Needs a single
    architecture: this is the layout of the original paper.
``buckets``
    Fixed length for any architecture (used for mixed zoos). Tensors are
    grouped by role and depth: weights of the *first* layer, of all *middle*
    layers pooled together, of the *last* layer; the same three buckets for
    biases; all normalization scales pooled; all normalization shifts pooled
    (6 + 2 buckets x 7 statistics; an empty bucket is all zeros), followed by
    the number of weight tensors, the number of normalization layers and
    ``log10`` of the parameter count (59 features). Statistics of a pooled
    bucket are over the concatenated values.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from wsl.errors import ConfigError, WslError
from wsl.nn.stats import tensor_stats

__all__ = ["NUM_BUCKET_FEATURES", "signatures", "statnn_features", "statnn_matrix"]

NUM_BUCKET_FEATURES = 8 * 7 + 3


def _float_names(space: Any, stacked: Mapping[str, torch.Tensor]) -> list[str]:
    names = list(space.tensors) if space is not None else list(stacked)
    return [n for n in names if stacked[n].is_floating_point()]


def statnn_features(space: Any, stacked: Mapping[str, torch.Tensor], layout: str = "per_tensor") -> torch.Tensor:
    """StatNN features ``(N, F)`` (float64) of ``N`` stacked models of one architecture."""
    if layout == "per_tensor":
        names = _float_names(space, stacked)
        n = int(stacked[names[0]].shape[0])
        return torch.cat([tensor_stats(stacked[k].reshape(n, -1)) for k in names], dim=1)
    if layout != "buckets":
        raise ConfigError(f"statnn_features: layout must be 'per_tensor' or 'buckets', got {layout!r}")
    if space is None:
        raise WslError("statnn_features: the 'buckets' layout needs the WeightSpace (tensor roles)")
    roles = {t.name: t.role for t in space.tensors.values()}
    n = int(next(iter(stacked.values())).shape[0])

    def flat(names: Sequence[str]) -> torch.Tensor:
        if not names:
            return torch.zeros(n, 0, dtype=torch.float64, device=next(iter(stacked.values())).device)
        return torch.cat([stacked[k].reshape(n, -1).to(torch.float64) for k in names], dim=1)

    blocks = []
    for role in ("weight", "bias"):
        names = [k for k in space.tensors if roles[k] == role]
        first, middle, last = names[:1], names[1:-1], names[-1:] if len(names) > 1 else []
        blocks += [tensor_stats(flat(first)), tensor_stats(flat(middle)), tensor_stats(flat(last))]
    for role in ("norm_scale", "norm_shift"):
        blocks.append(tensor_stats(flat([k for k in space.tensors if roles[k] == role])))
    n_weight = sum(r == "weight" for r in roles.values())
    n_norm = sum(r == "norm_scale" for r in roles.values())
    count = torch.tensor([n_weight, n_norm, math.log10(max(space.num_parameters, 1))], dtype=torch.float64)
    blocks.append(count.to(blocks[0].device).expand(n, 3))
    return torch.cat(blocks, dim=1)


def signatures(zoo: Any) -> dict[str, str]:
    """``{arch_id: WeightSpace signature}`` of the architectures used by the rows of a zoo view."""
    archs = zoo.column("arch")
    return {str(a): zoo[int(np.flatnonzero(archs == a)[0])].space.signature for a in dict.fromkeys(archs.tolist())}


def statnn_matrix(zoo: Any, layout: str = "auto", chunk: int = 512) -> np.ndarray:
    """StatNN features of every row of a zoo view, ``(len(zoo), F)`` float64, in row order.

    ``auto`` picks ``per_tensor`` when every row has the same weight space
    (signature), else ``buckets``.
    """
    archs = zoo.column("arch")
    sigs = set(signatures(zoo).values())
    if layout == "auto":
        layout = "per_tensor" if len(sigs) <= 1 else "buckets"
    if layout == "per_tensor" and len(sigs) > 1:
        raise ConfigError(f"{zoo.root}: StatNN layout 'per_tensor' needs one architecture, the selection has "
                          f"{sorted(set(archs.tolist()))}; use layout 'buckets'")
    out: np.ndarray | None = None
    for aid in dict.fromkeys(archs.tolist()):
        pos = np.flatnonzero(archs == aid)
        space = zoo[int(pos[0])].space
        for lo in range(0, len(pos), chunk):
            sel = pos[lo:lo + chunk]
            feats = statnn_features(space, zoo.stacked(sel), layout).numpy()
            if out is None:
                out = np.zeros((len(zoo), feats.shape[1]), dtype=np.float64)
            out[sel] = feats
    if out is None:
        raise WslError(f"{zoo.root}: no rows to compute StatNN features for")
    return out
