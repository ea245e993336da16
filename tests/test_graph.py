"""Parameter graphs: exact round trip, sizes, isomorphism under permutation, batching."""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import pytest
import torch
from torch import nn

from wsl.errors import StateDictMismatchError, WslError
from wsl.graph import (EDGE_KINDS, NODE_KINDS, GraphLayout, ParameterGraph, build, build_one, collate, decode,
                       decode_edges, extras_list, to_graphs)
from wsl.space import WeightSpace, random_permutation
from wsl.space.spec import NODE_SLOTS


# ----------------------------------------------------------------------------- model family
class ResBlock(nn.Module):
    """x + conv(bn(conv(x))), optionally with a strided 1x1 downsample on the skip path."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.down = nn.Conv2d(cin, cout, 1, stride=2) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        skip = x if self.down is None else self.down(x)
        return torch.relu(skip + y)


class ResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.b1 = ResBlock(4, 4, down=False)
        self.b2 = ResBlock(4, 6, down=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b2(self.b1(self.stem(x))).mean((2, 3)))


class EmbedNet(nn.Module):
    """Embedding + learned positions + LayerNorm; an unused parameter and a tied (aliased) head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.pos = nn.Parameter(torch.randn(1, 5, 6))
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)
        self.head_alias = self.head
        self.unused = nn.Parameter(torch.randn(3))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.emb(ids) + self.pos)).mean(1)


class MHABlock(nn.Module):
    def __init__(self, d: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.out = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        y = self.ln(x)
        a, _ = self.attn(y, y, y, need_weights=False)
        return self.out(x + a).mean(1)


class BertSelfAttention(nn.Module):
    """Named like HF's class so the tracer recognises it (separate q/k/v Linears)."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.attention_head_size = hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.num_attention_heads, self.attention_head_size
        q, k, v = (m(x).view(b, t, h, d).transpose(1, 2) for m in (self.query, self.key, self.value))
        att = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        return (att @ v).transpose(1, 2).reshape(b, t, h * d)


class BertBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(9, 8)
        self.attn = BertSelfAttention(8, 2)
        self.dense = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.cls = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        return self.cls(self.ln(x + self.dense(self.attn(x)))).mean(1)


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)), torch.randn(2, 5)


def _conv1d() -> tuple[nn.Module, torch.Tensor]:
    m = nn.Sequential(nn.Conv1d(2, 6, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv1d(6, 4, 5, padding=4, dilation=2, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    return m, torch.randn(2, 2, 16)


def _conv2d() -> tuple[nn.Module, torch.Tensor]:
    m = nn.Sequential(nn.Conv2d(3, 6, (3, 5), stride=(2, 1), padding=(1, 2)), nn.ReLU(), nn.Conv2d(6, 4, 1),
                      nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.GroupNorm(1, 4),
                      nn.Conv2d(4, 5, 3, dilation=2, padding=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(5, 2))
    return m, torch.randn(2, 3, 8, 8)


def _norm_cnn() -> tuple[nn.Module, torch.Tensor]:
    m = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 5, 1, 2),
                      nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return m, torch.randn(2, 1, 8, 8)


def _depthwise() -> tuple[nn.Module, torch.Tensor]:
    m = nn.Sequential(nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4),
                      nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, groups=4, bias=False), nn.Flatten(), nn.Linear(4 * 9, 2))
    return m, torch.randn(2, 2, 7, 7)


FAMILIES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": _mlp, "conv1d": _conv1d, "conv2d": _conv2d, "norm_cnn": _norm_cnn, "depthwise": _depthwise,
    "resnet": lambda: (ResNet(), torch.randn(2, 3, 8, 8)),
    "embed": lambda: (EmbedNet(), torch.randint(0, 11, (2, 5))),
    "mha": lambda: (MHABlock(), torch.randn(2, 5, 4)),
    "bert": lambda: (BertBlock(), torch.randint(0, 9, (2, 4))),
}


@functools.lru_cache(maxsize=None)
def family(name: str) -> tuple[WeightSpace, nn.Module]:
    """(space, module) of a family member, traced once per test session."""
    torch.manual_seed(0)
    module, example = FAMILIES[name]()
    module.eval()
    return WeightSpace.from_module(module, example), module


def random_sd(name: str, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict of family ``name`` with every float entry random (BN stats too) and tied entries kept tied."""
    space, module = family(name)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, torch.Tensor] = {}
    for k, v in module.state_dict(keep_vars=False).items():
        key = v.data_ptr()
        if key in seen:
            out[k] = seen[key]
            continue
        if v.is_floating_point():
            t = torch.randn(v.shape, generator=gen)
            if k.endswith("running_var"):
                t = t.abs() + 0.1
        else:
            t = torch.randint(0, 1000, v.shape, generator=gen, dtype=v.dtype)
        seen[key] = out[k] = t
    space.check(out)
    return out


