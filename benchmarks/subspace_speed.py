"""Subspace-analysis speed: spectra of 2,000 small CNNs, and of 100 MiniLM-sized checkpoints read from files.

Issue 19's targets, on this 2-core machine with ONE thread (other jobs share it):

* ``cnn``: the spectra of every tensor of 2,000 small CNNs (the last
  checkpoints of the digits-cnn-gs zoo, or a synthetic stack of the same
  shapes when that zoo is missing -- the output says which), data only and
  data + shuffled + Marchenko-Pastur nulls, in under 10 s; beside a plain
  ``numpy.linalg.svd`` of each centred ``N x P`` stack (float64).
* ``minilm``: 100 checkpoints of MiniLM-L6's shapes (22.7M parameters each),
  random perturbations of one base with a few planted shared directions,
  written as safetensors into a temporary folder and analysed through
  :class:`wsl.subspace.stacks.FileStack` block by block, in under 5 minutes
  and 6 GB peak memory; the dense numpy baseline only for the tensors whose
  float64 stack fits in ``--dense-limit`` GB (never the word embeddings).

Peak memory is sampled from ``/proc/self/status`` every 2 ms during each
phase: ``anon`` (heap: what has to fit in RAM) and ``file`` (memory-mapped
checkpoint pages counted in RSS; the kernel drops them under pressure).

    python benchmarks/subspace_speed.py cnn
    python benchmarks/subspace_speed.py minilm --models 100 --keep   # --keep: leave the files in /tmp
    python benchmarks/subspace_speed.py minilm --reuse               # analyse them again, then delete them
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy/torch load their BLAS
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from wsl.subspace.nulls import mp_spectrum  # noqa: E402
from wsl.subspace.spectrum import spectra  # noqa: E402
from wsl.subspace.stacks import BLOCK, FileStack, ShuffledStack, Stack, TensorStack  # noqa: E402

ZOO = Path("/work/main/zoos-out/digits-cnn-gs")
CNN_SHAPES = {"0.weight": (16, 1, 3, 3), "0.bias": (16,), "3.weight": (16, 16, 3, 3), "3.bias": (16,),
              "6.weight": (16, 16, 3, 3), "6.bias": (16,), "10.weight": (10, 16), "10.bias": (10,)}


class Peak:
    """Wall and CPU time, and peak resident memory above the level at entry, sampled every 2 ms (MB).

    With one thread, CPU time is close to what the wall time would be on an
    idle machine; the wall time counts waiting for cores taken by other jobs.
    """

    def __enter__(self) -> "Peak":
        self.base = _rss()
        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self._sample()

    def _sample(self) -> None:
        a, f = _rss()
        self.anon, self.file = max(self.anon, a - self.base[0]), max(self.file, f - self.base[1])

    def __exit__(self, *exc: object) -> None:
        self.seconds, self.cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
        self._sample()
        self._stop.set()
        self._t.join()

    def __str__(self) -> str:
        return (f"{self.seconds:7.2f} s wall ({self.cpu:6.2f} s CPU), peak +{self.anon:6.0f} MB anon "
                f"+{self.file:6.0f} MB file-backed")


def _rss() -> tuple[float, float]:
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("RssAnon:", "RssFile:")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals.get("RssAnon", 0.0), vals.get("RssFile", 0.0)


def numpy_svd(stack: Stack, names: list[str], compute_uv: bool) -> dict[str, np.ndarray]:
    """The baseline: squared singular values of each whole centred stack by ``numpy.linalg.svd`` (float64)."""
    out = {}
    for name in names:
        x = stack.matrix(name).numpy().astype(np.float64)
        x -= x.mean(axis=0, keepdims=True)
        if compute_uv:
            s = np.linalg.svd(x, full_matrices=False)[1]
        else:
            s = np.linalg.svd(x, compute_uv=False)
        out[name] = s ** 2
    return out


def _agree(sp: dict, ref: dict[str, np.ndarray]) -> float:
    """Largest |eigenvalue difference| over all tensors, relative to each tensor's largest eigenvalue."""
    worst = 0.0
    for name, lam in ref.items():
        ours = sp[name].eigenvalues.numpy()
        r = min(len(ours), len(lam))
        worst = max(worst, float(np.abs(ours[:r] - lam[:r]).max() / max(lam[0], 1e-300)))
    return worst


