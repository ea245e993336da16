"""Parameter graphs (exact round trip) and dense weight-space features.

* :class:`GraphLayout` -- per-architecture index maps (cached on the space).
* :func:`build` / :func:`build_one` -- state_dicts -> PyG ``Batch`` / :class:`ParameterGraph`.
* :func:`decode` / :func:`decode_edges` -- graphs (or per-node/edge values) -> state_dicts, bit-exact.
* :func:`collate` / :func:`to_graphs` -- batch graphs of mixed architectures and split them again.
* :func:`padded_edges` / :func:`edge_features` -- ragged edges (big architectures) in padded form.
* :func:`estimate_graph_bytes` / :func:`check_graph_fits` -- a graph's size from the spec, before building.
* :class:`WeightSpaceFeatures` -- per-block dense tensors ``(N, C, *units)`` for NFN-style layers.
"""

from wsl.graph.build import build, build_one
from wsl.graph.data import ParameterGraph, collate, extras_list, to_graphs
from wsl.graph.decode import decode, decode_edges, decode_values
from wsl.graph.features import WeightSpaceFeatures
from wsl.graph.io import load_graph, save_graph
from wsl.graph.layout import EDGE_KINDS, NODE_KINDS, GraphLayout
from wsl.graph.ragged import edge_features, is_ragged, padded_edges, ragged_edges
from wsl.graph.size import GraphTooLargeError, check_graph_fits, estimate_graph_bytes

__all__ = [
    "EDGE_KINDS", "NODE_KINDS", "GraphLayout", "GraphTooLargeError", "ParameterGraph", "WeightSpaceFeatures", "build",
    "build_one", "check_graph_fits", "collate", "decode", "decode_edges", "decode_values", "edge_features",
    "estimate_graph_bytes", "extras_list", "is_ragged", "load_graph", "padded_edges", "ragged_edges", "save_graph",
    "to_graphs",
]
