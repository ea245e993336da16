"""WeightSpace never permutes a network into a different function without saying so.

Each case here used to be traced *silently wrong* (a tensor left unpermuted, an
operand ignored) or crashed with an untyped error. Now every one is either
handled -- and then ``test_space.py``'s function-preservation property covers
it with randomised values -- or refused with a typed error naming the tensor.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.archs import REGISTRY
from wsl.errors import TraceError, UnsupportedLayerError, WslError
from wsl.graph import build_one, decode
from wsl.space import WeightSpace, random_permutation

from tests.test_space import FAMILIES, GainConv2d, _out, _randomize


class RolledLinear(nn.Linear):
    """Looks like a Linear, but its forward mixes output units: no permutation rule holds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).roll(1, dims=-1)


class FlippedGainConv(GainConv2d):
    """A gain of the right shape used against the wrong channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.gain.flip(0), self.bias, self.stride, self.padding)


class InputScaledLinear(nn.Linear):
    """An extra per-*input* scale: a shape that follows neither the output units nor the weight."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out)
        self.in_scale = nn.Parameter(torch.randn(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.in_scale)


def _net(layer: nn.Module, n_in: int = 4, hidden: int = 6) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, n_in), nn.ReLU(), layer, nn.ReLU(), nn.Linear(hidden, 2))


@pytest.mark.parametrize("layer,match", [
    (RolledLinear(4, 6), "changes its output"),
    (InputScaledLinear(4, 6), "in_scale"),
])
def test_linear_subclasses_that_break_the_rule_are_refused(layer: nn.Module, match: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=match) as err:
        WeightSpace.from_module(_net(layer), torch.randn(5, 3))
    assert "'2'" in str(err.value)  # names the layer's path


def test_a_gain_used_against_the_wrong_channels_is_refused() -> None:
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), FlippedGainConv(4, 5, 3), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(UnsupportedLayerError, match="changes its output"):
        WeightSpace.from_module(net, torch.randn(2, 1, 9, 9))


def test_a_gain_follows_the_output_channels() -> None:
    module, x = FAMILIES["gain_conv_subclass"]
    space = WeightSpace.from_module(module, x)
    assert space.tensors["0.gain"].axes[0] == space.tensors["0.weight"].axes[0]
    assert space.tensors["0.gain"].role == "scale"


def test_weight_norm_magnitude_follows_the_output_units_and_graph_round_trips() -> None:
    module, x = FAMILIES["weight_norm"]
    module = _randomize(copy.deepcopy(module))
    space = WeightSpace.from_module(module, x)
    t = space.tensors
    g, v = t["0.parametrizations.weight.original0"], t["0.parametrizations.weight.original1"]
    assert g.axes[0] == v.axes[0] and space.groups[g.axes[0][0][0][0]].permutable
    assert "2.parametrizations.weight.original0" in space.spec.extras  # dim=None: one scalar
    sd = module.state_dict()
    back = decode(build_one(space, sd), space)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("make,match", [
    (lambda: nn.utils.parametrizations.weight_norm(nn.Linear(4, 6), dim=1), "dim=1"),
    (lambda: nn.utils.parametrizations.spectral_norm(nn.Linear(4, 6)), "_SpectralNorm"),
    (lambda: nn.utils.parametrizations.orthogonal(nn.Linear(4, 6)), "parametrizations"),
])
def test_unsupported_parametrizations_are_refused(make, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UnsupportedLayerError, match=match):
        WeightSpace.from_module(_net(make()), torch.randn(5, 3))


def test_legacy_spectral_norm_is_refused_by_name() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = nn.utils.spectral_norm(nn.Linear(4, 6))
    with pytest.raises(UnsupportedLayerError, match="weight_orig|weight_u|weight_v"):
        WeightSpace.from_module(_net(layer), torch.randn(5, 3))


class ReadsParam(nn.Module):
    """Reads ``self.p`` in a way no rule claims (a sum that meets the units as a scalar)."""

    def __init__(self, p_size: int) -> None:
        super().__init__()
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 2)
        self.p = nn.Parameter(torch.randn(p_size))
        self.dead = nn.Parameter(torch.randn(6))
        self.temperature = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b((torch.relu(self.a(x)) + self.p.sum()) * self.temperature)


def test_an_unclaimed_tensor_that_could_carry_units_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"'p' of shape \(6,\)"):
        WeightSpace.from_module(ReadsParam(6), torch.randn(4, 3))


def test_unclaimed_tensors_that_no_permutation_concerns_are_accepted() -> None:
    """Shape (5,) matches no permutable group (6); ``dead`` is never read; ``temperature`` is a scalar."""
    module = _randomize(ReadsParam(5))
    x = torch.randn(4, 3)
    space = WeightSpace.from_module(module, x)
    assert {"p", "dead", "temperature"} <= set(space.spec.extras)
    assert space.meta("unread") == ("dead",)
    perms = random_permutation(space, torch.Generator().manual_seed(1))
    other = copy.deepcopy(module)
    other.load_state_dict(space.permute(module.state_dict(), perms))
    torch.testing.assert_close(_out(other, x), _out(module, x))


class Operand(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Linear(3, 6)
        self.b = nn.Linear(6, 2)
        self.bound = nn.Parameter(torch.randn(6))
        self.register_buffer("mask", torch.rand(6) > 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if self.op == "masked_fill":
            h = h.masked_fill(self.mask, 0.0)
        elif self.op == "clamp":
            h = torch.clamp(h, min=self.bound)
        elif self.op == "where":
            h = torch.where(h > 0, h, self.bound)
        return self.b(h)


@pytest.mark.parametrize("op", ["masked_fill", "clamp", "where"])
def test_per_unit_masks_and_bounds_are_refused(op: str) -> None:
    with pytest.raises(UnsupportedLayerError, match="varies along the units"):
        WeightSpace.from_module(Operand(op), torch.randn(4, 3))


def test_trace_errors_are_one_line() -> None:
    with pytest.raises(TraceError) as err:
        WeightSpace.from_module(REGISTRY["small_cnn"](), torch.randn(2, 3, 5, 5))
    assert "\n" not in str(err.value) and "While executing" not in str(err.value)


def test_example_input_follows_the_module_and_leaves_the_global_rng_alone() -> None:
    net = REGISTRY["small_cnn"]().double()
    before = torch.get_rng_state()
    space = WeightSpace.from_module(net)
    assert torch.equal(before, torch.get_rng_state())
    assert space.meta("input_dtypes") == ("float64",)
    meta = WeightSpace.from_module(REGISTRY["small_cnn"]().to("meta"))  # no memory, no CPU input
    assert meta.signature == WeightSpace.from_module(REGISTRY["small_cnn"]()).signature


def test_errors_are_typed() -> None:
    assert issubclass(UnsupportedLayerError, WslError) and issubclass(TraceError, WslError)


def test_prediction_tracing_builds_its_input_on_the_module_device() -> None:
    """wsl.predict's tracing at a predictor's input shape follows the module (meta here, CUDA on a GPU)."""
    from wsl.predict.shapes import trace_for_prediction

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).to("meta")
    space = trace_for_prediction(net, None, [{"family": {"input_shapes": [[1, 8, 8]]}}])
    assert space.meta("input_shapes") == ((1, 8, 8),)


def test_checked_layers_trace_on_the_meta_device() -> None:
    """The run-and-compare check has no values on `meta`; tracing still works (shape rules only)."""
    module, x = FAMILIES["gain_conv_subclass"]
    on_meta = copy.deepcopy(module).to("meta")
    assert WeightSpace.from_module(on_meta, x.to("meta")).signature == WeightSpace.from_module(module, x).signature
