"""Tests for wsl.train: config parsing/overrides, metrics, registry, the training loop, resume, predictor."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from test_tasks import make_tiny_zoo
from wsl.errors import ConfigError, WslError

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


# ------------------------------------------------------------------ stand-in models (test-only)
class StatsMLP(nn.Module):
    """MLP on StatNN features."""

    def __init__(self, num_features: int, hidden: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(num_features), nn.Linear(num_features, hidden), nn.Tanh(),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def stats_mlp(info: Any, hidden: int = 16, dropout: float = 0.0) -> nn.Module:
    return StatsMLP(info.num_features, hidden, dropout)


stats_mlp.input_kind = "stats"  # type: ignore[attr-defined]


class BlockMoments(nn.Module):
    """Invariant stand-in on WeightSpaceFeatures: mean and RMS of every block -> MLP."""

    def __init__(self, num_blocks: int, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * num_blocks, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, feats: Any) -> torch.Tensor:
        cols = []
        for t in feats.blocks.values():
            flat = t.reshape(t.shape[0], -1)
            cols += [flat.mean(1), flat.pow(2).mean(1).sqrt()]
        return self.net(torch.stack(cols, 1))


def block_moments(info: Any, hidden: int = 16) -> nn.Module:
    from wsl.graph.features import feature_blocks

    return BlockMoments(len(feature_blocks(info.space)), hidden)


block_moments.input_kind = "features"  # type: ignore[attr-defined]


class GraphMoments(nn.Module):
    """Invariant stand-in on parameter graphs: per-graph mean/RMS of edge and node features -> MLP."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, batch: Any) -> torch.Tensor:
        from torch_geometric.utils import scatter

        g = int(batch.num_graphs)
        e_graph = batch.batch[batch.edge_index[0]]
        e = (batch.edge_attr * batch.edge_mask).sum(1, keepdim=True)
        x = (batch.x * batch.x_mask).sum(1, keepdim=True)
        cols = [scatter(e, e_graph, 0, g, "mean"), scatter(e * e, e_graph, 0, g, "mean").sqrt(),
                scatter(x, batch.batch, 0, g, "mean"), scatter(x * x, batch.batch, 0, g, "mean").sqrt()]
        return self.net(torch.cat(cols, 1))


def graph_moments(info: Any, hidden: int = 16) -> nn.Module:
    return GraphMoments(hidden)


graph_moments.input_kind = "graph"  # type: ignore[attr-defined]


def ref(name: str) -> str:
    return f"{HERE}:{name}"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_zoo(tmp_path_factory.mktemp("zoo") / "tiny", n_models=40)


