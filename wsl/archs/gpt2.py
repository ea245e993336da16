"""GPT-2 with Hugging Face ``transformers`` module names.

Parameter names and shapes equal those of ``transformers.GPT2Model`` /
``GPT2LMHeadModel``. Note the :class:`Conv1D` convention: its weight is stored
``(in_features, out_features)`` -- the transpose of ``nn.Linear``.

Weight tying: ``GPT2LMHeadModel.lm_head.weight`` *is* the Parameter
``transformer.wte.weight`` (one tensor, two names). ``parameters()`` yields it
once; ``state_dict()`` lists both keys. Hugging Face checkpoints usually omit
``lm_head.weight`` and may carry legacy ``attn.bias``/``attn.masked_bias``
buffers; :func:`wsl.archs.hf.normalize_hf_state_dict` fixes both before
a strict load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsl.archs.bert import config_from_dict
from wsl.archs.simple import activation, tag
from wsl.errors import ArchitectureError


@dataclass
class GPT2Config:
    """Subset of ``transformers.GPT2Config`` (same field names and defaults)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ArchitectureError(f"GPT2Config: n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        if self.scale_attn_by_inverse_layer_idx:
            raise ArchitectureError(
                "GPT2Config: scale_attn_by_inverse_layer_idx=True is not supported locally; "
                "install the 'transformers' extra"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Config:
        """Read a (Hugging Face ``config.json``) dict; unknown keys are ignored."""
        return config_from_dict(cls, d, "GPT2Config")


class Conv1D(nn.Module):
    """Linear layer with a transposed weight: ``y = x @ weight + bias``.

    ``Conv1D(nf, nx)`` follows Hugging Face's argument order: ``nf`` output
    features, ``nx`` input features; ``weight`` has shape ``(nx, nf)`` and
    ``bias`` shape ``(nf,)``.
    """

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.nx = nx
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., nx) -> (..., nf)``."""
        return torch.matmul(x, self.weight) + self.bias


class GPT2Attention(nn.Module):
    """Causal multi-head self-attention with fused ``c_attn`` and output ``c_proj``.

    ``forward(hidden_states)`` maps ``(B, T, embed_dim)`` to ``(B, T, embed_dim)``
    (output projection included). The causal mask is built at run time.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.embed_dim = config.n_embd
        self.num_heads = config.n_head
        self.head_dim = self.embed_dim // self.num_heads
        self.split_size = self.embed_dim
        self.scale_attn_weights = config.scale_attn_weights
        self.c_attn = Conv1D(3 * self.embed_dim, self.embed_dim)
        self.c_proj = Conv1D(self.embed_dim, self.embed_dim)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, D) -> (B, heads, T, head_dim)``."""
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Causal self-attention output ``(B, T, embed_dim)``."""
        q, k, v = self.c_attn(hidden_states).split(self.split_size, dim=2)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        scores = torch.matmul(q, k.transpose(-1, -2))
        if self.scale_attn_weights:
            scores = scores / math.sqrt(self.head_dim)
        t = scores.shape[-1]
        future = torch.ones(t, t, dtype=torch.bool, device=scores.device).triu(1)
        scores = scores.masked_fill(future, torch.finfo(scores.dtype).min)
        probs = self.attn_dropout(torch.softmax(scores, dim=-1))
        context = torch.matmul(probs, v).permute(0, 2, 1, 3).contiguous()
        context = context.view(context.shape[0], context.shape[1], self.embed_dim)
        return self.resid_dropout(self.c_proj(context))


class GPT2MLP(nn.Module):
    """``dropout(c_proj(act(c_fc(x))))`` with tanh-approximated GELU by default."""

    def __init__(self, intermediate_size: int, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.n_embd)
        self.c_proj = Conv1D(config.n_embd, intermediate_size)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class GPT2Block(nn.Module):
    """Pre-LN block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        inner = config.n_inner if config.n_inner is not None else 4 * config.n_embd
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(inner, config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        hidden_states = self.attn(self.ln_1(hidden_states)) + hidden_states
        return self.mlp(self.ln_2(hidden_states)) + hidden_states


def init_gpt2_weights(module: nn.Module, config: GPT2Config) -> None:
    """Hugging Face GPT-2 initialisation (residual projections scaled by 1/sqrt(2 n_layer))."""
    std = config.initializer_range
    for m in module.modules():
        if isinstance(m, (nn.Linear, Conv1D)):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for name, p in module.named_parameters():
        if name.endswith("c_proj.weight"):
            nn.init.normal_(p, std=std / math.sqrt(2 * config.n_layer))


def _input_len(config: GPT2Config) -> int:
    return min(16, config.n_positions)


class GPT2Model(nn.Module):
    """GPT-2 trunk: ``wte``, ``wpe``, ``drop``, blocks ``h`` and final ``ln_f``.

    ``forward(input_ids)`` returns the last hidden state ``(B, T, n_embd)``.
    Position ids come from a non-persistent buffer (not in ``state_dict``).
    """

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.register_buffer("position_ids", torch.arange(config.n_positions).unsqueeze(0), persistent=False)
        init_gpt2_weights(self, config)
        tag(self, (_input_len(config),), "int64", "gpt2", {"config": config})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Last hidden state ``(B, T, n_embd)`` for token ids ``(B, T)``."""
        position_ids = torch.narrow(self.position_ids, 1, 0, input_ids.size(1))  # fx-traceable slice
        hidden_states = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        for block in self.h:
            hidden_states = block(hidden_states)
        return self.ln_f(hidden_states)


class GPT2LMHeadModel(nn.Module):
    """``transformer`` (GPT2Model) and ``lm_head`` (no bias) tied to ``transformer.wte``."""

    base_model_prefix = "transformer"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        tag(self, (_input_len(config),), "int64", "gpt2_lm", {"config": config})

    def tie_weights(self) -> None:
        """Make ``lm_head.weight`` the very Parameter ``transformer.wte.weight``."""
        self.lm_head.weight = self.transformer.wte.weight

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits ``(B, T, vocab_size)``."""
        return self.lm_head(self.transformer(input_ids))
