"""Checks on uploaded checkpoints, and the prediction job the service's workers run.

Before a worker sees an upload, :func:`prevalidate` (in the server process)
checks what can be checked cheaply and without trusting the file:

* empty files; an unknown format (415);
* ``.safetensors``: the 8-byte header length against a small cap (a gigantic
  header is refused before it is read), then the whole header with
  :func:`wsl.io.read_safetensors_header` (JSON, dtypes, shapes, offsets that
  must tile the data buffer exactly: a header that lies is refused);
* torch ``.pt``/``.bin`` zips: every member must be *stored* (``torch.save``
  never compresses, so a deflated member can only be a decompression bomb),
  the central directory and local headers must agree, sizes must fit the file,
  and a ``data.pkl`` must be present. Legacy (pre-zip) pickles pass on to the
  worker, whose ``torch.load(weights_only=True)`` refuses anything but tensors.

In the worker, :func:`handle_job` builds the architecture on the ``meta``
device first (:func:`arch_precheck`: names and shapes against the
safetensors header, or the parameter count against the upload size) so a
mismatching or huge architecture costs no memory, then runs exactly the
pipeline of :func:`wsl.predict.predict` (so the CLI and the service give the
same numbers) and turns every failure into ``{"status", "code", "message"}``.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import resource
import signal
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from wsl.errors import ArchitectureError, CheckpointError, WslError
from wsl.serve import ServeError, classify

log = logging.getLogger("wsl.serve")

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_HEADER_BYTES = 8 * 1024 * 1024
MAX_ZIP_MEMBERS = 65536


# ------------------------------------------------------------------------------------ pre-validation
def sniff(path: Path) -> str | None:
    """``"safetensors"``, ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save) or None."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    return None


def prevalidate(path: Path, filename: str, *, max_header_bytes: int = MAX_HEADER_BYTES) -> str:
    """Cheap structural checks of an upload; returns its format or raises :class:`ServeError`."""
    size = path.stat().st_size
    if size == 0:
        raise ServeError(422, "empty_file", f"{filename}: the file is empty")
    suffix = Path(filename).suffix.lower()
    kind = sniff(path)
    if suffix == ".safetensors" or (suffix not in SUFFIXES and kind == "safetensors"):
        _check_safetensors(path, filename, size, max_header_bytes, kind)
        return "safetensors"
    if suffix in SUFFIXES:
        if kind == "zip":
            check_zip(path, filename, size)
            return "zip"
        if kind == "pickle":
            return "pickle"
        raise ServeError(422, "invalid_checkpoint", f"{filename}: not a torch.save file (neither a zip archive "
                         "nor a pickle)")
    if kind in ("zip", "pickle"):
        if kind == "zip":
            check_zip(path, filename, size)
        return kind
    raise ServeError(415, "unsupported_media_type", f"{filename}: unsupported file type; upload .safetensors, or "
                     ".pt/.pth/.bin/.ckpt written by torch.save")


def _check_safetensors(path: Path, filename: str, size: int, max_header_bytes: int, kind: str | None) -> None:
    from wsl.io import read_safetensors_header

    if size < 8:
        raise ServeError(422, "invalid_safetensors", f"{filename}: {size} bytes is too short for a safetensors file")
    if kind != "safetensors":  # no '{' after the length: never report random bytes as a header length
        raise ServeError(422, "not_safetensors", f"{filename}: not a safetensors file; " + (
            "it is a torch.save checkpoint: name it .pt" if kind else "upload a file written by safetensors"))
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
    if n > max_header_bytes:
        raise ServeError(422, "header_too_large", f"{filename}: the safetensors header claims {n:,} bytes; at "
                         f"most {max_header_bytes:,} are accepted")
    try:
        header = read_safetensors_header(path, max_header_bytes)
    except CheckpointError as exc:
        raise ServeError(422, "invalid_safetensors", scrub(str(exc), {str(path): filename})) from None
    meta = header.metadata.get("wsl_arch")
    if meta is not None and not meta.lstrip().startswith("{"):
        raise ServeError(422, "invalid_architecture", f"{filename}: __metadata__['wsl_arch'] must be a JSON "
                         "architecture description")


