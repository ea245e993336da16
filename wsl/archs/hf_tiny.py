"""Tiny ``config.json`` dicts of common Hugging Face model types, for tests and benchmarks.

Each entry is a configuration ``transformers`` builds in milliseconds (hidden
size 32, two layers, four heads, grouped-query attention with two key/value
heads where the family has it) with the field names of a real Hub
``config.json`` (one per model class: ``T5Model`` and ``T5ForConditionalGeneration``
share a configuration). :func:`build_tiny` builds one (optionally on the meta
device, where no weight is allocated, and with ``layers=`` layers); :func:`wsl.archs.hf_inputs.hf_example_inputs`
gives its example input. Building needs the optional ``transformers`` extra.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from wsl.errors import ArchitectureError

_V = 64  #: vocabulary size of every text model here
_TEXT = {"vocab_size": _V, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
_DECODER = {**_TEXT, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 64}

#: name -> config dict (``model_type`` + ``architectures`` + fields).
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "BertModel": {"model_type": "bert", **_TEXT, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "intermediate_size": 48, "max_position_embeddings": 32},
    "RobertaModel": {"model_type": "roberta", **_TEXT, "hidden_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "intermediate_size": 48, "max_position_embeddings": 40},
    "DistilBertModel": {"model_type": "distilbert", **_TEXT, "dim": 32, "n_layers": 2, "n_heads": 4,
                        "hidden_dim": 48, "max_position_embeddings": 32},
    "GPT2Model": {"model_type": "gpt2", **_TEXT, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32},
    "GPT2LMHeadModel": {"model_type": "gpt2", **_TEXT, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 32},
    "LlamaForCausalLM": {"model_type": "llama", **_DECODER},
    "MistralModel": {"model_type": "mistral", **_DECODER},
    "Qwen2Model": {"model_type": "qwen2", **_DECODER},
    "Phi3Model": {"model_type": "phi3", **_DECODER},
    "GemmaModel": {"model_type": "gemma", **_DECODER, "head_dim": 8},
    "T5Model": {"model_type": "t5", **_TEXT, "d_model": 32, "d_kv": 8, "d_ff": 48, "num_layers": 2, "num_heads": 4,
                "decoder_start_token_id": 0},
    "T5ForConditionalGeneration": {"model_type": "t5", **_TEXT, "d_model": 32, "d_kv": 8, "d_ff": 48,
                                   "num_layers": 2, "num_heads": 4, "decoder_start_token_id": 0},
    "ViTModel": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "intermediate_size": 48, "image_size": 16, "patch_size": 4, "num_channels": 3},
    "CLIPVisionModel": {"model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 2,
                        "num_attention_heads": 4, "intermediate_size": 48, "image_size": 16, "patch_size": 4},
    "WhisperEncoder": {"model_type": "whisper", **_TEXT, "d_model": 32, "encoder_layers": 2,
                       "encoder_attention_heads": 4, "encoder_ffn_dim": 48, "decoder_layers": 1,
                       "decoder_attention_heads": 4, "decoder_ffn_dim": 48, "num_mel_bins": 8,
                       "max_source_positions": 16, "max_target_positions": 16, "decoder_start_token_id": 1},
    "Wav2Vec2Model": {"model_type": "wav2vec2", "vocab_size": _V, "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "intermediate_size": 48, "conv_dim": [16, 16], "conv_stride": [5, 2],
                      "conv_kernel": [10, 3], "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4},
}
for _name, _cfg in TINY_CONFIGS.items():
    _cfg["architectures"] = [_name]

#: Classes that are not exported at the top level of ``transformers``: (module, class).
_CLASSES = {"WhisperEncoder": ("transformers.models.whisper.modeling_whisper", "WhisperEncoder")}


def tiny_config(name: str, **overrides: Any) -> dict[str, Any]:
    """A copy of ``TINY_CONFIGS[name]`` with ``overrides`` applied."""
    if name not in TINY_CONFIGS:
        raise ArchitectureError(f"no tiny config named {name!r} (known: {', '.join(TINY_CONFIGS)})")
    return {**copy.deepcopy(TINY_CONFIGS[name]), **overrides}


_LAYER_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers")


def build_tiny(name: str, device: str | torch.device | None = None, layers: int | None = None,
               **overrides: Any) -> nn.Module:
    """The ``transformers`` module of a tiny config, in eval mode (random weights; none on ``device="meta"``).

    ``layers`` sets every layer count of the config (two by default).
    """
    cfg = tiny_config(name, **overrides)
    if layers is not None:
        cfg.update({k: layers for k in _LAYER_KEYS if k in cfg})
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise ArchitectureError(f"build_tiny({name!r}) needs the optional 'transformers' package") from exc
    fields = {k: v for k, v in cfg.items() if k != "model_type"}
    config = transformers.AutoConfig.for_model(cfg["model_type"], **fields)
    where = _CLASSES.get(name)
    cls = getattr(importlib.import_module(where[0]), where[1]) if where else getattr(transformers, name)
    with torch.device(device or "cpu"):
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
    return model.eval()
