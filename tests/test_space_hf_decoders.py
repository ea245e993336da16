"""Hugging Face decoder LLMs (transformers, tiny configs): traced by the generic rules, permutations preserve them.

Llama, Mistral, Qwen2, Phi-3, Gemma (rotary embeddings, grouped-query
attention, gated MLPs, RMSNorm; Phi-3 with fused qkv and gate/up
projections, Qwen2 with q/k/v biases) and GPT-2 (fused ``c_attn``, tied LM
head). Each model is built in float64 with every weight, norm and bias
random, traced, and checked under two random permutations
(:func:`tests.space_checks.assert_preserves`); the structure the rules find
is checked where it matters (rigid q/k inside heads, kv heads, v units free,
segments of fused projections). Needs the optional ``transformers`` package.
"""

from __future__ import annotations

import functools

import pytest
import torch

pytest.importorskip("transformers", reason="the optional 'transformers' package is not installed")

from tests.space_checks import assert_preserves, output_changes, randomize  # noqa: E402
from wsl.archs.hf_inputs import hf_example_inputs  # noqa: E402
from wsl.archs.hf_tiny import build_tiny  # noqa: E402
from wsl.errors import UnsupportedLayerError  # noqa: E402
from wsl.space import WeightSpace  # noqa: E402

DECODERS = ["LlamaForCausalLM", "MistralModel", "Qwen2Model", "Phi3Model", "GemmaModel", "GPT2LMHeadModel"]


@pytest.fixture(autouse=True)
def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()


@functools.lru_cache(maxsize=None)
def traced(name: str) -> WeightSpace:
    """The weight space of a one-layer tiny model, traced on the meta device (once per test session)."""
    m = build_tiny(name, "meta", layers=1)
    return WeightSpace.from_module(m, hf_example_inputs(m))


@pytest.mark.parametrize("name", DECODERS)
def test_decoder_permutations_preserve_the_function(name: str) -> None:
    m = build_tiny(name, layers=1)
    # float32 inside RMSNorm (Llama casts to float32) limits the agreement to ~1e-6 of the output scale
    assert_preserves(m, hf_example_inputs(m), rtol=1e-5, space=traced(name))


def _axes(space: WeightSpace, name: str, axis: int = 0) -> tuple:
    return space.tensors[name].axes[axis]


def test_llama_rotary_gqa_structure() -> None:
    space = traced("LlamaForCausalLM")
    a = "model.layers.0.self_attn"
    q, k, v = (_axes(space, f"{a}.{p}_proj.weight") for p in "qkv")
    kv = q[0][0][0]
    assert q == (((kv, 2), (None, 16)),) and k == (((kv, 2), (None, 8)),)  # 2 kv heads x (2 query heads x 8)
    vg = v[0][0][0]
    assert space.groups[vg].parent == kv and space.groups[vg].size == 16 and not space.groups[kv].fixed
    assert _axes(space, f"{a}.o_proj.weight", 1) == (((vg, 2, 8), (None, 2), (vg, 8, 1)),)
    mlp = "model.layers.0.mlp"
    assert _axes(space, f"{mlp}.gate_proj.weight") == _axes(space, f"{mlp}.up_proj.weight")
    residual = _axes(space, "model.embed_tokens.weight", 1)
    assert space.tensors["model.norm.weight"].axes == (residual,) and not space.groups[residual[0][0][0]].fixed


def test_phi3_fused_projections_become_segments() -> None:
    space = traced("Phi3Model")
    qkv = _axes(space, "layers.0.self_attn.qkv_proj.weight")
    assert len(qkv) == 3 and qkv[0][0][0] == qkv[1][0][0]  # q and k: the same kv heads (rigid inside)
    gate_up = _axes(space, "layers.0.mlp.gate_up_proj.weight")
    assert len(gate_up) == 2 and gate_up[0] == gate_up[1] == _axes(space, "layers.0.mlp.down_proj.weight", 1)[0]


def test_rotary_units_inside_a_head_cannot_move_in_llama() -> None:
    """The property test can fail: swapping two q/k units of one head (alike in q and k) changes Llama."""
    m = randomize(build_tiny("LlamaForCausalLM", layers=1).double())
    kw = hf_example_inputs(m)
    sd = dict(m.state_dict())
    swap = torch.arange(32).view(4, 8)
    swap[:, [0, 1]] = swap[:, [1, 0]]
    kswap = torch.arange(16).view(2, 8)
    kswap[:, [0, 1]] = kswap[:, [1, 0]]
    sd["model.layers.0.self_attn.q_proj.weight"] = sd["model.layers.0.self_attn.q_proj.weight"][swap.flatten()]
    sd["model.layers.0.self_attn.k_proj.weight"] = sd["model.layers.0.self_attn.k_proj.weight"][kswap.flatten()]
    assert output_changes(m, kw, sd) > 1e-6


def test_gpt2_lm_head_is_tied_to_the_embedding() -> None:
    space = traced("GPT2LMHeadModel")
    assert ("lm_head.weight", "transformer.wte.weight") in space.meta("tied")
    assert _axes(space, "lm_head.weight", 1) == _axes(space, "transformer.wte.weight", 1)
    assert len(_axes(space, "transformer.h.0.attn.c_attn.weight", 1)) == 3  # c_attn (in, 3*out): q, k, v


def test_meta_and_cpu_traces_agree() -> None:
    cpu = build_tiny("Phi3Model", layers=1)
    assert WeightSpace.from_module(cpu, hf_example_inputs(cpu)).signature == traced("Phi3Model").signature


def test_an_unsupported_operation_is_refused_in_one_line() -> None:
    """Mixture-of-experts routing (top-k over experts) has no symmetry rule: the refusal names the operation,
    the module path and its type, in one line."""
    import transformers

    cfg = transformers.MixtralConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                     num_experts_per_tok=2)
    with torch.device("meta"):
        m = transformers.MixtralModel(cfg).eval()
    with pytest.raises(UnsupportedLayerError) as err:
        WeightSpace.from_module(m, hf_example_inputs(m))
    msg = str(err.value)
    assert "\n" not in msg and "layers.0.mlp.gate" in msg and "'topk'" in msg and "MixtralTopKRouter" in msg


def test_a_key_value_cache_in_the_output_is_left_out() -> None:
    """With ``use_cache=True`` the forward also returns a cache object: it is state for the next call, not an
    output of this one; the space is the one traced without it, and the cache's type is recorded."""
    m = build_tiny("LlamaForCausalLM", "meta", layers=1)
    kw = {**hf_example_inputs(m), "use_cache": True}
    space = WeightSpace.from_module(m, kw)
    assert space.meta("dropped_outputs") == ("DynamicCache",)
    assert space.signature == traced("LlamaForCausalLM").signature
