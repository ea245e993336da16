"""Small building blocks used by model zoos and tests, plus architecture tagging.

Every factory here returns a plain :class:`torch.nn.Sequential` whose children
are standard ``torch.nn`` layers (plus :class:`GlobalAvgPool` and
:class:`Residual`), so the result can be described as JSON by
:func:`wsl.archs.describe.describe` and traced by ``torch.fx``.

Tagging: modules produced by the factories of ``wsl.archs`` carry three plain
attributes, set by :func:`tag`:

* ``wsl_input_shape`` -- input shape without the batch dimension (tuple);
* ``wsl_input_dtype`` -- ``"float32"`` or ``"int64"``;
* ``wsl_arch`` -- a JSON-able ``"wsl.arch/1"`` description that rebuilds it.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import torch
from torch import nn

from wsl.errors import ArchitectureError

FORMAT = "wsl.arch/1"
"""Value of the ``format`` field of every architecture description."""

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "identity": nn.Identity,
}
# Hugging Face ``hidden_act`` / ``activation_function`` spellings.
_ALIASES = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "swish": "silu",
    "linear": "identity",
}

P = ParamSpec("P")
M = TypeVar("M", bound=nn.Module)


def activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name``.

    Valid names: relu, tanh, gelu, gelu_tanh, sigmoid, silu, leaky_relu,
    identity; the Hugging Face aliases gelu_new, gelu_pytorch_tanh, gelu_fast
    (tanh-approximated GELU), swish (SiLU) and linear (identity) are accepted.
    """
    key = _ALIASES.get(name, name) if isinstance(name, str) else name
    if key not in _ACTIVATIONS:
        valid = ", ".join(sorted([*_ACTIVATIONS, *_ALIASES]))
        raise ArchitectureError(f"unknown activation {name!r}; valid names: {valid}")
    return _ACTIVATIONS[key]()


_activation = activation  # used by factories whose ``activation`` argument shadows it


class GlobalAvgPool(nn.Module):
    """Mean over every spatial dimension: ``(B, C, *S) -> (B, C)``.

    Written as ``flatten(x, 2).mean(-1)`` so it works for any number of spatial
    dimensions and stays ``torch.fx``-traceable.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average ``x`` over all dimensions after the channel dimension."""
        return torch.flatten(x, 2).mean(-1)


class Residual(nn.Module):
    """``body(x) + shortcut(x)``, or ``body(x) + x`` when ``shortcut`` is None."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the body and add the (possibly identity) shortcut."""
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.body(x) + skip


def to_json(value: Any, where: str) -> Any:
    """Convert ``value`` to plain JSON types (tuples become lists, dataclasses dicts)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): to_json(v, f"{where}.{k}") for k, v in value.items()}
    raise ArchitectureError(f"{where} is not JSON-serialisable ({type(value).__name__})")


def tag(
    module: M,
    input_shape: Sequence[int],
    input_dtype: str = "float32",
    name: str | None = None,
    kwargs: dict[str, Any] | None = None,
) -> M:
    """Set ``wsl_input_shape``/``wsl_input_dtype`` (and ``wsl_arch`` if ``name``)."""
    module.wsl_input_shape = tuple(int(s) for s in input_shape)
    module.wsl_input_dtype = input_dtype
    if name is not None:
        module.wsl_arch = {
            "format": FORMAT,
            "kind": "builtin",
            "name": name,
            "kwargs": to_json(kwargs or {}, f"builtin '{name}' kwargs"),
        }
    return module


def factory(name: str) -> Callable[[Callable[P, M]], Callable[P, M]]:
    """Decorate a registry factory so its result records a ``builtin`` description.

    The description holds *all* arguments (defaults applied), so it rebuilds the
    same architecture even if a default changes later. The factory itself must
    call :func:`tag` for the input shape.
    """

    def wrap(fn: Callable[P, M]) -> Callable[P, M]:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> M:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as err:
                raise ArchitectureError(f"builtin '{name}': {err}") from None
            bound.apply_defaults()
            module = fn(*bound.args, **bound.kwargs)
            arch = dict(bound.arguments)
            tag(module, module.wsl_input_shape, module.wsl_input_dtype, name, arch)
            return module

        return inner

    return wrap


@factory("mlp")
def mlp(
    sizes: Sequence[int],
    activation: str = "relu",
    dropout: float = 0.0,
    bias: bool = True,
) -> nn.Sequential:
    """Multi-layer perceptron ``Linear -> act -> Dropout -> ... -> Linear``.

    ``sizes`` lists the feature widths ``[in, hidden..., out]``. A Dropout layer
    follows every hidden activation even when ``dropout == 0`` so that the
    ``state_dict`` keys do not depend on the dropout rate.
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ArchitectureError(f"mlp sizes must list >= 2 positive widths, got {sizes}")
    act = _activation
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=bias))
        if i < len(sizes) - 2:
            layers += [act(activation), nn.Dropout(dropout)]
    return tag(nn.Sequential(*layers), (sizes[0],))


def _norm(kind: str | None, channels: int) -> nn.Module | None:
    """Normalisation layer for :func:`small_cnn`."""
    if kind is None:
        return None
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        # nn.LayerNorm normalises the *last* dims of (B, C, H, W), i.e. over W
        # only (or needs a fixed H, W); GroupNorm with one group normalises
        # over (C, H, W) per sample, which is LayerNorm for feature maps and
        # is independent of the spatial size.
        return nn.GroupNorm(1, channels)
    raise ArchitectureError(f"small_cnn norm must be None, 'batch', 'group' or 'layer', got {kind!r}")


@factory("small_cnn")
def small_cnn(
    in_channels: int = 1,
    channels: Sequence[int] = (16, 16, 16),
    num_classes: int = 10,
    kernel_size: int = 3,
    stride: int = 2,
    activation: str = "relu",
    dropout: float = 0.0,
    norm: str | None = None,
) -> nn.Sequential:
    """CNN ``[Conv2d -> norm? -> act -> Dropout] * n -> GlobalAvgPool -> Linear``.

    Convolutions use ``padding=kernel_size // 2``. With the defaults on 1x8x8
    inputs this is the "Small CNN Zoo" network (4,970 parameters). ``norm`` is
    None, ``"batch"`` (BatchNorm2d), ``"group"`` (GroupNorm with up to 8
    groups) or ``"layer"`` (GroupNorm with one group). The Dropout layers are
    always present so ``state_dict`` keys do not depend on the dropout rate.
    """
    act = _activation
    layers: list[nn.Module] = []
    prev = in_channels
    for ch in channels:
        layers.append(nn.Conv2d(prev, ch, kernel_size, stride=stride, padding=kernel_size // 2))
        norm_layer = _norm(norm, ch)
        if norm_layer is not None:
            layers.append(norm_layer)
        layers += [act(activation), nn.Dropout(dropout)]
        prev = ch
    layers += [GlobalAvgPool(), nn.Linear(prev, num_classes)]
    return tag(nn.Sequential(*layers), (in_channels, 8, 8))
