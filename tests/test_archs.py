"""Tests of wsl.archs: reference architectures and the wsl.arch/1 JSON format."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from wsl.archs import (
    ATTENTION_CLASSES, REGISTRY, BertClassifier, BertConfig, BertLayer, BertModel, GPT2Config,
    GPT2LMHeadModel, GPT2Model, GlobalAvgPool, Residual, ResNet, BasicBlock, ViTConfig,
    ViTForImageClassification, ViTModel, activation, bert_layer, build, describe, example_input,
    from_hf_config, mlp, normalize_hf_state_dict, resnet18, resnet34, resnet50, small_cnn, validate,
    vit_tiny,
)
from wsl.archs.gpt2 import GPT2Block
from wsl.archs.vit import ViTLayer
from wsl.errors import ArchitectureError

F32 = "wsl.arch/1"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


class LeafTracer(fx.Tracer):
    """Attention classes are leaves, plus the standard torch.nn leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ in ATTENTION_CLASSES or super().is_leaf_module(m, qualname)


def check_trace(model: nn.Module, x: torch.Tensor | None = None) -> fx.GraphModule:
    model.eval()
    x = example_input(model) if x is None else x
    gm = fx.GraphModule(model, LeafTracer().trace(model))
    torch.testing.assert_close(gm(x), model(x))
    return gm


# ----------------------------------------------------------------- ResNet


def test_resnet18_layout_matches_torchvision() -> None:
    with torch.device("meta"):
        m = resnet18()
    sd = shapes(m)
    assert n_params(m) == 11_689_512
    assert len(list(m.parameters())) == 62
    assert len(sd) == 122  # 62 parameters + 20 BatchNorms x (mean, var, num_batches_tracked)
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 20
    assert list(sd)[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                            "bn1.num_batches_tracked", "layer1.0.conv1.weight"]
    assert list(sd)[-2:] == ["fc.weight", "fc.bias"]
    assert sd["conv1.weight"] == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert sd["layer2.0.downsample.1.running_var"] == (128,)
    assert sd["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert sd["fc.weight"] == (1000, 512)
    assert "layer1.0.downsample.0.weight" not in sd and "layer2.1.downsample.0.weight" not in sd
    assert isinstance(m.avgpool, nn.AdaptiveAvgPool2d) and m.avgpool.output_size == (1, 1)
    assert m.wsl_input_shape == (3, 224, 224) and m.wsl_input_dtype == "float32"


def test_resnet34_resnet50_counts() -> None:
    with torch.device("meta"):
        r34, r50 = resnet34(), resnet50()
    assert n_params(r34) == 21_797_672 and len(r34.state_dict()) == 218
    assert n_params(r50) == 25_557_032 and len(r50.state_dict()) == 320
    assert shapes(r50)["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)


def test_resnet_init_and_tiny_variant() -> None:
    torch.manual_seed(0)
    m = resnet18(num_classes=10)
    w = m.layer4[0].conv2.weight
    assert abs(w.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.02  # kaiming fan_out
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0)
               for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    tiny = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, width=8)
    x = torch.randn(2, 3, 32, 32)
    assert tiny(x).shape == (2, 10)
    gm = check_trace(tiny, x)
    assert not any(n.target is torch.Tensor.add_ for n in gm.graph.nodes)
    again = build(describe(tiny))
    again.load_state_dict(tiny.state_dict(), strict=True)
    torch.testing.assert_close(again.eval()(x), tiny(x))


# ------------------------------------------------------------------- BERT

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
SMALL_BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=24, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)


def test_minilm_size_and_names() -> None:
    with torch.device("meta"):
        m = BertModel(BertConfig.from_dict({**MINILM, "unknown_key": 1}))
        bare = BertModel(BertConfig(**MINILM), add_pooling_layer=False)
    assert n_params(m) == 22_713_216 and n_params(bare) == 22_565_376
    sd = shapes(m)
    assert len(sd) == 5 + 6 * 16 + 2 and "embeddings.position_ids" not in sd
    assert sd["embeddings.position_embeddings.weight"] == (512, 384)
    assert sd["encoder.layer.0.attention.self.query.weight"] == (384, 384)
    assert sd["encoder.layer.0.attention.output.LayerNorm.bias"] == (384,)
    assert sd["encoder.layer.5.intermediate.dense.weight"] == (1536, 384)
    assert sd["encoder.layer.5.output.dense.weight"] == (384, 1536)
    assert sd["pooler.dense.weight"] == (384, 384)
    att = m.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (12, 32, 384)
    assert m.wsl_input_shape == (16,) and m.wsl_input_dtype == "int64"


