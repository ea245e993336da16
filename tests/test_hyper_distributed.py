"""``torchrun --nproc_per_node=2 -m wsl hyper train``: two gloo processes give the one-process fit.

Each step draws ``widths_per_step = 2`` widths from generators seeded by
``(seed, step, width index)``; rank q computes width q and the gradients are
summed over ranks, which is exactly the gradient of the one-process step
(reconstruction once, mean of the two width terms). Only rank 0 writes the run
directory. Float sums in another order allow a tolerance of 1e-5.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent

CONFIG = {"dataset": "digits", "seed": 0,
          "base": {"arch": {"name": "small_cnn", "kwargs": {"channels": [4, 4, 4]}}, "steps": 30},
          "model": {"hidden": 16, "blocks": 1, "width_frequencies": 1},
          "train": {"steps": 5, "batch": 16, "widths_per_step": 2, "kd_weight": 0.5, "coord_noise": 1.0,
                    "rec_rows": 100},
          "eval_ratios": [0.5, 1.0], "checkpoint_every": 0, "solver": "two_opt"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_equal_one(tmp_path: Path, capsys) -> None:
    from safetensors.torch import load_file

    from wsl.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "wsl", "hyper", "train", str(cfg),
           "-o", str(tmp_path / "ddp"), "--json"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count('"run"') == 1  # only rank 0 reports
    assert main(["hyper", "train", str(cfg), "-o", str(tmp_path / "one"), "--json"]) == 0
    capsys.readouterr()
    ddp, one = load_file(str(tmp_path / "ddp" / "hyper.safetensors")), load_file(str(tmp_path / "one" / "hyper.safetensors"))
    assert set(ddp) == set(one)
    init = None
    for k in one:
        torch.testing.assert_close(ddp[k], one[k], rtol=1e-5, atol=1e-5)
    # the fit moved the weights (the comparison is not between two untouched initialisations)
    from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
    from wsl.io import load_model

    base, _ = load_model(tmp_path / "one" / "base.safetensors")
    torch.manual_seed(0)
    init = NeuMeta(NeuMetaConfig(arch=dict(base.wsl_arch), hidden=16, blocks=1, width_frequencies=1)).state_dict()
    assert max(float((one[k] - init[k]).abs().max()) for k in ("inp.weight", "embedding.weight")) > 1e-4
