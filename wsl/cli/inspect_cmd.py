"""``wsl inspect`` and ``wsl graph``."""

from __future__ import annotations

import argparse
from typing import Any

from wsl.cli.common import add_model_args, load_for_cli, print_json


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="print a network's weight space: tensors, groups, graph size",
                       description="Trace a checkpoint's architecture and print its weight space.")
    p.add_argument("path", nargs="?", help="checkpoint (.safetensors, .pt, .bin, directory, hf://...)")
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_inspect)

    g = sub.add_parser("graph", help="write a checkpoint's parameter graph",
                       description="Build the parameter graph (units = nodes, weights = edges) of a checkpoint.")
    g.add_argument("path", help="checkpoint (.safetensors, .pt, .bin, directory, hf://...)")
    add_model_args(g)
    g.add_argument("-o", "--output", required=True, help="output file (.pt or .safetensors)")
    g.add_argument("--edges", choices=["auto", "padded", "ragged"], default="auto",
                   help="edge storage: padded edge_attr (E, K), ragged edge_values (memory ~ weights), or auto "
                        "(ragged for big architectures)")
    g.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="refuse graphs estimated above this many GiB (default: the memory available)")
    g.set_defaults(func=run_graph)


def run_inspect(args: argparse.Namespace) -> int:
    _, _, space = load_for_cli(args.path, args.arch, args.input_shape, args.input_dtype)
    if args.json:
        d = space.describe()
        d["path"] = args.path
        print_json(d)
    else:
        print(space.summary())
    return 0


def run_graph(args: argparse.Namespace) -> int:
    from wsl.graph import build_one, save_graph

    from wsl.graph import check_graph_fits, is_ragged

    module, sd, space = load_for_cli(args.path, args.arch, args.input_shape, args.input_dtype)
    sd = sd if sd is not None else module.state_dict()
    itemsize = max((t.element_size() for t in sd.values() if t.is_floating_point()), default=4)
    limit = None if args.max_memory is None else int(args.max_memory * 2 ** 30)
    need = check_graph_fits(space, args.edges, itemsize, limit=limit, where=f"wsl graph {args.path or args.arch}")
    graph = build_one(space, sd, edges=args.edges)
    save_graph(graph, args.output)
    kind = "ragged" if is_ragged(graph) else "padded"
    print(f"wrote {args.output}: {graph.num_nodes:,} nodes, {graph.num_edges:,} edges ({kind} edges, "
          f"estimated {need / 2 ** 20:,.1f} MiB to build)")
    return 0
