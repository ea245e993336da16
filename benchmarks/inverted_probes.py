"""How much inverted probes alone tell about test accuracy (wsl.tasks.inversion), with a picture of them.

For each zoo: synthesize the probes exactly as a training config with
``probes: {invert: N}`` does (from the train split only), then score every
val/test network by one number without any learning -- the fraction of the
probes it assigns to their target class -- and report Kendall tau of that
score against true test accuracy. For comparison, in the same run, the same
score on the strokes the inversion starts from (their "target classes" are
arbitrary, so it should be near 0). Writes
``benchmarks/results/inverted_probes_<zoo>.png``.

    python benchmarks/inverted_probes.py                       # both zoos in zoos-out/
    python benchmarks/inverted_probes.py --zoos /path/to/zoo --num 256
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def agreement(view, x: torch.Tensor) -> torch.Tensor:
    """Fraction of probes each row of ``view`` assigns to class ``i mod C``."""
    from wsl.tasks.probes import probe_outputs

    out = probe_outputs(view, shape=x.shape[1:], inputs=x)
    return (out.argmax(-1) == torch.arange(len(x)) % out.shape[-1]).float().mean(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoos", default="zoos-out/digits-cnn-gs,zoos-out/digits-cnn-wild")
    ap.add_argument("--num", type=int, default=256)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tv", type=float, default=0.5)
    ap.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    import wsl
    from wsl.tasks.generalization import select_rows, target_values
    from wsl.tasks.inversion import probe_set
    from wsl.tasks.metrics import kendall_tau
    from wsl.tasks.probes import probe_inputs
    from wsl.train.plots import probe_grid

    print("| zoo | split | n | τ, agreement on inverted probes | τ, same score on the initial strokes | inversion time |")
    print("|---|---|---|---|---|---|")
    for path in a.zoos.split(","):
        zoo = wsl.load_zoo(path)
        t0 = time.perf_counter()
        x = probe_set(zoo, invert=a.num, invert_steps=a.steps, invert_tv=a.tv, progress=True)
        secs = time.perf_counter() - t0
        assert x is not None
        start = probe_inputs(list(x.shape[1:]), a.num, 0, "strokes")
        for split in ("val", "test"):
            view = select_rows(zoo, split, "last", "test_accuracy")
            y = target_values(view, "test_accuracy")
            print(f"| {zoo.name} | {split} | {len(view)} | {kendall_tau(agreement(view, x).numpy(), y):.3f} | "
                  f"{kendall_tau(agreement(view, start).numpy(), y):.3f} | {secs:.0f} s |", flush=True)
        out = Path(a.out_dir) / f"inverted_probes_{zoo.name}.png"
        probe_grid(x, out, title=f"{a.num} inverted probes of {zoo.name} (column: target class)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
