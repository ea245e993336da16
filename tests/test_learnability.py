"""NP, HNP and NFT learn generalization from weights: `wsl train` on a tiny generated zoo beats the same run
on targets shuffled across the training networks by a clear margin on the held-out test split.

The zoo: 96 small CNNs trained for 2 epochs by the vectorized generator, with learning rates and init scales
spread so that test accuracy ranges from chance to ~0.75. The control zoo holds the same weights, with the
training split's ``test_accuracy`` permuted across networks (val and test keep the true targets).

The criterion is held-out R^2, not Kendall tau: at this size weight scale alone ranks these networks, and
the best-by-val-tau checkpoint of a control run often ranks the test split well (tau up to ~0.7) without
having learned any mapping from weights to accuracy; its R^2 stays at or below 0. A model that ignores its
input fails the criterion (the negative control below).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import yaml
from torch import nn

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

RECIPE = {
    "name": "learnability", "version": "1.0", "description": "tiny CNN zoo for tests/test_learnability.py",
    "task": "classification", "dataset": {"name": "digits"},
    "architecture": {"type": "small_cnn", "channels": [8, 8], "kernel_size": 3, "stride": 2},
    "hparams": {"activation": ["relu", "tanh"], "optimizer": ["sgd", "adam"], "lr": {"log_uniform": [3e-3, 0.1]},
                "weight_decay": {"log_uniform": [1e-8, 1e-3]}, "dropout": {"uniform": [0.0, 0.3]},
                "w_init": ["normal", "uniform"], "init_std": {"log_uniform": [1e-2, 0.3]},
                "train_fraction": [0.25, 0.5]},
    "training": {"batch_size": 32, "epochs": 2, "checkpoints": [2]},
    "generation": {"num_models": 96, "models_per_chunk": 96, "seed": 0},
    "splits": {"train": 0.5, "val": 0.2, "test": 0.3, "seed": 0},
}
COMMON = ["data.train_checkpoints=same", "train.epochs=20", "train.batch_size=16", "train.patience=0",
          "train.progress=false", "train.device=cpu", "train.threads=1", "optim.lr=1e-2"]
MODELS = {
    "np": ["model.channels=[8,8]", "model.head_hidden=[32]"],
    "hnp": ["model.channels=[8,8]", "model.head_hidden=[32]"],
    "nft": ["model.channels=8", "model.depth=1", "model.heads=2", "model.head_hidden=[32]"],
}
MIN_R2, MIN_MARGIN = 0.5, 0.5


class IgnoresInput(nn.Module):
    """Negative control: a prediction that does not depend on the network it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, feats: Any) -> torch.Tensor:
        n = next(iter(feats.blocks.values())).shape[0]
        return self.net(torch.ones(n, 1))


def ignores_input(info: Any) -> nn.Module:
    return IgnoresInput()


ignores_input.input_kind = "features"  # type: ignore[attr-defined]


def shuffled_copy(src: Path, dst: Path, seed: int = 0) -> Path:
    """``src`` with ``test_accuracy`` permuted across the training split's networks (one checkpoint each)."""
    from wsl.zoo import ZooWriter, load_zoo
    from wsl.zoo.format import WRITER_FIELDS

    zoo = load_zoo(src)
    rows = [dict(r) for r in zoo.rows]
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    assert len({rows[i]["model_id"] for i in train}) == len(train)  # one row per network
    values = [rows[i]["test_accuracy"] for i in train]
    for i, j in zip(train, np.random.default_rng(seed).permutation(len(train))):
        rows[i]["test_accuracy"] = values[j]
    card = zoo.card
    with ZooWriter(dst, name=card["name"], dataset=card["dataset"], recipe=card["recipe"],
                   splits=card["splits"]) as w:
        for aid, entry in card["architectures"].items():
            pos = np.array([i for i, r in enumerate(rows) if r["arch"] == aid])
            w.append(w.add_architecture(entry["arch"]), zoo.stacked(pos),
                     [{k: v for k, v in rows[i].items() if k not in WRITER_FIELDS} for i in pos])
    return dst


@pytest.fixture(scope="module")
def zoos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The generated zoo and its shuffled-target control (generated on one thread, as `wsl zoo generate`)."""
    from wsl.zoo.generate import generate

    root = tmp_path_factory.mktemp("learnability")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(1)
        try:
            generate(root / "recipe.yaml", root / "zoo", progress=False)
        finally:
            torch.set_num_threads(threads)
    yield {"real": root / "zoo", "shuffled": shuffled_copy(root / "zoo", root / "shuffled")}


def wsl_train(config: str, zoo: Path, out: Path, *overrides: str) -> dict[str, Any]:
    """`wsl train CONFIG data.zoo=ZOO ... --output OUT` in this process; its metrics.json."""
    from wsl.cli import main

    args = ["train", str(config), f"data.zoo={zoo}", *COMMON, *overrides, "--output", str(out)]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def learns(real: dict[str, Any], shuffled: dict[str, Any]) -> bool:
    r2, control = real["test"]["r2"], shuffled["test"]["r2"]
    return r2 >= MIN_R2 and r2 - control >= MIN_MARGIN


@pytest.mark.parametrize("name", list(MODELS))
def test_meta_model_beats_shuffled_targets(zoos: dict[str, Path], tmp_path: Path, name: str) -> None:
    import wsl

    acc = wsl.load_zoo(zoos["real"]).split("test").column("test_accuracy")
    assert acc.max() - acc.min() > 0.4  # a spread worth predicting
    config = REPO / "configs" / "generalization" / f"gs_{name}.yaml"
    real = wsl_train(str(config), zoos["real"], tmp_path / "real", *MODELS[name])
    control = wsl_train(str(config), zoos["shuffled"], tmp_path / "shuffled", *MODELS[name])
    assert real["test"]["n"] == control["test"]["n"] >= 20
    assert learns(real, control), (f"{name}: test R^2 {real['test']['r2']:.3f} (tau {real['test']['tau']:.3f}), "
                                   f"shuffled {control['test']['r2']:.3f} (tau {control['test']['tau']:.3f})")
    assert real["test"]["tau"] >= 0.4


def test_a_model_that_ignores_its_input_fails_the_criterion(zoos: dict[str, Path], tmp_path: Path) -> None:
    config = REPO / "configs" / "generalization" / "gs_np.yaml"
    model = ["model={}", f"model.name={HERE}:ignores_input"]
    real = wsl_train(str(config), zoos["real"], tmp_path / "real", *model)
    control = wsl_train(str(config), zoos["shuffled"], tmp_path / "shuffled", *model)
    assert not learns(real, control) and real["test"]["r2"] < MIN_R2
