"""The initialisation null of a LoRA collection: each adapter's factors drawn afresh from PEFT's init.

A trained adapter collection has no useful init null for ``dW``: PEFT's
default initialisation sets ``B = 0``, so ``dW = s B A = 0`` for every adapter
at init (a stack of zeros, whose spectrum is empty). The factors do have one.
For adapter ``i`` and target ``m`` PEFT draws (``init_lora_weights``):

* ``True`` (the default), linear and conv targets: ``A ~ U(-1/sqrt(f), 1/sqrt(f))``
  with ``f`` the fan-in of ``A`` (``in``, or ``in * prod(kernel)``; this is
  ``kaiming_uniform_(a=sqrt(5))``), ``B = 0``;
* ``"gaussian"``: ``A ~ N(0, (1/r)^2)``, ``B = 0``;
* ``False`` (no reset; the layers' own init): ``A`` as for ``True``,
  ``B ~ U(-1/sqrt(r), 1/sqrt(r))``;
* embedding targets: ``A = 0`` and ``B ~ N(0, 1)`` for ``True`` and
  ``"gaussian"``; both ``N(0, 1)`` for ``False``.

:class:`LoraInitStack` draws these independently per adapter (seeded by
``seed``, adapter index and module), with each adapter's own rank and config.
Compared with the trained ``lora_A`` view it answers: do the trained ``A``
share more structure than independent inits would? A collection that shares
one ``A`` init shows the opposite sign in the centred spectrum (the shared
part is absorbed by the mean, so its total variance falls far *below* this
null); :func:`wsl.subspace.adapter_confounders.adapter_confounders` measures
that directly. Other initialisations (``"eva"``, ``"orthogonal"``, ``"mica"``:
data-dependent or structured) have no null here: :class:`LoraInitStack`
raises :class:`WslError` naming the adapter.
"""

from __future__ import annotations

import hashlib
import math

import torch

from wsl.errors import WslError
from wsl.subspace.adapter_collection import AdapterCollection, AdapterStack
from wsl.subspace.stacks import Stack

__all__ = ["LoraInitStack", "init_factor"]


def init_factor(kind: str, which: str, shape: tuple[int, ...], r: int, init: object,
                gen: torch.Generator) -> torch.Tensor:
    """One factor (``"A"`` or ``"B"``) of one target as PEFT initialises it (see the module docstring)."""
    mode = str(init).lower()
    if mode not in ("true", "false", "gaussian"):
        raise WslError(f"init_lora_weights={init!r} has no random-init null (data-dependent or structured init)")
    if kind == "embedding":
        if which == "A" and mode != "false":
            return torch.zeros(shape)
        return torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:])
    if which == "A":
        if mode == "gaussian":
            return torch.randn(shape, generator=gen) / r
        bound = 1.0 / math.sqrt(fan_in)
    else:
        if mode != "false":
            return torch.zeros(shape)
        bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


class LoraInitStack(Stack):
    """The ``lora_A`` or ``lora_B`` view of a collection at initialisation (names as in the trained view)."""

    def __init__(self, collection: AdapterCollection, view: str = "lora_A", seed: int = 0) -> None:
        if view not in ("lora_A", "lora_B"):
            raise WslError(f"the init null exists for the lora_A and lora_B views, not {view!r} (dW = 0 at init)")
        trained = AdapterStack(collection, view)
        self.collection, self.view, self.seed = collection, view, int(seed)
        self.modules, self.names, self.shapes, self.ids = trained.modules, trained.names, trained.shapes, \
            [f"init-{i}" for i in trained.ids]
        for ad in collection.adapters:
            init = ad.config.get("init_lora_weights", True)
            if str(init).lower() not in ("true", "false", "gaussian"):
                raise WslError(f"adapter {ad.label}: init_lora_weights={init!r} has no random-init null "
                               "(data-dependent or structured init)")

    def _draw(self, i: int, module: str) -> torch.Tensor:
        ad = self.collection.adapters[i]
        t = ad.targets[module]
        key = f"{self.seed}:{i}:{module}:{self.view}".encode()
        gen = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        which = self.view[-1]
        shape = t.a_shape if which == "A" else t.b_shape
        return init_factor(t.kind, which, shape, t.r, ad.config.get("init_lora_weights", True), gen)

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        m = self.modules[name]
        return torch.stack([self._draw(i, m)[r0:r1].reshape(-1) for i in models]).to(dtype)
