"""Probe features: what each network of a zoo outputs on a fixed set of synthetic inputs.

A network's function is invariant to every neuron permutation of its weights,
so its outputs on inputs chosen *independently of the weights* are invariant
features. Neural-graph meta-models (Kofinas et al. 2024) use such "probe
features"; here they feed the invariant head of a meta-model next to its
pooled weight embedding (``model.probes`` in a training config).

Probes are synthetic, never data: ``num`` inputs of the architecture's
``input_shape`` in ``[-1, 1]`` (the range the bundled zoos normalize their
inputs to) -- uniform noise, low-frequency noise and binary images
(:func:`probe_inputs`) -- from a seeded generator, so every run, split and
user-side prediction uses the same ones. No image, label or statistic of any
data set enters them.

:func:`probe_outputs` runs every row of a zoo view on the probes, one
``torch.func.vmap`` over the stacked weights of each architecture (eval mode:
no dropout, BatchNorm uses its running statistics), and returns
``(N, num, out)`` logits. :func:`~wsl.nn.probed.probe_summary` turns logits
into the ``(N, num * out + 2)`` vector the head sees: log-softmax per probe,
clipped, plus the log of the mean logit scale and the fraction of probes
assigned to the most frequent class.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from wsl.errors import WslError
from wsl.nn.probed import probe_summary

__all__ = ["PROBE_KINDS", "ProbeBatch", "ProbeError", "ProbeNets", "arch_input_shape", "canonical_shape",
           "module_probe_outputs", "probe_features", "probe_inputs", "probe_outputs", "view_probe_shape",
           "zoo_probe_shape"]


class ProbeError(WslError):
    """A network that cannot be run on probe inputs (no input shape, wrong output, non-finite outputs)."""


PROBE_KINDS = ("mixed", "uniform", "strokes", "mixed+strokes")


def _smooth(n: int, shape: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """Uniform noise at half resolution, interpolated up (low-frequency patterns)."""
    import torch.nn.functional as F

    shape = [int(s) for s in shape]
    chans, spatial = (shape[0], shape[1:]) if len(shape) >= 2 else (1, shape)
    if not 1 <= len(spatial) <= 3:
        return torch.rand((n, *shape), generator=g) * 2.0 - 1.0
    low = torch.rand((n, chans, *[max(1, (d + 1) // 2) for d in spatial]), generator=g) * 2.0 - 1.0
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    return F.interpolate(low, size=tuple(spatial), mode=mode, align_corners=False).reshape(n, *shape)


def _strokes(n: int, shape: Sequence[int], g: torch.Generator, up: int = 4) -> torch.Tensor:
    """Pen strokes: 1-4 random quadratic Bezier curves drawn on a canvas ``up`` times finer, area-pooled.

    This is how handwriting bitmaps become gray-level images (NIST digits are
    32x32 bitmaps counted in 4x4 blocks). Background -1, ink +1; on a colour
    input every channel gets the same strokes at its own random intensity.
    Shapes without two spatial axes get low-frequency noise instead.
    """
    import torch.nn.functional as F

    shape = [int(s) for s in shape]
    if len(shape) != 3 or min(shape[1:]) < 2:
        return _smooth(n, shape, g)
    chans, h, w = shape
    H, W = h * up, w * up
    ys = torch.arange(H, dtype=torch.float32).view(1, H, 1) + 0.5
    xs = torch.arange(W, dtype=torch.float32).view(1, 1, W) + 0.5
    t = torch.linspace(0, 1, max(48, 2 * max(H, W))).view(-1, 1)
    size = torch.tensor([H, W], dtype=torch.float32)
    out = torch.empty(n, chans, h, w)
    for i in range(n):
        canvas = torch.zeros(H, W)
        for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
            pts = (torch.rand(3, 2, generator=g) * 0.9 + 0.05) * size  # control points, inside a 5% margin
            curve = (1 - t) ** 2 * pts[0] + 2 * (1 - t) * t * pts[1] + t ** 2 * pts[2]
            radius = (0.047 + 0.047 * float(torch.rand((), generator=g))) * min(H, W)
            d2 = (ys - curve[:, 0].view(-1, 1, 1)) ** 2 + (xs - curve[:, 1].view(-1, 1, 1)) ** 2
            canvas = torch.maximum(canvas, (d2.amin(0) <= radius * radius).float())
        ink = F.avg_pool2d(canvas.view(1, 1, H, W), up).view(1, h, w)
        level = torch.ones(chans, 1, 1) if chans == 1 else torch.rand(chans, 1, 1, generator=g)
        out[i] = ink * level * 2.0 - 1.0
    return out


def probe_inputs(shape: Sequence[int], num: int, seed: int = 0, kind: str = "mixed") -> torch.Tensor:
    """``(num, *shape)`` float32 synthetic probes in ``[-1, 1]`` from a seeded CPU generator.

    ``kind="uniform"``: i.i.d. uniform entries. ``kind="mixed"`` (default): a
    third uniform noise, a third low-frequency noise (half-resolution uniform
    noise, interpolated up), the rest binary images (each entry +1 with
    probability 0.3, else -1). ``kind="strokes"``: random pen strokes
    (:func:`_strokes`). ``kind="mixed+strokes"``: the first ``num // 2`` are
    the ``mixed`` probes of that count, the rest strokes. No data set is
    involved in any of them.
    """
    if num < 1:
        raise ProbeError(f"number of probes must be >= 1, got {num}")
    if not shape or any(int(s) < 1 for s in shape):
        raise ProbeError(f"probe input shape must be positive sizes, got {list(shape)}")
    if kind not in PROBE_KINDS:
        raise ProbeError(f"probe kind must be one of {', '.join(PROBE_KINDS)}, got {kind!r}")
    shape = [int(s) for s in shape]
    g = torch.Generator().manual_seed(int(seed))
    if kind == "uniform":
        return torch.rand((num, *shape), generator=g) * 2.0 - 1.0
    if kind == "strokes":
        return _strokes(num, shape, g)
    if kind == "mixed+strokes":
        if num < 2:
            raise ProbeError(f"probe kind 'mixed+strokes' needs at least 2 probes, got {num}")
        half = num // 2
        return torch.cat([probe_inputs(shape, half, seed, "mixed"), probe_inputs(shape, num - half, seed + 1, "strokes")])
    k = num // 3
    noise = torch.rand((k, *shape), generator=g) * 2.0 - 1.0
    smooth = _smooth(k, shape, g)
    binary = torch.where(torch.rand((num - 2 * k, *shape), generator=g) > 0.7, 1.0, -1.0)
    return torch.cat([noise, smooth, binary])


def _check_out(out: torch.Tensor, where: str) -> torch.Tensor:
    if out.dim() != 3:
        raise ProbeError(f"{where}: probe outputs must be (models, probes, classes), got shape {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).flatten(1).any(1).sum())
        raise ProbeError(f"{where}: {bad} network(s) give non-finite outputs on the probes")
    return out


class ProbeBatch:
    """Networks of one batch as functions: ``batch(probes)`` -> ``(B, P, out)`` logits, differentiable in ``probes``.

    ``parts`` are ``(module, input_shape, stacked weights, positions in the batch)``
    per architecture; ``probes`` (``(P, *canonical shape)``) are reshaped to each
    architecture's input. Used by learned probes (:class:`~wsl.nn.probed.ProbeFusion`).
    """

    def __init__(self, parts: list[tuple[nn.Module, list[int], dict[str, torch.Tensor], torch.Tensor]],
                 size: int) -> None:
        self.parts, self.size = parts, size

    def __len__(self) -> int:
        return self.size

    def __call__(self, probes: torch.Tensor) -> torch.Tensor:
        from torch.func import functional_call, vmap

        outs, where = [], []
        for module, shape, stacked, pos in self.parts:
            ref = next((v for v in stacked.values() if v.is_floating_point()), probes)
            x = probes.reshape(probes.shape[0], *shape).to(ref.device, ref.dtype)
            names = list(stacked)

            def one(*tensors: torch.Tensor, _m: nn.Module = module, _n: list[str] = names,
                    _x: torch.Tensor = x) -> torch.Tensor:
                return functional_call(_m, dict(zip(_n, tensors)), (_x,))

            was = module.training
            module.eval()  # probes see the network as it predicts: no dropout, BatchNorm running statistics
            try:
                out = vmap(one)(*[stacked[k] for k in names])
            finally:
                module.train(was)
            out = out.reshape(len(pos), probes.shape[0], -1).to(probes.device, probes.dtype)
            if outs and out.shape[2] != outs[0].shape[2]:
                raise ProbeError(f"{type(module).__name__}: {out.shape[2]} outputs per probe, other networks of the "
                                 f"batch have {outs[0].shape[2]}")
            outs.append(out)
            where.append(pos)
        out = torch.cat(outs, 0)
        return out[torch.argsort(torch.cat(where)).to(out.device)]


class ProbeNets:
    """Every network of a split (or one module) as a function, sliceable into :class:`ProbeBatch` es.

    ``nets[idx]`` (positions: a long tensor or a slice) -> the batch of those
    networks in that order. Weights are the raw (untransformed) float32 weights.
    """

    def __init__(self, groups: list[tuple[nn.Module, list[int], dict[str, torch.Tensor]]], group_of: torch.Tensor,
                 local: torch.Tensor) -> None:
        self.groups, self.group_of, self.local = groups, group_of, local

    def __len__(self) -> int:
        return int(self.group_of.numel())

    @classmethod
    def from_view(cls, view: Any, device: torch.device | str | None = None,
                  shape: Sequence[int] | None = None, arch: str | None = None) -> "ProbeNets":
        """The rows of a zoo view (only those of architecture ``arch`` if given, in view order)."""
        archs = view.column("arch")
        store = view.store
        if shape is None:
            shape = view_probe_shape(view)
        ids = list(dict.fromkeys(archs.tolist())) if arch is None else [arch]
        keep = np.ones(len(archs), dtype=bool) if arch is None else archs == arch
        order = np.cumsum(keep) - 1  # position of each kept row among the kept ones
        groups: list[tuple[nn.Module, list[int], dict[str, torch.Tensor]]] = []
        group_of = torch.empty(int(keep.sum()), dtype=torch.long)
        local = torch.empty(int(keep.sum()), dtype=torch.long)
        for aid in ids:
            rows = np.flatnonzero(archs == aid)
            module = store.build(aid).to(device)
            for p in module.parameters():
                p.requires_grad_(False)
            own = arch_input_shape(store.card, aid, module)
            if int(np.prod(own)) != int(np.prod(shape)):
                raise ProbeError(f"{view.root}: architecture {aid}: input shape {own} does not hold probes of "
                                 f"shape {list(shape)}")
            stacked = {k: v.to(torch.float32) if v.is_floating_point() else v
                       for k, v in view.stacked(rows, device=device).items()}
            at = torch.from_numpy(order[rows])
            group_of[at], local[at] = len(groups), torch.arange(len(rows))
            groups.append((module, own, stacked))
        return cls(groups, group_of, local)

    @classmethod
    def of_module(cls, module: nn.Module, input_shape: Sequence[int]) -> "ProbeNets":
        """One network (its own weights), probes reshaped to its ``wsl_input_shape`` when that fits
        (else ``input_shape``, else flattened); raises :class:`ProbeError` if it runs on none of them."""
        own = getattr(module, "wsl_input_shape", None)
        fits = own and int(np.prod(own)) == int(np.prod(input_shape))
        shapes = [[int(s) for s in own]] if fits else [[int(s) for s in input_shape], [int(np.prod(input_shape))]]
        ref = next(module.parameters(), None)
        shape, err = None, None
        was = module.training
        module.eval()
        try:
            for cand in shapes:
                try:
                    with torch.no_grad():
                        module(torch.zeros(2, *cand, device=ref.device if ref is not None else None,
                                           dtype=ref.dtype if ref is not None else torch.float32))
                    shape = cand
                    break
                except Exception as exc:  # noqa: BLE001 -- any failure means "not this shape"
                    err = exc
        finally:
            module.train(was)
        if shape is None:
            raise ProbeError(f"{type(module).__name__}: cannot run on probe inputs of shape {list(input_shape)}: {err}")
        stacked = {k: v.detach().unsqueeze(0).float() if v.is_floating_point() else v.unsqueeze(0)
                   for k, v in module.state_dict().items()}
        return cls([(module, shape, stacked)], torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))

    def __getitem__(self, idx: Any) -> ProbeBatch:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long).cpu().reshape(-1)
        gid, loc = self.group_of[idx], self.local[idx]
        parts = []
        for g in torch.unique(gid).tolist():
            sel = torch.nonzero(gid == g).reshape(-1)
            module, shape, stacked = self.groups[g]
            li = loc[sel]
            parts.append((module, shape, {k: v[li.to(v.device)] for k, v in stacked.items()}, sel))
        return ProbeBatch(parts, int(idx.numel()))


def arch_input_shape(card: dict[str, Any], aid: str, module: nn.Module | None = None) -> list[int]:
    """The input shape of zoo architecture ``aid``: its description's, else the built module's
    ``wsl_input_shape``, else the zoo dataset's."""
    shape = (card["architectures"][aid]["arch"].get("input_shape") or getattr(module, "wsl_input_shape", None)
             or (card.get("dataset") or {}).get("input_shape"))
    if not shape:
        raise ProbeError(f"zoo {card.get('name')!r}: architecture {aid}: neither its description nor the zoo's "
                         "dataset gives an input_shape; probe features need one")
    return [int(s) for s in shape]