def _transformer_layer(d: int, heads: int, ff: int, eps: float, norm_first: bool, act: Any) -> nn.Module:
    return nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation=act, layer_norm_eps=eps,
                                      batch_first=True, norm_first=norm_first).eval()


def test_bert_layer_equals_post_ln_transformer() -> None:
    torch.manual_seed(0)
    layer = bert_layer(hidden=32, heads=4, intermediate=64).eval()
    ref = _transformer_layer(32, 4, 64, 1e-12, False, "gelu")
    a, o = layer.attention, layer.output
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.self.query.weight, a.self.key.weight, a.self.value.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([a.self.query.bias, a.self.key.bias, a.self.value.bias]))
        ref.self_attn.out_proj.load_state_dict(a.output.dense.state_dict())
        ref.norm1.load_state_dict(a.output.LayerNorm.state_dict())
        ref.linear1.load_state_dict(layer.intermediate.dense.state_dict())
        ref.linear2.load_state_dict(o.dense.state_dict())
        ref.norm2.load_state_dict(o.LayerNorm.state_dict())
    x = torch.randn(2, 8, 32)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-4)
    assert isinstance(layer, BertLayer) and example_input(layer).shape == (2, 8, 32)
    check_trace(layer)


def test_bert_forward_and_trace() -> None:
    torch.manual_seed(0)
    m = BertModel(BertConfig(**SMALL_BERT)).eval()
    ids = example_input(m)
    assert ids.dtype == torch.int64 and ids.shape == (2, 16) and int(ids.max()) < 100
    assert m(ids).shape == (2, 16, 32) and m.pool(m(ids)).shape == (2, 32)
    assert not torch.allclose(m.encode(ids, torch.ones_like(ids)), m(ids))
    gm = check_trace(m)
    leaves = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    assert "encoder.layer.1.attention.self" in leaves
    clf = BertClassifier(BertConfig(**SMALL_BERT, num_labels=3))
    assert clf(ids).shape == (2, 3)
    check_trace(clf)


# -------------------------------------------------------------------- ViT


def test_vit_tiny_names_shapes_trace() -> None:
    m = vit_tiny()
    sd = shapes(m)
    assert n_params(m) == 24_234
    assert sd["vit.embeddings.cls_token"] == (1, 1, 32)
    assert sd["vit.embeddings.position_embeddings"] == (1, 17, 32)
    assert sd["vit.embeddings.patch_embeddings.projection.weight"] == (32, 3, 8, 8)
    assert sd["vit.encoder.layer.1.layernorm_before.weight"] == (32,)
    assert sd["vit.encoder.layer.0.attention.attention.query.weight"] == (32, 32)
    assert sd["vit.encoder.layer.0.attention.output.dense.weight"] == (32, 32)
    assert sd["vit.encoder.layer.0.output.dense.weight"] == (32, 64)
    assert sd["vit.layernorm.bias"] == (32,) and sd["classifier.weight"] == (10, 32)
    assert not any(k.startswith("vit.pooler") for k in sd)
    assert m.wsl_input_shape == (3, 32, 32)
    assert m(example_input(m)).shape == (2, 10)
    check_trace(m)


def test_vit_base_count_and_pre_ln_block() -> None:
    with torch.device("meta"):
        assert n_params(ViTForImageClassification(ViTConfig(num_labels=1000))) == 86_567_656
        assert "pooler.dense.weight" in ViTModel(ViTConfig()).state_dict()
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64)
    layer = ViTLayer(cfg).eval()
    for p in layer.parameters():
        nn.init.normal_(p, std=0.3)
    ref = _transformer_layer(32, 4, 64, 1e-12, True, "gelu")
    a = layer.attention.attention
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.query.weight, a.key.weight, a.value.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([a.query.bias, a.key.bias, a.value.bias]))
        ref.self_attn.out_proj.load_state_dict(layer.attention.output.dense.state_dict())
        ref.norm1.load_state_dict(layer.layernorm_before.state_dict())
        ref.norm2.load_state_dict(layer.layernorm_after.state_dict())
        ref.linear1.load_state_dict(layer.intermediate.dense.state_dict())
        ref.linear2.load_state_dict(layer.output.dense.state_dict())
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------- GPT-2

