"""Width families and NeuMeta coordinates of the ViT / BERT ports: heads resized whole or within, MLP knob."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from tests.space_checks import randomize
from wsl.archs import bert_layer, mlp, small_cnn, vit_tiny
from wsl.archs.registry import bert_classifier
from wsl.archs.resnet import resnet
from wsl.archs.width import WidthFamily
from wsl.errors import ArchitectureError, SpaceMismatchError
from wsl.hyper.coords import CONTINUOUS, NESTED, network_coords, target_rows
from wsl.space import WeightSpace, random_permutation

RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
MODES = ("count", "dim", "both")
U_OUT, U_IN, W_OUT, W_IN = range(4)
V_OUT, V_IN, X_OUT, X_IN = range(4, 8)


def _vit():
    return vit_tiny(image_size=8, patch_size=2, num_channels=1, hidden=16, layers=2, heads=4, mlp=24, num_classes=5)


def _bert():
    return bert_classifier({"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                            "intermediate_size": 24, "max_position_embeddings": 16, "num_labels": 3,
                            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})


def _bert_layer():
    return bert_layer(hidden=16, heads=2, intermediate=12, seq_len=5)


NETS = {"vit_tiny": _vit, "bert_classifier": _bert, "bert_layer": _bert_layer}


def _input(net, n=3):
    g = torch.Generator().manual_seed(0)
    if net.wsl_input_dtype == "int64":
        return torch.randint(1, 40, (n, *net.wsl_input_shape), generator=g)
    return torch.randn(n, *net.wsl_input_shape, generator=g)


def _key(g):
    return (g.kind, g.name, g.fixed, g.parent)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(NETS))
def test_family_builds_and_runs_at_every_ratio_with_the_base_groups(name, mode):
    base = NETS[name]()
    fam = WidthFamily.from_module(base, heads=mode)
    base_space = fam.space(1.0)
    assert [_key(g) for g in base_space.spec.groups] == [_key(g) for g in WeightSpace.from_module(base).spec.groups]
    assert [g.size for g in base_space.spec.groups] == [g.size for g in WeightSpace.from_module(base).spec.groups]
    knob_groups = fam.knob_groups()
    x = _input(base)
    for r in RATIOS:
        net = fam.build(r).eval()
        space = fam.space(r)
        space.check(net.state_dict())
        assert [_key(g) for g in space.spec.groups] == [_key(g) for g in base_space.spec.groups]
        assert net(x).shape == base(x).shape
        sizes = dict(zip(fam.knobs, fam.widths(r)))
        for k, n in zip(fam.knobs, fam.base):
            assert sizes[k] == max(2 if k == "head_dim" else 1, int(np.floor(r * n + 0.5)))
        for g, gb in zip(space.spec.groups, base_space.spec.groups):
            changed = any(g.id in knob_groups[k] for k in fam.knobs)
            if g.fixed or not changed:
                assert g.size == gb.size, (r, g)  # inputs, outputs and the residual stream stay fixed
        heads = [g for g in space.spec.groups if g.kind == "head"]
        nested = [g for g in space.spec.groups if g.parent is not None]
        assert heads and nested
        for g in nested:
            d = g.size // space.spec.groups[g.parent].size
            assert d == sizes.get("head_dim", gb_dim(base_space, g))


def gb_dim(space, g):
    """Units per head of the base's group ``g.id``."""
    gb = space.spec.groups[g.id]
    return gb.size // space.spec.groups[gb.parent].size


def test_family_options_and_errors():
    base = _vit()
    fam = WidthFamily.from_module(base, heads="both")
    assert fam.knobs == ("mlp", "heads", "head_dim") and fam.base == (24, 4, 4)
    assert fam.widths({"heads": 0.5}) == (24, 2, 4)
    assert fam.widths(0.25) == (6, 1, 2)  # head_dim keeps two units: one would merge the within-head groups
    assert fam.describe(fam.base)["kwargs"]["head_dim"] == 4  # written explicitly, residual untouched
    assert fam.describe((6, 1, 2))["kwargs"]["hidden"] == 16
    with pytest.raises(ArchitectureError, match="heads must be one of"):
        WidthFamily.from_module(base, heads="rows")
    with pytest.raises(ArchitectureError, match="head_dim >= 2"):
        WidthFamily.from_module(vit_tiny(hidden=8, heads=8), heads="dim")
    with pytest.raises(ArchitectureError, match="no width family"):
        WidthFamily({"kind": "builtin", "name": "gpt2", "kwargs": {}})


