"""The INR commands end to end on a tiny zoo built here: wsl train (INR tasks, baselines), wsl edit, wsl render."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inr_fixtures import make_inr_zoo

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "inr"


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_inr_zoo(tmp_path_factory.mktemp("inr") / "digits", "digits", images=30, steps=20,
                        seed=int(np.random.default_rng().integers(1000)))


def _train(config: str, zoo: Path, out: Path, *overrides: str) -> dict:
    from wsl.cli import main

    rc = main(["train", str(CONFIGS / config), f"data.zoo={zoo}", "train.progress=false", "-o", str(out), *overrides])
    assert rc == 0
    return json.loads((out / "metrics.json").read_text())


def test_edit_command_writes_an_inr_that_carries_its_architecture(zoo: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main
    from wsl.io import load_model
    from wsl.tasks.inr import render
    from wsl.train.inr_editor import load_inr_model
    from wsl.zoo import load_zoo

    run = tmp_path / "run"
    m = _train("digits_edit_np.yaml", zoo, run, "train.epochs=1", "model.channels=[8]", "train.batch_size=16",
               "inr.edit=contrast")
    assert m["edit"] == "contrast" and "contrast" in capsys.readouterr().out
    row = int(np.random.default_rng().integers(len(load_zoo(zoo))))
    out = tmp_path / "edited.safetensors"
    assert main(["edit", f"{zoo}:{row}", "--edit", "contrast", "--model", str(run), "-o", str(out),
                 "--png", str(tmp_path / "edit.png"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shape"] == [16, 16] and (tmp_path / "edit.png").stat().st_size > 1000
    module, _ = load_model(out)  # no --arch: the file carries it
    expected = load_inr_model(run).edit_module(load_zoo(zoo)[row].module())
    assert torch.allclose(render(module, (16, 16)), render(expected, (16, 16)), atol=1e-6)
    assert main(["render", str(out), "-o", str(tmp_path / "edited.png")]) == 0  # the grid shape is recorded
    assert main(["edit", f"{zoo}:{row}", "--edit", "dilate", "--model", str(run), "-o", str(out)]) == 2
    assert "trained for 'contrast'" in capsys.readouterr().err
    assert main(["edit", f"{zoo}:{row}", "--edit", "contrast", "--model", str(tmp_path), "-o", str(out)]) == 2


def test_train_runs_the_inr_baselines(zoo: Path, tmp_path: Path) -> None:
    ident = _train("digits_edit_identity.yaml", zoo, tmp_path / "ident", "inr.edit=gaussian_blur")
    assert ident["test"]["mse"] == ident["test"]["identity_mse"] > 0
    gd = _train("digits_edit_gd_fit.yaml", zoo, tmp_path / "gd", "inr.edit=gaussian_blur", "model.steps=10")
    assert gd["test"]["mse"] < ident["test"]["mse"] and gd["seconds_per_inr"] > 0
    gbt = _train("digits_cls_statnn_gbt.yaml", zoo, tmp_path / "gbt")
    assert 0.0 <= gbt["test"]["accuracy"] <= 1.0 and gbt["num_features"] == 6 * 7
    from wsl.cli import main

    assert main(["train", str(CONFIGS / "digits_edit_gd_fit.yaml"), f"data.zoo={zoo}", "model.step=3",
                 "-o", str(tmp_path / "bad")]) == 2
    assert main(["train", str(CONFIGS / "digits_edit_identity.yaml"), f"data.zoo={zoo}", "model.name=statnn_linear",
                 "-o", str(tmp_path / "bad")]) == 2


def test_classification_run_and_its_inr_model(zoo: Path, tmp_path: Path) -> None:
    m = _train("digits_cls_hnp.yaml", zoo, tmp_path / "hnp", "train.epochs=1", "model.channels=[8]",
               "model.head_hidden=[16]", "train.batch_size=16")
    assert m["task"] == "inr_classification" and m["models_per_s"] > 0
    cfg = json.loads((tmp_path / "hnp" / "inr_model" / "config.json").read_text())
    assert cfg["format"] == "wsl.inr_model/1" and cfg["input"]["out_features"] == 10 and cfg["shape"] == [16, 16]
    from wsl.cli import main

    out = tmp_path / "x.safetensors"
    assert main(["edit", f"{zoo}:0", "--edit", "dilate", "--model", str(tmp_path / "hnp"), "-o", str(out)]) == 2