SMALL_GPT2 = dict(vocab_size=50, n_positions=20, n_embd=32, n_layer=2, n_head=4,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def test_gpt2_small_count_and_names() -> None:
    with torch.device("meta"):
        base, lm = GPT2Model(GPT2Config()), GPT2LMHeadModel(GPT2Config())
    assert n_params(base) == 124_439_808 and n_params(lm) == 124_439_808  # lm_head is tied
    sd = shapes(base)
    assert len(sd) == 2 + 12 * 12 + 2
    assert sd["h.0.attn.c_attn.weight"] == (768, 2304) and sd["h.0.attn.c_attn.bias"] == (2304,)
    assert sd["h.11.mlp.c_fc.weight"] == (768, 3072) and sd["h.11.mlp.c_proj.weight"] == (3072, 768)
    assert sd["wpe.weight"] == (1024, 768) and "position_ids" not in sd
    lm_sd = shapes(lm)
    assert len(lm_sd) == 149 and lm_sd["lm_head.weight"] == (50257, 768)
    assert lm.lm_head.weight is lm.transformer.wte.weight


def test_gpt2_block_matches_causal_pre_ln_transformer() -> None:
    torch.manual_seed(0)
    cfg = GPT2Config(**SMALL_GPT2)
    block = GPT2Block(cfg).eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    ref = _transformer_layer(32, 4, 128, 1e-5, True, lambda t: F.gelu(t, approximate="tanh"))
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight.T)
        ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
        ref.self_attn.out_proj.weight.copy_(block.attn.c_proj.weight.T)
        ref.self_attn.out_proj.bias.copy_(block.attn.c_proj.bias)
        ref.linear1.weight.copy_(block.mlp.c_fc.weight.T)
        ref.linear1.bias.copy_(block.mlp.c_fc.bias)
        ref.linear2.weight.copy_(block.mlp.c_proj.weight.T)
        ref.linear2.bias.copy_(block.mlp.c_proj.bias)
        ref.norm1.load_state_dict(block.ln_1.state_dict())
        ref.norm2.load_state_dict(block.ln_2.state_dict())
    x = torch.randn(2, 6, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(6)
    torch.testing.assert_close(block(x), ref(x, src_mask=mask, is_causal=True), atol=1e-5, rtol=1e-4)


def test_gpt2_causal_tied_and_traceable() -> None:
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2)).eval()
    ids = example_input(lm)
    assert ids.shape == (2, 16) and lm(ids).shape == (2, 16, 50)
    changed = ids.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 50
    torch.testing.assert_close(lm(changed)[:, :10], lm(ids)[:, :10])
    assert not torch.allclose(lm(changed)[:, 10:], lm(ids)[:, 10:])
    check_trace(lm)


# ------------------------------------------------------------------ simple


def test_small_cnn_zoo_shape() -> None:
    m = small_cnn()
    assert n_params(m) == 4_970
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert [k for k in m.state_dict()] == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias",
                                           "10.weight", "10.bias"]
    assert m.wsl_input_shape == (1, 8, 8) and isinstance(m[9], GlobalAvgPool)
    check_trace(m)
    kinds = {"batch": nn.BatchNorm2d, "group": nn.GroupNorm, "layer": nn.GroupNorm}
    for norm, cls in kinds.items():
        net = small_cnn(in_channels=3, channels=(8, 12), norm=norm, activation="gelu", dropout=0.1)
        assert isinstance(net[1], cls) and net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert small_cnn(norm="layer")[1].num_groups == 1 and small_cnn(norm="group")[1].num_groups == 8
    with pytest.raises(ArchitectureError, match="norm"):
        small_cnn(norm="instance")


def test_mlp_residual_activation_pool() -> None:
    m = mlp([4, 8, 3])
    assert [type(x) for x in m] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear] and n_params(m) == 67
    assert example_input(m).shape == (2, 4)
    lin = nn.Linear(3, 3)
    x = torch.randn(2, 3)
    torch.testing.assert_close(Residual(lin)(x), lin(x) + x)
    torch.testing.assert_close(Residual(lin, nn.Identity())(x), lin(x) + x)
    y = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(GlobalAvgPool()(y), y.mean(dim=(2, 3)))
    assert isinstance(activation("gelu_new"), nn.GELU) and isinstance(activation("swish"), nn.SiLU)
    with pytest.raises(ArchitectureError, match="valid names: .*relu"):
        activation("relu6")


