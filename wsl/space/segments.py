"""A fused projection's output split into parts: one group becomes consecutive segments.

``qkv = linear(x)`` followed by ``q, k, v = qkv.split(E, -1)`` (GPT-2),
``qkv.reshape(B, N, 3, H, d).unbind(...)`` (timm ViT, ``nn.MultiheadAttention``),
``gate, up = gate_up(x).chunk(2, -1)`` (Phi-3) or three slices (Phi-3's
``qkv_proj``) give parts of one output axis different roles: the parts must
be permuted separately, never mixed. Splitting the group ``g`` of ``N`` units
at offsets ``0 = c_0 < c_1 < ... < c_k = N`` replaces it by fresh groups
``g_i`` of ``c_{i+1} - c_i`` units: every tensor axis ``((g, N),)`` becomes the
segments ``((g_0, ·),), ((g_1, ·),), ...`` (the spec's fused-axis form), every
site of ``g`` becomes one site per part, and the connections and node
features that landed on it are split by part. Later splits refine a part.

Only a fresh output can be split: a group that is tied to others through
identity edges, nested, fixed, or used whole by another layer is refused.
"""

from __future__ import annotations

import dataclasses

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder


def _sites(b: SpecBuilder) -> dict[tuple[int, int], int]:
    """(site of the split group, part group) -> the part's site."""
    return b.scratch.setdefault("segments.sites", {})  # type: ignore[no-any-return]


def leaves(b: SpecBuilder, g: int, start: int = 0) -> list[tuple[int, int, int]]:
    """The finest parts of (possibly split) group ``g``: (start, size, group), offsets from ``start``."""
    r = b.find(g)
    if r not in b.segments:
        return [(start, b.size(r), r)]
    return [leaf for s, _, part in b.segments[r] for leaf in leaves(b, part, start + s)]


def part_site(b: SpecBuilder, site: int, g: int, leaf: int) -> int:
    """The site of part ``leaf`` of split group ``g``, given the site that held ``g`` whole."""
    table = _sites(b)
    for _, _, part in b.segments.get(b.find(g), []):
        if b.find(part) == b.find(leaf):
            return table[(site, part)]
        if b.find(part) in b.segments and any(b.find(x) == b.find(leaf) for _, _, x in leaves(b, part)):
            return part_site(b, table[(site, part)], part, leaf)
    raise UnsupportedLayerError("", "split of a unit axis", "internal: no site holds a part of a split output")


def _refuse(where: str, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(where, "split of a unit axis", why)


def split_group(b: SpecBuilder, where: str, g: int, cuts: list[int]) -> None:
    """Make offsets ``cuts`` (relative to ``g``'s first unit) part boundaries of ``g``, refining parts."""
    r = b.find(g)
    n = b.size(r)
    inner = sorted({c for c in cuts if 0 < c < n})
    if not inner:
        return
    if r in b.segments:
        for s, size, part in b.segments[r]:
            split_group(b, where, part, [c - s for c in inner if s < c < s + size])
        return
    _check_fresh(b, where, r)
    bounds = [0, *inner, n]
    grp = b.groups[r]
    parts = [b.new_group(hi - lo, grp.kind, f"{grp.name}[{lo}:{hi}]") for lo, hi in zip(bounds, bounds[1:])]
    _rewrite(b, where, r, parts)
    b.segments[r] = [(lo, hi - lo, p) for lo, hi, p in zip(bounds, bounds[1:], parts)]


def _check_fresh(b: SpecBuilder, where: str, r: int) -> None:
    grp = b.groups[r]
    if grp.fixed or r in b.defs:
        raise _refuse(where, "splits units that are fixed or fixed inside heads")
    if grp.parent is not None or any(h.parent is not None and b.find(h.parent) == r for h in b.groups):
        raise _refuse(where, "splits units that are already split into heads or blocks")
    if any(b.find(i) == r for i in range(len(b.groups)) if i != r):
        raise _refuse(where, "splits units that other tensors share (residual, product or tied units)")


def _rewrite(b: SpecBuilder, where: str, r: int, parts: list[int]) -> None:
    k = len(parts)
    shifted: dict[str, tuple[int, int]] = {}  # tensor -> (axis, segment index) of the split group
    for t in b.tensors.values():
        for a, ax in enumerate(t.axes):
            for j, seg in enumerate(ax):
                if not any(f[0] is not None and b.find(f[0]) == r for f in seg):
                    continue
                if len(seg) != 1 or len(seg[0]) != 2 or t.name in shifted:
                    raise _refuse(where, f"tensor '{t.name}' holds the units in a composite axis")
                shifted[t.name] = (a, j)
        if t.name in shifted:
            a, j = shifted[t.name]
            ax = t.axes[a]
            new_ax = ax[:j] + tuple(((p, b.size(p)),) for p in parts) + ax[j + 1:]
            t.axes = t.axes[:a] + (new_ax,) + t.axes[a + 1:]
    sites = [s for s in range(len(b.sites)) if b.find(b.site_group(s)) == r]
    site_map: dict[int, list[int]] = {}
    for s in sites:
        info = b.sites[s]
        site_map[s] = [s]
        for p in parts[1:]:
            new = b.new_site(p, info["name"], info["kind"], info["depth"])
            b.site_slots[new] = set(b.site_slots[s])
            site_map[s].append(new)
        info["group"] = parts[0]
        for p, new in zip(parts, site_map[s]):
            _sites(b)[(s, p)] = new

    def part_of(part: tuple[int, ...], t: str, i: int) -> tuple[int, ...]:
        a, j = shifted[t]
        return part[:a] + (part[a] + i,) + part[a + 1:]

    def moved(part: tuple[int, ...], t: str) -> tuple[int, ...]:
        a, j = shifted[t]
        return part_of(part, t, k - 1) if part and part[a] > j else part

    conns = []
    for c in b.connections:
        ends = (c.src in site_map, c.dst in site_map)
        if c.tensor in shifted and c.part and c.part[shifted[c.tensor][0]] == shifted[c.tensor][1]:
            if ends[0] and ends[1]:
                raise _refuse(where, f"tensor '{c.tensor}' connects the units to themselves")
            for i in range(k):
                conns.append(dataclasses.replace(
                    c, part=part_of(c.part, c.tensor, i),
                    src=site_map[c.src][i] if ends[0] else c.src, dst=site_map[c.dst][i] if ends[1] else c.dst))
        elif c.tensor is None and any(ends):
            if not all(ends):
                raise _refuse(where, f"the units are joined to other units by a '{c.kind}' edge")
            conns.extend(dataclasses.replace(c, src=site_map[c.src][i], dst=site_map[c.dst][i]) for i in range(k))
        elif any(ends):
            raise _refuse(where, f"tensor '{c.tensor}' reaches the units without indexing them")
        else:
            conns.append(dataclasses.replace(c, part=moved(c.part, c.tensor)) if c.tensor in shifted else c)
    b.connections = conns
    params = []
    for p in b.node_params:
        if p.tensor in shifted and p.part[shifted[p.tensor][0]] == shifted[p.tensor][1]:
            if p.site not in site_map:
                raise _refuse(where, f"tensor '{p.tensor}' is a node feature of other units")
            params.extend(dataclasses.replace(p, site=site_map[p.site][i], part=part_of(p.part, p.tensor, i))
                          for i in range(k))
        elif p.site in site_map:
            raise _refuse(where, f"tensor '{p.tensor}' on the units does not follow them")
        else:
            params.append(dataclasses.replace(p, part=moved(p.part, p.tensor)) if p.tensor in shifted else p)
    b.node_params = params
