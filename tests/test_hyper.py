"""wsl.hyper: width families, coordinates, smoothing by permutation, NeuMeta generation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from wsl.archs import mlp, small_cnn
from wsl.archs.width import WidthFamily
from wsl.errors import ArchitectureError
from wsl.hyper.coords import fourier, network_coords, target_rows
from wsl.hyper.smooth import path_length, smooth, total_variation, two_opt_path, unit_features
from wsl.space import WeightSpace, random_permutation

RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def _nets():
    return [small_cnn(), mlp([40, 100, 100, 10]), small_cnn(channels=[8, 12, 6], activation="tanh")]


@pytest.mark.parametrize("index", range(3))
def test_width_family_valid_at_every_ratio(index):
    base = _nets()[index]
    fam = WidthFamily.from_module(base)
    knob_groups = fam.knob_groups()
    base_space = fam.space(1.0)
    assert [g.size for g in base_space.spec.groups] == [g.size for g in WeightSpace.from_module(base).spec.groups]
    for r in RATIOS:
        net = fam.build(r)
        space = fam.space(r)
        space.check(net.state_dict())
        y = net(torch.randn(3, *base.wsl_input_shape))
        assert y.shape == (3, 10)
        for k, n in zip(fam.knobs, fam.base):
            for g in knob_groups[k]:
                assert space.spec.groups[g].size == max(1, int(np.floor(r * n + 0.5)))
        for g, gb in zip(space.spec.groups, base_space.spec.groups):
            if g.fixed:
                assert g.size == gb.size


def test_width_family_per_knob_and_errors():
    fam = WidthFamily.from_module(mlp([40, 100, 100, 10]))
    assert fam.widths({"sizes[1]": 0.5}) == (50, 100)
    assert fam.widths([0.25, 0.75]) == (25, 75)
    with pytest.raises(ArchitectureError, match="unknown knob"):
        fam.widths({"sizes[9]": 0.5})
    with pytest.raises(ArchitectureError, match="outside"):
        fam.widths(0.0)
    with pytest.raises(ArchitectureError, match="no width family"):
        WidthFamily({"kind": "builtin", "name": "gpt2", "kwargs": {}})


def test_coordinates_cover_every_weight_once():
    fam = WidthFamily.from_module(small_cnn())
    base = fam.space(1.0)
    for r in (0.25, 1.0):
        net = fam.build(r)
        c = network_coords(fam.space(r), base)
        vals, mask = target_rows(net.state_dict(), c, 9)
        assert int(mask.sum()) == sum(p.numel() for p in net.parameters())
        back = c.split(vals)
        for k, v in net.state_dict().items():
            assert torch.equal(back[k], v)
        assert float(c.cont[:, :2].min()) >= 0.0 and float(c.cont[:, :2].max()) <= 1.0
        assert torch.allclose(c.cont[c.tensor == 2, 2], torch.full((1,), r))  # w_out of 3.weight
    f = fourier(torch.rand(5, 4), 3)
    assert f.shape == (5, 4 * 7)


@pytest.mark.parametrize("index", range(3))
def test_smoothing_preserves_function_and_lowers_tv(index):
    torch.manual_seed(index)
    net = _nets()[index]
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    space = WeightSpace.from_module(net)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(7, *net.wsl_input_shape)
    y = net(x)
    for solver in ("two_opt", "fast_tsp"):
        if solver == "fast_tsp":
            pytest.importorskip("fast_tsp")
        sm, perms = smooth(space, sd, solver)
        assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
        net.load_state_dict(sm)
        torch.testing.assert_close(net(x), y, atol=1e-5, rtol=1e-5)
        net.load_state_dict(sd)
        assert total_variation(space, sm) < total_variation(space, sd)
        for g, p in perms.items():
            f = unit_features(space, sd, g).double()
            d = torch.cdist(f, f).numpy()
            assert path_length(d, p.numpy()) <= path_length(d, np.arange(len(p))) + 1e-9


def test_two_opt_finds_the_line():
    rng = np.random.default_rng(0)
    pts = rng.permutation(30).astype(float)
    d = np.abs(pts[:, None] - pts[None, :])
    order = two_opt_path(d)
    assert sorted(order.tolist()) == list(range(30))
    assert path_length(d, order) == pytest.approx(29.0)


def test_smoothing_is_invariant_to_relabelling():
    """Smoothing a permuted base gives the same path length per group (same unit distances)."""
    torch.manual_seed(3)
    net = small_cnn()
    space = WeightSpace.from_module(net)
    sd = net.state_dict()
    perm = random_permutation(space, torch.Generator().manual_seed(1))
    a, pa = smooth(space, sd, "two_opt")
    b, pb = smooth(space, space.permute(sd, perm), "two_opt")
    for g in pa:
        f = unit_features(space, sd, g).double()
        fb = unit_features(space, space.permute(sd, perm), g).double()
        la = path_length(torch.cdist(f, f).numpy(), pa[g].numpy())
        lb = path_length(torch.cdist(fb, fb).numpy(), pb[g].numpy())
        assert la == pytest.approx(lb, rel=1e-9)


def test_smoothing_is_canonical_for_two_opt():
    """With 2-opt and generic weights, smooth(permuted base) == smooth(base): same coordinates' targets."""
    torch.manual_seed(4)
    net = small_cnn(channels=[12, 10, 14])
    space = WeightSpace.from_module(net)
    sd = net.state_dict()
    a, _ = smooth(space, sd, "two_opt")
    for seed in range(3):
        perm = random_permutation(space, torch.Generator().manual_seed(seed))
        b, _ = smooth(space, space.permute(sd, perm), "two_opt")
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_neumeta_reproduces_a_tiny_base_at_full_width():
    """A short reconstruction fit on a tiny MLP: the full-width sample matches the base's outputs."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.train import HyperTrainConfig, train_neumeta

    torch.manual_seed(0)
    base = mlp([3, 5, 4, 2])
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=64, blocks=2, frequencies=4), sd)
    x = torch.randn(16, 3)
    y = base(x).argmax(1)
    cfg = HyperTrainConfig(steps=400, lr=3e-3, p_full=1.0, coord_noise=0.0, rec_weight=1.0, task_weight=0.0,
                           weight_decay=0.0)
    out = train_neumeta(hyper, sd, x, y, cfg)
    assert out["history"][-1]["rec"] < 0.02 * out["history"][0]["rec"]
    net = hyper.sample(1.0)
    torch.testing.assert_close(net(x), base(x), atol=0.05, rtol=0.05)
    small = hyper.sample(0.5)
    assert [tuple(p.shape) for p in small.parameters()][0] == (3, 3)  # floor(0.5 * 5 + 1/2) = 3


def test_neumeta_generates_every_tensor_in_one_call_and_saves(tmp_path):
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.run import load_hyper, save_hyper

    base = small_cnn()
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=32, blocks=1), base.state_dict())
    for r in (0.25, 0.6, 1.0):
        sd = hyper.generate(r)
        ref = hyper.family.build(r).state_dict()
        assert {k: tuple(v.shape) for k, v in sd.items()} == {k: tuple(v.shape) for k, v in ref.items()}
    save_hyper(hyper, tmp_path / "hyper.safetensors")
    back = load_hyper(tmp_path)
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(back.sample(0.5)(x), hyper.sample(0.5)(x))


def test_generated_function_unchanged_when_base_is_permuted_and_resmoothed():
    """smooth(base) == smooth(permuted base) (2-opt), so the same-seed fit generates the same networks."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.train import HyperTrainConfig, train_neumeta

    torch.manual_seed(5)
    base = mlp([3, 7, 6, 2])
    space = WeightSpace.from_module(base)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    x = torch.randn(32, 3)
    y = base(x).argmax(1)
    outs = []
    for seed in (None, 0, 1):
        src = sd if seed is None else space.permute(sd, random_permutation(space, torch.Generator().manual_seed(seed)))
        sm, _ = smooth(space, src, "two_opt")
        torch.manual_seed(0)
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=32, blocks=1), sm)
        train_neumeta(hyper, sm, x, y, HyperTrainConfig(steps=20, batch=8))
        outs.append([hyper.sample(r)(x) for r in (0.5, 1.0)])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_cli_sample_writes_a_loadable_network(tmp_path, capsys):
    from wsl.cli import main
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.run import save_hyper
    from wsl.io import load_model

    base = small_cnn()
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1), base.state_dict())
    save_hyper(hyper, tmp_path / "hyper.safetensors")
    out = tmp_path / "net.safetensors"
    assert main(["hyper", "sample", str(tmp_path), "--width", "0.5", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 1338
    net, _ = load_model(out)
    assert [m.out_channels for m in net if isinstance(m, torch.nn.Conv2d)] == [8, 8, 8]
    assert main(["hyper", "sample", str(tmp_path / "missing"), "-o", str(out)]) == 2


def test_batchnorm_resnet_smoothing_and_recalibrated_sample():
    """ResNet with BatchNorm: smoothing permutes running statistics too (function kept in eval mode);
    a sample's recomputed statistics are the calibration inputs' own (checked on the first BatchNorm)."""
    from wsl.archs.describe import build
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig

    torch.manual_seed(6)
    net = build({"format": "wsl.arch/1", "kind": "builtin", "name": "resnet",
                 "kwargs": {"layers": [1, 1, 1, 1], "width": 4, "in_channels": 1, "num_classes": 10}})
    x = torch.randn(64, 1, 8, 8)
    net.train()
    net(x)  # non-trivial running statistics
    net.eval()
    space = WeightSpace.from_module(net)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    y = net(x[:5])
    sm, _ = smooth(space, sd, "two_opt")
    net.load_state_dict(sm)
    torch.testing.assert_close(net(x[:5]), y, atol=1e-5, rtol=1e-5)
    hyper = NeuMeta(NeuMetaConfig(arch=net.wsl_arch, hidden=16, blocks=1), sd)
    with pytest.raises(Exception, match="calibration"):
        hyper.sample(0.5)
    small = hyper.sample(0.5, calibration=x, batch=64)  # one batch: the statistics are exactly its own
    with torch.no_grad():
        h = small.conv1(x)
    torch.testing.assert_close(small.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(small.bn1.running_var, h.transpose(0, 1).flatten(1).var(1), atol=1e-4, rtol=1e-3)
    assert not small.training and small.bn1.momentum == 0.1


def test_run_writes_the_run_directory_and_resumes(tmp_path):
    from wsl.hyper.run import load_hyper, resolve_config, run

    cfg = resolve_config({"dataset": "digits", "base": {"arch": {"name": "small_cnn", "kwargs": {"channels": [4, 4, 4]}},
                                                        "steps": 30},
                          "model": {"hidden": 16, "blocks": 1}, "train": {"steps": 4, "batch": 16},
                          "eval_ratios": [0.5, 1.0], "checkpoint_every": 2, "solver": "two_opt"})
    m = run(cfg, tmp_path)
    for f in ("config.json", "base.safetensors", "hyper.safetensors", "metrics.json", "README.md",
              "checkpoint/hyper.safetensors", "checkpoint/optimizer.pt", "checkpoint/state.json",
              "checkpoint/target.safetensors"):
        assert (tmp_path / f).is_file(), f
    assert set(m["accuracy"]) == {"0.5", "1.0"} and m["tv_after"] <= m["tv_before"]
    assert json.loads((tmp_path / "checkpoint/state.json").read_text())["step"] == 4
    cfg["train"]["steps"] = 6
    m2 = run(cfg, tmp_path, resume=True)
    assert [h["step"] for h in m2["history"]] == [] or m2["history"][0]["step"] >= 4
    assert json.loads((tmp_path / "checkpoint/state.json").read_text())["step"] == 6
    assert load_hyper(tmp_path).sample(0.5) is not None
    with pytest.raises(Exception, match="nothing to resume"):
        run(cfg, tmp_path / "empty", resume=True)
    with pytest.raises(Exception, match="unknown key"):
        resolve_config({"dataset": "digits", "trian": {}})


def _tiny_run_config(**train):
    from wsl.hyper.run import resolve_config

    return resolve_config({"dataset": "digits",
                           "base": {"arch": {"name": "small_cnn", "kwargs": {"channels": [4, 4, 4]}}, "steps": 30},
                           "model": {"hidden": 16, "blocks": 1, "width_frequencies": 1},
                           "train": {"steps": 6, "batch": 16, "kd_weight": 0.5, **train},
                           "eval_ratios": [0.5, 1.0], "checkpoint_every": 3, "solver": "two_opt"})


def test_resumed_fit_is_identical_to_an_uninterrupted_one():
    """Draws are seeded per (step, width): stopping after 3 steps and resuming gives the same weights."""
    import copy

    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.train import HyperTrainConfig, train_neumeta

    torch.manual_seed(0)
    base = small_cnn(channels=[4, 4, 4])
    for p in base.parameters():
        p.data.normal_()
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    cfg = HyperTrainConfig(steps=6, batch=8, widths_per_step=2, kd_weight=0.5, coord_noise=1.0, rec_rows=50)
    make = lambda: NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1, width_frequencies=2), sd)  # noqa: E731
    torch.manual_seed(1)
    whole = make()
    saved = {}

    def keep(step, opt):
        if step == 3:
            saved.update(hyper=copy.deepcopy(whole.state_dict()), opt=copy.deepcopy(opt))

    train_neumeta(whole, sd, x, y, cfg, on_checkpoint=keep, checkpoint_every=3)
    resumed = make()
    resumed.load_state_dict(saved["hyper"])
    out = train_neumeta(resumed, sd, x, y, cfg, start_step=3, optimizer_state=saved["opt"])
    assert [h["step"] for h in out["history"]] == [3, 4, 5] and all(h["kd"] > 0 for h in out["history"])
    for k, v in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(Exception, match="widths_per_step"):
        HyperTrainConfig(widths_per_step=0)


def test_run_writes_plots_and_a_card(tmp_path):
    from wsl.hyper.run import run

    pytest.importorskip("matplotlib")
    m = run(_tiny_run_config(), tmp_path)
    for f in ("loss.png", "accuracy.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    assert {"task", "kd", "rec", "ratio"} <= set(m["history"][0])


def test_sample_averaging_many_noisy_generations():
    """samples=K: the mean of K jittered generations (deterministic per seed); K=1 is the centre sample."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig

    torch.manual_seed(0)
    base = mlp([3, 6, 4, 2])
    hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=16, blocks=1), base.state_dict())
    x = torch.randn(5, 3)
    centre = hyper.sample(0.5)
    avg = hyper.sample(0.5, samples=4, coord_noise=1.0, seed=3)
    again = hyper.sample(0.5, samples=4, coord_noise=1.0, seed=3)
    torch.testing.assert_close(avg(x), again(x))
    assert not torch.allclose(avg(x), centre(x))
    gen = torch.Generator().manual_seed(3)
    draws = [hyper.generate(0.5, coord_noise=1.0, generator=gen) for _ in range(4)]
    for k, v in avg.state_dict().items():
        torch.testing.assert_close(v, torch.stack([d[k] for d in draws]).mean(0).detach())
    with pytest.raises(Exception, match="samples"):
        hyper.sample(0.5, samples=0)


def test_generated_batchnorm_statistics():
    """generate_statistics: running mean/var get coordinate rows, are fitted by reconstruction, and a sample
    without calibration uses them (variances positive); with calibration they are recomputed instead."""
    from wsl.archs.describe import build
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.train import HyperTrainConfig, train_neumeta

    torch.manual_seed(7)
    net = build({"format": "wsl.arch/1", "kind": "builtin", "name": "resnet",
                 "kwargs": {"layers": [1, 1, 1, 1], "width": 2, "in_channels": 1, "num_classes": 10}})
    x = torch.randn(64, 1, 8, 8)
    net.train()
    net(x)
    net.eval()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    plain = NeuMeta(NeuMetaConfig(arch=net.wsl_arch, hidden=16, blocks=1), sd)
    hyper = NeuMeta(NeuMetaConfig(arch=net.wsl_arch, hidden=32, blocks=1, generate_statistics=True), sd)
    stats = [t.name for t in hyper.base_space.spec.tensors if t.role in ("running_mean", "running_var")]
    assert stats and set(stats) <= set(hyper.generate(0.5)) and not set(stats) & set(plain.generate(0.5))
    cfg = HyperTrainConfig(steps=300, lr=3e-3, p_full=1.0, coord_noise=0.0, rec_weight=1.0, task_weight=0.0,
                           weight_decay=0.0)
    out = train_neumeta(hyper, sd, x, torch.randint(0, 10, (64,)), cfg)
    assert out["history"][-1]["rec"] < 0.25 * out["history"][0]["rec"]
    full = hyper.sample(1.0)  # generated statistics, no calibration needed
    gen = hyper.generate(1.0)
    for name in stats:
        got = full.state_dict()[name]
        if name.endswith("running_var"):
            assert bool((got >= 1e-5).all())
        torch.testing.assert_close(got, gen[name].detach().clamp_min(1e-5) if name.endswith("var") else
                                   gen[name].detach())
    err = max(float((full.state_dict()[n] - sd[n]).abs().max() / sd[n].abs().max()) for n in stats)
    assert err < 0.3, err
    recal = hyper.sample(1.0, calibration=x, batch=64)
    with torch.no_grad():
        h = recal.conv1(x)
    torch.testing.assert_close(recal.bn1.running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)


def test_unit_grid_interpolates_between_base_units():
    """phi_g(j/(n-1)) is unit j's vector; between two units it is their linear interpolation; no axis -> 0."""
    from wsl.hyper.grid import UnitGrid

    torch.manual_seed(0)
    grid = UnitGrid([1, 5, 3], dim=4)
    table = grid.table.detach()
    u = torch.tensor([0.0, 0.25, 1.0, 0.375, 0.5, 0.9, 0.3, 0.7])
    g = torch.tensor([1, 1, 1, 1, 2, -1, 0, 2])
    got = grid(g, u).detach()
    want = torch.stack([table[1], table[2], table[5], (table[2] + table[3]) / 2, table[7], torch.zeros(4), table[0],
                        0.6 * table[7] + 0.4 * table[8]])
    torch.testing.assert_close(got, want)
    loss = grid(g, u).sum()
    loss.backward()
    assert grid.table.grad[4].abs().sum() == 0 and grid.table.grad[2].abs().sum() > 0  # unit 3 of group 1 unused


def test_grid_features_raise_the_rank_of_the_first_generated_network(tmp_path):
    """Without a grid the initial generated matrices have low effective rank; with one they are near full rank.
    The grid is saved and loaded with the hypernetwork."""
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.hyper.run import load_hyper, save_hyper

    base = mlp([20, 48, 48, 10])
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}

    def eff_rank(m):
        s = torch.linalg.svdvals(m - m.mean(0))
        return float(s.sum() ** 2 / (s ** 2).sum())

    ranks = {}
    for grid in (0, 16):
        torch.manual_seed(0)
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch, hidden=64, blocks=2, grid_features=grid), sd)
        w = hyper.generate(1.0)[[k for k in sd if sd[k].shape == (48, 48)][0]].detach()
        ranks[grid] = eff_rank(w)
    assert ranks[16] > 3 * ranks[0], ranks
    save_hyper(hyper, tmp_path / "h.safetensors")
    back = load_hyper(tmp_path / "h.safetensors")
    x = torch.randn(3, 20)
    torch.testing.assert_close(back.sample(0.5)(x), hyper.sample(0.5)(x))
