"""NG-GNN / NG-T meta-models and heads: invariance, equivariance, exact batch masking, decoding."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

from wsl.errors import WslError
from wsl.graph import GraphLayout, build, build_one, collate
from wsl.nn.graph_encoding import GraphEncodingError
from wsl.nn.graph_models import NGGNN, NGT, GraphMetaModel
from wsl.nn.heads import EquivariantHead, InvariantHead
from wsl.nn.ng_gnn import pna_aggregate
from wsl.nn.ng_t import RelationalAttention
from wsl.space import WeightSpace, random_permutation


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny graphs: one intra-op thread avoids thread wake-up costs on a busy machine (and is deterministic)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- small networks
class ResBlock(nn.Module):
    """relu(skip(x) + conv(relu(bn(conv(x))))), strided 1x1 conv on the skip path when downsampling."""

    def __init__(self, cin: int, cout: int, down: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2 if down else 1, padding=1)
        self.bn = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.down = nn.Conv2d(cin, cout, 1, stride=2) if down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return torch.relu((x if self.down is None else self.down(x)) + y)


class ResCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.b1, self.b2 = ResBlock(4, 4, down=False), ResBlock(4, 6, down=True)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.b2(self.b1(self.stem(x))).mean((2, 3)))


class MHANet(nn.Module):
    """Linear -> LayerNorm -> multi-head self-attention (nested head groups) -> residual -> Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.ln = nn.Linear(4, 8), nn.LayerNorm(8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        y = self.ln(x)
        return self.out(x + self.attn(y, y, y, need_weights=False)[0]).mean(1)


FAMILIES: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mlp": lambda: (nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)),
                    torch.randn(2, 5)),
    "cnn": lambda: (nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(3 * 2 * 2, 3)), torch.randn(2, 1, 8, 8)),
    "rescnn": lambda: (ResCNN(), torch.randn(2, 3, 8, 8)),
    "mha": lambda: (MHANet(), torch.randn(2, 5, 4)),
}
NAMES = list(FAMILIES)


@functools.lru_cache(maxsize=None)
def family(name: str) -> tuple[WeightSpace, nn.Module]:
    torch.manual_seed(0)
    module, example = FAMILIES[name]()
    return WeightSpace.from_module(module.eval(), example), module