def stacked_sd(name: str, n: int = 3) -> dict[str, torch.Tensor]:
    """``n`` random state_dicts of family ``name``, stacked."""
    return family(name)[0].stack([random_sd(name, s) for s in range(n)])


def assert_exact(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


NAMES = list(FAMILIES)


# ----------------------------------------------------------------------------- round trip & sizes
@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_single_and_stacked(name: str) -> None:
    space, _ = family(name)
    sd = random_sd(name, 1)
    g = build_one(space, sd)
    assert isinstance(g, ParameterGraph) and g.arch == space.signature
    assert_exact(decode(g, space), sd)
    st = stacked_sd(name)
    batch = build(space, st)
    assert batch.num_graphs == 3
    assert_exact(decode(batch, space), st)
    gathered = build(space, st, method="gather")  # the layout's gather map gives the same graphs
    shared = [build(space, st, reuse_structure=True) for _ in range(2)]
    assert shared[0].edge_index is shared[1].edge_index
    for key in ("x", "edge_attr", "extras", "edge_index", "edge_mask", "node_kind"):
        assert torch.equal(gathered[key], batch[key]) and torch.equal(shared[1][key], batch[key]), key
    # the batch splits into graphs equal to build_one's
    for i, gi in enumerate(to_graphs(batch)):
        ref = build_one(space, {k: v[i] for k, v in st.items()})
        for key in ref.keys():
            a, b = gi[key], ref[key]
            assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b), key


@pytest.mark.parametrize("name", NAMES)
def test_graph_size_and_attributes(name: str) -> None:
    space, _ = family(name)
    g = build_one(space, random_sd(name, 2))
    v, e = space.graph_size()
    lay = GraphLayout.of(space)
    assert GraphLayout.of(space) is lay
    assert (g.num_nodes, g.edge_index.shape[1]) == (v, e)
    assert g.x.shape == (v, len(NODE_SLOTS)) and g.edge_attr.shape == (e, lay.edge_dim)
    assert g.edge_mask.shape == g.edge_attr.shape and g.x_mask.shape == g.x.shape
    assert int(g.edge_index.min()) >= 0 and int(g.edge_index.max()) < v
    assert set(g.edge_kind.tolist()) <= set(EDGE_KINDS.values())
    assert set(g.node_kind.tolist()) <= set(NODE_KINDS.values())
    assert NODE_KINDS["input"] in g.node_kind.tolist() or NODE_KINDS["tokens"] in g.node_kind.tolist()
    assert NODE_KINDS["output"] in g.node_kind.tolist()
    # bijection: real slots + extras count every stored scalar exactly once
    aliases = {a for a, _ in space.spec.aliases}
    stored = sum(t.numel for t in space.tensors.values() if t.name not in aliases)
    assert int(g.x_mask.sum() + g.edge_mask.sum()) + g.extras.numel() == stored
    # identity edges: constant 1 in column 0, no parameter
    ident = ~g.edge_mask.any(1)
    if bool(ident.any()):
        assert torch.equal(g.edge_attr[ident, 0], torch.ones(int(ident.sum())))
        assert not bool(g.edge_attr[ident, 1:].any())
    # fixed-group nodes carry their position, permutable ones -1
    fixed = torch.tensor([space.groups[s.group].fixed for s in space.sites])
    sizes = torch.tensor([space.groups[s.group].size for s in space.sites])
    assert torch.equal(g.node_pos >= 0, fixed.repeat_interleave(sizes))


