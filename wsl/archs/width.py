"""Width families: one architecture built at any fraction of its hidden widths.

A *width family* is a registered architecture whose permutable unit groups can
be resized while the input and output groups stay fixed. It is described by
*knobs*: the constructor arguments that set hidden widths
(:mod:`wsl.archs.width_knobs`). For ``mlp`` every hidden entry of ``sizes`` is
a knob (one group each), for ``small_cnn`` every entry of ``channels`` (one
group each), for ``resnet`` the single ``width`` argument (stage ``i`` has
``width * 2**i`` planes, so one knob moves every group of the network). The
ViT and BERT ports have ``mlp`` (feed-forward size of every layer) and
``heads`` (whole heads) and/or ``head_dim`` (units inside each head), chosen
by ``heads="count" | "dim" | "both"``; their residual width stays fixed.

A width is asked for as one global ratio ``r`` (every knob), a mapping
``{knob: r_k}`` (unnamed knobs stay at 1) or a sequence of ratios, one per
knob. A knob of base size ``n`` becomes ``max(1, floor(r * n + 1/2))`` units
(``max(2, ...)`` for ``head_dim``).

Group ids of the :class:`~wsl.space.WeightSpace` of a family member are the
trace order of the module, which does not depend on the widths; the family
checks that every member has the same groups (kinds and names) as the base, so
group ``g`` of a narrow member *is* group ``g`` of the base, with fewer units.
:meth:`WidthFamily.knob_groups` finds which groups each knob resizes by
building the base with that knob alone enlarged by one unit.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from wsl.archs.width_knobs import HEAD_MODES, family_knobs, set_path
from wsl.archs.width_knobs import supported as _supported
from wsl.errors import ArchitectureError
from wsl.space import WeightSpace

Ratio = float | Mapping[str, float] | Sequence[float]

MAX_RATIO = 4.0
"""Largest accepted width ratio (wider than the base is extrapolation)."""


def supported() -> tuple[str, ...]:
    """Builtin architecture names that have a width family."""
    return _supported()


class WidthFamily:
    """An architecture at every width (see module docstring).

    ``arch`` is a ``"wsl.arch/1"`` builtin description (``module.wsl_arch``);
    ``heads`` (``"count"``, ``"dim"`` or ``"both"``) chooses how a transformer
    port's attention is resized (:mod:`wsl.archs.width_knobs`).
    """

    def __init__(self, arch: Mapping[str, Any], heads: str = "count") -> None:
        if not isinstance(arch, Mapping) or arch.get("kind") != "builtin":
            raise ArchitectureError("WidthFamily: expected a builtin 'wsl.arch/1' description "
                                    f"(module.wsl_arch), got {type(arch).__name__} {str(arch)[:80]!r}")
        name = arch.get("name")
        if name not in supported():
            raise ArchitectureError(f"WidthFamily: architecture {name!r} has no width family; "
                                    f"supported: {', '.join(supported())}")
        if heads not in HEAD_MODES:
            raise ArchitectureError(f"WidthFamily: heads must be one of {', '.join(HEAD_MODES)}, got {heads!r}")
        self.arch = copy.deepcopy(dict(arch))
        self.name: str = str(name)
        self.heads = heads
        knobs, kwargs = family_knobs(self.name, dict(self.arch.get("kwargs", {})), heads)
        self.arch["kwargs"] = kwargs
        if not knobs:
            raise ArchitectureError(f"WidthFamily: {self.name} has no hidden width to resize")
        self._knobs = tuple(knobs)
        self.knobs: tuple[str, ...] = tuple(k.name for k in knobs)
        self.base: tuple[int, ...] = tuple(k.base for k in knobs)
        self._spaces: dict[tuple[int, ...], WeightSpace] = {}
        self._knob_groups: dict[str, tuple[int, ...]] | None = None

    @classmethod
    def from_module(cls, module: nn.Module, heads: str = "count") -> "WidthFamily":
        """The family of a module built by a registered factory (reads ``wsl_arch``)."""
        arch = getattr(module, "wsl_arch", None)
        if arch is None:
            raise ArchitectureError(f"WidthFamily: {type(module).__name__} carries no wsl_arch description; "
                                    f"build it with a wsl.archs factory ({', '.join(supported())})")
        return cls(arch, heads)

    def ratios(self, ratio: Ratio) -> tuple[float, ...]:
        """One ratio per knob from a global ratio, a ``{knob: ratio}`` mapping or a sequence."""
        if isinstance(ratio, Mapping):
            unknown = sorted(set(ratio) - set(self.knobs))
            if unknown:
                raise ArchitectureError(f"WidthFamily({self.name}): unknown knob(s) {unknown}; "
                                        f"knobs: {', '.join(self.knobs)}")
            out = tuple(float(ratio.get(k, 1.0)) for k in self.knobs)
        elif isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            out = (float(ratio),) * len(self.knobs)
        elif isinstance(ratio, Sequence) and not isinstance(ratio, str):
            if len(ratio) != len(self.knobs):
                raise ArchitectureError(f"WidthFamily({self.name}): {len(ratio)} ratios for "
                                        f"{len(self.knobs)} knobs ({', '.join(self.knobs)})")
            out = tuple(float(r) for r in ratio)
        else:
            raise ArchitectureError(f"WidthFamily({self.name}): width ratio must be a number, a mapping or a "
                                    f"sequence, got {type(ratio).__name__}")
        for k, r in zip(self.knobs, out):
            if not (0.0 < r <= MAX_RATIO) or math.isnan(r):
                raise ArchitectureError(f"WidthFamily({self.name}): ratio {r} for {k} outside (0, {MAX_RATIO}]")
        return out

    def widths(self, ratio: Ratio) -> tuple[int, ...]:
        """Unit counts per knob: ``max(m, floor(r * base + 1/2))`` (``m`` = 1, or 2 for ``head_dim``)."""
        return tuple(max(k.minimum, math.floor(r * k.base + 0.5)) for r, k in zip(self.ratios(ratio), self._knobs))

    def describe(self, widths: Sequence[int]) -> dict[str, Any]:
        """The builtin description of the member with these knob widths."""
        if len(widths) != len(self.knobs) or any(int(w) < k.minimum for w, k in zip(widths, self._knobs)):
            raise ArchitectureError(f"WidthFamily({self.name}): need {len(self.knobs)} widths of at least "
                                    f"{[k.minimum for k in self._knobs]}, got {list(widths)}")
        arch = copy.deepcopy(self.arch)
        kw = arch.setdefault("kwargs", {})
        for k, w in zip(self._knobs, widths):
            set_path(kw, k.path, int(w))
        return arch

    def build_widths(self, widths: Sequence[int]) -> nn.Module:
        """Build the member with explicit knob widths (freshly initialised)."""
        from wsl.archs.describe import build

        return build(self.describe(widths))

    def build(self, ratio: Ratio = 1.0) -> nn.Module:
        """Build the member at ``ratio`` (freshly initialised)."""
        return self.build_widths(self.widths(ratio))

    def space_widths(self, widths: Sequence[int]) -> WeightSpace:
        """WeightSpace of a member (cached per widths); its groups match the base's one to one."""
        key = tuple(int(w) for w in widths)
        if key not in self._spaces:
            space = WeightSpace.from_module(self.build_widths(key))
            if self._spaces or key != self.base:
                ref = self.space_widths(self.base).spec.groups if key != self.base else space.spec.groups
                got = space.spec.groups
                if [(g.kind, g.name, g.fixed, g.parent) for g in got] != [(g.kind, g.name, g.fixed, g.parent)
                                                                         for g in ref]:
                    raise ArchitectureError(f"WidthFamily({self.name}): the member with widths {list(key)} "
                                            "has different unit groups than the base; cannot match its units")
            self._spaces[key] = space
        return self._spaces[key]

    def space(self, ratio: Ratio = 1.0) -> WeightSpace:
        """WeightSpace of the member at ``ratio``."""
        return self.space_widths(self.widths(ratio))

    def knob_groups(self) -> dict[str, tuple[int, ...]]:
        """Group ids each knob resizes (found by growing that knob alone by one unit)."""
        if self._knob_groups is None:
            base = [g.size for g in self.space_widths(self.base).spec.groups]
            out: dict[str, tuple[int, ...]] = {}
            for i, k in enumerate(self.knobs):
                grown = list(self.base)
                grown[i] += 1
                sizes = [g.size for g in self.space_widths(grown).spec.groups]
                out[k] = tuple(g for g, (a, b) in enumerate(zip(base, sizes)) if a != b)
            self._knob_groups = out
        return self._knob_groups

    def __repr__(self) -> str:
        knobs = ", ".join(f"{k}={n}" for k, n in zip(self.knobs, self.base))
        return f"WidthFamily({self.name}: {knobs})"
