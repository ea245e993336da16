"""Weight-matching speed: a ResNet-18 pair, many small CNNs, and the ``rebasin`` reference.

Prints the time of each case and its ratio to the alignment issue's targets
(a ResNet-18 pair in under 5 s; at least 200 small CNNs per second per core;
at least 2x faster than the reference implementation at equal result).

The reference is ``rebasin`` (PyPI; Sebastian Mueller's PyTorch port of Git
Re-Basin weight matching, ``PermutationCoordinateDescent``). It is never a
dependency of wsl: install it in a separate venv together with wsl, e.g.::

    python3 -m venv /tmp/rebasin-venv
    echo torch==2.13.0 > /tmp/constraints.txt
    /tmp/rebasin-venv/bin/pip install -c /tmp/constraints.txt rebasin -e .

When it is importable, both methods align the very same pairs (same modules,
same state_dicts, same thread count, one untimed warm-up each): the ResNet-18
pair of the first case and more random-init pairs of ResNet-18, an MLP
(784-512-512-512-10, Git Re-Basin's MNIST MLP) and the small CNN, then pairs
trained on the 8x8 digits from different seeds (MLP 64-512-512-512-10 and
the 3 x 64 small CNN of merge_table.py). For each pair it prints:

* wall time of each method (setup: tracing the model; solve: the coordinate
  descent; apply: permuting the weights) and the CPU-time ratio, which other
  load on the machine disturbs less;
* the squared L2 distance ``sum ||ref - aligned||^2`` over all parameters
  before and after alignment (the weight-matching objective up to a
  constant), and how many units each method can permute;
* the function check: max |aligned(x) - model(x)| on random inputs, in eval
  mode (BatchNorm running statistics made non-trivial beforehand by a few
  train-mode passes on random data) and in train mode (batch statistics);
* for trained pairs, the test accuracy of the midpoint (ref + aligned) / 2.

A summary table ends the run; "equal result" there means that wsl's squared
distance after alignment is on average at most 0.5% above rebasin's.
Without the package it prints a skip line.

    python benchmarks/align_speed.py                  # all cases, one thread
    python benchmarks/align_speed.py --models 200     # fewer small CNNs
    python benchmarks/align_speed.py --reference off  # wsl alone
    python benchmarks/align_speed.py --reference only --ref-pairs 1
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from wsl.align import weight_matching
from wsl.archs import REGISTRY
from wsl.space import WeightSpace


def _nets(name: str, n: int, **kw: object) -> list[torch.nn.Module]:
    out = []
    for i in range(n):
        torch.manual_seed(i)
        out.append(REGISTRY[name](**kw))
    return out


def resnet_pair() -> float:
    a, b = _nets("resnet18", 2, num_classes=10)
    space = WeightSpace.from_module(a, torch.randn(1, 3, 32, 32))
    sa, sb = a.state_dict(), b.state_dict()
    t = time.perf_counter()
    r = weight_matching(sa, sb, space, progress=False)
    dt = time.perf_counter() - t
    print(f"resnet18 pair: {dt:.2f} s ({r.passes} passes, distance {r.distance_before:.1f} -> {r.distance_after:.1f});"
          f" target 5 s: ratio {dt / 5:.2f} (below 1 meets it)")
    return dt


def small_cnns(n: int) -> float:
    nets = _nets("small_cnn", n + 1)
    space = WeightSpace.from_module(nets[0])
    ref = nets[0].state_dict()
    t = time.perf_counter()
    for net in nets[1:]:
        weight_matching(ref, net.state_dict(), space, progress=False)
    dt = time.perf_counter() - t
    rate = n / dt / torch.get_num_threads()
    print(f"{n} small CNNs to one reference: {dt:.2f} s, {rate:.0f} models/s per core "
          f"(one model at a time); target 200: ratio {rate / 200:.2f} (above 1 meets it)")
    return rate


# --- comparison with the reference implementation --------------------------------------------

def reference_version() -> str | None:
    """The installed ``rebasin`` version, or None when it cannot be imported."""
    try:
        importlib.import_module("rebasin")
    except Exception:  # not installed, or a dependency of it fails to import
        return None
    return importlib.metadata.version("rebasin")


@dataclass
class Run:
    """One alignment of ``model`` to ``ref`` by one method."""

    wall: tuple[float, float, float]  # s: setup (tracing the model), solve (coordinate descent), apply
    cpu: tuple[float, float, float]  # the same in CPU time of this process (robust to other load)
    dist2: float  # sum over parameters of ||ref - aligned||^2
    units: int  # units the method can permute
    fn_eval: float  # max |aligned(x) - model(x)|, eval mode
    fn_train: float  # the same in train mode (batch statistics)
    aligned: nn.Module

    @property
    def total(self) -> float:
        return sum(self.wall)

    @property
    def setup(self) -> float:
        return self.wall[0]

    @property
    def solve(self) -> float:
        return self.wall[1]

    @property
    def apply(self) -> float:
        return self.wall[2]


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _spans(c: list[tuple[float, float]]) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Wall and CPU durations between consecutive clock readings ``c`` (four of them)."""
    wall = tuple(c[i + 1][0] - c[i][0] for i in range(3))
    cpu = tuple(c[i + 1][1] - c[i][1] for i in range(3))
    return wall, cpu  # type: ignore[return-value]


