"""Universal-subspace analysis of the real zoos, each beside its three nulls, with and without alignment.

For every zoo: the last checkpoint of every model, one weight space:

* digits-cnn-gs: all 2,000 models (architectures a0 and a1 differ only in the activation, relu vs tanh,
  so they share one weight space and are pooled);
* mnist1d-mlp: all models (the architectures differ only in the activation; pooled);
* digits-cnn-wild: the architecture with the most models (named in the output).

Each is analysed by :func:`wsl.subspace.analyze.analyze` with the init, MP and shuffled nulls, split-half
sharedness and alignment to the barycentre ("both"), and once more (unaligned) with every model's every layer
scaled to norm 1 (view "unit-norm": what remains without the spread of the models' scales). Writes ``benchmarks/results/subspace_zoos.json``
(per layer: effective rank, rank for 90%, top-1 share, excess over each null, split-half overlaps; the
binding null; the largest layer's curves), ``subspace_zoos.md`` and ``subspace_zoos.png`` (per zoo: the
largest layer's spectrum and cumulative curve, data vs nulls, aligned dashed). Full reports go to
``--full`` (not committed). One thread.

    OMP_NUM_THREADS=1 python benchmarks/subspace_zoos.py [--zoos DIR] [--only digits-cnn-gs] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from wsl.subspace.analyze import analyze
from wsl.subspace.report import compact_summary, write_report
from wsl.subspace.sources import Source, open_source
from wsl.subspace.stacks import TensorStack

RESULTS = Path(__file__).resolve().parent / "results"
CURVE = 64  # ranks of the largest layer's curves kept in the JSON (and drawn)


def _same_but_activation(descs: list[dict[str, Any]]) -> bool:
    def strip(d: dict[str, Any]) -> str:
        a = json.loads(json.dumps(d["arch"]))
        a.get("kwargs", {}).pop("activation", None)
        return json.dumps(a, sort_keys=True)

    return len({strip(d) for d in descs}) == 1


def pooled_source(path: Path, limit: int | None) -> tuple[Source, str]:
    """All architectures of a zoo that differ only in the activation, as one source."""
    import wsl

    zoo = wsl.load_zoo(path)
    ids = sorted(zoo.architectures)
    if not _same_but_activation([zoo.architectures[a] for a in ids]):
        raise SystemExit(f"{path}: architectures differ in more than the activation; cannot pool")
    parts = [open_source(path, arch=a, limit=None if limit is None else max(2, limit // len(ids))) for a in ids]
    names = parts[0].stack.names
    stack = TensorStack({n: torch.cat([p.stack.tensors[n] for p in parts]) for n in names},
                        [i for p in parts for i in p.stack.ids])
    init = TensorStack({n: torch.cat([p.init.tensors[n] for p in parts]) for n in names},
                       [i for p in parts for i in p.init.ids])
    acts = {a: zoo.architectures[a]["arch"].get("kwargs", {}).get("activation") for a in ids}
    note = "architectures " + ", ".join(f"{a} ({act})" for a, act in acts.items()) + " pooled (same weight space)"
    src = Source(zoo.name, stack, init=init, build=parts[0].build,
                 info={"kind": "zoo", "zoo": zoo.name, "arch": ids, "epochs": "latest", "init": parts[0].info["init"]})
    return src, note


def _describe(arch: dict[str, Any]) -> str:
    """A short text for a sequential architecture description (else its kind and name)."""
    if arch.get("kind") != "sequential":
        return f"{arch.get('kind')} {arch.get('name', '')}".strip()
    parts = []
    for layer in arch["layers"]:
        t = layer["type"]
        if t == "conv2d":
            parts.append(f"conv{layer['kernel_size']}x{layer['kernel_size']}/s{layer['stride']}->{layer['out_channels']}")
        elif t == "linear":
            parts.append(f"linear->{layer['out_features']}")
        elif t != "dropout":
            parts.append(t)
    return ", ".join(parts)


def common_arch_source(path: Path, limit: int | None) -> tuple[Source, str]:
    """The zoo's architecture with the most models (the first in the zoo's order on a tie)."""
    import wsl

    zoo = wsl.load_zoo(path)
    counts = Counter(r["arch"] for r in zoo.latest().rows)
    (arch, n), *rest = counts.most_common()
    ties = [a for a, m in rest if m == n]
    src = open_source(path, arch=arch, limit=limit)
    return src, (f"architecture {arch} ({n} of {len(zoo.latest())} models; the most common of {len(counts)}"
                 + (f", tied with {', '.join(ties)}" if ties else "") + f"): {_describe(zoo.architectures[arch]['arch'])}")


def _binding(entry: dict[str, Any]) -> str | None:
    """The null closest to the data: the smallest excess in variance explained at the data's k90."""
    ex = entry.get("excess", {})
    return min(ex, key=lambda k: ex[k]["at_k90"]) if ex else None


