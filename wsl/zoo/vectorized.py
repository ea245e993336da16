"""Vectorized training: ``k`` models of one architecture trained as one network.

:class:`VecNet` interprets a ``"wsl.arch/1"`` sequential description (builtins
such as ``small_cnn``/``mlp`` are expanded to their layers). The parameters of
``k`` models are the rows of one flat ``(k, P)`` matrix in ``state_dict``
order, so an optimizer step is a few fused ops (:mod:`wsl.zoo.optim`) and
:meth:`VecNet.unflatten` yields stacked ``state_dict`` tensors directly.
Activations use one of two layouts:

* ``conv`` -- ``(B, k*C, *spatial)``, model ``i`` owning channels
  ``[i*C, (i+1)*C)``: a convolution is one grouped convolution
  (``groups = k * groups``); pooling is channel-wise anyway;
* ``flat`` -- ``(k, B, F)``: a linear layer is one ``baddbmm``;
* ``shared`` -- one input batch ``(B, *shape)`` fed to every model
  (evaluation): the first conv/linear layer is one dense op over all models.

A convolution with one input channel per model (the first layer on grayscale
images) runs as unfold + ``bmm``, much faster on CPU than such a grouped
convolution. Per model: activation function (mixed with ``torch.where`` when
a chunk holds several), dropout rate (drawn from 16-bit random words, so the
rate is rounded to a multiple of 1/65536), sample weights (a partial last
batch). Batch norm takes statistics over each model's valid samples only and
leaves the running statistics of frozen (diverged) models alone.

The lockstep training loop that drives it is :func:`wsl.zoo.optim.train_chunk`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import ConfigError, WslError

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "silu": F.silu,
    "gelu": F.gelu, "identity": lambda x: x, "leaky_relu": F.leaky_relu,
}
"""Activation layer types the vectorized network runs (plus ``sine``)."""

Act = tuple[torch.Tensor, str]  # (tensor, layout) with layout "conv", "flat" or "shared"


@dataclass
class Ctx:
    """Per-forward state: how many models run, and how."""

    k: int
    training: bool
    acts: list[str] | None = None  # per-model activation override
    dropout: torch.Tensor | None = None  # (k,) per-model dropout rates (override)
    weights: torch.Tensor | None = None  # (k, B) sample weights; None = all samples count
    frozen: torch.Tensor | None = None  # (k,) bool: leave these models' running stats alone
    generator: torch.Generator | None = None
    cache: dict[Any, Any] = field(default_factory=dict)

    def column(self, name: str, make: Callable[[], torch.Tensor], channels: int, layout: str,
               ndim: int) -> torch.Tensor:
        """The per-model column ``make()`` ``(k,)`` broadcast to a layout (cached as ``name``)."""
        key = (name, channels, layout, ndim)
        if key not in self.cache:
            col = make()
            self.cache[key] = col.repeat_interleave(channels).reshape(1, -1, *([1] * (ndim - 2))) \
                if layout == "conv" else col.reshape(-1, *([1] * (ndim - 1)))
        return self.cache[key]


@dataclass
class Entry:
    """One ``state_dict`` tensor: shape, role, place in the flat parameter row."""

    shape: tuple[int, ...]
    role: str  # weight | bias | norm_weight | norm_bias | buffer
    fan_in: int = 1
    offset: int = 0

    @property
    def numel(self) -> int:
        """Elements of one model's tensor."""
        return math.prod(self.shape)


def expand_description(desc: dict[str, Any]) -> dict[str, Any]:
    """The sequential form of ``desc`` (builtins like ``small_cnn`` are expanded)."""
    from wsl.archs.describe import build, describe, validate

    canonical = validate(desc)
    if canonical["kind"] == "sequential":
        return canonical
    try:
        return describe(build(canonical), expand=True)
    except WslError as err:
        raise ConfigError(f"the vectorized trainer cannot run builtin '{canonical['name']}': {err}") from None


