"""Ragged edge storage: the same graph as the padded one, with memory proportional to the weights.

Checked on the small networks of ``tests/test_nn_graph.py`` and on grouped, concatenated and LoRA networks:
ragged and padded graphs hold the same entries (converting one into the other is exact), decode bit-exactly,
batch, collate, save and load; NG-GNN and NG-T compute the same outputs on both; ``edges="auto"`` keeps
small architectures padded; the size estimate made from the spec matches what is built; and a graph that
would not fit is refused (library and ``wsl graph``) with its estimated size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wsl.cli import main
from wsl.graph import (GraphTooLargeError, build, build_one, check_graph_fits, collate, decode, estimate_graph_bytes,
                       is_ragged, load_graph, padded_edges, ragged_edges, save_graph, to_graphs)
from wsl.graph import size as graph_size
from wsl.io import save_state_dict
from wsl.space import WeightSpace

from tests.test_nn_graph import NAMES, family, make, random_sd
from tests.test_space_concat import FAMILIES as CONCAT
from tests.test_space_grouped import FAMILIES as GROUPED
from tests.test_space_lora import X as LORA_X
from tests.test_space_lora import _hand_lora_net

EXTRA = {"grouped": (GROUPED["regnet_y"][0], GROUPED["regnet_y"][1]),
         "concat": (CONCAT["densenet"][0], CONCAT["densenet"][1]), "lora": (_hand_lora_net(), LORA_X)}


def _space_and_sd(name: str) -> tuple[WeightSpace, dict[str, torch.Tensor]]:
    if name in EXTRA:
        module, x = EXTRA[name]
        gen = torch.Generator().manual_seed(4)
        sd = {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
              for k, v in module.state_dict().items()}
        return WeightSpace.from_module(module.eval(), x), sd
    return family(name)[0], random_sd(name, 5)


ALL = NAMES + sorted(EXTRA)


@pytest.mark.parametrize("name", ALL)
def test_ragged_and_padded_graphs_hold_the_same_entries(name: str) -> None:
    space, sd = _space_and_sd(name)
    pad, rag = build_one(space, sd, edges="padded"), build_one(space, sd, edges="ragged")
    assert not is_ragged(pad) and is_ragged(rag)
    attr, mask = padded_edges(rag.edge_values, rag.edge_width, pad.edge_attr.shape[1])
    assert torch.equal(attr, pad.edge_attr) and torch.equal(mask, pad.edge_mask)
    values, width = ragged_edges(pad.edge_attr, pad.edge_mask)
    assert torch.equal(values, rag.edge_values) and torch.equal(width, rag.edge_width)
    assert torch.equal(rag.edge_attr, pad.edge_attr)  # the padded view a ragged graph answers with
    for key in ("x", "x_mask", "edge_index", "edge_kind", "edge_conn", "extras", "node_kind"):
        assert torch.equal(getattr(rag, key), getattr(pad, key))
    assert rag.edge_values.numel() == int(pad.edge_mask.sum())  # one entry per stored weight
    back = decode(rag, space)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("name", ["rescnn", "grouped", "lora"])
def test_ragged_batches_split_collate_and_round_trip(name: str, tmp_path: Path) -> None:
    space, sd = _space_and_sd(name)
    sds = [{k: v + i if v.is_floating_point() else v for k, v in sd.items()} for i in range(3)]
    stacked = {k: torch.stack([s[k] for s in sds]) for k in sd}
    batch = build(space, stacked, edges="ragged")
    back = decode(batch, space)
    assert all(torch.equal(back[k], stacked[k]) for k in sd)
    graphs = to_graphs(batch)
    ones = [build_one(space, s, edges="ragged") for s in sds]
    for g, one in zip(graphs, ones):
        assert torch.equal(g.edge_values, one.edge_values) and torch.equal(g.edge_width, one.edge_width)
    assert torch.equal(collate(ones).edge_values, batch.edge_values)
    mixed = collate([ones[0], build_one(space, sds[1], edges="padded")])
    assert not is_ragged(mixed) and torch.equal(to_graphs(mixed)[0].edge_attr, ones[0].edge_attr)
    for suffix in (".safetensors", ".pt"):
        save_graph(ones[0], tmp_path / f"g{suffix}")
        loaded = load_graph(tmp_path / f"g{suffix}")
        assert is_ragged(loaded) and torch.equal(loaded.edge_values, ones[0].edge_values)
        assert all(torch.equal(decode(loaded, space)[k], sds[0][k]) for k in sd)


@pytest.mark.parametrize("kind", ["gnn", "t"])
@pytest.mark.parametrize("task", ["invariant", "equivariant"])
def test_meta_models_compute_the_same_on_ragged_graphs(kind: str, task: str) -> None:
    graphs = {}
    for edges in ("padded", "ragged"):
        graphs[edges] = collate([build_one(family(n)[0], {k: v.double() if v.is_floating_point() else v
                                                          for k, v in random_sd(n, 7).items()}, edges=edges)
                                 for n in ("rescnn", "mlp")])
    model = make(kind, task=task)
    with torch.no_grad():
        a, b = model(graphs["padded"]), model(graphs["ragged"])
    for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
        assert torch.equal(u, v)


def test_auto_chooses_ragged_only_when_padding_would_double(monkeypatch: pytest.MonkeyPatch) -> None:
    space, sd = _space_and_sd("cnn")  # 3x3 kernels next to 1-wide Linear edges
    assert not is_ragged(build_one(space, sd))
    monkeypatch.setattr(graph_size, "AUTO_RAGGED_BYTES", 0)
    dims = graph_size.graph_dims(space)
    want = dims.padded_bytes() > 2 * dims.ragged_bytes()
    assert is_ragged(build_one(space, sd)) == want


@pytest.mark.parametrize("name", ["rescnn", "grouped"])
@pytest.mark.parametrize("edges", ["padded", "ragged"])
def test_the_estimate_from_the_spec_matches_the_built_graph(name: str, edges: str) -> None:
    space, sd = _space_and_sd(name)
    g = build_one(space, sd, edges=edges)
    built = sum(v.numel() * v.element_size() for k, v in g.items() if isinstance(v, torch.Tensor)
                and k not in ("extras", "num_extras"))
    assert estimate_graph_bytes(space, edges, building=False) == built


class Wide(nn.Module):
    """A 7x7 stem and many 1x1 edges: padding multiplies the edge features."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.fc = nn.Conv2d(3, 16, 7, padding=3), nn.Conv2d(16, 256, 1), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.mix(torch.relu(self.stem(x))).mean((2, 3)))