def analyse(stack: Stack, nulls: bool, block: int) -> dict:
    """Data spectra of all tensors (and, with ``nulls``, the shuffled and Marchenko-Pastur nulls)."""
    sp = spectra(stack, block=block)
    if nulls:
        shuffled = spectra(ShuffledStack(stack, seed=0), block=block)
        mp = {k: mp_spectrum(v) for k, v in sp.items()}
        return {"data": sp, "shuffled": shuffled, "mp": mp}
    return {"data": sp}


def cnn(args: argparse.Namespace) -> None:
    with Peak() as load:
        if (ZOO / "zoo.json").is_file() and not args.synthetic:
            import wsl

            zoo = wsl.load_zoo(ZOO).latest()
            stack = TensorStack(zoo.stacked(), ids=[str(i) for i in range(len(zoo))])
            what = f"the digits-cnn-gs zoo's last checkpoints ({ZOO})"
        else:
            gen = torch.Generator().manual_seed(0)
            stack = TensorStack({k: torch.randn(args.models, *s, generator=gen) for k, s in CNN_SHAPES.items()})
            what = "a SYNTHETIC stack of digits-cnn-gs shapes (iid normal; the zoo was not there)"
    n, p = len(stack), sum(stack.numel(k) for k in stack.names)
    print(f"[cnn] {n} models x {p:,} parameters in {len(stack.names)} tensors: {what}; loaded in {load}")
    print("[cnn] tensors: " + ", ".join(f"{k} {stack.numel(k)}" for k in stack.names))
    for nulls in (False, True):
        with Peak() as ours:
            res = analyse(stack, nulls, args.block)
        label = "data + shuffled + MP nulls" if nulls else "data only"
        print(f"[cnn] wsl spectra, {label:26s}: {ours}   target 10 s: ratio {ours.seconds / 10:.2f} wall, "
              f"{ours.cpu / 10:.2f} CPU")
        for uv in (True, False):
            with Peak() as base:
                ref = numpy_svd(stack, stack.names, uv)
                if nulls:
                    numpy_svd(ShuffledStack(stack, seed=0), stack.names, uv)
            call = "svd(full_matrices=False)" if uv else "svd(compute_uv=False)"
            print(f"[cnn] numpy {call:25s} {label:21s}: {base}   numpy / wsl {base.seconds / ours.seconds:.1f}x wall, "
                  f"{base.cpu / ours.cpu:.1f}x CPU   max |d eig| / eig_max {_agree(res['data'], ref):.1e}")
    routes(stack)
    top = sorted(res["data"].items(), key=lambda kv: -kv[1].n_params)[0][1]
    print(f"[cnn] e.g. {top.name}: effective rank {top.effective_rank:.1f} (shuffled "
          f"{res['shuffled'][top.name].effective_rank:.1f}, MP {res['mp'][top.name].effective_rank:.1f}), "
          f"rank for 90% {top.rank_for(0.9)}")