def _roles(module: nn.Module) -> dict[str, Entry]:
    """Role of every state_dict entry, or ConfigError for layers the trainer cannot run."""
    out: dict[str, Entry] = {}
    for name, m in module.named_modules():
        pre = f"{name}." if name else ""
        own = dict(m.named_parameters(recurse=False)) | dict(m.named_buffers(recurse=False))
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            out[pre + "weight"] = Entry(tuple(m.weight.shape), "weight", math.prod(m.weight.shape[1:]))
            if m.bias is not None:
                out[pre + "bias"] = Entry(tuple(m.bias.shape), "bias")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not m.track_running_stats:
                raise ConfigError(f"architecture layer {name}: batch norm without running statistics is not "
                                  "supported by the vectorized trainer")
            for key, t in own.items():
                role = {"weight": "norm_weight", "bias": "norm_bias"}.get(key, "buffer")
                out[pre + key] = Entry(tuple(t.shape), role)
        elif own:
            raise ConfigError(f"architecture layer {name} ({type(m).__name__}) is not supported by the "
                              "vectorized trainer")
    return out


class VecNet:
    """``k`` models of one sequential architecture, evaluated functionally."""

    def __init__(self, desc: dict[str, Any]) -> None:
        from wsl.archs.describe import build

        self.description = expand_description(desc)
        with torch.device("meta"):
            module = build(self.description)
        self.input_shape = tuple(self.description["input_shape"])
        sd = module.state_dict()
        roles = _roles(module)
        self.entries = {k: roles[k] for k in sd}
        self.dtypes = {k: v.dtype for k, v in sd.items()}
        offset = 0
        for e in self.entries.values():
            if e.role != "buffer":
                e.offset, offset = offset, offset + e.numel
        self.num_params = offset
        self._check(self.description["layers"], "layers")

    def _check(self, layers: list[dict[str, Any]], where: str) -> None:
        supported = {"conv1d", "conv2d", "linear", "batchnorm1d", "batchnorm2d", "dropout", "global_avg_pool",
                     "flatten", "maxpool2d", "avgpool2d", "residual", "sine", *ACTIVATIONS}
        for i, spec in enumerate(layers):
            if spec["type"] not in supported:
                raise ConfigError(f"architecture {where}[{i}]: layer type '{spec['type']}' is not supported by "
                                  f"the vectorized trainer; supported: {', '.join(sorted(supported))}")
            if spec["type"] == "residual":
                self._check(spec["body"], f"{where}[{i}].body")
                self._check(spec["shortcut"] or [], f"{where}[{i}].shortcut")

    def param(self, p: torch.Tensor, key: str) -> torch.Tensor:
        """Tensor ``key`` of every row of ``p``: ``(k, *shape)``."""
        e = self.entries[key]
        return p[:, e.offset:e.offset + e.numel].reshape(p.shape[0], *e.shape)

    def split(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every parameter of the rows of ``p`` as ``(k, *shape)`` views (one ``split``, so the
        backward pass is one concatenation rather than a zero-filled copy per tensor)."""
        keys = [key for key, e in self.entries.items() if e.role != "buffer"]
        parts = p.split([self.entries[key].numel for key in keys], dim=1)
        return {key: t.reshape(p.shape[0], *self.entries[key].shape) for key, t in zip(keys, parts)}

    def _layers(self, layers: list[dict[str, Any]], pre: str, p: dict[str, torch.Tensor],
                bufs: dict[str, torch.Tensor], x: Act, ctx: Ctx) -> Act:
        for i, spec in enumerate(layers):
            x = self._layer(spec, f"{pre}{i}.", p, bufs, x, ctx)
        return x

    def _layer(self, spec: dict[str, Any], pre: str, p: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor],
               x: Act, ctx: Ctx) -> Act:
        t, (h, layout), k = spec["type"], x, ctx.k
        bias = p.get(pre + "bias")
        if layout == "shared" and (t not in ("conv1d", "conv2d", "linear") or t != "linear" and spec["groups"] != 1):
            x = _materialize(h, k, len(self.input_shape))
            h, layout = x
        if t in ("conv1d", "conv2d"):
            _need(layout in ("conv", "shared"), pre, t)
            w = p[pre + "weight"]
            b = None if bias is None else bias.reshape(-1)
            if t == "conv2d" and layout == "conv" and w.shape[2] == 1 and not isinstance(spec["padding"], str):
                return _conv_unfold(h, w, b, spec, k), "conv"
            conv = F.conv1d if t == "conv1d" else F.conv2d
            groups = spec["groups"] * (1 if layout == "shared" else k)  # shared input: one dense conv
            return conv(h, w.reshape(-1, *w.shape[2:]), b, spec["stride"], spec["padding"], spec["dilation"],
                        groups), "conv"
        if t == "linear":
            _need(layout in ("flat", "shared") and h.dim() in (2, 3), pre, t)
            w = p[pre + "weight"].transpose(1, 2)
            if layout == "shared":  # (N, F) @ (k, F, O)
                out = torch.matmul(h, w)
                return (out if bias is None else out + bias.unsqueeze(1)), "flat"
            return (torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)), "flat"
        if t in ("batchnorm1d", "batchnorm2d"):
            return self._batchnorm(spec, pre, p, bufs, x, ctx)
        if t in ACTIVATIONS or t == "sine":
            return _activation(spec, x, ctx), layout
        if t == "dropout":
            return _dropout(float(spec["p"]), x, ctx), layout
        if t in ("global_avg_pool", "flatten"):
            if layout == "flat":
                return x
            h = h.flatten(2).mean(-1) if t == "global_avg_pool" else h
            return h.reshape(h.shape[0], k, -1).transpose(0, 1), "flat"
        if t in ("maxpool2d", "avgpool2d"):
            _need(layout == "conv", pre, t)
            pool = F.max_pool2d if t == "maxpool2d" else F.avg_pool2d
            return pool(h, spec["kernel_size"], spec["stride"], spec.get("padding", 0)), "conv"
        out, out_layout = self._layers(spec["body"], pre + "body.", p, bufs, x, ctx)  # residual
        skip = x if spec["shortcut"] is None else self._layers(spec["shortcut"], pre + "shortcut.", p, bufs, x, ctx)
        _need(out_layout == skip[1], pre, t)
        return out + skip[0], out_layout

    def _batchnorm(self, spec: dict[str, Any], pre: str, p: dict[str, torch.Tensor], bufs: dict[str, torch.Tensor],
                   x: Act, ctx: Ctx) -> Act:
        (h, layout), k = x, ctx.k
        hv = h.reshape(h.shape[0], k, -1, math.prod(h.shape[2:])) if layout == "conv" \
            else h.transpose(0, 1).unsqueeze(-1)  # (B, k, C, S)
        c = hv.shape[2]
        eps, momentum = spec.get("eps", 1e-5), spec.get("momentum", 0.1)
        mean_buf, var_buf = bufs[pre + "running_mean"][:k], bufs[pre + "running_var"][:k]
        if ctx.training:
            w = torch.ones(k, h.shape[0] if layout == "conv" else h.shape[1], device=h.device) \
                if ctx.weights is None else ctx.weights
            w4 = w.t().reshape(-1, k, 1, 1).to(h.dtype)
            count = w.sum(1).reshape(k, 1).to(h.dtype) * hv.shape[3]
            mean = (hv * w4).sum((0, 3)) / count  # (k, C)
            centred = hv - mean.reshape(1, k, c, 1)
            var = (centred.square() * w4).sum((0, 3)) / count
            normed = centred * torch.rsqrt(var + eps).reshape(1, k, c, 1)
            with torch.no_grad():
                keep = ctx.frozen.reshape(k, 1) if ctx.frozen is not None else torch.zeros(
                    k, 1, dtype=torch.bool, device=h.device)
                unbiased = var * count / (count - 1).clamp(min=1)
                for buf, stat in ((mean_buf, mean), (var_buf, unbiased)):
                    buf.copy_(torch.where(keep, buf, buf * (1 - momentum) + stat * momentum))
                bufs[pre + "num_batches_tracked"][:k] += (~keep.reshape(k)).long()
        else:
            normed = (hv - mean_buf.reshape(1, k, c, 1)) * torch.rsqrt(var_buf + eps).reshape(1, k, c, 1)
        if pre + "weight" in self.entries:
            normed = normed * p[pre + "weight"].reshape(1, k, c, 1) + p[pre + "bias"].reshape(1, k, c, 1)
        if layout == "conv":
            return normed.reshape(h.shape), "conv"
        return normed.squeeze(-1).transpose(0, 1), "flat"

    def forward(self, p: torch.Tensor, bufs: dict[str, torch.Tensor], x: torch.Tensor, ctx: Ctx,
                shared: bool = False) -> torch.Tensor:
        """Outputs ``(k, B, out)`` of ``k`` models (rows of ``p``) on inputs ``(k, B, *input_shape)``,
        or on one batch ``(B, *input_shape)`` fed to every model if ``shared``."""
        if shared:
            xa: Act = (x, "shared")
        elif len(self.input_shape) >= 2:
            xa = (x.transpose(0, 1).reshape(x.shape[1], -1, *self.input_shape[1:]), "conv")
        else:
            xa = (x, "flat")
        out, layout = self._layers(self.description["layers"], "", self.split(p), bufs, xa, ctx)
        if layout != "flat" or out.dim() != 3:
            raise ConfigError("vectorized trainer: the architecture must end in a linear layer on features")
        return out

    def new_buffers(self, n: int, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Fresh buffers (running mean 0, running var 1, counters 0) for ``n`` models."""
        return {key: torch.full((n, *e.shape), 1.0 if key.endswith("running_var") else 0.0,
                                dtype=self.dtypes[key], device=device)
                for key, e in self.entries.items() if e.role == "buffer"}

    def unflatten(self, p: torch.Tensor, bufs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Stacked ``state_dict`` ``{key: (n, *shape)}`` from flat rows ``(n, P)`` and buffers."""
        fresh = self.new_buffers(p.shape[0], p.device)
        return {key: (bufs or fresh).get(key, fresh[key]).clone() if e.role == "buffer"
                else self.param(p, key).contiguous().clone() for key, e in self.entries.items()}

    def flatten(self, stacked: dict[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`unflatten` for the parameters: ``(n, P)``."""
        return torch.cat([stacked[key].reshape(stacked[key].shape[0], -1)
                          for key, e in self.entries.items() if e.role != "buffer"], dim=1)


@torch.no_grad()
def evaluate(net: VecNet, params: torch.Tensor, bufs: dict[str, torch.Tensor], acts: list[str] | None,
             x: torch.Tensor, y: torch.Tensor, *, device: torch.device | str = "cpu",
             models_per_pass: int = 512, samples_per_pass: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample losses and correctness ``(V, N)`` of the ``V`` models in ``params`` (eval mode)."""
    v_all = params.shape[0]
    losses = torch.empty(v_all, x.shape[0])
    correct = torch.empty(v_all, x.shape[0], dtype=torch.bool)
    x, y = x.to(device), y.to(device)
    for a in range(0, v_all, models_per_pass):
        b = min(v_all, a + models_per_pass)
        p = params[a:b].to(device)
        bf = {k: v[a:b].to(device) for k, v in bufs.items()}
        ctx = Ctx(b - a, False, acts[a:b] if acts else None)
        for s in range(0, x.shape[0], samples_per_pass):
            xs, ys = x[s:s + samples_per_pass], y[s:s + samples_per_pass]
            logits = net.forward(p, bf, xs, ctx, shared=True)
            ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.repeat(b - a), reduction="none")
            losses[a:b, s:s + len(ys)] = ce.view(b - a, -1).cpu()
            correct[a:b, s:s + len(ys)] = (logits.argmax(-1) == ys).cpu()
    return losses, correct


def _materialize(h: torch.Tensor, k: int, input_rank: int) -> Act:
    """A shared input ``(B, *shape)`` copied for ``k`` models, in the conv or flat layout."""
    if input_rank >= 2:
        return h.repeat(1, k, *([1] * (h.dim() - 2))), "conv"
    return h.unsqueeze(0).expand(k, *h.shape), "flat"


def _conv_unfold(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, spec: dict[str, Any],
                 k: int) -> torch.Tensor:
    """A 2-d convolution with one input channel per model as unfold + batched matmul.

    (Grouped convolutions with a single input channel per group are slow on
    CPU; this is the first layer of grayscale-image networks.)
    """
    bsz, (o, _, kh, kw) = h.shape[0], w.shape[1:]
    cols = F.unfold(h, (kh, kw), dilation=spec["dilation"], padding=spec["padding"], stride=spec["stride"])
    length = cols.shape[-1]
    cols = cols.view(bsz, k, kh * kw, length).permute(1, 0, 3, 2).reshape(k, bsz * length, kh * kw)
    wm = w.reshape(k, o, kh * kw).transpose(1, 2)
    y = torch.bmm(cols, wm) if b is None else torch.baddbmm(b.view(k, 1, o), cols, wm)
    size = [(h.shape[2 + i] + 2 * pd - dl * (ks - 1) - 1) // st + 1 for i, (ks, st, pd, dl) in enumerate(zip(
        (kh, kw), *(_pair(spec[n]) for n in ("stride", "padding", "dilation"))))]
    return y.view(k, bsz, *size, o).permute(1, 0, 4, 2, 3).reshape(bsz, k * o, *size)


def _pair(v: int | list[int]) -> list[int]:
    return [v, v] if isinstance(v, int) else list(v)


def _need(ok: bool, where: str, t: str) -> None:
    if not ok:
        raise ConfigError(f"architecture layer {where.rstrip('.')} ({t}): input layout not supported by the "
                          "vectorized trainer (conv layers need (C, *spatial) inputs, linear layers features)")


def _activation(spec: dict[str, Any], x: Act, ctx: Ctx) -> torch.Tensor:
    (h, layout), own = x, spec["type"]
    if own == "sine":
        return torch.sin(float(spec.get("w0", 30.0)) * h)
    names = ctx.acts if ctx.acts is not None and own != "identity" else [own]
    kinds = sorted(set(names))
    out = ACTIVATIONS[kinds[0]](h)
    for name in kinds[1:]:
        mask = ctx.column(f"act-{name}", lambda: torch.tensor([a == name for a in names], device=h.device),
                          h.shape[1] // ctx.k if layout == "conv" else 1, layout, h.dim())
        out = torch.where(mask, ACTIVATIONS[name](h), out)
    return out


def _dropout(p_layer: float, x: Act, ctx: Ctx) -> torch.Tensor:
    h, layout = x
    if not ctx.training:
        return h
    name = "dropout" if ctx.dropout is not None else f"dropout-{p_layer}"
    rates = ctx.dropout if ctx.dropout is not None else torch.full((ctx.k,), p_layer, device=h.device)
    if name not in ctx.cache:
        if bool((rates >= 1).any()) or bool((rates < 0).any()):
            raise ConfigError(f"dropout rates must be in [0, 1), got {rates.tolist()}")
        ctx.cache[name] = bool((rates > 0).any())
    if not ctx.cache[name]:
        return h
    channels = h.shape[1] // ctx.k if layout == "conv" else 1
    # Random 16-bit words, four per int64 draw (3x cheaper than torch.rand): an element is kept if its
    # word is >= round(p * 65536) - 32768, i.e. the rate is p rounded to a multiple of 1/65536.
    def level() -> torch.Tensor:
        return (rates.double() * 65536).round()

    thresh = ctx.column(name, lambda: (level() - 32768).to(torch.int32), channels, layout, h.dim())
    scale = ctx.column(name + "-scale", lambda: (65536 / (65536 - level())).to(h.dtype), channels, layout, h.dim())
    n = h.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=h.device).random_(
        -2**63, 2**63 - 1, generator=ctx.generator).view(torch.int16)[:n].view(h.shape)
    return h * ((words >= thresh) * scale)


__all__ = ["ACTIVATIONS", "Ctx", "VecNet", "evaluate", "expand_description"]
