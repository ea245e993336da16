"""The `wsl` command line: inspect, exit codes, one-line errors, --debug, python -m wsl."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsl.archs.registry import REGISTRY
from wsl.cli import main
from wsl.io import save_state_dict


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_inspect_resnet18_safetensors_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = REGISTRY["resnet18"](num_classes=10)
    save_state_dict(net.state_dict(), tmp_path / "r18.safetensors")
    rc, out, _ = _run(["inspect", str(tmp_path / "r18.safetensors"), "--arch", "resnet18(num_classes=10)",
                       "--input-shape", "3,32,32", "--json"], capsys)
    assert rc == 0
    d = json.loads(out)
    assert d["num_parameters"] == 11_181_642
    assert len(d["tensors"]) == len(net.state_dict())
    first = d["tensors"][0]
    assert first["name"] == "conv1.weight" and first["shape"] == [64, 3, 7, 7] and len(first["axes"]) == 4
    assert d["graph"]["num_nodes"] > 0 and d["graph"]["num_edges"] > 11_000_000 // 49
    assert any(g["fixed"] for g in d["groups"]) and any(not g["fixed"] for g in d["groups"])


def test_inspect_bert_layer_by_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layer = REGISTRY["bert_layer"]()
    save_state_dict(layer.state_dict(), tmp_path / "layer.safetensors")
    rc, out, _ = _run(["inspect", str(tmp_path / "layer.safetensors"), "--arch", "bert_layer"], capsys)
    assert rc == 0
    assert "attention.self.query.weight" in out and "parameters:" in out and "graph:" in out
    rc, out, _ = _run(["inspect", "--arch", "bert_layer", "--json"], capsys)
    assert rc == 0 and {g["kind"] for g in json.loads(out)["groups"]} >= {"qk", "v", "head"}


def test_user_errors_are_one_line_with_nonzero_exit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    net = REGISTRY["small_cnn"]()
    sd = net.state_dict()
    sd["0.weight"] = torch.zeros(8, 1, 3, 3)
    save_state_dict(sd, tmp_path / "bad.safetensors")
    for args, needle in (
        (["inspect", str(tmp_path / "bad.safetensors"), "--arch", "small_cnn"], "0.weight"),
        (["inspect", str(tmp_path / "missing.safetensors"), "--arch", "small_cnn"], "missing.safetensors"),
        (["inspect", "--arch", "no_such_arch"], "no_such_arch"),
        (["inspect", "--arch", "mlp"], "'sizes'; write it as 'mlp(sizes=[64, 32, 10])'"),
        (["inspect", "--arch", "nope"], "known: bert(config={...}), "),
        (["inspect"], "PATH"),
        (["inspect", "--arch", "small_cnn", "--input-shape", "a,b"], "input-shape"),
    ):
        rc, out, err = _run(args, capsys)
        assert rc == 2, args
        assert err.startswith("wsl: error:") and needle in err and err.count("\n") == 1, err
        assert "Traceback" not in err


def test_random_bytes_are_not_a_safetensors_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.errors import CheckpointError
    from wsl.io import load_safetensors

    f = tmp_path / "rand.safetensors"
    f.write_bytes((13_389_164_444_924_600_146).to_bytes(8, "little") + bytes(range(7, 250)) * 4)
    rc, _, err = _run(["inspect", str(f), "--arch", "small_cnn"], capsys)
    assert rc == 2 and f"{f}: not a safetensors file" in err and "header length" not in err, err
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_safetensors(f)
    f.write_bytes(b"12345678")  # a length and nothing after it
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_safetensors(f)


@pytest.mark.parametrize("config", ["tiny.yaml", "gs_statnn_gbt.yaml"])
def test_train_without_matplotlib_succeeds_with_a_warning(config: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The plot is optional: without matplotlib a run (meta-model or baseline) writes its results and exits 0."""
    from test_tasks import make_tiny_zoo

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=20)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    out = tmp_path / "run"
    cfg = Path(__file__).resolve().parents[1] / "configs" / "generalization" / config
    with caplog.at_level("WARNING", logger="wsl.train"):
        assert main(["train", str(cfg), f"data.zoo={zoo}", "train.epochs=1", "train.progress=false",
                     "--output", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] > 0
    assert not (out / "test_scatter.png").exists()
    assert [r.getMessage() for r in caplog.records if "test_scatter.png" in r.getMessage()] == [
        f"wsl: warning: not drawing {out / 'test_scatter.png'}: matplotlib is not installed "
        "(pip install 'wsl[plot]'); everything else was written"]


def test_siren_progress_counts_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A SIREN zoo's chunks are images (each fitted fits_per_image times): the bar must not say model/s."""
    recipe = Path(__file__).resolve().parents[1] / "zoos" / "digits-siren.yaml"
    rc, out, err = _run(["zoo", "generate", str(recipe), "-o", str(tmp_path / "s"), "--num-models", "2",
                         "--epochs", "2", "--workers", "1"], capsys)
    assert rc == 0 and "generate digits-siren" in err, err
    assert "image/s" in err and "model/s" not in err, err
    assert "2 images" in out, out


def test_call_forms_show_required_arguments() -> None:
    """A registered name that needs arguments is listed with a call that builds it."""
    from wsl.archs.registry import call_form
    from wsl.errors import ArchitectureError
    from wsl.io.archref import resolve_arch

    assert call_form("mlp") == "mlp(sizes=[64, 32, 10])"
    assert call_form("bert") == "bert(config={...})" and call_form("resnet18") == "resnet18"
    assert resolve_arch(call_form("mlp"))[0].in_features == 64  # type: ignore[index]
    for name in ("small_cnn", "bert_layer", "vit_tiny"):  # bare names build as listed
        assert call_form(name) == name
    with pytest.raises(ArchitectureError, match=r"missing a required argument: 'sizes'; "
                                                r"write it as 'mlp\(sizes=\[64, 32, 10\]\)'"):
        resolve_arch("mlp")
    with pytest.raises(ArchitectureError, match=r"known: .*mlp\(sizes=\[64, 32, 10\]\), resnet,"):
        resolve_arch("mlpp")


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.errors import WslError

    with pytest.raises(WslError):
        main(["--debug", "inspect", "--arch", "no_such_arch"])


def test_python_dash_m_and_help() -> None:
    res = subprocess.run([sys.executable, "-m", "wsl", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("inspect", "graph", "zoo", "train", "predict", "push", "serve", "demo"):
        assert cmd in res.stdout
    res = subprocess.run([sys.executable, "-m", "wsl", "inspect", "--arch", "nope"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("wsl: error:")
