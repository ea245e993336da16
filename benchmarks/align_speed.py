"""Weight-matching speed: a ResNet-18 pair, and many small CNNs aligned to one reference.

Prints the time of each case and its ratio to the alignment issue's targets
(a ResNet-18 pair in under 5 s; at least 200 small CNNs per second per core).
Not here yet: the comparison with a reference implementation (the ``rebasin``
package) on the same pair.

    python benchmarks/align_speed.py                 # both cases, one thread
    python benchmarks/align_speed.py --models 200    # fewer small CNNs
"""

from __future__ import annotations

import argparse
import time

import torch

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=1000, help="small CNNs to align (default 1000)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    resnet_pair()
    small_cnns(args.models)


if __name__ == "__main__":
    main()
