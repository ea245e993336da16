"""Resource bounds of the prediction service: upload size, concurrency, time, CPU and memory.

* :func:`read_multipart` streams the upload into a temp file with a running byte count and aborts with
  ``413`` past the cap (an announced ``Content-Length`` over it is refused before a byte is read); only
  one network chunk and the small text fields are ever in memory. A too slow upload gets ``408``.
* :class:`Admission` bounds the requests in flight (running + queued): past it, ``503`` + ``Retry-After``.
* :class:`WorkerPool` runs predictions in worker *processes* (:func:`wsl.serve.validate.worker_entry`):
  each caps its address space (``RLIMIT_AS``) and, per job, its CPU time (``RLIMIT_CPU``; ``SIGXCPU``
  ends the job and the worker is replaced); the parent kills a worker past the wall-clock limit (``504``).

Why processes, not threads: a runaway thread (a pathological architecture, an allocation storm in a C
library) can neither be interrupted nor memory-capped and keeps burning a core after its request timed
out; a process is capped by the kernel and can be killed. The price: each worker holds its own torch
runtime and predictors (~350 MB), and a replacement takes seconds to start. Uploads are handed over as
file paths, never as tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from wsl.errors import WslError
from wsl.serve import ServeError

log = logging.getLogger("wsl.serve")


# ------------------------------------------------------------------------------------------ uploads
@dataclass
class Upload:
    """One streamed multipart request: the file part on disk plus the small text fields."""

    path: Path | None = None
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def check_content_length(headers: Any, limit: int) -> None:
    """Refuse an announced body larger than ``limit`` bytes before reading it."""
    raw = headers.get("content-length")
    if raw is None:
        return
    if not raw.strip().isdigit():
        raise ServeError(400, "bad_request", f"Content-Length {raw[:40]!r} is not a non-negative integer")
    n = int(raw)
    if n > limit:
        raise ServeError(413, "upload_too_large", f"the request body is {n:,} bytes; the limit is {limit:,} bytes")


class _FormSink:
    """Callbacks for python-multipart's streaming parser, writing the file part to ``fh``."""

    def __init__(self, fh: Any, file_field: str, max_file: int, max_field: int, max_parts: int) -> None:
        self.fh, self.file_field = fh, file_field
        self.max_file, self.max_field, self.max_parts = max_file, max_field, max_parts
        self.up, self.parts, self.ended, self.have_file = Upload(), 0, False, False
        self._headers: dict[str, str] = {}
        self._hname, self._hval, self._buf = bytearray(), bytearray(), bytearray()
        self._target: str | None = None  # "file", a field name, or None

    def callbacks(self) -> dict[str, Callable[..., None]]:
        def field_(data: bytes, start: int, end: int) -> None:
            self._hname += data[start:end]

        def value(data: bytes, start: int, end: int) -> None:
            self._hval += data[start:end]

        def header_end() -> None:
            self._headers[self._hname.decode("latin-1").strip().lower()] = self._hval.decode("latin-1").strip()
            self._hname, self._hval = bytearray(), bytearray()

        return {"on_part_begin": self.part_begin, "on_header_field": field_, "on_header_value": value,
                "on_header_end": header_end, "on_headers_finished": self.headers_done, "on_part_data": self.data,
                "on_part_end": self.part_end, "on_end": lambda: setattr(self, "ended", True)}

    def part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise ServeError(422, "too_many_parts", f"the form has more than {self.max_parts} parts")
        self._headers, self._target, self._buf = {}, None, bytearray()

    def headers_done(self) -> None:
        from python_multipart.multipart import parse_options_header

        kind, opts = parse_options_header(self._headers.get("content-disposition", ""))
        if kind != b"form-data" or b"name" not in opts:
            raise ServeError(400, "bad_multipart", "a form part lacks 'Content-Disposition: form-data; name=...'")
        name = opts[b"name"].decode("utf-8", "replace")
        if b"filename" in opts:
            if name != self.file_field:
                raise ServeError(422, "unexpected_file", f"file part {name!r}: upload the checkpoint as the "
                                 f"form field {self.file_field!r}")
            if self.have_file:
                raise ServeError(422, "too_many_files", "upload exactly one checkpoint per request")
            self.have_file, self._target = True, "file"
            self.up.filename = opts[b"filename"].decode("utf-8", "replace")
        elif name == self.file_field:
            raise ServeError(422, "missing_file", f"form field {name!r} must be a file upload (no filename)")
        elif name in self.up.fields:
            raise ServeError(422, "duplicate_field", f"form field {name!r} appears twice")
        else:
            self._target = name

    def data(self, data: bytes, start: int, end: int) -> None:
        if self._target == "file":
            self.up.size += end - start
            if self.up.size > self.max_file:
                raise ServeError(413, "upload_too_large",
                                 f"the upload exceeds the limit of {self.max_file:,} bytes; aborted while streaming")
            self.fh.write(data[start:end])
        elif self._target is not None:
            if len(self._buf) + end - start > self.max_field:
                raise ServeError(413, "field_too_large",
                                 f"form field {self._target!r} exceeds {self.max_field:,} bytes")
            self._buf += data[start:end]

    def part_end(self) -> None:
        if self._target not in (None, "file"):
            try:
                self.up.fields[self._target] = self._buf.decode("utf-8")
            except UnicodeDecodeError:
                raise ServeError(400, "bad_field", f"form field {self._target!r} is not UTF-8 text") from None
        self._target = None


