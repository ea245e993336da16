"""``wsl demo``: the main job on built-in defaults (see README)."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the built-in demo",
                       description="Run the main job on built-in defaults.")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)  # entry point: the numbers `wsl predict` prints for the same files
    if importlib.util.find_spec("wsl.predict") is not None:
        from wsl.predict.demo import run as run_prediction_demo

        return int(run_prediction_demo(fallback=symmetry_demo))
    return symmetry_demo()


def symmetry_demo() -> int:
    """The weight-space demo: the Small CNN Zoo architecture's symmetries, and a permutation that keeps its function."""
    import torch

    from wsl.archs.registry import REGISTRY
    from wsl.space import WeightSpace, random_permutation

    module = REGISTRY["small_cnn"]().eval()
    space = WeightSpace.from_module(module)
    print("Small CNN Zoo architecture (3 x conv 3x3/16/stride 2, global average pool, linear 16->10)\n")
    print(space.summary())
    perms = random_permutation(space, torch.Generator().manual_seed(0))
    other = REGISTRY["small_cnn"]().eval()
    other.load_state_dict(space.permute(module.state_dict(), perms))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        diff = (module(x) - other(x)).abs().max().item()
    print(f"\nrandom permutation of all hidden units: max output change {diff:.2e}")
    return 0
