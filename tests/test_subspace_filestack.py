"""FileStack's direct reads: the bytes of a block's rows, straight from each file, equal the loaded tensors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from subspace_fixtures import planted_state_dicts
from wsl.errors import CheckpointError
from wsl.subspace import stacks
from wsl.subspace.stacks import FileStack, TensorStack


def _write(root: Path) -> tuple[list[Path], TensorStack]:
    """Checkpoints in float32, float16, bfloat16 and float64, with metadata; and the same models in memory."""
    sds = planted_state_dicts(6, seed=7)
    kinds = [torch.float32, torch.float16, torch.float32, torch.bfloat16, torch.float64, torch.float32]
    paths, ref = [], []
    for i, (sd, kind) in enumerate(zip(sds, kinds)):
        sd = {k: v.to(kind) for k, v in sd.items()}
        sd["step"] = torch.tensor(3.0)  # a scalar tensor too
        p = root / f"m{i}.safetensors"
        save_file(sd, str(p), metadata={"note": "x" * (i * 13)})  # headers of several lengths
        paths.append(p)
        ref.append({k: v.to(torch.float64) for k, v in sd.items()})
    return paths, TensorStack.from_state_dicts(ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_equal_loaded_tensors(tmp_path: Path, dtype: torch.dtype) -> None:
    paths, ref = _write(tmp_path)
    fs = FileStack(paths)
    assert sorted(fs.names) == sorted(ref.names) and fs.shapes == ref.shapes
    for name in fs.names:
        for block in (1, 7, 10_000):
            for models in (None, [5, 0, 3, 3]):
                got = list(fs.blocks(name, block, models, dtype))
                want = list(ref.blocks(name, block, models, dtype))
                assert [lo for lo, _ in got] == [lo for lo, _ in want]
                for (_, a), (_, b) in zip(got, want):
                    assert a.dtype == dtype and torch.equal(a, b), (name, block, models)


@pytest.mark.skipif(not stacks._DIRECT, reason="direct reads need preadv on a little-endian host")
def test_file_cut_after_opening_raises(tmp_path: Path) -> None:
    paths, _ = _write(tmp_path)
    fs = FileStack(paths)
    fs.matrix(fs.names[0], models=[2])  # header read while the file was whole
    os.truncate(paths[2], paths[2].stat().st_size // 2)
    with pytest.raises(CheckpointError, match=r"m2\.safetensors: file ends inside"):
        for name in fs.names:
            if fs.shapes[name]:  # (scalars go through the memory map, which a cut file would crash)
                fs.matrix(name)
