"""Node parameters wider than one value per unit, and the graph nodes that hold them.

A node parameter (bias, norm scale/shift, running statistics) normally holds
one value per unit of its site. Some hold ``F > 1`` values per unit, their
axis being a unit factor among fixed ones:

* Swin's patch-merging ``LayerNorm(4C)``: ``(None, 2), (None, 2), (g, C)``,
  four values per channel (one per merged position);
* LeViT's BatchNorm after a fused ``qkv``: ``(heads, H), (None, 2d+dv)``,
  the fixed q/k/v units of each head;
* the q/k bias of a rotary attention (Qwen2): ``(heads, H), (None, d)``, the
  rigid units of each head.

In the parameter graph the units of the site stay the nodes that edges join;
such a parameter adds ``units x F`` *value nodes*, node ``(u, f)`` holding
entry ``f`` of unit ``u`` (canonical row-major order) in the parameter's slot,
joined to unit node ``u`` by one parameter-free edge. The parameters of one
site with the same factors (a norm's weight, bias and statistics) share one
set of value nodes. A permutation ``p`` of the units maps value node
``(u, f)`` to ``(p(u), f)``: the graph stays equivariant, and every stored
scalar keeps exactly one slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wsl.space.spec import Segment


@dataclass(frozen=True)
class ValueNodes:
    """``units x width`` value nodes of ``site`` holding the node parameters with factors ``axis``."""

    site: int
    axis: Segment
    units: int
    width: int

    @property
    def count(self) -> int:
        return self.units * self.width


def value_node_sets(spec: Any) -> tuple[list[ValueNodes], list[int | None]]:
    """The value-node sets of a spec, and for each ``spec.node_params`` entry the index of its set (None: one
    value per unit, stored on the site's own nodes)."""
    tensors = {t.name: t for t in spec.tensors}
    sets: list[ValueNodes] = []
    index: dict[tuple[int, Segment], int] = {}
    of_param: list[int | None] = []
    for p in spec.node_params:
        t = tensors.get(p.tensor)
        if t is None or len(t.axes) != 1:
            of_param.append(None)
            continue
        seg = t.axes[0][p.part[0] if p.part else 0]
        width = 1
        units = 1
        for f in seg:
            if f[0] is None:
                width *= int(f[1])
            else:
                units *= int(f[1])
        if width == 1:
            of_param.append(None)
            continue
        key = (p.site, tuple(seg))
        if key not in index:
            index[key] = len(sets)
            sets.append(ValueNodes(p.site, tuple(seg), units, width))
        of_param.append(index[key])
    return sets, of_param
