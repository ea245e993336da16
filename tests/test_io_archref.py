"""Tests for wsl.io.archref: architecture references and load_model."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from wsl.errors import ArchitectureError, StateDictMismatchError
from wsl.io import load_model, parse_call_args, resolve_arch, save_state_dict, space_from_state_dict
from wsl.io.atomic import atomic_save_safetensors


SEQ = {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [2],
       "layers": [{"type": "linear", "out_features": 3}, {"type": "relu"}, {"type": "linear", "out_features": 1}]}
BERT = {"model_type": "bert", "architectures": ["BertModel"], "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "vocab_size": 20, "max_position_embeddings": 16,
        "type_vocab_size": 2}
GPT2 = {"model_type": "gpt2", "architectures": ["GPT2Model"], "n_embd": 8, "n_head": 2, "n_layer": 1,
        "vocab_size": 11, "n_positions": 4}


@pytest.fixture()
def factory_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throwaway package ``archref_pkg_<id>.models`` importable from tmp_path."""
    name = f"archref_pkg_{abs(hash(tmp_path)) % 10**8}"
    pkg = tmp_path / "pkgroot" / name
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "models.py").write_text(textwrap.dedent("""
        from torch import nn
        def make(width=3, depth=1):
            return nn.Sequential(*[nn.Linear(width, width) for _ in range(depth)])
        def boom():
            raise ValueError("factory exploded")
        def not_module():
            return 42
        class Holder:
            @staticmethod
            def make():
                return nn.Tanh()
        instance = nn.ReLU()
    """))
    (pkg / "broken.py").write_text("import does_not_exist_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgroot"))
    return name


# ------------------------------------------------------------ reference forms
def test_module_passthrough() -> None:
    m = nn.Linear(2, 2)
    assert resolve_arch(m) is m


def test_dict_and_json_forms(tmp_path: Path) -> None:
    """Descriptions go through wsl.archs.describe.build, config.json through from_hf_config."""
    from wsl.archs import BertModel

    m = resolve_arch(SEQ)
    assert isinstance(m, nn.Sequential) and [type(x) for x in m] == [nn.Linear, nn.ReLU, nn.Linear]
    assert (m[0].in_features, m[0].out_features, m[2].out_features) == (2, 3, 1)  # in-features inferred
    assert m.wsl_arch["layers"][0]["type"] == "linear"  # the canonical description is kept on the module
    assert resolve_arch(json.dumps(SEQ))[2].out_features == 1
    (tmp_path / "arch.json").write_text(json.dumps(SEQ))
    assert isinstance(resolve_arch(str(tmp_path / "arch.json")), nn.Sequential)
    builtin = {"format": "wsl.arch/1", "kind": "builtin", "name": "mlp", "kwargs": {"sizes": [4, 5, 2]}}
    assert [x.out_features for x in resolve_arch(builtin) if isinstance(x, nn.Linear)] == [5, 2]
    (tmp_path / "config.json").write_text(json.dumps(BERT))
    bert = resolve_arch(tmp_path / "config.json")  # type: ignore[arg-type]
    assert isinstance(bert, BertModel) and bert.state_dict()["embeddings.word_embeddings.weight"].shape == (20, 8)


def test_json_errors(tmp_path: Path) -> None:
    with pytest.raises(ArchitectureError, match="line 1 column 12"):
        resolve_arch('{"layers": }')
    (tmp_path / "bad.json").write_text('{\n "layers": [1,\n}')
    with pytest.raises(ArchitectureError, match=r"bad\.json.*line 3 column 1"):
        resolve_arch(str(tmp_path / "bad.json"))
    with pytest.raises(ArchitectureError, match="not found|cannot read"):
        resolve_arch(str(tmp_path / "missing.json"))
    with pytest.raises(ArchitectureError, match="format: expected 'wsl.arch/1'"):
        resolve_arch({"oops": 1})
    with pytest.raises(ArchitectureError, match="layers: expected a non-empty list"):
        resolve_arch({k: v for k, v in SEQ.items() if k != "layers"})


