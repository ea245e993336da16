"""Dense weight-space features: shapes, exact round trip, equivariance of permute."""

from __future__ import annotations

import pytest
import torch

from test_graph import NAMES, assert_exact, family, random_sd, stacked_sd
from wsl.errors import WslError
from wsl.graph import WeightSpaceFeatures
from wsl.graph.features import feature_blocks
from wsl.space import random_permutation


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_and_shapes(name: str) -> None:
    space, _ = family(name)
    st = stacked_sd(name, 3)
    f = WeightSpaceFeatures.from_state_dicts(space, st)
    assert f.num_models == 3 and feature_blocks(space) is feature_blocks(space)
    for (tname, part), t in f.items():
        blk = dict(feature_blocks(space))[(tname, part)]
        assert t.shape == (3, blk.feature_size, *blk.unit_shape)
        assert f.groups[(tname, part)] == blk.unit_groups
        assert t.dtype == st[tname].dtype
    assert set(f.extras) == set(space.spec.extras)
    assert_exact(f.to_state_dicts(), st)
    one = WeightSpaceFeatures.from_state_dict(space, {k: v[0] for k, v in st.items()})
    assert_exact(one.to_state_dicts(), {k: v[:1] for k, v in st.items()})


def test_conv_taps_become_channels_and_fused_blocks() -> None:
    space, _ = family("norm_cnn")
    st = stacked_sd("norm_cnn", 2)
    f = WeightSpaceFeatures.from_state_dicts(space, st)
    w = f[("3.weight", (0, 0, 0, 0))]  # conv (4, 8, 5, 5) -> (N, 25, 4, 8)
    assert w.shape == (2, 25, 4, 8)
    assert torch.equal(w[:, 7], st["3.weight"].reshape(2, 4, 8, 25)[..., 7])
    lin = f[("7.weight", (0, 0))]  # Linear after flatten of 4 channels x 16 positions
    assert lin.shape == (2, 16, 3, 4)
    mha, _ = family("mha")
    keys = [k for k, _ in feature_blocks(mha) if k[0] == "attn.in_proj_weight"]
    assert [k[1] for k in keys] == [(0, 0), (1, 0), (2, 0)]
    fm = WeightSpaceFeatures.from_state_dicts(mha, stacked_sd("mha", 2))
    assert all(fm[k].shape == (2, 1, 8, 8) for k in keys)


@pytest.mark.parametrize("name", NAMES)
def test_permute_matches_permuted_state_dict(name: str) -> None:
    space, _ = family(name)
    st = stacked_sd(name, 3)
    f = WeightSpaceFeatures.from_state_dicts(space, st)
    perms = random_permutation(space, torch.Generator().manual_seed(11))
    want = WeightSpaceFeatures.from_state_dicts(space, space.permute(st, perms, batched=True))
    got = f.permute(perms)
    for k in f:
        assert torch.equal(got[k], want[k]), k
    bperms = random_permutation(space, torch.Generator().manual_seed(12), batch=3)
    want_b = WeightSpaceFeatures.from_state_dicts(space, space.permute(st, bperms, batched=True))
    got_b = f.permute(bperms)
    for k in f:
        assert torch.equal(got_b[k], want_b[k]), k
    assert_exact(got_b.to_state_dicts(), space.permute(st, bperms, batched=True))


def test_map_add_to_and_errors() -> None:
    space, _ = family("resnet")
    st = stacked_sd("resnet", 2)
    f = WeightSpaceFeatures.from_state_dicts(space, st)
    doubled = f + f
    scaled = f.map(lambda t: t * 2)
    for k in f:
        assert torch.equal(doubled[k], scaled[k])
    assert doubled.extras is not None and set(doubled.extras) == set(f.extras)
    g = f.to(torch.float64)
    assert all(t.dtype == torch.float64 for _, t in g.items()) and len(g) == len(f)
    assert all(g.extras[k].dtype == f.extras[k].dtype for k in f.extras)  # num_batches_tracked stays int64
    assert f.to("cpu")[f.keys()[0]].device.type == "cpu"
    other = WeightSpaceFeatures.from_state_dicts(family("mlp")[0], stacked_sd("mlp", 2))
    with pytest.raises(WslError):
        _ = f + other
    with pytest.raises(WslError):
        WeightSpaceFeatures(space, {})
    fixed = next(gr.id for gr in space.groups if gr.fixed)
    with pytest.raises(WslError):
        f.permute({fixed: torch.arange(space.groups[fixed].size)})


def test_single_model_features_equal_stacked_slice() -> None:
    space, _ = family("bert")
    sd = random_sd("bert", 4)
    f1 = WeightSpaceFeatures.from_state_dict(space, sd)
    f3 = WeightSpaceFeatures.from_state_dicts(space, space.stack([sd, random_sd("bert", 5)]))
    for k in f1:
        assert torch.equal(f1[k][0], f3[k][0])