def check_zip(path: Path, filename: str, size: int) -> None:
    """Refuse zips torch.save would not write: compressed/encrypted members, lying sizes, no data.pkl."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except Exception as exc:  # zipfile raises many types on garbage
        raise ServeError(422, "invalid_checkpoint", f"{filename}: broken zip archive ({type(exc).__name__}: "
                         f"{str(exc)[:200]})") from None
    if len(infos) > MAX_ZIP_MEMBERS:
        raise ServeError(422, "invalid_checkpoint", f"{filename}: {len(infos):,} zip members (at most "
                         f"{MAX_ZIP_MEMBERS:,})")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ServeError(422, "compressed_archive", f"{filename}: zip member {info.filename!r} is compressed "
                             f"({info.file_size:,} bytes unpacked from {info.compress_size:,}); torch.save writes "
                             "stored members only, so compressed ones are refused (decompression bomb guard)")
        if info.flag_bits & 0x1 or info.file_size != info.compress_size:
            raise ServeError(422, "invalid_checkpoint", f"{filename}: zip member {info.filename!r} is encrypted or "
                             "its sizes disagree")
        total += info.file_size
    if total > size:
        raise ServeError(422, "invalid_checkpoint", f"{filename}: zip members claim {total:,} bytes in a "
                         f"{size:,}-byte file")
    with open(path, "rb") as fh:
        for info in infos:
            local = b""
            if 0 <= info.header_offset <= size - 30:
                fh.seek(info.header_offset)
                local = fh.read(30)
            if len(local) < 30 or local[:4] != b"PK\x03\x04" or int.from_bytes(local[8:10], "little") != 0:
                raise ServeError(422, "compressed_archive", f"{filename}: zip member {info.filename!r}: the local "
                                 "header is missing or says the member is compressed")
    if not any(i.filename == "data.pkl" or i.filename.endswith("/data.pkl") for i in infos):
        raise ServeError(422, "invalid_checkpoint", f"{filename}: a zip without data.pkl is not a torch.save file")


def scrub(message: str, replace: dict[str, str]) -> str:
    """``message`` with server paths (temp files, caches) replaced by what the client sent."""
    for old, new in sorted(replace.items(), key=lambda kv: -len(kv[0])):
        if old:
            message = message.replace(old, new)
    return message


# ---------------------------------------------------------------------------------- worker: process
class CpuLimitExceeded(BaseException):
    """Raised inside a worker by SIGXCPU (BaseException: library ``except Exception`` must not eat it)."""


def _load(ref: str) -> Callable[..., Any]:
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)  # type: ignore[no-any-return]


def _vm_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _on_xcpu(signum: int, frame: Any) -> None:
    raise CpuLimitExceeded()


def worker_entry() -> None:
    """Entry point of a worker process (``python -c``): the inherited socket's fd is ``argv[1]``."""
    import sys
    from multiprocessing.connection import Connection

    conn = Connection(int(sys.argv[1]))
    try:
        cfg = conn.recv()
    except (EOFError, OSError):
        return
    sys.path[:] = cfg["sys_path"]
    _worker_main(conn, cfg["init"], cfg["init_args"], cfg["handler"], cfg["cpu_s"], cfg["memory_mb"])


def _worker_main(conn: Any, init: str, init_args: tuple[Any, ...], handler: str, cpu_s: float,
                 memory_mb: int) -> None:
    """Body of one worker process: init, cap memory, then answer jobs until the pipe closes."""
    try:
        state = _load(init)(*init_args)
        run = _load(handler)
        if memory_mb > 0:  # the budget is on top of what the runtime and predictors already map
            cap = _vm_bytes() + memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
        signal.signal(signal.SIGXCPU, _on_xcpu)
        conn.send(("ready", os.getpid()))
    except BaseException as exc:  # report and exit: the parent refuses to start
        conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        ru = resource.getrusage(resource.RUSAGE_SELF)
        retire = False
        try:
            if cpu_s > 0:
                soft = int(math.ceil(ru.ru_utime + ru.ru_stime + cpu_s))
                resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard),
                                                         hard))
            msg: tuple[str, Any] = ("ok", run(state, job))
        except CpuLimitExceeded:
            msg, retire = ("cpu_limit", None), True
        except MemoryError:
            msg = ("memory_limit", None)
        except BaseException as exc:  # a bug in the handler: report it, keep serving
            msg = ("error", f"{type(exc).__name__}: {exc}")
        finally:
            if cpu_s > 0:
                resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        try:
            conn.send(msg)
        except (OSError, ValueError):
            return
        if retire:  # interrupted at an arbitrary point: do not trust this process again
            return


# ------------------------------------------------------------------------------------ worker: state
@dataclass
class WorkerState:
    """What a worker holds: the predictor directories by name (tried in this order)."""

    predictors: dict[str, str] = field(default_factory=dict)
    max_bytes: int = 200 * 1024 * 1024


def init_worker(predictors: list[tuple[str, str]], max_bytes: int) -> WorkerState:
    """Load the predictors once per worker process, then warm up the lazy imports."""
    import torch

    from wsl.predict import get_predictor

    torch.set_num_threads(1)  # the worker process's entry: the same bits as `wsl predict`
    state = WorkerState(dict(predictors), max_bytes)
    for _, directory in predictors:
        p = get_predictor(directory)
        try:  # one dummy forward pass so the first real request does not pay for imports
            space = p.space
            if space is None:
                from wsl.archs import mlp
                from wsl.space import WeightSpace

                space = WeightSpace.from_module(mlp([4, 4, 2]))
            p.predict(space, {k: torch.zeros((1, *t.shape)) for k, t in space.tensors.items()})
        except Exception as exc:  # warm-up only
            log.debug("warm-up of %s failed: %s", directory, exc)
    return state


