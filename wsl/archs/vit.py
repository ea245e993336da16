"""Vision Transformer with Hugging Face ``transformers`` module names.

Parameter names and shapes equal those of ``transformers.ViTModel`` /
``ViTForImageClassification`` (no mask token, no position-embedding
interpolation: inputs must have the configured image size). Pre-LN blocks:
``x + attn(LN(x))`` then ``x + mlp(LN(x))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsl.archs.bert import BertSelfAttention, all_head_size, check_head_dim, config_from_dict
from wsl.archs.simple import activation, factory, tag
from wsl.errors import ArchitectureError


@dataclass
class ViTConfig:
    """Subset of ``transformers.ViTConfig`` (same field names and defaults)."""

    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True
    pooler_output_size: int | None = None
    pooler_act: str = "tanh"
    num_labels: int = 2
    head_dim: int | None = None
    """wsl extension (width families): units per head; ``None`` = ``hidden_size // num_attention_heads`` (HF)."""

    def __post_init__(self) -> None:
        check_head_dim(self.head_dim, "ViTConfig")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ArchitectureError(
                f"ViTConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
            raise ArchitectureError("ViTConfig: image_size and patch_size must be integers (square images)")
        if self.image_size % self.patch_size:
            raise ArchitectureError(
                f"ViTConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        """Number of patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ViTConfig:
        """Read a (Hugging Face ``config.json``) dict; unknown keys are ignored."""
        return config_from_dict(cls, d, "ViTConfig")


class ViTPatchEmbeddings(nn.Module):
    """Non-overlapping patches via ``projection`` (Conv2d, kernel = stride = patch)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.patch_size = config.patch_size
        self.num_channels = config.num_channels
        self.num_patches = config.num_patches
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_patches, hidden)``."""
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class ViTEmbeddings(nn.Module):
    """Patch embeddings, a prepended ``cls_token`` and learned ``position_embeddings``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embeddings = ViTPatchEmbeddings(config)
        self.position_embeddings = nn.Parameter(torch.randn(1, config.num_patches + 1, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, num_patches + 1, hidden)``."""
        embeddings = self.patch_embeddings(pixel_values)
        cls_tokens = self.cls_token.expand(pixel_values.size(0), -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        return self.dropout(embeddings + self.position_embeddings)


class ViTSelfAttention(BertSelfAttention):
    """Multi-head self-attention with ``query``/``key``/``value`` (as in BERT)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__(
            config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob, config.qkv_bias,
            head_size=config.head_dim,
        )


class ViTSelfOutput(nn.Module):
    """Attention output projection; the residual is added in :class:`ViTLayer`."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(all_head_size(config), config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``dropout(dense(hidden_states))``."""
        return self.dropout(self.dense(hidden_states))


class ViTAttention(nn.Module):
    """``attention`` (ViTSelfAttention) followed by ``output`` (ViTSelfOutput)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attention = ViTSelfAttention(config)
        self.output = ViTSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Attention sub-layer without residual."""
        return self.output(self.attention(hidden_states))


class ViTIntermediate(nn.Module):
    """Feed-forward expansion ``act(dense(x))``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden) -> (B, N, intermediate)``."""
        return self.intermediate_act_fn(self.dense(hidden_states))


class ViTOutput(nn.Module):
    """Feed-forward contraction plus residual: ``dropout(dense(h)) + input_tensor``."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """``dropout(dense(hidden_states)) + input_tensor``."""
        return self.dropout(self.dense(hidden_states)) + input_tensor


class ViTLayer(nn.Module):
    """Pre-LN transformer block."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.attention = ViTAttention(config)
        self.intermediate = ViTIntermediate(config)
        self.output = ViTOutput(config)
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``h = x + attn(LN(x)); h + mlp(LN(h))``."""
        hidden_states = self.attention(self.layernorm_before(hidden_states)) + hidden_states
        return self.output(self.intermediate(self.layernorm_after(hidden_states)), hidden_states)


class ViTEncoder(nn.Module):
    """Stack of :class:`ViTLayer` in ``layer`` (a ModuleList)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(ViTLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply every layer in order."""
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class ViTPooler(nn.Module):
    """``act(dense(hidden[:, 0]))`` with ``dense`` and ``activation`` (tanh by default)."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        out = config.pooler_output_size or config.hidden_size
        self.dense = nn.Linear(config.hidden_size, out)
        self.activation = activation(config.pooler_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, N, hidden) -> (B, pooler_output_size)``."""
        return self.activation(self.dense(hidden_states[:, 0]))


def init_vit_weights(module: nn.Module, std: float) -> None:
    """Hugging Face ViT initialisation: truncated N(0, std), zero biases, LN = (1, 0)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, ViTEmbeddings):
            nn.init.trunc_normal_(m.position_embeddings, std=std)
            nn.init.trunc_normal_(m.cls_token, std=std)


def _input_shape(config: ViTConfig) -> tuple[int, int, int]:
    return (config.num_channels, config.image_size, config.image_size)


class ViTModel(nn.Module):
    """ViT backbone: ``embeddings``, ``encoder``, final ``layernorm``, optional ``pooler``.

    ``forward(pixel_values)`` returns the normalised last hidden state
    ``(B, num_patches + 1, hidden)``. As in :class:`wsl.archs.bert.BertModel`,
    the pooler exists for strict checkpoint loading and is applied only by
    :meth:`pool`.
    """

    base_model_prefix = "vit"

    def __init__(self, config: ViTConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.encoder = ViTEncoder(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = ViTPooler(config) if add_pooling_layer else None
        init_vit_weights(self, config.initializer_range)
        kwargs = {"config": config, "add_pooling_layer": add_pooling_layer}
        tag(self, _input_shape(config), "float32", "vit", kwargs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Last hidden state ``(B, num_patches + 1, hidden)``."""
        return self.layernorm(self.encoder(self.embeddings(pixel_values)))

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the pooler to a last hidden state."""
        if self.pooler is None:
            raise ArchitectureError("ViTModel.pool: model was built with add_pooling_layer=False")
        return self.pooler(hidden_states)


class ViTForImageClassification(nn.Module):
    """``vit`` (no pooler) and a linear ``classifier`` on the [CLS] token."""

    base_model_prefix = "vit"

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViTModel(config, add_pooling_layer=False)
        self.classifier: nn.Module = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        )
        init_vit_weights(self.classifier, config.initializer_range)
        tag(self, _input_shape(config), "float32", "vit_classifier", {"config": config})

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_labels)``."""
        return self.classifier(self.vit(pixel_values)[:, 0, :])


@factory("vit_tiny")
def vit_tiny(
    image_size: int = 32,
    patch_size: int = 8,
    num_channels: int = 3,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 4,
    mlp: int = 64,
    num_classes: int = 10,
    head_dim: int | None = None,
) -> ViTForImageClassification:
    """A small :class:`ViTForImageClassification` for tests and zoos (registry ``vit_tiny``).

    ``head_dim`` defaults to ``hidden // heads``.
    """
    config = ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp,
        image_size=image_size, patch_size=patch_size, num_channels=num_channels, num_labels=num_classes,
        head_dim=head_dim,
    )
    return ViTForImageClassification(config)
