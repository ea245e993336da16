"""Scale-out of the subspace analysis: two gloo processes give the one-process Gram matrices, spectra and directions.

The distributed test launches this very file under ``torch.distributed.run``
(two CPU processes): each rank computes, for every tensor of a small planted
zoo held three ways (in memory, as safetensors files, and its shuffled null),
the Gram matrices, the spectra (both routes of :func:`spectra`) and the top
principal directions with blocks of a few entries, so that every tensor is
split across both ranks; and, once :mod:`wsl.subspace.analyze` exists, the
whole report of a small zoo. Each rank saves what it got; the tests compare
both ranks with each other (bit for bit) and with a one-process run here.
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

HERE = Path(__file__).resolve().parent
N_MODELS, BLOCK, K = 30, 7, 3


def _stacks(ckpt_dir: Path) -> dict:
    from subspace_fixtures import planted_state_dicts

    from wsl.subspace.stacks import FileStack, ShuffledStack, TensorStack

    mem = TensorStack.from_state_dicts(planted_state_dicts(N_MODELS, seed=3))
    files = FileStack(sorted(ckpt_dir.glob("*.safetensors")))
    return {"mem": mem, "files": files, "shuffled": ShuffledStack(mem, seed=5)}


def _compute(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """Everything compared, flattened into one dict of tensors (the same calls on every rank)."""
    from wsl.subspace.spectrum import directions, grams, spectra, spectrum_from_values

    out: dict[str, torch.Tensor] = {}
    for label, stack in _stacks(ckpt_dir).items():
        models = list(range(1, N_MODELS, 2)) if label == "files" else None  # a subset on one of them
        n = len(stack) if models is None else len(models)
        g = grams(stack, block=BLOCK, models=models)
        sp = spectra(stack, block=BLOCK, models=models)
        for name in stack.names:
            out[f"{label}/{name}/gram"] = g[name]
            out[f"{label}/{name}/eig"] = spectrum_from_values(name, stack.shapes[name], n, g[name])[0].eigenvalues
            out[f"{label}/{name}/spectra"] = sp[name].eigenvalues
            _, mean, v = directions(stack, name, K, block=BLOCK, models=models, g=g[name])
            out[f"{label}/{name}/mean"], out[f"{label}/{name}/dirs"] = mean, v
    return out


def _report(zoo: Path) -> dict:
    """The whole analysis report of a zoo (no alignment, no timings), as JSON-ready numbers."""
    from wsl.subspace.analyze import analyze

    rep = analyze(zoo, aligned=False, block=BLOCK, progress=False)
    rep.pop("seconds", None)
    return json.loads(json.dumps(rep, default=str))


def _has_analyze() -> bool:
    import importlib.util

    return importlib.util.find_spec("wsl.subspace.analyze") is not None


def _worker(out_dir: str) -> None:
    from safetensors.torch import save_file

    from wsl.subspace.distributed import cleanup, init_from_env, is_main, rank_world

    torch.set_num_threads(1)
    rank, world = init_from_env()
    assert world == 2 and rank_world() == (rank, 2) and is_main() == (rank == 0)
    out = Path(out_dir)
    try:
        res = _compute(out / "ckpt")
        save_file({k: v.contiguous() for k, v in res.items()}, str(out / f"rank{rank}.safetensors"))
        if _has_analyze():
            (out / f"report{rank}.json").write_text(json.dumps(_report(out / "zoo")))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One two-process run for the tests below: checkpoints in ``ckpt/``, a zoo in ``zoo/``, results per rank."""
    from subspace_fixtures import write_checkpoints, write_zoo

    out = tmp_path_factory.mktemp("dist")
    write_checkpoints(out / "ckpt", n=N_MODELS, seed=4)
    write_zoo(out / "zoo", n=24, seed=6)
    _torchrun(out)
    return out


def _torchrun(out_dir: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(Path(__file__)), str(out_dir)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=out_dir)
    assert r.returncode == 0, r.stderr[-3000:]


def _one_process(fn, *args):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_spectra_routes_match_gram_eigendecomposition() -> None:
    """Narrow tensors (P < N) go through the P x P scatter, wide ones through G; both equal eigh of G."""
    from subspace_fixtures import planted_state_dicts

    from wsl.subspace.spectrum import grams, spectra, spectrum_from_values
    from wsl.subspace.stacks import TensorStack

    stack = TensorStack.from_state_dicts(planted_state_dicts(N_MODELS, seed=11))
    narrow = [nm for nm in stack.names if stack.numel(nm) < N_MODELS]
    assert narrow and len(narrow) < len(stack.names)  # both routes are exercised
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):  # float32: G's block products round
        g, sp = grams(stack, dtype=dtype), spectra(stack, dtype=dtype)
        for name in stack.names:
            ref = spectrum_from_values(name, stack.shapes[name], N_MODELS, g[name])[0]
            got = sp[name]
            assert got.eigenvalues.shape == ref.eigenvalues.shape == (min(N_MODELS - 1, stack.numel(name)),)
            torch.testing.assert_close(got.eigenvalues, ref.eigenvalues, rtol=0,
                                       atol=tol * float(ref.eigenvalues[0]))
            assert got.rank_for(0.9) == ref.rank_for(0.9) and got.shape == ref.shape


def test_init_from_env_alone_and_bad_world(monkeypatch: pytest.MonkeyPatch) -> None:
    from wsl.errors import WslError
    from wsl.subspace.distributed import assemble, init_from_env, is_main, owner

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env() == (0, 1) and is_main() and owner(5) == 0
    t = torch.arange(3.0)
    assert assemble(t) is t and torch.equal(t, torch.arange(3.0))  # identity in one process
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(WslError, match="WORLD_SIZE='two'"):
        init_from_env()


def test_two_gloo_processes_equal_one_process(launched: Path) -> None:
    from safetensors.torch import load_file

    ranks = [load_file(str(launched / f"rank{i}.safetensors")) for i in range(2)]
    one = _one_process(_compute, launched / "ckpt")
    assert set(ranks[0]) == set(ranks[1]) == set(one)
    for key, ref in one.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # every rank holds the same numbers
        got = ranks[0][key]
        scale = float(ref.abs().max()) if ref.numel() else 1.0
        if key.endswith("/dirs"):  # float32 directions: sign and rounding of the float32 blocks
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * max(scale, 1.0), msg=key)
        else:  # float64 sums in another order
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-10 * max(scale, 1e-30), msg=key)


def _numbers(x, path: str = ""):
    """``(path, value)`` of every leaf of a JSON report."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, x


@pytest.mark.skipif(not _has_analyze(), reason="wsl.subspace.analyze is not there yet")
def test_two_gloo_processes_same_report(launched: Path) -> None:
    """The whole report of ``wsl.subspace.analyze`` (spectra, nulls, split halves, modes) under two ranks."""
    ranks = [json.loads((launched / f"report{i}.json").read_text()) for i in range(2)]
    assert ranks[0] == ranks[1]
    got, want = dict(_numbers(ranks[0])), dict(_numbers(_one_process(_report, launched / "zoo")))
    assert got.keys() == want.keys() and len(got) > 100
    for key, ref in want.items():
        if isinstance(ref, float):
            assert got[key] == pytest.approx(ref, rel=1e-9, abs=1e-12), key
        else:
            assert got[key] == ref, key


if __name__ == "__main__":  # one rank of a distributed test
    _worker(sys.argv[1])
