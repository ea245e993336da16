"""Hugging Face encoders, encoder-decoders, vision and audio models (transformers, tiny configs).

BERT, RoBERTa, DistilBERT, ViT, CLIP vision, the Whisper encoder (conv
stem), wav2vec 2.0 (conv feature extractor, weight-normalised positional
convolution) and T5 (relative position bias shared by the layers,
cross-attention reading the encoder's output, embedding shared by encoder,
decoder and LM head): traced by the generic rules; two random permutations
of randomised models preserve every output
(:func:`tests.space_checks.assert_preserves`). Needs ``transformers``.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

pytest.importorskip("transformers", reason="the optional 'transformers' package is not installed")

from tests.space_checks import assert_preserves, output_changes, randomize  # noqa: E402
from wsl.archs.hf_inputs import hf_example_inputs  # noqa: E402
from wsl.archs.hf_tiny import build_tiny  # noqa: E402
from wsl.errors import UnsupportedLayerError  # noqa: E402
from wsl.space import WeightSpace  # noqa: E402

ENCODERS = ["BertModel", "RobertaModel", "DistilBertModel", "ViTModel", "CLIPVisionModel", "WhisperEncoder"]


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


@functools.lru_cache(maxsize=None)
def traced(name: str, **kw: int) -> WeightSpace:
    m = build_tiny(name, "meta", layers=1, **kw)
    return WeightSpace.from_module(m, hf_example_inputs(m))


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_permutations_preserve_the_function(name: str) -> None:
    m = build_tiny(name, layers=1)
    space = assert_preserves(m, hf_example_inputs(m), space=traced(name))
    q = next(t for t in space.tensors.values() if t.name.endswith(("query.weight", "q_proj.weight", "q_lin.weight")))
    g = q.axes[0][0][0][0]
    assert space.groups[g].kind == "qk" and space.groups[space.groups[g].parent].kind == "head"


def test_whisper_conv_stem_feeds_the_residual_stream() -> None:
    space = traced("WhisperEncoder")
    t = space.tensors
    assert space.groups[t["conv1.weight"].axes[1][0][0][0]].kind == "input"  # mel bins: fixed
    assert t["conv1.weight"].axes[0] == t["conv2.weight"].axes[1]  # conv1 channels -> conv2
    assert t["conv2.weight"].axes[0] == t["embed_positions.weight"].axes[1] == t["layer_norm.weight"].axes[0]


class Logits(nn.Module):
    """T5 returning only the LM logits, so that both residual streams are hidden (permutable)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.m(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False).logits


def _t5() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    m = build_tiny("T5ForConditionalGeneration")
    kw = hf_example_inputs(m)
    return Logits(m), (kw["input_ids"], kw["decoder_input_ids"])


def test_t5_encoder_decoder_permutations_preserve_the_function() -> None:
    m, x = _t5()
    space = assert_preserves(m, x, rtol=1e-5)  # T5's RMS norm computes its variance in float32
    t = space.tensors
    enc = t["m.encoder.final_layer_norm.weight"].axes[0]
    cross = "m.decoder.block.0.layer.1.EncDecAttention"
    assert t[f"{cross}.k.weight"].axes[1] == t[f"{cross}.v.weight"].axes[1] == enc  # keys/values: encoder output
    assert not space.groups[enc[0][0][0]].fixed
    bias = "m.encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    heads = [space.groups[t[f"m.encoder.block.{i}.layer.0.SelfAttention.q.weight"].axes[0][0][0][0]].parent
             for i in (0, 1)]
    assert heads[0] == heads[1] == t[bias].axes[1][0][0][0]  # the shared bias ties every layer's heads


def test_t5_encoder_output_cannot_move_alone() -> None:
    """The property test can fail: permuting the encoder's final norm without the rest changes T5."""
    m, x = _t5()
    m = randomize(m.double())
    sd = dict(m.state_dict())
    sd["m.encoder.final_layer_norm.weight"] = sd["m.encoder.final_layer_norm.weight"].flip(0)
    assert output_changes(m, x, sd) > 1e-6


def test_wav2vec2_conv_stem_and_weight_normalised_positional_conv() -> None:
    m = build_tiny("Wav2Vec2Model", layers=1, num_conv_pos_embedding_groups=1)
    space = assert_preserves(m, hf_example_inputs(m))
    conv = "encoder.pos_conv_embed.conv.parametrizations.weight"
    assert f"{conv}.original0" in space.spec.extras  # magnitude per kernel tap (dim=2): no unit axis
    v = space.tensors[f"{conv}.original1"]
    assert v.axes[0] == v.axes[1]  # a convolution of the residual stream onto itself


def test_wav2vec2_grouped_positional_conv_is_refused_or_preserved() -> None:
    """With 4 groups the positional convolution is a grouped convolution (wsl.space's grouped-conv rule, when
    present, must preserve the function; without it the refusal names the layer and the groups)."""
    m = build_tiny("Wav2Vec2Model", layers=1)
    try:
        space = traced("Wav2Vec2Model")
    except UnsupportedLayerError as e:
        assert "encoder.pos_conv_embed.conv" in str(e) and "groups=4" in str(e) and "\n" not in str(e)
        return
    assert_preserves(m, hf_example_inputs(m), space=space)
