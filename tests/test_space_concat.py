"""Concatenation along the unit axis (DenseNet, Inception, U-Net skips): parts permuted blockwise.

``cat([x_1 .. x_m], dim=units)`` carries the disjoint union of its operands' groups (``wsl.space.concat``):
a reader's weight gets one input segment per part. Each family below must keep its function under two
random permutations with randomised weights, biases and norm statistics (``tests/reach_checks.py``); wrong
cases (a split inside a part, a GroupNorm block straddling two parts, a learned tensor joined to the units, a
grouped conv over a concatenation) are refused by name.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace

from tests.reach_checks import check_preserved


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, width: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, width, 1, bias=False)
        self.norm2, self.conv2 = nn.BatchNorm2d(width), nn.Conv2d(width, growth, 3, padding=1, bias=False)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(feats, 1)
        return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x))))))


class DenseBlock(nn.Module):
    def __init__(self, cin: int, growth: int, n: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, 2 * growth) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats))
        return torch.cat(feats, 1)


class DenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.block1 = DenseBlock(6, 4, 2)
        self.trans = nn.Sequential(nn.BatchNorm2d(14), nn.ReLU(), nn.Conv2d(14, 7, 1, bias=False), nn.AvgPool2d(2))
        self.block2 = DenseBlock(7, 3, 2)
        self.norm = nn.BatchNorm2d(13)
        self.fc = nn.Linear(13, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.norm(h)), 1).flatten(1))


def _cbr(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class InceptionBlock(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1 = _cbr(cin, 4, 1)
        self.b3 = nn.Sequential(_cbr(cin, 3, 1), _cbr(3, 5))
        self.b5 = nn.Sequential(_cbr(cin, 2, 1), _cbr(2, 3), _cbr(3, 3))
        self.bp = _cbr(cin, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(pooled)], 1)


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _cbr(3, 6)
        self.mix1, self.mix2 = InceptionBlock(6), InceptionBlock(14)
        self.fc = nn.Linear(14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mix2(F.max_pool2d(self.mix1(self.stem(x)), 2))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class UNet(nn.Module):
    """Two levels; the decoder concatenates the up-sampled path with the encoder's skip."""

    def __init__(self, up: str = "transpose") -> None:
        super().__init__()
        self.enc1, self.enc2 = nn.Sequential(_cbr(3, 6), _cbr(6, 6)), nn.Sequential(_cbr(6, 10), _cbr(10, 10))
        self.up = nn.ConvTranspose2d(10, 5, 2, stride=2) if up == "transpose" else nn.Conv2d(10, 5, 1)
        self.mode = up
        self.dec = nn.Sequential(_cbr(11, 6), _cbr(6, 6))
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.enc1(x)
        h = self.enc2(F.max_pool2d(s, 2))
        h = self.up(h) if self.mode == "transpose" else self.up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(self.dec(torch.cat([h, s], dim=1)))


class ChannelsLastConcat(nn.Module):
    """Concatenation on the last dim, LayerNorm over it, a split at the part boundary, two concats added."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(5, 4), nn.Linear(5, 6), nn.Linear(5, 4)
        self.ln = nn.LayerNorm(10)
        self.d, self.e = nn.Linear(5, 6), nn.Linear(5, 4)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(torch.cat([self.a(x), self.b(x)], -1))
        left, right = torch.split(h, [4, 6], dim=-1)
        h = torch.cat([F.gelu(left) * self.c(x), right], -1) + torch.cat([self.e(x), self.d(x)], -1)
        return self.out(h)


class DepthwiseOnConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gn(self.dw(torch.cat([self.a(x), torch.relu(self.b(x))], 1)))
        return self.head(h).mean((2, 3))


class ConcatOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.h, self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.h(x))
        return torch.cat([self.a(h), x, self.b(h)], -1)


class BNAct(nn.BatchNorm2d):
    """A norm layer with its activation inside (as timm's BatchNormAct2d): checked by running it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class RolledBN(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).roll(1, dims=1)


def _concat_then(layer: nn.Module) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.norm, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 3, 3, padding=1), layer, \
                nn.Conv2d(7, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.norm(torch.cat([self.a(x), self.b(x)], 1))).mean((2, 3))

    return Net()


X = torch.randn(2, 3, 8, 8)
FAMILIES: dict[str, tuple[nn.Module, torch.Tensor]] = {
    "densenet": (DenseNet(), X),
    "inception": (Inception(), X),
    "unet_transpose": (UNet("transpose"), X),
    "unet_interpolate": (UNet("interpolate"), X),
    "channels_last_concat": (ChannelsLastConcat(), torch.randn(3, 7, 5)),
    "depthwise_on_concat": (DepthwiseOnConcat(), X),
    "concat_output": (ConcatOutput(), torch.randn(3, 4)),
    "norm_subclass_on_concat": (_concat_then(BNAct(7)), X),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_concatenations_preserve_function(name: str) -> None:
    module, x = FAMILIES[name]
    check_preserved(module, x)


def test_a_reader_of_a_concatenation_gets_one_segment_per_part() -> None:
    module, x = FAMILIES["densenet"]
    space = WeightSpace.from_module(module, x)
    w = space.tensors["block1.layers.1.conv1.weight"]  # reads cat([stem, layer 0]) = 6 + 4 channels
    assert [seg[0][1] for seg in w.axes[1]] == [6, 4]
    groups = [seg[0][0] for seg in w.axes[1]]
    assert groups[0] != groups[1] and all(space.groups[g].permutable for g in groups)
    conns = [c for c in space.connections if c.tensor == w.name]
    assert sorted(c.part[:2] for c in conns) == [(0, 0), (0, 1)]
    fc = space.tensors["fc.weight"]  # the last dense block's output: 7 + 3 + 3 channels
    assert [seg[0][1] for seg in fc.axes[1]] == [7, 3, 3]


def test_an_output_concatenation_fixes_every_part() -> None:
    module, x = FAMILIES["concat_output"]
    space = WeightSpace.from_module(module, x)
    for name in ("a.weight", "b.weight"):
        assert space.groups[space.tensors[name].axes[0][0][0][0]].fixed
    assert space.groups[space.tensors["h.weight"].axes[0][0][0][0]].permutable


class SplitInside(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.a(x), self.b(x)], -1)
        return self.c(x) + h[..., :2]


class Straddling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 5, 1)
        self.gn = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gn(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))


class GroupedOnConcat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.g = nn.Conv2d(8, 4, 3, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3))


class ParamJoined(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(3, 4), nn.Linear(6, 2)
        self.p = nn.Parameter(torch.randn(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.p.expand(x.shape[0], 2)], -1))


@pytest.mark.parametrize("module,x,match", [
    (SplitInside(), torch.randn(2, 3), "selects a subset of the units"),
    (Straddling(), X, "straddle"),
    (GroupedOnConcat(), X, "concatenation of unit groups"),
    (ParamJoined(), torch.randn(2, 3), "parameter 'p'"),
    (_concat_then(RolledBN(7)), X, "changes its output"),
])
def test_wrong_concatenations_are_refused(module: nn.Module, x: torch.Tensor, match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match):
        WeightSpace.from_module(module, x)