def test_graphs_that_would_not_fit_are_refused_with_their_size(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    net = Wide()
    space = WeightSpace.from_module(net, torch.randn(1, 3, 8, 8))
    need = estimate_graph_bytes(space, "padded")
    assert need > estimate_graph_bytes(space, "ragged")
    msg = r"about \d+\.\d MiB \(285 nodes, 6,704 edges, padded edges of up to 49"
    with pytest.raises(GraphTooLargeError, match=msg):
        check_graph_fits(space, "padded", limit=need - 1)
    assert check_graph_fits(space, "padded", limit=need) == need
    save_state_dict(net.state_dict(), tmp_path / "wide.safetensors")
    ref = "tests.test_graph_ragged:Wide"
    rc = main(["graph", str(tmp_path / "wide.safetensors"), "--arch", ref, "--input-shape", "3,8,8", "-o",
               str(tmp_path / "g.pt"), "--edges", "padded", "--max-memory", str(need / 2 ** 30 / 2)])
    err = capsys.readouterr().err
    assert rc != 0 and "parameter graph would take about" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "g.pt").exists()
    rc = main(["graph", str(tmp_path / "wide.safetensors"), "--arch", ref, "--input-shape", "3,8,8", "-o",
               str(tmp_path / "g.pt"), "--edges", "ragged"])
    assert rc == 0 and is_ragged(load_graph(tmp_path / "g.pt"))


def test_the_training_graph_cache_slices_ragged_batches_per_model() -> None:
    from wsl.tasks.generalization import GraphCache

    space, sd = _space_and_sd("grouped")
    sds = [{k: v * (i + 1) if v.is_floating_point() else v for k, v in sd.items()} for i in range(4)]
    cache = GraphCache(build(space, {k: torch.stack([s[k] for s in sds]) for k in sd}, edges="ragged"), 4)
    batch = cache.take(torch.tensor([2, 0]))
    for g, i in zip(to_graphs(batch), (2, 0)):
        assert torch.equal(g.edge_values, build_one(space, sds[i], edges="ragged").edge_values)
        assert all(torch.equal(decode(g, space)[k], sds[i][k]) for k in sd)
