"""Ragged edge features: every real edge entry once, no padding.

A padded graph stores ``edge_attr`` ``(E, K)`` and ``edge_mask`` ``(E, K)``:
edge ``e``'s ``w_e`` real entries (kernel taps, flattened positions) in
columns ``0..w_e-1``, zeros after them; an identity edge (``w_e = 0``) holds
the constant 1 in column 0. A ragged graph stores the same information as::

    edge_values  (sum_e w_e,)   the real entries, edge after edge
    edge_width   (E,)           w_e

so its memory is proportional to the number of weights rather than to
``E * K``. :func:`padded_edges` and :func:`ragged_edges` convert exactly
between the two (batches included: both attributes concatenate along dim 0).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["edge_features", "is_ragged", "padded_edges", "ragged_edges"]


def is_ragged(data: Any) -> bool:
    """Whether a graph or batch stores ragged edge features."""
    store = getattr(data, "_store", None)
    keys = store.keys() if store is not None else data.keys()
    return "edge_values" in keys


def padded_edges(edge_values: torch.Tensor, edge_width: torch.Tensor, k: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_attr (E, K), edge_mask (E, K))`` of ragged edges (``K``: the widest edge, at least 1)."""
    width = edge_width.to(torch.long)
    widest = int(width.max()) if width.numel() else 0
    k = max(widest, 1) if k is None else int(k)
    if k < widest:
        raise ValueError(f"padded_edges: width {k} is narrower than the widest edge ({widest})")
    mask = torch.arange(k, device=width.device).unsqueeze(0) < width.unsqueeze(1)
    attr = torch.zeros(mask.shape, dtype=edge_values.dtype, device=edge_values.device)
    attr[mask] = edge_values
    attr[:, 0] = torch.where(width == 0, torch.ones((), dtype=attr.dtype, device=attr.device), attr[:, 0])
    return attr, mask


def ragged_edges(edge_attr: torch.Tensor, edge_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_values, edge_width)`` of padded edges (inverse of :func:`padded_edges`)."""
    return edge_attr[edge_mask], edge_mask.sum(1)


def edge_features(data: Any, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_attr, edge_mask)`` of a graph or batch, padded to ``k`` if ragged (stored ones as they are)."""
    if is_ragged(data):
        return padded_edges(data.edge_values, data.edge_width, k)
    return data.edge_attr, data.edge_mask