# ---------------------------------------------------------------- describe

RICH = {
    "format": F32, "kind": "sequential", "input_shape": [3, 12, 12],
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": [3, 3], "padding": 1},
        {"type": "batchnorm2d"}, {"type": "relu"},
        {"type": "residual", "body": [{"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same",
                                       "groups": 2, "bias": False},
                                      {"type": "groupnorm", "num_groups": 4}, {"type": "silu"}]},
        {"type": "residual", "body": [{"type": "conv2d", "out_channels": 16, "kernel_size": 3, "stride": 2,
                                       "padding": 1}],
         "shortcut": [{"type": "conv2d", "out_channels": 16, "kernel_size": 1, "stride": 2}]},
        {"type": "maxpool2d", "kernel_size": 2}, {"type": "avgpool2d", "kernel_size": 3, "stride": 1,
                                                  "padding": 1},
        {"type": "flatten"}, {"type": "linear", "out_features": 10}, {"type": "layernorm", "eps": 1e-6},
        {"type": "gelu", "approximate": "tanh"}, {"type": "dropout", "p": 0.1},
        {"type": "leaky_relu", "negative_slope": 0.2}, {"type": "batchnorm1d", "affine": False},
        {"type": "tanh"}, {"type": "sigmoid"}, {"type": "identity"}, {"type": "linear", "out_features": 2},
    ],
}
CONV1D = {"format": F32, "kind": "sequential", "input_shape": [2, 16],
          "layers": [{"type": "conv1d", "out_channels": 4, "kernel_size": 5, "dilation": 2},
                     {"type": "batchnorm1d"}, {"type": "relu"}, {"type": "global_avg_pool"},
                     {"type": "linear", "out_features": 3, "bias": False}]}
TOKENS = {"format": F32, "kind": "sequential", "input_shape": [7],
          "layers": [{"type": "embedding", "num_embeddings": 20, "embedding_dim": 8, "padding_idx": 0},
                     {"type": "layernorm"}, {"type": "linear", "out_features": 5}]}


@pytest.mark.parametrize("desc", [RICH, CONV1D, TOKENS], ids=["rich", "conv1d", "tokens"])
def test_sequential_round_trip(desc: dict[str, Any]) -> None:
    original = copy.deepcopy(desc)
    m = build(desc)
    assert desc == original  # build does not modify its input
    d1 = describe(m)
    assert json.loads(json.dumps(d1)) == d1 == validate(desc)
    m2 = build(d1)
    assert shapes(m2) == shapes(m) and describe(m2) == d1
    del m2.wsl_arch  # plain nn.Sequential: described layer by layer
    assert describe(m2) == d1
    m2.load_state_dict(m.state_dict(), strict=True)
    x = example_input(m)
    assert x.dtype == (torch.int64 if desc is TOKENS else torch.float32)
    torch.testing.assert_close(m2.eval()(x), m.eval()(x))
    check_trace(m)


def test_canonical_form() -> None:
    d = validate(RICH)
    assert d["layers"][0] == {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
                              "dilation": 1, "groups": 1, "bias": True}
    assert d["layers"][1] == {"type": "batchnorm2d"} and d["layers"][3]["shortcut"] is None
    assert d["layers"][5] == {"type": "maxpool2d", "kernel_size": 2, "stride": 2}
    assert d["layers"][9] == {"type": "layernorm", "eps": 1e-6}


def test_describe_plain_sequential() -> None:
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    d = describe(seq)
    assert d["input_shape"] == [4] and [layer["type"] for layer in d["layers"]] == ["linear", "relu", "linear"]
    convs = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ArchitectureError, match="input_shape"):
        describe(convs)
    assert describe(convs, input_shape=(1, 8, 8))["input_shape"] == [1, 8, 8]
    with pytest.raises(ArchitectureError, match="does not reproduce"):
        describe(convs, input_shape=(1, 9, 9))
    built = small_cnn()
    assert describe(built)["kind"] == "builtin" and describe(built, expand=True)["kind"] == "sequential"