def base_cfg(zoo: Path, model_name: str, **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {"data": {"zoo": str(zoo)}, "model": {"name": model_name},
                           "optim": {"name": "adamw", "lr": 1e-2},
                           "train": {"epochs": 3, "batch_size": 8, "seed": 0, "progress": False}}
    for k, v in sections.items():
        raw.setdefault(k, {}).update(v)
    return raw


# ------------------------------------------------------------------------------------------------ metrics
def test_metrics_match_scipy_and_sklearn() -> None:
    from scipy.stats import kendalltau
    from sklearn.metrics import mean_absolute_error, r2_score as sk_r2

    from wsl.tasks.metrics import kendall_tau, mae, r2_score, regression_metrics, to_json

    rng = np.random.default_rng(0)
    t = rng.random(50)
    p = t + 0.3 * rng.standard_normal(50)
    p[:10] = np.round(p[:10], 1)  # ties
    t[5:15] = 0.5
    assert kendall_tau(p, t) == pytest.approx(kendalltau(p, t).statistic, abs=1e-12)
    assert r2_score(p, t) == pytest.approx(sk_r2(t, p), abs=1e-12)
    assert mae(torch.tensor(p), torch.tensor(t)) == pytest.approx(mean_absolute_error(t, p), abs=1e-12)
    m = regression_metrics(p, t)
    assert m["n"] == 50 and set(m) == {"tau", "r2", "mae", "n"}
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert to_json({"a": float("nan"), "b": np.float32(2.0)}) == {"a": None, "b": 2.0}
    with pytest.raises(WslError, match="differ in length"):
        kendall_tau([1, 2], [1, 2, 3])


# ------------------------------------------------------------------------------------------------ registry
def test_registry_errors(tmp_path: Path) -> None:
    from wsl.train.registry import InputInfo, build_model, resolve_model

    with pytest.raises(ConfigError, match="did you mean 'nggnn'"):
        resolve_model("ngnn")
    with pytest.raises(ConfigError, match="input_kind"):
        resolve_model(f"{HERE}:base_cfg")
    with pytest.raises(ConfigError, match="model.hiden"):
        build_model(ref("stats_mlp"), InputInfo("stats", num_features=3), {"hiden": 3})
    with pytest.raises(ConfigError, match="consumes 'stats' inputs"):
        build_model(ref("stats_mlp"), InputInfo("graph"), {})
    assert resolve_model("np").input_kind == "features" and resolve_model("ngt").input_kind == "graph"


# ------------------------------------------------------------------------------------------------ training
def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    from wsl.io import load_safetensors

    return load_safetensors(run / "checkpoints" / which / "model.safetensors")


def test_wsl_train_tiny_end_to_end(tiny_zoo: Path, tmp_path: Path) -> None:
    """`wsl train tiny.yaml` on a zoo made here: metrics.json, the PNG and a loadable predictor."""
    import wsl
    from wsl.cli import main
    from wsl.tasks.metrics import regression_metrics
    from wsl.train.predictor import load_predictor

    out = tmp_path / "run"
    tiny = REPO / "configs" / "generalization" / "tiny.yaml"
    rc = main(["train", str(tiny), f"data.zoo={tiny_zoo}", "model={}", f"model.name={ref('graph_moments')}",
               "train.epochs=2", "train.batch_size=8", "train.progress=false", "--output", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        assert set(m[split]) == {"tau", "r2", "mae", "n"} and m[split]["n"] == 8
    assert m["epochs_run"] == 2 and len(m["history"]) == 2 and m["num_parameters"] > 0
    assert m["wall_time_s"] > 0 and m["models_per_s"] > 0 and m["config"]["data"]["zoo"] == str(tiny_zoo)
    assert (out / "test_scatter.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (out / "predictor" / name).is_file()
    pred = load_predictor(out / "predictor")
    pcfg = json.loads((out / "predictor" / "config.json").read_text())
    assert pcfg["input"]["accepts"] == {"type": "any"} and pcfg["target"]["name"] == "test_accuracy"
    assert "Kendall tau" in (out / "predictor" / "README.md").read_text()
    test = wsl.load_zoo(tiny_zoo).split("test").latest()
    again = regression_metrics(pred.predict_zoo(test), test.column("test_accuracy"))
    assert again["tau"] == pytest.approx(m["test"]["tau"]) and again["r2"] == pytest.approx(m["test"]["r2"], abs=1e-5)


@pytest.mark.parametrize("model", ["block_moments", "stats_mlp"])
def test_predictor_records_accepted_architecture(tiny_zoo: Path, tmp_path: Path, model: str) -> None:
    import wsl
    from wsl.archs import mlp
    from wsl.errors import PredictionError
    from wsl.space import WeightSpace
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    cfg = load_config(raw=base_cfg(tiny_zoo, ref(model), train={"epochs": 1}))
    m = Trainer(cfg, tmp_path / "r").fit()
    pred = load_predictor(tmp_path / "r" / "predictor")
    space = wsl.load_zoo(tiny_zoo)[0].space
    assert pred.accepts(space) and pred.config["input"]["accepts"]["signatures"] == [space.signature]
    test = wsl.load_zoo(tiny_zoo).split("test").latest()
    from wsl.tasks.metrics import kendall_tau

    assert kendall_tau(pred.predict_zoo(test), test.column("test_accuracy")) == pytest.approx(m["test"]["tau"])
    other = mlp([64, 8, 10])
    with pytest.raises(PredictionError, match="reads architectures"):
        pred.predict_state_dicts(WeightSpace.from_module(other), [other.state_dict()])


def test_resume_equals_uninterrupted_run(tiny_zoo: Path, tmp_path: Path) -> None:
    """Stop after 1 of 3 epochs, resume: same weights as one 3-epoch run (dropout + noise RNG included)."""
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer

    raw = base_cfg(tiny_zoo, ref("stats_mlp"), model={"dropout": 0.2}, augment={"noise": 0.05},
                   schedule={"warmup_epochs": 0.5})
    cfg = load_config(raw=raw)
    full = Trainer(cfg, tmp_path / "full").fit()
    part = Trainer(cfg, tmp_path / "part").fit(stop_after=1)
    assert part["epoch"] == 1 and not (tmp_path / "part" / "metrics.json").exists()
    resumed = Trainer(cfg, tmp_path / "part", resume=True).fit()
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test"] == full["test"] and resumed["history"] == [
        {**h, "seconds": resumed["history"][i]["seconds"]} for i, h in enumerate(full["history"])]
    with pytest.raises(WslError, match="no checkpoint to resume"):
        Trainer(cfg, tmp_path / "nothing", resume=True).fit()


def test_early_stopping_and_best_checkpoint(tiny_zoo: Path, tmp_path: Path) -> None:
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer

    cfg = load_config(raw=base_cfg(tiny_zoo, ref("graph_moments"), optim={"name": "sgd", "lr": 1e-9},
                                   train={"epochs": 10, "patience": 2}, schedule={"name": "constant"}))
    m = Trainer(cfg, tmp_path / "es").fit()
    assert m["stopped_early"] and m["epochs_run"] == 3 and m["best_epoch"] == 1
    assert (tmp_path / "es" / "checkpoints" / "best" / "state.pt").is_file()


def test_baseline_through_wsl_train(tiny_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main

    cfg = REPO / "configs" / "generalization" / "gs_statnn_gbt.yaml"
    assert main(["train", str(cfg), f"data.zoo={tiny_zoo}", "--output", str(tmp_path / "b")]) == 0
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["name"] == "statnn_gbt" and m["layout"] == "per_tensor" and m["test"]["n"] == 8
    assert (tmp_path / "b" / "test_scatter.png").is_file()
    preds = json.loads((tmp_path / "b" / "predictions.json").read_text())
    from wsl.tasks.metrics import regression_metrics

    for role in ("val", "test"):
        again = regression_metrics(np.asarray(preds[role]["predicted"]), np.asarray(preds[role]["true"]))
        assert again["tau"] == pytest.approx(m[role]["tau"], abs=1e-12) and len(preds[role]["true"]) == m[role]["n"]
    assert main(["train", str(cfg), "optim.lrr=1"]) == 2
    assert "did you mean 'optim.lr'" in capsys.readouterr().err


def test_permutation_augmentation_is_a_no_op_for_invariant_models(tiny_zoo: Path, tmp_path: Path) -> None:
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer

    runs = {}
    for permute in (False, True):
        cfg = load_config(raw=base_cfg(tiny_zoo, ref("block_moments"), augment={"permute": permute},
                                       train={"epochs": 2}))
        runs[permute] = Trainer(cfg, tmp_path / str(permute)).fit()
    a, b = _weights(tmp_path / "False"), _weights(tmp_path / "True")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert runs[True]["history"][0]["loss"] == pytest.approx(runs[False]["history"][0]["loss"], rel=1e-5)
