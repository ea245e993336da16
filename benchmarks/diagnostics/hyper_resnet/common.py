"""Throw-away diagnostics of issue 20's ResNet failure (README §8), kept so that its numbers can be rerun.

Run from the repository root, one thread:  PYTHONPATH=. python benchmarks/diagnostics/hyper_resnet/fit.py
--steps 800 --train '{"interp_weight": 100}' --tag i100  (also grad.py, probe.py, look.py). Bases, smoothed
states and fitted hypernetworks are cached in $WSL_DIAG_DIR (default runs/diag_hyper_resnet). Not a test,
not a benchmark: scripts as they were run, lightly cleaned.
"""
import os
import sys, time, json, math
import torch, torch.nn.functional as F
from pathlib import Path
from torch.func import functional_call
torch.set_num_threads(1)
from wsl.hyper.run import resolve_config, make_base
from wsl.io.yaml_file import read_yaml_mapping
from wsl.io import load_model, save_module
from wsl.zoo.data import load_dataset
from wsl.space import WeightSpace
from wsl.hyper.smooth import smooth
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig, recalibrate_batchnorm
from wsl.hyper.train import accuracy, HyperTrainConfig, train_neumeta

DIAG = os.environ.get("WSL_DIAG_DIR", "runs/diag_hyper_resnet")
Path(DIAG).mkdir(parents=True, exist_ok=True)

def setup(arch="digits_resnet", model_over=None):
    raw = read_yaml_mapping(Path("configs/hyper")/f"{arch}.yaml", what="x")
    cfg = resolve_config(raw)
    data = load_dataset(cfg["dataset"])
    p = Path(f"{DIAG}/base_{arch}.safetensors")
    if p.exists():
        base, _ = load_model(p)
    else:
        base = make_base(cfg, data); save_module(base, p)
    base.eval()
    state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    sp = Path(f"{DIAG}/smooth_{arch}.pt")
    if sp.exists():
        state = torch.load(sp)
    else:
        space = WeightSpace.from_module(base)
        state, _ = smooth(space, state, cfg["solver"]); torch.save(state, sp)
    mcfg = dict(cfg["model"]); mcfg.update(model_over or {})
    torch.manual_seed(cfg["seed"])
    hyper = NeuMeta(NeuMetaConfig(arch=dict(base.wsl_arch), **mcfg), state)
    return cfg, data, base, state, hyper