def canonical_shape(card: dict[str, Any], shapes: Sequence[Sequence[int]]) -> list[int]:
    """The shape probes are drawn in: the zoo dataset's input shape, else the first architecture's.

    Every architecture's input must have as many elements (an MLP on flattened
    8x8 images reads the same probes as a CNN, reshaped).
    """
    ds = (card.get("dataset") or {}).get("input_shape")
    canon = [int(s) for s in (ds or shapes[0])]
    bad = [list(s) for s in shapes if int(np.prod(s)) != int(np.prod(canon))]
    if bad:
        raise ProbeError(f"zoo {card.get('name')!r}: probe features need inputs of {int(np.prod(canon))} elements "
                         f"(shape {canon}); architectures take {bad}")
    return canon


def zoo_probe_shape(store: Any, arch_ids: Sequence[str]) -> list[int]:
    """:func:`canonical_shape` for the given architectures of a zoo store (``zoo.store``)."""
    return canonical_shape(store.card, [arch_input_shape(store.card, a, store.build(a)) for a in arch_ids])


def view_probe_shape(view: Any) -> list[int]:
    """:func:`zoo_probe_shape` for the architectures of a zoo or zoo view's rows."""
    return zoo_probe_shape(view.store, list(dict.fromkeys(view.column("arch").tolist())))


