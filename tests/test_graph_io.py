"""Graph files: exact round trip through .pt and .safetensors, and `wsl graph`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsl.archs.registry import REGISTRY
from wsl.cli import main
from wsl.errors import CheckpointError
from wsl.graph import build_one, decode, load_graph, save_graph
from wsl.io import save_state_dict
from wsl.space import WeightSpace


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_graph_file_round_trip(tmp_path: Path, suffix: str) -> None:
    module = REGISTRY["small_cnn"](norm="batch")
    space = WeightSpace.from_module(module)
    graph = build_one(space, module.state_dict())
    save_graph(graph, tmp_path / f"g{suffix}")
    again = load_graph(tmp_path / f"g{suffix}")
    assert again.arch == graph.arch
    sd = decode(again, space)
    assert all(torch.equal(sd[k], v) for k, v in module.state_dict().items())


def test_wsl_graph_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = REGISTRY["small_cnn"]()
    save_state_dict(module.state_dict(), tmp_path / "m.safetensors")
    rc = main(["graph", str(tmp_path / "m.safetensors"), "--arch", "small_cnn", "-o", str(tmp_path / "g.pt")])
    assert rc == 0 and "59 nodes" in capsys.readouterr().out
    assert load_graph(tmp_path / "g.pt").num_nodes == 59


def test_not_a_graph_file(tmp_path: Path) -> None:
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a wsl parameter graph"):
        load_graph(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="must end in"):
        save_graph(build_one(WeightSpace.from_module(REGISTRY["mlp"]([3, 2])), REGISTRY["mlp"]([3, 2]).state_dict()),
                   tmp_path / "g.txt")
