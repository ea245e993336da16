"""``wsl train`` for every task: pick the Trainer of ``cfg.task`` and run it.

``generalization`` -> :class:`wsl.train.loop.Trainer`; ``inr_classification`` /
``inr_editing`` -> :mod:`wsl.train.inr_trainers`. (The INR baselines that need
no training loop are run by the CLI, :mod:`wsl.tasks.inr_baselines`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsl.errors import ConfigError
from wsl.train import distributed as D
from wsl.train.config import Config
from wsl.train.loop import Trainer

__all__ = ["train", "trainer_class"]


def trainer_class(task: str) -> type[Trainer]:
    """The Trainer of a config's ``task``."""
    if task == "generalization":
        return Trainer
    from wsl.train.inr_trainers import TRAINERS

    if task not in TRAINERS:
        raise ConfigError(f"task {task!r} has no trainer; valid: generalization, {', '.join(TRAINERS)}")
    return TRAINERS[task]


def train(cfg: Config, output: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run one experiment with the Trainer of ``cfg.task``; cleans up the process group afterwards."""
    try:
        return trainer_class(cfg.task)(cfg, output, resume=resume).fit()
    finally:
        D.cleanup()
