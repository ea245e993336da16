"""The model families of issue 21, each from a tiny configuration, for ``benchmarks/coverage.py``.

A :class:`Family` names the packages it needs and a ``make()`` returning ``(module, example input,
tracer)``; the tracer is ``None`` for ``WeightSpace.from_module`` (a PEFT model uses
``wsl.io.lora.peft_space``). Nothing is downloaded: every model is built from a config with random weights.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

Made = tuple[nn.Module, Any, Callable[[nn.Module, Any], Any] | None]


@dataclass(frozen=True)
class Family:
    name: str
    source: str
    make: Callable[[], Made]
    needs: tuple[str, ...] = ()


IMG = torch.randn(2, 3, 32, 32)
IDS = torch.randint(0, 50, (2, 8))


# --------------------------------------------------------------------------------------------- torch.nn
def _tests(module: str, name: str) -> Made:
    mod = importlib.import_module(f"tests.{module}")
    model, x = mod.FAMILIES[name]
    return model, x, None


def _transformer_encoder() -> Made:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    return nn.Sequential(nn.Linear(5, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)), \
        torch.randn(2, 6, 5), None


def _lora_shaped() -> Made:
    from tests.test_space_lora import X, _hand_lora_net

    return _hand_lora_net(), X, None


TORCH = [
    Family("mlp", "torch.nn", lambda: _tests("test_space", "mlp")),
    Family("resnet18 (wsl.archs)", "torch.nn", lambda: _tests("test_space", "resnet18")),
    Family("nn.MultiheadAttention block", "torch.nn", lambda: _tests("test_space", "multihead_attention")),
    Family("nn.TransformerEncoder", "torch.nn", _transformer_encoder),
    Family("ResNeXt block (grouped conv)", "torch.nn", lambda: _tests("test_space_grouped", "resnext")),
    Family("RegNetY (grouped conv + SE)", "torch.nn", lambda: _tests("test_space_grouped", "regnet_y")),
    Family("depthwise x multiplier", "torch.nn", lambda: _tests("test_space_grouped", "depthwise_multiplier")),
    Family("DenseNet (2 concats/block)", "torch.nn", lambda: _tests("test_space_concat", "densenet")),
    Family("Inception (concat)", "torch.nn", lambda: _tests("test_space_concat", "inception")),
    Family("U-Net (skip concat)", "torch.nn", lambda: _tests("test_space_concat", "unet_transpose")),
    Family("ConvNeXt (LayerNorm2d, gamma)", "torch.nn", lambda: _tests("test_space_channels", "convnext")),
    Family("MLP-Mixer (token mixing)", "torch.nn", lambda: _tests("test_space_channels", "mlp_mixer")),
    Family("LoRA-shaped layers", "torch.nn", _lora_shaped),
]


# ------------------------------------------------------------------------------------------------- timm
_STUBS = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
          "torchvision.transforms.functional", "torchvision.datasets", "torchvision.utils")


@functools.lru_cache(maxsize=None)
def _timm() -> Any:
    """timm, imported with placeholder torchvision modules if torchvision cannot be imported (removed after)."""
    try:
        importlib.import_module("torchvision")
        return importlib.import_module("timm")
    except Exception:  # noqa: BLE001
        pass

    class Any_(type):
        def __getattr__(cls, name: str) -> str:
            if name.startswith("__"):
                raise AttributeError(name)
            return name

    class Stub(types.ModuleType):
        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            return Any_(name, (nn.Module,), {})

    saved = {n: sys.modules.get(n) for n in _STUBS}
    try:
        for n in _STUBS:
            sys.modules[n] = Stub(n)
            sys.modules[n].__path__ = []  # type: ignore[attr-defined]
            if "." in n:
                setattr(sys.modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1], sys.modules[n])
        return importlib.import_module("timm")
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old


def _tm(module: str) -> Any:
    _timm()
    return importlib.import_module(f"timm.models.{module}")


def _timm_tests(name: str) -> Made:
    from tests import test_space_timm as t

    model = t._models(_timm())[name]()
    return model, torch.randn(2, 3, 35, 35) if name.startswith("inception") else IMG, None


def _create(name: str, **kw: Any) -> Made:
    return _timm().create_model(name, pretrained=False, num_classes=3, **kw), IMG, None


TIMM = [Family(f"timm {n}", "timm", functools.partial(_timm_tests, n), ("timm",)) for n in
        ("resnext", "seresnext", "regnetx", "regnety", "densenet", "inception_v3_blocks", "convnext",
         "convnext_conv_mlp", "mlp_mixer")] + [
    Family("timm resnet18", "timm", functools.partial(_create, "resnet18"), ("timm",)),
    Family("timm efficientnet_b0", "timm", functools.partial(_create, "efficientnet_b0"), ("timm",)),
    Family("timm mobilenetv3_small_050", "timm", functools.partial(_create, "mobilenetv3_small_050"), ("timm",)),
    Family("timm ViT", "timm", lambda: (_tm("vision_transformer").VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3), IMG, None), ("timm",)),
    Family("timm DeiT (distilled)", "timm", lambda: (_tm("deit").VisionTransformerDistilled(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3), IMG, None), ("timm",)),
    Family("timm Swin", "timm", lambda: (_tm("swin_transformer").SwinTransformer(
        img_size=32, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1), num_heads=(1, 2), num_classes=3),
        IMG, None), ("timm",)),
    Family("timm LeViT", "timm", lambda: (_tm("levit").Levit(
        img_size=32, embed_dim=(16, 32), key_dim=8, depth=(1, 1), num_heads=(2, 2), num_classes=3,
        stem_stride=8), IMG, None), ("timm",)),
]


# ----------------------------------------------------------------------------------------- transformers
def _hf(model_type: str, x: Any, part: str | None = None, **cfg: Any) -> Made:
    from transformers import AutoConfig, AutoModel

    model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
    return (getattr(model, part) if part else model), x, None


class _Seq2Seq(nn.Module):
    """T5 called with encoder and decoder ids (its forward takes them by keyword)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.t5 = model

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.t5(input_ids=input_ids, decoder_input_ids=decoder_input_ids).last_hidden_state


