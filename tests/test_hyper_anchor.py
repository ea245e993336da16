"""Anchored NeuMeta (model.anchor: prune | interp): a correction generated on top of the base read at each row."""

from __future__ import annotations

import pytest
import torch

from wsl.archs import mlp, small_cnn
from wsl.archs.describe import build
from wsl.errors import ConfigError
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig, recalibrate_batchnorm
from wsl.hyper.prune import prune
from wsl.hyper.train import HyperTrainConfig, train_neumeta
from wsl.space import WeightSpace, random_permutation

RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _randomised(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Default initialisations hide bugs: every parameter and statistic redrawn."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.5 + (1.0 if "running_var" in name else 0.0))
                if "running_var" in name:
                    t.abs_().add_(0.1)
    return net.eval()


def _resnet() -> torch.nn.Module:
    return build({"format": "wsl.arch/1", "kind": "builtin", "name": "resnet",
                  "kwargs": {"layers": [1, 1, 1, 1], "width": 4, "in_channels": 1, "num_classes": 10}})


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("make,x_shape", [(lambda: small_cnn(channels=[8, 12, 6]), (5, 1, 8, 8)),
                                           (lambda: mlp([6, 10, 9, 3]), (5, 6))])
def test_fresh_prune_anchor_generates_the_pruned_base(make, x_shape, seed):
    """At every ratio, a fresh prune-anchored NeuMeta is the L1-pruned base, also for a relabelled base."""
    base = _randomised(make(), seed)
    space = WeightSpace.from_module(base)
    sd = {k: v.clone() for k, v in base.state_dict().items()}
    x = torch.randn(x_shape, generator=torch.Generator().manual_seed(seed))
    perm = random_permutation(space, torch.Generator().manual_seed(seed + 10))
    relabelled = space.permute(sd, perm)
    for state in (sd, relabelled):
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="prune"), state)
        for r in RATIOS:
            want = prune(base, r)(x)
            got = hyper.sample(r)(x)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_fresh_prune_anchor_resnet_with_recomputed_batchnorm():
    base = _randomised(_resnet(), 3)
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="prune",
                                  generate_statistics=True), base.state_dict())
    for r in (0.5, 0.75, 1.0):
        want = recalibrate_batchnorm(prune(base, r), x, 64)(x[:7])
        torch.testing.assert_close(hyper.sample(r, calibration=x, batch=64)(x[:7]), want, atol=1e-4, rtol=1e-4)
    # without calibration the generated (= the kept units') statistics are used: the pruned base exactly
    torch.testing.assert_close(hyper.sample(0.5)(x[:7]), prune(base, 0.5)(x[:7]), atol=1e-5, rtol=1e-5)


def test_fresh_interp_anchor_is_the_interpolated_base():
    from wsl.hyper.interp import interpolation_target

    base = _randomised(small_cnn(channels=[8, 12, 6]), 4)
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="interp"), base.state_dict())
    full = hyper.coords(1.0)
    for r in (0.5, 0.875):
        c = hyper.coords(r)
        want = interpolation_target(c, c.cont, full, hyper.anchor_rows())
        w_in = c.cont[:, 3:4]
        want = torch.where(hyper.is_weight[c.tensor].unsqueeze(1), want / w_in, want)
        got, want = hyper.generate(r), c.split(want)
        for name in got:
            torch.testing.assert_close(got[name], want[name])
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(hyper.sample(1.0)(x), base(x), atol=1e-5, rtol=1e-5)


def test_anchored_fit_moves_narrow_members_and_round_trips(tmp_path):
    """A short fit changes the narrow members (the correction learns), keeps full width at the base,
    and a saved anchored hypernetwork loads back to the same generator."""
    from wsl.hyper.run import load_hyper, save_hyper

    torch.manual_seed(0)
    base = _randomised(mlp([6, 12, 12, 3]), 5)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(1))
    y = base(x).argmax(1)
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="prune"), base.state_dict())
    before = prune(base, 0.5)(x)
    train_neumeta(hyper, base.state_dict(), x, y,
                  HyperTrainConfig(steps=40, batch=64, lr=3e-3, kd_weight=1.0, rec_weight=100.0))
    after = hyper.sample(0.5)(x)
    assert (after - before).abs().max() > 1e-3
    ref = base(x)
    assert (hyper.sample(1.0)(x) - ref).abs().max() < 0.05 * ref.abs().max()  # full width stays at the base
    save_hyper(hyper, tmp_path / "hyper.safetensors")
    back = load_hyper(tmp_path)
    assert back.config.anchor == "prune"
    plain = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1), base.state_dict())
    n_base = sum(v.numel() for v in base.state_dict().values())
    n_scores = sum(g.size for g in hyper.base_space.spec.groups)
    assert hyper.num_bytes() == plain.num_bytes() + 4 * (n_base + n_scores)  # the anchor costs the base, not padding
    torch.testing.assert_close(back.sample(0.5)(x), after, atol=0, rtol=0)


