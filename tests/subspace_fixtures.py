"""Tiny zoos and checkpoint folders for the subspace tests (planted low-rank structure, seeded)."""

from __future__ import annotations

from pathlib import Path

import torch

from wsl.archs import REGISTRY
from wsl.io import save_state_dict
from wsl.zoo.writer import ZooWriter

DATASET = {"name": "toy", "input_shape": [6], "num_classes": 3}
SIZES = [6, 10, 8, 3]


def planted_state_dicts(n: int, rank: int = 2, noise: float = 0.01, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` MLP state_dicts whose every tensor is ``mean + (rank directions) + small noise``."""
    gen = torch.Generator().manual_seed(seed)
    base = REGISTRY["mlp"](sizes=SIZES).state_dict()
    dirs = {k: torch.randn(rank, *v.shape, generator=gen) for k, v in base.items()}
    means = {k: torch.randn(v.shape, generator=gen) for k, v in base.items()}
    out = []
    for _ in range(n):
        c = torch.randn(rank, generator=gen) * torch.tensor([3.0 ** -i for i in range(rank)])
        out.append({k: means[k] + torch.einsum("r,r...->...", c, dirs[k]) + noise * torch.randn(v.shape, generator=gen)
                    for k, v in base.items()})
    return out


def write_zoo(root: Path, n: int = 12, seed: int = 0, with_init: bool = True) -> Path:
    """A zoo of ``n`` MLPs (rows at epoch 1 with planted structure; epoch-0 rows of iid noise if ``with_init``)."""
    sds = planted_state_dicts(n, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    rows, stacked = [], []
    for m, sd in enumerate(sds):
        if with_init:
            stacked.append({k: 0.3 * torch.randn(v.shape, generator=gen) for k, v in sd.items()})
            rows.append({"model_id": f"m{m}", "epoch": 0, "seed": m, "test_accuracy": 0.3})
        stacked.append(sd)
        rows.append({"model_id": f"m{m}", "epoch": 1, "seed": m, "test_accuracy": 0.5 + 0.01 * m})
    with ZooWriter(root, name="toy", dataset=DATASET, recipe={"note": "test"}) as w:
        aid = w.add_architecture(REGISTRY["mlp"](sizes=SIZES))
        w.append(aid, {k: torch.stack([sd[k] for sd in stacked]) for k in stacked[0]}, rows, chunk="c0")
    return root


def write_checkpoints(root: Path, n: int = 8, seed: int = 0) -> list[Path]:
    """``n`` safetensors checkpoints with planted structure in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, sd in enumerate(planted_state_dicts(n, seed=seed)):
        p = root / f"model_{i:03d}.safetensors"
        save_state_dict(sd, p)
        paths.append(p)
    return paths