def _t5() -> Made:
    model, _, _ = _hf("t5", None, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
                      vocab_size=50)
    return _Seq2Seq(model), (IDS, IDS[:, :5]), None


_LM = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
           max_position_embeddings=32)
HF = [
    Family("HF BERT", "transformers", lambda: _hf("bert", IDS, **_LM), ("transformers",)),
    Family("HF RoBERTa", "transformers", lambda: _hf("roberta", IDS, **_LM), ("transformers",)),
    Family("HF DistilBERT", "transformers", lambda: _hf("distilbert", IDS, vocab_size=50, dim=16, hidden_dim=32,
                                                       n_layers=1, n_heads=2), ("transformers",)),
    Family("HF GPT-2", "transformers", lambda: _hf("gpt2", IDS, vocab_size=50, n_embd=16, n_layer=1, n_head=2,
                                                  n_positions=32), ("transformers",)),
    Family("HF Llama (GQA, RoPE, SwiGLU)", "transformers",
           lambda: _hf("llama", IDS, **_LM, num_key_value_heads=2), ("transformers",)),
    Family("HF Mistral", "transformers", lambda: _hf("mistral", IDS, **_LM, num_key_value_heads=2), ("transformers",)),
    Family("HF Qwen2", "transformers", lambda: _hf("qwen2", IDS, **_LM, num_key_value_heads=2), ("transformers",)),
    Family("HF Phi-3", "transformers", lambda: _hf("phi3", IDS, **_LM, num_key_value_heads=2, pad_token_id=0),
           ("transformers",)),
    Family("HF Gemma", "transformers", lambda: _hf("gemma", IDS, **_LM, num_key_value_heads=2, head_dim=4),
           ("transformers",)),
    Family("HF T5 (encoder-decoder)", "transformers", _t5, ("transformers",)),
    Family("HF ViT", "transformers", lambda: _hf("vit", IMG, image_size=32, patch_size=8, hidden_size=16,
                                                num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
           ("transformers",)),
    Family("HF CLIP vision", "transformers", lambda: _hf("clip_vision_model", IMG, image_size=32, patch_size=8,
                                                        hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                        intermediate_size=32), ("transformers",)),
    Family("HF ConvNeXt", "transformers", lambda: _hf("convnext", IMG, hidden_sizes=[8, 16], depths=[1, 1],
                                                     num_stages=2), ("transformers",)),
    Family("HF Whisper encoder", "transformers",
           lambda: _hf("whisper", torch.randn(2, 8, 32), "encoder", num_mel_bins=8, d_model=16, encoder_layers=1,
                       decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                       decoder_ffn_dim=32, max_source_positions=16, vocab_size=50, pad_token_id=0, bos_token_id=0,
                       eos_token_id=0, decoder_start_token_id=0), ("transformers",)),
    Family("HF Wav2Vec2", "transformers",
           lambda: _hf("wav2vec2", torch.randn(2, 400), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, conv_dim=(8, 8), conv_kernel=(10, 3), conv_stride=(5, 2),
                       num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, vocab_size=50),
           ("transformers",)),
]


# ------------------------------------------------------------------------------------------------- PEFT
def _peft(base: nn.Module, x: Any, targets: list[str]) -> Made:
    from peft import LoraConfig, get_peft_model

    from wsl.io.lora import peft_space

    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    return model, x, peft_space


def _peft_torch() -> Made:
    from tests.test_space_lora import Net, X

    return _peft(Net(), X, ["conv", "fc1"])


def _peft_bert() -> Made:
    model, x, _ = _hf("bert", IDS, **_LM)
    return _peft(model, x, ["query", "value"])


PEFT = [
    Family("PEFT LoRA (Linear + Conv2d)", "peft", _peft_torch, ("peft",)),
    Family("PEFT LoRA on HF BERT", "peft", _peft_bert, ("peft", "transformers")),
]

FAMILIES: list[Family] = TORCH + TIMM + HF + PEFT