def probe_outputs(view: Any, num: int = 32, seed: int = 0, device: torch.device | str | None = None,
                  chunk: int = 256, shape: Sequence[int] | None = None, kind: str = "mixed",
                  inputs: torch.Tensor | None = None) -> torch.Tensor:
    """``(len(view), num, out)`` float32 logits of every row of a zoo view on :func:`probe_inputs`.

    Probes are drawn in ``shape`` (default :func:`canonical_shape`) and
    reshaped to each architecture's input; ``inputs`` (``(P, *shape)``, e.g.
    from :func:`wsl.tasks.inversion.probe_set`) replaces the drawn probes. Rows are run one architecture at a
    time (a :class:`ProbeNets` of its rows, one vectorized call per ``chunk``
    rows, no gradients); the result follows the view's row order.
    """
    archs = view.column("arch")
    store = view.store
    ids = list(dict.fromkeys(archs.tolist()))
    canon = list(shape) if shape is not None else zoo_probe_shape(store, ids)
    base = (probe_inputs(canon, num, seed, kind) if inputs is None else _fixed(inputs, canon)).to(device)
    num = int(base.shape[0])
    out: torch.Tensor | None = None
    for aid in ids:
        pos = torch.from_numpy(np.flatnonzero(archs == aid))
        where = f"{view.root}: architecture {aid}"
        nets = ProbeNets.from_view(view, device, shape=canon, arch=aid)
        with torch.no_grad():
            part = _check_out(torch.cat([nets[lo:lo + chunk](base) for lo in range(0, len(nets), chunk)]).float(),
                              where)
        if out is None:
            out = torch.empty(len(view), num, part.shape[2], device=part.device)
        elif part.shape[2] != out.shape[2]:
            raise ProbeError(f"{where}: {part.shape[2]} outputs, other architectures of the view have {out.shape[2]}")
        out[pos.to(part.device)] = part
    assert out is not None
    return out


