"""wsl.predict and `wsl predict`: a tiny zoo -> train -> ship -> predict, end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch

from test_tasks import make_tiny_zoo
from wsl.errors import PredictionError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A tiny mixed zoo, an NG-GNN trained on it for 2 epochs, shipped into a models dir."""
    from wsl.predict import ship
    from wsl.train.config import load_config
    from wsl.train.loop import Trainer

    root = tmp_path_factory.mktemp("predict")
    zoo = make_tiny_zoo(root / "zoo", n_models=30, mixed=True)
    cfg = load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                      [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=2",
                       "train.batch_size=16", "train.progress=false"])
    Trainer(cfg, root / "run").fit()
    models = root / "models"
    ship.main([str(root / "run" / "predictor"), "--zoo", str(zoo), "--name", "tiny-graph", "--priority", "1",
               "-o", str(models / "tiny-graph")])
    mp = pytest.MonkeyPatch()
    mp.setenv("WSL_MODELS_DIR", str(models))
    yield zoo, models
    mp.undo()


def _example(zoo: Path, tmp: Path, index: int = 0) -> tuple[Path, float]:
    import wsl
    from wsl.io import save_state_dict

    z = wsl.load_zoo(zoo).latest().split("test")
    m = z[index]
    path = tmp / f"m{index}.safetensors"
    save_state_dict(m.state_dict(), path, metadata={"wsl_arch": json.dumps(m.module().wsl_arch)})
    return path, float(m.metadata["test_accuracy"])


def test_shipped_card_and_calibration(shipped_dir: tuple[Path, Path]) -> None:
    _, models = shipped_dir
    cfg = json.loads((models / "tiny-graph" / "config.json").read_text())
    cal = cfg["calibration"]
    assert cal["split"] == "val" and cal["abs_residual"] > 0 and 0 <= cal["test_coverage"] <= 1
    assert cal["method"] == "split-conformal" and cal["n_calibration"] == 12 and cal["coverage"]["test"] == \
        cal["test_coverage"]
    fam = cfg["family"]
    assert fam["input_sizes"] == [1, 64] and fam["output_sizes"] == [10] and fam["num_architectures"] == 3
    card = (models / "tiny-graph" / "README.md").read_text()
    assert "weight-space-learning" in card and "Kendall" in card and "Limits" in card


def test_conformal_half_width() -> None:
    from wsl.errors import ConfigError, WslError
    from wsl.predict.calibrate import conformal_half_width

    assert conformal_half_width(np.arange(1, 20.0), 0.9) == 18.0  # k = ceil(20 * 0.9); np.quantile gives 17.2
    assert conformal_half_width(-np.arange(1, 10.0), 0.9) == 9.0  # absolute values; n = 9 is the least for 90%
    with pytest.raises(ConfigError, match="8 networks are too few for a 90% split-conformal interval; give at "
                       "least 9") as err:
        conformal_half_width(np.arange(8.0), 0.9)
    assert isinstance(err.value, WslError)
    rng = np.random.default_rng(0)  # exchangeable residuals: the level holds on average over calibration draws
    hits = [np.mean(np.abs(rng.normal(size=400)) <= conformal_half_width(rng.normal(size=50), 0.9))
            for _ in range(200)]
    assert 0.9 <= np.mean(hits) < 0.93