def test_package_factory(factory_pkg: str) -> None:
    assert isinstance(resolve_arch("torch.nn:Identity"), nn.Identity)
    lin = resolve_arch("torch.nn:Linear(in_features=3, out_features=2, bias=False)")
    assert isinstance(lin, nn.Linear) and lin.bias is None
    m = resolve_arch(f"{factory_pkg}.models:make(width=5, depth=2)")
    assert len(m) == 2 and m[0].in_features == 5
    assert isinstance(resolve_arch(f"{factory_pkg}.models:Holder.make"), nn.Tanh)
    assert isinstance(resolve_arch(f"{factory_pkg}.models:instance"), nn.ReLU)


@pytest.mark.parametrize(
    "suffix,match",
    [
        (".nope:make", "module .* not found"),
        (".broken:make", "importing .* failed|does_not_exist"),
        (".models:missing", "has no attribute 'missing'"),
        (".models:boom", "raised ValueError: factory exploded"),
        (".models:not_module", "returned a int, not a torch.nn.Module"),
        (".models:make(width=3, 4", "unrecognized|parse"),
        (".models:make(width=__import__('os'))", "literals"),
        (".models:make(**{'width': 2})", "literals|not allowed"),
        (".models:make(unknown=1)", "raised TypeError"),
    ],
)
def test_package_factory_errors(factory_pkg: str, suffix: str, match: str) -> None:
    with pytest.raises(ArchitectureError, match=match) as info:
        resolve_arch(factory_pkg + suffix)
    assert factory_pkg in str(info.value)


def test_file_factory(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    f = tmp_path / "my_arch.py"
    f.write_text(textwrap.dedent("""
        from torch import nn
        def build(hidden=2, act="relu"):
            return nn.Sequential(nn.Linear(3, hidden), nn.ReLU() if act == "relu" else nn.Tanh())
    """))
    m = resolve_arch(f"{f}:build(hidden=7, act='tanh')")
    assert m[0].out_features == 7 and isinstance(m[1], nn.Tanh)
    with pytest.raises(ArchitectureError, match="literals"):
        resolve_arch(f"{f}:build(hidden=open({str(marker)!r}, 'w'))")
    assert not marker.exists()
    with pytest.raises(ArchitectureError, match="not found"):
        resolve_arch(f"{tmp_path / 'nope.py'}:build")
    (tmp_path / "syntax.py").write_text("def broken(:\n")
    with pytest.raises(ArchitectureError, match=r"syntax\.py.*SyntaxError"):
        resolve_arch(f"{tmp_path / 'syntax.py'}:broken")
    with pytest.raises(ArchitectureError, match="not allowed"):
        resolve_arch(f"{f}:build", allow_code=False)


def test_registry_names() -> None:
    m = resolve_arch("mlp(sizes=[6, 4, 2], bias=False)")
    assert [x.out_features for x in m if isinstance(x, nn.Linear)] == [4, 2] and m[0].bias is None
    assert isinstance(resolve_arch("small_cnn"), nn.Module)  # a bare name calls the factory's defaults
    with pytest.raises(ArchitectureError, match="'resnet999' is not registered.*known: .*mlp.*resnet18"):
        resolve_arch("resnet999")
    with pytest.raises(ArchitectureError, match=r"missing a required argument: 'sizes'; write it as 'mlp\(sizes="):
        resolve_arch("mlp(widths=[2, 3])")
    with pytest.raises(ArchitectureError, match="unrecognized"):
        resolve_arch("not a ref at all!")


def test_real_registry_and_description() -> None:
    m = resolve_arch("resnet18(num_classes=10)")
    assert m.state_dict()["fc.weight"].shape[0] == 10
    desc = {"format": "wsl.arch/1", "kind": "builtin", "name": "resnet18",
            "kwargs": {"num_classes": 3}}
    assert resolve_arch(json.dumps(desc)).state_dict()["fc.bias"].shape == (3,)


def test_real_hf_config_dir(tmp_path: Path) -> None:
    """A HF-style directory (prefixed, legacy LayerNorm.gamma keys) loads strictly."""
    from wsl.archs.hf import from_hf_config

    cfg = BERT
    src = from_hf_config(cfg)
    sd = {"bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma"): v
          for k, v in src.state_dict().items()}
    save_state_dict(sd, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    module, loaded = load_model(tmp_path)
    assert type(module) is type(src) and set(loaded) == set(src.state_dict())


def test_parse_call_args() -> None:
    args, kwargs = parse_call_args("1, 'a', k=(1, 2), d={'x': None}")
    assert args == [1, "a"] and kwargs == {"k": (1, 2), "d": {"x": None}}
    for bad in ["x", "f()", "1), print(2", "k=[i for i in range(3)]"]:
        with pytest.raises(ArchitectureError):
            parse_call_args(bad)


# ------------------------------------------------------------------ load_model
class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)
        self.register_buffer("scratch", torch.zeros(4), persistent=False)


