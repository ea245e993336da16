"""GPU check: the main paths on CUDA against the CPU, with times and agreement.

Steps
  trace       WeightSpace.from_module of a small CNN, a tiny GPT-2 (and ResNet-18 unless --quick)
  graph       wsl.graph.build of 64 stacked small CNNs
  zoo         vectorized zoo generation: 64 digits-cnn-gs models, 1 epoch (8 with --quick)
  train-*     one NP / HNP / NG-GNN training step (AdamW, MSE) on that zoo, under bf16 autocast
  predict     wsl.predict of the bundled example checkpoints with the shipped predictors (one per
              predictor with --quick)

Each step runs on the CPU in float32 (the reference) and on the device (warmed up once, then timed).
Printed per step: CPU time, device time, their ratio, and the agreement of the results: the largest
``|device - cpu|`` over the step's result tensors divided by the largest ``|cpu|`` (for a trace: 0 when the
two symmetry specs are equal, inf otherwise). GPU kernels sum in other orders and AMP rounds to bfloat16,
so training steps and zoo generation agree to about 1e-2, the rest to float32 rounding.

Without a CUDA device the script says so and exits 0. ``--device cpu`` runs the CPU half (what the test
suite runs): every step once on the CPU, timed, without a comparison. (AMP is CUDA-only, as in ``wsl
train``: on a CPU, bf16 autocast of NP's training step fails inside oneDNN's convolution backward.)

Usage: ``python benchmarks/gpu_check.py [--device cuda|cuda:N|cpu] [--quick] [--threads N]``
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
Result = dict[str, Any]  # name -> tensor (compared numerically) or str (compared for equality)


def agreement(ref: Result, got: Result) -> float:
    """max |got - ref| / max |ref| over all float results; inf if anything else differs."""
    if ref.keys() != got.keys():
        return math.inf
    err, scale = 0.0, 0.0
    for k, a in ref.items():
        b = got[k]
        if not isinstance(a, torch.Tensor):
            if a != b:
                return math.inf
            continue
        b = b.detach().cpu()
        if a.shape != b.shape or (not a.is_floating_point() and not torch.equal(a, b)):
            return math.inf
        if a.is_floating_point() and a.numel():
            err = max(err, float((b.double() - a.double()).abs().max()))
            scale = max(scale, float(a.double().abs().max()))
    return err / scale if scale else err


def trace(dev: torch.device, amp: bool, ctx: dict[str, Any]) -> Result:
    from wsl.archs import GPT2Config, GPT2Model, example_input, resnet18, small_cnn
    from wsl.space import WeightSpace

    archs = {"small_cnn": small_cnn(), "gpt2": GPT2Model(GPT2Config(n_embd=16, n_head=2, n_layer=2, vocab_size=50,
                                                                   n_positions=16))}
    if not ctx["quick"]:
        archs["resnet18"] = resnet18(num_classes=10)
    out = {}
    for name, module in archs.items():
        x = example_input(module, generator=torch.Generator().manual_seed(0))
        out[name] = WeightSpace.from_module(module.to(dev), x.to(dev)).signature
    return out


def _small_cnn_stack(n: int) -> tuple[Any, dict[str, torch.Tensor]]:
    from wsl.archs import small_cnn
    from wsl.space import WeightSpace

    space = WeightSpace.from_module(small_cnn(), torch.randn(2, 1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    return space, {k: torch.randn((n, *s), generator=gen) for k, s in space.shapes.items()}


def graph(dev: torch.device, amp: bool, ctx: dict[str, Any]) -> Result:
    from wsl.graph import build

    space, stacked = ctx["stack"]
    g = build(space, {k: v.to(dev) for k, v in stacked.items()})
    return {"x": g.x, "edge_attr": g.edge_attr, "edge_index": g.edge_index}


def zoo(dev: torch.device, amp: bool, ctx: dict[str, Any]) -> Result:
    from wsl.zoo import load_zoo
    from wsl.zoo.generate import generate

    out = Path(ctx["tmp"]) / f"zoo-{dev.type}-{time.perf_counter_ns()}"
    generate(REPO / "zoos" / "digits-cnn-gs.yaml", out, num_models=ctx["models"], epochs=1, device=str(dev),
             models_per_chunk=ctx["models"], progress=False)
    ctx.setdefault("zoo", out)  # the CPU zoo feeds the training steps of both devices
    z = load_zoo(out).latest()
    return {"test_accuracy": torch.as_tensor(z.column("test_accuracy")), **z.stacked()}


def _train_step(kind: str) -> Callable[[torch.device, bool, dict[str, Any]], Result]:
    def step(dev: torch.device, amp: bool, ctx: dict[str, Any]) -> Result:
        from wsl.graph import WeightSpaceFeatures, build
        from wsl.nn import HNPNet, NGGNN, NPNet
        from wsl.zoo import load_zoo

        z = load_zoo(ctx["zoo"]).latest()
        space, stacked = z[0].space, {k: v.to(dev) for k, v in z.stacked().items()}
        y = torch.as_tensor(z.column("test_accuracy"), dtype=torch.float32, device=dev)
        y = (y - y.mean()) / y.std().clamp_min(1e-6)
        torch.manual_seed(0)
        if kind == "nggnn":
            model: torch.nn.Module = NGGNN(hidden=16, num_layers=2, head_hidden=16)
            x: Any = build(space, stacked)
        else:
            model = (NPNet if kind == "np" else HNPNet)(space, 1, (8, 8), head_hidden=(32,))
            x = WeightSpaceFeatures.from_state_dicts(space, stacked)
        model = model.to(dev)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(x).reshape(-1).float()
        loss = F.mse_loss(pred, y)
        loss.backward()
        opt.step()
        params = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        return {"loss": loss.detach().reshape(1), "prediction": pred.detach(), "parameters": params}
    return step


def predict(dev: torch.device, amp: bool, ctx: dict[str, Any]) -> Result:
    import wsl
    from wsl.predict.examples import load_examples
    from wsl.predict.shipped import models_dir
    from wsl.train.predictor import load_predictor

    root = models_dir()
    examples = load_examples(root / "examples") if root else []
    if not examples:
        return {}
    out = {}
    for zoo_name in sorted({e["zoo"] for e in examples}):
        p = load_predictor(root / zoo_name, device=dev)  # type: ignore[operator]
        files = [e["file"] for e in examples if e["zoo"] == zoo_name][:1 if ctx["quick"] else None]
        raw = [wsl.predict(root / "examples" / f, predictor=p).raw_prediction for f in files]  # type: ignore[operator]
        out[zoo_name] = torch.tensor(raw, dtype=torch.float64)
    return out


STEPS: list[tuple[str, Callable[[torch.device, bool, dict[str, Any]], Result], bool]] = [
    ("trace", trace, False), ("graph", graph, False), ("zoo", zoo, False),
    ("train-np", _train_step("np"), True), ("train-hnp", _train_step("hnp"), True),
    ("train-nggnn", _train_step("nggnn"), True), ("predict", predict, False),
]  # (name, function(device, amp, context), trains under AMP)


def timed(fn: Callable[[], Result], dev: torch.device) -> tuple[Result, float]:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return out, time.perf_counter() - t0


def run(device: str, quick: bool) -> list[dict[str, Any]]:
    """Every step on the CPU and on ``device``; one row per step (times in seconds, agreement)."""
    dev, cpu = torch.device(device), torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="wsl-gpu-check-") as tmp:
        ctx: dict[str, Any] = {"quick": quick, "tmp": tmp, "models": 8 if quick else 64,
                               "stack": _small_cnn_stack(64)}
        for name, fn, amp in STEPS:
            ref, t_cpu = timed(lambda: fn(cpu, False, ctx), cpu)
            row: dict[str, Any] = {"step": name, "cpu_s": t_cpu, "device_s": None, "agreement": None, "ref": ref}
            if dev.type != "cpu":
                fn(dev, amp, ctx)  # warm-up: CUDA context, kernels, cuDNN plans
                got, row["device_s"] = timed(lambda: fn(dev, amp, ctx), dev)
                row["agreement"] = agreement(ref, got)
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (the CPU half only)")
    ap.add_argument("--quick", action="store_true", help="8-model zoo, no ResNet-18 trace, one example per "
                    "shipped predictor")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (run with --device cpu for the CPU half)")
        return 0
    label = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "the CPU half only (reference runs)"
    print(f"gpu_check: {label}; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'step':<12} {'cpu s':>8} {dev.type + ' s':>8} {'ratio':>7}  agreement")
    for r in run(args.device, args.quick):
        d = r["device_s"]
        dev_s = f"{'-':>8}" if d is None else f"{d:8.3f}"
        ratio = f"{'-':>7}" if d is None else f"{r['cpu_s'] / d:7.2f}"
        agree = "-" if r["agreement"] is None else f"{r['agreement']:.2e}"
        print(f"{r['step']:<12} {r['cpu_s']:8.3f} {dev_s} {ratio}  {agree}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
