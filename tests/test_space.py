"""WeightSpace: derived symmetries are exact for every supported family.

The central property: permuting every group with a random permutation from
``random_permutation`` leaves the network's function unchanged (to 1e-5),
while actually changing the weights.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.archs import example_input
from wsl.archs.registry import REGISTRY
from wsl.errors import TraceError, UnsupportedLayerError
from wsl.space import WeightSpace, WeightSpaceSpec, invert_permutation, random_permutation


def _randomize(m: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return m.eval()


class Permute(nn.Module):
    def __init__(self, *dims: int) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class TokenNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 12)
        self.pos = nn.Parameter(torch.randn(1, 6, 12))
        self.ff = nn.Linear(12, 16)
        self.out = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos
        return self.out(torch.tanh(self.ff(h)).mean(1))


class MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)
        self.ln = nn.LayerNorm(16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.head(self.ln(h + a)[:, 0])


class GainConv2d(nn.Conv2d):
    """A scaled weight-standardized conv (as in NF-ResNets): an extra per-output-channel ``gain``."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w * self.gain, self.bias, self.stride, self.padding)


class ElementwiseOperands(nn.Module):
    """masked_fill / where / clamp whose extra operands carry units (from the activations)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.b = nn.Linear(5, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.a(x), self.b(x)
        h = torch.where(h > 0, h, 0.1 * h)
        h = h.masked_fill(g < -0.5, 0.0)
        h = torch.clamp(h, min=-1.0, max=2.0) + torch.clamp(g, max=h)
        return self.out(h)


def _families() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    x8 = torch.randn(3, 1, 8, 8)
    bert_cfg = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=48, max_position_embeddings=16, type_vocab_size=2, num_labels=3)
    fam: dict[str, tuple[nn.Module, torch.Tensor]] = {
        "mlp": (nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 9), nn.Tanh(),
                              nn.Linear(9, 3)), torch.randn(4, 7)),
        "conv2d_kernels": (nn.Sequential(
            nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=2, dilation=2),
            nn.GELU(), nn.Conv2d(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2)),
            torch.randn(2, 3, 12, 12)),
        "conv1d_flatten": (nn.Sequential(
            nn.Conv1d(2, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Conv1d(6, 4, 5, padding=2), nn.Tanh(),
            nn.Flatten(), nn.Linear(4 * 8, 5)), torch.randn(2, 2, 16)),
        "conv_flatten_linear": (nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 7),
            nn.ReLU(), nn.Linear(7, 3)), x8),
        "depthwise": (nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
            nn.Conv2d(6, 4, 1), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 16, 2)), x8),
        "batchnorm": (nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
            nn.Flatten(), nn.Linear(8, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Linear(10, 4)), x8),
        "groupnorm": (nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Conv2d(8, 6, 3, padding=1),
            nn.GroupNorm(1, 6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)), x8),
        "layernorm_channels_last": (nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), Permute(0, 2, 3, 1), nn.LayerNorm(8), Permute(0, 3, 1, 2),
            nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)), x8),
        "residual_cnn": (nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), ResBlock(8, 8, 1), ResBlock(8, 12, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 3)), x8),
        "resnet18": (REGISTRY["resnet18"](num_classes=10), torch.randn(2, 3, 32, 32)),
        "conv3d_instancenorm_prelu": (nn.Sequential(
            nn.Conv3d(2, 6, 3, padding=1), nn.InstanceNorm3d(6, affine=True, track_running_stats=True),
            nn.PReLU(), nn.Conv3d(6, 4, 1), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 3)),
            torch.randn(2, 2, 5, 5, 5)),
        "gain_conv_subclass": (nn.Sequential(
            GainConv2d(1, 6, 3, padding=1), nn.ReLU(), GainConv2d(6, 5, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)), x8),
        "weight_norm": (nn.Sequential(
            nn.utils.parametrizations.weight_norm(nn.Conv2d(1, 6, 3, padding=1)), nn.ReLU(),
            nn.utils.parametrizations.weight_norm(nn.Conv2d(6, 6, 3, padding=1), dim=None), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.utils.parametrizations.weight_norm(nn.Linear(6, 7)),
            nn.Tanh(), nn.Linear(7, 3)), x8),
        "weight_norm_legacy": (nn.Sequential(
            nn.utils.weight_norm(nn.Linear(5, 9)), nn.ReLU(), nn.utils.weight_norm(nn.Linear(9, 3))),
            torch.randn(4, 5)),
        "elementwise_operands": (ElementwiseOperands(), torch.randn(4, 5)),
        "embedding": (TokenNet(), torch.randint(0, 20, (3, 6))),
        "multihead_attention": (MHABlock(), torch.randn(2, 5, 5)),
        "bert_layer": (REGISTRY["bert_layer"](), None),
        "bert_classifier": (REGISTRY["bert_classifier"](bert_cfg), None),
        "vit": (REGISTRY["vit_tiny"](), None),
        "gpt2": (REGISTRY["gpt2_lm"](dict(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16)), None),
    }
    legacy, x = fam["weight_norm_legacy"]
    with torch.no_grad():  # the legacy hook leaves a non-leaf `weight` that deepcopy refuses until a no-grad call
        legacy(x)
    return fam


FAMILIES = _families()


def _out(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        o = m(x)
    if isinstance(o, (tuple, list)):
        o = o[0]
    return o


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_permutation_preserves_function(name: str) -> None:
    module, x = FAMILIES[name]
    module = _randomize(copy.deepcopy(module)).double()
    torch.manual_seed(0)
    x = example_input(module, batch=2) if x is None else x
    x = x.double() if x.is_floating_point() else x
    space = WeightSpace.from_module(module, x)
    sd = module.state_dict()
    assert space.num_elements == sum(t.numel() for t in sd.values())
    gen = torch.Generator().manual_seed(123)
    for _ in range(2):
        perms = random_permutation(space, gen)
        assert perms, f"{name}: no permutable group found"
        permuted = space.permute(sd, perms)
        assert set(permuted) == set(sd)
        changed = sum(not torch.equal(sd[k], permuted[k]) for k in sd)
        assert changed > 0
        other = copy.deepcopy(module)
        other.load_state_dict(permuted)
        torch.testing.assert_close(_out(other, x), _out(module, x), atol=1e-5, rtol=1e-5)
        back = space.permute(permuted, invert_permutation(perms))
        assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "bert_layer", "multihead_attention"])
def test_wrong_permutation_breaks_function(name: str) -> None:
    """The test above can fail: permuting one tensor axis alone changes the output."""
    module, x = FAMILIES[name]
    module = _randomize(copy.deepcopy(module))
    x = example_input(module, batch=2) if x is None else x
    space = WeightSpace.from_module(module, x)
    sd = dict(module.state_dict())
    t = next(t for t in space.tensors.values() if t.role == "weight" and any(
        f[0] is not None and space.groups[f[0]].permutable for seg in t.axes[0] for f in seg))
    sd[t.name] = sd[t.name].flip(0)
    other = copy.deepcopy(module)
    other.load_state_dict(sd)
    assert not torch.allclose(_out(other, x), _out(module, x), atol=1e-4)


def test_input_and_output_are_fixed() -> None:
    module, x = FAMILIES["mlp"]
    space = WeightSpace.from_module(module, x)
    kinds = {g.kind: g for g in space.groups}
    assert kinds["input"].fixed and kinds["input"].size == 7
    assert kinds["output"].fixed and kinds["output"].size == 3
    assert [g.size for g in space.permutable_groups()] == [16, 9]


def test_resnet18_structure() -> None:
    space = WeightSpace.from_module(REGISTRY["resnet18"](), torch.randn(1, 3, 64, 64))
    assert space.num_parameters == 11_689_512
    t = space.tensors
    # the stem and all of layer1 share one residual group; downsample ties blocks
    assert t["conv1.weight"].axes[0] == t["layer1.1.conv2.weight"].axes[0]
    assert t["layer2.0.downsample.0.weight"].axes[0] == t["layer2.1.conv2.weight"].axes[0]
    assert t["layer1.0.conv1.weight"].axes[0] != t["conv1.weight"].axes[0]
    assert t["bn1.running_var"].role == "running_var" and t["bn1.running_var"].buffer
    assert "bn1.num_batches_tracked" in space.spec.extras


def test_attention_heads_are_nested_groups() -> None:
    module = REGISTRY["bert_layer"]()
    space = WeightSpace.from_module(module)
    q = space.tensors["attention.self.query.weight"].axes[0][0][0][0]
    k = space.tensors["attention.self.key.weight"].axes[0][0][0][0]
    v = space.tensors["attention.self.value.weight"].axes[0][0][0][0]
    assert q == k != v
    heads = space.groups[q].parent
    assert heads is not None and heads == space.groups[v].parent
    assert space.groups[heads].size == 4
    perms = random_permutation(space, torch.Generator().manual_seed(0))
    d = space.groups[q].size // 4
    blocks = perms[q].view(4, d) // d  # every block moves as a whole
    assert torch.equal(blocks, blocks[:, :1].expand_as(blocks))
    assert torch.equal(perms[q].view(4, d)[:, 0] // d, perms[v].view(4, d)[:, 0] // d)


def test_groupnorm_blocks_respected() -> None:
    module, x = FAMILIES["groupnorm"]
    space = WeightSpace.from_module(module, x)
    g = space.tensors["0.weight"].axes[0][0][0][0]
    assert space.groups[g].parent is not None and space.groups[space.groups[g].parent].size == 4
    p = random_permutation(space, torch.Generator().manual_seed(0))[g]
    assert torch.equal(torch.sort(p.view(4, 2) // 2, dim=1).values[:, 0], p.view(4, 2)[:, 1] // 2)


def test_batched_permutation_matches_single() -> None:
    module, x = FAMILIES["residual_cnn"]
    space = WeightSpace.from_module(module, x)
    models = [_randomize(copy.deepcopy(module), seed=s).state_dict() for s in range(3)]
    stacked = space.stack(models)
    perms = random_permutation(space, torch.Generator().manual_seed(5), batch=3)
    out = space.permute(stacked, perms, batched=True)
    for i in range(3):
        single = space.permute(models[i], {g: p[i] for g, p in perms.items()})
        for k in single:
            assert torch.equal(out[k][i], single[k])


def test_spec_json_round_trip() -> None:
    module, x = FAMILIES["multihead_attention"]
    space = WeightSpace.from_module(module, x)
    d = json.loads(json.dumps(space.to_json()))
    again = WeightSpace.from_json(d)
    assert again.spec == space.spec
    assert again.signature == space.signature
    assert WeightSpaceSpec.from_json_dict(d).to_json_dict() == space.to_json()


class _Concat(nn.Module):
    """Joins a learned tensor to the units (concatenating two layers' units is supported: test_space_concat)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.p = nn.Parameter(torch.randn(1, 3))
        self.c = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.p.expand(x.shape[0], 3)], dim=-1))