async def _timed(request: Any, seconds: float) -> AsyncIterator[bytes]:
    """The body's chunks; 408 once the whole body took more than ``seconds`` (a slow client holds a slot)."""
    end, it = time.monotonic() + seconds, request.stream().__aiter__()
    while True:
        try:
            yield await asyncio.wait_for(it.__anext__(), max(0.0, end - time.monotonic()))
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise ServeError(408, "upload_timeout", f"the upload took longer than {seconds:g} s") from None


async def read_multipart(request: Any, tmp_dir: Path, max_bytes: int, *, file_field: str = "file",
                         max_field_bytes: int = 256 * 1024, max_parts: int = 8, timeout_s: float = 300) -> Upload:
    """Stream a ``multipart/form-data`` body: the file part to a temp file in ``tmp_dir``, capped.

    Raises :class:`ServeError` (415 not multipart, 413 over the cap, 400 a
    malformed or truncated body, 408 too slow, 422 no file part). On failure
    the temp file is already deleted; on success the caller owns ``Upload.path``.
    """
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    ctype, opts = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data":
        raise ServeError(415, "unsupported_media_type",
                         f"expected a multipart/form-data upload, got {ctype.decode('latin-1') or 'no content type'!r}")
    boundary = opts.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ServeError(400, "bad_multipart", "multipart/form-data without a valid boundary")
    overhead = 64 * 1024 + max_parts * max_field_bytes
    check_content_length(request.headers, max_bytes + overhead)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="upload-", suffix=".part")
    path = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _FormSink(fh, file_field, max_bytes, max_field_bytes, max_parts)
            parser = MultipartParser(boundary, sink.callbacks())
            total = 0
            async for chunk in _timed(request, timeout_s):
                total += len(chunk)
                if total > max_bytes + overhead:
                    raise ServeError(413, "upload_too_large", f"the request body exceeds {max_bytes + overhead:,} "
                                     "bytes; aborted while streaming")
                parser.write(chunk)
            parser.finalize()
        if not sink.ended:
            raise ServeError(400, "bad_multipart", "the multipart body is truncated (no closing boundary)")
        if not sink.have_file:
            raise ServeError(422, "missing_file", f"no file: upload the checkpoint as form field {file_field!r}")
        sink.up.path = path
        return sink.up
    except FormParserError as exc:
        path.unlink(missing_ok=True)
        raise ServeError(400, "bad_multipart", f"malformed multipart body: {exc}") from None
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if type(exc).__name__ == "ClientDisconnect":
            raise ServeError(400, "client_disconnected", "the client went away during the upload") from None
        raise


async def read_small_body(request: Any, limit: int, timeout_s: float = 60) -> bytes:
    """The whole request body, refused with 413 past ``limit`` bytes (JSON endpoints)."""
    check_content_length(request.headers, limit)
    buf = bytearray()
    async for chunk in _timed(request, timeout_s):
        buf += chunk
        if len(buf) > limit:
            raise ServeError(413, "body_too_large", f"the request body exceeds {limit:,} bytes")
    return bytes(buf)


# ---------------------------------------------------------------------------------------- admission
class Admission:
    """At most ``capacity`` requests in flight; past that, ``503`` + ``Retry-After`` at once."""

    def __init__(self, capacity: int, workers: int) -> None:
        self.capacity, self.workers = max(1, capacity), max(1, workers)
        self.in_flight = 0
        self._ema = 1.0  # seconds per request, exponential moving average

    def enter(self) -> float:
        if self.in_flight >= self.capacity:
            wait = max(1, min(120, math.ceil(self._ema * (self.in_flight + 1) / self.workers)))
            raise ServeError(503, "busy", f"the service is at capacity ({self.in_flight} requests in flight); "
                             f"retry after {wait} s", headers={"Retry-After": str(wait)})
        self.in_flight += 1
        return time.monotonic()

    def leave(self, started: float) -> None:
        self.in_flight -= 1
        self._ema = 0.8 * self._ema + 0.2 * (time.monotonic() - started)


# ------------------------------------------------------------------------------------------ workers
class WorkerDied(Exception):
    """The worker process exited while running a job."""


