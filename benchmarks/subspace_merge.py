"""Subspace merge vs the mean and aligned merges, on the digits CNN groups of ``benchmarks/merge_table.py``.

The same 17 networks as the merge table (8 from scratch, a base, 8
fine-tuned copies; see that file), merged in groups of 2, 4 and 8 (the first
``k``). Columns:

* ``mean``, ``aligned_mean``: the plain and the weight-matched mean (wsl.align.merge);
* ``sub/self``: subspace merge with the basis fit on the group itself (full
  rank ``k - 1``) and ``sub/self r1`` (rank 1): algebraically the plain mean;
* ``sub/aligned``: basis fit on the group aligned to its first network:
  algebraically the aligned mean;
* ``sub/zoo rR``: basis fit on a *different* zoo of 16 networks of the same
  setting (seeds 1000..1015, same recipe), rank ``R``: the mean projected
  onto ``mean_zoo + span(V_R)`` (``r0``: the zoo mean alone); ``sub/zoo-sum r4``
  combines by summing;
* ``sub/azoo rR``: the same with the zoo and the group aligned to the
  group's first network (weight matching) before fitting and merging.

The JSON also records, per group, the largest entry-wise difference between
``sub/self`` and ``mean`` (and ``sub/aligned`` and ``aligned_mean``), and the share of
``|theta_bar - mean_zoo|`` that the zoo's span keeps, ``|V V^T (theta_bar - m)| / |theta_bar - m|``.

    python benchmarks/subspace_merge.py     # writes benchmarks/results/subspace_merge.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge_table import accuracy, networks  # noqa: E402  (the merge table's networks and evaluation)

from wsl.align.merge import make_method  # noqa: E402
from wsl.align.weight_matching import weight_matching  # noqa: E402
from wsl.space import WeightSpace  # noqa: E402
from wsl.subspace.basis import fit  # noqa: E402
from wsl.subspace.merge import subspace_merge  # noqa: E402
from wsl.subspace.stacks import TensorStack  # noqa: E402
from wsl.zoo.data import load_dataset  # noqa: E402

ZOO_RANKS = (0, 1, 4, 15)
COLUMNS = ["networks", "mean", "aligned_mean", "sub/self", "sub/self r1", "sub/aligned"] + \
    [f"sub/zoo r{r}" for r in ZOO_RANKS] + ["sub/zoo-sum r4"] + [f"sub/azoo r{r}" for r in ZOO_RANKS]
CAPTURED = [f"zoo r{r}" for r in ZOO_RANKS[1:]] + [f"azoo r{r}" for r in ZOO_RANKS[1:]]


def _dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in b) ** 0.5


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _rel_dist(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a if a[k].is_floating_point())
    den = sum(float(b[k].double().pow(2).sum()) for k in b if b[k].is_floating_point())
    return (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--zoo", type=int, default=16, help="networks per setting in the separate zoo")
    ap.add_argument("--out", default="benchmarks/results/subspace_merge")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    data = load_dataset("digits")
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    t0 = time.time()
    scratch, base, tuned = networks(xtr, ytr)
    zoo_scratch, _, zoo_tuned = networks(xtr, ytr, n=args.zoo, first_seed=1000)
    print(f"trained {17 + 2 * args.zoo + 1} networks in {time.time() - t0:.0f} s", flush=True)
    space = WeightSpace.from_module(base)
    template = copy.deepcopy(base)

    def acc(sd: dict[str, torch.Tensor]) -> float:
        template.load_state_dict(sd)
        return accuracy(template, xte, yte)

    results: dict[str, Any] = {"base_accuracy": accuracy(base, xte, yte), "zoo_size": args.zoo,
                               "zoo_ranks": list(ZOO_RANKS)}
    for setting, nets, zoo_nets in (("from scratch", scratch, zoo_scratch), ("fine-tuned", tuned, zoo_tuned)):
        sds = [n.state_dict() for n in nets]
        zoo_sds = [n.state_dict() for n in zoo_nets]
        ref = sds[0]
        aligned = [ref] + [weight_matching(ref, sd, space).apply(sd) for sd in sds[1:]]
        zoo_aligned = [weight_matching(ref, sd, space).apply(sd) for sd in zoo_sds]
        zoo_basis = fit(TensorStack.from_state_dicts(zoo_sds), rank=max(ZOO_RANKS))
        azoo_basis = fit(TensorStack.from_state_dicts(zoo_aligned), rank=max(ZOO_RANKS))
        zoo_acc = statistics.mean(accuracy(n, xte, yte) for n in zoo_nets)
        rows: dict[int, Any] = {}
        for k in (2, 4, 8):
            group, agroup = sds[:k], aligned[:k]
            mean = make_method("mean").merge(group)
            amean = make_method("aligned_mean").merge(group, space=space)
            merged = {"mean": mean, "aligned_mean": amean,
                      "sub/self": subspace_merge(group), "sub/self r1": subspace_merge(group, rank=1),
                      "sub/aligned": subspace_merge(agroup), "sub/zoo-sum r4": subspace_merge(group, zoo_basis, 4,
                                                                                               combine="sum")}
            for r in ZOO_RANKS:
                merged[f"sub/zoo r{r}"] = subspace_merge(group, zoo_basis, r)
                merged[f"sub/azoo r{r}"] = subspace_merge(agroup, azoo_basis, r)
            row: dict[str, Any] = {"networks": statistics.mean(accuracy(n, xte, yte) for n in nets[:k])}
            row.update({name: acc(sd) for name, sd in merged.items()})
            row["max_abs_diff"] = {"sub/self vs mean": _max_diff(merged["sub/self"], mean),
                                   "sub/self r1 vs mean": _max_diff(merged["sub/self r1"], mean),
                                   "sub/aligned vs aligned_mean": _max_diff(merged["sub/aligned"], amean)}
            row["relative_distance_to_mean"] = {n: _rel_dist(merged[n], mean) for n in merged if "zoo" in n}
            row["relative_distance_to_mean"].update({n: _rel_dist(merged[n], amean) for n in merged if "azoo" in n})
            captured = {}
            for r in ZOO_RANKS[1:]:
                for tag, b, target in (("zoo", zoo_basis, mean), ("azoo", azoo_basis, amean)):
                    mu = {n: b.means[n].reshape(b.shapes[n]) for n in b.names}
                    captured[f"{tag} r{r}"] = _dist(merged[f"sub/{tag} r{r}"], mu) / _dist(target, mu)
            row["span_share"] = captured
            rows[k] = row
            print(setting, k, {m: round(v, 3) for m, v in row.items() if isinstance(v, float)}, flush=True)
        results[setting] = {"groups": rows, "zoo_mean_accuracy": zoo_acc}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = ["| setting | k | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for setting in ("from scratch", "fine-tuned"):
        for k, row in results[setting]["groups"].items():
            lines.append(f"| {setting} | {k} | " + " | ".join(f"{100 * row[c]:.1f}" for c in COLUMNS) + " |")
    lines += ["", "Share of |mean - zoo mean| inside the zoo's span (the rest is dropped by the merge):", "",
              "| setting | k | " + " | ".join(CAPTURED) + " |", "|---|---|" + "---|" * len(CAPTURED)]
    for setting in ("from scratch", "fine-tuned"):
        for k, row in results[setting]["groups"].items():
            lines.append(f"| {setting} | {k} | " + " | ".join(f"{row['span_share'][c]:.3f}" for c in CAPTURED) + " |")
    diffs = [v for s in ("from scratch", "fine-tuned") for row in results[s]["groups"].values()
             for v in row["max_abs_diff"].values()]
    table = "\n".join(lines) + (
        f"\n\nTest accuracy (%) on the digits test split. Largest entry-wise difference between a subspace merge "
        f"with the basis fit on the merged models and the corresponding mean merge: {max(diffs):.1e}. "
        f"Zoo: {args.zoo} other networks per setting (mean accuracy: from scratch "
        f"{100 * results['from scratch']['zoo_mean_accuracy']:.1f}%, fine-tuned "
        f"{100 * results['fine-tuned']['zoo_mean_accuracy']:.1f}%). Base network of the fine-tuned setting: "
        f"{100 * results['base_accuracy']:.1f}%.\n")
    out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
