"""Probe features (wsl.tasks.probes) and probe fusion (wsl.nn.probed): invariance, the vectorized
zoo path against module calls, errors, and a tiny train -> predictor -> predict run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from test_nn_graph import FAMILIES, NAMES, family, random_sd
from test_tasks import make_tiny_zoo
from wsl.errors import PredictionError, WslError
from wsl.graph import build_one
from wsl.nn.graph_models import NGGNN
from wsl.nn.probed import ProbeFusion, Probed
from wsl.space import random_permutation
from wsl.tasks.probes import (ProbeError, module_probe_outputs, probe_features, probe_inputs, probe_outputs,
                              probe_summary)

REPO = Path(__file__).resolve().parents[1]
PROBE_FAMILIES = [n for n in NAMES if n != "mha"] + ["bn_resnet"]


def _module(name: str, sd: dict[str, torch.Tensor]) -> tuple[nn.Module, tuple[int, ...]]:
    if name == "bn_resnet":
        from wsl.archs.resnet import resnet

        torch.manual_seed(0)
        m = resnet(layers=(1, 1, 1, 1), num_classes=4, in_channels=1, width=4)
        m.load_state_dict(sd)
        return m.double().eval(), (1, 8, 8)
    m = FAMILIES[name]()[0]
    m.load_state_dict(sd)
    return m.double().eval(), tuple(FAMILIES[name]()[1].shape[1:])


def _sd_and_space(name: str, seed: int = 3) -> tuple[Any, dict[str, torch.Tensor]]:
    if name != "bn_resnet":
        return family(name)[0], random_sd(name, seed)
    from wsl.archs.resnet import resnet
    from wsl.space import WeightSpace

    torch.manual_seed(0)
    m = resnet(layers=(1, 1, 1, 1), num_classes=4, in_channels=1, width=4).eval()
    g = torch.Generator().manual_seed(seed)
    sd = {k: ((torch.randn(v.shape, generator=g).abs() + 0.5) if k.endswith("running_var")
              else torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
          for k, v in m.state_dict().items()}
    return WeightSpace.from_module(m, torch.randn(2, 1, 8, 8)), sd


@pytest.mark.parametrize("name", PROBE_FAMILIES)
def test_probe_features_are_invariant_to_neuron_permutations(name: str) -> None:
    space, sd = _sd_and_space(name)
    perms = random_permutation(space, torch.Generator().manual_seed(11))
    assert any(bool((p != torch.arange(p.numel())).any()) for p in perms.values())
    sd_p = space.permute(sd, perms)
    m0, shape = _module(name, {k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
    m1, _ = _module(name, {k: v.double() if v.is_floating_point() else v for k, v in sd_p.items()})
    f0 = probe_summary(module_probe_outputs(m0, shape, 16))
    f1 = probe_summary(module_probe_outputs(m1, shape, 16))
    assert torch.allclose(f0, f1, atol=1e-5)
    # control: the test can fail -- a perturbed weight changes the features
    k = next(n for n in sd if n.endswith("weight") and sd[n].dim() >= 2)
    sd_x = dict(sd_p)
    sd_x[k] = sd_x[k] + 0.5
    m2, _ = _module(name, {n: v.double() if v.is_floating_point() else v for n, v in sd_x.items()})
    assert not torch.allclose(f0, probe_summary(module_probe_outputs(m2, shape, 16)), atol=1e-3)


@pytest.mark.parametrize("name", ["cnn", "rescnn"])
def test_probe_fusion_model_is_invariant(name: str) -> None:
    space, sd = _sd_and_space(name)
    perms = random_permutation(space, torch.Generator().manual_seed(5))
    sd_p = space.permute(sd, perms)
    torch.manual_seed(1)
    model = ProbeFusion(NGGNN(hidden=16, num_layers=2, out_dim=8, head_hidden=16), 16 * 3 + 2, embed=8,
                        hidden=16).double().eval()
    outs = []
    for s in (sd, sd_p):
        s = {k: v.double() if v.is_floating_point() else v for k, v in s.items()}
        m, shape = _module(name, s)
        p = probe_summary(module_probe_outputs(m, shape, 16)).double()
        with torch.no_grad():
            outs.append(model(Probed(build_one(space, s), p)))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def test_probe_inputs_are_seeded_and_in_range() -> None:
    a, b = probe_inputs([1, 8, 8], 4, seed=3), probe_inputs([1, 8, 8], 4, seed=3)
    assert torch.equal(a, b) and a.shape == (4, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, probe_inputs([1, 8, 8], 4, seed=4))
    with pytest.raises(ProbeError, match="probes"):
        probe_inputs([1, 8, 8], 0)
    with pytest.raises(ProbeError, match="kind"):
        probe_inputs([1, 8, 8], 4, kind="images")
    u = probe_inputs([64], 9, kind="uniform")
    assert u.shape == (9, 64) and not torch.equal(u, probe_inputs([64], 9))
    m = probe_inputs([1, 8, 8], 9)  # mixed: noise, low-frequency noise, binary images
    assert set(m[6:].unique().tolist()) == {-1.0, 1.0}
    assert (m[3:6].diff(dim=-1).abs().mean() < m[:3].diff(dim=-1).abs().mean())


def test_stroke_probes_look_like_pen_strokes() -> None:
    s = probe_inputs([1, 8, 8], 16, seed=1, kind="strokes")
    assert torch.equal(s, probe_inputs([1, 8, 8], 16, seed=1, kind="strokes"))
    assert s.shape == (16, 1, 8, 8) and s.min() >= -1 and s.max() <= 1
    ink = (s > -1).float().mean((1, 2, 3))
    assert (ink > 0.02).all() and (ink < 0.9).all()  # some ink on every probe, never a full page
    levels = s.unique()  # area-pooled 4x4 blocks: multiples of 2/16
    assert torch.allclose(levels * 8, (levels * 8).round(), atol=1e-5) and len(levels) > 3
    # neighbouring pixels are correlated (strokes), unlike uniform noise
    assert s.diff(dim=-1).abs().mean() < probe_inputs([1, 8, 8], 16, kind="uniform").diff(dim=-1).abs().mean()
    rgb = probe_inputs([3, 6, 5], 4, kind="strokes")
    assert rgb.shape == (4, 3, 6, 5) and rgb.min() >= -1 and rgb.max() <= 1
    assert probe_inputs([64], 4, kind="strokes").shape == (4, 64)  # no image axes: low-frequency noise
    both = probe_inputs([1, 8, 8], 10, seed=2, kind="mixed+strokes")
    assert torch.equal(both[:5], probe_inputs([1, 8, 8], 5, seed=2))
    assert torch.equal(both[5:], probe_inputs([1, 8, 8], 5, seed=3, kind="strokes"))
    with pytest.raises(ProbeError, match="at least 2"):
        probe_inputs([1, 8, 8], 1, kind="mixed+strokes")


def test_zoo_probe_outputs_match_module_calls(tmp_path: Path) -> None:
    """The vmapped zoo path equals running each row's module (BatchNorm arch included, row order kept)."""
    import wsl

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=10, mixed=True,
                        dataset={"name": "synthetic", "input_shape": [1, 8, 8]})
    view = wsl.load_zoo(zoo).latest()
    out = probe_outputs(view, num=6, seed=2)
    assert out.shape == (len(view), 6, 10)
    for i in range(len(view)):
        ref = module_probe_outputs(view[i].module(), [1, 8, 8], 6, seed=2)[0]  # the MLP gets them flattened
        assert torch.allclose(out[i], ref, atol=1e-5), i
    assert probe_features(view, 6, 2).shape == (len(view), 6 * 10 + 2)


