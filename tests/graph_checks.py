"""Graph checks shared by the value-node tests: exact round trip, and isomorphism under permutation.

:func:`assert_graph_equivariant` builds the parameter graph of a state and of a randomly permuted copy and
checks that the second is the first with its nodes relabelled: node ``(site s, unit i)`` of the permuted graph
is node ``(s, perms[g][i])`` of the original, and value node ``(u, f)`` of a wide node parameter
(:mod:`wsl.space.value_nodes`) is value node ``(perms[g][u], f)``. Node slots, masks, kinds, depths, groups and
positions must match under that map, and so must every edge with its values.
"""

from __future__ import annotations

import torch

from wsl.graph import GraphLayout, ParameterGraph, build_one, decode
from wsl.space import WeightSpace, random_permutation
from wsl.space.value_nodes import value_node_sets


def node_map(space: WeightSpace, perms: dict[int, torch.Tensor]) -> torch.Tensor:
    """For each node of the permuted model's graph, the matching node of the original's graph."""
    lay = GraphLayout.of(space)
    out = []
    for s in space.sites:
        n = space.groups[s.group].size
        out.append(int(lay.site_offsets[s.id]) + perms.get(s.group, torch.arange(n)))
    start = int(lay.site_offsets[-1])
    for vs in value_node_sets(space.spec)[0]:
        g = space.sites[vs.site].group
        p = perms.get(g, torch.arange(vs.units))
        out.append(start + (p.unsqueeze(1) * vs.width + torch.arange(vs.width)).reshape(-1))
        start += vs.count
    return torch.cat(out)


def _edges(g: ParameterGraph, mapping: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    ei = g.edge_index if mapping is None else mapping[g.edge_index]
    v = g.num_nodes
    key = ((g.edge_conn + 1) * v + ei[0]) * v + ei[1]
    order = torch.argsort(key)
    return key[order], g.edge_attr[order], g.edge_mask[order]


def assert_graph_equivariant(space: WeightSpace, sd: dict[str, torch.Tensor], seeds: tuple[int, ...] = (1, 2)) -> None:
    """Exact round trip, and the permuted model's graph is the original's with nodes relabelled."""
    g0 = build_one(space, sd, edges="padded")
    back = decode(g0, space)
    assert all(torch.equal(back[k], sd[k]) for k in sd), "graph round trip is not exact"
    for seed in seeds:
        perms = random_permutation(space, torch.Generator().manual_seed(seed))
        g1 = build_one(space, space.permute(sd, perms), edges="padded")
        m = node_map(space, perms)
        assert torch.equal(torch.sort(m).values, torch.arange(g0.num_nodes))
        for key in ("x", "x_mask", "node_kind", "node_depth", "node_group", "node_pos"):
            assert torch.equal(g1[key], g0[key][m]), key
        (k0, a0, m0), (k1, a1, m1) = _edges(g0, None), _edges(g1, m)
        assert torch.equal(k0, k1) and len(torch.unique(k0)) == len(k0)
        assert torch.equal(a0, a1) and torch.equal(m0, m1)
        assert torch.equal(g0.extras, g1.extras)
