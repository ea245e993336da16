"""Dense equivariant meta-models: NP / HNP / NFT layers, pooling and full networks.

Property tests on an MLP, a strided CNN, a residual CNN with BatchNorm, a
residual MLP with a tied (stream -> stream) weight and a GroupNorm CNN with
nested groups: equivariant layers commute with random permutations, models
are invariant, negative controls show that the checks can fail.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from wsl.archs import GPT2Config, GPT2Model, Residual, example_input, mlp, small_cnn
from wsl.graph import WeightSpaceFeatures
from wsl.graph.features import feature_blocks
from wsl.nn import (
    HNPLinear, HNPNet, HNPPool, IOEmbedding, MetaModelError, NFTLayer, NFTNet, NPLinear, NPNet, NPPool,
    resolve_space,
)
from wsl.space import WeightSpace, random_permutation

DT = torch.float64
TOL = 1e-5


def _res_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                               nn.Conv2d(4, 4, 3, padding=1))),
        Residual(nn.Sequential(nn.Conv2d(4, 6, 3, stride=2, padding=1), nn.ReLU()), nn.Conv2d(4, 6, 1, stride=2)),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


def _tied_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), Residual(nn.Sequential(nn.Linear(6, 6), nn.ReLU())),
                         nn.Linear(6, 3))


ARCHS = {
    "mlp": (lambda: mlp([5, 7, 6, 3]), (5,)),
    "cnn": (lambda: small_cnn(channels=(4, 5, 6), num_classes=3), (1, 8, 8)),
    "rescnn": (_res_cnn, (1, 8, 8)),
    "tied": (_tied_mlp, (4,)),
    "groupnorm": (lambda: small_cnn(channels=(16, 8), norm="group"), (1, 8, 8)),
    # fused transposed q/k/v blocks, heads (nested groups), token and position embeddings
    "gpt2": (lambda: GPT2Model(GPT2Config(n_embd=8, n_head=2, n_layer=1, vocab_size=7, n_positions=4)), None),
}
MAIN = ["mlp", "cnn", "rescnn"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids OpenMP wake-up costs on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spaces() -> dict[str, WeightSpace]:
    out = {}
    for name, (make, shape) in ARCHS.items():
        torch.manual_seed(0)
        module = make()
        out[name] = WeightSpace.from_module(module, example_input(module) if shape is None else torch.randn(2, *shape))
    return out


def feats(space: WeightSpace, n: int = 3, c: int = 1, seed: int = 0) -> WeightSpaceFeatures:
    g = torch.Generator().manual_seed(seed)
    return WeightSpaceFeatures(space, {k: torch.randn(n, b.feature_size * c, *b.unit_shape, generator=g, dtype=DT)
                                       for k, b in feature_blocks(space)})


def diff(a: WeightSpaceFeatures, b: WeightSpaceFeatures) -> float:
    return max((a.blocks[k] - b.blocks[k]).abs().max().item() for k in a.blocks)


def perms(space: WeightSpace, n: int, seed: int = 1, batched: bool = True) -> dict[int, torch.Tensor]:
    return random_permutation(space, torch.Generator().manual_seed(seed), batch=n if batched else None)


def permute_group_raw(x: WeightSpaceFeatures, gid: int, p: torch.Tensor) -> WeightSpaceFeatures:
    """Permute every axis of group ``gid`` -- also a fixed group, which ``x.permute`` refuses."""
    out = {}
    for k, t in x.blocks.items():
        for a, g in enumerate(x.groups[k]):
            if g == gid:
                t = t.index_select(2 + a, p)
        out[k] = t
    return WeightSpaceFeatures(x.space, out, x.extras)


LAYERS = {
    "np": lambda s: NPLinear(s, 2, 3, activation="relu"),
    "hnp": lambda s: HNPLinear(s, 2, 3, activation="gelu"),
    "nft": lambda s: NFTLayer(s, 2, heads=2, token_dim=4),
}


# ------------------------------------------------------------------ equivariance
@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layers_are_equivariant(spaces: dict[str, WeightSpace], arch: str, kind: str) -> None:
    space = spaces[arch]
    torch.manual_seed(0)
    layer = LAYERS[kind](space).to(DT)
    x = feats(space, n=3, c=2)
    y = layer(x)
    for batched in (True, False):
        p = perms(space, 3, seed=7, batched=batched)
        assert diff(layer(x.permute(p)), y.permute(p)) < TOL
        # not vacuous: the output moves with the permutation (a constant or zero layer would pass the check above)
        assert diff(layer(x.permute(p)), y) > 1e-3
    assert y.blocks.keys() == x.blocks.keys() and diff(y, layer(feats(space, n=3, c=2, seed=5))) > 1e-3


@pytest.mark.parametrize("arch", MAIN)
def test_np_shares_weights_across_fixed_groups_hnp_does_not(spaces: dict[str, WeightSpace], arch: str) -> None:
    space = spaces[arch]
    out_group = next(g for g in space.groups if g.fixed and g.kind == "output")
    p = torch.roll(torch.arange(out_group.size), 1)
    x = feats(space, c=2)
    torch.manual_seed(0)
    npl, hnp = NPLinear(space, 2, 3).to(DT), HNPLinear(space, 2, 3).to(DT)
    assert diff(npl(permute_group_raw(x, out_group.id, p)), permute_group_raw(npl(x), out_group.id, p)) < TOL
    assert diff(hnp(permute_group_raw(x, out_group.id, p)), permute_group_raw(hnp(x), out_group.id, p)) > 1e-3


MODELS = {
    "npnet": lambda s: NPNet(s, 2, (3, 4), head_hidden=(8,)),
    "hnpnet": lambda s: HNPNet(s, 2, (3, 4), head_hidden=(8,), activation="tanh"),
    "nftnet": lambda s: NFTNet(s, 2, channels=4, depth=2, heads=2, head_hidden=(8,)),
    # invariant per-block statistics concatenated to the pooled embedding
    "npnet_stats": lambda s: NPNet(s, 2, (3, 4), head_hidden=(8,), stats=True),
    "hnpnet_stats": lambda s: HNPNet(s, 2, (3, 4), head_hidden=(8,), stats=True).eval(),
}


@pytest.mark.parametrize("arch", MAIN + ["tied"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_models_are_invariant(spaces: dict[str, WeightSpace], arch: str, kind: str) -> None:
    space = spaces[arch]
    torch.manual_seed(0)
    model = MODELS[kind](space).to(DT)
    x = feats(space, n=4)
    y = model(x)
    assert y.shape == (4, 2) and torch.isfinite(y).all()
    for batched in (True, False):
        assert (model(x.permute(perms(space, 4, seed=3, batched=batched))) - y).abs().max() < TOL
    # negative control: permuting a single tensor is not a symmetry, the output must change
    key = next(k for k, g in x.groups.items() if any(space.groups[h].permutable for h in g))
    ax = next(a for a, h in enumerate(x.groups[key]) if space.groups[h].permutable)
    broken = dict(x.blocks)
    broken[key] = broken[key].flip(2 + ax)
    assert (model(WeightSpaceFeatures(space, broken)) - y).abs().max() > 1e-4


@pytest.mark.parametrize("arch", MAIN)
def test_pools_are_invariant(spaces: dict[str, WeightSpace], arch: str) -> None:
    space = spaces[arch]
    x = feats(space, n=2, c=3)
    p = perms(space, 2)
    for pool in (NPPool(space, 3), HNPPool(space, 3)):
        z = pool(x)
        assert z.shape == (2, pool.out_features)
        assert (pool(x.permute(p)) - z).abs().max() < TOL
    np_width = sum(b.feature_size * 3 for _, b in feature_blocks(space))
    assert NPPool(space, 3).out_features == np_width < HNPPool(space, 3).out_features


def test_negative_control_non_equivariant_layer_fails(spaces: dict[str, WeightSpace]) -> None:
    """The equivariance check rejects a layer with one index-dependent term."""
    space = spaces["cnn"]
    torch.manual_seed(0)
    layer = NPLinear(space, 2, 3).to(DT)
    key = next(k for k, g in feature_blocks(space) if len(g.unit_groups) == 2)
    offset = torch.randn(layer(feats(space, c=2)).blocks[key].shape[1:], dtype=DT)

    def broken(x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        y = layer(x)
        blocks = dict(y.blocks)
        blocks[key] = blocks[key] + 1e-2 * offset
        return WeightSpaceFeatures(space, blocks)

    x, p = feats(space, c=2), perms(space, 3)
    assert diff(layer(x.permute(p)), layer(x).permute(p)) < TOL
    assert diff(broken(x.permute(p)), broken(x).permute(p)) > 1e-4


# ------------------------------------------------------------------ semantics
def test_np_terms_implement_pool_match_broadcast(spaces: dict[str, WeightSpace]) -> None:
    """Isolate single basis terms: the identity term and a pooled (row-mean) term."""
    space = spaces["mlp"]
    layer = NPLinear(space, 1, 1).to(DT)
    x = feats(space, n=2)
    w1, b0 = ("3.weight", (0, 0)), ("0.bias", (0,))  # W1: (g_h2, g_h1); b0: (g_h1,)
    i_w1 = next(i for i, rb in enumerate(layer.blocks) if rb.key == w1)
    i_b0 = next(i for i, rb in enumerate(layer.blocks) if rb.key == b0)
    with torch.no_grad():
        for w in layer.weights:
            w.zero_()
        layer.bias.zero_()
        ti, _ = layer._where[(i_w1, (0, 1))]
        layer.weights[ti].fill_(1.0)  # identity term of W1 (one channel)
        tj, vj = layer._where[(i_b0, (0,))]
        _, vw = layer._where[(i_w1, (1,))]  # W1 pooled over its output axis, matched on g_h1
        t = layer.terms[tj]
        layer.weights[tj][t.out_off[vj], t.in_off[vw]] = 1.0
    y = layer(x)
    assert torch.allclose(y.blocks[w1], x.blocks[w1])
    assert torch.allclose(y.blocks[b0], x.blocks[w1].mean(2))
    others = [k for k in y.blocks if k not in (w1, b0)]
    assert all(y.blocks[k].abs().max() == 0 for k in others)


@pytest.mark.parametrize("cls", [NPLinear, HNPLinear])
def test_gradients_match_finite_differences(spaces: dict[str, WeightSpace], cls: type) -> None:
    """The custom pooling/linear backward: inputs and layer weights, float64."""
    space = spaces["rescnn"]
    torch.manual_seed(0)
    layer = cls(space, 1, 2, activation="tanh").to(DT)
    x = feats(space, n=2)
    keys = list(x.blocks)
    names = [n for n, _ in layer.named_parameters()]
    n_in = len(keys)

    def f(*ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = dict(zip(names, ts[n_in:]))
        out = torch.func.functional_call(layer, params, (WeightSpaceFeatures(space, dict(zip(keys, ts[:n_in]))),))
        return tuple(out.blocks[k] for k in keys)

    ins = tuple(x.blocks[k].clone().requires_grad_() for k in keys)
    ins += tuple(p.detach().clone().requires_grad_() for p in layer.parameters())
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradient_flows_to_every_parameter(spaces: dict[str, WeightSpace]) -> None:
    space = spaces["rescnn"]
    for make in MODELS.values():
        torch.manual_seed(0)
        model = make(space).to(DT)
        model(feats(space, n=3)).square().sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------ shapes, inputs and errors
def test_batch_shapes_and_input_forms(spaces: dict[str, WeightSpace]) -> None:
    space = spaces["cnn"]
    torch.manual_seed(0)
    net = NPNet(space, 3, 4, head_hidden=())
    x = feats(space, n=5).to(torch.float32)
    assert net(x).shape == (5, 3) and net.encode(x).shape == (5, net.pool.out_features)
    one = WeightSpaceFeatures(space, {k: t[:1] for k, t in x.blocks.items()})
    assert torch.allclose(net(one), net(x)[:1], atol=1e-6)  # models do not interact
    stacked = x.to_state_dicts()
    assert torch.allclose(net(stacked), net(x))
    assert net.to(DT)(x).dtype == DT  # features follow the model's dtype
    layer = NPLinear(space, 1, 5)
    y = layer(x)
    for k, b in feature_blocks(space):
        assert y.blocks[k].shape == (5, 5 * b.feature_size, *b.unit_shape)
    emb = IOEmbedding(space, 1)
    moved = emb(x)
    assert set(moved.blocks) == set(x.blocks)
    assert any((moved.blocks[k] != x.blocks[k]).any() for k in x.blocks)


def test_list_of_spaces_and_errors(spaces: dict[str, WeightSpace]) -> None:
    cnn, mlp_space = spaces["cnn"], spaces["mlp"]
    torch.manual_seed(0)
    twin = WeightSpace.from_module(small_cnn(channels=(4, 5, 6), num_classes=3), torch.randn(2, 1, 8, 8))
    assert resolve_space([cnn, twin]) is cnn
    HNPNet([cnn, twin], 1, 2)(feats(twin).to(torch.float32))
    with pytest.raises(MetaModelError, match="structure"):
        resolve_space([cnn, mlp_space])
    with pytest.raises(MetaModelError, match="WeightSpace"):
        resolve_space([])
    layer = NPLinear(cnn, 2, 3).to(DT)
    with pytest.raises(MetaModelError, match=r"block .* expected"):
        layer(feats(cnn, c=1))
    with pytest.raises(MetaModelError, match="architecture"):
        layer(feats(mlp_space, c=2))
    with pytest.raises(MetaModelError, match="WeightSpaceFeatures"):
        layer(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(MetaModelError, match="activation"):
        NPLinear(cnn, 1, 1, activation="nope")
    with pytest.raises(MetaModelError, match="channels"):
        HNPNet(cnn, 1, ())
    with pytest.raises(MetaModelError, match="divisible"):
        NFTLayer(cnn, 4, heads=3, token_dim=4)
    with pytest.raises(MetaModelError, match="expected"):
        NPNet(cnn)([1, 2, 3])


@pytest.mark.filterwarnings("ignore:.*TF32")
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN not available")
def test_float32_onednn_path_matches_blas_path(spaces: dict[str, WeightSpace]) -> None:
    """On CPU float32 the big channel mixes run as oneDNN 1x1 convolutions; same values and gradients."""
    space = spaces["rescnn"]
    torch.manual_seed(0)
    net = HNPNet(space, 1, (3, 4), head_hidden=(8,))
    x = feats(space, n=4).to(torch.float32)
    got = []
    for enabled in (True, False):
        with torch.backends.mkldnn.flags(enabled=enabled):
            net.zero_grad()
            y = net(x)
            y.sum().backward()
            got.append((y.detach(), [p.grad.clone() for p in net.parameters()]))
    assert torch.allclose(got[0][0], got[1][0], atol=1e-5)
    for a, b in zip(got[0][1], got[1][1]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # float32 invariance on the oneDNN path
        assert (net(x.permute(perms(space, 4))) - got[0][0]).abs().max() < TOL
