"""INR editing in weight space: updates, edited weights, the render loss, and the two reference edits.

An editing model reads INR weights ``W`` (normalised, :mod:`wsl.tasks.inr_data`)
and returns an update ``U`` of the same space; the edited INR is

    W' = W + dW,   dW_t = r_t U_t        (r_t: the training RMS of tensor t)

and its loss is the render MSE against the edit target ``T = edit(render(W))``::

    L(W) = mean_p ( render(W')[p] - T[p] )^2

Reference edits (no meta-model): *identity* (``dW = 0``: the MSE of leaving
the INR alone, the floor every model must beat) and *gradient descent*
(:func:`fit_to_targets`: Adam on ``W'`` itself, per INR, to the target --
what re-fitting an INR costs; with enough steps it is the quality ceiling).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from wsl.tasks.inr import INRError, Renderer

__all__ = ["decode_update", "edit_mse", "edited_weights", "fit_to_targets"]


def decode_update(space: Any, out: Any, n: int) -> dict[str, torch.Tensor]:
    """A model's update output as a stacked state_dict ``{name: (n, *shape)}``.

    ``out`` is a stacked state_dict (dense editing networks) or the
    ``(x' (n*V, S), edge_attr' (n*E, K))`` pair of a graph model with the
    equivariant head (graphs of one architecture, contiguous in the batch).
    """
    if isinstance(out, Mapping):
        return dict(out)
    if isinstance(out, tuple) and len(out) == 2:
        from wsl.graph.decode import decode_edges
        from wsl.graph.layout import GraphLayout

        x, e = out
        lay = GraphLayout.of(space)
        if x.shape[0] != n * lay.num_nodes or e.shape[0] != n * lay.num_edges:
            raise INRError(f"decode_update: {x.shape[0]} nodes / {e.shape[0]} edges are not {n} graphs of "
                           f"{lay.num_nodes} / {lay.num_edges}")
        return decode_edges(space, x.reshape(n, lay.num_nodes, -1), e.reshape(n, lay.num_edges, -1))
    raise INRError(f"an editing model must return a stacked state_dict or (node, edge) values, got {type(out).__name__}")


def edited_weights(raw: Mapping[str, torch.Tensor], update: Mapping[str, torch.Tensor],
                   scales: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """``W'_t = W_t + r_t U_t`` for every floating tensor (others are kept)."""
    out = {}
    for k, w in raw.items():
        if k in update and w.is_floating_point():
            out[k] = w + float(scales.get(k, 1.0)) * update[k].to(w.dtype)
        else:
            out[k] = w
    return out


def edit_mse(renderer: Renderer, weights: Mapping[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Per-INR render MSE ``(n,)`` of ``weights`` against ``targets`` ``(n, *shape)``."""
    pred = renderer(weights)
    return (pred - targets.to(pred.dtype)).square().flatten(1).mean(1)


def fit_to_targets(renderer: Renderer, raw: Mapping[str, torch.Tensor], targets: torch.Tensor, *,
                   steps: int = 100, lr: float = 1e-3, chunk: int = 256) -> dict[str, Any]:
    """Per-INR gradient descent: Adam on the weights of each INR (started at ``W``) to its target.

    Every INR has its own Adam state (the batch is a sum of independent
    per-INR losses, so Adam's per-parameter statistics are per INR).
    Returns ``{"mse": (n,) final render MSE, "weights": edited stacked state_dict, "seconds",
    "seconds_per_inr", "steps"}``.
    """
    if steps < 1:
        raise INRError(f"fit_to_targets: steps must be >= 1, got {steps}")
    n = int(targets.shape[0])
    t0 = time.perf_counter()
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in raw}
    mses = []
    for lo in range(0, n, chunk):
        part = {k: v[lo:lo + chunk].detach().clone().requires_grad_(v.is_floating_point()) for k, v in raw.items()}
        params = [v for v in part.values() if v.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        tgt = targets[lo:lo + chunk]
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            edit_mse(renderer, part, tgt).sum().backward()
            opt.step()
        with torch.no_grad():
            mses.append(edit_mse(renderer, part, tgt))
        for k, v in part.items():
            outs[k].append(v.detach())
    seconds = time.perf_counter() - t0
    return {"mse": torch.cat(mses), "weights": {k: torch.cat(v) for k, v in outs.items()}, "seconds": seconds,
            "seconds_per_inr": seconds / max(n, 1), "steps": steps}
