"""NeuMeta: an implicit network from weight coordinates to weight values, for a whole network.

For a coordinate row ``(k, c)`` (tensor id ``k``, continuous part
``c = (u_out, u_in, w_out, w_in)``, see :mod:`wsl.hyper.coords`)::

    h_0     = W_in [gamma_F(u), gamma_Fw(w), E[k], phi(u_out), phi(u_in), phi(u_out) * phi(u_in)] + b_in
              (u, w also hold the within-head positions v and widths x when the network has heads)
              gamma: Fourier features, E: tensor embedding, phi: optional learned unit grid
    h_{l+1} = h_l + W_2^l silu(W_1^l LN(h_l))         residual blocks, l < L
    v       = mu_k + sigma_k * s_k * head_{kind(k)}(LN(h_L)) / w_in^{[weight]}
    v       = A(k, c) + sigma_k * s_k * head_{kind(k)}(LN(h_L)) / w_in^{[weight]}    (anchored: ``anchor``)

Positions ``u = (u_out, u_in)`` get ``frequencies`` octaves, widths
``w = (w_out, w_in)`` get ``width_frequencies`` (default: the same): few
octaves in ``w`` make neighbouring widths share what they learn.
``head_kind`` is one linear head per tensor kind (role and number of taps:
a 3x3 conv kernel is one 9-vector, a bias one value). ``mu_k, sigma_k`` are
the base tensor's mean and standard deviation (buffers), ``s_k`` a learned
per-tensor scale initialised to 1. With ``fan_in_scaling`` the weights (not
biases) are divided by ``w_in``, the input width ratio: a layer computes a
Riemann sum ``y(u) ~ (1/n) sum_j W(u, v_j) x(v_j)`` over its ``n`` input
units, so a network with ``n = w_in * n_0`` inputs needs weights ``1/w_in``
times larger for the same function.

**Anchored** hypernetworks (``anchor: prune | interp``) keep the base as a buffer
and generate a correction on top of ``A(k, c)``, the base read at the row: its
``o``-th and ``i``-th kept units under L1 pruning (``prune``; a fresh, zero-headed
hypernetwork then generates exactly the pruned base at every width) or the base
interpolated between its units (``interp``). Training then moves every member
away from its pruned (or interpolated) start with the task, distillation and
reconstruction losses: one shared correction instead of a fine-tune per width.
The hypernetwork is then larger by the base's size.

A whole network is produced by one batched call over all its coordinate rows
(:meth:`NeuMeta.generate`); :meth:`NeuMeta.sample` returns an ``nn.Module`` of
the width family, evaluated at the coordinates' centres (no noise).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsl.archs.width import Ratio, WidthFamily
from wsl.errors import ConfigError, SpaceMismatchError
from wsl.hyper.grid import UnitGrid
from wsl.hyper.coords import (CONTINUOUS, STATISTICS, NetCoords, coord_columns, fourier, network_coords,
                              target_rows, tensor_layout)
from wsl.hyper.interp import interpolation_target
from wsl.hyper.prune import kept_units, unit_scores


ANCHORS = ("none", "prune", "interp")
"""Values of :attr:`NeuMetaConfig.anchor`."""


@dataclass
class NeuMetaConfig:
    """Hyperparameters of the implicit network (JSON-able)."""

    arch: dict[str, Any] = field(default_factory=dict)
    hidden: int = 128
    blocks: int = 3
    embed: int = 16
    frequencies: int = 6
    fan_in_scaling: bool = True
    width_frequencies: int | None = None
    generate_statistics: bool = False
    grid_features: int = 0
    family_heads: str = "count"
    """Transformer ports: resize attention by whole heads ("count"), units per head ("dim") or both."""
    anchor: str = "none"
    """Generate a correction on top of the base read at each coordinate: "prune" (the base's highest-L1 units of
    every group, the pruning baseline), "interp" (the base interpolated between its units), or "none"."""

    def continuous_size(self) -> int:
        """Width of the encoded continuous part (positions with ``frequencies``, widths with ``width_frequencies``)."""
        fw = self.frequencies if self.width_frequencies is None else self.width_frequencies
        return 2 * (1 + 2 * self.frequencies) + 2 * (1 + 2 * fw)

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ConfigError(f"hyper.model.anchor: expected one of {ANCHORS}, got {self.anchor!r}")
        if not isinstance(self.grid_features, int) or isinstance(self.grid_features, bool) or self.grid_features < 0:
            raise ConfigError(f"hyper.model.grid_features: expected an int >= 0, got {self.grid_features!r}")
        for name in ("hidden", "blocks", "embed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"hyper.model.{name}: expected a positive int, got {v!r}")
        for name in ("frequencies", "width_frequencies"):
            v = getattr(self, name)
            if v is None and name == "width_frequencies":
                continue
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 16:
                raise ConfigError(f"hyper.model.{name}: expected an int in [0, 16], got {v!r}")


class _Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h))))


class NeuMeta(nn.Module):
    """Implicit network over the coordinates of a width family (see module docstring).

    ``base_state`` (full width) sets the per-tensor statistics ``mu_k, sigma_k``.
    """

    def __init__(self, config: NeuMetaConfig, base_state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.config = config
        self.family = WidthFamily(config.arch, config.family_heads)
        self.base_space = self.family.space(1.0)
        specs = self.base_space.spec.tensors
        self.has_batchnorm = any(t.buffer for t in specs)
        self.generated = [not t.buffer or (config.generate_statistics and t.role in STATISTICS) for t in specs]
        layouts = [tensor_layout(self.base_space, k) if g else None for k, g in enumerate(self.generated)]
        self.names = [t.name for t in specs]
        self.taps = [lay.taps if lay is not None else 1 for lay in layouts]
        self.taps_max = max(self.taps)
        kinds = sorted({f"{t.role}:{lay.taps}" for t, lay in zip(specs, layouts) if lay is not None})
        self.kinds = kinds
        self.kind_of = [kinds.index(f"{t.role}:{lay.taps}") if lay is not None else 0
                        for t, lay in zip(specs, layouts)]
        self.is_weight = torch.tensor([lay is not None and lay.in_group is not None for lay in layouts])
        # 4 continuous columns, 8 with nested (attention head) unit axes: positions and widths at each level
        self.columns = coord_columns(self.base_space, config.generate_statistics)
        n_cont = config.continuous_size() * self.columns // len(CONTINUOUS)
        self.embedding = nn.Embedding(len(specs), config.embed)
        self.grid = None
        if config.grid_features:
            groups = self.base_space.spec.groups
            self.grid = UnitGrid([g.size for g in groups], config.grid_features)
            self.register_buffer("out_group", torch.tensor([lay.out_group if lay is not None and lay.out_group
                                                            is not None else -1 for lay in layouts]), persistent=False)
            self.register_buffer("in_group", torch.tensor([lay.in_group if lay is not None and lay.in_group
                                                           is not None else -1 for lay in layouts]), persistent=False)
        self.inp = nn.Linear(n_cont + config.embed + 3 * config.grid_features, config.hidden)
        self.body = nn.Sequential(*[_Block(config.hidden) for _ in range(config.blocks)])
        self.out_norm = nn.LayerNorm(config.hidden)
        self.heads = nn.ModuleList(nn.Linear(config.hidden, int(k.split(":")[1])) for k in kinds)
        self.log_scale = nn.Parameter(torch.zeros(len(specs)))
        mu = torch.zeros(len(specs))
        sigma = torch.ones(len(specs))
        if base_state is not None:
            for k, name in enumerate(self.names):
                if not self.generated[k]:
                    continue
                if name not in base_state:
                    raise SpaceMismatchError(f"NeuMeta: base state_dict has no tensor {name}")
                w = base_state[name].detach().float()
                mu[k] = w.mean()
                sigma[k] = w.std() if w.numel() > 1 and float(w.std()) > 0 else max(float(w.abs().mean()), 1e-3)
        self.register_buffer("mu", mu)
        self.register_buffer("sigma", sigma)
        self._coords: dict[tuple[int, ...], NetCoords] = {}
        self._anchor_index: dict[tuple[int, ...], torch.Tensor] = {}
        if config.anchor != "none":
            self._init_anchor(base_state)

    # ------------------------------------------------------------ coordinates
    def coords(self, ratio: Ratio = 1.0) -> NetCoords:
        """Coordinate rows of the family member at ``ratio`` (cached per widths)."""
        widths = self.family.widths(ratio)
        if widths not in self._coords:
            self._coords[widths] = network_coords(self.family.space_widths(widths), self.base_space,
                                                  self.config.generate_statistics)
        return self._coords[widths]

    def forward(self, tensor: torch.Tensor, cont: torch.Tensor, anchor: torch.Tensor | None = None) -> torch.Tensor:
        """Values ``(R, taps_max)`` for coordinate rows (unused taps are 0).

        An anchored hypernetwork (``config.anchor``) adds its output to ``anchor``, the
        rows' anchor values from :meth:`anchor_values` (required then).
        """
        if (anchor is None) != (self.config.anchor == "none"):
            raise ConfigError(f"NeuMeta.forward: anchor values are {'required' if anchor is None else 'unexpected'}"
                              f" (config.anchor={self.config.anchor!r})")
        fw = self.config.width_frequencies
        if fw is None:  # one encoding for all four columns (the layout of hypernetworks saved before the option)
            enc = fourier(cont, self.config.frequencies)
        else:
            blocks = cont.reshape(cont.shape[0], -1, 4)  # (u_out, u_in, w_out, w_in) [+ (v_out, v_in, x_out, x_in)]
            enc = torch.cat([fourier(blocks[:, :, :2].flatten(1), self.config.frequencies),
                             fourier(blocks[:, :, 2:].flatten(1), fw)], dim=1)
        parts = [enc, self.embedding(tensor)]
        if self.grid is not None:
            go, gi = self.grid(self.out_group[tensor], cont[:, 0]), self.grid(self.in_group[tensor], cont[:, 1])
            parts += [go, gi, go * gi]  # the product gives W(o, i) = sum_d a_d(o) b_d(i): rank up to d
        x = torch.cat(parts, dim=1)
        h = self.out_norm(self.body(self.inp(x)))
        kind = torch.as_tensor(self.kind_of, device=tensor.device)[tensor]
        out = h.new_zeros(h.shape[0], self.taps_max)
        for j, head in enumerate(self.heads):
            rows = (kind == j).nonzero().squeeze(1)
            if rows.numel():
                v = head(h[rows])
                out = out.index_put((rows.unsqueeze(1), torch.arange(v.shape[1], device=h.device).unsqueeze(0)), v)
        scale = (self.sigma * self.log_scale.exp())[tensor].unsqueeze(1)
        if anchor is None:
            out = self.mu[tensor].unsqueeze(1) + scale * out
        else:
            out = scale * out
        if self.config.fan_in_scaling:
            w_in = cont[:, CONTINUOUS.index("w_in")].clamp_min(1e-6)
            div = torch.where(self.is_weight.to(tensor.device)[tensor], w_in, torch.ones_like(w_in))
            out = out / div.unsqueeze(1)
        if anchor is not None:
            out = anchor + out
        return out * self.taps_mask(tensor)

    def taps_mask(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(R, taps_max)`` bool: which of a row's output slots its tensor uses (its first ``taps``)."""
        taps = torch.as_tensor(self.taps, device=tensor.device)[tensor]
        return torch.arange(self.taps_max, device=tensor.device).unsqueeze(0) < taps.unsqueeze(1)

    def generate(self, ratio: Ratio = 1.0, coord_noise: float = 0.0,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A whole state_dict at ``ratio`` in one batched call.

        ``coord_noise`` jitters the unit positions ``u_out, u_in`` (only those) by
        ``U(-a, a)`` with ``a = coord_noise / (2 (size - 1))``: a fraction of half
        the spacing between neighbouring units. On nested (head) axes ``u`` is the
        head's position, jittered by the spacing of the heads (``size`` = number of
        heads), and the within-head positions ``v_out, v_in`` by the spacing of the
        units inside a head (drawn after ``u``'s, so networks without heads draw
        exactly as before).
        """
        c, _, values = self.generate_rows(ratio, coord_noise, generator)
        return c.split(values)

    def generate_rows(self, ratio: Ratio = 1.0, coord_noise: float = 0.0, generator: torch.Generator | None = None
                      ) -> tuple[NetCoords, torch.Tensor, torch.Tensor]:
        """``(coords, cont, values)``: the rows behind :meth:`generate` (``cont`` as jittered)."""
        c = self.coords(ratio)
        dev = self.mu.device
        cont = c.cont.to(dev)
        if coord_noise > 0:
            cont = cont.clone()
            spacing = self._spacing(c).to(dev)
            jitter = (torch.rand(cont.shape[0], 2, generator=generator) * 2 - 1).to(dev)
            cont[:, :2] = (cont[:, :2] + jitter * spacing[:, :2] * coord_noise / 2).clamp(0.0, 1.0)
            if cont.shape[1] > len(CONTINUOUS):  # nested axes: within-head positions v_out, v_in
                jitter = (torch.rand(cont.shape[0], 2, generator=generator) * 2 - 1).to(dev)
                cont[:, 4:6] = (cont[:, 4:6] + jitter * spacing[:, 2:] * coord_noise / 2).clamp(0.0, 1.0)
        return c, cont, self(c.tensor.to(dev), cont, self.anchor_values(c, cont))

    # ------------------------------------------------------------ anchors
    def _init_anchor(self, base_state: dict[str, torch.Tensor] | None) -> None:
        """Buffers of an anchored hypernetwork (zeros until loaded): the base's generated tensors, flat
        (``anchor_flat``, exactly the base's size: rows padded to the widest kernel are only cached), and
        its units' L1 scores."""
        if self.config.anchor == "interp" and self.columns > len(CONTINUOUS):
            raise ConfigError("hyper.model.anchor: 'interp' reads positions inside one flat group; networks with "
                              "attention heads take anchor: prune")
        full = self.coords(1.0)
        groups = self.base_space.spec.groups
        flat = torch.zeros(sum(lay.rows * lay.taps for lay in full.layouts))
        scores = torch.zeros(sum(g.size for g in groups))
        if base_state is not None:
            rows, mask = target_rows(base_state, full, self.taps_max)
            flat = rows[mask]
            by_group = unit_scores(self.base_space, base_state)
            scores = torch.cat([by_group[g.id].float() for g in groups])
        self.register_buffer("anchor_flat", flat)
        self.register_buffer("anchor_scores", scores)
        self._anchor_rows: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(_forget_anchor_caches)
        with torch.no_grad():  # a fresh anchored hypernetwork generates its anchor exactly
            for head in self.heads:
                head.weight.zero_()
                head.bias.zero_()

    def anchor_values(self, coords: NetCoords, cont: torch.Tensor) -> torch.Tensor | None:
        """``(R, taps_max)`` anchor of each row of ``coords`` (``cont`` as jittered); ``None`` when not anchored.

        ``prune``: row ``(o, i)`` of a member reads the base at its ``o``-th and ``i``-th kept
        units (highest L1 score per group, in the base's order; jitter is ignored), unscaled,
        so a fresh hypernetwork generates exactly the pruned base. ``interp``: the base
        interpolated bilinearly at the (jittered) positions, weights divided by ``w_in``
        with fan-in scaling (:mod:`wsl.hyper.interp`).
        """
        mode = self.config.anchor
        if mode == "none":
            return None
        dev = self.anchor_flat.device
        rows = self.anchor_rows()
        if mode == "prune":
            key = coords.group_sizes  # every group's size: 2 heads of 8 and 4 heads of 4 are different members
            if key not in self._anchor_index:
                self._anchor_index[key] = self._prune_index(coords)
            return rows[self._anchor_index[key].to(dev)]
        return self.interpolated(coords, cont, rows)

    def interpolated(self, coords: NetCoords, cont: torch.Tensor, base_rows: torch.Tensor) -> torch.Tensor:
        """``(R, taps_max)``: full-width rows ``base_rows`` read bilinearly at ``cont``'s unit positions
        (:mod:`wsl.hyper.interp`), weights divided by ``w_in`` like generated ones under fan-in scaling."""
        dev = base_rows.device
        goal = interpolation_target(coords, cont, self.coords(1.0), base_rows)
        if self.config.fan_in_scaling:
            w_in = cont[:, CONTINUOUS.index("w_in")].clamp_min(1e-6).to(dev)
            weight = self.is_weight.to(dev)[coords.tensor.to(dev)]
            goal = goal / torch.where(weight, w_in, torch.ones_like(w_in)).unsqueeze(1)
        return goal

    def anchor_rows(self) -> torch.Tensor:
        """``(R_full, taps_max)``: the anchor (base) as full-width coordinate rows (cached, rebuilt on load)."""
        flat = self.anchor_flat
        if self._anchor_rows is None or self._anchor_rows.device != flat.device:
            full = self.coords(1.0)
            rows = torch.zeros(full.offsets[-1], self.taps_max, device=flat.device)
            rows[self.taps_mask(full.tensor.to(flat.device))] = flat
            self._anchor_rows = rows
        return self._anchor_rows

    def _prune_index(self, coords: NetCoords) -> torch.Tensor:
        """``(R,)`` full-width row of each of ``coords``' rows under the pruning map (kept units per group)."""
        groups = self.base_space.spec.groups
        if len(coords.group_sizes) != len(groups):
            raise SpaceMismatchError("NeuMeta: coordinates without group sizes; build them with network_coords")
        starts = [0]
        for g in groups:
            starts.append(starts[-1] + g.size)
        scores = {g.id: self.anchor_scores[starts[g.id]:starts[g.id + 1]].detach().cpu() for g in groups}
        sizes = {g.id: n for g, n in zip(groups, coords.group_sizes) if n != g.size}
        keep = kept_units(self.base_space, None, sizes, scores)
        full = self.coords(1.0)

        def kept(g: int | None) -> torch.Tensor:
            if g is None:
                return torch.zeros(1, dtype=torch.long)
            return keep.get(g, torch.arange(groups[g].size))

        parts = []
        for k, (lay, lay0) in enumerate(zip(coords.layouts, full.layouts)):
            ko, ki = kept(lay.out_group), kept(lay.in_group)
            n0_in = groups[lay0.in_group].size if lay0.in_group is not None else 1
            idx = full.offsets[k] + ko[:, None] * n0_in + ki[None, :]
            if idx.numel() != coords.offsets[k + 1] - coords.offsets[k]:
                raise SpaceMismatchError(f"NeuMeta: tensor {lay.name} has {coords.offsets[k + 1] - coords.offsets[k]}"
                                         f" rows but its kept units give {idx.numel()}")
            parts.append(idx.reshape(-1))
        return torch.cat(parts)

    def _spacing(self, c: NetCoords) -> torch.Tensor:
        """``(R, 4)``: spacing ``1 / (n - 1)`` of the output and input positions ``u`` (n = the group's units,
        or its heads on a nested axis) and of the within-head positions ``v`` (n = units per head;
        0 on axes without heads); 0 for a level of one."""
        groups = self.base_space.spec.groups
        if len(c.group_sizes) != len(groups):
            raise SpaceMismatchError("NeuMeta: coordinates without group sizes; build them with network_coords")
        sizes = c.group_sizes

        def gap(n: int) -> float:
            return 1.0 / (n - 1) if n > 1 else 0.0

        def axis(g: int | None) -> tuple[float, float]:
            if g is None:
                return 0.0, 0.0
            p = groups[g].parent
            if p is None:
                return gap(sizes[g]), 0.0
            return gap(sizes[p]), gap(sizes[g] // sizes[p])

        out = torch.zeros(c.offsets[-1], 4)
        for k, lay in enumerate(c.layouts):
            (uo, vo), (ui, vi) = axis(lay.out_group), axis(lay.in_group)
            out[c.offsets[k]:c.offsets[k + 1]] = torch.tensor([uo, ui, vo, vi])
        return out

    @torch.no_grad()
    def sample(self, ratio: Ratio = 1.0, calibration: torch.Tensor | None = None,
               batch: int = 256, samples: int = 1, coord_noise: float = 0.5, seed: int = 0) -> nn.Module:
        """The family member at ``ratio`` with generated weights.

        Default: one deterministic evaluation at the coordinates' centres. With
        ``samples = K > 1`` the weights are the mean of ``K`` generations with
        unit positions jittered by ``coord_noise`` (as in training, seeded by
        ``seed``): K times the cost of one generation.

        BatchNorm: the affine parameters are generated; the running statistics are
        recomputed over ``calibration`` inputs: the average of the per-batch statistics of
        ``batch``-sized chunks (``momentum=None``). ``calibration`` is required unless the
        hypernetwork was built with ``generate_statistics`` (then, without calibration, the
        generated statistics are used, variances clamped to at least 1e-5).
        """
        if not isinstance(samples, int) or samples < 1:
            raise ConfigError(f"NeuMeta.sample: samples must be a positive int, got {samples!r}")
        if samples == 1:
            state = self.generate(ratio)
        else:
            gen = torch.Generator().manual_seed(seed)
            draws = [self.generate(ratio, coord_noise=coord_noise, generator=gen) for _ in range(samples)]
            state = {k: torch.stack([d[k] for d in draws]).mean(0) for k in draws[0]}
        module = self.family.build(ratio)
        state = {k: v.detach().cpu() for k, v in state.items()}
        for t in self.base_space.spec.tensors:
            if t.name in state and t.role == "running_var":
                state[t.name] = state[t.name].clamp_min(1e-5)  # a variance stays positive
        missing, unexpected = module.load_state_dict(state, strict=False)
        buffers = {t.name for t in self.base_space.spec.tensors if t.buffer}
        if unexpected or set(missing) - buffers:
            raise SpaceMismatchError(f"NeuMeta.sample: generated keys do not match the module (missing "
                                     f"{sorted(set(missing) - buffers)[:3]}, unexpected {sorted(unexpected)[:3]})")
        if self.has_batchnorm and (calibration is not None or not self.config.generate_statistics):
            if calibration is None:
                raise ConfigError(f"NeuMeta.sample: {self.family.name} has BatchNorm; pass calibration inputs "
                                  "to recompute its running statistics")
            recalibrate_batchnorm(module, calibration, batch)
        return module.eval()

    def num_bytes(self) -> int:
        """Size of the hypernetwork's parameters and buffers in float32 bytes."""
        return 4 * (sum(p.numel() for p in self.parameters()) + sum(b.numel() for b in self.buffers()))

    def config_dict(self) -> dict[str, Any]:
        """The JSON config that rebuilds this hypernetwork (weights aside)."""
        return asdict(self.config)


def _forget_anchor_caches(module: NeuMeta, incompatible_keys: Any) -> None:
    """After ``load_state_dict``: the padded anchor rows and the pruning index are rebuilt from the loaded
    ``anchor_flat`` and ``anchor_scores``."""
    module._anchor_rows = None
    module._anchor_index.clear()


@torch.no_grad()
def recalibrate_batchnorm(module: nn.Module, x: torch.Tensor, batch: int = 256) -> nn.Module:
    """Reset every BatchNorm's running statistics to the mean of per-batch statistics over ``x`` (momentum None)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    for i in range(0, len(x), batch):
        module(x[i:i + batch])
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return module.eval()
