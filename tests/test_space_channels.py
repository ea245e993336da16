"""Channels-last norms, layer scales and token mixing, with small torch.nn re-creations (no timm needed).

* ConvNeXt: a ``LayerNorm2d`` (a LayerNorm subclass that permutes to channels-last and back), the block's
  permute + LayerNorm + Linear MLP + layer scale ``gamma.reshape(1, -1, 1, 1)``, and the conv-MLP variant;
  a channels-first LayerNorm written with ops and ``weight[:, None, None]`` (as HF ConvNeXt writes it).
* MLP-Mixer: a Linear over the token axis (its hidden units are a permutable group, tokens are fixed).

Each family preserves its function under two random permutations with randomised values
(``tests/reach_checks.py``); wrong cases are refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace

from tests.reach_checks import check_preserved


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class OpsLayerNorm(nn.Module):
    """Channels-first LayerNorm written with tensor ops (the form HF ConvNeXt uses)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, c: int, conv_mlp: bool = False) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.conv_mlp = conv_mlp
        if conv_mlp:
            self.norm: nn.Module = OpsLayerNorm(c)
            self.fc1, self.fc2 = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1)
        else:
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(1e-6 * torch.ones(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_dw(x)
        if self.conv_mlp:
            h = self.fc2(F.gelu(self.fc1(self.norm(h))))
        else:
            h = self.fc2(F.gelu(self.fc1(self.norm(h.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        return x + h.mul(self.gamma.reshape(1, -1, 1, 1))


class ConvNeXt(nn.Module):
    def __init__(self, conv_mlp: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), LayerNorm2d(8))
        self.stage1 = ConvNeXtBlock(8, conv_mlp)
        self.down = nn.Sequential(LayerNorm2d(8), nn.Conv2d(8, 12, 2, stride=2))
        self.stage2 = nn.Sequential(ConvNeXtBlock(12, conv_mlp), ConvNeXtBlock(12, conv_mlp))
        self.norm, self.head = nn.LayerNorm(12), nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(self.norm(h.mean((2, 3))))


class TokenMlp(nn.Module):
    def __init__(self, n: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n, hidden), nn.Linear(hidden, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MixerBlock(nn.Module):
    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.norm1, self.mlp_tokens = nn.LayerNorm(dim), TokenMlp(tokens, 6)
        self.norm2, self.mlp_channels = nn.LayerNorm(dim), TokenMlp(dim, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 10, 4, stride=4)
        self.blocks = nn.Sequential(MixerBlock(10, 4), MixerBlock(10, 4))
        self.norm, self.head = nn.LayerNorm(10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(h)).mean(1))


class TokenNormMixer(nn.Module):
    """A LayerNorm over the token axis (its parameters index positions, not units)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.tok_norm, self.tok = nn.Linear(5, 8), nn.LayerNorm(6), TokenMlp(6, 3)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).transpose(1, 2)  # (B, 8 units, 6 tokens)
        return self.out(torch.tanh(self.tok(self.tok_norm(h))).mean(-1))


X = torch.randn(2, 3, 16, 16)
FAMILIES: dict[str, tuple[nn.Module, torch.Tensor]] = {
    "convnext": (ConvNeXt(), X),
    "convnext_conv_mlp": (ConvNeXt(conv_mlp=True), X),
    "mlp_mixer": (Mixer(), torch.randn(2, 3, 8, 8)),
    "token_norm": (TokenNormMixer(), torch.randn(3, 6, 5)),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_channels_last_and_token_mixing_preserve_function(name: str) -> None:
    module, x = FAMILIES[name]
    check_preserved(module, x)


def test_layernorm2d_parameters_follow_the_channels() -> None:
    module, x = FAMILIES["convnext"]
    space = WeightSpace.from_module(module, x)
    ln, conv = space.tensors["stem.1.weight"], space.tensors["stem.0.weight"]
    assert ln.axes[0] == conv.axes[0] and space.groups[ln.axes[0][0][0][0]].permutable
    gamma = space.tensors["stage1.gamma"]
    assert gamma.role == "scale" and gamma.axes[0] == space.tensors["stage1.conv_dw.weight"].axes[0]


def test_token_mlp_hidden_units_are_a_group_and_tokens_are_fixed() -> None:
    module, x = FAMILIES["mlp_mixer"]
    space = WeightSpace.from_module(module, x)
    fc1, fc2 = space.tensors["blocks.0.mlp_tokens.fc1.weight"], space.tensors["blocks.0.mlp_tokens.fc2.weight"]
    hidden, tokens_in = fc1.axes[0][0][0][0], fc1.axes[1][0][0][0]
    assert space.groups[hidden].permutable and space.groups[hidden].size == 6
    assert space.groups[tokens_in].fixed and space.groups[tokens_in].size == 4
    assert fc2.axes[1][0][0][0] == hidden and space.groups[fc2.axes[0][0][0][0]].fixed


class LastDimNorm2d(nn.LayerNorm):
    """Looks like a LayerNorm2d but normalizes the last (width) dim: the channel rule must not hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class ReducesHidden(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.tok, self.out = nn.Linear(5, 8), nn.Linear(6, 4), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(self.inp(x).transpose(1, 2))  # (B, 8 units, 4 token-hidden units)
        return self.out(h.softmax(-1)[..., 0])


class MergedGamma(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.gamma, self.head = nn.Conv2d(3, 4, 1), nn.Parameter(torch.randn(2, 2)), nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x) * self.gamma.reshape(1, 4, 1, 1)).mean((2, 3))


@pytest.mark.parametrize("module,x,match", [
    (nn.Sequential(nn.Conv2d(3, 8, 1), LastDimNorm2d(8), nn.Conv2d(8, 2, 1)), torch.randn(2, 3, 8, 8),
     "changes its output"),
    (ReducesHidden(), torch.randn(2, 6, 5), "token-mixing hidden units"),
    (MergedGamma(), X, "reshaped before use"),
])
def test_wrong_channels_last_and_token_cases_are_refused(module: nn.Module, x: torch.Tensor, match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match):
        WeightSpace.from_module(module, x)