def routes(stack: Stack) -> None:
    """What :func:`spectra` saves: the Gram route for every tensor, with ``eigvalsh`` or with ``eigh``."""
    from wsl.subspace.spectrum import grams, spectrum_from_values

    def vals() -> None:
        for v in grams(stack).values():
            torch.linalg.eigvalsh((v + v.T) / 2)

    def vecs() -> None:
        for k, v in grams(stack).items():
            spectrum_from_values(k, stack.shapes[k], len(stack), v)

    with Peak() as a:
        spectra(stack)
    with Peak() as b:
        vals()
    with Peak() as c:
        vecs()
    narrow = sum(stack.numel(k) < len(stack) for k in stack.names)
    print(f"[cnn] data spectra, CPU s: spectra() {a.cpu:.2f} (P x P scatter for the {narrow} tensors with P < N, "
          f"eigenvalues only); N x N Gram + eigvalsh for every tensor {b.cpu:.2f}; "
          f"N x N Gram + eigh (spectrum_from_values) {c.cpu:.2f}")


def minilm_shapes(layers: int = 6, d: int = 384, ff: int = 1536, vocab: int = 30522) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of MiniLM-L6-H384 (BERT layout, with pooler): 22,713,216 parameters."""
    s: dict[str, tuple[int, ...]] = {"embeddings.word_embeddings.weight": (vocab, d),
                                     "embeddings.position_embeddings.weight": (512, d),
                                     "embeddings.token_type_embeddings.weight": (2, d),
                                     "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,)}
    for i in range(layers):
        a = f"encoder.layer.{i}."
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            s[a + m + ".weight"], s[a + m + ".bias"] = (d, d), (d,)
        s[a + "attention.output.LayerNorm.weight"], s[a + "attention.output.LayerNorm.bias"] = (d,), (d,)
        s[a + "intermediate.dense.weight"], s[a + "intermediate.dense.bias"] = (ff, d), (ff,)
        s[a + "output.dense.weight"], s[a + "output.dense.bias"] = (d, ff), (d,)
        s[a + "output.LayerNorm.weight"], s[a + "output.LayerNorm.bias"] = (d,), (d,)
    s["pooler.dense.weight"], s["pooler.dense.bias"] = (d, d), (d,)
    return s


def write_minilms(folder: Path, n: int, dtype: torch.dtype, rank: int = 4) -> list[Path]:
    """``n`` checkpoints ``base + sum_j c_ij d_j + noise`` (4 planted shared directions), one at a time."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    shapes = minilm_shapes()
    gen = torch.Generator().manual_seed(0)
    base = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    dirs = {k: 0.01 * torch.randn(rank, *s, generator=gen) for k, s in shapes.items()}
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in tqdm(range(n), desc="write checkpoints", unit="model"):
        c = torch.randn(rank, generator=gen) * torch.tensor([2.0 ** -j for j in range(rank)])
        sd = {k: (base[k] + torch.tensordot(c, dirs[k], 1) + 0.002 * torch.randn(s, generator=gen)).to(dtype)
              for k, s in shapes.items()}
        p = folder / f"model_{i:03d}.safetensors"
        save_file(sd, str(p))
        paths.append(p)
    return paths


