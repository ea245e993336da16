"""Grouped convolutions (``groups = G``): nested block groups, exact under random permutations.

A grouped conv's input and output channels are nested in one block group of size ``G``: blocks permute
together on both sides, units inside a block independently (``wsl.space.grouped_conv``). Families here are
ResNeXt and RegNet blocks (with squeeze-excitation), a depthwise conv with a channel multiplier, chains of
grouped convs whose blocks must nest in each other, grouped Conv1d, GroupNorm before a grouped conv, a
grouped first layer, and weight normalisation; each must preserve its function under two random
permutations with randomised weights, biases and norm statistics (``tests/reach_checks.py``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace, random_permutation
from wsl.space.axes import permute_tensor
from wsl.space.diagonal import PermutationError

from tests.reach_checks import check_preserved, output, randomized


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        h = self.bn3(self.conv3(h))
        return F.relu(h + (x if self.down is None else self.down(x)))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, r, 1), nn.Conv2d(r, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class RegNetYBlock(nn.Module):
    """RegNetY: 1x1, 3x3 grouped (group width ``gw``), squeeze-excite, 1x1, residual."""

    def __init__(self, cin: int, cout: int, gw: int, stride: int = 1) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, stride, 1, groups=cout // gw, bias=False),
                               nn.BatchNorm2d(cout), nn.ReLU())
        self.se = SqueezeExcite(cout, max(1, cin // 4))
        self.c = nn.Sequential(nn.Conv2d(cout, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c(self.se(self.b(self.a(x))))
        return F.relu(h + (x if self.down is None else self.down(x)))


def _head(c: int) -> list[nn.Module]:
    return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 3)]


X = torch.randn(2, 3, 8, 8)
FAMILIES: dict[str, tuple[nn.Module, torch.Tensor]] = {
    "resnext": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              ResNeXtBlock(8, 8, 8, groups=4), ResNeXtBlock(8, 12, 16, groups=4, stride=2),
                              *_head(16)), X),
    "regnet_y": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), RegNetYBlock(8, 8, gw=2),
                               RegNetYBlock(8, 12, gw=4, stride=2), *_head(12)), X),
    "depthwise_multiplier": (nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 12, 3, padding=1, groups=4),
                                           nn.BatchNorm2d(12), nn.ReLU(), *_head(12)), X),
    "nested_chain": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1, groups=4),
                                   nn.ReLU(), nn.Conv2d(12, 24, 3, padding=1, groups=12), nn.ReLU(),
                                   nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.ReLU(),
                                   nn.Conv2d(24, 6, 1, groups=2), *_head(6)), X),
    "conv1d": (nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv1d(6, 9, 5, padding=2, groups=3),
                             nn.Tanh(), nn.Flatten(), nn.Linear(9 * 10, 4)), torch.randn(2, 2, 10)),
    "groupnorm_then_grouped": (nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(),
                                             nn.Conv2d(8, 8, 3, padding=1, groups=2), nn.GroupNorm(8, 8), nn.ReLU(),
                                             *_head(8)), X),
    "grouped_first_layer": (nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(), *_head(8)),
                            torch.randn(2, 4, 6, 6)),
    "weight_norm": (nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(),
                                  nn.utils.parametrizations.weight_norm(nn.Conv2d(6, 9, 3, padding=1, groups=3)),
                                  nn.ReLU(), *_head(9)), X),
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_grouped_convs_preserve_function(name: str) -> None:
    module, x = FAMILIES[name]
    check_preserved(module, x)


def test_resnext_blocks_are_nested_in_one_block_group() -> None:
    module, x = FAMILIES["resnext"]
    space = WeightSpace.from_module(module, x)
    w = space.tensors["3.conv2.weight"]
    assert w.shape == (8, 2, 3, 3) and w.diagonal == ((1, 0, 4),)
    g_out, g_in = w.axes[0][0][0][0], w.axes[1][0][0][0]
    assert w.axes[1][0][0][1] == 2  # the stored axis holds one block of the input group
    blocks = space.groups[g_out].parent
    assert blocks is not None and space.groups[blocks].size == 4 and space.groups[blocks].permutable
    assert space.groups[g_in].parent == blocks and space.groups[g_in].size == 8
    perms = random_permutation(space, torch.Generator().manual_seed(0))
    assert not torch.equal(perms[blocks], torch.arange(4))  # whole blocks move
    within = perms[g_in].view(4, 2) - perms[blocks].unsqueeze(1) * 2  # units move inside their block
    assert bool(((within >= 0) & (within < 2)).all())


def test_grouped_first_layer_keeps_input_blocks_fixed() -> None:
    module, x = FAMILIES["grouped_first_layer"]
    space = WeightSpace.from_module(module, x)
    g_out = space.tensors["0.weight"].axes[0][0][0][0]
    blocks = space.groups[g_out].parent
    assert blocks is not None and space.groups[blocks].fixed and space.groups[g_out].permutable


def test_graph_has_one_edge_per_stored_weight() -> None:
    module, x = FAMILIES["resnext"]
    space = WeightSpace.from_module(module, x)
    from wsl.graph import build_one
    g = build_one(space, module.state_dict())
    conn = next(i for i, c in enumerate(space.connections) if c.tensor == "3.conv2.weight")
    sel = g.edge_conn == conn
    assert int(sel.sum()) == 8 * 2  # out x in/G, not out x in
    src, dst = g.edge_index[:, sel]
    in_off, out_off = int(src.min()), int(dst.min())
    assert torch.equal((src - in_off) // 2, (dst - out_off) // 2)  # edges stay inside their block


def test_the_block_diagonal_permutation_is_necessary() -> None:
    """Permuting the grouped weight's output rows but not its (relative) input axis changes the function."""
    module, x = FAMILIES["resnext"]
    module = randomized(module)
    x = x.double()
    space = WeightSpace.from_module(module, x)
    sd = module.state_dict()
    perms = random_permutation(space, torch.Generator().manual_seed(1))
    t = space.tensors["3.conv2.weight"]
    assert not torch.equal(perms[t.axes[1][0][0][0]] % 2, torch.arange(8) % 2)  # some unit moves inside its block
    wrong = space.permute(sd, perms)
    wrong[t.name] = permute_tensor(sd[t.name], t.axes[:1] + ((((None, 2),),),) + t.axes[2:], perms, False)
    other = copy.deepcopy(module)
    other.load_state_dict(wrong)
    assert not torch.allclose(output(other, x), output(module, x), atol=1e-6)


