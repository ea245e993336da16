"""The generalization-prediction task: zoo rows -> model inputs + targets, per split.

Target (``target``): ``"test_accuracy"`` (default), ``"gap"`` (``train_accuracy
- test_accuracy``) or any numeric metadata field. Rows whose target is
missing are dropped. Checkpoints (``checkpoints``): ``"last"`` -- the final
epoch of every model (:meth:`Zoo.latest`) -- or ``"all"``. Splits come from
the zoo's ``split`` field; all checkpoints of a model share it.

Inputs, built ONCE per split (:func:`prepare_split`) and sliced per batch:

``"features"``  :class:`~wsl.graph.WeightSpaceFeatures` (dense NP/HNP/NFT
                models; one architecture per split).
``"graph"``     PyG batches of :class:`~wsl.graph.ParameterGraph` (graph models;
                any mix of architectures; a batch is ordered by architecture).
``"stats"``     StatNN feature vectors (:mod:`wsl.tasks.statnn`).

Augmentation (training batches only, :func:`augment_stacked`) acts in weight
space: a uniformly random element of each network's permutation group
(``permute``) and Gaussian noise with std ``noise`` times the std of each
tensor of each model (``noise``). Dense features are permuted/noised directly
(:func:`augment_features`); augmented graph and statistics batches are
rebuilt from augmented weights (:func:`augment_stacked`); un-augmented
batches slice the prebuilt inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wsl.errors import ConfigError, WslError

__all__ = ["INPUT_KINDS", "TRANSFORMS", "ArchGroup", "SplitData", "augment_features", "augment_stacked",
           "prepare_split", "select_rows", "target_values", "transform_weights"]

INPUT_KINDS = ("features", "graph", "stats")
TRANSFORMS = ("none", "signed_log")


def transform_weights(stacked: dict[str, torch.Tensor], transform: str = "none",
                      scale: float = 1e-3) -> dict[str, torch.Tensor]:
    """An elementwise input transform of every floating tensor (so it commutes with permutations).

    ``signed_log``: ``sign(w) * log1p(|w| / scale)`` -- weights of networks in a
    zoo span orders of magnitude (initial scales 1e-3 .. 0.5); the transform
    keeps their sign and order while making scale differences additive.
    """
    if transform == "none":
        return stacked
    if transform != "signed_log":
        raise ConfigError(f"data.transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
    return {k: (torch.sign(v) * torch.log1p(v.abs() / scale) if v.is_floating_point() else v)
            for k, v in stacked.items()}


class TaskError(WslError):
    """A zoo selection that cannot serve as generalization-prediction data."""


def target_values(view: Any, target: str) -> np.ndarray:
    """Target per row of a zoo view (float64; NaN where a field is null)."""
    if target == "gap":
        return view.column("train_accuracy").astype(np.float64) - view.column("test_accuracy").astype(np.float64)
    col = view.column(target)
    if col.dtype == object or col.dtype == bool:
        raise ConfigError(f"{view.root}: data.target {target!r} is not a numeric field")
    return col.astype(np.float64)


def select_rows(zoo: Any, split: str, checkpoints: str = "last", target: str = "test_accuracy",
                arch: str | None = None, max_rows: int | None = None, seed: int = 0) -> Any:
    """The rows of ``split`` used for the task (checkpoint choice, arch filter, non-null target)."""
    if checkpoints not in ("last", "all"):
        raise ConfigError(f"data.checkpoints must be 'last' or 'all', got {checkpoints!r}")
    view = zoo.split(split)
    if arch is not None:
        view = view.filter(arch=arch)
    if checkpoints == "last":
        view = view.latest()
    if len(view):
        y = target_values(view, target)
        view = view[np.flatnonzero(np.isfinite(y))]
    if max_rows is not None and len(view) > max_rows:
        keep = np.sort(np.random.default_rng(seed).permutation(len(view))[:max_rows])
        view = view[keep]
    return view


@dataclass
class ArchGroup:
    """The rows of one weight space (architecture signature) inside a split."""

    arch_id: str  #: the zoo arch id(s) of these rows, comma-separated
    space: Any
    pos: torch.Tensor  #: positions of these rows within the split (long, CPU)
    stacked: dict[str, torch.Tensor]  #: their tensors, on the data device
    cache: Any = None  #: prebuilt inputs (features / graph parts / None)


@dataclass
class SplitData:
    """One split, ready for a model family (see module docstring)."""

    name: str
    kind: str
    y: torch.Tensor  #: raw targets (float32, on the data device)
    rows: np.ndarray  #: global zoo row ids
    groups: list[ArchGroup]
    stats: torch.Tensor | None = None  #: StatNN features for kind "stats"
    stats_layout: str = "per_tensor"
    info: dict[str, Any] = field(default_factory=dict)
    #: probe features (N, F) per row (:mod:`wsl.tasks.probes`), the rows' ProbeNets (learned probes), or None
    probes: Any = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def inputs(self, idx: torch.Tensor, augment: Any = None,
               generator: torch.Generator | None = None) -> tuple[Any, torch.Tensor]:
        """Model input for split positions ``idx`` and the order of its rows (positions).

        ``augment`` (an :class:`~wsl.train.config.AugmentConfig` or None) and
        ``generator`` (a CPU generator) control weight-space augmentation.
        With probe features the input is a :class:`~wsl.nn.probed.Probed` pair
        (probe features come from the un-augmented weights: a permutation does
        not change them; weight noise is not propagated to them).
        """
        x, order = self._inputs(idx, augment, generator)
        if self.probes is None:
            return x, order
        from wsl.nn.probed import Probed

        pr = self.probes
        return Probed(x, pr[order.to(pr.device)] if isinstance(pr, torch.Tensor) else pr[order]), order

    def _inputs(self, idx: torch.Tensor, augment: Any = None,
                generator: torch.Generator | None = None) -> tuple[Any, torch.Tensor]:
        idx = idx.to(torch.long).cpu()
        aug = augment is not None and (augment.permute or augment.noise > 0)
        if self.kind == "stats":
            if not aug or augment.noise <= 0:
                return self.stats[idx.to(self.stats.device)], idx
            return self._per_group(idx, lambda g, sel, sd: _stats_of(g, sd, self.stats_layout), augment, generator,
                                   join=lambda parts: torch.cat(parts, 0))
        if self.kind == "features":
            from wsl.graph import WeightSpaceFeatures

            g = self.groups[0]
            sel = idx.to(g.cache.blocks[next(iter(g.cache.blocks))].device)
            feats = WeightSpaceFeatures(g.space, {k: t[sel] for k, t in g.cache.blocks.items()},
                                        {k: t[sel] for k, t in g.cache.extras.items()})
            return (augment_features(feats, augment, generator) if aug else feats), idx
        return self._per_group(idx, lambda g, sel, sd: _graph_of(g, sel, sd), augment if aug else None, generator,
                               join=_join_graphs)

    def _per_group(self, idx: torch.Tensor, make: Any, augment: Any, generator: Any, join: Any) -> tuple[Any, torch.Tensor]:
        parts, order = [], []
        for g in self.groups:
            mask = torch.isin(idx, g.pos) if len(self.groups) > 1 else torch.ones(len(idx), dtype=torch.bool)
            sel_pos = idx[mask]
            if not len(sel_pos):
                continue
            local = torch.searchsorted(g.pos, sel_pos) if len(self.groups) > 1 else sel_pos
            sd = None
            if augment is not None:
                sd = augment_stacked(g.space, {k: t[local.to(t.device)] for k, t in g.stacked.items()}, augment,
                                     generator)
            parts.append(make(g, local, sd))
            order.append(sel_pos)
        return join(parts), torch.cat(order)


def _stats_of(g: ArchGroup, sd: dict[str, torch.Tensor], layout: str) -> torch.Tensor:
    from wsl.tasks.statnn import statnn_features

    return statnn_features(g.space, sd, layout).to(torch.float32)


def _graph_of(g: ArchGroup, local: torch.Tensor, sd: dict[str, torch.Tensor] | None) -> Any:
    if sd is not None:
        from wsl.graph import build

        return build(g.space, sd)
    return g.cache.take(local)


def _join_graphs(parts: list[Any]) -> Any:
    if len(parts) == 1:
        return parts[0]
    from wsl.graph import collate, to_graphs

    return collate([gr for b in parts for gr in to_graphs(b)])


class GraphCache:
    """Prebuilt parameter graphs of ``n`` models of one architecture, sliceable per batch.

    Per-model tensors (``x``, ``edge_attr`` or ``edge_values``, ``extras``) are kept as
    ``(n, ...)``; the structure shared by every graph of the architecture
    (``edge_index``, masks, kinds, ...) is kept once; its repetition for a
    batch size is cached, so batches share those (read-only) tensors.
    """

    PER_MODEL = ("x", "edge_attr", "edge_values", "extras")  # edge_values: ragged graphs (wsl.graph.ragged)

    def __init__(self, batch: Any, n: int) -> None:
        from wsl.graph.data import batch_keys

        keys = batch_keys(batch)
        self.n = n
        self.v = int(batch.num_nodes) // n
        self.e = int(batch.edge_index.shape[1]) // n
        self.per_model: dict[str, torch.Tensor] = {}
        self.shared: dict[str, torch.Tensor] = {}
        for key in keys:
            val = batch[key]
            if not isinstance(val, torch.Tensor):
                continue
            if key in self.PER_MODEL:
                self.per_model[key] = val.reshape(n, -1, *val.shape[1:])
            elif key == "edge_index":
                self.shared[key] = val[:, : self.e].clone()
            else:
                per = val.shape[0] // n
                self.shared[key] = val[:per].clone()
        self.strings = {k: batch[k][0] for k in ("arch", "dtypes") if k in keys}
        self._repeated: dict[int, dict[str, torch.Tensor]] = {}

    def _shared(self, b: int) -> dict[str, torch.Tensor]:
        """The shared attributes repeated for ``b`` graphs (cached for a few batch sizes; treat as read-only)."""
        got = self._repeated.get(b)
        if got is None:
            got = {}
            for k, t in self.shared.items():
                if k == "edge_index":
                    offs = torch.arange(b, device=t.device) * self.v
                    got[k] = (t.unsqueeze(1) + offs.view(1, b, 1)).reshape(2, b * self.e)
                else:
                    got[k] = t.repeat(b, *([1] * (t.dim() - 1)))
            if len(self._repeated) >= 4:
                self._repeated.pop(next(iter(self._repeated)))
            self._repeated[b] = got
        return got

    def take(self, local: torch.Tensor) -> Any:
        """A PyG ``Batch`` of the graphs at ``local`` positions (order kept)."""
        from wsl.graph.data import make_batch

        b = int(local.numel())
        sel = local.to(self.per_model["x"].device)
        attrs = {k: t[sel].reshape(-1, *t.shape[2:]) for k, t in self.per_model.items()}
        attrs.update(self._shared(b))
        order = ["x", "x_mask", "edge_index", "edge_attr"]
        attrs = {k: attrs[k] for k in order if k in attrs} | {k: v for k, v in attrs.items() if k not in order}
        return make_batch(attrs, {k: [v] * b for k, v in self.strings.items()}, b, self.v)


def augment_stacked(space: Any, stacked: dict[str, torch.Tensor], augment: Any,
                    generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Randomly permute (``augment.permute``) and add relative Gaussian noise (``augment.noise``) per model.

    Noise: ``w + noise * std(w) * eps`` per model and floating tensor (buffers
    such as BatchNorm statistics and integer entries are left alone).
    Random numbers come from ``generator`` on the CPU, so results do not
    depend on the device.
    """
    if not stacked:
        return stacked
    n = int(next(iter(stacked.values())).shape[0])
    out = dict(stacked)
    if augment.permute:
        from wsl.space import random_permutation

        perms = random_permutation(space, generator, batch=n)
        dev = next(iter(stacked.values())).device
        out = space.permute(out, {g: p.to(dev) for g, p in perms.items()}, batched=True)
    if augment.noise > 0:
        for name, t in out.items():
            spec = space.tensors.get(name)
            if not t.is_floating_point() or spec is None or spec.buffer or t[0].numel() < 2:
                continue
            std = t.reshape(n, -1).std(1).view(n, *([1] * (t.dim() - 1)))
            eps = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
            out[name] = t + augment.noise * std * eps
    return out


