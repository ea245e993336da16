"""How long one edit of one INR takes on CPU (one thread): each trained editing meta-model vs. fitting the edit.

For every editing run found under ``--runs`` (by default the editing table's seed-0 runs of one edit),
this times ``INRModel.edit_module`` on single test INRs of digits-siren -- the whole ``wsl edit`` path
after loading: weights -> normalised input -> meta-model -> update -> new module -- as the median over
``--reps`` different INRs (after warm-up), next to the baseline measured in the same process: the
gradient-descent edit of one INR (:func:`wsl.tasks.inr_editing.fit_to_targets`, 100 Adam steps on its
own weights). Prints milliseconds, the ratio baseline / model, and whether the model stays under 20 ms.
A benchmark, not a test: timings depend on the machine and its load.

    python benchmarks/inr_editing.py --edits dilate --seeds 0     # makes the runs (or reuse the table's)
    python benchmarks/inr_edit_speed.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    import numpy as np
    import torch

    from wsl.tasks.inr import Renderer, zoo_shape
    from wsl.tasks.inr_edits import apply_edit
    from wsl.tasks.inr_editing import fit_to_targets
    from wsl.train.inr_editor import load_inr_model
    from wsl.zoo import load_zoo

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default=str(REPO / "runs" / "inr_editing" / "dilate"))
    p.add_argument("--seed", type=int, default=0, help="which seed's run of each model")
    p.add_argument("--zoo", default=str(REPO / "zoos-out" / "digits-siren"))
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--gd-steps", type=int, default=100)
    p.add_argument("--limit-ms", type=float, default=20.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    runs = sorted(d for d in Path(args.runs).glob(f"*/seed{args.seed}") if (d / "inr_model").is_dir())
    if not runs:
        print(f"no editing runs under {args.runs}/*/seed{args.seed}: run benchmarks/inr_editing.py first")
        return 2
    zoo = load_zoo(args.zoo)
    test = zoo.split("test").latest()
    idx = np.random.default_rng(0).choice(len(test), args.reps + 3, replace=False)
    modules = [test[int(i)].module() for i in idx]
    shape = zoo_shape(zoo)
    rend = Renderer(zoo.architectures[test[0].arch_id]["arch"], shape)

    def gd_once(i: int) -> float:
        raw = test[[int(idx[i])]].stacked()
        target = apply_edit("dilate", rend(raw).detach())
        t0 = time.perf_counter()
        fit_to_targets(rend, raw, target, steps=args.gd_steps)
        return (time.perf_counter() - t0) * 1000

    for i in range(3):
        gd_once(i)
    gd_ms = statistics.median(gd_once(3 + i) for i in range(min(args.reps, 10)))
    print(f"digits-siren INRs ({test[0].space.num_parameters} parameters), one thread, median over "
          f"{args.reps} single-INR edits\n")
    print("| editing model | ms per edit (one INR) | baseline: GD fit, ms | ratio (baseline / model) | < "
          f"{args.limit_ms:g} ms |")
    print("|---|---|---|---|---|")
    for run in runs:
        editor = load_inr_model(run)
        for m in modules[:3]:
            editor.edit_module(m)
        times = []
        for m in modules[3:]:
            t0 = time.perf_counter()
            editor.edit_module(m)
            times.append((time.perf_counter() - t0) * 1000)
        ms = statistics.median(times)
        name = editor.config["model"]["name"]
        print(f"| {name} ({editor.edit_name}) | {ms:.2f} | {gd_ms:.1f} | {gd_ms / ms:.0f}x | "
              f"{'yes' if ms < args.limit_ms else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
