"""Benchmark: meta-model training throughput on Small-CNN-Zoo-shaped weights.

Data: ``--batch`` (default 256) random state_dicts of ``wsl.archs.small_cnn()``
(3 x Conv2d(3x3, 16 channels, stride 2) + global average pool + Linear(16 -> 10),
4,970 parameters), converted once to the model's input (dense
``WeightSpaceFeatures``, a PyG batch of parameter graphs, or ``nfn``'s
``WeightSpaceFeatures``); the conversion is not timed.

Models (each at every ``--channels`` width; NFT / NG-GNN / NG-T only at widths
<= ``--max-slow-width`` unless ``--all-widths``):

* ``np`` / ``hnp`` -- :class:`wsl.nn.NPNet` / :class:`wsl.nn.HNPNet`:
  ``--depth`` equivariant layers + ReLU, invariant pooling, MLP head
  (``--head-hidden``);
* ``nfn-np`` / ``nfn-hnp`` -- the same stacks from the ``nfn`` package
  (``NPLinear`` (io_embed on the first layer) / ``HNPLinear``, ``TupleOp(ReLU)``,
  ``NPPool`` / ``HNPPool``, same head), if ``nfn`` is installed
  (``pip install --no-deps nfn``; never a dependency of wsl);
* ``nft`` -- :class:`wsl.nn.NFTNet` (depth ``--nft-depth``);
* ``ng-gnn`` / ``ng-t`` -- ``wsl.nn.NGGNN`` / ``wsl.nn.NGT`` (hidden = width,
  ``--depth`` layers) if ``wsl.nn`` exports them.

Measures one training step (forward, MSE loss on random targets, backward,
Adam step): the median over ``--steps`` timed steps after ``--warmup``
untimed ones, reported as models/s = batch / step time. Each (model, width)
runs in its own subprocess, ``--rounds`` times with models interleaved; the
best round is reported (robust to other load on the machine).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during the steps;
on CPU the growth of the resident set size: peak RSS (``ru_maxrss``) minus
the RSS just before the first step (model, optimizer and data already
built). PyTorch returns large CPU blocks to the OS, so this tracks live
tensors (activations, gradients, Adam state is allocated in the first step).

On a busy shared machine pass ``--threads 1``: OpenMP threads spin-waiting
for a descheduled peer make multi-threaded timings swing by several x.

Usage: ``python benchmarks/metamodel_speed.py --channels 16 64 --rounds 3 --threads 1``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import torch
from torch import nn

MODELS = ("np", "nfn-np", "hnp", "nfn-hnp", "nft", "ng-gnn", "ng-t")
SLOW = ("nft", "ng-gnn", "ng-t")


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _data(batch: int, seed: int) -> tuple[Any, dict[str, torch.Tensor], nn.Module]:
    from wsl.archs import example_input, small_cnn
    from wsl.space import WeightSpace

    gen = torch.Generator().manual_seed(seed)
    arch = small_cnn()
    space = WeightSpace.from_module(arch, example_input(arch))
    stacked = {k: 0.3 * torch.randn((batch, *v.shape), generator=gen) for k, v in arch.state_dict().items()}
    return space, stacked, arch


def _nfn_inputs(stacked: dict[str, torch.Tensor], arch: nn.Module) -> Any:
    from nfn.common import WeightSpaceFeatures as NfnFeatures

    names = [n for n, m in arch.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return NfnFeatures([stacked[f"{n}.weight"].unsqueeze(1) for n in names],
                       [stacked[f"{n}.bias"].unsqueeze(1) for n in names])


def _nfn_model(kind: str, inputs: Any, width: int, depth: int, head_hidden: int) -> nn.Module:
    from nfn.common import network_spec_from_wsfeat
    from nfn.layers import HNPLinear, HNPPool, NPLinear, NPPool, TupleOp

    spec = network_spec_from_wsfeat(inputs)
    ch = [1] + [width] * depth
    layers: list[nn.Module] = []
    for i in range(depth):
        if kind == "nfn-np":
            layers.append(NPLinear(spec, ch[i], ch[i + 1], io_embed=(i == 0)))
        else:
            layers.append(HNPLinear(spec, ch[i], ch[i + 1]))
        layers.append(TupleOp(nn.ReLU()))
    pool = NPPool if kind == "nfn-np" else HNPPool
    n_out = pool.get_num_outs(spec) * width
    return nn.Sequential(*layers, pool(spec), nn.Flatten(),
                         nn.Linear(n_out, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 1))


def build(kind: str, width: int, args: argparse.Namespace) -> tuple[nn.Module, Any]:
    """(model, input) for one benchmark entry; raises ImportError if unavailable."""
    space, stacked, arch = _data(args.batch, args.seed)
    heads = (args.head_hidden,)
    if kind.startswith("nfn-"):
        inputs = _nfn_inputs(stacked, arch)
        return _nfn_model(kind, inputs, width, args.depth, args.head_hidden), inputs
    if kind in ("ng-gnn", "ng-t"):
        import wsl.nn as wnn
        from wsl.graph import build as build_graphs

        cls = getattr(wnn, "NGGNN" if kind == "ng-gnn" else "NGT", None)
        if cls is None:
            raise ImportError(f"wsl.nn does not export {'NGGNN' if kind == 'ng-gnn' else 'NGT'}")
        return cls(hidden=width, num_layers=args.depth, out_dim=1), build_graphs(space, stacked)
    from wsl.graph import WeightSpaceFeatures
    from wsl.nn import HNPNet, NFTNet, NPNet

    feats = WeightSpaceFeatures.from_state_dicts(space, stacked)
    if kind == "np":
        return NPNet(space, 1, (width,) * args.depth, head_hidden=heads), feats
    if kind == "hnp":
        return HNPNet(space, 1, (width,) * args.depth, head_hidden=heads), feats
    if kind == "nft":
        return NFTNet(space, 1, width, depth=args.nft_depth, heads=4, head_hidden=heads), feats
    raise ValueError(f"unknown model {kind!r}")


def worker(kind: str, width: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time training steps of one model in this process."""
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, inputs = build(kind, width, args)
    model = model.to(device)
    inputs = inputs.to(device)
    target = torch.randn(args.batch, 1, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = nn.functional.mse_loss(model(inputs).reshape(-1, 1), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    base = _rss_kb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    t = statistics.median(times)
    return {"model": kind, "width": width, "step_s": t, "models_per_s": args.batch / t, "peak_mb": peak_mb,
            "params": sum(p.numel() for p in model.parameters())}


def _available(kind: str) -> str | None:
    """None if the model can run, else why not."""
    if kind.startswith("nfn-"):
        try:
            import nfn.layers  # noqa: F401
        except ImportError:
            return "nfn is not installed (pip install --no-deps nfn) -- skipped"
    if kind in ("ng-gnn", "ng-t"):
        try:
            import wsl.nn as wnn
        except ImportError as err:
            return f"wsl.nn cannot be imported ({err}) -- skipped"
        if not hasattr(wnn, "NGGNN" if kind == "ng-gnn" else "NGT"):
            return "not exported by wsl.nn yet -- skipped"
    return None


def _run_sub(kind: str, width: int, argv: list[str]) -> dict[str, Any] | str:
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", kind, str(width)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return f"failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=256, help="models per training step")
    p.add_argument("--channels", type=int, nargs="+", default=[16, 64], help="widths to benchmark")
    p.add_argument("--depth", type=int, default=3, help="equivariant / graph layers")
    p.add_argument("--nft-depth", type=int, default=2, help="NFT layers")
    p.add_argument("--head-hidden", type=int, default=256, help="hidden width of the MLP head")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    p.add_argument("--max-slow-width", type=int, default=16, help="widest width for nft / ng-gnn / ng-t")
    p.add_argument("--all-widths", action="store_true", help="run every model at every width")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=1, help="repeat every measurement, keep the best")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", nargs=2, metavar=("MODEL", "WIDTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args)))
        return
    raw = list(sys.argv[1:] if argv is None else argv)
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    bad = [k for k in kinds if k not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    print(f"batch {args.batch}, depth {args.depth}, device {args.device}, threads {args.threads or torch.get_num_threads()}, "
          f"{args.steps} timed steps after {args.warmup} warm-up, best of {args.rounds} round(s)")
    jobs = []
    for kind in kinds:
        why = _available(kind)
        if why:
            print(f"  {kind}: {why}")
            continue
        jobs += [(kind, w) for w in args.channels
                 if args.all_widths or kind not in SLOW or w <= args.max_slow_width]
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for _ in range(args.rounds):
        for kind, w in jobs:
            res = _run_sub(kind, w, raw)
            if isinstance(res, str):
                print(f"  {kind} @ {w}: {res}")
                continue
            if (kind, w) not in best or res["step_s"] < best[(kind, w)]["step_s"]:
                best[(kind, w)] = res
    print(f"\n{'model':<9} {'width':>5} {'params':>11} {'step s':>8} {'models/s':>9} {'peak MB':>8}")
    for (kind, w), r in sorted(best.items(), key=lambda kv: (kv[0][1], MODELS.index(kv[0][0]))):
        print(f"{kind:<9} {w:>5} {r['params']:>11,} {r['step_s']:>8.3f} {r['models_per_s']:>9.1f} {r['peak_mb']:>8.0f}")
    for ours in ("np", "hnp"):
        for w in args.channels:
            a, b = best.get((ours, w)), best.get((f"nfn-{ours}", w))
            if a and b:
                print(f"{ours.upper()} @ {w}: wsl {a['models_per_s']:.1f} models/s vs nfn {b['models_per_s']:.1f} "
                      f"-> {a['models_per_s'] / b['models_per_s']:.2f}x throughput, "
                      f"{b['peak_mb'] / max(a['peak_mb'], 1e-9):.2f}x less peak memory")


if __name__ == "__main__":
    main()