def augment_features(feats: Any, augment: Any, generator: torch.Generator | None) -> Any:
    """:func:`augment_stacked` on :class:`~wsl.graph.WeightSpaceFeatures` directly (no state_dict round trip).

    Permuting features equals featurizing permuted weights; the noise std is
    that of each block (= each tensor, except fused tensors split into blocks).
    """
    space, n = feats.space, feats.num_models
    if augment.permute:
        from wsl.space import random_permutation

        dev = next(iter(feats.blocks.values())).device
        feats = feats.permute({g: p.to(dev) for g, p in random_permutation(space, generator, batch=n).items()})
    if augment.noise > 0:
        blocks = dict(feats.blocks)
        for (name, part), t in blocks.items():
            if space.tensors[name].buffer or t[0].numel() < 2 or not t.is_floating_point():
                continue
            std = t.reshape(n, -1).std(1).view(n, *([1] * (t.dim() - 1)))
            eps = torch.randn(t.shape, generator=generator, dtype=t.dtype).to(t.device)
            blocks[(name, part)] = t + augment.noise * std * eps
        feats = type(feats)(space, blocks, feats.extras)
    return feats


def prepare_split(zoo: Any, name: str, split: str, kind: str, *, target: str = "test_accuracy",
                  checkpoints: str = "last", arch: str | None = None, max_rows: int | None = None, seed: int = 0,
                  stats_layout: str = "per_tensor", device: torch.device | str | None = None,
                  transform: str = "none", probe_inputs: torch.Tensor | None = None,
                  probe_learn: bool = False) -> SplitData:
    """Select the rows of ``split`` and build the ``kind`` inputs once (see module docstring).

    ``probe_inputs`` (``(P, *shape)``, :func:`wsl.tasks.inversion.probe_set`)
    also computes the probe features of every row on them
    (:func:`wsl.tasks.probes.probe_features`, from the raw weights); with
    ``probe_learn`` it keeps the networks instead (:class:`~wsl.tasks.probes.ProbeNets`),
    for a model that learns its probe inputs.
    """
    if kind not in INPUT_KINDS:
        raise ConfigError(f"unknown input kind {kind!r}; valid: {', '.join(INPUT_KINDS)}")
    view = select_rows(zoo, split, checkpoints, target, arch, max_rows, seed)
    if len(view) == 0:
        raise TaskError(f"{zoo.root}: split {split!r} has no rows with a {target!r} target"
                        + (f" for arch {arch!r}" if arch else ""))
    y = torch.tensor(target_values(view, target), dtype=torch.float32, device=device)
    archs = view.column("arch")
    first = {a: int(np.flatnonzero(archs == a)[0]) for a in dict.fromkeys(archs.tolist())}
    spaces = {a: view[i].space for a, i in first.items()}
    sig = np.array([spaces[a].signature for a in archs.tolist()], dtype=object)
    order = list(dict.fromkeys(sig.tolist()))
    if kind == "features" and len(order) > 1:
        raise TaskError(f"{zoo.root}: split {split!r} mixes architectures {sorted(first)} with different weight "
                        "spaces; dense (features) models need one architecture -- set data.arch, or use a graph model")
    groups = []
    for s in order:  # rows are grouped by weight-space signature (e.g. relu/tanh variants stack together)
        pos = np.flatnonzero(sig == s)
        ids = list(dict.fromkeys(archs[pos].tolist()))
        space = spaces[ids[0]]
        stacked = transform_weights(view.stacked(pos, device=device), transform)
        cache: Any = None
        if kind == "features":
            from wsl.graph import WeightSpaceFeatures

            cache = WeightSpaceFeatures.from_state_dicts(space, stacked)
        elif kind == "graph":
            from wsl.graph import build

            cache = GraphCache(build(space, stacked), len(pos))
        groups.append(ArchGroup(",".join(map(str, ids)), space, torch.from_numpy(pos), stacked, cache))
    stats = None
    if kind == "stats":
        from wsl.tasks.statnn import statnn_features

        stats = torch.zeros(len(view), 0)
        parts = [statnn_features(g.space, g.stacked, stats_layout).to(torch.float32) for g in groups]
        stats = torch.empty(len(view), parts[0].shape[1], device=parts[0].device)
        for g, p in zip(groups, parts):
            stats[g.pos.to(p.device)] = p
    info = {"num_rows": len(view), "num_models": len(view.model_ids()), "archs": [str(a) for a in first],
            "signatures": order}
    probe_feats: Any = None
    if probe_inputs is not None and probe_learn:
        from wsl.tasks.probes import ProbeNets

        probe_feats = ProbeNets.from_view(view, device, shape=probe_inputs.shape[1:])
    elif probe_inputs is not None:
        from wsl.tasks.probes import probe_features

        probe_feats = probe_features(view, device=device, shape=probe_inputs.shape[1:], inputs=probe_inputs)
    return SplitData(name, kind, y, view.row_ids, groups, stats, stats_layout, info, probe_feats)