def _meta_module(desc: Any) -> Any:
    import torch

    from wsl.io import resolve_arch

    try:
        with torch.device("meta"):
            return resolve_arch(desc, allow_code=False)
    except ArchitectureError as exc:
        cause = exc.__cause__
        if cause is None or isinstance(cause, (WslError, TypeError, ValueError, KeyError)):
            raise  # the description itself is wrong: same error as on a real device
        return None  # the architecture cannot be built on 'meta'; the real load will tell
    except WslError:
        raise
    except Exception:
        return None


def arch_precheck(path: Path, kind: str, arch: str | None, where: str) -> None:
    """Compare the architecture (built on 'meta', no memory) with the upload before loading anything."""
    from wsl.io import check_state_dict, read_safetensors_header

    header = read_safetensors_header(path, MAX_HEADER_BYTES) if kind == "safetensors" else None
    desc: str | None = arch
    if desc is None and header is not None:
        desc = header.metadata.get("wsl_arch")
    if desc is None:
        return
    module = _meta_module(desc)
    if module is None:
        return
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    hf = isinstance(getattr(module, "base_model_prefix", None), str)
    if header is not None and not hf:
        got = {k: v[1] for k, v in header.tensors.items()}
        if got and all(k.startswith("module.") for k in got):  # the loader strips a DDP prefix too
            got = {k[len("module."):]: v for k, v in got.items()}
        check_state_dict(expected, got, where=where)
        return
    numel = sum(math.prod(s) for s in expected.values())
    size = path.stat().st_size
    if numel > size:
        raise ServeError(422, "state_dict_mismatch", f"{where}: the architecture has {numel:,} parameter values "
                         f"but the upload is only {size:,} bytes, so it cannot hold them")


# -------------------------------------------------------------------------------------- worker: job
def _resolve_hub(uri: str, state: WorkerState) -> tuple[Path, str]:
    from wsl.hub import resolve

    path = Path(resolve(uri, repo_type="model"))
    files = [path] if path.is_file() else [f for f in path.iterdir() if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    if total > state.max_bytes:
        raise ServeError(413, "upload_too_large", f"{uri}: {total:,} bytes of weights; the limit is "
                         f"{state.max_bytes:,}")
    weights = [f for f in files if f.suffix.lower() in SUFFIXES]
    if not weights:
        raise ServeError(422, "invalid_checkpoint", f"{uri}: no weights file (.safetensors/.bin/.pt) found")
    kind = "directory"
    for f in weights:
        k = prevalidate(f, f"{uri} ({f.name})")
        if path.is_file():
            kind = k
    return path, kind


def _predict(state: WorkerState, job: dict[str, Any], stage: list[str], replace: dict[str, str]) -> dict[str, Any]:
    from wsl.predict.api import choose_predictor, closest_predictor, load_network, make_prediction, predict_network

    if job["kind"] == "hub":
        where = job["uri"]
        path, kind = _resolve_hub(where, state)
        replace[str(path)] = where  # error messages name the URI, not the server's cache
    else:
        where, path, kind = job["filename"], Path(job["path"]), job["format"]
    arch = job.get("arch") or None
    if kind != "directory":
        arch_precheck(path, kind, arch, where)
    label, sd, space, module = load_network(str(path), arch, allow_code=False)
    if job.get("predictor"):
        name = job["predictor"]
        p, warnings = choose_predictor(space, state.predictors[name])
    else:  # the same rule as wsl.predict.predict: the closest training family, then order
        name, p, warnings = closest_predictor(space, state.predictors.items())
    stage[0] = "predict"
    raw = predict_network(p, space, sd, module)
    out = make_prediction(label, p, space, raw, warnings).to_json()
    out["source"] = where
    out["predictor"] = name
    return out


def handle_job(state: WorkerState, job: dict[str, Any]) -> dict[str, Any]:
    """Run one prediction job; always returns ``{"ok": True, "prediction"}`` or an error dict."""
    where = job.get("filename") or job.get("uri") or "<upload>"
    replace = {str(job["path"]): where, str(Path(job["path"]).parent): "<upload dir>"} if job.get("path") else {}
    stage = ["load"]
    try:
        return {"ok": True, "prediction": _predict(state, job, stage, replace)}
    except WslError as exc:
        status, code = classify(exc)
        message = exc.message if isinstance(exc, ServeError) else str(exc)
    except RecursionError:
        status, code, message = 422, "too_deep", f"{where}: the input is nested too deeply to be processed"
    except MemoryError:
        status, code, message = 413, "memory_limit", f"{where}: the input needs more memory than a request may use"
    except Exception as exc:
        if "can't allocate memory" in str(exc) or "DefaultCPUAllocator" in str(exc):
            status, code, message = 413, "memory_limit", f"{where}: the input needs more memory than allowed"
        elif stage[0] == "load":  # the input broke a library in a way it does not report cleanly
            log.exception("unexpected error while loading %s", where)
            status, code = 422, "unprocessable"
            message = f"{where}: the input could not be processed ({type(exc).__name__}: {str(exc)[:300]})"
        else:
            raise
    if "--arch" in message:  # the library speaks CLI; say where the option lives here
        message += " (in this service: the 'arch' form field or JSON key)"
    return {"ok": False, "status": status, "code": code, "message": scrub(message, replace)[:2000]}