def minilm(args: argparse.Namespace) -> None:
    shapes = minilm_shapes()
    per_model = sum(math.prod(s) for s in shapes.values())
    folder = Path(args.dir)
    free = shutil.disk_usage(folder.parent if not folder.exists() else folder).free
    n, dtype = args.models, torch.float32
    if n * per_model * 4 * 1.05 > free:
        dtype = torch.float16
        if n * per_model * 2 * 1.05 > free:
            n = int(free / (per_model * 2 * 1.05))
        print(f"[minilm] only {free / 2**30:.1f} GiB free: float16 files, {n} models")
    print(f"[minilm] {n} checkpoints x {per_model:,} parameters ({len(shapes)} tensors), {str(dtype)[6:]} files "
          f"in {folder} ({n * per_model * (4 if dtype == torch.float32 else 2) / 2**30:.1f} GiB); "
          f"{free / 2**30:.0f} GiB free before")
    try:
        paths = [folder / f"model_{i:03d}.safetensors" for i in range(n)]
        if args.reuse and all(p.is_file() for p in paths):
            print(f"[minilm] reusing the {n} files already in {folder} (--reuse)")
        else:
            with Peak() as w:
                paths = write_minilms(folder, n, dtype)
            print(f"[minilm] written in {w}")
        stack = FileStack(paths)
        for nulls in (False, True) if args.nulls else (False,):
            with Peak() as ours:
                res = analyse(stack, nulls, args.block)
            mp = {k: mp_spectrum(v) for k, v in res["data"].items()}
            label = "data + shuffled + MP" if nulls else "data + MP"
            print(f"[minilm] wsl spectra through FileStack ({label}, block {args.block:,}): {ours}   "
                  f"targets 300 s / 6144 MB: ratios {ours.seconds / 300:.2f} wall, {ours.cpu / 300:.2f} CPU / "
                  f"{(ours.anon + ours.file) / 6144:.2f} (anon + file)")
        fits = [k for k in stack.names if n * stack.numel(k) * 8 <= args.dense_limit * 2**30]
        left = [k for k in stack.names if k not in fits]
        if fits:
            with Peak() as base:
                ref = numpy_svd(stack, fits, compute_uv=True)
            fit_p = sum(stack.numel(k) for k in fits)
            print(f"[minilm] numpy svd(full_matrices=False) on the {len(fits)} tensors whose float64 stack fits in "
                  f"{args.dense_limit} GB ({fit_p:,} of {per_model:,} parameters): {base}; "
                  f"max |d eig| / eig_max {_agree(res['data'], ref):.1e}")
            with Peak() as part:
                spectra(stack, fits, block=args.block)
            print(f"[minilm] wsl spectra of the same {len(fits)} tensors: {part}   numpy / wsl "
                  f"{base.seconds / part.seconds:.1f}x wall, {base.cpu / part.cpu:.1f}x CPU")
        if not fits:
            print(f"[minilm] dense baseline skipped (--dense-limit {args.dense_limit})")
        else:
            for k in left:
                print(f"[minilm] no dense baseline for {k}: its float64 stack alone is "
                      f"{n * stack.numel(k) * 8 / 2**30:.1f} GB")
        emb = "embeddings.word_embeddings.weight"
        print(f"[minilm] {emb}: rank for 90% {res['data'][emb].rank_for(0.9)}, effective rank "
              f"{res['data'][emb].effective_rank:.1f} (MP {mp[emb].effective_rank:.1f}; 4 planted directions + noise)")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            print(f"[minilm] removed {folder}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", choices=("cnn", "minilm"))
    ap.add_argument("--models", type=int, default=None, help="number of models (default 2000 / 100)")
    ap.add_argument("--block", type=int, default=BLOCK, help=f"entries per block (default {BLOCK:,})")
    ap.add_argument("--synthetic", action="store_true", help="cnn: a synthetic stack even if the zoo exists")
    ap.add_argument("--nulls", action="store_true", help="minilm: then data + shuffled + MP (permutes 2.3G entries)")
    ap.add_argument("--dir", default="/tmp/wsl-subspace-bench", help="minilm: where the checkpoints go")
    ap.add_argument("--dense-limit", type=float, default=2.0, help="minilm: GB for one float64 dense stack")
    ap.add_argument("--keep", action="store_true", help="minilm: keep the checkpoint files")
    ap.add_argument("--reuse", action="store_true", help="minilm: use the files of an earlier --keep run")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = ap.parse_args()
    args.models = args.models or (2000 if args.case == "cnn" else 100)
    torch.set_num_threads(args.threads)  # entry point
    print(f"$ {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} torch thread(s), "
          f"OMP/OPENBLAS threads {os.environ['OMP_NUM_THREADS']}/{os.environ['OPENBLAS_NUM_THREADS']}, "
          f"{os.cpu_count()} cores (shared with other jobs)")
    cnn(args) if args.case == "cnn" else minilm(args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"process peak RSS over the whole run (ru_maxrss, incl. writing files and the dense baseline): {peak:.0f} MB")


if __name__ == "__main__":
    main()
