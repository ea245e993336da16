"""LoRA layers without PEFT: the same structure and state_dict names, for reading adapters.

:class:`LoraLayer` wraps a base ``Linear``, ``Conv*d`` or HF ``Conv1D`` and adds,
per adapter ``a``::

    y = base(x) + s_a * B_a(A_a(x)),      s_a = alpha_a / r_a   (alpha_a / sqrt(r_a) with rsLoRA)

where ``A_a`` is ``Linear(in, r)`` (a conv with the base's kernel, stride and
padding for conv bases) and ``B_a`` is ``Linear(r, out)`` (a 1x1 conv). Its
submodules are named as PEFT names them (``base_layer``, ``lora_A.<name>``,
``lora_B.<name>``, ``lora_dropout.<name>``), so a PEFT state_dict loads into it
and ``wsl.space``'s LoRA rule (:mod:`wsl.space.lora_rules`) reads it. Dropout
is the identity (adapters are read for inference). :meth:`LoraLayer.delta`
is the update ``s_a B_a A_a`` in the base weight's layout, for merging.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.errors import ArchitectureError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def lora_shape(base: nn.Module) -> tuple[int, int]:
    """``(in, out)`` units of a base layer LoRA can wrap, or :class:`ArchitectureError`."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features
    if isinstance(base, _CONV):
        if base.groups != 1:
            raise ArchitectureError(f"LoRA on a grouped convolution (groups={base.groups}) is not supported")
        return base.in_channels, base.out_channels
    w = base._parameters.get("weight")
    if type(base).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[0]), int(w.shape[1])
    raise ArchitectureError(f"LoRA on a {type(base).__name__} is not supported (Linear, Conv1d/2d/3d, Conv1D)")


class LoraLayer(nn.Module):
    """A base layer plus low-rank adapters (see module docstring)."""

    def __init__(self, base: nn.Module, adapters: dict[str, tuple[int, float]], lora_bias: bool = False) -> None:
        super().__init__()
        n_in, n_out = lora_shape(base)
        self.base_layer = base
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        for name, (r, scaling) in adapters.items():
            if isinstance(base, _CONV):
                conv = type(base)
                self.lora_A[name] = conv(n_in, r, base.kernel_size, base.stride, base.padding, bias=False)
                self.lora_B[name] = conv(r, n_out, 1, 1, bias=lora_bias)
            else:
                self.lora_A[name] = nn.Linear(n_in, r, bias=False)
                self.lora_B[name] = nn.Linear(r, n_out, bias=lora_bias)
            self.lora_dropout[name] = nn.Identity()
            self.scaling[name] = float(scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name in self.lora_A:
            y = y + self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]
        return y

    def delta(self, name: str) -> torch.Tensor:
        """``s B A`` in the layout of ``base_layer.weight`` (``(in, out)`` for HF ``Conv1D``)."""
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        d = torch.einsum("or,ri...->oi...", b.flatten(1), a) * self.scaling[name]
        return d if isinstance(self.base_layer, (nn.Linear,) + _CONV) else d.t()  # HF Conv1D stores (in, out)
