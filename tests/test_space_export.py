"""The torch.export front end agrees with torch.fx, and the generic rules with the layer rules.

* Every network of ``tests/test_space.py`` that both front ends capture gets
  the same spec from torch.export as from torch.fx (the same signature; for
  attention networks, read by class-name rules under torch.fx and by the
  generic operation rules under torch.export, the same tensors, groups,
  sites and edges up to the names of graph nodes).
* With ``transformers`` installed, its BERT (with classifier) and GPT-2 LM
  modules get the structure of the local ports, and compute the same
  function on the same weights.
* Front-end selection and its errors.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from tests.test_space import FAMILIES, _randomize
from wsl.archs import example_input
from wsl.errors import TraceError
from wsl.space import WeightSpace

ATTENTION = {"multihead_attention", "gpt2"}  # fused q/k/v: segment names differ from the layer rule's
EXPORT_ONLY_FAILS = {"gain_conv_subclass"}  # weight standardisation computed from the parameters (torch.fx reads
# the layer whole and checks it by running it; the operations on parameters have no rule)


def structure(space: WeightSpace) -> tuple[Any, ...]:
    """Tensors' axes, groups, sites and edges with groups renamed in order of appearance, names left out."""
    ids: dict[int, int] = {}

    def gid(g: int | None) -> int | None:
        if g is None:
            return None
        ids.setdefault(g, len(ids))
        return ids[g]

    tensors = sorted((t.name, t.role, tuple(tuple(tuple((gid(f[0]), *f[1:]) for f in seg) for seg in ax)
                                            for ax in t.axes)) for t in space.tensors.values())
    groups = sorted((ids[g.id], g.size, g.kind, g.fixed, None if g.parent is None else gid(g.parent))
                    for g in space.groups if g.id in ids)
    sites = sorted((gid(s.group), s.kind, s.depth) for s in space.sites)
    edges = sorted((c.kind, c.tensor or "", c.part, c.attrs) for c in space.connections)
    return tensors, groups, sites, edges, space.graph_size()


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - EXPORT_ONLY_FAILS))
def test_export_gives_the_torch_fx_spec(name: str) -> None:
    module, x = FAMILIES[name]
    module = _randomize(copy.deepcopy(module))
    x = example_input(module, batch=2) if x is None else x
    fx = WeightSpace.from_module(module, x, frontend="fx")
    ex = WeightSpace.from_module(module, x, frontend="export")
    assert structure(ex) == structure(fx)
    if name not in ATTENTION:
        assert ex.signature == fx.signature
    assert ex.meta("frontend") == "export" and fx.meta("frontend") is None


def test_auto_uses_torch_fx_when_it_captures_the_module() -> None:
    module, x = FAMILIES["resnet18"]
    assert WeightSpace.from_module(module, x).signature == WeightSpace.from_module(module, x, frontend="fx").signature


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) if x.sum() > 0 else x


def test_front_end_errors_are_one_line() -> None:
    with pytest.raises(TraceError, match="unknown tracing front end"):
        WeightSpace.from_module(nn.Linear(3, 4), torch.randn(2, 3), frontend="jit")
    with pytest.raises(TraceError, match="positional"):
        WeightSpace.from_module(nn.Linear(3, 4), {"input": torch.randn(2, 3)}, frontend="fx")
    with pytest.raises(TraceError) as err:
        WeightSpace.from_module(Branchy(), torch.randn(2, 3))
    msg = str(err.value)
    assert "torch.fx could not trace Branchy" in msg and "Neither could torch.export" in msg and "\n" not in msg


def test_keyword_inputs_go_through_export() -> None:
    space = WeightSpace.from_module(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
                                   {"input": torch.randn(2, 3)})
    assert space.meta("frontend") == "export" and [g.size for g in space.permutable_groups()] == [4]


LOCAL_PORTS = {
    "bert_classifier": {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": 100,
                        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 64, "max_position_embeddings": 32, "type_vocab_size": 2,
                        "num_labels": 3},
    "gpt2_lm": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 100, "n_embd": 32,
                "n_layer": 2, "n_head": 4, "n_positions": 32},
}


@pytest.mark.parametrize("name", sorted(LOCAL_PORTS))
def test_transformers_modules_get_the_local_ports_structure(name: str) -> None:
    pytest.importorskip("transformers", reason="the optional 'transformers' package is not installed")
    from wsl.archs.hf import build_hf_model
    from wsl.archs.hf_inputs import hf_example_inputs

    local = _randomize(build_hf_model(LOCAL_PORTS[name], prefer_local=True))
    hf = build_hf_model(LOCAL_PORTS[name], prefer_local=False).eval()
    assert type(local).__module__.startswith("wsl.archs") and type(hf).__module__.startswith("transformers")
    hf.load_state_dict(local.state_dict(), strict=False)
    kw = hf_example_inputs(hf)
    a = WeightSpace.from_module(local, kw["input_ids"])
    b = WeightSpace.from_module(hf, kw)
    assert a.meta("frontend") is None and b.meta("frontend") == "export"
    assert structure(a)[:4] == structure(b)[:4]
    with torch.no_grad():
        y = local(kw["input_ids"])
        z = hf(**kw)
    y = y[0] if isinstance(y, tuple) else y
    torch.testing.assert_close(z[0], y, atol=1e-5, rtol=1e-5)


def test_a_torch_nn_layer_without_a_rule_is_read_through_its_operations() -> None:
    """torch.fx keeps ``nn.TransformerEncoder`` whole (no layer rule); ``auto`` then reads it with torch.export."""
    from tests.space_checks import assert_preserves

    layer = nn.TransformerEncoderLayer(16, 4, 24, batch_first=True)
    net = nn.Sequential(nn.Linear(5, 16), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                        nn.Linear(16, 3))
    space = assert_preserves(net, torch.randn(2, 6, 5))
    assert space.meta("frontend") == "export"
    heads = {g.id for g in space.groups if g.kind == "head"}
    assert len(heads) == 2 and all(not space.groups[h].fixed for h in heads)