def test_non_finite_network_outputs_are_refused() -> None:
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        m[1].weight.fill_(float("inf"))
    with pytest.raises(ProbeError, match="non-finite"):
        module_probe_outputs(m, [1, 8, 8], 4)
    with pytest.raises(ProbeError, match="cannot run"):
        module_probe_outputs(nn.Linear(3, 2), [1, 8, 8], 4)
    plain_mlp = nn.Sequential(nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 10))  # no wsl_input_shape: flattened probes
    flat = module_probe_outputs(plain_mlp, [1, 8, 8], 4)
    with torch.no_grad():
        assert torch.allclose(flat[0], plain_mlp(probe_inputs([1, 8, 8], 4).reshape(4, 64)))


def test_probe_fusion_refuses_plain_inputs() -> None:
    model = ProbeFusion(nn.Linear(3, 4), 5, embed=4, hidden=8)
    with pytest.raises(WslError, match="Probed"):
        model(torch.zeros(2, 3))
    with pytest.raises(WslError, match=r"\(N, 5\)"):
        model(Probed(torch.zeros(2, 3), torch.zeros(2, 4)))


def test_train_with_probes_then_predict(tmp_path: Path) -> None:
    """Probe-fused NG-GNN: trainer's test predictions == Predictor.predict_zoo == wsl.predict per file."""
    import wsl
    from wsl.io import save_state_dict
    from wsl.tasks.metrics import kendall_tau
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=30, dataset={"name": "synthetic", "input_shape": [1, 8, 8]})
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                      [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=2",
                       "train.batch_size=8", "train.progress=false", "probes.num=4", "probes.embed=8",
                       "probes.hidden=16"])
    metrics = Trainer(cfg, tmp_path / "run").fit()
    p = load_predictor(tmp_path / "run" / "predictor")
    assert p.probes is not None and p.probes["input_shape"] == [1, 8, 8]
    test = wsl.load_zoo(zoo).latest().split("test")
    pred = p.predict_zoo(test)
    assert abs(kendall_tau(pred, test.column("test_accuracy")) - metrics["test"]["tau"]) < 1e-6
    m = test[0]
    path = tmp_path / "m0.safetensors"
    save_state_dict(m.state_dict(), path, metadata={"wsl_arch": json.dumps(m.module().wsl_arch)})
    got = wsl.predict(path, predictor=p)
    assert got.raw_prediction == pytest.approx(float(pred[0]), abs=1e-5)
    with pytest.raises(PredictionError, match="probe inputs"):  # weights alone cannot be probed
        p.predict(m.space, {k: v.unsqueeze(0) for k, v in m.state_dict().items()})