class _Matmul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return h @ h.transpose(-1, -2)


@pytest.mark.parametrize("module,x,where,kind", [
    (nn.Sequential(nn.Linear(3, 4), nn.LSTM(4, 4)), torch.randn(2, 3), "1", "LSTM"),
    (nn.Sequential(nn.Conv2d(4, 6, 1), nn.GroupNorm(3, 6), nn.Conv2d(6, 6, 3, groups=2)), torch.randn(1, 4, 6, 6),
     "grouped convolution (groups=2)", "Conv2d"),  # norm blocks of 2 and conv blocks of 3 channels cannot nest
    (nn.Sequential(nn.Linear(3, 4), nn.Bilinear(4, 4, 2)), torch.randn(2, 3), "1", "Bilinear"),
    (_Concat(), torch.randn(2, 4), "cat", "cat"),
    (_Matmul(), torch.randn(2, 5, 4), "matmul", "matmul"),
])
def test_unsupported_layers_are_named(module: nn.Module, x: torch.Tensor, where: str, kind: str) -> None:
    with pytest.raises(UnsupportedLayerError) as err:
        WeightSpace.from_module(module, x)
    assert where in str(err.value) and kind in str(err.value)


def test_untraceable_control_flow_is_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:
                return self.a(x)
            return x

    with pytest.raises(TraceError, match="control flow"):
        WeightSpace.from_module(Branchy(), torch.randn(2, 3))