def test_kernel_placement_and_masks() -> None:
    space, _ = family("norm_cnn")
    sd = random_sd("norm_cnn", 3)
    g = build_one(space, sd)
    lay = GraphLayout.of(space)
    assert lay.edge_dim == 25  # the 5x5 kernel; 3x3 kernels and 16 flattened positions are padded
    first = (g.edge_conn == 0).nonzero().reshape(-1)
    w = sd["0.weight"]  # (8, 1, 3, 3): edge e = (out e, in 0)
    assert torch.equal(g.edge_attr[first, :9], w.reshape(8, 9))
    assert not bool(g.edge_attr[first, 9:].any()) and bool(g.edge_mask[first, :9].all())
    assert not bool(g.edge_mask[first, 9:].any())
    bn_nodes = g.x_mask[:, NODE_SLOTS.index("running_var")].nonzero().reshape(-1)
    assert torch.equal(g.x[bn_nodes, NODE_SLOTS.index("running_var")], sd["1.running_var"])
    assert g.extras.dtype == torch.float64 and int(g.extras[0]) == int(sd["1.num_batches_tracked"])


def test_zero_weights_remain_edges() -> None:
    space, _ = family("mlp")
    sd = random_sd("mlp", 4)
    sd["2.weight"] = torch.zeros_like(sd["2.weight"])
    sd["0.weight"][0, :] = 0.0
    g = build_one(space, sd)
    assert g.edge_index.shape[1] == space.graph_size()[1]
    zero_rows = (g.edge_attr[:, 0] == 0) & g.edge_mask[:, 0]
    assert int(zero_rows.sum()) >= sd["2.weight"].numel() + sd["0.weight"].shape[1]
    assert_exact(decode(g, space), sd)


# ----------------------------------------------------------------------------- permutation isomorphism
def node_map(space: WeightSpace, perms: dict[int, torch.Tensor]) -> torch.Tensor:
    """For each node of the permuted model's graph, the matching node of the original's.

    ``space.permute`` means: new unit ``i`` of group ``g`` is old unit ``perms[g][i]``,
    so node (site s, unit i) of the permuted graph is node (site s, unit perms[g][i]).
    """
    out = []
    lay = GraphLayout.of(space)
    for s in space.sites:
        n = space.groups[s.group].size
        p = perms.get(s.group, torch.arange(n))
        out.append(int(lay.site_offsets[s.id]) + p)
    return torch.cat(out)