def test_learned_probe_model_is_invariant_and_differentiable() -> None:
    from wsl.tasks.probes import ProbeNets

    name = "cnn"
    space, sd = _sd_and_space(name)
    sd_p = space.permute(sd, random_permutation(space, torch.Generator().manual_seed(9)))
    torch.manual_seed(2)
    init = probe_inputs([1, 8, 8], 6, seed=1)
    model = ProbeFusion(NGGNN(hidden=16, num_layers=2, out_dim=8, head_hidden=16), 6 * 3 + 2, embed=8, hidden=16,
                        learn_inputs=init).double()
    assert torch.allclose(model.probe_inputs().float(), init.clamp(-0.95, 0.95), atol=1e-5)
    outs = []
    for s in (sd, sd_p):
        s = {k: v.double() if v.is_floating_point() else v for k, v in s.items()}
        m, _ = _module(name, s)
        outs.append(model(Probed(build_one(space, s), ProbeNets.of_module(m, [1, 8, 8])[0:1])))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)
    outs[0].sum().backward()
    assert model.raw_probes is not None and model.raw_probes.grad is not None
    assert float(model.raw_probes.grad.abs().sum()) > 0  # the loss reaches the probe inputs
    with pytest.raises(WslError, match="ProbeBatch"):  # learned probes cannot use precomputed features
        model(Probed(build_one(space, sd), torch.zeros(1, 20)))


def test_train_with_learned_probes_then_predict(tmp_path: Path) -> None:
    import wsl
    from wsl.tasks.metrics import kendall_tau
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=20, mixed=True,
                        dataset={"name": "synthetic", "input_shape": [1, 8, 8]})
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                      [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=2",
                       "train.batch_size=8", "train.progress=false", "probes.num=6", "probes.learn=true",
                       "probes.embed=8", "probes.hidden=16", "optim.lr=3e-2"])
    metrics = Trainer(cfg, tmp_path / "run").fit()
    p = load_predictor(tmp_path / "run" / "predictor")
    assert p.probes is not None and p.probes["learn"]
    init = probe_inputs([1, 8, 8], 6, seed=0).clamp(-0.95, 0.95)
    assert not torch.allclose(p.model.probe_inputs(), init, atol=1e-4)  # the inputs were trained
    test = wsl.load_zoo(zoo).latest().split("test")
    pred = p.predict_zoo(test)  # mixed architectures: CNNs, a BatchNorm CNN and an MLP on flattened probes
    assert abs(kendall_tau(pred, test.column("test_accuracy")) - metrics["test"]["tau"]) < 1e-6
    for i in (0, len(test) - 1):
        assert wsl.predict(test[i].module(), predictor=p).raw_prediction == pytest.approx(float(pred[i]), abs=1e-5)


def test_ship_half_precision_measures_the_stored_weights(tmp_path: Path) -> None:
    import wsl
    from wsl.io import load_safetensors
    from wsl.predict import ship
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=20, dataset={"name": "synthetic", "input_shape": [1, 8, 8]})
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                      [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=1",
                       "train.batch_size=8", "train.progress=false", "probes.num=4"])
    Trainer(cfg, tmp_path / "run").fit()
    ship.main([str(tmp_path / "run" / "predictor"), "--zoo", str(zoo), "--name", "half", "--half",
               "-o", str(tmp_path / "half")])
    sd = load_safetensors(tmp_path / "half" / "model.safetensors")
    assert {v.dtype for v in sd.values() if v.is_floating_point()} == {torch.float16}
    full, half = load_predictor(tmp_path / "run" / "predictor"), load_predictor(tmp_path / "half")
    test = wsl.load_zoo(zoo).latest().split("test")
    a, b = full.predict_zoo(test), half.predict_zoo(test)
    assert abs(a - b).max() < 1e-2
    shipped = json.loads((tmp_path / "half" / "config.json").read_text())
    from wsl.tasks.metrics import regression_metrics

    assert shipped["shipped"]["dtype"] == "float16"
    assert shipped["metrics"]["test"]["mae"] == pytest.approx(
        regression_metrics(b, test.column("test_accuracy").astype(float))["mae"], abs=1e-9)


def test_learned_probe_networks_check_the_input_shape() -> None:
    from wsl.tasks.probes import ProbeNets

    plain_mlp = nn.Sequential(nn.Linear(64, 5), nn.ReLU(), nn.Linear(5, 10))
    nets = ProbeNets.of_module(plain_mlp, [1, 8, 8])  # falls back to flattened probes
    x = probe_inputs([1, 8, 8], 3)
    with torch.no_grad():
        assert torch.allclose(nets[0:1](x)[0], plain_mlp(x.reshape(3, 64)))
    with pytest.raises(ProbeError, match="cannot run"):
        ProbeNets.of_module(nn.Linear(7, 2), [1, 8, 8])
