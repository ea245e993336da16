"""Reference architectures defined locally, and the ``"wsl.arch/1"`` JSON format.

ResNet (torchvision names), BERT, ViT and GPT-2 (Hugging Face names) are
defined here so published checkpoints load with ``strict=True`` without
torchvision or transformers. :func:`build` / :func:`describe` /
:func:`validate` convert between modules and JSON descriptions;
:func:`example_input` makes an input tensor for tracing.
"""

from __future__ import annotations

import torch
from torch import nn

from wsl.archs.bert import BertClassifier, BertConfig, BertLayer, BertModel, BertSelfAttention, bert_layer
from wsl.archs.describe import SCHEMA, build, describe, validate
from wsl.archs.gpt2 import Conv1D, GPT2Attention, GPT2Block, GPT2Config, GPT2LMHeadModel, GPT2Model
from wsl.archs.hf import from_hf_config, normalize_hf_state_dict
from wsl.archs.registry import REGISTRY
from wsl.archs.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from wsl.archs.simple import FORMAT, GlobalAvgPool, Residual, activation, mlp, small_cnn
from wsl.archs.vit import ViTConfig, ViTForImageClassification, ViTLayer, ViTModel, ViTSelfAttention, vit_tiny
from wsl.errors import ArchitectureError

ATTENTION_CLASSES = ("BertSelfAttention", "ViTSelfAttention", "GPT2Attention")
"""Class names a tracer should treat as leaf modules (they reshape by input size)."""

_DTYPES = {"float32": torch.float32, "int64": torch.int64}


def _guess(module: nn.Module) -> tuple[tuple[int, ...], str]:
    """Input spec from the first module owning parameters, if a Linear/Embedding."""
    for m in module.modules():
        if any(True for _ in m.parameters(recurse=False)):
            if isinstance(m, nn.Linear):
                return (m.in_features,), "float32"
            if isinstance(m, nn.Embedding):
                return (16,), "int64"
            break
    raise ArchitectureError(
        f"example_input: {type(module).__name__} has no wsl_input_shape attribute and its input shape "
        "cannot be guessed (only from a first nn.Linear/nn.Embedding); set module.wsl_input_shape "
        "(without batch) and module.wsl_input_dtype ('float32' or 'int64')"
    )


def example_input(module: nn.Module, batch: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random input batch for ``module`` (float: standard normal; int64: token ids).

    Uses ``wsl_input_shape``/``wsl_input_dtype`` when present, otherwise guesses
    from a first ``nn.Linear`` (features) or ``nn.Embedding`` (16 tokens). Token
    ids are drawn below the first embedding's ``num_embeddings``.
    """
    shape = getattr(module, "wsl_input_shape", None)
    dtype = getattr(module, "wsl_input_dtype", "float32")
    if shape is None:
        shape, dtype = _guess(module)
    if dtype not in _DTYPES:
        raise ArchitectureError(f"example_input: wsl_input_dtype must be 'float32' or 'int64', got {dtype!r}")
    size = (batch, *tuple(shape))
    device = next((p.device for p in module.parameters() if p.device.type != "meta"), torch.device("cpu"))
    if dtype == "float32":
        return torch.randn(size, generator=generator).to(device)
    high = next((m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)), 2)
    return torch.randint(0, high, size, generator=generator).to(device)


__all__ = [
    "ATTENTION_CLASSES", "FORMAT", "REGISTRY", "SCHEMA", "ArchitectureError",
    "BasicBlock", "BertClassifier", "BertConfig", "BertLayer", "BertModel", "BertSelfAttention",
    "Bottleneck", "Conv1D", "GPT2Attention", "GPT2Block", "GPT2Config", "GPT2LMHeadModel", "GPT2Model",
    "GlobalAvgPool", "Residual", "ResNet", "ViTConfig", "ViTForImageClassification", "ViTLayer", "ViTModel",
    "ViTSelfAttention", "activation", "bert_layer", "build", "describe", "example_input",
    "from_hf_config", "mlp", "normalize_hf_state_dict", "resnet18", "resnet34", "resnet50",
    "small_cnn", "validate", "vit_tiny",
]
