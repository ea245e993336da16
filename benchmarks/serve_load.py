"""Load test of ``wsl serve``: concurrent clients on loopback, a mix of good and hostile uploads.

Usage::

    python benchmarks/serve_load.py [--predictor DIR] [--examples F.safetensors ...] [--clients 20]
                                    [--requests 400] [--max-seconds 300] [--workers 2] [--queue 16]

Starts ``wsl serve`` as a subprocess (uvicorn) on a free 127.0.0.1 port,
then ``--clients`` threads send ``--requests`` uploads in total (bounded by
``--max-seconds``): good checkpoints, which must answer 200 with exactly the
prediction :func:`wsl.predict.predict` gives in this process, and bad ones
(empty, truncated, NaN weights, missing tensors, a pickle payload, a zip bomb,
an unknown format, an oversized upload), which must answer their 4xx. A
``503`` (queue full) is retried after its ``Retry-After``; a request is *lost*
only if no HTTP answer ever arrives. The server's memory (main process plus
workers, from ``/proc``) is sampled throughout. Prints a summary table.

Without ``--predictor`` the shipped predictors and ``models/examples`` are
used; without those, a tiny predictor is trained first (``tests/serve_fixtures``).
The test suite runs a short form of this (``tests/test_serve_api.py``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import random
import select
import socket
import sys
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One kind of request: what is sent and what must come back."""

    name: str
    filename: str
    data: bytes
    fields: tuple[tuple[str, str], ...] = ()
    status: int = 200
    expected: dict[str, Any] | None = None  #: for good cases: the in-process prediction


@dataclass
class Report:
    sent: int = 0
    ok: int = 0
    rejected: int = 0  #: bad uploads answered with their 4xx
    lost: int = 0
    retried_503: int = 0
    wrong: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    hwm_mb: dict[int, float] = field(default_factory=dict)
    wall_s: float = 0.0


# ------------------------------------------------------------------------------------------- cases
def make_cases(examples: list[Path] | tuple[Path, ...], predictor: str | None) -> list[Case]:
    """Good cases from ``examples`` (expected numbers computed here) plus hostile variants of the first."""
    from safetensors.torch import load, save

    from wsl.predict import predict

    cases = []
    for p in examples:
        want = predict(p, predictor).to_json()
        fields = (("predictor", want["predictor"]),) if predictor else ()
        cases.append(Case(f"good:{p.name}", p.name, p.read_bytes(), fields, 200, want))
    raw = examples[0].read_bytes()
    n = int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:8 + n]).get("__metadata__", {})
    sd = load(raw)
    first = sorted(sd)[0]
    nan = {k: v.clone() for k, v in sd.items()}
    nan[first].view(-1)[0] = float("nan")
    missing = {k: v for k, v in sd.items() if k != first}
    evil = pickle.dumps({"w": _Evil()}, protocol=2)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("archive/data/0", bytes(64 << 20))
    bad = [("empty", "e.safetensors", b"", 422), ("truncated", "t.safetensors", raw[: len(raw) - 7], 422),
           ("nan", "n.safetensors", save(nan, metadata=meta), 422),
           ("missing-tensor", "m.safetensors", save(missing, metadata=meta), 422),
           ("pickle-payload", "p.pt", evil, 422), ("zip-bomb", "b.pt", bomb.getvalue(), 422),
           ("unknown-format", "x.txt", b"not a checkpoint", 415), ("oversized", "o.safetensors", bytes(4 << 20), 413)]
    return cases + [Case(f"bad:{name}", fn, data, (), status) for name, fn, data, status in bad]


class _Evil:
    def __reduce__(self) -> Any:
        return (os.system, ("echo the payload ran >&2",))


# ------------------------------------------------------------------------------------------ client
def _multipart(case: Case, boundary: str) -> bytes:
    out = io.BytesIO()
    for k, v in case.fields:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n".encode())
    out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{case.filename}\"\r\n"
              "Content-Type: application/octet-stream\r\n\r\n".encode())
    out.write(case.data)
    out.write(f"\r\n--{boundary}--\r\n".encode())
    return out.getvalue()


def _read_head(sock: socket.socket, buf: bytes) -> tuple[int, dict[str, str], bytes]:
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed before a response")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, rest


