"""Inverted probes (wsl.tasks.inversion): what the inversion optimizes, determinism, that only the
training split is read, invariance, and train -> predictor -> predict with the probes stored in the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from test_tasks import make_tiny_zoo
from wsl.errors import ConfigError
from wsl.nn.probed import probe_summary
from wsl.tasks.inversion import invert_probes, probe_set, total_variation
from wsl.tasks.probes import ProbeError, ProbeNets, probe_inputs

# Tiny networks: one thread, as the entry points that invert choose (the library leaves threads to its caller).
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SHAPE = [1, 8, 8]


def _zoo(tmp_path: Path, mixed: bool = False) -> Path:
    return make_tiny_zoo(tmp_path / "zoo", n_models=20, mixed=mixed, dataset={"name": "synthetic", "input_shape": SHAPE})


def _accuracy(nets: ProbeNets, x: torch.Tensor) -> float:
    with torch.no_grad():
        out = nets[torch.arange(len(nets))](x)
    return float((out.argmax(-1) == torch.arange(len(x)) % out.shape[-1]).float().mean())


def test_inversion_makes_inputs_the_networks_assign_to_their_classes(tmp_path: Path) -> None:
    import wsl

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
    one = ProbeNets.of_module(cnn, SHAPE)
    x = invert_probes(one, 20, SHAPE, seed=1, steps=100, lr=0.1, tv=0.05)
    assert x.shape == (20, *SHAPE) and float(x.abs().max()) <= 1.0
    assert _accuracy(one, probe_inputs(SHAPE, 20, 1, "strokes")) < 0.5  # where the inversion starts
    assert _accuracy(one, x) >= 0.95
    # a zoo of random-weight networks of three architectures: they disagree, but the ensemble still moves
    nets = ProbeNets.from_view(wsl.load_zoo(_zoo(tmp_path, mixed=True)).latest().split("train"), shape=SHAPE)
    z = invert_probes(nets, 20, SHAPE, seed=1, steps=150, lr=0.1, tv=0.05, batch=8)
    assert _accuracy(nets, z) > _accuracy(nets, probe_inputs(SHAPE, 20, 1, "strokes")) + 0.1
    assert torch.equal(z, invert_probes(nets, 20, SHAPE, seed=1, steps=150, lr=0.1, tv=0.05, batch=8))  # seeded
    assert not torch.equal(z, invert_probes(nets, 20, SHAPE, seed=2, steps=150, lr=0.1, tv=0.05, batch=8))


def test_total_variation_penalizes_rough_inputs() -> None:
    smooth = torch.linspace(-1, 1, 8).repeat(2, 1, 8, 1)
    rough = torch.where(torch.arange(64).view(1, 1, 8, 8) % 2 == 0, 1.0, -1.0).repeat(2, 1, 1, 1)
    assert float(total_variation(rough, 2)) > 10 * float(total_variation(smooth, 2))
    assert float(total_variation(torch.randn(3, 64), 0)) == 0.0  # flat inputs: no spatial axes


def test_probe_set_reads_only_the_training_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsl

    zoo = wsl.load_zoo(_zoo(tmp_path))
    seen: list[set[str]] = []
    real = ProbeNets.from_view.__func__  # type: ignore[attr-defined]

    def spy(cls: type, view: object, *args: object, **kwargs: object) -> ProbeNets:
        seen.append(set(view.column("split").tolist()))  # type: ignore[attr-defined]
        return real(cls, view, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(ProbeNets, "from_view", classmethod(spy))
    x = probe_set(zoo, num=6, seed=3, kind="mixed+strokes", invert=10, invert_steps=5)
    assert seen == [{"train"}]
    assert x is not None and x.shape == (16, *SHAPE)
    assert torch.equal(x[:6], probe_inputs(SHAPE, 6, 3, "mixed+strokes"))  # the synthetic part comes first
    assert probe_set(zoo, num=0, invert=0) is None
    with pytest.raises(ProbeError, match=">= 0"):
        probe_set(zoo, num=-1)


def test_inversion_refuses_regressors_and_bad_settings() -> None:
    reg = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    nets = ProbeNets.of_module(reg, SHAPE)
    with pytest.raises(ProbeError, match="classifiers"):
        invert_probes(nets, 4, SHAPE, steps=1)
    with pytest.raises(ProbeError, match="steps"):
        invert_probes(nets, 0, SHAPE)


def test_features_on_inverted_probes_are_invariant_to_neuron_permutations() -> None:
    from test_probes import _module, _sd_and_space
    from wsl.space import random_permutation
    from wsl.tasks.probes import module_probe_outputs

    space, sd = _sd_and_space("cnn")
    m0, _ = _module("cnn", sd)
    x = invert_probes(ProbeNets.of_module(m0, SHAPE), 10, SHAPE, steps=20)
    sd_p = space.permute(sd, random_permutation(space, torch.Generator().manual_seed(4)))
    m1, _ = _module("cnn", sd_p)
    f0, f1 = (probe_summary(module_probe_outputs(m, SHAPE, inputs=x)) for m in (m0, m1))
    assert torch.allclose(f0, f1, atol=1e-5)


def test_config_checks_invert_settings() -> None:
    from wsl.train.config import load_config

    with pytest.raises(ConfigError, match="probes.invert"):
        load_config(REPO / "configs" / "generalization" / "tiny.yaml", ["probes.invert=-2"])
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml", ["probes.num=3", "probes.invert=5"])
    assert cfg.probes.total == 8


def test_train_with_inverted_probes_then_predict_and_ship(tmp_path: Path) -> None:
    """The predictor stores the inverted probes; predict_zoo, wsl.predict and a float16 ship reproduce the run."""
    import wsl
    from wsl.io import load_safetensors
    from wsl.predict import ship
    from wsl.tasks.metrics import kendall_tau
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    zoo = _zoo(tmp_path, mixed=True)
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                      [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=2",
                       "train.batch_size=8", "train.progress=false", "probes.num=2", "probes.invert=6",
                       "probes.invert_steps=10", "probes.embed=8", "probes.hidden=16"])
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert (tmp_path / "run" / "inverted_probes.png").stat().st_size > 1000
    p = load_predictor(tmp_path / "run" / "predictor")
    stored = p.stored_probe_inputs
    expect = probe_set(wsl.load_zoo(zoo), num=2, invert=6, invert_steps=10)
    assert stored is not None and expect is not None and torch.equal(stored, expect)
    test = wsl.load_zoo(zoo).latest().split("test")
    pred = p.predict_zoo(test)
    assert abs(kendall_tau(pred, test.column("test_accuracy")) - metrics["test"]["tau"]) < 1e-6
    assert wsl.predict(test[0].module(), predictor=p).raw_prediction == pytest.approx(float(pred[0]), abs=1e-5)
    ship.main([str(tmp_path / "run" / "predictor"), "--zoo", str(zoo), "--name", "inv", "--half",
               "-o", str(tmp_path / "half")])
    sd = load_safetensors(tmp_path / "half" / "model.safetensors")
    assert torch.equal(sd["probe_x"], expect.half())  # stored like every other tensor; metrics are re-measured
    half = load_predictor(tmp_path / "half")
    assert half.stored_probe_inputs is not None and torch.equal(half.stored_probe_inputs, expect.half().float())
    assert "inverting the training split" in (tmp_path / "half" / "README.md").read_text()
    assert json.loads((tmp_path / "half" / "config.json").read_text())["input"]["probes"]["invert"] == 6


def test_statnn_control_with_inverted_probes(tmp_path: Path) -> None:
    from wsl.tasks.baselines import fit_baseline

    res = fit_baseline("statnn_gbt", _zoo(tmp_path), probes=0, probe_invert=4, invert_steps=3)
    assert "inverted4" in res["layout"] and res["num_features"] > 4 * 10
