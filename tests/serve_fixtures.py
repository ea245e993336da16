"""Shared fixtures of the prediction-service tests: a tiny shipped predictor, example checkpoints, servers.

:func:`serve_env` (session scope; import it into a test module) writes once
per session a synthetic zoo of 40 small CNNs (random weights, a learnable
synthetic accuracy), trains a tiny NG-GNN predictor on it for two epochs,
ships it like ``models/digits-cnn-gs`` (calibration, family, shipped name)
into a models directory, and adds ``examples/`` with ``examples.json`` like
the bundled ones. :func:`running_server` starts ``wsl serve`` as a real
subprocess on a free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "train", "train", "val", "test")
PREDICTOR = "tiny-serve"


@dataclass(frozen=True)
class ServeEnv:
    """Paths of the session's tiny predictor world."""

    zoo: Path
    models: Path  #: a WSL_MODELS_DIR: the shipped predictor + examples/
    predictor: Path
    examples: Path
    example_files: tuple[Path, ...]  #: .safetensors with wsl_arch metadata
    example_pt: Path  #: a torch.save zip of the first example (needs arch=)
    arch_json: str  #: the examples' architecture description


def make_zoo(root: Path, n: int = 20, seed: int = 0) -> Path:
    """Two small-CNN architectures (relu, tanh), ``n`` random models each, accuracy a function of weight scale."""
    from wsl.archs import small_cnn
    from wsl.zoo import ZooWriter

    g = torch.Generator().manual_seed(seed)
    with ZooWriter(root, name=PREDICTOR, dataset={"name": "synthetic"}, recipe={"kind": "random"}) as w:
        for a, act in enumerate(("relu", "tanh")):
            module = small_cnn(channels=(4, 4), activation=act)
            aid = w.add_architecture(module)
            ref = module.state_dict()
            stacked: dict[str, list[torch.Tensor]] = {k: [] for k in ref}
            rows = []
            for i in range(n):
                s = math.exp(float(torch.rand((), generator=g)) * 2.5 - 2.0)
                for k, t in ref.items():
                    stacked[k].append(torch.randn(t.shape, generator=g) * s)
                acc = min(max(0.15 + 0.8 / (1 + math.exp(-3 * (math.log(s) + 0.8))), 0.0), 1.0)
                rows.append({"model_id": f"{act}-m{i}", "epoch": 1, "seed": i, "split": SPLITS[i % 5],
                             "hparams": {"init_std": s}, "train_accuracy": acc, "test_accuracy": acc,
                             "train_loss": 1 - acc, "test_loss": 1 - acc})
            w.append(aid, {k: torch.stack(v) for k, v in stacked.items()}, rows)
    return root


def build_serve_env(root: Path) -> ServeEnv:
    """Zoo, trained + shipped predictor and example checkpoints under ``root`` (about 10 s on 2 cores)."""
    import wsl
    from wsl.io import save_state_dict
    from wsl.predict.ship import main as ship
    from wsl.train.config import load_config
    from wsl.train.loop import train

    zoo = make_zoo(root / "zoo")
    cfg = load_config(raw={"data": {"zoo": str(zoo)},
                           "model": {"name": "nggnn", "hidden": 8, "num_layers": 1, "head_hidden": 8},
                           "optim": {"name": "adamw", "lr": 1e-2},
                           "train": {"epochs": 2, "batch_size": 8, "seed": 0, "progress": False, "device": "cpu"}})
    train(cfg, root / "run")
    models = root / "models"
    predictor = models / PREDICTOR
    with contextlib.redirect_stdout(open(os.devnull, "w")):
        ship([str(root / "run" / "predictor"), "--zoo", str(zoo), "--name", PREDICTOR, "--priority", "0",
              "-o", str(predictor)])
    z = wsl.load_zoo(zoo)
    test = z.latest().split("test")
    examples = models / "examples"
    examples.mkdir(parents=True)
    entries, files = [], []
    desc = ""
    for i in range(3):
        m = test[i]
        row = m.metadata
        desc = json.dumps(z.architectures[row["arch"]]["arch"])
        name = f"{PREDICTOR}-{row['model_id']}.safetensors"
        save_state_dict(m.state_dict(), examples / name, metadata={"wsl_arch": desc})
        files.append(examples / name)
        entries.append({"file": name, "zoo": PREDICTOR, "model_id": row["model_id"],
                        "test_accuracy": row["test_accuracy"], "num_parameters": m.space.num_parameters})
    (examples / "examples.json").write_text(json.dumps({"examples": entries}), encoding="utf-8")
    pt = root / "example.pt"
    torch.save(test[0].state_dict(), pt)
    first_desc = json.dumps(z.architectures[test[0].metadata["arch"]]["arch"])
    return ServeEnv(zoo, models, predictor, examples, tuple(files), pt, first_desc or desc)


_ENV: dict[str, ServeEnv] = {}


@pytest.fixture(scope="session")
def serve_env(tmp_path_factory: pytest.TempPathFactory) -> ServeEnv:
    """The session's tiny predictor world (built once even if several modules import this fixture)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _ENV:
        _ENV[key] = build_serve_env(tmp_path_factory.mktemp("serve"))
    return _ENV[key]


# --------------------------------------------------------------------------------------- test handlers
def slow_handler(state: Any, job: dict[str, Any]) -> dict[str, Any]:
    """A worker handler for limit tests, keyed on the upload's file name: ``sleep-S.*`` sleeps S seconds,
    ``spin.*`` burns CPU, ``alloc.*`` allocates 8 GB, ``crash.*`` kills the worker; then the real job."""
    from wsl.serve.validate import handle_job

    name = str(job.get("filename", ""))
    if name.startswith("sleep-"):
        time.sleep(float(name[len("sleep-"):].rsplit(".", 1)[0]))
    elif name.startswith("spin."):
        x = 0
        while True:  # ended by RLIMIT_CPU (SIGXCPU) or the wall-clock limit
            x += 1
    elif name.startswith("alloc."):
        blob = bytearray(8 * 1024 ** 3)  # far beyond the worker's address-space budget
        return {"ok": True, "prediction": {"len": len(blob)}}
    elif name.startswith("crash."):
        os._exit(1)
    return handle_job(state, job)


# ----------------------------------------------------------------------------------- real servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def running_server(env: ServeEnv, *args: str, timeout: float = 120.0) -> Iterator[Server]:
    """``wsl serve`` in a subprocess (models from ``env``); yields its URL and pid, stops it afterwards."""
    port = free_port()
    cmd = [sys.executable, "-m", "wsl", "serve", "--port", str(port), "--log-level", "warning", *args]
    environ = {**os.environ, "WSL_MODELS_DIR": str(env.models), "HF_HUB_OFFLINE": "1"}
    log = tempfile.TemporaryFile("w+")  # not a pipe: a chatty server must never block on a full pipe
    proc = subprocess.Popen(cmd, env=environ, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"wsl serve exited with {proc.returncode}: {log.read()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if json.loads(r.read())["workers"] >= 1:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"wsl serve did not come up within {timeout:.0f} s")
            time.sleep(0.2)
        yield Server(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
