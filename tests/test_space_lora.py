"""LoRA: a rank group per adapter on top of the base layer's groups; adapters read alone or merged.

The structural rule (``wsl.space.lora_rules``) is tested on a hand-written module shaped like PEFT's LoRA
layers (runs without peft), and on real ``peft`` models when peft is installed. ``wsl.io.read_lora`` reads
an adapter directory (written here by hand, or by ``peft``'s ``save_pretrained``) onto a base module, as
LoRA layers or merged; both must compute what PEFT computes.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from wsl.errors import CheckpointError, UnsupportedLayerError
from wsl.io.lora import peft_space, read_lora
from wsl.space import WeightSpace, random_permutation

from tests.reach_checks import check_preserved, output, randomized

HAS_PEFT = importlib.util.find_spec("peft") is not None
needs_peft = pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (pip install peft)")


class HandLora(nn.Module):
    """Shaped like ``peft.tuners.lora.layer.Linear``/``Conv2d``: two adapters, only ``default`` active."""

    def __init__(self, base: nn.Module, ranks: dict[str, int], active: tuple[str, ...] = ("default",)) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A, self.lora_B, self.lora_dropout = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        self.scaling = {name: 2.0 / r for name, r in ranks.items()}
        self.active = active
        for name, r in ranks.items():
            if isinstance(base, nn.Conv2d):
                self.lora_A[name] = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding,
                                              bias=False)
                self.lora_B[name] = nn.Conv2d(r, base.out_channels, 1, bias=False)
            else:
                self.lora_A[name] = nn.Linear(base.in_features, r, bias=False)
                self.lora_B[name] = nn.Linear(r, base.out_features, bias=name == "other")
            self.lora_dropout[name] = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        for name in (a for a in self.active if a in self.lora_A):
            y = y + self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]
        return y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc1, self.fc2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean((2, 3)))))


def _hand_lora_net(active: tuple[str, ...] = ("default",)) -> Net:
    net = Net()
    net.conv = HandLora(net.conv, {"default": 3}, active)  # type: ignore[assignment]
    net.fc1 = HandLora(net.fc1, {"default": 4, "other": 2}, active)  # type: ignore[assignment]
    return net


X = torch.randn(2, 3, 6, 6)


@pytest.mark.parametrize("active", [("default",), ("default", "other"), ()])
def test_lora_shaped_layers_preserve_function_with_their_rank_groups(active: tuple[str, ...]) -> None:
    space = check_preserved(_hand_lora_net(active), X)
    ranks = {t.name: space.groups[t.axes[0][0][0][0]] for t in space.spec.tensors if ".lora_A." in t.name}
    assert {n: g.size for n, g in ranks.items()} == {"conv.lora_A.default.weight": 3, "fc1.lora_A.default.weight": 4,
                                                     "fc1.lora_A.other.weight": 2}
    assert all(g.permutable and g.kind == "rank" for g in ranks.values())
    t = space.tensors
    assert t["fc1.lora_A.default.weight"].axes[1] == t["fc1.base_layer.weight"].axes[1]  # A reads the base's inputs
    assert t["fc1.lora_B.default.weight"].axes[0] == t["fc1.base_layer.weight"].axes[0]  # B writes its outputs
    assert t["fc1.lora_B.default.weight"].axes[1] == t["fc1.lora_A.default.weight"].axes[0]


def test_permuting_only_the_rank_group_is_a_symmetry() -> None:
    module = randomized(_hand_lora_net())
    space = WeightSpace.from_module(module, X.double())
    rank = space.tensors["fc1.lora_A.default.weight"].axes[0][0][0][0]
    perms = {rank: random_permutation(space, torch.Generator().manual_seed(0))[rank]}
    moved = copy.deepcopy(module)
    moved.load_state_dict(space.permute(module.state_dict(), perms))
    assert not torch.equal(moved.fc1.lora_A.default.weight, module.fc1.lora_A.default.weight)
    torch.testing.assert_close(output(moved, X.double()), output(module, X.double()), atol=1e-10, rtol=1e-10)


class TransposedB(HandLora):
    """Applies lora_B's weight transposed-and-flipped: the LoRA rule must not hold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_A["default"](x)
        return self.base_layer(x) + F.linear(h, self.lora_B["default"].weight.flip(0)) * self.scaling["default"]


class WithDoRA(HandLora):
    def __init__(self, base: nn.Module) -> None:
        super().__init__(base, {"default": 2})
        self.lora_magnitude_vector = nn.ModuleDict({"default": nn.Linear(1, base.out_features)})


@pytest.mark.parametrize("layer,match", [
    (lambda: TransposedB(nn.Linear(8, 12), {"default": 3}), "changes its output"),
    (lambda: WithDoRA(nn.Linear(8, 12)), "DoRA"),
])
def test_wrong_lora_layers_are_refused(layer, match: str) -> None:  # type: ignore[no-untyped-def]
    net = Net()
    net.fc1 = layer()
    with pytest.raises(UnsupportedLayerError, match=match):
        WeightSpace.from_module(randomized(net), X.double())