def unit_norm(src: Source) -> Source:
    """Every model's every layer (all tensors of one module together) scaled to norm 1, trained and init alike:
    what is left of the spectrum without the spread of the models' scales."""
    from wsl.subspace.stacks import layer_of

    def scale(stack: Any) -> TensorStack:
        sq: dict[str, torch.Tensor] = {}
        for n, t in stack.tensors.items():
            sq[layer_of(n)] = sq.get(layer_of(n), 0) + t.flatten(1).pow(2).sum(1)
        return TensorStack({n: t / sq[layer_of(n)].sqrt().clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))
                            for n, t in stack.tensors.items()}, stack.ids)

    return Source(f"{src.label} (unit norm)", scale(src.stack), init=scale(src.init) if src.init is not None else None,
                  init_reason=src.init_reason, build=src.build, info={**src.info, "unit_norm": "per layer"})


def _zoo_result(parts: dict[str, Any], note: str, seconds: float) -> dict[str, Any]:
    """``parts``: view name -> a report (or its ``aligned`` part); the first is the unaligned report."""
    report = next(iter(parts.values()))
    largest = max(report["layers"], key=lambda k: report["layers"][k]["n_params"])
    out: dict[str, Any] = {"source": report["source"], "selection": note, "n_models": report["n_models"],
                           "seconds": seconds, "largest_layer": largest, "views": {}}
    for view, part in parts.items():
        if part is None or "skipped" in part:
            out["views"][view] = {"skipped": (part or {}).get("skipped", "not run")}
            continue
        csum = compact_summary({"source": report["source"], "n_models": report["n_models"], "layers": part["layers"]})
        layers = {}
        for name, entry in part["layers"].items():
            layers[name] = {**csum["layers"][name], "excess": entry["excess"], "binding_null": _binding(entry),
                            "total_variance": entry["total_variance"]}
        big = part["layers"][largest]
        curves = {"data": big["explained_variance_ratio"][:CURVE],
                  **{k: v["explained_variance_ratio"][:CURVE] for k, v in big["nulls"].items() if "skipped" not in v}}
        weights = [n for n in part["layers"][largest]["tensors"] if "modes" in part["tensors"][n]]
        modes = {}
        for side, m in (part["tensors"][weights[0]]["modes"].items() if weights else ()):
            if "skipped" not in m:
                modes[side] = {"dim": m["dim"], "effective_rank": {"data": m["effective_rank"], **{
                    k: v["effective_rank"] for k, v in m["nulls"].items() if "skipped" not in v}},
                    "rank_for_0.9": {"data": m["rank_for"]["0.9"], **{
                        k: v["rank_for"]["0.9"] for k, v in m["nulls"].items() if "skipped" not in v}}}
        out["views"][view] = {"layers": layers, "largest_layer_curves": curves,
                              "largest_weight_modes": {"tensor": weights[0] if weights else None, **modes},
                              "alignment": part.get("alignment"), "init_alignment": part.get("init_alignment")}
    return out


def _md(results: dict[str, Any]) -> str:
    lines = ["# Universal subspace analysis of the zoos", "",
             "Per layer (last checkpoints): the data and each null. eff. rank: entropy effective rank; r90: rank for "
             "90% of the variance; top-1: share of the first direction; overlap: split-half mean cos² of the top-k "
             "subspaces (k = data r90, at most 32), with the init and shuffled nulls and random k/P; binding: the "
             "null with the smallest excess at the data's r90.", ""]
    for zoo, res in results.items():
        lines += [f"## {zoo}", "", f"{res['n_models']} models; {res['selection']}; {res['seconds']:.0f} s.", ""]
        lines.append("| view | layer | P | eff. rank data / init / mp / shuffled | r90 data / init / mp / shuffled | "
                     "top-1 data / init / mp / shuffled | overlap data / init / shuffled / random (k) | binding |")
        lines.append("|---|---|---:|---|---|---|---|---|")
        for view, part in res["views"].items():
            if "skipped" in part:
                lines.append(f"| {view} | skipped: {part['skipped']} | | | | | | |")
                continue
            for layer, e in part["layers"].items():
                def row(key: str, fmt: str) -> str:
                    return " / ".join(format(e[key][k], fmt) if k in e[key] else "–"
                                      for k in ("data", "init", "mp", "shuffled"))
                sh = e.get("split_half", {})
                ov = " / ".join(format(sh[k], ".3f") if sh.get(k) is not None else "–"
                                for k in ("data", "init", "shuffled")) + f" / {sh.get('random', 0):.3g} (k={sh.get('k')})"
                lines.append(f"| {view} | {layer} | {e['n_params']} | {row('effective_rank', '.1f')} | "
                             f"{row('rank_for_0.9', 'd')} | {row('top1', '.3f')} | {ov} | {e['binding_null']} |")
        lines += ["", "Mode-wise (HOSVD, uncentred) view of the largest layer's weight: effective rank and rank for 90% "
                  "of the pooled left (output units) and right (inputs) Gram matrices, data / init / shuffled.", "",
                  "| view | tensor | side | dim | eff. rank | r90 |", "|---|---|---|---:|---|---|"]
        for view, part in res["views"].items():
            modes = part.get("largest_weight_modes", {})
            for side in ("left", "right"):
                if side in modes:
                    m = modes[side]
                    er = " / ".join(f"{m['effective_rank'][k]:.1f}" for k in ("data", "init", "shuffled")
                                    if k in m["effective_rank"])
                    r9 = " / ".join(str(m["rank_for_0.9"][k]) for k in ("data", "init", "shuffled")
                                    if k in m["rank_for_0.9"])
                    lines.append(f"| {view} | {modes['tensor']} | {side} | {m['dim']} | {er} | {r9} |")
        lines.append("")
    return "\n".join(lines)


