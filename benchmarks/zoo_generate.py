"""Benchmark: vectorized zoo training vs one model at a time, on the digits-cnn-gs recipe.

Both modes train the *same* models (recipe hyperparameters of models
``0..N-1``: activation, optimizer, lr, L2, dropout, init, training subset and
per-epoch data order) for the same number of epochs, in the same process:

* vectorized -- :func:`wsl.zoo.optim.train_chunk` on chunks of
  ``--models-per-chunk`` models (grouped convolutions + batched matmuls, one
  fused SGD/Adam/RMSprop update over all models);
* one at a time -- a plain PyTorch loop per model: ``wsl.archs.small_cnn``
  with its dropout rate, the standard ``torch.optim`` optimizer
  (``SGD(momentum=0.9)``, ``Adam``, ``RMSprop``), ``zero_grad / forward /
  cross_entropy / backward / step`` on the same batches.

Only training is timed (checkpoint evaluation is reported separately for the
vectorized mode). Also reports the achieved FLOP/s of the vectorized trainer
-- multiply-accumulates per sample (forward) x 2 x 3 (forward + backward) x
samples processed / time -- against the machine's fp32 matmul FLOP/s (a
square ``torch.mm``). Times are best-of-``--repeat``.

Usage: ``python benchmarks/zoo_generate.py [--num-models 256] [--epochs 2] [--threads 1]``
(``--threads 1`` is what ``wsl zoo generate`` uses per process; the one-at-a-time
loop gets the same thread count.)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsl.archs import small_cnn
from wsl.zoo.data import epoch_batches, load_dataset
from wsl.zoo.generate import _Plan
from wsl.zoo.recipes import init_rows, load_recipe
from wsl.zoo.optim import ModelRun, train_chunk
from wsl.zoo.vectorized import VecNet, evaluate

RECIPE = Path(__file__).resolve().parents[1] / "zoos" / "digits-cnn-gs.yaml"
TORCH_OPT = {"sgd": (torch.optim.SGD, {"momentum": 0.9}), "adam": (torch.optim.Adam, {}),
             "rmsprop": (torch.optim.RMSprop, {})}


def macs_per_sample(module: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one sample (conv + linear layers)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out[0].numel() * mod.weight[0].numel()
        elif isinstance(mod, nn.Linear):
            total += mod.weight.numel()

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.no_grad():
        module.eval()(torch.zeros(1, *shape))
    for h in handles:
        h.remove()
    return total


def matmul_flops(n: int = 2048, reps: int = 5) -> float:
    """Best fp32 FLOP/s of an ``n x n`` matmul."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-models", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--models-per-chunk", type=int, default=256, help="as in the recipe")
    ap.add_argument("--single-models", type=int, default=None,
                    help="models for the one-at-a-time mode (default: all)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--repeat", type=int, default=1, help="repeat each timing, keep the best")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = load_recipe(RECIPE).with_overrides(num_models=args.num_models, epochs=args.epochs)
    data = load_dataset("digits")
    plan = _Plan(recipe, data)
    models = [plan.model(i) for i in range(args.num_models)]
    n_train, bs = data.x_train.shape[0], recipe.training["batch_size"]
    subsets = [torch.randperm(n_train, generator=torch.Generator().manual_seed(m.seeds[1]))[
        :max(1, round(m.hp["train_fraction"] * n_train))].sort().values for m in models]
    net = VecNet(plan.desc(models[0]))
    inits = init_rows(net, [(m.hp["w_init"], m.hp["init_std"]) for m in models], [m.seeds[0] for m in models])
    runs = [ModelRun(m.hp["optimizer"], m.hp["lr"], m.hp["weight_decay"], m.hp["dropout"], m.hp["activation"],
                     s, inits[i], m.seeds[2]) for i, (m, s) in enumerate(zip(models, subsets))]
    samples = sum(args.epochs * len(s) for s in subsets)
    macs = macs_per_sample(small_cnn(), (1, 8, 8))
    print(f"digits-cnn-gs: {args.num_models} models x {args.epochs} epochs, {samples:,} training samples, "
          f"{macs:,} MACs/sample, threads={torch.get_num_threads()}, device={args.device}")

    vec_time, eval_time = float("inf"), float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        results = []
        for a in range(0, len(runs), args.models_per_chunk):
            chunk = runs[a:a + args.models_per_chunk]
            for act in sorted({r.activation for r in chunk}):  # as `wsl zoo generate`: one network per activation
                group = [r for r in chunk if r.activation == act]
                res = train_chunk(net, group, data.x_train, data.y_train, batch_size=bs, epochs=args.epochs,
                                  checkpoints=[args.epochs], seed=0, device=args.device)
                results.append((group, res))
        vec_time = min(vec_time, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for group, res in results:
            acts = [r.activation for r in group]
            evaluate(net, res.params[:, -1], {}, acts, data.x_test, data.y_test, device=args.device)
            evaluate(net, res.params[:, -1], {}, acts, data.x_train, data.y_train, device=args.device)
        eval_time = min(eval_time, time.perf_counter() - t0)

    n_single = args.single_models or args.num_models
    sched, steps = epoch_batches(subsets[:n_single], [r.data_seed for r in runs[:n_single]], bs, args.epochs)
    single_time = float("inf")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for i in range(n_single):
            m, r = models[i], runs[i]
            model = small_cnn(activation=m.hp["activation"], dropout=m.hp["dropout"]).to(args.device)
            model.load_state_dict({k: v[0] for k, v in net.unflatten(inits[i:i + 1]).items()})
            model.train()
            cls, kw = TORCH_OPT[r.optimizer]
            opt = cls(model.parameters(), lr=r.lr, weight_decay=r.weight_decay, **kw)
            x, y = data.x_train.to(args.device), data.y_train.to(args.device)
            for t in range(args.epochs * steps[i]):
                idx = sched[i, t][sched[i, t] >= 0].to(args.device)
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        single_time = min(single_time, time.perf_counter() - t0)

    vec_rate, single_rate = args.num_models / vec_time, n_single / single_time
    flops = 2 * 3 * macs * samples / vec_time
    peak = matmul_flops()
    print(f"vectorized    : {vec_rate:8.1f} models/s  ({vec_time:.2f} s training; checkpoint evaluation "
          f"{eval_time:.2f} s more)")
    print(f"one at a time : {single_rate:8.1f} models/s  ({single_time:.2f} s for {n_single} models)")
    print(f"speed-up      : {vec_rate / single_rate:8.1f} x")
    print(f"vectorized trainer: {flops / 1e9:.2f} GFLOP/s achieved (model FLOPs x3 for fwd+bwd); "
          f"fp32 matmul on this machine: {peak / 1e9:.1f} GFLOP/s ({100 * flops / peak:.1f}% of it)")


if __name__ == "__main__":
    main()
