"""Tests of wsl.archs: reference architectures and the wsl.arch/1 JSON format."""

from __future__ import annotations

import importlib.util

import json
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from wsl.archs import (
    ATTENTION_CLASSES, REGISTRY, BasicBlock, BertClassifier, BertConfig, BertLayer, BertModel, GPT2Block,
    GPT2Config, GPT2LMHeadModel, GPT2Model, GlobalAvgPool, Residual, ResNet, ViTConfig, ViTForImageClassification,
    ViTLayer, ViTModel, activation, bert_layer, build, describe, example_input, from_hf_config, mlp,
    normalize_hf_state_dict, resnet18, resnet34, resnet50, small_cnn, validate, vit_tiny,
)
from wsl.errors import ArchitectureError

FMT = "wsl.arch/1"


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def shapes(m: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


class LeafTracer(fx.Tracer):
    """Attention classes are leaves, plus the standard torch.nn leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m).__name__ in ATTENTION_CLASSES or super().is_leaf_module(m, qualname)


def assert_shapes(sd: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    assert {k: sd.get(k) for k in expected} == expected


def check_trace(model: nn.Module, x: torch.Tensor | None = None) -> fx.GraphModule:
    model.eval()
    x = example_input(model) if x is None else x
    gm = fx.GraphModule(model, LeafTracer().trace(model))
    torch.testing.assert_close(gm(x), model(x))
    return gm


# -------------------- ResNet
def test_resnet_layout_init_trace() -> None:
    with torch.device("meta"):
        m, r34, r50 = resnet18(), resnet34(), resnet50()
    sd = shapes(m)
    assert n_params(m) == 11_689_512 and len(list(m.parameters())) == 62
    assert len(sd) == 122  # 62 parameters + 20 BatchNorms x (mean, var, num_batches_tracked)
    assert sum(k.endswith("num_batches_tracked") for k in sd) == 20
    assert list(sd)[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                            "bn1.num_batches_tracked", "layer1.0.conv1.weight"] and list(sd)[-1] == "fc.bias"
    assert_shapes(sd, {"conv1.weight": (64, 3, 7, 7), "layer2.0.downsample.0.weight": (128, 64, 1, 1),
                       "layer2.0.downsample.1.running_var": (128,), "layer4.1.conv2.weight": (512, 512, 3, 3),
                       "fc.weight": (1000, 512)})
    assert "layer1.0.downsample.0.weight" not in sd and "layer2.1.downsample.0.weight" not in sd
    assert isinstance(m.avgpool, nn.AdaptiveAvgPool2d) and m.avgpool.output_size == (1, 1)
    assert m.wsl_input_shape == (3, 224, 224) and m.wsl_input_dtype == "float32"
    assert n_params(r34) == 21_797_672 and len(r34.state_dict()) == 218
    assert n_params(r50) == 25_557_032 and len(r50.state_dict()) == 320
    assert shapes(r50)["layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    torch.manual_seed(0)
    m = resnet18(num_classes=10)
    assert abs(m.layer4[0].conv2.weight.std().item() / (2 / (512 * 9)) ** 0.5 - 1) < 0.02  # kaiming fan_out
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0)
               for b in m.modules() if isinstance(b, nn.BatchNorm2d))
    tiny, x = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10, width=8), torch.randn(2, 3, 32, 32)
    assert check_trace(tiny, x)(x).shape == (2, 10)


# -------------------- BERT
MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
TINY_VIT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=16,
                patch_size=8)
SMALL_GPT2 = dict(vocab_size=50, n_positions=20, n_embd=32, n_layer=2, n_head=4,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
SMALL_BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=24, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)


def test_bert_sizes_names_forward_trace() -> None:
    with torch.device("meta"):
        m = BertModel(BertConfig.from_dict({**MINILM, "unknown_key": 1}))
        bare = BertModel(BertConfig(**MINILM), add_pooling_layer=False)
    assert n_params(m) == 22_713_216 and n_params(bare) == 22_565_376
    sd = shapes(m)
    assert len(sd) == 5 + 6 * 16 + 2 and "embeddings.position_ids" not in sd
    assert_shapes(sd, {"embeddings.position_embeddings.weight": (512, 384), "pooler.dense.weight": (384, 384),
                       "encoder.layer.0.attention.self.query.weight": (384, 384),
                       "encoder.layer.0.attention.output.LayerNorm.bias": (384,),
                       "encoder.layer.5.intermediate.dense.weight": (1536, 384),
                       "encoder.layer.5.output.dense.weight": (384, 1536)})
    att = m.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (12, 32, 384)
    assert m.wsl_input_shape == (16,) and m.wsl_input_dtype == "int64"
    torch.manual_seed(0)
    m = BertModel(BertConfig(**SMALL_BERT)).eval()
    ids = example_input(m)
    assert ids.dtype == torch.int64 and ids.shape == (2, 16) and int(ids.max()) < 100
    assert m(ids).shape == (2, 16, 32) and m.pool(m(ids)).shape == (2, 32)
    assert not torch.allclose(m.encode(ids, torch.ones_like(ids)), m(ids))
    assert "encoder.layer.1.attention.self" in {n.target for n in check_trace(m).graph.nodes}
    layer = bert_layer(hidden=32, heads=4, intermediate=64)
    assert isinstance(layer, BertLayer) and example_input(layer).shape == (2, 8, 32)
    check_trace(layer)
    assert check_trace(BertClassifier(BertConfig(**SMALL_BERT, num_labels=3)), ids)(ids).shape == (2, 3)


# -------------------- ViT
def test_vit_tiny_names_shapes_trace() -> None:
    m = vit_tiny()
    sd = shapes(m)
    assert n_params(m) == 24_234
    assert_shapes(sd, {"vit.embeddings.cls_token": (1, 1, 32), "vit.embeddings.position_embeddings": (1, 17, 32),
                       "vit.embeddings.patch_embeddings.projection.weight": (32, 3, 8, 8),
                       "vit.encoder.layer.1.layernorm_before.weight": (32,), "vit.layernorm.bias": (32,),
                       "vit.encoder.layer.0.attention.attention.query.weight": (32, 32),
                       "vit.encoder.layer.0.attention.output.dense.weight": (32, 32),
                       "vit.encoder.layer.0.output.dense.weight": (32, 64), "classifier.weight": (10, 32)})
    assert not any(k.startswith("vit.pooler") for k in sd)
    assert m.wsl_input_shape == (3, 32, 32) and m(example_input(m)).shape == (2, 10)
    check_trace(m)
    with torch.device("meta"):
        assert n_params(ViTForImageClassification(ViTConfig(num_labels=1000))) == 86_567_656
        assert "pooler.dense.weight" in ViTModel(ViTConfig()).state_dict()


# -------------------- GPT-2
def test_gpt2_small_count_and_names() -> None:
    with torch.device("meta"):
        base, lm = GPT2Model(GPT2Config()), GPT2LMHeadModel(GPT2Config())
    assert n_params(base) == 124_439_808 and n_params(lm) == 124_439_808  # lm_head is tied
    sd = shapes(base)
    assert len(sd) == 2 + 12 * 12 + 2 and "position_ids" not in sd
    assert_shapes(sd, {"h.0.attn.c_attn.weight": (768, 2304), "h.0.attn.c_attn.bias": (2304,),
                       "h.11.mlp.c_fc.weight": (768, 3072), "h.11.mlp.c_proj.weight": (3072, 768),
                       "wpe.weight": (1024, 768)})
    assert len(lm.state_dict()) == 149 and shapes(lm)["lm_head.weight"] == (50257, 768)
    assert lm.lm_head.weight is lm.transformer.wte.weight
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2)).eval()
    ids = example_input(lm)
    assert ids.shape == (2, 16) and lm(ids).shape == (2, 16, 50)
    changed = torch.cat([ids[:, :10], (ids[:, 10:] + 1) % 50], dim=1)
    torch.testing.assert_close(lm(changed)[:, :10], lm(ids)[:, :10])  # causal
    assert not torch.allclose(lm(changed)[:, 10:], lm(ids)[:, 10:])
    check_trace(lm)


_FF = {"self_attn.out_proj": "attention.output.dense", "linear1": "intermediate.dense", "linear2": "output.dense"}
BLOCKS: dict[str, tuple[Any, bool, float, Any, dict[str, str]]] = {  # make, norm_first, eps, act, names
    "bert": (lambda: bert_layer(hidden=32, heads=4, intermediate=128), False, 1e-12, "gelu",
             {**_FF, "norm1": "attention.output.LayerNorm", "norm2": "output.LayerNorm"}),
    "vit": (lambda: ViTLayer(ViTConfig(hidden_size=32, num_attention_heads=4, intermediate_size=128)), True,
            1e-12, "gelu", {**_FF, "norm1": "layernorm_before", "norm2": "layernorm_after"}),
    "gpt2": (lambda: GPT2Block(GPT2Config(**SMALL_GPT2)), True, 1e-5, lambda t: F.gelu(t, approximate="tanh"),
             {"self_attn.in_proj": "attn.c_attn", "self_attn.out_proj": "attn.c_proj", "linear1": "mlp.c_fc",
              "linear2": "mlp.c_proj", "norm1": "ln_1", "norm2": "ln_2"}),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_block_matches_torch_transformer_layer(kind: str) -> None:
    """Our blocks compute what nn.TransformerEncoderLayer computes with the same weights."""
    make, norm_first, eps, act, names = BLOCKS[kind]
    torch.manual_seed(0)
    block = make().eval()
    for p in block.parameters():
        nn.init.normal_(p, std=0.3)
    ours, sd = dict(block.state_dict()), {}
    if kind != "gpt2":  # separate query/key/value -> in_proj
        at = "attention.self" if kind == "bert" else "attention.attention"
        sd = {f"self_attn.in_proj_{s}": torch.cat([ours[f"{at}.{n}.{s}"] for n in ("query", "key", "value")])
              for s in ("weight", "bias")}
    for ref_name, our_name in names.items():
        for s in ("weight", "bias"):
            t = ours[f"{our_name}.{s}"]  # GPT-2 Conv1D weights are transposed Linear weights
            sd[ref_name + ("_" if ref_name.endswith("in_proj") else ".") + s] = (
                t.T if kind == "gpt2" and s == "weight" and t.dim() == 2 else t)
    ref = nn.TransformerEncoderLayer(32, 4, 128, dropout=0.0, activation=act, layer_norm_eps=eps,
                                     batch_first=True, norm_first=norm_first).eval()
    ref.load_state_dict(sd, strict=True)
    x = torch.randn(2, 6, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(6) if kind == "gpt2" else None
    torch.testing.assert_close(block(x), ref(x, src_mask=mask, is_causal=mask is not None), atol=1e-5, rtol=1e-4)


# -------------------- simple
def test_small_cnn_mlp_residual_activation() -> None:
    m = small_cnn()
    assert n_params(m) == 4_970 and m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert [k for k in m.state_dict()] == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias",
                                           "10.weight", "10.bias"]
    assert m.wsl_input_shape == (1, 8, 8) and isinstance(m[9], GlobalAvgPool)
    check_trace(m)
    for norm, cls in {"batch": nn.BatchNorm2d, "group": nn.GroupNorm, "layer": nn.GroupNorm}.items():
        net = small_cnn(in_channels=3, channels=(8, 12), norm=norm, activation="gelu", dropout=0.1)
        assert isinstance(net[1], cls) and net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert small_cnn(norm="layer")[1].num_groups == 1 and small_cnn(norm="group")[1].num_groups == 8
    with pytest.raises(ArchitectureError, match="norm"):
        small_cnn(norm="instance")
    with pytest.raises(ArchitectureError, match="valid names: .*relu"):
        activation("relu6")
    m = mlp([4, 8, 3])
    assert [type(x) for x in m] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear] and n_params(m) == 67
    assert example_input(m).shape == (2, 4)
    lin, x, y = nn.Linear(3, 3), torch.randn(2, 3), torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(Residual(lin)(x), Residual(lin, nn.Identity())(x))
    torch.testing.assert_close(Residual(lin)(x), lin(x) + x)
    torch.testing.assert_close(GlobalAvgPool()(y), y.mean(dim=(2, 3)))
    assert isinstance(activation("gelu_new"), nn.GELU) and isinstance(activation("swish"), nn.SiLU)


# -------------------- describe
def L(t: str, **kw: Any) -> dict[str, Any]:
    """A layer dict."""
    return {"type": t, **kw}


def _seq(*layers: Any, shape: Any = (4,)) -> dict[str, Any]:
    return {"format": FMT, "kind": "sequential", "input_shape": list(shape), "layers": list(layers)}


RICH = _seq(
    L("conv2d", out_channels=8, kernel_size=[3, 3], padding=1), L("batchnorm2d"), L("relu"),
    L("residual", body=[L("conv2d", out_channels=8, kernel_size=3, padding="same", groups=2, bias=False),
                        L("groupnorm", num_groups=4), L("silu")]),
    L("residual", body=[L("conv2d", out_channels=16, kernel_size=3, stride=2, padding=1)],
      shortcut=[L("conv2d", out_channels=16, kernel_size=1, stride=2)]),
    L("maxpool2d", kernel_size=2), L("avgpool2d", kernel_size=3, stride=1, padding=1), L("flatten"),
    L("linear", out_features=10), L("layernorm", eps=1e-6), L("gelu", approximate="tanh"), L("dropout", p=0.1),
    L("leaky_relu", negative_slope=0.2), L("batchnorm1d", affine=False), L("tanh"), L("sigmoid"), L("identity"),
    L("linear", out_features=2), shape=[3, 12, 12])
CONV1D = _seq(L("conv1d", out_channels=4, kernel_size=5, dilation=2), L("batchnorm1d"), L("relu"),
              L("global_avg_pool"), L("linear", out_features=3, bias=False), shape=[2, 16])
TOKENS = _seq(L("embedding", num_embeddings=20, embedding_dim=8, padding_idx=0), L("layernorm"),
              L("linear", out_features=5), shape=[7])


@pytest.mark.parametrize("desc", [RICH, CONV1D, TOKENS], ids=["rich", "conv1d", "tokens"])
def test_sequential_round_trip(desc: dict[str, Any]) -> None:
    original = json.loads(json.dumps(desc))
    m = build(desc)
    assert desc == original  # build does not modify its input
    d1 = describe(m)
    assert json.loads(json.dumps(d1)) == d1 == validate(desc)
    m2, x = build(d1), example_input(m)
    assert shapes(m2) == shapes(m) and describe(m2) == d1
    del m2.wsl_arch  # plain nn.Sequential: described layer by layer
    assert describe(m2) == d1 and m2.load_state_dict(m.state_dict(), strict=True) is not None
    assert x.dtype == (torch.int64 if desc is TOKENS else torch.float32)
    torch.testing.assert_close(m2.eval()(x), m.eval()(x))
    check_trace(m)


def test_canonical_form_and_plain_sequential() -> None:
    d = validate(RICH)
    assert d["layers"][0] == {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 1, "padding": 1,
                              "dilation": 1, "groups": 1, "bias": True}
    assert d["layers"][1] == {"type": "batchnorm2d"} and d["layers"][3]["shortcut"] is None
    assert d["layers"][5] == {"type": "maxpool2d", "kernel_size": 2, "stride": 2}
    assert d["layers"][9] == {"type": "layernorm", "eps": 1e-6}
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


@pytest.mark.parametrize("desc, pattern", [
    ({"format": "wsl.arch/0", "kind": "sequential"}, "format"),
    ({"format": FMT, "kind": "graph"}, "kind"),
    ({**_seq(L("relu")), "extra": 1}, "extra: unknown field"),
    (_seq(L("relu"), shape=[0]), "input_shape"),
    (_seq(), "layers: expected a non-empty list"),
    (_seq(L("relu"), L("relu"), L("relu"), L("lstm")), r"layers\[3\]\.type: unknown"),
    (_seq(L("linear")), r"layers\[0\]\.out_features: missing required"),
    (_seq(L("linear", out_features="8")), r"layers\[0\]\.out_features: expected a positive int"),
    (_seq(L("linear", out_features=True)), r"layers\[0\]\.out_features"),
    (_seq(L("linear", out_features=4, bais=False)), r"layers\[0\]\.bais: unknown field"),
    (_seq(L("conv2d", out_channels=2, kernel_size=[3, 3, 3]), shape=[1, 8, 8]), r"layers\[0\]\.kernel_size"),
    (_seq(L("dropout", p=1.5)), r"layers\[0\]\.p: expected a number in \[0, 1\]"),
    (_seq(L("relu"), L("conv2d", out_channels=2, kernel_size=3)), r"layers\[1\] \(conv2d\): expects input \(C, H"),
    (_seq(L("conv2d", out_channels=2, kernel_size=5), shape=[1, 3, 3]), r"layers\[0\].*empty"),
    (_seq(L("groupnorm", num_groups=3)), r"layers\[0\] \(groupnorm\)"),
    (_seq(L("residual", body=[L("relu"), L("linear", out_features=3)])),
     r"layers\[0\] \(residual\): body output \[3\] != shortcut output \[4\]"),
    (_seq(L("residual", body=[L("relu"), L("linar")])), r"layers\[0\]\.body\[1\]\.type"),
    (_seq(L("relu"), L("embedding", num_embeddings=3, embedding_dim=2)), r"layers\[1\] \(embedding\): an emb"),
    ({"format": FMT, "kind": "builtin", "name": "os.system"}, "unknown builtin"),
    ({"format": FMT, "kind": "builtin", "name": "mlp", "kwargs": [1]}, "kwargs: expected an object"),
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
    ("vit", {"config": TINY_VIT}),
    ("gpt2", {"config": SMALL_GPT2}),
    ("gpt2_lm", {"config": SMALL_GPT2}),
    ("hf", {"config": {**SMALL_BERT, "model_type": "bert", "architectures": ["BertModel"]}}),
]


@pytest.mark.parametrize("name, kwargs", BUILTINS, ids=[b[0] for b in BUILTINS])
def test_builtin_round_trip(name: str, kwargs: dict[str, Any]) -> None:
    m = build({"format": FMT, "kind": "builtin", "name": name, "kwargs": kwargs})
    d1 = describe(m)
    assert json.loads(json.dumps(d1)) == d1 and d1["kind"] == "builtin"
    m2, x = build(d1), example_input(m)
    assert describe(m2) == d1 and m2.load_state_dict(m.state_dict(), strict=True) is not None
    torch.testing.assert_close(m2.eval()(x), m.eval()(x))


def test_registry_errors_and_example_input() -> None:
    assert {"resnet18", "resnet34", "small_cnn", "mlp", "vit_tiny", "bert_layer", "bert", "gpt2"} <= set(REGISTRY)
    with pytest.raises(ArchitectureError, match="kwargs: builtin 'resnet18'.*foo"):
        build({"format": FMT, "kind": "builtin", "name": "resnet18", "kwargs": {"foo": 1}})
    with pytest.raises(ArchitectureError, match="kwargs"):
        build({"format": FMT, "kind": "builtin", "name": "bert", "kwargs": {"config": {"hidden_size": 10}}})
    assert example_input(small_cnn(in_channels=3), batch=3).shape == (3, 3, 8, 8)
    assert example_input(nn.Sequential(nn.Linear(5, 2))).shape == (2, 5)
    assert example_input(nn.Sequential(nn.Embedding(9, 4))).dtype == torch.int64
    with pytest.raises(ArchitectureError, match="wsl_input_shape"):
        example_input(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))


# -------------------- Hugging Face
def test_from_hf_config_and_normalize_state_dict() -> None:
    cfg = {**SMALL_BERT, "model_type": "bert", "architectures": ["BertForSequenceClassification"],
           "id2label": {"0": "neg", "1": "pos", "2": "neutral"}, "torch_dtype": "float32"}
    clf = from_hf_config(cfg)
    assert isinstance(clf, BertClassifier) and shapes(clf)["classifier.weight"] == (3, 32)
    assert "bert.pooler.dense.weight" in shapes(clf)
    assert type(from_hf_config({**cfg, "architectures": None})) is BertModel
    vit = from_hf_config({**TINY_VIT, "model_type": "vit", "architectures": ["ViTForImageClassification"],
                          "num_labels": 4})
    assert isinstance(vit, ViTForImageClassification) and vit(example_input(vit)).shape == (2, 4)
    gpt = from_hf_config({**SMALL_GPT2, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    assert isinstance(gpt, GPT2LMHeadModel)
    mlm = {**cfg, "architectures": ["BertForMaskedLM"]}
    with pytest.raises(ArchitectureError, match="base_model_only"):
        from_hf_config(mlm)
    assert type(from_hf_config(mlm, base_model_only=True)) is BertModel
    if importlib.util.find_spec("transformers") is None:  # with transformers installed this builds a 7B Llama
        with pytest.raises(ArchitectureError, match="transformers"):
            from_hf_config({"model_type": "llama"})
    torch.manual_seed(0)  # normalize_hf_state_dict
    bert, target = BertModel(BertConfig(**SMALL_BERT)), BertModel(BertConfig(**SMALL_BERT))
    ckpt = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in bert.state_dict().items()}
    ckpt.update({"bert.embeddings.position_ids": torch.arange(24)[None], "cls.predictions.bias": torch.zeros(100)})
    with pytest.raises(RuntimeError, match="cls.predictions.bias"):
        target.load_state_dict(normalize_hf_state_dict(target, ckpt), strict=True)
    target.load_state_dict(normalize_hf_state_dict(target, ckpt, drop_unused=True), strict=True)
    ids = example_input(bert)
    torch.testing.assert_close(target.eval()(ids), bert.eval()(ids))
    lm, fresh = GPT2LMHeadModel(GPT2Config(**SMALL_GPT2)), GPT2LMHeadModel(GPT2Config(**SMALL_GPT2))
    hf = dict(lm.transformer.state_dict())  # as in HF gpt2 files: no prefix, no lm_head, legacy buffers
    hf.update({"h.0.attn.bias": torch.ones(1, 1, 20, 20), "h.0.attn.masked_bias": torch.tensor(-1e4)})
    fresh.load_state_dict(normalize_hf_state_dict(fresh, hf), strict=True)
    assert torch.equal(fresh.lm_head.weight, lm.transformer.wte.weight)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight
