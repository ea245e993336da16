"""Parameter graphs (exact round trip) and dense weight-space features.

* :class:`GraphLayout` -- per-architecture index maps (cached on the space).
* :func:`build` / :func:`build_one` -- state_dicts -> PyG ``Batch`` / :class:`ParameterGraph`.
* :func:`decode` / :func:`decode_edges` -- graphs (or per-node/edge values) -> state_dicts, bit-exact.
* :func:`collate` / :func:`to_graphs` -- batch graphs of mixed architectures and split them again.
* :class:`WeightSpaceFeatures` -- per-block dense tensors ``(N, C, *units)`` for NFN-style layers.
"""

from wsl.graph.build import build, build_one
from wsl.graph.data import ParameterGraph, collate, extras_list, to_graphs
from wsl.graph.decode import decode, decode_edges
from wsl.graph.features import WeightSpaceFeatures
from wsl.graph.io import load_graph, save_graph
from wsl.graph.layout import EDGE_KINDS, NODE_KINDS, GraphLayout

__all__ = [
    "EDGE_KINDS", "NODE_KINDS", "GraphLayout", "ParameterGraph", "WeightSpaceFeatures", "build", "build_one",
    "collate", "decode", "decode_edges", "extras_list", "load_graph", "save_graph", "to_graphs",
]