class _Worker:
    """One worker process, started with ``python -c`` (no re-import of the parent's ``__main__``)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        code = "from wsl.serve.validate import worker_entry; worker_entry()"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env)
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.conn.send({**cfg, "sys_path": list(sys.path)})

    def wait_ready(self, timeout: float) -> None:
        if not self.conn.poll(timeout):
            self.kill()
            raise WslError(f"a prediction worker did not start within {timeout:.0f} s")
        try:
            tag, info = self.conn.recv()
        except (EOFError, OSError):
            tag, info = "init_failed", f"exit code {self.proc.wait(5)}"
        if tag != "ready":
            self.kill()
            raise WslError(f"a prediction worker failed to start: {info}")

    def call(self, job: Any, timeout: float) -> tuple[str, Any]:
        self.conn.send(job)
        if not self.conn.poll(timeout):
            raise TimeoutError
        try:
            return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            raise WorkerDied from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):  # a zombie we cannot reap now; the OS will
            self.proc.wait(10)
        self.conn.close()


class WorkerPool:
    """``size`` worker processes running ``handler(state, job)``; ``state = init(*init_args)``."""

    def __init__(self, size: int, *, init: str, init_args: tuple[Any, ...] = (), handler: str,
                 time_limit_s: float = 60.0, cpu_limit_s: float = 60.0, memory_mb: int = 4096,
                 start_timeout_s: float = 180.0) -> None:
        self.size = max(1, int(size))
        self.time_limit_s, self.start_timeout_s = float(time_limit_s), float(start_timeout_s)
        self._cfg = {"init": init, "init_args": tuple(init_args), "handler": handler, "cpu_s": float(cpu_limit_s),
                     "memory_mb": int(memory_mb)}
        self._idle: asyncio.Queue[_Worker] | None = None
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self._calls = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix="wsl-serve-call")
        self.busy = self.restarts = 0
        self.closed = False

    def _spawn(self) -> _Worker:
        w = _Worker(self._cfg)
        w.wait_ready(self.start_timeout_s)  # kills the process itself if it fails
        with self._lock:
            if self.closed:
                w.kill()
                raise WslError("the worker pool is closed")
            self._all.add(w)
        return w

    async def start(self) -> None:
        """Start every worker (concurrently) and wait until all are ready."""
        loop = asyncio.get_running_loop()
        self._idle = asyncio.Queue()
        workers = await asyncio.gather(*(loop.run_in_executor(None, self._spawn) for _ in range(self.size)),
                                       return_exceptions=True)
        for w in workers:
            if isinstance(w, _Worker):
                self._idle.put_nowait(w)
        failed = [w for w in workers if isinstance(w, BaseException)]
        if failed:
            self.close()
            raise failed[0]

    @property
    def alive(self) -> int:
        with self._lock:
            return sum(w.alive() for w in self._all)

    async def _replace(self, old: _Worker) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            self._all.discard(old)
        await loop.run_in_executor(None, old.kill)
        self.restarts += 1
        for attempt in range(3 if not self.closed else 0):
            try:
                new = await loop.run_in_executor(None, self._spawn)
            except Exception as exc:  # keep serving with fewer workers; say so in the log and /healthz
                log.error("restarting a prediction worker failed (attempt %d): %s", attempt + 1, exc)
                continue
            assert self._idle is not None
            self._idle.put_nowait(new)
            return

    async def run(self, job: Any, queue_timeout_s: float | None = None) -> Any:
        """Run one job; raises :class:`ServeError` 503 (no worker in time), 504 (time/CPU limit), 413 (memory)."""
        if self._idle is None:
            raise ServeError(503, "starting", "the prediction workers are not running yet")
        try:
            w = await asyncio.wait_for(self._idle.get(), queue_timeout_s)
        except asyncio.TimeoutError:
            raise ServeError(503, "busy", "no prediction worker became free in time",
                             headers={"Retry-After": "5"}) from None
        loop = asyncio.get_running_loop()
        self.busy += 1
        fut = loop.run_in_executor(self._calls, w.call, job, self.time_limit_s)
        fut.add_done_callback(lambda f: self._release(w, f))
        try:
            tag, out = await asyncio.shield(fut)
        except TimeoutError:
            raise ServeError(504, "timeout", f"the prediction took longer than {self.time_limit_s:g} s and was "
                             "stopped") from None
        except WorkerDied:
            raise ServeError(422, "worker_crashed", "processing this input crashed the prediction worker "
                             "(memory or resource limit); the input was not accepted") from None
        if tag == "ok":
            return out
        if tag == "cpu_limit":
            raise ServeError(504, "cpu_limit", f"the prediction used more than {self._cfg['cpu_s']:g} s of CPU time "
                             "and was stopped")
        if tag == "memory_limit":
            raise ServeError(413, "memory_limit", "the input needs more memory than a request may use")
        log.error("prediction worker error: %s", out)
        raise ServeError(500, "internal_error", f"internal error in the prediction worker: {out}")

    def _release(self, w: _Worker, fut: Any) -> None:
        """Return the worker to the idle queue after a call, or replace it (timeout, crash, CPU limit)."""
        self.busy -= 1
        ok = not fut.cancelled() and fut.exception() is None and fut.result()[0] != "cpu_limit"
        if ok and w.alive() and self._idle is not None:
            self._idle.put_nowait(w)
        else:
            asyncio.ensure_future(self._replace(w))

    def close(self) -> None:
        with self._lock:
            self.closed = True
            workers, self._all = list(self._all), set()
        for w in workers:
            w.kill()
        self._calls.shutdown(wait=False, cancel_futures=True)