def random_sd(name: str, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every entry (BatchNorm statistics too)."""
    _, module = family(name)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if v.is_floating_point():
            t = torch.randn(v.shape, generator=gen)
            out[k] = t.abs() + 0.1 if k.endswith("running_var") else t
        else:
            out[k] = torch.randint(0, 100, v.shape, generator=gen, dtype=v.dtype)
    return out


def make(kind: str, task: str = "invariant", **kw: Any) -> GraphMetaModel:
    torch.manual_seed(1)
    cls = NGGNN if kind == "gnn" else NGT
    extra = {"heads": 2} if kind == "t" else {}
    model = cls(hidden=16, num_layers=2, task=task, out_dim=2, head_hidden=16, **extra, **kw)
    return model.double().eval()


def node_map(space: WeightSpace, perms: dict[int, torch.Tensor]) -> torch.Tensor:
    """Node i of the permuted model's graph is node ``m[i]`` of the original's (as in tests/test_graph.py)."""
    lay = GraphLayout.of(space)
    return torch.cat([int(lay.site_offsets[s.id]) + perms.get(s.group, torch.arange(space.groups[s.group].size))
                      for s in space.sites])


def edge_order(g: Any, mapping: torch.Tensor | None) -> torch.Tensor:
    """Edges sorted by (connection, source, destination) in the original graph's node numbering."""
    ei = g.edge_index if mapping is None else mapping[g.edge_index]
    v = g.num_nodes
    return torch.argsort((g.edge_conn * v + ei[0]) * v + ei[1])


def permuted_pair(name: str, seed: int = 3) -> tuple[Any, Any, torch.Tensor]:
    """(graph, graph of a randomly permuted copy, node map), both float64."""
    space, _ = family(name)
    sd = random_sd(name, seed)
    perms = random_permutation(space, torch.Generator().manual_seed(seed + 10))
    assert any(bool((p != torch.arange(p.numel())).any()) for p in perms.values())
    sd_p = space.permute(sd, perms)
    g0, g1 = (build_one(space, {k: v.double() if v.is_floating_point() else v for k, v in s.items()})
              for s in (sd, sd_p))
    return g0, g1, node_map(space, perms)


MODELS = ["gnn", "t"]


# ----------------------------------------------------------------------------- (1) invariance, (6) its control
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_invariant_under_neuron_permutations(kind: str, name: str) -> None:
    g0, g1, _ = permuted_pair(name)
    model = make(kind)
    with torch.no_grad():
        y0, y1 = model(g0), model(g1)
        both = model(collate([g0, g1]))
    assert y0.shape == (1, 2)
    torch.testing.assert_close(y0, y1, atol=1e-9, rtol=0)
    torch.testing.assert_close(both, torch.cat([y0, y1]), atol=1e-9, rtol=0)
    # the float32 model agrees too
    m32 = make(kind).float()
    with torch.no_grad():
        a, b = m32(collate([g0, g1])).unbind(0)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", ["mlp", "rescnn"])
def test_invariance_test_can_fail(kind: str, name: str) -> None:
    """Negative control: giving every node its index as a 'position' breaks the symmetry."""
    g0, g1, _ = permuted_pair(name)
    model = make(kind)
    for g in (g0, g1):
        g.node_pos = torch.arange(g.num_nodes)
    with torch.no_grad():
        y0, y1 = model(g0), model(g1)
    assert (y0 - y1).abs().max() > 1e-3


# ----------------------------------------------------------------------------- (2) equivariance
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_equivariant_outputs_follow_the_node_mapping(kind: str, name: str) -> None:
    g0, g1, m = permuted_pair(name)
    model = make(kind, task="equivariant")
    with torch.no_grad():
        (x0, e0), (x1, e1) = model(g0), model(g1)
        (h0, _), (h1, _) = model.embed(g0), model.embed(g1)
    assert x0.shape == (g0.num_nodes, 6) and e0.shape == (g0.edge_index.shape[1], 64)
    torch.testing.assert_close(x1, x0[m], atol=1e-9, rtol=0)
    torch.testing.assert_close(h1, h0[m], atol=1e-9, rtol=0)
    o0, o1 = edge_order(g0, None), edge_order(g1, m)
    torch.testing.assert_close(e1[o1], e0[o0], atol=1e-9, rtol=0)
    assert (x0 - x0[m]).abs().max() > 1e-3  # the permutation is not trivial on the outputs


# ----------------------------------------------------------------------------- (3) batch independence, (4) mixed
def _mixed_graphs(dtype: torch.dtype = torch.float64) -> list[Any]:
    out = []
    for i, name in enumerate(["rescnn", "mlp", "cnn", "mlp"]):
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in random_sd(name, 20 + i).items()}
        out.append(build_one(family(name)[0], sd))
    return out


def _slices(batch: Any) -> tuple[list[int], list[int]]:
    nv = torch.bincount(batch.batch, minlength=batch.num_graphs)
    ne = torch.bincount(batch.batch[batch.edge_index[0]], minlength=batch.num_graphs)
    return (torch.cumsum(nv, 0) - nv).tolist(), (torch.cumsum(ne, 0) - ne).tolist()


@pytest.mark.parametrize("kind", MODELS)
def test_output_does_not_depend_on_batch_mates(kind: str) -> None:
    graphs = _mixed_graphs()
    batch = collate(graphs)
    inv, eqv = make(kind), make(kind, task="equivariant")
    with torch.no_grad():
        y = inv(batch)
        xb, eb = eqv(batch)
        v_off, e_off = _slices(batch)
        for i, g in enumerate(graphs):
            torch.testing.assert_close(y[i:i + 1], inv(g), atol=1e-6, rtol=0)
            x, e = eqv(g)
            torch.testing.assert_close(xb[v_off[i]:v_off[i] + g.num_nodes], x, atol=1e-6, rtol=0)
            torch.testing.assert_close(eb[e_off[i]:e_off[i] + e.shape[0]], e, atol=1e-6, rtol=0)


def test_ngt_without_padding_mask_depends_on_batch_mates() -> None:
    """Negative control: the published implementation's unmasked padding leaks across the batch."""
    graphs = _mixed_graphs()
    good = make("t")
    bad = make("t", mask_padding=False)
    bad.load_state_dict(good.state_dict())
    batch = collate(graphs)
    with torch.no_grad():
        alone = torch.cat([bad(g) for g in graphs])
        assert torch.allclose(alone, torch.cat([good(g) for g in graphs]), atol=1e-9)  # no padding: no difference
        mixed = bad(batch)
    assert torch.allclose(mixed[0], alone[0], atol=1e-9)  # the largest graph has no padding
    assert (mixed[1:] - alone[1:]).abs().max() > 1e-3


