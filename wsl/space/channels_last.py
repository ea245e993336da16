"""LayerNorm whose input does not carry its units on the last dim.

* ``nn.LayerNorm`` normalizes the trailing ``normalized_shape`` dims. If the
  units lie on an earlier dim (a LayerNorm over tokens or positions in a
  token-mixing block), every unit row is normalized on its own::

      y[.., u, .., t] = (x[.., u, .., t] - mean_t) / std_t * w[t] + b[t]

  so a permutation of ``u`` commutes with it and ``w``, ``b`` (indexed by
  fixed positions) are untouched: they are extras.
* A *subclass* of ``nn.LayerNorm`` fed channels-first input (units on dim 1,
  ``normalized_shape == (C,)``) is read as a LayerNorm over the channels --
  timm's and ConvNeXt's ``LayerNorm2d``, which permutes to channels-last,
  normalizes and permutes back::

      y[n, c, h, w] = (x[n, c, h, w] - mean_c) / std_c * w[c] + b[c]

  ``w``, ``b`` follow the channel units. The layer is not from ``torch.nn``,
  so :func:`wsl.space.verify.check_layer` runs it before and after a random
  channel permutation and refuses it if it does something else.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsl.space.builder import SpecBuilder, Val
from wsl.space.concat_layers import attach_norm


def layernorm_off_last(b: SpecBuilder, path: str, mod: nn.LayerNorm, x: Any, out: Any) -> Val | None:
    """The rule for the two cases above, or ``None`` where the ordinary LayerNorm rule applies."""
    if not isinstance(x, Val) or x.site is None or x.fdim is None or x.fdim == x.ndim - 1:
        return None
    ns = tuple(mod.normalized_shape)
    if type(mod) in (nn.LayerNorm, nn.RMSNorm):
        if x.fdim >= x.ndim - len(ns):
            return None  # the units are normalized with other dims: the ordinary rule decides
        for name, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            b.extras.append(f"{path}.{name}")
        return x.with_(shape=tuple(out.shape))
    if len(ns) != 1 or x.fdim != 1 or x.shape[1] != ns[0] or len(x.factors) != 1:
        return None
    [(site, fac)] = attach_norm(b, path, mod, [(x.site, tuple(x.factors))])
    return x.with_(shape=tuple(out.shape), site=site, factors=fac)