def post_upload(url: str, case: Case, timeout: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """POST one multipart upload with ``Expect: 100-continue`` (an early 4xx/503 arrives before the body is sent)."""
    u = urlsplit(url)
    boundary = f"wsl{random.getrandbits(64):x}"
    body = _multipart(case, boundary)
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\nExpect: 100-continue\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    with socket.create_connection((u.hostname, u.port), timeout=timeout) as s:
        s.sendall(head.encode())
        buf = b""
        if select.select([s], [], [], 2.0)[0]:
            status, headers, buf = _read_head(s, b"")
            if status != 100:
                return status, headers, _read_body(s, headers, buf)
        s.sendall(body)
        status, headers, buf = _read_head(s, buf)
        while status == 100:
            status, headers, buf = _read_head(s, buf)
        return status, headers, _read_body(s, headers, buf)


def _read_body(sock: socket.socket, headers: dict[str, str], buf: bytes) -> bytes:
    n = int(headers.get("content-length", "-1"))
    while n < 0 or len(buf) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf if n < 0 else buf[:n]


# -------------------------------------------------------------------------------------------- load
def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return out


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_load(url: str, cases: list[Case], *, clients: int = 20, requests: int = 400, max_seconds: float = 300,
             server_pid: int | None = None, seed: int = 0) -> Report:
    """Send ``requests`` uploads from ``clients`` threads (a fixed shuffled mix of ``cases``); check every answer."""
    rng = random.Random(seed)
    plan = [cases[i % len(cases)] for i in range(requests)]
    rng.shuffle(plan)
    report = Report()
    lock = threading.Lock()
    nxt = [0]
    deadline = time.monotonic() + max_seconds
    stop = threading.Event()
    pids = _tree(server_pid) if server_pid else []

    def sample() -> None:
        while not stop.is_set():
            tree = _tree(server_pid) if server_pid else []
            rss = sum(_status_kb(p, "VmRSS") for p in tree) / 1024
            with lock:
                report.peak_rss_mb = max(report.peak_rss_mb, rss)
                for p in tree:
                    report.hwm_mb[p] = max(report.hwm_mb.get(p, 0.0), _status_kb(p, "VmHWM") / 1024)
            stop.wait(0.1)

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                if nxt[0] >= len(plan):
                    return
                case = plan[nxt[0]]
                nxt[0] += 1
                report.sent += 1
            t0 = time.perf_counter()
            answer, retries = None, 0
            while answer is None and time.monotonic() < deadline:
                try:
                    status, headers, body = post_upload(url, case)
                except OSError as exc:
                    answer = ("lost", str(exc))
                    break
                if status == 503 and retries < 20:
                    retries += 1
                    time.sleep(min(float(headers.get("retry-after", "1")), 2.0) * rng.uniform(0.5, 1.0))
                    continue
                answer = (status, body)
            dt = time.perf_counter() - t0
            with lock:
                report.retried_503 += retries
                report.latencies.setdefault(case.name.split(":")[0], []).append(dt)
                _judge(report, case, answer)

    sampler = threading.Thread(target=sample, daemon=True)
    if pids:
        sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.wall_s = time.perf_counter() - t0
    stop.set()
    if pids:
        sampler.join()
    return report


def _judge(report: Report, case: Case, answer: Any) -> None:
    if answer is None or answer[0] == "lost":
        report.lost += 1
        return
    status, body = answer
    if status != case.status:
        report.wrong.append(f"{case.name}: expected {case.status}, got {status}: {body[:200]!r}")
        return
    try:
        data = json.loads(body)
    except ValueError:
        report.wrong.append(f"{case.name}: answer is not JSON")
        return
    if status == 200:
        keys = ("predicted_test_accuracy", "interval", "predictor", "architecture", "warnings")
        assert case.expected is not None
        if any(data.get(k) != case.expected.get(k) for k in keys):
            report.wrong.append(f"{case.name}: prediction differs from in-process wsl.predict")
            return
        report.ok += 1
    elif set(data) == {"error"} and {"code", "message"} <= set(data["error"]):
        report.rejected += 1
    else:
        report.wrong.append(f"{case.name}: error answer without {{error: {{code, message}}}}")


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))] if s else float("nan")


def summary(report: Report) -> str:
    lines = [f"{'requests':<22}{report.sent}", f"{'good -> 200 (exact)':<22}{report.ok}",
             f"{'bad -> expected 4xx':<22}{report.rejected}", f"{'wrong answers':<22}{len(report.wrong)}",
             f"{'lost':<22}{report.lost}", f"{'503 retries':<22}{report.retried_503}",
             f"{'wall time':<22}{report.wall_s:.1f} s ({report.sent / max(report.wall_s, 1e-9):.1f} req/s)"]
    every = [x for v in report.latencies.values() for x in v]
    for name, xs in [("all", every), *sorted(report.latencies.items())]:
        lines.append(f"{'latency ' + name:<22}p50 {1000 * _pct(xs, 0.5):7.1f} ms   p99 {1000 * _pct(xs, 0.99):7.1f} ms"
                     f"   (n={len(xs)})")
    lines.append(f"{'peak RSS (sampled)':<22}{report.peak_rss_mb:.0f} MB  server + workers, summed")
    lines.append(f"{'VmHWM per process':<22}" + ", ".join(f"{v:.0f} MB" for v in report.hwm_mb.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--predictor", help="predictor directory (default: the shipped ones)")
    ap.add_argument("--examples", nargs="*", type=Path, help="good .safetensors uploads carrying wsl_arch")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--max-seconds", type=float, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queue", type=int, default=16)
    a = ap.parse_args(argv)
    import subprocess
    import tempfile
    import urllib.request

    from wsl.predict import models_dir, shipped

    tmp = tempfile.TemporaryDirectory(prefix="wsl-serve-load-")
    predictor, examples = a.predictor, a.examples
    env = dict(os.environ)
    root = models_dir()
    if not examples and root and shipped() and (root / "examples").is_dir():
        examples = sorted((root / "examples").glob("*.safetensors"))
    if not examples:
        sys.path.insert(0, str(REPO / "tests"))
        from serve_fixtures import build_serve_env

        print("no shipped predictor/examples: training a tiny predictor first ...", flush=True)
        tiny = build_serve_env(Path(tmp.name))
        predictor, examples = str(tiny.predictor), list(tiny.example_files)
    cases = make_cases(examples, predictor)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "wsl", "serve", "--port", str(port), "--max-upload-mb", "1", "--workers",
           str(a.workers), "--queue", str(a.queue), "--log-level", "warning"]
    cmd += ["--predictor", predictor] if predictor else []
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    if json.loads(r.read())["workers"] >= a.workers:
                        break
            except OSError:
                time.sleep(0.2)
        report = run_load(url, cases, clients=a.clients, requests=a.requests, max_seconds=a.max_seconds,
                          server_pid=proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
        tmp.cleanup()
    print(f"\nwsl serve load test: {a.clients} clients, {len(cases)} request kinds, {a.workers} worker(s), "
          f"queue {a.queue}\n")
    print(summary(report))
    for w in report.wrong[:10]:
        print("WRONG:", w)
    return 1 if report.wrong or report.lost else 0


if __name__ == "__main__":
    sys.exit(main())