@pytest.mark.parametrize("kind", MODELS)
def test_mixed_architecture_batches_train(kind: str) -> None:
    graphs = _mixed_graphs(torch.float32)
    batch = collate(graphs)
    for task in ("invariant", "equivariant"):
        torch.manual_seed(0)
        model = (NGGNN if kind == "gnn" else NGT)(hidden=16, num_layers=2, task=task, head_hidden=16, dropout=0.1)
        out = model(batch)
        loss = out.square().mean() if task == "invariant" else out[0].square().mean() + out[1].square().mean()
        loss.backward()
        assert out.shape == (4, 1) if task == "invariant" else out[1].shape == (batch.edge_index.shape[1], 64)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)  # no unused parameters
        # batches from wsl.graph.build run as well
        space = family("cnn")[0]
        stacked = space.stack([random_sd("cnn", s) for s in range(3)])
        res = model(build(space, stacked))
        rows = 3 if task == "invariant" else 3 * GraphLayout.of(space).num_nodes
        assert (res if task == "invariant" else res[0]).shape[0] == rows


# ----------------------------------------------------------------------------- (5) equivariant head round trip
def test_equivariant_outputs_decode_to_state_dicts() -> None:
    graphs = _mixed_graphs(torch.float32)
    names = ["rescnn", "mlp", "cnn", "mlp"]
    spaces = [family(n)[0] for n in names]
    batch = collate(graphs)
    model = NGGNN(hidden=16, num_layers=1, task="equivariant", head_hidden=16)
    with torch.no_grad():
        sds = model.to_state_dicts(batch, {s.signature: s for s in spaces})
    for sd, name in zip(sds, names):
        ref = family(name)[1].state_dict()
        assert list(sd) == list(ref)
        assert all(sd[k].shape == ref[k].shape for k in ref)
    # list of spaces works the same; a wrong space is refused
    assert torch.equal(model.to_state_dicts(batch, spaces, outputs=model(batch))[2]["0.weight"], sds[2]["0.weight"])
    with pytest.raises(WslError, match="architecture"):
        model.to_state_dicts(batch, spaces[::-1])
    with pytest.raises(WslError):
        NGGNN(hidden=8, num_layers=1).to_state_dicts(batch, spaces)


@pytest.mark.parametrize("kind", MODELS)
def test_identity_head_reproduces_the_input_exactly(kind: str) -> None:
    graphs = _mixed_graphs(torch.float32)
    names = ["rescnn", "mlp", "cnn", "mlp"]
    spaces = [family(n)[0] for n in names]
    batch = collate(graphs)
    cls = NGGNN if kind == "gnn" else NGT
    model = cls(hidden=16, num_layers=1, task="equivariant", head_hidden=16, residual_head=True, edge_out_width=9)
    with torch.no_grad():
        sds = model.to_state_dicts(batch, spaces, cast=True)
    for i, (sd, name) in enumerate(zip(sds, names)):
        want = random_sd(name, 20 + i)
        assert list(sd) == list(want)
        for k in want:
            assert sd[k].dtype == want[k].dtype and torch.equal(sd[k], want[k]), (name, k)
    # the bare head: copying the graph's own values back also round-trips (single graph, no batch vector)
    head = EquivariantHead(4, 4, edge_width=9, residual=True, zero_init=True)
    g = graphs[2]
    x, a = head(torch.randn(g.num_nodes, 4), torch.randn(g.edge_index.shape[1], 4), g)
    out = EquivariantHead.to_state_dicts(g, spaces[2], x, a, cast=True)[0]
    assert all(torch.equal(out[k], v) for k, v in random_sd("cnn", 22).items())


