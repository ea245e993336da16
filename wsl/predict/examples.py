"""Bundled example checkpoints for ``wsl demo`` (held-out test models of the zoos).

Usage::

    python -m wsl.predict.examples --zoo zoos-out/digits-cnn-gs --count 4 -o models/examples
    python -m wsl.predict.examples --zoo zoos-out/digits-cnn-wild --count 4 -o models/examples

Picks models of the zoo's *test* split spread over the accuracy range, saves
each as ``.safetensors`` carrying its architecture (``wsl_arch`` metadata)
and records the true test accuracy in ``examples.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wsl.io import atomic_open, save_state_dict


def load_examples(directory: Path) -> list[dict[str, Any]]:
    f = directory / "examples.json"
    if not f.is_file():
        return []
    data = json.loads(f.read_text(encoding="utf-8"))
    return list(data.get("examples", []))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="write bundled example checkpoints")
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    from wsl.zoo import load_zoo

    zoo = load_zoo(a.zoo)
    test = zoo.latest().split("test")
    acc = test.column("test_accuracy").astype(float)
    order = np.argsort(acc)
    picks = [int(order[int(round(q * (len(order) - 1)))]) for q in np.linspace(0.15, 1.0, a.count)]
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    examples = [e for e in load_examples(out) if e.get("zoo") != zoo.name]
    for i in picks:
        m = test[i]
        row = m.metadata
        fname = f"{zoo.name}-{row['model_id']}.safetensors".replace("/", "_")
        desc = zoo.architectures[row["arch"]]["arch"] if hasattr(zoo, "architectures") else m.module().wsl_arch
        save_state_dict(m.state_dict(), out / fname, metadata={"wsl_arch": json.dumps(desc)})
        examples.append({"file": fname, "zoo": zoo.name, "model_id": row["model_id"],
                         "test_accuracy": row["test_accuracy"], "train_accuracy": row.get("train_accuracy"),
                         "hparams": row.get("hparams", {}), "num_parameters": m.space.num_parameters})
    with atomic_open(out / "examples.json", "w", encoding="utf-8") as fh:
        json.dump({"about": "held-out test-split models of the wsl zoos, for `wsl demo`", "examples": examples},
                  fh, indent=1)
    print(f"wrote {len(picks)} examples from {zoo.name} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
