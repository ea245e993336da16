"""wsl.save: a safetensors file that carries its architecture, read back by load_model and `wsl predict`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import wsl
from wsl.errors import ArchitectureError, CheckpointError


def _round_trip(net: nn.Module, path: Path, example: torch.Tensor) -> nn.Module:
    from wsl.io import load_model, read_checkpoint_metadata

    assert wsl.save(net, path) == path
    meta = json.loads(read_checkpoint_metadata(path)["wsl_arch"])
    assert meta["format"] == "wsl.arch/1"
    loaded, sd = load_model(path)  # no arch given: it comes from the file
    want = net.state_dict()
    assert sorted(sd) == sorted(want) and list(loaded.state_dict()) == list(want)
    for k, v in want.items():
        assert torch.equal(loaded.state_dict()[k], v) and loaded.state_dict()[k].dtype == v.dtype, k
    net.eval()
    with torch.no_grad():
        assert torch.equal(loaded(example), net(example))
    return loaded


def test_registered_architecture_round_trips_and_predicts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.archs import small_cnn
    from wsl.cli import main

    torch.manual_seed(0)
    net = small_cnn(activation="tanh", norm="batch")
    net.train()(torch.randn(16, 1, 8, 8))  # move the BatchNorm running statistics off their defaults
    path = tmp_path / "net.safetensors"
    _round_trip(net, path, torch.randn(5, 1, 8, 8))
    assert main(["predict", str(path), "--json"]) == 0  # no --arch needed
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["predicted_test_accuracy"] == pytest.approx(wsl.predict(net).predicted_test_accuracy, abs=1e-6)
    assert out["architecture"]["num_parameters"] == sum(p.numel() for p in net.parameters())


def test_json_described_and_plain_sequential_round_trip(tmp_path: Path) -> None:
    from wsl.archs.describe import build

    desc = {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [12],
            "layers": [{"type": "linear", "out_features": 7}, {"type": "gelu"}, {"type": "linear", "out_features": 3}]}
    torch.manual_seed(1)
    built = build(desc)
    loaded = _round_trip(built, tmp_path / "described.safetensors", torch.randn(4, 12))
    assert loaded.wsl_arch == built.wsl_arch
    plain = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))  # no wsl_arch: described layer by layer
    _round_trip(plain, tmp_path / "plain.safetensors", torch.randn(3, 6))


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_refusals_write_nothing(tmp_path: Path) -> None:
    from wsl.archs import small_cnn

    path = tmp_path / "net.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(ArchitectureError, match=r"wsl\.save .*net\.safetensors: cannot record the architecture of "
                       r"Custom .*; build it with wsl\.archs .* or save its state_dict with wsl\.io\.save_state_dict"):
        wsl.save(Custom(), path)
    changed = small_cnn()
    changed[0] = nn.Conv2d(1, 8, 3, padding=1)  # no longer what its wsl_arch says
    with pytest.raises(ArchitectureError, match=r"Sequential no longer matches its recorded architecture .*0\.weight"):
        wsl.save(changed, path)
    with pytest.raises(ArchitectureError, match="a bare state_dict has no architecture"):
        wsl.save(small_cnn().state_dict(), path)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"net\.pt: only safetensors files carry the architecture"):
        wsl.save(small_cnn(), tmp_path / "net.pt")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["net.safetensors"]