def _edge_table(g: ParameterGraph, mapping: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ei = g.edge_index if mapping is None else mapping[g.edge_index]
    v = g.num_nodes
    key = (g.edge_conn * v + ei[0]) * v + ei[1]
    order = torch.argsort(key)
    return key[order], g.edge_attr[order], g.edge_mask[order]


@pytest.mark.parametrize("name", NAMES)
def test_isomorphic_under_permutation(name: str) -> None:
    space, _ = family(name)
    sd = random_sd(name, 5)
    perms = random_permutation(space, torch.Generator().manual_seed(7))
    assert perms, "family has permutable groups"
    sd_p = space.permute(sd, perms)
    g0, g1, m = build_one(space, sd), build_one(space, sd_p), node_map(space, perms)
    assert torch.equal(torch.sort(m).values, torch.arange(g0.num_nodes))
    for key in ("x", "x_mask", "node_kind", "node_depth", "node_group", "node_pos"):
        assert torch.equal(g1[key], g0[key][m]), key
    (k0, a0, m0), (k1, a1, m1) = _edge_table(g0, None), _edge_table(g1, m)
    assert torch.equal(k0, k1) and len(torch.unique(k0)) == len(k0)
    assert torch.equal(a0, a1) and torch.equal(m0, m1)
    assert torch.equal(g0.extras, g1.extras)
    if any(bool((p != torch.arange(p.numel())).any()) for p in perms.values()):
        assert not torch.equal(g0.x, g1.x) or not torch.equal(g0.edge_attr, g1.edge_attr)


# ----------------------------------------------------------------------------- batching, dtypes, errors
def test_mixed_architecture_collate() -> None:
    names = ["mlp", "norm_cnn", "embed", "bert"]
    graphs = [build_one(family(n)[0], random_sd(n, 8)) for n in names]
    batch = collate(graphs)
    widths = {n: GraphLayout.of(family(n)[0]).edge_dim for n in names}
    assert batch.edge_attr.shape[1] == max(widths.values()) == 25
    assert batch.num_graphs == len(names) and list(batch.arch) == [family(n)[0].signature for n in names]
    assert [int(t.numel()) for t in extras_list(batch)] == [g.extras.numel() for g in graphs]
    for n, g in zip(names, to_graphs(batch)):
        assert_exact(decode(g, family(n)[0]), random_sd(n, 8))
    assert graphs[0].edge_attr.shape[1] == widths["mlp"]  # inputs untouched
    for bad_call in (lambda: decode(batch, family("mlp")[0]), lambda: collate(graphs, edge_dim=3)):
        with pytest.raises(WslError):
            bad_call()
    assert collate(graphs, edge_dim=30).edge_attr.shape[1] == 30


def test_mixed_dtypes_roundtrip() -> None:
    space, _ = family("norm_cnn")
    sd = random_sd("norm_cnn", 9)
    sd["0.weight"] = sd["0.weight"].half()
    sd["3.weight"] = sd["3.weight"].bfloat16()
    sd["7.bias"] = sd["7.bias"].double()
    g = build_one(space, sd)
    assert g.x.dtype == torch.float64
    assert_exact(decode(g, space), sd)
    st = space.stack([sd, sd])
    assert_exact(decode(build(space, st), space), st)


def test_decode_edges_from_predictions() -> None:
    space, _ = family("mlp")
    lay = GraphLayout.of(space)
    st = stacked_sd("mlp", 2)
    b = build(space, st)
    x = b.x.view(2, lay.num_nodes, -1)
    e = torch.nn.functional.pad(b.edge_attr.view(2, lay.num_edges, -1), (0, 3), value=5.0)
    out = decode_edges(space, x, e)
    assert_exact(out, st)
    only_edges = decode_edges(space, None, e[0])
    assert torch.equal(only_edges["0.weight"], st["0.weight"][0]) and not bool(only_edges["0.bias"].any())


def test_errors_are_clear() -> None:
    space, _ = family("mlp")
    sd = random_sd("mlp", 0)
    bad = {k: v for k, v in sd.items() if k != "0.bias"}
    with pytest.raises(StateDictMismatchError, match="0.bias"):
        build_one(space, bad)
    with pytest.raises(StateDictMismatchError):
        build(space, {k: v.unsqueeze(0) for k, v in bad.items()})
    g = build_one(space, sd)
    with pytest.raises(WslError, match="architecture"):
        decode(g, family("conv1d")[0])
    ints = {k: v.long() if k == "0.weight" else v for k, v in sd.items()}
    with pytest.raises(WslError, match="0.weight"):
        build_one(space, ints)


def test_unslotted_scalars_go_to_extras_and_double_slots_fail() -> None:
    space, _ = family("mlp")
    params = space.spec.node_params
    sp = WeightSpace(dataclasses.replace(space.spec, node_params=tuple(p for p in params if p.tensor != "2.bias")))
    lay = GraphLayout.of(sp)
    assert lay.leftover.numel() == 6 and lay.num_extras == 6
    sd = random_sd("mlp", 3)
    g = build_one(sp, sd)
    assert torch.equal(g.extras, sd["2.bias"].double())
    assert_exact(decode(g, sp), sd)
    assert_exact(decode(build(sp, stacked_sd("mlp", 2)), sp), stacked_sd("mlp", 2))
    dup = next(p for p in params if p.tensor == "2.bias")
    twice = WeightSpace(dataclasses.replace(space.spec, node_params=params + (dataclasses.replace(dup, slot="scale"),)))
    with pytest.raises(WslError, match="2.bias"):
        GraphLayout.of(twice)
