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
    fam = cfg["family"]
    assert fam["input_sizes"] == [1, 64] and fam["output_sizes"] == [10] and fam["num_architectures"] == 3
    card = (models / "tiny-graph" / "README.md").read_text()
    assert "weight-space-learning" in card and "Kendall" in card and "Limits" in card


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

    with pytest.raises(PredictionError, match="input has"):
        predict(small_cnn(in_channels=3, channels=(4, 4)))
    with pytest.raises(PredictionError, match="output has"):
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
    assert "Kendall tau" in capsys.readouterr().out


def test_no_predictor_for_bare_state_dict(shipped_dir: tuple[Path, Path]) -> None:
    from wsl.predict import predict

    with pytest.raises(PredictionError, match="needs an architecture"):
        predict({"w": torch.zeros(2, 2)})
    assert np.isfinite(predict(torch.nn.Sequential(torch.nn.Linear(64, 10))).predicted_test_accuracy)