def test_ship_calibrates_on_independent_zoo(shipped_dir: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    import wsl
    from wsl.predict import ship
    from wsl.predict.calibrate import conformal_half_width, residuals
    from wsl.train.predictor import load_predictor

    zoo, models = shipped_dir
    cal_zoo = make_tiny_zoo(tmp_path / "cal", n_models=30, mixed=True, seed=1)
    other = make_tiny_zoo(tmp_path / "other", n_models=30, mixed=True, seed=2)
    d = tmp_path / "tiny-graph"
    shutil.copytree(models / "tiny-graph", d)
    ship.main([str(d), "--zoo", str(zoo), "--name", "tiny-graph", "--calibration-zoo", str(cal_zoo),
               "--coverage-zoo", str(other), "--command", "wsl train tiny", "-o", str(d)])
    cal = json.loads((d / "config.json").read_text())["calibration"]
    p = load_predictor(d)
    want = conformal_half_width(residuals(p, wsl.load_zoo(cal_zoo).latest()), 0.9)
    assert cal["split"] == "calibration zoo" and cal["n_calibration"] == 60 and cal["abs_residual"] == want
    assert cal["calibration_zoo"] == {"name": "tiny", "recipe_seed": None, "num_models": 60}
    test_res = residuals(p, wsl.load_zoo(zoo).latest().split("test"))
    assert cal["coverage"]["test"] == np.mean(test_res <= want) and cal["n"]["test"] == len(test_res)
    assert set(cal["coverage"]) == {"test", "independent"} and cal["n"]["independent"] == 60
    card = (d / "README.md").read_text()
    assert "60 networks of an independent calibration zoo" in card and "wsl train tiny" in card
    assert f"{cal['coverage']['independent']:.1%} of 60 networks of another independent zoo" in card


def test_predict_path_module_and_state_dict_agree(shipped_dir: tuple[Path, Path], tmp_path: Path) -> None:
    import wsl
    from wsl.predict import predict

    zoo, _ = shipped_dir
    path, _ = _example(zoo, tmp_path)
    p = predict(path)
    assert p.predictor == "tiny-graph" and 0.0 <= p.predicted_test_accuracy <= 1.0
    assert p.interval is not None and p.interval[0] <= p.predicted_test_accuracy <= p.interval[1]
    assert p.architecture["num_parameters"] > 0 and p.architecture["num_edges"] > 0
    m = wsl.load_zoo(zoo).latest().split("test")[0]
    assert predict(m.module()).raw_prediction == pytest.approx(p.raw_prediction, abs=1e-6)
    arch = m.module().wsl_arch
    assert predict(m.state_dict(), arch=arch).raw_prediction == pytest.approx(p.raw_prediction, abs=1e-6)
    z = wsl.load_zoo(zoo).latest().split("test")
    from wsl.predict import get_predictor

    expected = get_predictor("tiny-graph").predict_zoo(z[[0]])[0]
    assert p.raw_prediction == pytest.approx(float(expected), abs=1e-6)


def test_non_finite_weights_refused(shipped_dir: tuple[Path, Path]) -> None:
    from wsl.archs import small_cnn
    from wsl.predict import predict

    m = small_cnn(channels=(4, 4))
    with torch.no_grad():
        m[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(PredictionError, match="non-finite"):
        predict(m)


def test_out_of_family_refused_and_ood_warned(shipped_dir: tuple[Path, Path]) -> None:
    from wsl.archs import mlp, small_cnn
    from wsl.predict import predict

    with pytest.raises(PredictionError, match=r"first layer reads 3 input channels \(CNN\) or features \(MLP\); "
                       r"the predictor was trained on networks whose first layer reads 1 or 64 \(inputs of shape"):
        predict(small_cnn(in_channels=3, channels=(4, 4)))
    with pytest.raises(PredictionError, match=r"has 5 output units \(classes\); the predictor was trained on "
                       r"networks with 10 output units"):
        predict(mlp([64, 8, 5]))
    p = predict(small_cnn(channels=(4, 4, 4), kernel_size=5, activation="gelu"))
    text = " ".join(p.warnings)
    assert "gelu" in text and "kernel sizes" in text and "depth" in text


def test_cli_predict_paths_and_zoo(shipped_dir: tuple[Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main
    from wsl.predict import predict

    zoo, _ = shipped_dir
    path, _ = _example(zoo, tmp_path, 1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    rc = main(["predict", str(path), str(bad), "--json"])
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert rc == 2 and lines[0]["path"] == str(path) and "error" in lines[1]
    assert lines[0]["predicted_test_accuracy"] == predict(path).predicted_test_accuracy
    assert main(["predict", "--zoo", str(zoo), "--split", "test"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    test = wsl_load(zoo).latest().split("test")
    ids = [test[i].metadata["model_id"] for i in range(len(test))]
    assert [line.split()[0] for line in out[1:-1]] == ids  # one line per model, between header and summary
    assert "Kendall tau" in out[-1] and f"of {len(ids)})" in out[-1]
    main(["predict", str(path)])
    row = capsys.readouterr().out.splitlines()[1]
    pr = predict(path)
    assert pr.interval_coverage is not None and f"90% (test {pr.interval_coverage:.1%})" in row


def wsl_load(zoo: Path):  # type: ignore[no-untyped-def]
    import wsl

    return wsl.load_zoo(zoo)


def test_interval_clipped_at_both_ends(shipped_dir: tuple[Path, Path]) -> None:
    from wsl.archs import small_cnn
    from wsl.predict import get_predictor
    from wsl.predict.api import clipped_interval, make_prediction
    from wsl.space import WeightSpace

    assert clipped_interval(1.089, 0.078, True) == (1.0, 1.0)
    assert clipped_interval(-0.2, 0.078, True) == (0.0, 0.0)
    assert clipped_interval(0.95, 0.078, True) == pytest.approx((0.872, 1.0))
    assert clipped_interval(1.089, 0.078, False) == pytest.approx((1.011, 1.167))
    p = get_predictor("tiny-graph")
    space = WeightSpace.from_module(small_cnn(channels=(4, 4)))
    for raw in (-0.3, -0.05, 0.5, 1.05, 1.3):
        pr = make_prediction("x", p, space, raw, [])
        assert pr.interval is not None
        lo, hi = pr.interval
        assert 0.0 <= lo <= pr.predicted_test_accuracy <= hi <= 1.0, (raw, pr.interval)


def test_module_without_input_shape_traced_at_training_shape(shipped_dir: tuple[Path, Path]) -> None:
    from torch import nn

    from wsl.predict import predict
    from wsl.predict.family import check_family
    from wsl.predict.shapes import candidate_shapes, training_shapes
    from wsl.space import WeightSpace

    cnn = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    pr = predict(cnn)
    assert not [w for w in pr.warnings if "shape" in w], pr.warnings  # was traced at a guessed 32x32
    assert predict(cnn, "tiny-graph").raw_prediction == pr.raw_prediction
    cfg = {"input": {"probes": {"input_shape": [1, 8, 8]}}, "family": {"input_shapes": [[1, 8, 8], [64]]}}
    assert training_shapes(cfg) == [(1, 8, 8), (64,)]
    assert candidate_shapes([cfg]) == [(1, 8, 8), (64,)]
    mlp = WeightSpace.from_module(nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)))
    fam = {"input_shapes": [[1, 8, 8]], "activations": ["relu"], "edge_kinds": ["linear"], "node_slots": ["bias"]}
    assert check_family(mlp, fam) == ([], [])  # flattened 8x8 images: no warning
    odd = WeightSpace.from_module(nn.Sequential(nn.Linear(48, 8), nn.ReLU(), nn.Linear(8, 10)))
    assert check_family(odd, fam)[1] == ["the network was traced on inputs of shape [[48]], not the training "
                                         "family's [[1, 8, 8]] (or those flattened); pass the shape it really takes "
                                         "(CLI: --input-shape)"]


def test_no_predictor_for_bare_state_dict(shipped_dir: tuple[Path, Path]) -> None:
    from wsl.predict import predict

    with pytest.raises(PredictionError, match="needs an architecture"):
        predict({"w": torch.zeros(2, 2)})
    assert np.isfinite(predict(torch.nn.Sequential(torch.nn.Linear(64, 10))).predicted_test_accuracy)


class _NamedCNN(torch.nn.Module):
    """The digits-cnn-gs architecture written with named layers (``conv1.weight`` instead of ``0.weight``)."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        from wsl.archs.simple import GlobalAvgPool

        nn = torch.nn
        self.conv1, self.conv2 = nn.Conv2d(1, 16, kernel, 2, kernel // 2), nn.Conv2d(16, 16, 3, 2, 1)
        self.conv3, self.pool, self.fc = nn.Conv2d(16, 16, 3, 2, 1), GlobalAvgPool(), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv3(torch.relu(self.conv2(torch.relu(self.conv1(x))))))
        return self.fc(self.pool(x))  # type: ignore[no-any-return]


def test_dense_predictor_matches_tensors_by_structure_not_name() -> None:
    from wsl.archs import small_cnn
    from wsl.predict import predict

    gs = str(REPO / "models" / "digits-cnn-gs")
    torch.manual_seed(0)
    ref = small_cnn(channels=(16, 16, 16))
    named = _NamedCNN()
    named.load_state_dict(dict(zip(named.state_dict(), ref.state_dict().values())))
    want, got = predict(ref, gs), predict(named, gs)
    assert want.renamed_tensors is None and got.raw_prediction == pytest.approx(want.raw_prediction, abs=1e-6)
    assert got.renamed_tensors == {"conv1.weight": "0.weight", "conv1.bias": "0.bias", "conv2.weight": "3.weight",
                                   "conv2.bias": "3.bias", "conv3.weight": "6.weight", "conv3.bias": "6.bias",
                                   "fc.weight": "10.weight", "fc.bias": "10.bias"}
    assert got.to_json()["renamed_tensors"] == got.renamed_tensors
    with pytest.raises(PredictionError, match="same tensors in the same order with the same shapes"):
        predict(_NamedCNN(kernel=5), gs)
