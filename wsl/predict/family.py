"""The architecture family a predictor was trained on, and how far an input is from it.

A predictor can only speak for networks like the ones in its training zoo.
:func:`describe_family` summarizes those networks (input/output sizes,
activations, layer and edge kinds, kernel sizes, depth, width, parameter
counts); :func:`check_family` compares a new network with the summary and
returns *errors* (no number may be given: the input or output size differs,
so the network cannot be a model of the same data set) and *warnings* (the
prediction is an extrapolation: unseen activation, deeper, wider, ...).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from wsl.space import WeightSpace


def _input_sizes(space: WeightSpace) -> list[int]:
    return sorted({g.size for g in space.groups if g.kind == "input"})


def _output_sizes(space: WeightSpace) -> list[int]:
    return sorted({g.size for g in space.groups if g.kind == "output"})


def _kernels(space: WeightSpace) -> list[list[int]]:
    ks = {tuple(c.attr("kernel_size")) for c in space.connections if c.attr("kernel_size") is not None}
    return sorted(list(k) for k in ks)


def summarize(space: WeightSpace) -> dict[str, Any]:
    """The family-relevant facts of one architecture."""
    perm = [g.size for g in space.groups if g.permutable and g.kind not in ("head", "norm_groups")]
    return {
        "input_sizes": _input_sizes(space),
        "output_sizes": _output_sizes(space),
        "input_shapes": [list(s) for s in space.meta("input_shapes", ())],
        "activations": sorted(space.meta("activations", ())),
        "edge_kinds": sorted({c.kind for c in space.connections}),
        "node_slots": sorted({p.slot for p in space.spec.node_params}),
        "kernel_sizes": _kernels(space),
        "depth": max((s.depth for s in space.sites), default=0),
        "width": max(perm, default=0),
        "num_parameters": space.num_parameters,
    }


def describe_family(spaces: Iterable[WeightSpace]) -> dict[str, Any]:
    """Union of :func:`summarize` over the training architectures."""
    fam: dict[str, Any] = {"input_sizes": set(), "output_sizes": set(), "input_shapes": set(), "activations": set(),
                           "edge_kinds": set(), "node_slots": set(), "kernel_sizes": set()}
    depth = width = 0
    lo, hi, n = None, None, 0
    for space in spaces:
        s = summarize(space)
        n += 1
        for key in fam:
            fam[key] |= {tuple(v) if isinstance(v, list) else v for v in s[key]}
        depth, width = max(depth, s["depth"]), max(width, s["width"])
        lo = s["num_parameters"] if lo is None else min(lo, s["num_parameters"])
        hi = s["num_parameters"] if hi is None else max(hi, s["num_parameters"])
    out: dict[str, Any] = {k: sorted(list(v) if isinstance(v, tuple) else v for v in vals) for k, vals in fam.items()}
    out.update(max_depth=depth, max_width=width, num_parameters=[lo or 0, hi or 0], num_architectures=n)
    return out


def _sizes(values: Iterable[int]) -> str:
    v = [str(x) for x in values]
    return v[0] if len(v) == 1 else ", ".join(v[:-1]) + " or " + v[-1]


def _shapes_note(family: dict[str, Any]) -> str:
    shapes = family.get("input_shapes") or []
    return f" (inputs of shape {', '.join(map(str, map(list, shapes)))})" if shapes else ""


def check_family(space: WeightSpace, family: dict[str, Any] | None) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` for predicting ``space`` with a predictor of ``family``."""
    if not family:
        return [], []
    s = summarize(space)
    errors, warnings = [], []
    if family.get("input_sizes") and not set(s["input_sizes"]) <= set(family["input_sizes"]):
        errors.append(f"the network's first layer reads {_sizes(s['input_sizes'])} input channels (CNN) or features "
                      f"(MLP); the predictor was trained on networks whose first layer reads "
                      f"{_sizes(family['input_sizes'])}{_shapes_note(family)}: a network of another data set "
                      "cannot be predicted")
    if family.get("output_sizes") and not set(s["output_sizes"]) <= set(family["output_sizes"]):
        errors.append(f"the network has {_sizes(s['output_sizes'])} output units (classes); the predictor was "
                      f"trained on networks with {_sizes(family['output_sizes'])} output units (classes): a network "
                      "of another task cannot be predicted")
    shapes = [list(x) for x in family.get("input_shapes", [])]
    flat = {math.prod(x) for x in shapes}
    odd = [x for x in s["input_shapes"] if list(x) not in shapes and not (len(x) == 1 and x[0] in flat)]
    if shapes and odd:
        warnings.append(f"the network was traced on inputs of shape {odd}, not the training family's "
                        f"{shapes} (or those flattened); pass the shape it really takes (CLI: --input-shape)")
    for key, what in (("activations", "activation"), ("edge_kinds", "layer/edge kind"),
                      ("node_slots", "node parameter")):
        new = sorted(set(s[key]) - set(family.get(key, [])))
        if new:
            warnings.append(f"out of distribution: {what} {', '.join(map(str, new))} never seen in training")
    new_k = [k for k in s["kernel_sizes"] if k not in family.get("kernel_sizes", [])]
    if new_k:
        warnings.append(f"out of distribution: kernel sizes {new_k} never seen in training")
    if s["depth"] > family.get("max_depth", s["depth"]):
        warnings.append(f"out of distribution: depth {s['depth']} > {family['max_depth']} seen in training")
    if s["width"] > family.get("max_width", s["width"]):
        warnings.append(f"out of distribution: width {s['width']} > {family['max_width']} seen in training")
    lo, hi = family.get("num_parameters", [0, 0])
    if hi and not lo <= s["num_parameters"] <= hi:
        warnings.append(f"out of distribution: {s['num_parameters']:,} parameters outside the training range "
                        f"[{lo:,}, {hi:,}]")
    return errors, warnings
