"""Where a dense layer's weight lives, and what its other parameters are.

``nn.Linear`` and ``nn.Conv*d`` own ``weight`` and ``bias``. Real networks add
to that:

* **Weight normalization** stores ``weight = g * v / ||v||`` as a direction
  ``v`` (shaped like the weight: it is the connection tensor) and a magnitude
  ``g`` with one entry per output unit (``dim=0``, shape ``(out, 1, ...)``: a
  node feature of the output units) or one scalar (``dim=None``: touched by no
  permutation). Both ``torch.nn.utils.parametrizations.weight_norm`` (state
  keys ``parametrizations.weight.original0/1``) and the older
  ``torch.nn.utils.weight_norm`` (``weight_g``/``weight_v``) are read.
* **Subclasses with extra tensors** (the per-output-channel ``gain`` of a
  scaled weight-standardized conv, a fixed mask, a scalar ``eps``): each extra
  tensor gets the unit axes its shape says it broadcasts against -- the output
  axis (a node feature), both unit axes (a second tensor on the same edges),
  or none (a tensor constant along the units). Anything else is refused.

Whatever is assigned here is then *verified* by :func:`wsl.space.verify.check_layer`,
which runs the layer before and after a random permutation.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder


def weight_name(path: str, mod: nn.Module) -> str:
    """Name of the tensor that carries ``mod``'s weight (``weight``, or weight norm's direction ``v``).

    A weight norm's magnitude ``g`` is left to :func:`claim_extras` (its shape
    ``(out, 1, ...)`` or ``()`` says how it permutes).
    """
    pre = f"{path}." if path else ""
    kind = type(mod).__name__
    params = getattr(mod, "parametrizations", None)
    if params is not None:
        names = list(params.keys())
        plist = params["weight"] if "weight" in names else []
        if names != ["weight"] or len(plist) != 1 or type(plist[0]).__name__ != "_WeightNorm":
            found = {n: [type(p).__name__ for p in params[n]] for n in names}
            raise UnsupportedLayerError(path, kind, f"parametrizations {found} are not supported (only weight "
                                        "normalization of 'weight'); remove them with torch.nn.utils.parametrize."
                                        "remove_parametrizations before tracing")
        _check_norm_dim(path, kind, plist[0].dim)
        return f"{pre}parametrizations.weight.original1"
    for hook in mod._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm" and getattr(hook, "name", None) == "weight":
            _check_norm_dim(path, kind, hook.dim)
            return f"{pre}weight_v"
    return f"{pre}weight"


def _check_norm_dim(path: str, kind: str, dim: Any) -> None:
    if dim not in (None, -1, 0):
        raise UnsupportedLayerError(path, kind, f"weight normalization over dim={dim} (per input unit) is not "
                                    "supported; use dim=0 (per output unit, the default) or dim=None")


def claim_extras(b: SpecBuilder, path: str, mod: nn.Module, src: int, weight: str,
                 w_axes: tuple, out_group: int, out_site: int, op: str, attrs: tuple = ()) -> int:
    """Record every float tensor of ``mod`` the dense rule did not claim; returns the output site.

    ``w_axes`` are the weight's axes (output axis first, input axis second).
    """
    site = out_site
    n_out = b.size(out_group)
    out_ax = (((out_group, n_out),),)
    for rel, t in mod.state_dict(keep_vars=True).items():
        name = f"{path}.{rel}" if path else rel
        if name in b.tensors or name in b.extras or not t.is_floating_point():
            continue
        shape = tuple(t.shape)
        if t.numel() == 1:
            b.extras.append(name)
            continue
        wshape = tuple(b.tensors[weight].shape)
        if len(shape) == len(wshape) and all(s in (1, ws) for s, ws in zip(shape, wshape)):
            units = [d for d in (0, 1) if shape[d] > 1]
            rest = tuple((((None, s),),) for s in shape[2:])
            if not units:  # constant along both unit axes (e.g. a kernel-shaped mask)
                b.extras.append(name)
                continue
            if units == [0]:
                axes = (out_ax, (((None, shape[1]),),)) + rest
                b.add_tensor(name, shape, "scale", path, op, axes)
                site = b.attach(site, "scale", name, path, part=(0,) * len(shape))
                continue
            if units == [0, 1] and shape[:2] == wshape[:2]:
                b.add_tensor(name, shape, "weight", path, op, tuple(w_axes[:2]) + rest,
                             diagonal=b.tensors[weight].diagonal)
                b.connect(op, src, out_site, path, tensor=name, part=(0,) * len(shape), attrs=attrs)
                continue
        elif len(shape) == 1 and shape[0] == n_out:
            b.add_tensor(name, shape, "scale", path, op, (out_ax,))
            site = b.attach(site, "scale", name, path, part=(0,))
            continue
        raise UnsupportedLayerError(path, type(mod).__name__, f"its tensor '{rel}' of shape {shape} follows "
                                    "neither the output units nor the whole weight; wsl cannot tell how it "
                                    "permutes")
    return site