# ----------------------------------------------------------------------------- building blocks
def test_relational_attention_matches_a_dense_reference() -> None:
    space = family("rescnn")[0]
    g = build_one(space, random_sd("rescnn", 5))
    torch.manual_seed(2)
    att = RelationalAttention(8, heads=2).double()
    with torch.no_grad():
        for p in att.parameters():
            p.normal_()
    # add a parallel edge and two reversed ones: pairs with several edges sum their edge terms
    ei = torch.cat([g.edge_index, g.edge_index[:, :1], g.edge_index[:, 3:5].flip(0)], dim=1)
    n = torch.randn(g.num_nodes, 8, dtype=torch.float64)
    f = torch.randn(ei.shape[1], 8, dtype=torch.float64)
    got = att(n, f, ei, torch.zeros(g.num_nodes, dtype=torch.long), 1)
    # reference: explicit dense pair tensors
    v, hh, dk = g.num_nodes, 2, 4
    q, k, val = att.qkv(n).view(v, 3, hh, dk).unbind(1)
    rk, rb, rv = (torch.zeros(v, v, *s, dtype=torch.float64) for s in ((hh, dk), (hh,), (hh, dk)))
    has = torch.zeros(v, v, dtype=torch.bool)
    pk, pb, pv = att.rel_k(f).view(-1, 2, hh, dk), att.rel_b(f).view(-1, 2, hh), att.rel_v(f).view(-1, 2, hh, dk)
    for j, (s, d) in enumerate(ei.t().tolist()):
        for side, (i, o) in enumerate(((d, s), (s, d))):
            rk[i, o] += pk[j, side]
            rb[i, o] += pb[j, side]
            rv[i, o] += pv[j, side]
            has[i, o] = True
    rk[~has], rb[~has], rv[~has] = att.k0, att.b0, att.v0
    logits = torch.einsum("ihd,ijhd->hij", q, k.unsqueeze(0) + rk) / dk ** 0.5 + rb.permute(2, 0, 1)
    a = torch.softmax(logits, -1)
    want = att.out(torch.einsum("hij,ijhd->ihd", a, val.unsqueeze(0) + rv).reshape(v, 8))
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_pna_aggregate_matches_loops_and_max_gradients() -> None:
    gen = torch.Generator().manual_seed(0)
    msg = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    msg[3] = msg[1]  # a tie for receiver 0
    idx = torch.tensor([0, 0, 1, 0, 2, 2, 2, 1, 0, 2, 1, 1])
    out = pna_aggregate(msg, idx, 4, avg_log_degree=1.5).view(4, 3, 4, 3)  # (node, scaler, aggregator, channel)
    for v in range(3):
        m = msg[idx == v]
        d = torch.tensor(float(m.shape[0]), dtype=torch.float64)
        base = torch.stack([m.mean(0), m.max(0).values, m.min(0).values,
                            torch.sqrt(m.var(0, unbiased=False) + 1e-5)])
        torch.testing.assert_close(out[v, 0], base)
        torch.testing.assert_close(out[v, 1], base * torch.log(d + 1) / 1.5)
        torch.testing.assert_close(out[v, 2], base * 1.5 / torch.log(d + 1))
    assert not bool(out[3].any())  # no messages -> zeros
    a = msg.clone().requires_grad_()
    pna_aggregate(a, idx, 4, aggregators=("max", "min")).sum().backward()
    b = msg.clone().requires_grad_()
    ref = [torch.zeros(4, 3, dtype=torch.float64).scatter_reduce(0, idx[:, None].expand(-1, 3), b, r,
                                                                 include_self=False) for r in ("amax", "amin")]
    deg = torch.bincount(idx, minlength=4).double()[:, None]
    sc = 1 + torch.log(deg + 1) / 2.0 + 2.0 / torch.log(deg.clamp(min=1) + 1)
    (sum(r * sc for r in ref)).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


def test_invariant_head_pooling_and_dense_input() -> None:
    head = InvariantHead(4, out_dim=3, hidden=8, pooling=("mean", "max", "sum"), node_kinds=["neurons", "output"])
    h = torch.randn(7, 4)
    index = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    kinds = torch.tensor([0, 1, 1, 0, 8, 8, 1])
    y = head(h, index, kinds)
    perm = torch.tensor([2, 1, 0, 6, 3, 5, 4])
    torch.testing.assert_close(head(h[perm], index, kinds[perm]), y)
    assert y.shape == (2, 3)
    assert head(torch.randn(5, 12)).shape == (5, 3)  # already pooled (dense models)
    with pytest.raises(WslError):
        head(torch.randn(5, 7))
    with pytest.raises(WslError):
        head(h, index)  # node_kinds set, node_kind missing
    with pytest.raises(WslError):
        InvariantHead(4, pooling=("median",))


def test_errors_are_clear() -> None:
    g = build_one(family("cnn")[0], random_sd("cnn", 0))
    with pytest.raises(GraphEncodingError, match="max_edge_width"):
        NGGNN(hidden=8, num_layers=1, max_edge_width=4)(g)
    with pytest.raises(WslError, match="heads"):
        NGT(hidden=10, heads=4)
    with pytest.raises(WslError, match="task"):
        NGGNN(task="regression")
    del g.node_pos
    with pytest.raises(GraphEncodingError, match="node_pos"):
        NGT(hidden=8, num_layers=1, heads=2)(g)
