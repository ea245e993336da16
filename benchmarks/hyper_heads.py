"""Digits ViT: NeuMeta samples vs head-aware L1 pruning of the base (no fine-tune), per width ratio.

    wsl hyper train configs/hyper/digits_vit.yaml -o RUN          # the NeuMeta fit (base trained first)
    OMP_NUM_THREADS=1 python benchmarks/hyper_heads.py RUN [RUN ...]

Reads each run's ``metrics.json`` (NeuMeta test accuracy per ratio), ``base.safetensors`` and
``config.json`` (``model.family_heads``: whole heads or units inside heads), prunes the base to the
same members with :func:`wsl.hyper.prune.prune` (whole heads by summed L1 score, or the best units
inside every head) and prints one markdown table per run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wsl.hyper.prune import prune
from wsl.hyper.train import accuracy
from wsl.io import load_model
from wsl.zoo.data import load_dataset


def table(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    heads = cfg["model"].get("family_heads", "count")
    data = load_dataset(cfg["dataset"])
    base, _ = load_model(run / "base.safetensors")
    base.eval()
    lines = [f"{run.name} (heads: {heads}; base {accuracy(base, data.x_test, data.y_test):.3f})", "",
             "| ratio | widths | NeuMeta | prune (no fine-tune) |", "|---|---|---|---|"]
    for r in cfg["eval_ratios"]:
        pruned = accuracy(prune(base, r, heads), data.x_test, data.y_test)
        lines.append(f"| {r} | {metrics['widths'][str(r)]} | {metrics['accuracy'][str(r)]:.3f} | {pruned:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    for run in ap.parse_args().runs:
        print(table(run) + "\n")


if __name__ == "__main__":
    main()