# sha256 prefixes of (tensor ids, continuous columns, offsets) from main at 5fa0f27 (before nested coordinates)
MAIN_DIGESTS = {
    "mlp": {0.25: "adc9c5b1533106cd", 0.5: "6a8892f75f3ef41c", 1.0: "b839f4775c3e62df"},
    "small_cnn": {0.25: "d30b312db6019555", 0.5: "a68bd3bdd7266f74", 1.0: "3b4bb5d0f1595593"},
    "resnet": {0.25: "d4bc7df2b92a1363", 0.5: "6db615287f16737b", 1.0: "603979862b9b0d4e"},
}


def test_coordinates_of_mlp_cnn_resnet_are_main_s():
    nets = {"mlp": mlp([40, 100, 100, 10]), "small_cnn": small_cnn(channels=[8, 12, 6]),
            "resnet": resnet(layers=[1, 1, 1, 1], width=8, in_channels=1)}
    for name, net in nets.items():
        fam = WidthFamily.from_module(net)
        base = fam.space(1.0)
        for r, want in MAIN_DIGESTS[name].items():
            c = network_coords(fam.space(r), base, statistics=name == "resnet")
            assert c.cont.shape[1] == len(CONTINUOUS)
            h = hashlib.sha256()
            h.update(c.tensor.numpy().tobytes())
            h.update(c.cont.numpy().tobytes())
            h.update(repr(c.offsets).encode())
            assert h.hexdigest()[:16] == want, (name, r)


def _rows(c, name):
    k = [lay.name for lay in c.layouts].index(name)
    return c.cont[c.offsets[k]:c.offsets[k + 1]]


@pytest.mark.parametrize("mode", MODES)
def test_nested_coordinates_sample_one_continuum(mode):
    fam = WidthFamily.from_module(_vit(), heads=mode)
    base = fam.space(1.0)
    full = network_coords(base, base)
    assert full.cont.shape[1] == len(CONTINUOUS) + len(NESTED)
    q = "vit.encoder.layer.0.attention.attention.query.weight"
    o = "vit.encoder.layer.0.attention.output.dense.weight"
    fq = _rows(full, q).reshape(16, 16, 8)  # 4 heads x 4 units, residual 16
    assert torch.allclose(fq[:, 0, U_OUT], torch.tensor([0, 1 / 3, 2 / 3, 1.0]).repeat_interleave(4))
    assert torch.allclose(fq[:, 0, V_OUT], torch.tensor([0, 1 / 3, 2 / 3, 1.0]).repeat(4))
    assert torch.all(fq[0, :, V_IN] == 0.5) and torch.all(fq[..., X_IN] == 1.0)  # residual input: not nested
    for r in (0.25, 0.5, 0.75):
        space = fam.space(r)
        net = fam.build(r)
        c = network_coords(space, base)
        vals, mask = target_rows(net.state_dict(), c, max(lay.taps for lay in c.layouts))
        assert int(mask.sum()) == sum(p.numel() for p in net.parameters())
        back = c.split(vals)
        assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())
        heads, d = fam.describe(fam.widths(r))["kwargs"]["heads"], fam.describe(fam.widths(r))["kwargs"]["head_dim"]
        rq = _rows(c, q).reshape(heads * d, 16, 8)
        ro = _rows(c, o).reshape(16, heads * d, 8)
        pos_h = torch.full((1,), 0.5) if heads == 1 else torch.arange(heads) / (heads - 1)
        pos_d = torch.arange(d) / (d - 1)
        assert torch.allclose(rq[:, 0, U_OUT], pos_h.repeat_interleave(d))
        assert torch.allclose(rq[:, 0, V_OUT], pos_d.repeat(heads))
        assert torch.allclose(ro[0, :, U_IN], pos_h.repeat_interleave(d))
        assert torch.allclose(ro[0, :, V_IN], pos_d.repeat(heads))
        assert torch.allclose(rq[..., W_OUT], torch.tensor(heads * d / 16.0))  # whole-group ratio (fan-in)
        assert torch.allclose(rq[..., X_OUT], torch.tensor(d / 4.0))  # within-head ratio
        assert torch.allclose(ro[..., W_IN], torch.tensor(heads * d / 16.0))


