"""Value nodes: node parameters with several values per unit in the parameter graph (wsl.space.value_nodes).

A norm over merged patches (4 values per channel, torch.nn re-creation of Swin's patch merging) and the
q/k biases of a rotary attention (Qwen2: rigid units inside each head, so ``head_dim`` values per head
node; needs ``transformers``, skipped without it). Checks: the layout (node and edge counts, kinds,
positions, the identity edges to the unit), exact round trips in both edge forms and in a batch, and
isomorphism under two random permutations (:func:`tests.graph_checks.assert_graph_equivariant`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsl.graph import EDGE_KINDS, NODE_KINDS, GraphLayout, build, build_one, decode
from wsl.space import WeightSpace
from wsl.space.value_nodes import value_node_sets

from tests.graph_checks import assert_graph_equivariant
from tests.reach_checks import randomized
from tests.test_space_flat_norm import MergeNet, X


def test_value_nodes_layout_and_round_trips() -> None:
    m = randomized(MergeNet(nn.LayerNorm))
    space = WeightSpace.from_module(m, X.double())
    sd = m.state_dict()
    [vs] = value_node_sets(space.spec)[0]
    lay = GraphLayout.of(space)
    first = int(lay.site_offsets[-1])
    assert lay.num_nodes == first + vs.count == space.graph_size()[0]
    assert torch.equal(lay.node_kind[first:], torch.full((vs.count,), NODE_KINDS["other"]))
    assert torch.equal(lay.node_pos[first:], torch.arange(vs.width).repeat(vs.units))
    tail = lay.edge_index[:, -vs.count:]
    unit0 = int(lay.site_offsets[vs.site])
    assert torch.equal(tail[0], unit0 + torch.arange(vs.units).repeat_interleave(vs.width))
    assert torch.equal(tail[1], first + torch.arange(vs.count))
    assert bool((lay.edge_conn[-vs.count:] == -1).all()) and bool((lay.edge_width[-vs.count:] == 0).all())
    assert bool((lay.edge_kind[-vs.count:] == EDGE_KINDS["other"]).all())
    g = build_one(space, sd)
    w = sd["merge.norm.weight"].view(4, 4)  # (position, channel): value node (channel u, position f)
    assert torch.equal(g.x[first:, 1].view(4, 4), w.t())
    assert torch.equal(g.x[first:, 2].view(4, 4), sd["merge.norm.bias"].view(4, 4).t())
    for edges in ("padded", "ragged"):
        back = decode(build_one(space, sd, edges=edges), space)
        assert all(torch.equal(back[k], sd[k]) for k in sd), edges
    other = randomized(MergeNet(nn.LayerNorm), seed=3).state_dict()
    batch = build(space, space.stack([sd, other]))
    assert all(torch.equal(decode(batch, space)[k][1], other[k]) for k in sd)
    assert_graph_equivariant(space, sd)


def test_qwen2_rotary_q_k_biases_have_a_graph() -> None:
    pytest.importorskip("transformers", reason="the optional 'transformers' package is not installed")
    import transformers

    from wsl.archs.hf_inputs import hf_example_inputs
    from wsl.archs.hf_tiny import build_tiny

    transformers.logging.set_verbosity_error()
    m = build_tiny("Qwen2Model", layers=1).double()
    space = WeightSpace.from_module(m, hf_example_inputs(m))
    sd = randomized(m).state_dict()
    q = space.tensors["layers.0.self_attn.q_proj.bias"].axes[0][0]
    assert q[0][0] is not None and q[1][0] is None  # (kv heads) x (rigid units of their query heads)
    sets = value_node_sets(space.spec)[0]
    assert {space.sites[vs.site].group for vs in sets} == {q[0][0]}
    assert_graph_equivariant(space, sd)