def test_anchor_errors():
    base = small_cnn()
    with pytest.raises(ConfigError, match="anchor"):
        NeuMetaConfig(arch=base.wsl_arch, anchor="pruned")
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=8, blocks=1, anchor="prune"), base.state_dict())
    c = hyper.coords(0.5)
    with pytest.raises(ConfigError, match="anchor values are required"):
        hyper(c.tensor, c.cont)
    plain = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=8, blocks=1), base.state_dict())
    with pytest.raises(ConfigError, match="unexpected"):
        plain(c.tensor, c.cont, torch.zeros(c.cont.shape[0], plain.taps_max))


def test_sgd_option_and_its_errors():
    """optimizer: sgd runs the same fit with SGD + momentum (the state it saves is SGD's); bad values refused."""
    torch.manual_seed(0)
    base = _randomised(mlp([6, 8, 3]), 7)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="prune"), base.state_dict())
    fit = train_neumeta(hyper, base.state_dict(), x, base(x).argmax(1),
                        HyperTrainConfig(steps=5, batch=16, lr=1e-3, optimizer="sgd", momentum=0.5))
    assert fit["optimizer"]["param_groups"][0]["momentum"] == 0.5
    with pytest.raises(ConfigError, match="optimizer"):
        HyperTrainConfig(optimizer="adam")
    with pytest.raises(ConfigError, match="momentum"):
        HyperTrainConfig(optimizer="sgd", momentum=1.0)


@pytest.mark.parametrize("bad,match", [({"lr": "3e-4"}, "lr: expected a number, got '3e-4' .*3.0e-4"),
                                       ({"steps": 2.5}, "steps: expected an int"),
                                       ({"kd_weight": True}, "kd_weight: expected a number")])
def test_train_config_types_are_checked(bad, match):
    """A YAML string where a number belongs is a one-line ConfigError, not an internal TypeError."""
    with pytest.raises(ConfigError, match=match):
        HyperTrainConfig(**bad)


def test_anchor_weight_pulls_narrow_members_to_their_anchor():
    """With a large anchor_weight the fitted narrow member stays closer to its pruned start than without."""
    torch.manual_seed(0)
    base = _randomised(mlp([6, 12, 12, 3]), 8)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(4))
    y = base(x).argmax(1)
    dist = {}
    for w in (0.0, 1000.0):
        torch.manual_seed(0)
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, anchor="prune"), base.state_dict())
        train_neumeta(hyper, base.state_dict(), x, y,
                      HyperTrainConfig(steps=30, batch=64, lr=3e-3, kd_weight=1.0, anchor_weight=w))
        c = hyper.coords(0.5)
        _, _, values = hyper.generate_rows(0.5)
        dist[w] = float((values.detach() - hyper.anchor_values(c, c.cont)).abs().max())
    assert dist[1000.0] < 0.5 * dist[0.0]
    plain = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1), base.state_dict())
    with pytest.raises(ConfigError, match="anchored"):
        train_neumeta(plain, base.state_dict(), x, y, HyperTrainConfig(steps=1, anchor_weight=1.0))


@pytest.mark.parametrize("mode", ["count", "dim", "both"])
def test_fresh_prune_anchor_of_a_vit_is_its_head_aware_pruning(mode):
    """Nested groups: the anchor keeps whole heads (count) or the best units inside every head (dim), like prune."""
    from wsl.archs import vit_tiny

    base = _randomised(vit_tiny(image_size=8, patch_size=2, num_channels=1, hidden=16, layers=2, heads=4, mlp=24,
                                num_classes=5), 9)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=8, blocks=1, anchor="prune", family_heads=mode),
                    base.state_dict())
    ratios = (0.25, 0.5, 0.75, 1.0) if mode != "both" else ({"heads": 0.5}, {"head_dim": 0.5}, 0.5, 1.0)
    for r in ratios:  # "both": 2 heads of 4 units vs 4 heads of 2 have the same shapes but keep different units
        torch.testing.assert_close(hyper.sample(r)(x), prune(base, r, mode)(x), atol=1e-4, rtol=1e-4)
    if mode == "count":
        with pytest.raises(ConfigError, match="interp"):
            NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=8, blocks=1, anchor="interp"), base.state_dict())


def test_loading_an_anchored_state_replaces_its_cached_anchor():
    """load_state_dict after a generation: the padded rows and the pruning index follow the loaded base."""
    a, b = _randomised(small_cnn(channels=[8, 12, 6]), 11), _randomised(small_cnn(channels=[8, 12, 6]), 12)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    hyper = NeuMeta(NeuMetaConfig(arch=a.wsl_arch, hidden=8, blocks=1, anchor="prune"), a.state_dict())
    hyper.sample(0.5)  # fills both caches from base a
    other = NeuMeta(NeuMetaConfig(arch=b.wsl_arch, hidden=8, blocks=1, anchor="prune"), b.state_dict())
    hyper.load_state_dict(other.state_dict())
    torch.testing.assert_close(hyper.sample(0.5)(x), prune(b, 0.5)(x), atol=1e-5, rtol=1e-5)