@pytest.mark.parametrize("name", list(NETS))
def test_permuting_heads_and_units_permutes_coordinate_rows_the_same_way(name):
    """New unit i is old unit p[i]: every row moves to the row of its unit's image, heads as blocks."""
    net = randomize(NETS[name](), seed=1)
    space = WeightSpace.from_module(net)
    sd = net.state_dict()
    perm = random_permutation(space, torch.Generator().manual_seed(3))
    psd = space.permute(sd, perm)
    net_p = NETS[name]()
    net_p.load_state_dict(psd)
    x = _input(net)
    torch.testing.assert_close(net_p.eval()(x), net(x), atol=1e-5, rtol=1e-5)
    c = network_coords(space, space)
    c_p = network_coords(WeightSpace.from_module(net_p), space)  # re-derived from the permuted base
    assert torch.equal(c.cont, c_p.cont) and torch.equal(c.tensor, c_p.tensor)
    taps = max(lay.taps for lay in c.layouts)
    vals, _ = target_rows(sd, c, taps)
    vals_p, _ = target_rows(psd, c_p, taps)
    ident = {g.id: torch.arange(g.size) for g in space.spec.groups}
    p = {**ident, **perm}
    seen_nested = 0
    for k, lay in enumerate(c.layouts):
        po = p[lay.out_group] if lay.out_group is not None else torch.zeros(1, dtype=torch.long)
        pi = p[lay.in_group] if lay.in_group is not None else torch.zeros(1, dtype=torch.long)
        src = (po[:, None] * len(pi) + pi[None, :]).reshape(-1) + c.offsets[k]
        rows = slice(c.offsets[k], c.offsets[k + 1])
        torch.testing.assert_close(vals_p[rows], vals[src])  # row r of the permuted base = row src[r] of the base
        for col_u, col_v, g in ((U_OUT, V_OUT, lay.out_group), (U_IN, V_IN, lay.in_group)):
            if g is None or space.spec.groups[g].parent is None:
                continue
            seen_nested += 1
            u_new, u_old = c.cont[rows, col_u], c.cont[src, col_u]
            for u in u_new.unique():  # one new head comes from one old head: head coordinates move as blocks
                assert u_old[u_new == u].unique().numel() == 1
            for u in u_new.unique():  # inside a head the within-head positions are permuted, not changed
                pairs_new = sorted(c.cont[rows, col_v][u_new == u].tolist())
                pairs_old = sorted(c.cont[src, col_v][u_new == u].tolist())
                assert pairs_new == pairs_old
    assert seen_nested > 0


def test_fused_qkv_projection_is_refused():
    from torch import nn

    # nn.MultiheadAttention's in_proj_weight has three segments (q, k, v) on one axis: refused, one line
    m = nn.MultiheadAttention(8, 2, batch_first=True)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.attn, self.out = nn.Linear(3, 8), m, nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0])

    wrap = Wrap()
    wrap.wsl_input_shape, wrap.wsl_input_dtype = (4, 3), "float32"
    sp = WeightSpace.from_module(wrap)
    with pytest.raises(SpaceMismatchError, match="fused") as err:
        network_coords(sp, sp)
    assert "\n" not in str(err.value)


