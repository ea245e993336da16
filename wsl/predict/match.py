"""Match a network to a dense predictor's training architecture by structure, not by tensor names.

A dense predictor (NP/HNP/NFT, StatNN per tensor) reads exactly one weight
space: its training architecture. A network written as ``self.conv1 = ...``
has the tensors ``conv1.weight, conv1.bias, ...`` where the zoo's
``nn.Sequential`` has ``0.weight, 0.bias, ...``; the weights mean the same
thing when the two spaces agree in everything but names: the tensors in
state_dict order with their shapes, roles and per-axis groups, the groups,
the sites, the connections and the node parameters.

:func:`structure` is the weight-space spec with every name replaced by its
position (tensors, modules) or dropped (group and site names); two spaces
with equal structures are the same weight space up to naming, and
:func:`match_tensors` returns the renaming.
"""

from __future__ import annotations

from typing import Any

from wsl.space import WeightSpace


def structure(space: WeightSpace) -> dict[str, Any]:
    """The spec of ``space`` (no ``meta``) with tensor and module names replaced by their order of appearance."""
    d = space.to_json()
    tensors = {t["name"]: f"t{i}" for i, t in enumerate(d["tensors"])}
    modules: dict[str, str] = {}

    def mod(name: str) -> str:
        return modules.setdefault(name, f"m{len(modules)}")

    out = {
        "tensors": [dict(t, name=tensors[t["name"]], module=mod(t["module"])) for t in d["tensors"]],
        "groups": [dict(g, name="") for g in d["groups"]],
        "sites": [dict(s, name="") for s in d["sites"]],
        "connections": [dict(c, module=mod(c["module"]), tensor=tensors.get(c["tensor"], c["tensor"]))
                        for c in d["connections"]],
        "node_params": [dict(p, tensor=tensors.get(p["tensor"], p["tensor"])) for p in d["node_params"]],
        "extras": len(d.get("extras", ())),
        "aliases": [[tensors.get(a, a) for a in pair] for pair in d.get("aliases", ())],
    }
    return out


def match_tensors(space: WeightSpace, target: WeightSpace) -> dict[str, str] | None:
    """``{name in space: name in target}`` for the tensors whose names differ when ``space`` is ``target`` up to
    naming (empty when the names agree too); None when the structures differ."""
    if space.signature == target.signature:
        return {}
    if structure(space) != structure(target):
        return None
    return {a: b for a, b in zip(space.tensors, target.tensors) if a != b}
