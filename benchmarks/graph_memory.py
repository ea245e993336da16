"""Benchmark: memory of ResNet-18's parameter graph, padded ``edge_attr`` versus ragged ``edge_values``.

ResNet-18 (ImageNet head, 11.7M parameters) has 1.9M edges; its 7x7 stem makes the padded ``edge_attr``
49 entries wide although most edges carry 9 (3x3 kernels) or 1. Each edge format is built in its own
subprocess (so peak RSS is per format) and reports: the estimate :func:`wsl.graph.estimate_graph_bytes`
makes from the spec before building, the bytes of the graph's tensors, of the layout's index tensors,
build time, peak RSS, and whether the graph decodes back bit-exactly. The last lines print the ratios.

Usage: ``OMP_NUM_THREADS=1 python benchmarks/graph_memory.py [--arch resnet18]``. With
``PYTHONPATH=<an older checkout> python benchmarks/graph_memory.py --one padded`` it measures that code's
(padded-only) graph and prints one JSON row.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

MIB = 2 ** 20


def _tensor_bytes(obj: object) -> int:
    return sum(v.numel() * v.element_size() for v in vars(obj).values() if isinstance(v, torch.Tensor))


def measure(arch: str, edges: str) -> dict[str, object]:
    from wsl.archs.registry import REGISTRY
    from wsl.graph import GraphLayout, build_one, decode
    from wsl.space import WeightSpace

    try:
        from wsl.graph import estimate_graph_bytes
    except ImportError:  # code from before ragged graphs (run with PYTHONPATH=<older checkout> ... --one padded)
        estimate_graph_bytes = None

    torch.set_num_threads(1)
    module = REGISTRY[arch](num_classes=1000)
    space = WeightSpace.from_module(module, torch.randn(1, 3, 64, 64))
    sd = module.state_dict()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    estimate = estimate_graph_bytes(space, edges) if estimate_graph_bytes else 0
    t0 = time.perf_counter()
    graph = build_one(space, sd, edges=edges) if estimate_graph_bytes else build_one(space, sd)
    t_build = time.perf_counter() - t0
    lay = GraphLayout.of(space)
    graph_bytes = sum(v.numel() * v.element_size() for _, v in graph.items() if isinstance(v, torch.Tensor))
    layout_bytes = _tensor_bytes(lay) + sum(v.numel() * v.element_size() for v in getattr(lay, "_padded", {}).values())
    back = decode(graph, space)
    exact = all(torch.equal(back[k], sd[k]) for k in sd)
    return {"edges": "ragged" if "edge_values" in graph else "padded", "params": space.num_parameters,
            "nodes": graph.num_nodes, "num_edges": graph.num_edges, "estimate": estimate, "graph": graph_bytes,
            "layout": layout_bytes, "build_s": t_build, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            * 1024, "rss_before_build": base_rss, "exact": exact}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--one", choices=["padded", "ragged"], help="measure one format in this process (JSON row)")
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.arch, args.one)))
        return
    rows = {}
    for edges in ("padded", "ragged"):
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--one", edges], check=True,
                             capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        rows[edges] = json.loads(out.stdout.strip().splitlines()[-1])
    r = rows["ragged"]
    print(f"{args.arch}: {r['params']:,} parameters ({r['params'] * 4 / MIB:.1f} MiB as float32), "
          f"{r['nodes']:,} nodes, {r['num_edges']:,} edges")
    print(f"{'edges':<8} {'estimate MiB':>13} {'graph MiB':>10} {'layout MiB':>11} {'build s':>8} "
          f"{'peak RSS MiB':>13} {'exact':>6}")
    for name, row in rows.items():
        print(f"{name:<8} {row['estimate'] / MIB:>13.1f} {row['graph'] / MIB:>10.1f} {row['layout'] / MIB:>11.1f} "
              f"{row['build_s']:>8.2f} {row['peak_rss'] / MIB:>13.0f} {str(row['exact']):>6}")
    pad = rows["padded"]
    print(f"graph memory padded/ragged: {pad['graph'] / r['graph']:.2f}x; layout: {pad['layout'] / r['layout']:.2f}x; "
          f"peak RSS: {pad['peak_rss'] / r['peak_rss']:.2f}x")


if __name__ == "__main__":
    main()
