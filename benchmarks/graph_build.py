"""Benchmark: parameter graphs for a Small-CNN-Zoo-shaped model zoo.

Models: 3 x Conv2d(3x3, 16 channels, stride 2, padding 1) + ReLU, global
average pool, Linear(16 -> 10); input 1x8x8; 4,970 parameters each.

Measures
  (a) ``wsl.graph.build``: all N graphs as one PyG Batch (default: one strided
      copy per tensor block; also ``method="gather"``: one index_select);
      ``reuse_structure=True`` shares the weight-independent tensors between
      batches of the same size (timed warm);
  (b) a naive per-model baseline (one torch thread): a Python loop over models and layers that
      builds each layer's edge index with torch ops, gathers its weights and
      concatenates, then ``Batch.from_data_list`` (both with and without
      that final collation are reported);
  (c) ``wsl.graph.decode`` of the whole batch back to stacked state_dicts.
Both builders are checked to produce identical graphs on a few models, and
the decode is checked to be bit-exact.

Usage: ``python benchmarks/graph_build.py --num-models 10000``

Most of the vectorized build's time is the kernel zero-filling fresh pages
for the ~0.5 GB of output tensors (the naive loop reuses small heap blocks).
On Linux with transparent huge pages in ``madvise`` mode, running with
``THP_MEM_ALLOC_ENABLE=1`` (a PyTorch allocator switch) removes most of it.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch

from wsl.graph import EDGE_KINDS, NODE_KINDS, GraphLayout, ParameterGraph, build, decode
from wsl.space import WeightSpace
from wsl.space.spec import NODE_SLOTS

T = TypeVar("T")
LAYERS = ("c1", "c2", "c3", "fc")


class SmallCNN(nn.Module):
    """The Small CNN Zoo architecture (Unterthiner et al., 2020), 4,970 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, 2, 1)
        self.c2 = nn.Conv2d(16, 16, 3, 2, 1)
        self.c3 = nn.Conv2d(16, 16, 3, 2, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(self.c3(x))
        return self.fc(x.mean((2, 3)))


def naive_graph(sd: dict[str, torch.Tensor], k: int, arch: str, dtypes: str) -> ParameterGraph:
    """One model's graph, built layer by layer the straightforward way."""
    sizes = [sd["c1.weight"].shape[1]] + [sd[f"{n}.weight"].shape[0] for n in LAYERS]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    v = offsets[-1]
    x = torch.zeros(v, len(NODE_SLOTS))
    x_mask = torch.zeros(v, len(NODE_SLOTS), dtype=torch.bool)
    srcs, dsts, attrs, masks, kinds = [], [], [], [], []
    for i, name in enumerate(LAYERS):
        w, b = sd[f"{name}.weight"], sd[f"{name}.bias"]
        n_out, n_in = w.shape[0], w.shape[1]
        dst = torch.arange(n_out).repeat_interleave(n_in) + offsets[i + 1]
        src = torch.arange(n_in).repeat(n_out) + offsets[i]
        feat = w.reshape(n_out * n_in, -1)
        srcs.append(src)
        dsts.append(dst)
        attrs.append(F.pad(feat, (0, k - feat.shape[1])))
        masks.append(F.pad(torch.ones_like(feat, dtype=torch.bool), (0, k - feat.shape[1])))
        kinds.append(torch.full((n_out * n_in,), EDGE_KINDS["conv" if w.dim() == 4 else "linear"]))
        x[offsets[i + 1]:offsets[i + 2], 0] = b
        x_mask[offsets[i + 1]:offsets[i + 2], 0] = True
    edge_kind = torch.cat(kinds)
    node_kind = torch.full((v,), NODE_KINDS["neurons"])
    node_kind[: offsets[1]] = NODE_KINDS["input"]
    node_kind[offsets[-2]:] = NODE_KINDS["output"]
    node_pos = torch.full((v,), -1)
    node_pos[: offsets[1]] = torch.arange(offsets[1])
    node_pos[offsets[-2]:] = torch.arange(v - offsets[-2])
    depth = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    counts = torch.tensor([a.shape[0] for a in attrs])
    g = ParameterGraph(
        x=x, x_mask=x_mask, edge_index=torch.stack([torch.cat(srcs), torch.cat(dsts)]), edge_attr=torch.cat(attrs),
        edge_mask=torch.cat(masks), edge_kind=edge_kind, edge_conn=torch.repeat_interleave(torch.arange(4), counts),
        node_kind=node_kind, node_depth=depth, node_pos=node_pos, extras=torch.zeros(0, dtype=torch.float64),
    )
    g.arch, g.dtypes = arch, dtypes
    return g


CLOCK = time.perf_counter


def timed(fn: Callable[[], T], repeat: int = 1) -> tuple[T, float]:
    """(result, best time over ``repeat`` runs) on the selected clock."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = CLOCK()
        out = fn()
        best = min(best, CLOCK() - t0)
    return out, best  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-models", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats of the vectorized paths (best is shown)")
    ap.add_argument("--naive-repeat", type=int, default=2, help="timing repeats of the naive baseline")
    ap.add_argument("--check", type=int, default=5, help="models compared between the two builders")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall-clock time, or process CPU time (user+sys; steadier on a busy machine)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.num_models

    space = WeightSpace.from_module(SmallCNN(), torch.randn(2, 1, 8, 8))
    assert space.num_parameters == 4970, space.num_parameters
    gen = torch.Generator().manual_seed(0)
    stacked = {k: torch.randn((n, *s), generator=gen) for k, s in space.shapes.items()}
    print(f"{n} models x {space.num_parameters} parameters; graph {space.graph_size()} (nodes, edges); "
          f"torch threads {torch.get_num_threads()}; {args.clock} clock")

    lay, t_layout = timed(lambda: GraphLayout.of(space))
    print(f"layout (once per architecture): {t_layout * 1e3:.1f} ms")
    batch, t_vec = timed(lambda: build(space, stacked), args.repeat)
    batch_g, t_gat = timed(lambda: build(space, stacked, method="gather"), args.repeat)
    assert torch.equal(batch.edge_attr, batch_g.edge_attr) and torch.equal(batch.x, batch_g.x)
    del batch_g
    build(space, stacked, reuse_structure=True)  # fills the per-(arch, N) structure cache
    batch_r, t_reuse = timed(lambda: build(space, stacked, reuse_structure=True), args.repeat)
    assert torch.equal(batch.edge_index, batch_r.edge_index) and torch.equal(batch.edge_attr, batch_r.edge_attr)
    del batch_r
    sds = space.unstack(stacked)
    dts = batch.dtypes[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-model ops: intra-op threads only add overhead (badly so on a busy machine)
    graphs, t_loop = timed(lambda: [naive_graph(sd, lay.edge_dim, space.signature, dts) for sd in sds],
                           args.naive_repeat)
    torch.set_num_threads(threads)
    naive_batch, t_coll = timed(lambda: Batch.from_data_list(graphs), args.naive_repeat)

    ref = batch.to_data_list() if args.check else []
    for i in range(min(args.check, n)):
        a, b = ref[i], graphs[i]
        for key in ("x", "x_mask", "edge_index", "edge_attr", "edge_mask", "edge_kind", "edge_conn", "node_kind",
                    "node_depth", "node_pos", "extras"):
            assert torch.equal(a[key], b[key]), (i, key)
    assert torch.equal(batch.edge_index, naive_batch.edge_index) and torch.equal(batch.edge_attr, naive_batch.edge_attr)
    assert torch.equal(batch.x, naive_batch.x)

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    build(space, stacked)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(f"one vectorized build: user {r1.ru_utime - r0.ru_utime:.3f} s, sys {r1.ru_stime - r0.ru_stime:.3f} s, "
          f"{r1.ru_minflt - r0.ru_minflt:,} page faults (THP_MEM_ALLOC_ENABLE="
          f"{os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')})")
    out, t_dec = timed(lambda: decode(batch, space), args.repeat)
    assert all(torch.equal(out[k], stacked[k]) for k in stacked)

    def rate(t: float) -> str:
        return f"{n / t:>12,.0f} models/s  ({t:.3f} s)"

    print(f"(a) vectorized build -> Batch        {rate(t_vec)}")
    print(f"    same, method='gather'             {rate(t_gat)}")
    print(f"    same, reuse_structure=True         {rate(t_reuse)}")
    print(f"(b) naive per-model loop (graphs)    {rate(t_loop)}")
    print(f"    naive loop + Batch.from_data_list {rate(t_loop + t_coll)}")
    print(f"(c) vectorized decode -> state_dicts {rate(t_dec)}")
    for label, t in (("build", t_vec), ("build(reuse_structure=True)", t_reuse)):
        print(f"speed-up of {label}: {t_loop / t:.1f}x vs naive graphs, "
              f"{(t_loop + t_coll) / t:.1f}x vs naive graphs + batching")


if __name__ == "__main__":
    main()
