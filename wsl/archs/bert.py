"""BERT encoder with Hugging Face ``transformers`` module names.

Parameter names and shapes equal those of ``transformers.BertModel`` /
``BertForSequenceClassification`` (absolute position embeddings, no
cross-attention), so their checkpoints load with ``strict=True`` (after
dropping the legacy ``embeddings.position_ids`` key some old checkpoints
carry, see :func:`wsl.archs.hf.normalize_hf_state_dict`).

Top-level ``forward`` methods take only ``input_ids`` (token types default to
zeros, no padding mask), so ``torch.fx.symbolic_trace`` needs no
``concrete_args``. :class:`BertSelfAttention` is the only module with
shape-dependent reshapes; outside it the code is fx-traceable as is.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsl.archs.simple import activation, factory, tag
from wsl.errors import ArchitectureError


def config_from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``d``, ignoring unknown keys.

    ``num_labels`` is derived from ``id2label`` as Hugging Face does when
    only the latter is present.
    """
    if not isinstance(d, dict):
        raise ArchitectureError(f"{where}: config must be a dict, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in d.items() if k in names}
    if "num_labels" in names and "num_labels" not in d and isinstance(d.get("id2label"), dict):
        kwargs["num_labels"] = len(d["id2label"])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ArchitectureError(f"{where}: invalid config: {err}") from None


def check_head_dim(head_dim: Any, where: str) -> None:
    """``head_dim`` is ``None`` or a positive int."""
    if head_dim is not None and (not isinstance(head_dim, int) or isinstance(head_dim, bool) or head_dim < 1):
        raise ArchitectureError(f"{where}: head_dim must be a positive int or null, got {head_dim!r}")


@dataclass
class BertConfig:
    """Subset of ``transformers.BertConfig`` (same field names and defaults)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    num_labels: int = 2
    head_dim: int | None = None
    """wsl extension (width families): units per head; ``None`` = ``hidden_size // num_attention_heads`` (HF)."""

    def __post_init__(self) -> None:
        check_head_dim(self.head_dim, "BertConfig")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ArchitectureError(
                f"BertConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.position_embedding_type != "absolute":
            raise ArchitectureError(
                f"BertConfig: position_embedding_type {self.position_embedding_type!r} is not "
                "supported locally (only 'absolute'); install the 'transformers' extra"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Read a (Hugging Face ``config.json``) dict; unknown keys are ignored."""
        return config_from_dict(cls, d, "BertConfig")


class BertEmbeddings(nn.Module):
    """Word + token-type + absolute position embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        h = config.hidden_size
        self.word_embeddings = nn.Embedding(config.vocab_size, h, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        ids = torch.arange(config.max_position_embeddings).expand((1, -1))
        self.register_buffer("position_ids", ids, persistent=False)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed ``input_ids`` ``(B, T)`` into ``(B, T, hidden)``."""
        # torch.narrow rather than slicing: fx passes the buffer as a tensor, the length as a Proxy
        position_ids = torch.narrow(self.position_ids, 1, 0, input_ids.size(1))
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        embeddings = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (no mask).

    ``forward(hidden_states)`` maps ``(B, T, hidden)`` to the concatenated head
    contexts ``(B, T, all_head_size)``; the output projection lives in
    :class:`BertSelfOutput`. ``head_size`` (default ``hidden_size // num_heads``,
    as in Hugging Face) decouples ``all_head_size = num_heads * head_size`` from
    the residual width (width families resize heads with the residual fixed).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 head_size: int | None = None) -> None:
        super().__init__()
        if head_size is None and hidden_size % num_heads:
            raise ArchitectureError(
                f"{type(self).__name__}: hidden size {hidden_size} is not a multiple of {num_heads} heads"
            )
        self.num_attention_heads = num_heads
        self.attention_head_size = hidden_size // num_heads if head_size is None else int(head_size)
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        self.query = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.key = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.value = nn.Linear(hidden_size, self.all_head_size, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, all_head_size) -> (B, heads, T, head_size)``."""
        b, t = x.shape[0], x.shape[1]
        return x.view(b, t, self.num_attention_heads, self.attention_head_size).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Attention context of shape ``(B, T, all_head_size)``."""
        q = self._heads(self.query(hidden_states))
        k = self._heads(self.key(hidden_states))
        v = self._heads(self.value(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.attention_head_size)
        probs = self.dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        return context.view(context.shape[0], context.shape[1], self.all_head_size)


def all_head_size(config: Any) -> int:
    """Width of the concatenated head contexts: ``heads * head_dim`` (``hidden_size`` when ``head_dim`` is None)."""
    if config.head_dim is None:
        return config.hidden_size
    return config.num_attention_heads * config.head_dim


class BertSelfOutput(nn.Module):
    """Attention output projection with post-LN residual."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(all_head_size(config), config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertAttention(nn.Module):
    """``self`` (attention) followed by ``output`` (projection + residual + LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(
            config.hidden_size, config.num_attention_heads, config.attention_probs_dropout_prob,
            head_size=config.head_dim,
        )
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Attention sub-layer of a BERT block."""
        return self.output(self.self(hidden_states), hidden_states)


class BertIntermediate(nn.Module):
    """Feed-forward expansion ``act(dense(x))``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = activation(config.hidden_act)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, hidden) -> (B, T, intermediate)``."""
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    """Feed-forward contraction with post-LN residual."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        """``LayerNorm(dropout(dense(hidden_states)) + input_tensor)``."""
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class BertLayer(nn.Module):
    """One post-LN transformer block: ``attention``, ``intermediate``, ``output``."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, hidden) -> (B, T, hidden)``."""
        attention_output = self.attention(hidden_states)
        return self.output(self.intermediate(attention_output), attention_output)


class BertEncoder(nn.Module):
    """Stack of :class:`BertLayer` in ``layer`` (a ModuleList)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply every layer in order."""
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class BertPooler(nn.Module):
    """``tanh(dense(hidden[:, 0]))`` -- the [CLS] token representation."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, hidden) -> (B, hidden)``."""
        return self.activation(self.dense(hidden_states[:, 0]))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """Hugging Face BERT initialisation: N(0, std) weights, zero biases, LN = (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _input_len(config: BertConfig) -> int:
    return min(16, config.max_position_embeddings)


class BertModel(nn.Module):
    """BERT encoder: ``embeddings``, ``encoder`` and (optionally) ``pooler``.

    ``forward(input_ids)`` returns the **last hidden state** ``(B, T, hidden)``
    (``transformers``' ``last_hidden_state``, what sentence-embedding models
    pool). The pooler is *not* applied in ``forward``: its parameters exist so
    checkpoints load strictly, :class:`BertClassifier` uses it, and
    :meth:`pool` applies it. Build with ``add_pooling_layer=False`` for a
    model whose every parameter takes part in ``forward``.
    """

    base_model_prefix = "bert"

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        init_bert_weights(self, config.initializer_range)
        kwargs = {"config": config, "add_pooling_layer": add_pooling_layer}
        tag(self, (_input_len(config),), "int64", "bert", kwargs)

    def encode(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden state, with optional segment ids ``token_type_ids`` ``(B, T)``."""
        return self.encoder(self.embeddings(input_ids, token_type_ids))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden state ``(B, T, hidden)`` for token ids ``(B, T)``."""
        return self.encode(input_ids)

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Apply the pooler to a last hidden state: ``(B, T, H) -> (B, H)``."""
        if self.pooler is None:
            raise ArchitectureError("BertModel.pool: model was built with add_pooling_layer=False")
        return self.pooler(hidden_states)


class BertClassifier(nn.Module):
    """``BertForSequenceClassification``: ``bert`` (with pooler), ``dropout``, ``classifier``."""

    base_model_prefix = "bert"

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=True)
        p = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        init_bert_weights(self.classifier, config.initializer_range)
        tag(self, (_input_len(config),), "int64", "bert_classifier", {"config": config})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_labels)`` from the pooled [CLS] representation."""
        pooled = self.bert.pool(self.bert(input_ids))
        return self.classifier(self.dropout(pooled))


@factory("bert_layer")
def bert_layer(hidden: int = 64, heads: int = 4, intermediate: int = 128, seq_len: int = 8,
               head_dim: int | None = None) -> BertLayer:
    """A single :class:`BertLayer` (dropout 0) mapping ``(B, T, hidden)`` to itself.

    Its example input shape is ``(seq_len, hidden)`` (float32). Registry name
    ``bert_layer``. ``head_dim`` defaults to ``hidden // heads``.
    """
    config = BertConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, head_dim=head_dim,
    )
    layer = BertLayer(config)
    init_bert_weights(layer, config.initializer_range)
    return tag(layer, (seq_len, hidden), "float32")