def probe_features(view: Any, num: int = 32, seed: int = 0, device: torch.device | str | None = None,
                   shape: Sequence[int] | None = None, kind: str = "mixed",
                   inputs: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`probe_summary` of :func:`probe_outputs`: the ``(N, num * out + 2)`` head input of a zoo view."""
    return probe_summary(probe_outputs(view, num, seed, device, shape=shape, kind=kind, inputs=inputs))


def _fixed(inputs: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Given probe inputs, checked to hold ``(P, *shape)`` elements, as float32 of that shape."""
    per = int(np.prod(shape))
    if inputs.dim() < 1 or inputs.shape[0] < 1 or inputs[0].numel() != per:
        raise ProbeError(f"probe inputs of shape {tuple(inputs.shape)} do not hold probes of shape {list(shape)}")
    return inputs.detach().float().reshape(inputs.shape[0], *[int(s) for s in shape])


def module_probe_outputs(module: nn.Module, input_shape: Sequence[int], num: int = 32,
                         seed: int = 0, kind: str = "mixed", inputs: torch.Tensor | None = None) -> torch.Tensor:
    """``(1, num, out)`` logits of one module on the probes drawn in ``input_shape`` (user-side prediction).

    The input-shape rule is :meth:`ProbeNets.of_module`'s: the module's
    ``wsl_input_shape`` when it holds as many elements, else ``input_shape``,
    else the probes flattened. ``inputs`` replaces the drawn probes (as in :func:`probe_outputs`).
    """
    nets = ProbeNets.of_module(module, input_shape)
    x = probe_inputs(input_shape, num, seed, kind) if inputs is None else _fixed(inputs, input_shape)
    with torch.no_grad():
        return _check_out(nets[0:1](x).float(), type(module).__name__)
