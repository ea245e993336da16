"""Built-in architecture factories and the describable layer types.

:data:`REGISTRY` maps the ``name`` of a ``"builtin"`` description to its
factory; it is the only code a description can reach (``"hf"`` is
:func:`wsl.archs.hf.from_hf_config`, which builds a module from a Hugging Face
``config.json`` dict). :func:`layer_spec` maps a supported ``torch.nn`` module
to its ``"wsl.arch/1"`` layer dict.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from wsl.archs.bert import BertClassifier, BertConfig, BertModel, bert_layer
from wsl.archs.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from wsl.archs.hf import from_hf_config
from wsl.archs.resnet import resnet, resnet18, resnet34, resnet50
from wsl.archs.simple import GlobalAvgPool, Residual, mlp, small_cnn
from wsl.archs.vit import ViTConfig, ViTForImageClassification, ViTModel, vit_tiny
from wsl.errors import ArchitectureError


def bert(config: dict[str, Any], add_pooling_layer: bool = True) -> BertModel:
    """:class:`BertModel` from a (Hugging Face style) config dict."""
    return BertModel(BertConfig.from_dict(config), add_pooling_layer)


def bert_classifier(config: dict[str, Any]) -> BertClassifier:
    """:class:`BertClassifier` (``BertForSequenceClassification``) from a config dict."""
    return BertClassifier(BertConfig.from_dict(config))


def vit(config: dict[str, Any], add_pooling_layer: bool = True) -> ViTModel:
    """:class:`ViTModel` from a config dict."""
    return ViTModel(ViTConfig.from_dict(config), add_pooling_layer)


def vit_classifier(config: dict[str, Any]) -> ViTForImageClassification:
    """:class:`ViTForImageClassification` from a config dict."""
    return ViTForImageClassification(ViTConfig.from_dict(config))


def gpt2(config: dict[str, Any]) -> GPT2Model:
    """:class:`GPT2Model` from a config dict."""
    return GPT2Model(GPT2Config.from_dict(config))


def gpt2_lm(config: dict[str, Any]) -> GPT2LMHeadModel:
    """:class:`GPT2LMHeadModel` from a config dict."""
    return GPT2LMHeadModel(GPT2Config.from_dict(config))


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp, "small_cnn": small_cnn,
    "resnet": resnet, "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50,
    "vit_tiny": vit_tiny, "vit": vit, "vit_classifier": vit_classifier,
    "bert_layer": bert_layer, "bert": bert, "bert_classifier": bert_classifier,
    "gpt2": gpt2, "gpt2_lm": gpt2_lm, "hf": from_hf_config,
}
"""Builtin name -> factory. Every keyword argument is JSON (configs are dicts)."""

_EXAMPLE_VALUES = {"sizes": "[64, 32, 10]", "config": "{...}"}
"""What to show for a required argument in a call form; '{...}' stands for a config dict."""


def call_form(name: str, fn: Callable[..., Any] | None = None) -> str:
    """How to write builtin ``name`` as a reference: the bare name when every
    argument has a default, else a call with its required arguments, e.g.
    ``mlp(sizes=[64, 32, 10])`` or ``bert(config={...})``."""
    fn = REGISTRY.get(name) if fn is None else fn
    try:
        params = inspect.signature(fn).parameters.values() if fn is not None else ()
    except (TypeError, ValueError):
        return name
    required = [p.name for p in params if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not required:
        return name
    args = ", ".join(f"{p}={_EXAMPLE_VALUES.get(p, '...')}" for p in required)
    return f"{name}({args})"

_PLAIN = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.Identity: "identity",
          GlobalAvgPool: "global_avg_pool"}
_EXACT = {*_PLAIN, nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm,
          nn.GELU, nn.LeakyReLU, nn.Dropout, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Embedding, Residual}


def layer_spec(m: nn.Module, path: str = "layer") -> dict[str, Any]:
    """``"wsl.arch/1"`` layer dict for one supported module (exact types only).

    Raises ArchitectureError naming ``path`` for unsupported modules or settings.
    """
    t = type(m)

    def bad(why: str) -> ArchitectureError:
        return ArchitectureError(f"describe: {path} ({t.__name__}): {why}")

    if t not in _EXACT:  # exact types only: a subclass may compute something else
        raise bad(f"unsupported layer; supported types: {', '.join(sorted(c.__name__ for c in _EXACT))}")
    if t in _PLAIN:
        return {"type": _PLAIN[t]}
    if isinstance(m, nn.Linear):
        return {"type": "linear", "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        if m.padding_mode != "zeros":
            raise bad(f"padding_mode {m.padding_mode!r} is not describable (only 'zeros')")
        return {"type": "conv1d" if t is nn.Conv1d else "conv2d", "out_channels": m.out_channels,
                "kernel_size": list(m.kernel_size), "stride": list(m.stride), "dilation": list(m.dilation),
                "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
                "groups": m.groups, "bias": m.bias is not None}
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.momentum is None:
            raise bad("momentum=None (cumulative moving average) is not describable")
        return {"type": t.__name__.lower(), "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
                "track_running_stats": m.track_running_stats}
    if isinstance(m, nn.GroupNorm):
        return {"type": "groupnorm", "num_groups": m.num_groups, "eps": m.eps, "affine": m.affine}
    if isinstance(m, nn.LayerNorm):
        if len(m.normalized_shape) != 1 or (m.elementwise_affine and m.bias is None):
            raise bad("only LayerNorm over the last dim, with both weight and bias or neither, is describable")
        return {"type": "layernorm", "eps": m.eps, "affine": m.elementwise_affine}
    if isinstance(m, nn.GELU):
        return {"type": "gelu", "approximate": m.approximate}
    if isinstance(m, nn.LeakyReLU):
        return {"type": "leaky_relu", "negative_slope": m.negative_slope}
    if isinstance(m, nn.Dropout):
        return {"type": "dropout", "p": m.p}
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        odd = (m.dilation not in (1, (1, 1)) or m.return_indices) if isinstance(m, nn.MaxPool2d) else (
            not m.count_include_pad or m.divisor_override is not None)
        if m.ceil_mode or odd:
            raise bad("ceil_mode, dilation, return_indices, count_include_pad, divisor_override must be default")
        return {"type": t.__name__.lower(), "kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding}
    if isinstance(m, nn.Flatten):
        if (m.start_dim, m.end_dim) != (1, -1):
            raise bad("only Flatten(start_dim=1, end_dim=-1) is describable")
        return {"type": "flatten"}
    if isinstance(m, nn.Embedding):
        if m.max_norm is not None:
            raise bad("max_norm is not describable")
        return {"type": "embedding", "num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim,
                "padding_idx": m.padding_idx}
    if isinstance(m, Residual):
        return {"type": "residual", "body": layer_specs(m.body, f"{path}.body"),
                "shortcut": None if m.shortcut is None else layer_specs(m.shortcut, f"{path}.shortcut")}
    raise bad("unsupported layer")  # unreachable


def layer_specs(seq: nn.Module, path: str = "layers") -> list[dict[str, Any]]:
    """Layer dicts of the children of a plain ``nn.Sequential``."""
    if type(seq) is not nn.Sequential:
        raise ArchitectureError(f"describe: {path} must be an nn.Sequential (its keys are '<i>.*')")
    return [layer_spec(m, f"{path}[{i}]") for i, m in enumerate(seq)]