def test_permutations_that_split_blocks_are_refused() -> None:
    module, x = FAMILIES["resnext"]
    space = WeightSpace.from_module(module, x)
    perms = random_permutation(space, torch.Generator().manual_seed(4))
    g_in = space.tensors["3.conv2.weight"].axes[1][0][0][0]
    bad = dict(perms)
    bad[g_in] = torch.arange(8).roll(1)  # moves one unit of every block into the next block
    with pytest.raises(PermutationError, match="blocks"):
        space.permute(module.state_dict(), bad)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class RolledGroupConv(nn.Conv2d):
    """Reads the input blocks shifted by one: a grouped conv the nested rule does not describe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.roll(self.in_channels // self.groups, dims=1))


@pytest.mark.parametrize("layer,match", [
    (ChannelShuffle(2), "splits the unit axis"),
    (RolledGroupConv(8, 8, 3, padding=1, groups=2), "changes its output"),
])
def test_wrong_grouped_layouts_are_refused(layer: nn.Module, match: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2), layer,
                        nn.Conv2d(8, 8, 3, padding=1, groups=2), *_head(8))
    with pytest.raises(UnsupportedLayerError, match=match):
        WeightSpace.from_module(net, X)


def test_spec_with_diagonal_axes_round_trips_through_json() -> None:
    module, x = FAMILIES["regnet_y"]
    space = WeightSpace.from_module(module, x)
    again = WeightSpace.from_json(json.loads(json.dumps(space.to_json())))
    assert again.spec == space.spec and again.signature == space.signature
    assert any(t.diagonal for t in again.spec.tensors)


@pytest.mark.parametrize("name", ["resnext", "regnet_y", "depthwise_multiplier"])
def test_weight_matching_undoes_a_random_permutation(name: str) -> None:
    """Alignment reads the expanded block-diagonal view: it recovers a permuted copy exactly."""
    from wsl.align.weight_matching import weight_matching

    module, x = FAMILIES[name]
    module = randomized(module)
    space = WeightSpace.from_module(module, x.double())
    sd = module.state_dict()
    moved = space.permute(sd, random_permutation(space, torch.Generator().manual_seed(5)))
    result = weight_matching(sd, moved, space)
    assert result.distance_before > 1 and result.distance_after < 1e-9
