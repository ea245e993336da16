"""Library code leaves torch's process-wide thread count alone; entry points set it.

Each test first sets an unusual thread count (3), so a library call that set
its own (1, or the machine default) and forgot to restore it, or that applied
``train.threads``, is caught.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from test_tasks import make_tiny_zoo

REPO = Path(__file__).resolve().parents[1]
MARK = 3  # neither 1 (what the entry points choose) nor a likely machine default

#: The only functions allowed to call torch.set_num_threads: process entry points.
ENTRY_POINTS = {
    ("wsl/cli/train_cmd.py", "run_train"),  # `wsl train` (applies the config's train.threads)
    ("wsl/cli/predict_cmd.py", "run"),  # `wsl predict`
    ("wsl/cli/demo_cmd.py", "run_demo"),  # `wsl demo`
    ("wsl/cli/inr_cmd.py", "run_render"),  # `wsl render`
    ("wsl/cli/inr_cmd.py", "run_edit"),  # `wsl edit` (one thread: a single small edit)
    ("wsl/zoo/generate.py", "run_generate"),  # `wsl zoo generate` (registered from wsl.zoo.generate)
    ("wsl/zoo/generate.py", "_init_worker"),  # a zoo-generation worker process's start-up
    ("wsl/serve/validate.py", "init_worker"),  # a `wsl serve` worker process's start-up
    ("wsl/predict/ship.py", "main"),  # `python -m wsl.predict.ship`
}


def _callers_of_set_num_threads() -> set[tuple[str, str]]:
    """(file, enclosing function) of every ``set_num_threads(...)`` call in the wsl package."""
    found = set()
    for path in sorted((REPO / "wsl").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                        == "set_num_threads":
                    found.add((path.relative_to(REPO).as_posix(), fn.name))
        module_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                   ast.ClassDef))]
        for stmt in module_level:
            if "set_num_threads" in ast.dump(stmt):
                found.add((path.relative_to(REPO).as_posix(), "<module>"))
    return found


def test_only_entry_points_set_the_thread_count() -> None:
    found = _callers_of_set_num_threads()
    assert found <= ENTRY_POINTS, f"set_num_threads outside an entry point: {sorted(found - ENTRY_POINTS)}"
    assert ("wsl/cli/train_cmd.py", "run_train") in found  # the scan does see calls


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_zoo(tmp_path_factory.mktemp("threads") / "zoo", n_models=20, mixed=True)


def _config(zoo: Path, *extra: str) -> object:
    from wsl.train.config import load_config

    return load_config(REPO / "configs" / "generalization" / "tiny.yaml",
                       [f"data.zoo={zoo}", "data.max_train=null", "model.hidden=8", "train.epochs=1",
                        "train.batch_size=16", "train.progress=false", "train.threads=1", *extra])


def test_trainer_inversion_and_predict_leave_threads_alone(tiny_zoo: Path, tmp_path: Path) -> None:
    """A Trainer run (with train.threads=1 and inverted probes), wsl.predict and invert_probes."""
    import wsl
    from wsl.tasks.inversion import invert_probes
    from wsl.tasks.probes import ProbeNets
    from wsl.train.loop import Trainer
    from wsl.train.predictor import load_predictor

    torch.set_num_threads(MARK)
    cfg = _config(tiny_zoo, "probes.num=2", "probes.invert=2", "probes.invert_steps=2", "probes.embed=4",
                  "probes.hidden=8")
    Trainer(cfg, tmp_path / "run").fit()  # type: ignore[arg-type]
    assert torch.get_num_threads() == MARK
    p = load_predictor(tmp_path / "run" / "predictor")
    test = wsl.load_zoo(tiny_zoo).latest().split("test")
    wsl.predict(test[0].module(), predictor=p)
    p.predict_zoo(test)
    assert torch.get_num_threads() == MARK
    nets = ProbeNets.from_view(wsl.load_zoo(tiny_zoo).latest().split("train"), shape=[1, 8, 8])
    invert_probes(nets, 3, [1, 8, 8], steps=2)
    assert torch.get_num_threads() == MARK


def test_zoo_generation_in_process_leaves_threads_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsl.zoo.generate import generate

    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path / "cache"))
    torch.set_num_threads(MARK)
    generate(REPO / "zoos" / "digits-cnn-gs.yaml", tmp_path / "z", num_models=2, epochs=1, progress=False)
    assert torch.get_num_threads() == MARK


def test_wsl_train_applies_train_threads(tiny_zoo: Path, tmp_path: Path) -> None:
    """The config key still works: `wsl train` (an entry point) applies it to its process."""
    import yaml

    from wsl.cli import main

    cfg = _config(tiny_zoo, "train.threads=2", f"output={tmp_path / 'run'}")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))  # type: ignore[attr-defined]
    torch.set_num_threads(MARK)
    assert main(["train", str(path)]) == 0
    assert torch.get_num_threads() == 2