def test_bad_example_input_is_a_clear_error() -> None:
    with pytest.raises(TraceError, match="input"):
        WeightSpace.from_module(nn.Sequential(nn.Linear(3, 4)), torch.randn(2, 5))


def test_tracing_does_not_change_the_module() -> None:
    module, x = FAMILIES["batchnorm"]
    module = copy.deepcopy(module).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    WeightSpace.from_module(module, x)
    assert module.training
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_minilm_sized_bert_inspects_quickly() -> None:
    cfg = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
               intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2)
    space = WeightSpace.from_module(REGISTRY["bert"](cfg))
    assert 22_500_000 < space.num_parameters < 22_900_000
    nodes, edges = space.graph_size()
    assert nodes > 30_000 and edges > space.num_parameters * 0.99


@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "groupnorm", "bert_layer", "multihead_attention"])
def test_canonicalize_removes_the_permutation(name: str) -> None:
    module, x = FAMILIES[name]
    module = _randomize(copy.deepcopy(module)).double()
    space = WeightSpace.from_module(module, None if x is None else (x.double() if x.is_floating_point() else x))
    sd = module.state_dict()
    canon = space.canonicalize(sd)
    other = space.permute(sd, random_permutation(space, torch.Generator().manual_seed(9)))
    again = space.canonicalize(other)
    assert all(torch.equal(canon[k], again[k]) for k in sd)
    m2 = copy.deepcopy(module)
    m2.load_state_dict(canon)
    x = example_input(module, batch=2) if x is None else x
    x = x.double() if x.is_floating_point() else x
    torch.testing.assert_close(_out(m2, x), _out(module, x), atol=1e-8, rtol=1e-8)