@pytest.mark.parametrize("module, pattern", [
    (nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)), r"layers\[1\] \(LSTM\): unsupported"),
    (nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.ReLU())), r"layers\[1\] \(Sequential\)"),
    (nn.Sequential(nn.Linear(2, 2), Residual(nn.Linear(2, 2))), r"layers\[1\]\.body must be an nn.Sequential"),
    (nn.Sequential(nn.Linear(2, 2), nn.MaxPool2d(2, ceil_mode=True)), r"layers\[1\] \(MaxPool2d\)"),
    (nn.Linear(2, 2), "cannot describe Linear"),
])
def test_describe_rejects(module: nn.Module, pattern: str) -> None:
    with pytest.raises(ArchitectureError, match=pattern):
        describe(module)


def _seq(*layers: Any, shape: Any = (4,)) -> dict[str, Any]:
    return {"format": F32, "kind": "sequential", "input_shape": list(shape), "layers": list(layers)}


@pytest.mark.parametrize("desc, pattern", [
    ({"format": "wsl.arch/0", "kind": "sequential"}, "format"),
    ({"format": F32, "kind": "graph"}, "kind"),
    ({**_seq({"type": "relu"}), "extra": 1}, "extra: unknown field"),
    (_seq({"type": "relu"}, shape=[0]), "input_shape"),
    (_seq(), "layers: expected a non-empty list"),
    (_seq({"type": "relu"}, {"type": "relu"}, {"type": "relu"}, {"type": "lstm"}), r"layers\[3\]\.type: unknown"),
    (_seq({"type": "linear"}), r"layers\[0\]\.out_features: missing required"),
    (_seq({"type": "linear", "out_features": "8"}), r"layers\[0\]\.out_features: expected a positive int"),
    (_seq({"type": "linear", "out_features": True}), r"layers\[0\]\.out_features"),
    (_seq({"type": "linear", "out_features": 4, "bais": False}), r"layers\[0\]\.bais: unknown field"),
    (_seq({"type": "conv2d", "out_channels": 2, "kernel_size": [3, 3, 3]}, shape=[1, 8, 8]),
     r"layers\[0\]\.kernel_size"),
    (_seq({"type": "dropout", "p": 1.5}), r"layers\[0\]\.p: expected a number in \[0, 1\]"),
    (_seq({"type": "relu"}, {"type": "conv2d", "out_channels": 2, "kernel_size": 3}),
     r"layers\[1\] \(conv2d\): expects input \(C, H, W\)"),
    (_seq({"type": "conv2d", "out_channels": 2, "kernel_size": 5}, shape=[1, 3, 3]), r"layers\[0\].*empty"),
    (_seq({"type": "groupnorm", "num_groups": 3}), r"layers\[0\] \(groupnorm\)"),
    (_seq({"type": "residual", "body": [{"type": "relu"}, {"type": "linear", "out_features": 3}]}),
     r"layers\[0\] \(residual\): body output \[3\] != shortcut output \[4\]"),
    (_seq({"type": "residual", "body": [{"type": "relu"}, {"type": "linar"}]}), r"layers\[0\]\.body\[1\]\.type"),
    (_seq({"type": "relu"}, {"type": "embedding", "num_embeddings": 3, "embedding_dim": 2}),
     r"layers\[1\] \(embedding\): an embedding must be the first"),
    ({"format": F32, "kind": "builtin", "name": "os.system"}, "unknown builtin"),
    ({"format": F32, "kind": "builtin", "name": "mlp", "kwargs": [1]}, "kwargs: expected an object"),
])
def test_validate_errors(desc: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ArchitectureError, match=pattern):
        validate(desc)


BUILTINS = [
    ("small_cnn", {"channels": [4, 4], "norm": "batch"}),
    ("mlp", {"sizes": [3, 5, 2], "activation": "tanh"}),
    ("resnet", {"layers": [1, 1, 1, 1], "width": 8, "num_classes": 10}),
    ("vit_tiny", {"layers": 1}),
    ("bert_layer", {"hidden": 16, "heads": 2, "intermediate": 32}),
    ("bert", {"config": SMALL_BERT, "add_pooling_layer": False}),
    ("bert_classifier", {"config": {**SMALL_BERT, "id2label": {"0": "a", "1": "b", "2": "c"}}}),
    ("vit", {"config": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                        "intermediate_size": 32, "image_size": 16, "patch_size": 8}}),
    ("gpt2", {"config": SMALL_GPT2}),
    ("gpt2_lm", {"config": SMALL_GPT2}),
    ("hf", {"config": {**SMALL_BERT, "model_type": "bert", "architectures": ["BertModel"]}}),
]


