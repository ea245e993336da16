"""Zoo canonicalization: every model aligned to one reference, functions and metadata kept, resumable."""

from __future__ import annotations

from pathlib import Path

import torch

from wsl.align.zoo_align import align_zoo
from wsl.archs import REGISTRY
from wsl.space import WeightSpace, random_permutation
from wsl.zoo import load_zoo
from wsl.zoo.format import WRITER_FIELDS
from wsl.zoo.writer import ZooWriter

from tests.test_space import _randomize

DATASET = {"name": "toy", "input_shape": [5], "num_classes": 3}


def _write(root: Path, copies_of_one: bool) -> tuple[list[dict[str, torch.Tensor]], WeightSpace]:
    """Three models, two checkpoints each: permuted copies of one network, or independent networks."""
    base = _randomize(REGISTRY["mlp"](sizes=[5, 9, 7, 3]))
    space = WeightSpace.from_module(base)
    gen = torch.Generator().manual_seed(0)
    sds, rows = [], []
    for m in range(3):
        net = base if copies_of_one else _randomize(REGISTRY["mlp"](sizes=[5, 9, 7, 3]), seed=m + 1)
        perms = random_permutation(space, gen)
        for epoch in (0, 1):
            sd = {k: v * (1.0 + epoch) for k, v in net.state_dict().items()}  # a 'trajectory'
            sds.append(space.permute(sd, perms) if m else sd)
            rows.append({"model_id": f"m{m}", "epoch": epoch, "seed": m, "test_accuracy": 0.5 + 0.1 * m})
    with ZooWriter(root, name="toy", dataset=DATASET, recipe={"note": "test"}) as w:
        aid = w.add_architecture(base)
        w.append(aid, {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, rows, chunk="c0")
    return sds, space


def test_permuted_copies_become_identical_and_keep_function_and_metadata(tmp_path: Path) -> None:
    _write(tmp_path / "z", copies_of_one=True)
    out = align_zoo(tmp_path / "z", tmp_path / "aligned", reference=0, progress=False)
    src = load_zoo(tmp_path / "z")
    assert len(out) == len(src)
    x = torch.randn(4, 5)
    for a, b in zip(src, out):
        assert {k: v for k, v in a.metadata.items() if k not in WRITER_FIELDS} == \
               {k: v for k, v in b.metadata.items() if k not in WRITER_FIELDS}
        torch.testing.assert_close(b.module()(x), a.module()(x))
    first = [out[i].state_dict() for i in (0, 1)]
    for i in range(2, len(out)):  # every model's checkpoint equals model m0's at the same epoch, bit for bit
        sd = out[i].state_dict()
        assert all(torch.equal(sd[k], first[i % 2][k]) for k in sd)
    assert out.card["extra"]["aligned"]["reference"] == 0


def test_alignment_to_the_mean_brings_independent_models_closer_and_resumes(tmp_path: Path) -> None:
    _write(tmp_path / "z", copies_of_one=False)
    out = align_zoo(tmp_path / "z", tmp_path / "aligned", progress=False)

    def spread(zoo: object) -> float:
        last = zoo.latest().stacked()  # type: ignore[attr-defined]
        return float(sum((t - t.mean(0)).pow(2).sum() for t in last.values()))

    assert spread(out) < spread(load_zoo(tmp_path / "z"))
    again = align_zoo(tmp_path / "z", tmp_path / "aligned", progress=False)  # finished chunks are kept
    assert len(again) == len(out)
    assert all(torch.equal(again[i].state_dict()[k], v) for i in range(len(out)) for k, v in out[i].state_dict().items())


def test_wsl_zoo_align_command(tmp_path: Path, capsys: object) -> None:
    from wsl.cli import main

    _write(tmp_path / "z", copies_of_one=True)
    assert main(["zoo", "align", str(tmp_path / "z"), "-o", str(tmp_path / "a"), "--reference", "0"]) == 0
    assert "wrote" in capsys.readouterr().out  # type: ignore[attr-defined]
    out = load_zoo(tmp_path / "a")
    assert all(torch.equal(out[2].state_dict()[k], v) for k, v in out[0].state_dict().items())
    assert main(["zoo", "align", str(tmp_path / "z"), "-o", str(tmp_path / "b"), "--reference", "x"]) == 2
