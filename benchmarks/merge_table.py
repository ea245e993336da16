"""Merge accuracy on the 8x8 digits: each merge method on groups of 2, 4 and 8 small CNNs.

Two settings, each with 8 CNNs (``3 x Conv(64, 3x3, stride 2)``, global
average pool, linear; no BatchNorm, no dropout):

* **from scratch**: trained independently (different seeds), Adam, 20 epochs;
* **fine-tuned**: one base network trained for 20 epochs, then 8 copies
  fine-tuned for 5 epochs, each on a different random half of the training
  set (different seeds).

For each group size ``k`` (the first ``k`` networks) the table gives the test
accuracy of every merge method, next to the mean accuracy of the ``k``
networks themselves. Methods that need a base (task arithmetic, TIES, DARE)
are run in the fine-tuned setting only. ``slerp`` merges pairs only.

    python benchmarks/merge_table.py          # writes benchmarks/results/merge_table.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsl.align.merge import make_method
from wsl.archs import REGISTRY
from wsl.space import WeightSpace
from wsl.zoo.data import load_dataset

WIDTH = 64
METHODS = {"mean": {}, "aligned_mean": {}, "barycentre": {}, "slerp": {}, "task_arithmetic": {"scale": 1.0},
           "ties": {"density": 0.3, "scale": 1.0}, "dare": {"drop": 0.5, "scale": 1.0, "seed": 0}}
NEEDS_BASE = {"task_arithmetic", "ties", "dare"}


def make_net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return REGISTRY["small_cnn"](channels=[WIDTH] * 3)


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0], generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def accuracy(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def networks(xtr: torch.Tensor, ytr: torch.Tensor, n: int = 8, first_seed: int = 0
             ) -> tuple[list[torch.nn.Module], torch.nn.Module, list[torch.nn.Module]]:
    """The two settings: ``n`` networks from scratch (seeds ``first_seed + i``), the base, ``n`` fine-tuned copies.

    With the defaults these are the 17 networks of the table; other seeds give
    more networks of the same two kinds (the base is always seed 100).
    """
    scratch = [train(make_net(s), xtr, ytr, 20, s) for s in range(first_seed, first_seed + n)]
    base = train(make_net(100), xtr, ytr, 20, 100)
    tuned = []
    for s in range(first_seed, first_seed + n):
        half = torch.randperm(xtr.shape[0], generator=torch.Generator().manual_seed(200 + s))[: xtr.shape[0] // 2]
        tuned.append(train(copy.deepcopy(base), xtr[half], ytr[half], 5, 200 + s))
    return scratch, base, tuned


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/merge_table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    data = load_dataset("digits")
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    t0 = time.time()
    scratch, base, tuned = networks(xtr, ytr)
    print(f"trained 17 networks in {time.time() - t0:.0f} s", flush=True)
    space = WeightSpace.from_module(base)
    template = copy.deepcopy(base)
    results: dict[str, Any] = {"base_accuracy": accuracy(base, xte, yte)}
    for setting, nets in (("from scratch", scratch), ("fine-tuned", tuned)):
        rows = {}
        for k in (2, 4, 8):
            group = nets[:k]
            sds = [n.state_dict() for n in group]
            row = {"networks": statistics.mean(accuracy(n, xte, yte) for n in group)}
            for name, params in METHODS.items():
                if (name in NEEDS_BASE and setting == "from scratch") or (name == "slerp" and k != 2):
                    continue
                merged = make_method(name, params).merge(sds, base.state_dict() if name in NEEDS_BASE else None,
                                                         space)
                template.load_state_dict(merged)
                row[name] = accuracy(template, xte, yte)
            rows[k] = row
            print(setting, k, {m: round(v, 3) for m, v in row.items()}, flush=True)
        results[setting] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    cols = ["networks"] + list(METHODS)
    lines = ["| setting | k | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for setting in ("from scratch", "fine-tuned"):
        for k, row in results[setting].items():
            cells = [f"{100 * row[c]:.1f}" if c in row else "—" for c in cols]
            lines.append(f"| {setting} | {k} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + f"\n\nBase network of the fine-tuned setting: {100 * results['base_accuracy']:.1f}%.\n"
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
