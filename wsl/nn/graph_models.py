"""Full neural-graph meta-models: encoder + layers + head, built from sizes only.

:class:`NGGNN` (message passing, :mod:`wsl.nn.ng_gnn`) and :class:`NGT`
(relational transformer, :mod:`wsl.nn.ng_t`) take a
:class:`~wsl.graph.ParameterGraph` or a PyG batch of them -- any architecture,
mixed architectures in one batch -- and return

* ``task="invariant"``: ``(G, out_dim)``, invariant to the neuron
  permutations of every encoded network (:class:`~wsl.nn.heads.InvariantHead`);
* ``task="equivariant"``: ``(x' (V, S), edge_attr' (E, K))``, one value per
  parameter slot, equivariant to those permutations
  (:class:`~wsl.nn.heads.EquivariantHead`); turn them into state_dicts with
  :meth:`GraphMetaModel.to_state_dicts`.

:meth:`GraphMetaModel.embed` returns the final node and edge states.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from wsl.nn.graph_encoding import GraphEncoder, graph_index
from wsl.nn.heads import EquivariantHead, HeadError, InvariantHead
from wsl.nn.ng_gnn import PNA_AGGREGATORS, GraphLayerError, NGGNNLayer
from wsl.nn.ng_t import NGTLayer
from wsl.space.weightspace import WeightSpace

__all__ = ["GraphMetaModel", "NGGNN", "NGT"]

TASKS = ("invariant", "equivariant")


class GraphMetaModel(nn.Module):
    """Shared skeleton: ``GraphEncoder -> layers -> LN -> head`` (see subclasses for the layers).

    Args:
        layers: the message-passing / attention layers (each subclass's ``_layer`` calls one).
        hidden: width of node and edge states.
        out_dim: outputs per graph (invariant task).
        task: ``"invariant"`` or ``"equivariant"``.
        max_edge_width: widest ``edge_attr`` accepted (default edge output width of the equivariant head).
        max_depth, max_pos: embedding table sizes of the node encoder.
        head_hidden, head_layers: the head MLPs.
        pooling, node_kinds: invariant head pooling (see :class:`InvariantHead`).
        residual_head: equivariant head adds the input parameters (predicts an update; starts as identity).
        edge_out_width: width of the equivariant edge outputs (default ``max_edge_width``; must be at
            least the widest decoded architecture's ``K``, e.g. 9 for 3x3 CNNs).
    """

    def __init__(self, layers: Sequence[nn.Module], hidden: int, out_dim: int = 1, task: str = "invariant",
                 max_edge_width: int = 64, max_depth: int = 64, max_pos: int = 1024, head_hidden: int = 128,
                 head_layers: int = 2, pooling: Sequence[str] = ("mean", "max"),
                 node_kinds: Sequence[str | int] | None = None, residual_head: bool = False,
                 edge_out_width: int | None = None) -> None:
        super().__init__()
        if task not in TASKS:
            raise HeadError(f"{type(self).__name__}: task must be one of {TASKS}, got {task!r}")
        self.task, self.hidden = task, hidden
        self.encoder = GraphEncoder(hidden, max_edge_width=max_edge_width, max_depth=max_depth, max_pos=max_pos)
        self.layers = nn.ModuleList(layers)
        self.node_norm = nn.LayerNorm(hidden)
        self.edge_norm: nn.Module = nn.LayerNorm(hidden) if task == "equivariant" else nn.Identity()
        self.head: nn.Module
        if task == "invariant":
            self.head = InvariantHead(hidden, out_dim, head_hidden, head_layers, pooling, node_kinds)
        else:
            width = max_edge_width if edge_out_width is None else edge_out_width
            self.head = EquivariantHead(hidden, hidden, width, hidden=head_hidden, num_layers=head_layers,
                                        residual=residual_head, zero_init=residual_head)

    def _layer(self, layer: nn.Module, h: torch.Tensor, e: torch.Tensor, data: Any, batch: torch.Tensor,
               num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def embed(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Final node states (V, hidden) and edge states (E, hidden), layer-normalized.

        Invariant models never read edge states after the last layer, so their
        last layer has no edge update (every parameter gets a gradient) and the
        edge states returned here are those after the second-to-last layer.
        """
        h, e = self.encoder(data)
        batch, g = graph_index(data)
        for layer in self.layers:
            h, e = self._layer(layer, h, e, data, batch, g)
        return self.node_norm(h), self.edge_norm(e)

    def forward(self, data: Any) -> Any:
        """Invariant: ``(G, out_dim)``. Equivariant: ``(x' (V, S), edge_attr' (E, edge_out_width))``."""
        h, e = self.embed(data)
        if self.task == "invariant":
            batch, g = graph_index(data)
            return self.head(h, batch, data.node_kind, g)
        return self.head(h, e, data)

    def to_state_dicts(self, data: Any, spaces: WeightSpace | Sequence[WeightSpace] | Mapping[str, WeightSpace],
                       outputs: tuple[torch.Tensor, torch.Tensor] | None = None,
                       **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        """Equivariant outputs (computed if not given) -> one state_dict per graph (see
        :meth:`EquivariantHead.to_state_dicts` for ``spaces`` and the keyword options)."""
        if self.task != "equivariant":
            raise HeadError(f"{type(self).__name__}.to_state_dicts needs task='equivariant', this model is "
                            f"'{self.task}'")
        x, a = self(data) if outputs is None else outputs
        return EquivariantHead.to_state_dicts(data, spaces, x, a, **kwargs)


class NGGNN(GraphMetaModel):
    """NG-GNN: :class:`~wsl.nn.graph_encoding.GraphEncoder`, ``num_layers`` x
    :class:`~wsl.nn.ng_gnn.NGGNNLayer` (bidirectional PNA messages + edge updates), a head.

    Args:
        hidden: width of node/edge states (default 64).
        num_layers: message-passing layers (default 4).
        dropout: residual-branch dropout.
        avg_log_degree: PNA degree-scaler ``delta``.
        aggregators: PNA aggregators, a subset of ``("mean", "max", "min", "std")``.
        **kwargs: :class:`GraphMetaModel` options (``out_dim``, ``task``, ``max_edge_width``, ...).
    """

    def __init__(self, hidden: int = 64, num_layers: int = 4, dropout: float = 0.0, avg_log_degree: float = 2.0,
                 aggregators: Sequence[str] = PNA_AGGREGATORS, **kwargs: Any) -> None:
        last = _check(type(self).__name__, num_layers, kwargs)
        layers = [NGGNNLayer(hidden, dropout, avg_log_degree, aggregators, edge_update=i < last)
                  for i in range(num_layers)]
        super().__init__(layers, hidden, **kwargs)

    def _layer(self, layer: nn.Module, h: torch.Tensor, e: torch.Tensor, data: Any, batch: torch.Tensor,
               num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        return layer(h, e, data.edge_index)  # type: ignore[no-any-return]


class NGT(GraphMetaModel):
    """NG-T: :class:`~wsl.nn.graph_encoding.GraphEncoder`, ``num_layers`` x
    :class:`~wsl.nn.ng_t.NGTLayer` (relational attention within each graph + edge updates), a head.

    Args:
        hidden: width of node/edge states (default 64, divisible by ``heads``).
        num_layers: transformer layers (default 4).
        heads: attention heads.
        ffn_mult: feed-forward width multiplier.
        dropout: residual-branch dropout.
        mask_padding: keep True (False reproduces the padding-mask bug, for tests only).
        **kwargs: :class:`GraphMetaModel` options (``out_dim``, ``task``, ``max_edge_width``, ...).
    """

    def __init__(self, hidden: int = 64, num_layers: int = 4, heads: int = 4, ffn_mult: int = 2,
                 dropout: float = 0.0, mask_padding: bool = True, **kwargs: Any) -> None:
        last = _check(type(self).__name__, num_layers, kwargs)
        layers = [NGTLayer(hidden, heads, ffn_mult, dropout, edge_update=i < last, mask_padding=mask_padding)
                  for i in range(num_layers)]
        super().__init__(layers, hidden, **kwargs)

    def _layer(self, layer: nn.Module, h: torch.Tensor, e: torch.Tensor, data: Any, batch: torch.Tensor,
               num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
        return layer(h, e, data.edge_index, batch, num_graphs)  # type: ignore[no-any-return]


def _check(name: str, num_layers: int, kwargs: dict[str, Any]) -> int:
    """Validate ``num_layers``/``task``; the number of layers that update edges."""
    if num_layers < 0:
        raise GraphLayerError(f"{name}: num_layers must be >= 0, got {num_layers}")
    task = kwargs.get("task", "invariant")
    if task not in TASKS:
        raise HeadError(f"{name}: task must be one of {TASKS}, got {task!r}")
    return num_layers if task == "equivariant" else num_layers - 1