def test_load_model_with_arch(tmp_path: Path, factory_pkg: str) -> None:
    src = _Net()
    nn.init.constant_(src.fc.weight, 0.5)
    src.bn.running_mean.fill_(2.0)
    path = tmp_path / "net.safetensors"
    save_state_dict(src.state_dict(), path)
    module, sd = load_model(path, _Net())
    assert not module.training
    assert torch.equal(module.fc.weight, src.fc.weight)
    assert torch.equal(module.bn.running_mean, torch.full((2,), 2.0))
    assert "bn.num_batches_tracked" in sd and "scratch" not in sd
    match = r"net\.safetensors.*missing 0\.bias.*unexpected bn\.bias"
    with pytest.raises(StateDictMismatchError, match=match):
        load_model(path, f"{factory_pkg}.models:make(depth=2)")


def test_load_model_strict_false(tmp_path: Path) -> None:
    save_state_dict({"weight": torch.ones(2, 3), "extra": torch.ones(1)}, tmp_path / "w.pt")
    module, _ = load_model(tmp_path / "w.pt", nn.Linear(3, 2), strict=False)
    assert torch.equal(module.weight, torch.ones(2, 3))
    with pytest.raises(StateDictMismatchError, match="wrong shape weight"):
        load_model(tmp_path / "w.pt", nn.Linear(2, 3), strict=False)


def test_load_model_from_metadata(tmp_path: Path) -> None:
    src = resolve_arch(SEQ)
    path = tmp_path / "m.safetensors"
    atomic_save_safetensors(src.state_dict(), path, {"wsl_arch": json.dumps(SEQ)})
    module, _ = load_model(path)
    assert [type(x) for x in module] == [nn.Linear, nn.ReLU, nn.Linear]
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), src.state_dict().values()))
    atomic_save_safetensors(src.state_dict(), path, {"wsl_arch": "os:system('echo hi')"})
    with pytest.raises(ArchitectureError, match="wsl_arch.*invalid JSON"):
        load_model(path)


def test_load_model_from_dir_config(tmp_path: Path) -> None:
    """A directory with config.json (GPT-2, no key prefix) loads without an explicit architecture."""
    from wsl.archs import GPT2Model
    from wsl.archs.registry import from_hf_config

    src = from_hf_config(GPT2)
    save_state_dict(src.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(GPT2))
    module, sd = load_model(tmp_path)
    assert isinstance(module, GPT2Model) and sd.keys() == src.state_dict().keys()
    assert all(torch.equal(module.state_dict()[k], v) for k, v in src.state_dict().items())
    with pytest.raises(StateDictMismatchError, match="missing"):
        save_state_dict({k: v for k, v in src.state_dict().items() if "mlp" not in k}, tmp_path / "model.safetensors")
        load_model(tmp_path)


def test_load_model_without_arch(tmp_path: Path) -> None:
    save_state_dict({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ArchitectureError, match="--arch"):
        load_model(tmp_path / "w.safetensors")


def test_space_from_state_dict_checks_strictly() -> None:
    from wsl.archs.registry import REGISTRY
    from wsl.errors import StateDictMismatchError

    sd = REGISTRY["small_cnn"]().state_dict()
    assert space_from_state_dict(sd, "small_cnn").num_parameters == 4970
    bad = dict(sd)
    bad.pop("0.bias")
    bad["extra.weight"] = torch.zeros(2)
    bad["3.weight"] = torch.zeros(16, 16, 5, 5)
    with pytest.raises(StateDictMismatchError, match=r"\(architecture 'small_cnn'\)") as err:
        space_from_state_dict(bad, "small_cnn")
    msg = str(err.value)
    assert "0.bias" in msg and "extra.weight" in msg and "3.weight" in msg