# ---------------------------------------------------------------------------------------- reading adapters
def _write_adapter(directory: Path, base: Net, config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {
        "base_model.model.conv.lora_A.weight": torch.randn(3, 3, 3, 3, generator=g),
        "base_model.model.conv.lora_B.weight": torch.randn(8, 3, 1, 1, generator=g),
        "base_model.model.fc1.lora_A.weight": torch.randn(4, 8, generator=g),
        "base_model.model.fc1.lora_B.weight": torch.randn(12, 4, generator=g),
    }
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    (directory / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    return tensors


def _by_hand(base: Net, t: dict[str, torch.Tensor], s_conv: float, s_fc: float, x: torch.Tensor) -> torch.Tensor:
    p = "base_model.model."
    with torch.no_grad():
        h = base.conv(x) + F.conv2d(F.conv2d(x, t[p + "conv.lora_A.weight"], padding=1),
                                    t[p + "conv.lora_B.weight"]) * s_conv
        h = torch.relu(h).mean((2, 3))
        h = base.fc1(h) + h @ t[p + "fc1.lora_A.weight"].T @ t[p + "fc1.lora_B.weight"].T * s_fc
        return base.fc2(torch.relu(h))


@pytest.mark.parametrize("merge", [False, True])
def test_read_lora_computes_the_adapted_function(tmp_path: Path, merge: bool) -> None:
    base = Net().eval()
    cfg = {"r": 4, "lora_alpha": 8, "use_rslora": True, "alpha_pattern": {"conv": 6}}
    tensors = _write_adapter(tmp_path / "adapter", base, cfg)
    module, space = read_lora(tmp_path / "adapter", base, merge=merge, example_input=X)
    want = _by_hand(base, tensors, 6 / 3 ** 0.5, 8 / 4 ** 0.5, X)
    torch.testing.assert_close(output(module, X), want, atol=1e-5, rtol=1e-5)
    ranks = [g for g in space.groups if g.kind == "rank"]
    assert ([] if merge else [3, 4]) == sorted(g.size for g in ranks)
    if merge:
        assert space.signature == WeightSpace.from_module(base, X).signature
    check_preserved(module, X)


@pytest.mark.parametrize("change,match", [
    (lambda d: (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True})), "DoRA"),
    (lambda d: save_file({"base_model.model.fc1.lora_A.weight": torch.zeros(4, 9),
                          "base_model.model.fc1.lora_B.weight": torch.zeros(12, 4)},
                         str(d / "adapter_model.safetensors")), "needs lora_A"),
    (lambda d: save_file({"base_model.model.fc1.weight": torch.zeros(12, 8)}, str(d / "adapter_model.safetensors")),
     "not a LoRA factor"),
])
def test_bad_adapters_are_refused_by_file_and_key(tmp_path: Path, change: Callable[[Path], object], match: str) -> None:
    _write_adapter(tmp_path, Net(), {"r": 4, "lora_alpha": 8})
    change(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        read_lora(tmp_path, Net(), example_input=X)


# ------------------------------------------------------------------------------------------------- peft
def _peft_model(**config: object) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(Net(), LoraConfig(target_modules=["conv", "fc1"], **config))  # type: ignore[arg-type]
    with torch.no_grad():  # PEFT starts lora_B at zero: give the update some weight
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p))
    return model.eval()


@needs_peft
def test_peft_models_trace_with_rank_groups_under_their_own_names() -> None:
    model = _peft_model(r=4, lora_alpha=8, lora_dropout=0.1)
    check_preserved(model.get_base_model(), X)
    space = peft_space(model, X)
    assert set(space.tensors) == set(model.state_dict())
    assert space.groups[space.tensors["base_model.model.fc1.lora_A.default.weight"].axes[0][0][0][0]].kind == "rank"
    for seed in (1, 2):
        moved = copy.deepcopy(model)
        moved.load_state_dict(space.permute(model.state_dict(), random_permutation(space, torch.Generator()
                                                                                   .manual_seed(seed))))
        torch.testing.assert_close(output(moved, X), output(model, X), atol=1e-5, rtol=1e-5)


@needs_peft
@pytest.mark.parametrize("merge", [False, True])
def test_read_lora_matches_peft(tmp_path: Path, merge: bool) -> None:
    model = _peft_model(r=4, lora_alpha=16, use_rslora=True)
    model.save_pretrained(str(tmp_path))
    base = copy.deepcopy(model.get_base_model())
    for name in ("conv", "fc1"):  # the untouched base layers, without adapters
        setattr(base, name, getattr(base, name).base_layer)
    module, space = read_lora(tmp_path, base, merge=merge, example_input=X)
    torch.testing.assert_close(output(module, X), output(model, X), atol=1e-5, rtol=1e-5)
    if merge:
        merged = copy.deepcopy(model).merge_and_unload()
        assert all(torch.allclose(merged.state_dict()[k], v, atol=1e-6) for k, v in module.state_dict().items())
