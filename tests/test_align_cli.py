"""`wsl align` and `wsl merge` from the command line: files in, files that carry their architecture out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wsl
from wsl.align import weight_matching
from wsl.archs import REGISTRY
from wsl.cli import main
from wsl.io import load_model
from wsl.space import WeightSpace

from tests.test_space import _randomize


def _nets(tmp_path: Path, n: int = 2, sizes: list[int] | None = None) -> list[Path]:
    paths = []
    for i in range(n):
        net = _randomize(REGISTRY["mlp"](sizes=sizes or [6, 12, 8, 3]), seed=i)
        p = tmp_path / f"net{i}.safetensors"
        wsl.save(net, p)
        paths.append(p)
    return paths


def test_align_writes_the_permuted_model_with_its_architecture(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, b = _nets(tmp_path)
    out = tmp_path / "aligned.safetensors"
    assert main(["align", str(a), str(b), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["objective_after"] >= report["objective_before"] and report["groups_moved"] >= 1
    ref, ref_sd = load_model(a)
    net_b, sd_b = load_model(b)
    aligned, sd_out = load_model(out)  # no --arch: the file carries it
    expected = weight_matching(ref_sd, sd_b, WeightSpace.from_module(ref)).apply(sd_b)
    assert all(torch.equal(sd_out[k], expected[k]) for k in expected)
    x = torch.randn(5, 6)
    torch.testing.assert_close(aligned(x), net_b(x))


def test_align_refuses_different_architectures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (a,) = _nets(tmp_path, 1)
    other = tmp_path / "other"
    other.mkdir()
    (b,) = _nets(other, 1, sizes=[6, 13, 8, 3])
    assert main(["align", str(a), str(b), "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "different weight spaces" in err and "(12, 6)" in err and len(err.strip().splitlines()) == 1


def test_merge_yaml_mean_and_aligned_mean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = _nets(tmp_path, 3)
    sds = [load_model(p)[1] for p in paths]
    for method in ("mean", "aligned_mean"):
        cfg = tmp_path / f"{method}.yaml"
        cfg.write_text(f"method: {method}\nmodels:\n" + "".join(f"  - {p}\n" for p in paths))
        out = tmp_path / f"{method}.safetensors"
        assert main(["merge", str(cfg), "-o", str(out)]) == 0
        _, merged = load_model(out)
        if method == "mean":
            for k, v in sds[0].items():
                torch.testing.assert_close(merged[k], torch.stack([sd[k] for sd in sds]).mean(0))
    assert "merged 3 models with aligned_mean" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ("method: fisher\nmodels: [a.safetensors]\n", "unknown; valid"),
    ("method: ties\nparameters: {lambda: 1}\nmodels: [a.safetensors]\n", "no parameter 'lambda'"),
    ("method: mean\n", "'models' is required"),
    ("method: mean\nmodels: [a]\nweights: [1]\n", "unknown key 'weights'"),
])
def test_merge_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, text: str,
                                          message: str) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text(text)
    assert main(["merge", str(cfg), "-o", str(tmp_path / "o.safetensors")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
