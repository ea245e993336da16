"""DistributedDataParallel: ``torchrun --nproc_per_node=2 -m wsl train`` equals a single-process run.

Two CPU processes (gloo) each take half of every global batch; the loss is
scaled so that DDP's gradient average is the gradient of the global-batch
mean. With no dropout and no augmentation the final weights must match a
one-process run with the same global batch size to float tolerance.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_tasks import make_tiny_zoo

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.mark.parametrize("probes", [False, True], ids=["weights", "inverted_probes"])
def test_torchrun_two_processes_equal_single_process(tmp_path: Path, probes: bool) -> None:
    """Mixed-architecture graph batches; 36 training rows in global batches of 7, so the last batch
    has one row and rank 1 joins it with a zero-weight sample. With ``probes``: an NG-GNN fused with
    probe features on inverted probes, which rank 0 computes and broadcasts."""
    from wsl.cli import main
    from wsl.io import load_safetensors

    zoo = make_tiny_zoo(tmp_path / "zoo", n_models=30, mixed=True, seed=2,
                        dataset={"name": "synthetic", "input_shape": [1, 8, 8]})
    cfg = {"data": {"zoo": str(zoo)}, "model": {"name": f"{HERE / 'test_train.py'}:graph_moments"},
           "optim": {"name": "adamw", "lr": 0.01}, "schedule": {"warmup_epochs": 0.5},
           "train": {"epochs": 2, "batch_size": 7, "seed": 0, "progress": False, "threads": 1}}
    if probes:
        cfg.update(model={"name": "nggnn", "hidden": 8, "num_layers": 1, "head_hidden": 8},
                   probes={"num": 2, "invert": 4, "invert_steps": 3, "embed": 4, "hidden": 8})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ddp = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "wsl", "train", str(path),
           "--output", str(tmp_path / "ddp")]
    r = subprocess.run(ddp, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    threads = torch.get_num_threads()
    try:  # the single-process reference runs in this process (saves an interpreter start)
        assert main(["train", str(path), "--output", str(tmp_path / "one")]) == 0
    finally:
        torch.set_num_threads(threads)
    m_ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    m_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert m_ddp["world_size"] == 2 and m_one["world_size"] == 1
    a = load_safetensors(tmp_path / "ddp" / "checkpoints" / "last" / "model.safetensors")
    b = load_safetensors(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors")
    assert a.keys() == b.keys()
    atol = 1e-5 if probes else 1e-6  # NG-GNN's float32 sums over 2 ranks round a little differently
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=atol)
    if probes:  # the inverted probes rank 0 broadcast are the single-process ones, bit for bit
        assert torch.equal(a["probe_x"], b["probe_x"]) and a["probe_x"].shape == (6, 1, 8, 8)
    for split in ("val", "test"):
        assert m_ddp[split]["n"] == m_one[split]["n"]
        assert abs(m_ddp[split]["mae"] - m_one[split]["mae"]) < 1e-5
    assert [h["loss"] for h in m_ddp["history"]] == pytest.approx([h["loss"] for h in m_one["history"]], rel=1e-5)
    assert (tmp_path / "ddp" / "predictor" / "model.safetensors").is_file()