def _calibrate(net: nn.Module, shape: tuple[int, ...], seed: int) -> nn.Module:
    """Non-trivial BatchNorm running statistics (a few train-mode passes on random data); eval mode."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        gen = torch.Generator().manual_seed(seed)
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(16, *shape, generator=gen) * 2 + 0.5)
    return net.eval()


def _dist2(a: nn.Module, b: nn.Module) -> float:
    pb = dict(b.named_parameters())
    return sum(float((p.detach().double() - pb[n].detach().double()).pow(2).sum()) for n, p in a.named_parameters())


def _fn_diff(aligned: nn.Module, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    out = []
    for train in (False, True):
        m1, m2 = copy.deepcopy(aligned).train(train), copy.deepcopy(model).train(train)
        with torch.no_grad():
            out.append(float((m1(x) - m2(x)).abs().max()))
    return out[0], out[1]


def run_wsl(ref: nn.Module, model: nn.Module, x: torch.Tensor) -> Run:
    aligned = copy.deepcopy(model)
    c = [_clock()]
    space = WeightSpace.from_module(ref, x[:1])
    c.append(_clock())
    r = weight_matching(ref.state_dict(), model.state_dict(), space, progress=False)
    c.append(_clock())
    aligned.load_state_dict(r.apply(model.state_dict()))
    c.append(_clock())
    units = sum(g.size for g in space.groups if g.permutable)
    return Run(*_spans(c), _dist2(ref, aligned), units, *_fn_diff(aligned, model, x), aligned)


def run_reference(ref: nn.Module, model: nn.Module, x: torch.Tensor, seed: int) -> Run:
    from rebasin import PermutationCoordinateDescent

    a, aligned = copy.deepcopy(ref), copy.deepcopy(model)  # rebasin permutes model_b in place
    torch.manual_seed(seed)  # rebasin draws its visiting order from the global generator
    c = [_clock()]
    pcd = PermutationCoordinateDescent(a, aligned, x[:2])
    c.append(_clock())
    pcd.calculate_permutations()
    c.append(_clock())
    pcd.apply_permutations()
    c.append(_clock())
    units = sum(len(p.perm_indices) for p, _ in pcd.pinit.model_graph.permutation_to_info)
    return Run(*_spans(c), _dist2(ref, aligned), units, *_fn_diff(aligned, model, x), aligned)


def _midpoint(ref: nn.Module, aligned: nn.Module) -> nn.Module:
    mid = copy.deepcopy(ref)
    sb = aligned.state_dict()
    mid.load_state_dict({k: (v + sb[k]) / 2 if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    return mid


def _case(label: str, pairs: list[tuple[nn.Module, nn.Module]], shape: tuple[int, ...],
          verbose: bool, evaluate: Callable[[nn.Module], float] | None = None) -> dict[str, Any]:
    """Align every pair with both methods; print per pair (if ``verbose``) and a summary line."""
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(123))
    rows, mids = [], []
    for k, (ref, model) in enumerate(pairs):
        before = _dist2(ref, model)
        w = run_wsl(ref, model, x)
        r = run_reference(ref, model, x, seed=k)
        rows.append((before, w, r))
        if verbose:
            print(f"  {label} pair {k}: wsl {w.total:.3f} s (setup {w.setup:.3f} + solve {w.solve:.3f} + apply "
                  f"{w.apply:.3f}), rebasin {r.total:.3f} s ({r.setup:.3f} + {r.solve:.3f} + {r.apply:.3f}): "
                  f"ratio {r.total / w.total:.1f}x (solve {r.solve / w.solve:.1f}x, CPU time "
                  f"{sum(r.cpu) / sum(w.cpu):.1f}x)")
            print(f"    squared distance {before:.4g} -> wsl {w.dist2:.4g}, rebasin {r.dist2:.4g} "
                  f"(units permutable: wsl {w.units}, rebasin {r.units})")
            print(f"    function max|aligned - model| eval/train: wsl {w.fn_eval:.1e}/{w.fn_train:.1e}, "
                  f"rebasin {r.fn_eval:.1e}/{r.fn_train:.1e}")
        if evaluate is not None:
            acc = [evaluate(m) for m in (ref, model, _midpoint(ref, model), _midpoint(ref, w.aligned),
                                          _midpoint(ref, r.aligned))]
            mids.append(acc)
            if verbose:
                print(f"    test accuracy: ref {100 * acc[0]:.1f}%, model {100 * acc[1]:.1f}%; midpoint "
                      f"(ref + aligned) / 2: unaligned {100 * acc[2]:.1f}%, wsl {100 * acc[3]:.1f}%, "
                      f"rebasin {100 * acc[4]:.1f}%")
    tw, tr = sum(w.total for _, w, _ in rows), sum(r.total for _, _, r in rows)
    sw, sr = sum(w.solve for _, w, _ in rows), sum(r.solve for _, _, r in rows)
    cw, cr = sum(sum(w.cpu) for _, w, _ in rows), sum(sum(r.cpu) for _, _, r in rows)
    cut_w = statistics.mean(1 - w.dist2 / b for b, w, _ in rows)
    cut_r = statistics.mean(1 - r.dist2 / b for b, _, r in rows)
    gap = statistics.mean(w.dist2 / r.dist2 - 1 for _, w, r in rows)
    wins = sum(w.dist2 <= r.dist2 for _, w, r in rows)
    fw = max(w.fn_eval for _, w, _ in rows)
    fr = max(r.fn_eval for _, _, r in rows)
    n = len(rows)
    met = tr / tw >= 2 and gap <= 0.005
    print(f"{label}, {n} pair{'s' * (n > 1)}: time a pair wsl {tw / n:.3f} s, rebasin {tr / n:.3f} s: "
          f"rebasin/wsl {tr / tw:.1f}x end to end ({sr / sw:.1f}x solve only, {cr / cw:.1f}x in CPU time)")
    print(f"  squared distance cut: wsl {100 * cut_w:.2f}%, rebasin {100 * cut_r:.2f}% (after, wsl/rebasin - 1: "
          f"{100 * gap:+.2f}% mean; wsl lower in {wins}/{n}); max eval-mode function change: wsl {fw:.1e}, "
          f"rebasin {fr:.1e}")
    out = {"label": label, "pairs": n, "time": tr / tw, "solve": sr / sw, "cpu": cr / cw, "gap": gap,
           "wins": wins, "fn": (fw, fr), "met": met}
    if mids:
        m = [statistics.mean(a[i] for a in mids) for i in range(5)]
        print(f"  mean test accuracy: endpoints {50 * (m[0] + m[1]):.1f}%; midpoint unaligned {100 * m[2]:.1f}%, "
              f"wsl {100 * m[3]:.1f}%, rebasin {100 * m[4]:.1f}%")
        out["midpoint"] = (m[3], m[4])
    print(f"  2x faster at equal result (mean distance gap at most +0.5%): {'met' if met else 'NOT met'}", flush=True)
    return out


def _summary(results: list[dict[str, Any]]) -> None:
    print("summary: rebasin/wsl time (end to end, solve only, CPU); squared distance after alignment, "
          "wsl/rebasin - 1 (negative: wsl closer); eval-mode function change (wsl, rebasin)")
    for r in results:
        print(f"  {r['label']:<38} {r['time']:5.1f}x {r['solve']:5.1f}x {r['cpu']:5.1f}x  {100 * r['gap']:+6.2f}% "
              f"(wsl lower {r['wins']}/{r['pairs']})  {r['fn'][0]:.0e} {r['fn'][1]:.0e}  "
              f"{'met' if r['met'] else 'NOT met'}")


def _pairs(name: str, n: int, shape: tuple[int, ...], first: int = 0,
           **kw: object) -> list[tuple[nn.Module, nn.Module]]:
    """Pairs of seeds (first + 2k, first + 2k + 1), with calibrated BatchNorm statistics."""
    out = []
    for k in range(n):
        nets = []
        for seed in (first + 2 * k, first + 2 * k + 1):
            torch.manual_seed(seed)
            nets.append(_calibrate(REGISTRY[name](**kw), shape, seed))
        out.append((nets[0], nets[1]))
    return out


def compare(ref_pairs: int, verbose: bool = True) -> list[dict[str, Any]] | None:
    """wsl vs ``rebasin`` on ResNet-18, MLP and small-CNN pairs; None (and a skip line) without it."""
    version = reference_version()
    if version is None:
        print("reference comparison skipped: the 'rebasin' package is not importable in this environment "
              f"({sys.prefix}); install it in a separate venv (see this script's docstring)")
        return None
    print(f"reference: rebasin {version} (PermutationCoordinateDescent) in {sys.prefix}; torch {torch.__version__},"
          f" {torch.get_num_threads()} thread(s)")
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    _warm_up()
    out = []
    # pair 0 of resnet18 is the pair of resnet_pair() (seeds 0, 1); only the BN buffers differ,
    # and buffers take no part in the matching.
    cases: list[tuple[str, Callable[[], list[tuple[nn.Module, nn.Module]]], tuple[int, ...]]] = [
        ("resnet18", lambda: _pairs("resnet18", ref_pairs, (3, 32, 32), num_classes=10), (3, 32, 32)),
        ("mlp 784-512-512-512-10", lambda: _pairs("mlp", ref_pairs, (784,), sizes=[784, 512, 512, 512, 10]),
         (784,)),
        ("small_cnn", lambda: _small_cnn_pairs(10 * ref_pairs), (1, 8, 8)),
    ]
    for label, make, shape in cases:
        out.append(_case(label, make(), shape, verbose=verbose and label != "small_cnn"))
    for kind in ("mlp", "cnn"):
        label, pairs, shape, evaluate = _trained_pairs(kind, ref_pairs)
        out.append(_case(label, pairs, shape, verbose=verbose, evaluate=evaluate))
    _summary(out)
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    return out


def _trained_pairs(kind: str, n: int) -> tuple[str, list[tuple[nn.Module, nn.Module]], tuple[int, ...],
                                               Callable[[nn.Module], float]]:
    """``n`` pairs of networks trained on the 8x8 digits from different seeds (Adam, 10 epochs).

    ``mlp``: 64-512-512-512-10 on the flattened images; ``cnn``: the small CNN with 3 x 64 channels
    of benchmarks/merge_table.py. Returns a label, the pairs, the input shape and test accuracy.
    """
    from wsl.zoo.data import load_dataset

    data = load_dataset("digits")
    flat = kind == "mlp"
    xtr, xte = (data.x_train.flatten(1), data.x_test.flatten(1)) if flat else (data.x_train, data.x_test)

    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        net = REGISTRY["mlp"](sizes=[64, 512, 512, 512, 10]) if flat else REGISTRY["small_cnn"](channels=[64] * 3)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(10):
            for idx in torch.randperm(xtr.shape[0], generator=gen).split(32):
                opt.zero_grad()
                nn.functional.cross_entropy(net(xtr[idx]), data.y_train[idx]).backward()
                opt.step()
        return net.eval()

    def evaluate(net: nn.Module) -> float:
        with torch.no_grad():
            return float((net(xte).argmax(1) == data.y_test).double().mean())

    pairs = [(make(100 + 2 * k), make(101 + 2 * k)) for k in range(n)]
    label = "digits-trained mlp 64-512-512-512-10" if flat else "digits-trained small_cnn 3x64"
    return label, pairs, tuple(xtr.shape[1:]), evaluate


def _small_cnn_pairs(n: int) -> list[tuple[nn.Module, nn.Module]]:
    """The small CNNs of :func:`small_cnns` (seeds 1..n), each paired with the reference (seed 0)."""
    nets = [net.eval() for net in _nets("small_cnn", n + 1)]
    return [(nets[0], net) for net in nets[1:]]


def _warm_up() -> None:
    """One untimed alignment by each method, so lazy imports and first-call costs do not count."""
    a, b = [net.eval() for net in _nets("small_cnn", 2)]
    x = torch.randn(2, 1, 8, 8)
    run_wsl(a, b, x)
    run_reference(a, b, x, seed=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000, help="small CNNs to align (default 1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--reference", choices=["auto", "off", "only"], default="auto",
                    help="compare with the rebasin package: auto (when importable, default), off, or only "
                         "(skip the wsl-only cases)")
    ap.add_argument("--ref-pairs", type=int, default=3,
                    help="ResNet-18 and MLP pairs to compare (default 3); small CNNs: 10x as many")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    if args.reference != "only":
        resnet_pair()
        small_cnns(args.models)
    if args.reference != "off":
        compare(args.ref_pairs)


if __name__ == "__main__":
    main()