def test_neumeta_reproduces_a_tiny_vit_at_full_width():
    """A short reconstruction fit on a tiny ViT (random weights): the full-width sample matches the base."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.train import HyperTrainConfig, train_neumeta

    torch.manual_seed(0)
    base = randomize(vit_tiny(image_size=4, patch_size=2, num_channels=1, hidden=8, layers=1, heads=2, mlp=8,
                              num_classes=3), seed=2, std=0.5)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    x = torch.randn(16, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = base(x).argmax(1)
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=64, blocks=2, frequencies=4, family_heads="both"), sd)
    cfg = HyperTrainConfig(steps=600, lr=3e-3, p_full=1.0, coord_noise=0.0, rec_weight=1.0, task_weight=0.0,
                           weight_decay=0.0)
    out = train_neumeta(hyper, sd, x, y, cfg)
    assert out["history"][-1]["rec"] < 0.02 * out["history"][0]["rec"]
    net = hyper.sample(1.0)
    torch.testing.assert_close(net(x), base(x), atol=0.05, rtol=0.05)
    for r, shape in ((0.5, (2, 8)), ({"heads": 0.5}, (4, 8)), ({"head_dim": 0.5}, (4, 8))):
        small = hyper.sample(r)
        q = small.state_dict()["vit.encoder.layer.0.attention.attention.query.weight"]
        assert tuple(q.shape) == shape  # heads * head_dim rows, residual 8 columns
        assert torch.isfinite(small(x)).all()


def test_smoothing_a_vit_preserves_its_function():
    """Smoothing reorders the residual and MLP groups of a ViT (not heads, not within-head units) exactly."""
    from wsl.hyper.smooth import smooth

    net = randomize(_vit(), seed=4)
    space = WeightSpace.from_module(net)
    sd = net.state_dict()
    sm, _ = smooth(space, sd, "two_opt")
    assert any(not torch.equal(sm[k], sd[k]) for k in sd)
    back = _vit()
    back.load_state_dict(sm)
    x = _input(net)
    torch.testing.assert_close(back.eval()(x), net(x), atol=1e-5, rtol=1e-5)
    heads = [g.id for g in space.spec.groups if g.kind == "head"]
    q = "vit.encoder.layer.0.attention.attention.query.bias"
    assert heads and torch.equal(sm[q], sd[q])  # query bias is indexed by a nested group only: untouched


def test_pruning_removes_whole_heads_or_units_inside_heads():
    """Heads whose values and output columns are zero are the ones pruned: the function is unchanged."""
    from wsl.hyper.prune import kept_units, prune

    net = randomize(_vit(), seed=5)
    sd = net.state_dict()
    with torch.no_grad():
        for layer in range(2):
            pre = f"vit.encoder.layer.{layer}.attention."
            for h in (1, 3):  # heads of 4 units
                rows = slice(4 * h, 4 * h + 4)
                for t in ("query", "key", "value"):
                    sd[pre + f"attention.{t}.weight"][rows] *= 1e-3 if t != "value" else 0.0
                    sd[pre + f"attention.{t}.bias"][rows] *= 1e-3 if t != "value" else 0.0
                sd[pre + "output.dense.weight"][:, rows] = 0.0
    net.load_state_dict(sd)
    x = _input(net)
    small = prune(net, {"heads": 0.5}, "count")
    torch.testing.assert_close(small(x), net(x), atol=1e-5, rtol=1e-5)
    space = WeightSpace.from_module(net)
    qk = [g.id for g in space.spec.groups if g.kind == "qk"][0]
    keep = kept_units(space, net.state_dict(), {qk: 8})  # within each of the 4 heads, its 2 best units
    assert [k // 4 for k in keep[qk].tolist()] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert prune(net, 0.5, "dim").state_dict()["vit.encoder.layer.0.attention.attention.query.weight"].shape == (8, 16)


@pytest.mark.parametrize("mode", ["count", "dim", "both"])
def test_jitter_of_nested_axes_uses_head_and_within_head_spacing(mode):
    """Training jitter: a head position moves by at most half the heads' spacing x coord_noise, a within-head
    position by at most half the within-head spacing x coord_noise; axes without heads keep v = 1/2."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig

    base = _vit()
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=8, blocks=1, family_heads=mode), base.state_dict())
    groups = hyper.base_space.spec.groups
    for r in (0.5, 1.0):
        c = hyper.coords(r)
        _, cont, _ = hyper.generate_rows(r, coord_noise=1.0, generator=torch.Generator().manual_seed(1))
        moved = (cont - c.cont).abs()
        for k, lay in enumerate(c.layouts):
            rows = slice(c.offsets[k], c.offsets[k + 1])
            for col, g in ((0, lay.out_group), (1, lay.in_group)):
                if g is None:
                    assert moved[rows, col].max() == 0 and moved[rows, col + 4].max() == 0
                    continue
                p = groups[g].parent
                n_u = c.group_sizes[g] if p is None else c.group_sizes[p]
                gap_u = 1 / (n_u - 1) if n_u > 1 else 0.0
                assert moved[rows, col].max() <= gap_u / 2 + 1e-6
                if p is None:
                    assert moved[rows, col + 4].max() == 0
                else:
                    d = c.group_sizes[g] // c.group_sizes[p]
                    gap_v = 1 / (d - 1) if d > 1 else 0.0
                    assert moved[rows, col + 4].max() <= gap_v / 2 + 1e-6
                    if d > 1 and c.offsets[k + 1] - c.offsets[k] >= 32:  # within-head positions are jittered
                        assert moved[rows, col + 4].max() > 0
                    if n_u > 1 and c.group_sizes[g] > 2 and c.offsets[k + 1] - c.offsets[k] >= 32:
                        assert moved[rows, col].max() > 1 / (c.group_sizes[g] - 1) / 2  # heads' spacing, not flat
