"""Time to generate a whole network with NeuMeta: one batched call vs a per-tensor loop.

    OMP_NUM_THREADS=1 python benchmarks/hyper_speed.py [RUN_DIR]

Without RUN_DIR an untrained NeuMeta (default model config) on the digits small CNN
is timed (speed does not depend on the weights). Median of 20 calls after 3 warm-ups.
Training throughput: steps/s of the NeuMeta fit (digits, batch 128, default recipe) over
30 steps after 5 warm-up steps, with and without distillation (``kd_weight``).
Writes benchmarks/results/hyper_speed.json and prints the batched / per-tensor ratio.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from wsl.archs import small_cnn
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig


def _median_ms(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


@torch.no_grad()
def per_tensor(hyper: NeuMeta, ratio: float) -> dict[str, torch.Tensor]:
    """Baseline: one hypernetwork call per tensor."""
    c = hyper.coords(ratio)
    out = {}
    for k, lay in enumerate(c.layouts):
        a, b = c.offsets[k], c.offsets[k + 1]
        out[lay.name] = hyper(c.tensor[a:b], c.cont[a:b])[:, :lay.taps].reshape(lay.shape)
    return out


def training_throughput(hyper: NeuMeta) -> dict[str, float]:
    """Steps per second of :func:`train_neumeta` on digits (the weights of a copy are changed, not ``hyper``'s)."""
    import copy

    from wsl.hyper.train import HyperTrainConfig, train_neumeta
    from wsl.zoo.data import load_dataset

    data = load_dataset("digits")
    if hyper.family.name != "small_cnn":
        return {}
    base = {k: v for k, v in hyper.family.build(1.0).state_dict().items()}
    out = {}
    for label, kd in (("steps_per_s", 0.0), ("steps_per_s_kd", 1.0)):
        h = copy.deepcopy(hyper)
        cfg = HyperTrainConfig(steps=35, kd_weight=kd)
        stamps = []
        train_neumeta(h, base, data.x_train, data.y_train, cfg, progress=lambda s, _: stamps.append(time.perf_counter()))
        out[label] = (len(stamps) - 6) / (stamps[-1] - stamps[5])
    return out


def main() -> None:
    torch.set_num_threads(1)
    if len(sys.argv) > 1:
        from wsl.hyper.run import load_hyper
        hyper = load_hyper(sys.argv[1])
    else:
        base = small_cnn()
        hyper = NeuMeta(NeuMetaConfig(arch=base.wsl_arch), base.state_dict()).eval()
    res = {"arch": hyper.family.name}
    for r in (0.5, 1.0):
        hyper.coords(r)
        with torch.no_grad():
            res[f"batched_ms_{r}"] = _median_ms(lambda: hyper.generate(r))
        res[f"per_tensor_ms_{r}"] = _median_ms(lambda: per_tensor(hyper, r))
        res[f"sample_module_ms_{r}"] = _median_ms(lambda: hyper.sample(r))
        res[f"rows_{r}"] = hyper.coords(r).offsets[-1]
        res[f"speedup_vs_per_tensor_{r}"] = res[f"per_tensor_ms_{r}"] / res[f"batched_ms_{r}"]
    res.update(training_throughput(hyper))
    out = Path("benchmarks/results")
    out.mkdir(parents=True, exist_ok=True)
    (out / "hyper_speed.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