def _figure(results: dict[str, Any], path: Path) -> None:
    from wsl.subspace.plots import draw_curves, pyplot

    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(len(results), 2, figsize=(10, 3.4 * len(results)), squeeze=False)
    for row, (zoo, res) in zip(axes, results.items()):
        views = {v: {"explained_variance_ratio": p["largest_layer_curves"]["data"],
                     "nulls": {k: {"explained_variance_ratio": c} for k, c in p["largest_layer_curves"].items()
                               if k != "data"}}
                 for v, p in res["views"].items() if "skipped" not in p}
        title = f"{zoo}: layer {res['largest_layer']} (N = {res['n_models']}), first {CURVE} ranks"
        draw_curves(row[0], views, cumulative=False, title=title)
        draw_curves(row[1], views, cumulative=True, title=title)
        row[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoos", default="/work/main/zoos-out", help="folder holding the generated zoos")
    ap.add_argument("--only", action="append", help="run only this zoo (repeatable)")
    ap.add_argument("--limit", type=int, default=None, help="use at most N models per zoo")
    ap.add_argument("--full", default="/tmp/subspace_zoos", help="folder for the full reports (not committed)")
    ap.add_argument("--rebuild", action="store_true", help="no analysis: rebuild the JSON, table and figure from "
                    "the full reports in --full (selection and time from the existing JSON)")
    ap.add_argument("--unit-norm-only", action="store_true", help="only the unit-norm analysis (into --full); "
                    "then run with --rebuild")
    args = ap.parse_args()
    torch.set_num_threads(1)
    plan = {"digits-cnn-gs": pooled_source, "mnist1d-mlp": pooled_source, "digits-cnn-wild": common_arch_source}
    out_json = RESULTS / "subspace_zoos.json"
    keep = out_json.is_file() and (args.only or args.rebuild)
    results: dict[str, Any] = json.loads(out_json.read_text()) if keep else {}
    for zoo, opener in plan.items():
        if args.only and zoo not in args.only:
            continue
        path = Path(args.zoos) / zoo
        if args.rebuild:
            full = Path(args.full) / zoo / "report.json"
            normed = Path(args.full) / f"{zoo}-unit-norm" / "report.json"
            if zoo in results and full.is_file():
                old = results[zoo]
                rep = json.loads(full.read_text())
                parts = {"unaligned": rep, "aligned": rep.get("aligned")}
                if normed.is_file():
                    parts["unit-norm"] = json.loads(normed.read_text())
                results[zoo] = _zoo_result(parts, old["selection"], old["seconds"])
            continue
        if not (path / "zoo.json").is_file():
            print(f"{zoo}: not generated yet ({path}); skipped")
            continue
        src, note = opener(path, args.limit)
        if args.unit_norm_only:
            normed = analyze(unit_norm(src), aligned=False, modes=False, seed=0, progress=True)
            write_report(normed, Path(args.full) / f"{zoo}-unit-norm")
            continue
        print(f"{zoo}: {len(src.stack)} models; {note}", flush=True)
        t0 = time.perf_counter()
        report = analyze(src, aligned="both", seed=0, progress=True)
        write_report(report, Path(args.full) / zoo)
        normed = analyze(unit_norm(src), aligned=False, modes=False, seed=0, progress=True)
        write_report(normed, Path(args.full) / f"{zoo}-unit-norm")
        seconds = time.perf_counter() - t0
        results[zoo] = _zoo_result({"unaligned": report, "aligned": report.get("aligned"), "unit-norm": normed},
                                   note, seconds)
        print(f"{zoo}: {seconds:.0f} s; full report in {Path(args.full) / zoo}", flush=True)
    results = {k: results[k] for k in plan if k in results}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / "subspace_zoos.md").write_text(_md(results) + "\n")
    _figure(results, RESULTS / "subspace_zoos.png")
    print(f"wrote {out_json}, subspace_zoos.md, subspace_zoos.png")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