@pytest.mark.parametrize("name, kwargs", BUILTINS, ids=[b[0] for b in BUILTINS])
def test_builtin_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    m = build({"format": F32, "kind": "builtin", "name": name, "kwargs": kwargs})
    d1 = describe(m)
    assert json.loads(json.dumps(d1)) == d1 and d1["kind"] == "builtin"
    m2 = build(d1)
    assert describe(m2) == d1
    m2.load_state_dict(m.state_dict(), strict=True)
    x = example_input(m)
    torch.testing.assert_close(m2.eval()(x), m.eval()(x))


def test_registry_and_builtin_errors() -> None:
    assert {"resnet18", "resnet34", "small_cnn", "mlp", "vit_tiny", "bert_layer", "bert", "gpt2"} <= set(REGISTRY)
    with pytest.raises(ArchitectureError, match="kwargs: builtin 'resnet18'.*foo"):
        build({"format": F32, "kind": "builtin", "name": "resnet18", "kwargs": {"foo": 1}})
    with pytest.raises(ArchitectureError, match="kwargs"):
        build({"format": F32, "kind": "builtin", "name": "bert", "kwargs": {"config": {"hidden_size": 10}}})


def test_example_input() -> None:
    with torch.device("meta"):
        r = resnet18()
    assert example_input(r, batch=3).shape == (3, 3, 224, 224)
    assert example_input(nn.Sequential(nn.Linear(5, 2))).shape == (2, 5)
    emb = example_input(nn.Sequential(nn.Embedding(9, 4)))
    assert emb.shape == (2, 16) and emb.dtype == torch.int64
    with pytest.raises(ArchitectureError, match="wsl_input_shape"):
        example_input(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))


# ---------------------------------------------------------- Hugging Face


def test_from_hf_config_heads() -> None:
    cfg = {**SMALL_BERT, "model_type": "bert", "architectures": ["BertForSequenceClassification"],
           "id2label": {"0": "neg", "1": "pos", "2": "neutral"}, "torch_dtype": "float32"}
    clf = from_hf_config(cfg)
    assert isinstance(clf, BertClassifier) and shapes(clf)["classifier.weight"] == (3, 32)
    assert "bert.pooler.dense.weight" in shapes(clf)
    assert isinstance(from_hf_config({**cfg, "architectures": None}), BertModel)
    vit = from_hf_config({"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 16,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                          "image_size": 16, "patch_size": 8, "num_labels": 4})
    assert isinstance(vit, ViTForImageClassification) and vit(example_input(vit)).shape == (2, 4)
    gpt = from_hf_config({**SMALL_GPT2, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    assert isinstance(gpt, GPT2LMHeadModel)
    with pytest.raises(ArchitectureError, match="base_model_only"):
        from_hf_config({**cfg, "architectures": ["BertForMaskedLM"]})
    assert isinstance(from_hf_config({**cfg, "architectures": ["BertForMaskedLM"]}, base_model_only=True),
                      BertModel)
    with pytest.raises(ArchitectureError, match="transformers"):
        from_hf_config({"model_type": "llama"})


def test_normalize_hf_state_dict() -> None:
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**SMALL_BERT))
    ckpt = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in bert.state_dict().items()}
    ckpt["bert.embeddings.position_ids"] = torch.arange(24)[None]
    ckpt["cls.predictions.bias"] = torch.zeros(100)
    target = BertModel(BertConfig(**SMALL_BERT))
    with pytest.raises(RuntimeError, match="cls.predictions.bias"):
        target.load_state_dict(normalize_hf_state_dict(target, ckpt), strict=True)
    target.load_state_dict(normalize_hf_state_dict(target, ckpt, drop_unused=True), strict=True)
    ids = example_input(bert)
    torch.testing.assert_close(target.eval()(ids), bert.eval()(ids))

    lm = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2))
    hf = {k: v for k, v in lm.transformer.state_dict().items()}  # HF gpt2 files: no prefix, no lm_head
    hf.update({"h.0.attn.bias": torch.ones(1, 1, 20, 20), "h.0.attn.masked_bias": torch.tensor(-1e4)})
    fresh = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2))
    fresh.load_state_dict(normalize_hf_state_dict(fresh, hf), strict=True)
    assert torch.equal(fresh.lm_head.weight, lm.transformer.wte.weight)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
