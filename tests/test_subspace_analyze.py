"""wsl.subspace.analyze: the report's schema and numbers against dense computations, alignment, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import wsl
from wsl.archs import REGISTRY
from wsl.cli import main
from wsl.space import WeightSpace
from wsl.subspace.analyze import analyze
from wsl.subspace.report import write_report
from wsl.subspace.halves import split_halves
from wsl.subspace.modes import mode_grams
from wsl.subspace.sources import Source, open_source
from wsl.subspace.spectrum import directions, principal_cosines
from wsl.subspace.stacks import TensorStack
from wsl.zoo import load_zoo

from tests.subspace_fixtures import SIZES, write_checkpoints, write_zoo

_SPECTRUM_KEYS = {"n_models", "n_params", "shape", "total_variance", "explained_variance_ratio", "effective_rank",
                  "rank_for"}


@pytest.fixture(scope="module")
def zoo_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = write_zoo(tmp_path_factory.mktemp("zoo") / "zoo", n=12)
    return root, analyze(root, aligned="both", progress=False)


def _spectrum_ok(entry: dict) -> None:
    assert _SPECTRUM_KEYS <= set(entry)
    assert set(entry["rank_for"]) == {"0.5", "0.9", "0.99"}
    evr = entry["explained_variance_ratio"]
    assert len(evr) == min(entry["n_models"] - 1, entry["n_params"])
    assert all(a >= b - 1e-12 for a, b in zip(evr, evr[1:])) and sum(evr) == pytest.approx(1.0)


def test_report_schema_on_a_tiny_zoo(zoo_report: tuple[Path, dict], tmp_path: Path) -> None:
    _, report = zoo_report
    assert report["format"] == "wsl.subspace.report/1" and report["n_models"] == 12
    assert set(report["tensors"]) == {f"{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")}
    assert set(report["layers"]) == {"0", "3", "6"}
    for view in (report, report["aligned"]):
        for name, entry in list(view["tensors"].items()) + list(view["layers"].items()):
            _spectrum_ok(entry)
            assert set(entry["nulls"]) == {"init", "mp", "shuffled"}
            for null in entry["nulls"].values():
                _spectrum_ok(null)
            for ex in entry["excess"].values():
                assert set(ex) == {"k90", "at_1", "at_k90", "rank_for_0.9"}
            sh = entry["split_half"]
            assert sh["n_halves"] == [6, 6] and 0 <= sh["overlap"] <= 1 and len(sh["cosines"]) == sh["k"]
            assert set(sh["nulls"]) == {"init", "shuffled"}
            if name.endswith("weight"):
                for side in ("left", "right"):
                    assert {"dim", "effective_rank", "rank_for", "nulls"} <= set(entry["modes"][side])
    assert report["aligned"]["alignment"]["n_models"] == 12
    # the planted structure (rank 2) is far above every null, and shared between halves
    layer = report["layers"]["3"]
    assert layer["rank_for"]["0.9"] <= 2 and all(e["rank_for_0.9"] >= 5 for e in layer["excess"].values())
    assert layer["split_half"]["overlap"] > 0.95 > 0.2 > layer["split_half"]["nulls"]["shuffled"]["overlap"]
    paths = write_report(report, tmp_path)
    assert json.loads(paths["report"].read_text())["layers"]["0"]["tensors"] == ["0.weight", "0.bias"]
    assert "## layer `3`" in paths["summary"].read_text()
    assert {p.name for p in paths["figures"]} == {"spectrum.png", "cumulative.png"}


def test_layer_split_half_and_mode_numbers_match_dense_computations(zoo_report: tuple[Path, dict]) -> None:
    root, report = zoo_report
    stack = open_source(root).stack
    # a layer's spectrum is that of its tensors concatenated
    x = torch.cat([stack.tensors[n].reshape(12, -1) for n in ("3.weight", "3.bias")], 1).double()
    s = torch.linalg.svdvals(x - x.mean(0))[:11] ** 2
    assert torch.allclose(torch.tensor(report["layers"]["3"]["explained_variance_ratio"], dtype=torch.float64),
                          s / s.sum(), atol=1e-6)
    # split-half overlap from the Gram alone equals principal angles of explicitly computed directions
    sh = report["tensors"]["3.weight"]["split_half"]
    src = open_source(root)
    halves = split_halves([i.rsplit("@", 1)[0] for i in src.stack.ids], seed=0)
    va = directions(stack, "3.weight", sh["k"], models=halves[0])[2]
    vb = directions(stack, "3.weight", sh["k"], models=halves[1])[2]
    assert torch.allclose(principal_cosines(va, vb), torch.tensor(sh["cosines"], dtype=torch.float64), atol=1e-4)
    # the mode view: singular values of the unfoldings
    w = stack.tensors["3.weight"].double()  # (12, 8, 10)
    left = torch.linalg.svdvals(w.permute(1, 0, 2).reshape(8, -1)) ** 2
    right = torch.linalg.svdvals(w.reshape(-1, 10)) ** 2
    modes = report["tensors"]["3.weight"]["modes"]
    assert torch.allclose(torch.tensor(modes["left"]["explained_variance_ratio"], dtype=torch.float64),
                          left / left.sum(), atol=1e-8)
    assert torch.allclose(torch.tensor(modes["right"]["explained_variance_ratio"], dtype=torch.float64),
                          right / right.sum(), atol=1e-8)
    # a few models per read (block smaller than one model's tensor: one model at a time) gives the same Grams
    small = mode_grams(stack, "3.weight", block=50, max_side=9)
    assert torch.allclose(small["left"], torch.einsum("nar,nbr->ab", w, w), rtol=1e-6)
    assert isinstance(small["right"], str) and "10 > 9" in small["right"]


def _permuted_copies(n: int, noise: float, seed: int = 0) -> tuple[TensorStack, WeightSpace]:
    torch.manual_seed(seed)
    net = REGISTRY["mlp"](sizes=SIZES)
    space = WeightSpace.from_module(net)
    base = {k: v.detach() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    sds = []
    for _ in range(n):
        perms = {g.id: torch.randperm(g.size, generator=gen) for g in space.groups if g.permutable}
        sd = space.permute(base, perms)
        sds.append({k: v + noise * torch.randn(v.shape, generator=gen) for k, v in sd.items()})
    return TensorStack.from_state_dicts(sds), space


def test_alignment_collapses_permuted_copies_of_one_network() -> None:
    stack, _ = _permuted_copies(10, noise=1e-3)
    src = Source("copies", stack, build=lambda: REGISTRY["mlp"](sizes=SIZES), info={"kind": "test"})
    report = analyze(src, nulls=("mp", "shuffled"), aligned=True, split_half=False, modes=False, progress=False)
    for layer in ("0", "3"):  # hidden layers: their rows are permuted
        before = report["layers"][layer]["total_variance"]
        after = report["aligned"]["layers"][layer]["total_variance"]
        noise_only = 1e-6 * report["layers"][layer]["n_params"]  # E sum of variances of the planted noise
        assert before > 1e3 * noise_only and after == pytest.approx(noise_only, rel=0.5), layer
    assert report["nulls"] == {"mp": {"description": report["nulls"]["mp"]["description"]},
                               "shuffled": {"description": report["nulls"]["shuffled"]["description"]}}


def test_checkpoints_without_an_architecture_skip_init_and_alignment(tmp_path: Path) -> None:
    write_checkpoints(tmp_path / "ck", n=6)
    report = analyze(tmp_path / "ck", progress=False, modes=False)
    assert "architecture" in report["nulls"]["init"]["skipped"]
    assert "skipped" in report["tensors"]["0.weight"]["nulls"]["init"]
    assert "init" not in report["tensors"]["0.weight"]["excess"]
    assert "architecture" in report["aligned"]["skipped"]


def test_cli_analyze_fit_project_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    zoo = write_zoo(tmp_path / "zoo", n=10, seed=1)
    ck = write_checkpoints(tmp_path / "ck", n=8, seed=1)
    assert main(["subspace", "analyze", str(zoo), "-o", str(tmp_path / "rep"), "--align", "none",
                 "--nulls", "mp,shuffled", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["layers"]["0"]["effective_rank"]) == {"data", "mp", "shuffled"} and "aligned" not in summary
    assert (tmp_path / "rep" / "report.json").is_file() and (tmp_path / "rep" / "summary.md").is_file()

    assert main(["subspace", "fit", str(tmp_path / "ck"), "-o", str(tmp_path / "basis"), "--rank", "7",
                 "--json"]) == 0
    fitted = json.loads(capsys.readouterr().out)
    assert fitted["ranks"]["0.weight"] == 7 and fitted["bytes"] > 0
    out, coeffs = tmp_path / "recon.safetensors", tmp_path / "c.safetensors"
    assert main(["subspace", "project", str(ck[2]), "--basis", str(tmp_path / "basis"), "-o", str(out),
                 "--coefficients", str(coeffs), "--json"]) == 0
    proj = json.loads(capsys.readouterr().out)
    assert proj["relative_error"] < 1e-5 < 0.05 < proj["mean_only_relative_error"]  # full rank: exact
    assert wsl.io.load_state_dict(coeffs)["0.weight"].shape == (7,)
    assert torch.allclose(wsl.io.load_state_dict(out)["3.weight"], wsl.io.load_state_dict(ck[2])["3.weight"],
                          atol=1e-5)

    other = tmp_path / "other.safetensors"
    wsl.save(REGISTRY["mlp"](sizes=[6, 11, 8, 3]), other)
    bad = [(["subspace", "project", str(other), "--basis", str(tmp_path / "basis")], "shape"),
           (["subspace", "project", str(ck[0]), "--basis", str(tmp_path / "nothing")], "basis card"),
           (["subspace", "project", str(ck[0]), "--basis", str(tmp_path / "basis"), "-o", "x.pt"], "safetensors"),
           (["subspace", "analyze", str(zoo), "-o", str(tmp_path / "x"), "--epochs", "soon"], "--epochs"),
           (["subspace", "analyze", str(zoo), "-o", str(tmp_path / "x"), "--nulls", "gauss"], "unknown null"),
           (["subspace", "analyze", str(zoo), "-o", str(tmp_path / "x"), "--arch", "mlp"], "--zoo-arch"),
           (["subspace", "fit", str(ck[0]), "-o", str(tmp_path / "x"), "--rank", "2"], "at least 2")]
    for argv, needle in bad:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)


def _two_arch_zoo(root: Path, second_sizes: list[int]) -> Path:
    from wsl.archs import REGISTRY
    from wsl.zoo.writer import ZooWriter

    from tests.subspace_fixtures import DATASET, SIZES

    gen = torch.Generator().manual_seed(3)
    with ZooWriter(root, name="two", dataset=DATASET, recipe={"note": "test"}) as w:
        for k, (sizes, act) in enumerate(((SIZES, "relu"), (second_sizes, "tanh"))):
            aid = w.add_architecture(REGISTRY["mlp"](sizes=sizes, activation=act))
            sd = REGISTRY["mlp"](sizes=sizes).state_dict()
            rows = [{"model_id": f"a{k}m{i}", "epoch": 1, "seed": i, "test_accuracy": 0.5} for i in range(4)]
            w.append(aid, {n: torch.randn(4, *v.shape, generator=gen) for n, v in sd.items()}, rows, chunk=f"c{k}")
    return root


def test_zoo_architectures_of_one_layout_are_pooled_others_must_be_chosen(tmp_path: Path) -> None:
    from wsl.errors import ZooFormatError
    from wsl.subspace.sources import open_source

    from tests.subspace_fixtures import SIZES

    pooled = open_source(_two_arch_zoo(tmp_path / "same", SIZES))
    assert len(pooled.stack) == 8 and pooled.info["archs"] == ["a0", "a1"]
    other = _two_arch_zoo(tmp_path / "diff", [6, 12, 3])
    with pytest.raises(ZooFormatError, match="different tensor shapes"):
        open_source(other)
    assert len(open_source(other, arch=sorted(load_zoo(other).architectures)[1]).stack) == 4
