"""Hostile input to the prediction service: every bad upload gets a 4xx JSON error with a reason, never a 500.

One app (one worker process) serves most of the module; each test checks the
status, the error ``code`` and that the message names the problem, and the
last test checks that no upload was left behind in the service's temp dir.
A second app with tight limits checks the resource bounds: wall-clock time,
CPU time, memory, a crashing worker, and a full queue (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pickle
import struct
import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from serve_fixtures import ServeEnv, serve_env  # noqa: E402,F401

LIMIT_MB = 1


@pytest.fixture(scope="module")
def client(serve_env: ServeEnv) -> Iterator[TestClient]:  # noqa: F811
    from wsl.serve import create_app

    app = create_app([str(serve_env.predictor)], LIMIT_MB, examples_dir=serve_env.examples, memory_mb=1024)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def st_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)


def raw_st(header: dict[str, Any], data: bytes, length: int | None = None) -> bytes:
    """A safetensors file from a hand-written header (which may lie)."""
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def upload(client: Any, path: Path, **fields: str) -> Any:
    return client.post("/v1/predict", files={"file": (path.name, path.read_bytes())}, data=fields)


def post(client: TestClient, name: str, data: bytes, **fields: str) -> Any:
    return client.post("/v1/predict", files={"file": (name, data, "application/octet-stream")}, data=fields)


def expect(r: Any, status: int, code: str, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    for w in words:
        assert w.lower() in body["error"]["message"].lower(), (w, body)
    return body


def example(env: ServeEnv) -> bytes:
    return env.example_files[0].read_bytes()


# ------------------------------------------------------------------------------------ broken files
def test_empty_and_truncated(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    good = example(serve_env)
    expect(post(client, "m.safetensors", b""), 422, "empty_file", "empty")
    expect(post(client, "m.pt", b""), 422, "empty_file", "empty")
    expect(post(client, "m.safetensors", good[:5]), 422, "invalid_safetensors", "too short")
    expect(post(client, "m.safetensors", good[: len(good) // 2]), 422, "invalid_safetensors")
    expect(post(client, "m.safetensors", good[:-3]), 422, "invalid_safetensors", "data")
    broken = bytearray(good)
    broken[10:20] = b"\xff" * 10  # inside the JSON header
    expect(post(client, "m.safetensors", bytes(broken)), 422, "invalid_safetensors", "header")
    expect(post(client, "m.pt", b"PK\x03\x04garbage"), 422, "invalid_checkpoint", "zip")
    expect(post(client, "m.pt", b"\x80\x02garbage"), 422, "unsafe_pickle", "refused")  # opcode 'g' is not allowed
    expect(post(client, "m.bin", b"plain text, not a checkpoint"), 422, "invalid_checkpoint", "torch.save")


def test_lying_headers(client: TestClient) -> None:
    data = bytes(16)
    ok = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
    assert post(client, "ok.safetensors", raw_st(ok, data), arch="mlp([4, 1])").status_code == 422  # names wrong
    cases = [
        ({"w": {"dtype": "F32", "shape": [400], "data_offsets": [0, 16]}}, data, "needs 1600 bytes"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1 << 40]}}, data, "exceeds the data buffer"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, data, "overlap"),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, data, "gap"),
        ({"w": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 16]}}, data, "too large"),
        ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, data, "non-negative"),
        ({"w": {"dtype": "X99", "shape": [4], "data_offsets": [0, 16]}}, data, "unknown dtype"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, data + b"xx", "cover"),
        ({"__metadata__": {"wsl_arch": 5}}, b"", "__metadata__"),
    ]
    for header, payload, words in cases:
        expect(post(client, "lie.safetensors", raw_st(header, payload)), 422, "invalid_safetensors", words)
    expect(post(client, "lie.safetensors", raw_st(ok, data, length=10_000)), 422, "invalid_safetensors",
           "exceeds the file size")


def test_not_a_safetensors_file(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    """Random bytes named .safetensors: their first 8 bytes are not reported as a header length."""
    noise = struct.pack("<Q", 13_389_164_444_924_600_146) + bytes(range(7, 250)) * 4
    for data in (noise, b"hello world, not weights at all", example(serve_env)[8:]):
        body = expect(post(client, "rand.safetensors", data), 422, "not_safetensors", "not a safetensors file")
        assert "header" not in body["error"]["message"] and "13,389" not in body["error"]["message"]
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buf)
    expect(post(client, "m.safetensors", buf.getvalue()), 422, "not_safetensors", "torch.save", ".pt")


def test_gigantic_header(client: TestClient) -> None:
    from wsl.serve.validate import prevalidate

    expect(post(client, "big.safetensors", struct.pack("<Q", 1 << 40) + b"{" + bytes(100)), 422,
           "header_too_large", "header")
    expect(post(client, "big.safetensors", struct.pack("<Q", (1 << 64) - 1) + b"{}"), 422, "header_too_large")
    import tempfile

    with tempfile.TemporaryDirectory() as d:  # a header that is really there, over a (small) cap
        p = Path(d) / "h.safetensors"
        p.write_bytes(raw_st({"__metadata__": {"pad": "x" * 5000}}, b""))
        from wsl.serve import ServeError

        with pytest.raises(ServeError) as e:
            prevalidate(p, "h.safetensors", max_header_bytes=1000)
        assert e.value.status == 422 and e.value.code == "header_too_large"


# ------------------------------------------------------------------------------------- pickles, zips
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payloads_are_refused_and_never_run(client: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    raw = pickle.dumps({"w": _Payload(marker)}, protocol=2)
    zipped, legacy = io.BytesIO(), io.BytesIO()
    torch.save({"w": torch.zeros(2), "x": _Payload(marker)}, zipped)
    torch.save({"w": _Payload(marker)}, legacy, _use_new_zipfile_serialization=False)
    for name, data in (("raw.pt", raw), ("zip.pt", zipped.getvalue()), ("legacy.bin", legacy.getvalue()),
                       ("noext", zipped.getvalue())):
        expect(post(client, name, data), 422, "unsafe_pickle", "refused")
    assert not marker.exists()
    # the payload is real: unpickling it without weights_only would have run it
    pickle.loads(raw)
    assert marker.exists()


def test_zip_bomb_is_refused_before_torch_sees_it(client: TestClient) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        with zf.open("archive/data/0", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(256):  # 256 MB of zeros in well under 1 MB
                fh.write(chunk)
    bomb = buf.getvalue()
    assert len(bomb) < LIMIT_MB * 1024 * 1024
    expect(post(client, "bomb.pt", bomb), 422, "compressed_archive", "decompression bomb")
    # stored in the central directory but deflated in the local header: still refused
    stored = io.BytesIO()
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        zf.writestr("archive/data/0", b"x" * 100)
    sneaky = bytearray(stored.getvalue())
    sneaky[8:10] = (8).to_bytes(2, "little")  # first local header: method 8 (deflate)
    expect(post(client, "sneaky.pt", bytes(sneaky)), 422, "compressed_archive", "local header")
    no_pkl = io.BytesIO()
    with zipfile.ZipFile(no_pkl, "w") as zf:
        zf.writestr("a.txt", b"hi")
    expect(post(client, "nopkl.pt", no_pkl.getvalue()), 422, "invalid_checkpoint", "data.pkl")


# --------------------------------------------------------------------------------------- size caps
def test_oversized_upload_is_refused(client: TestClient) -> None:
    big = bytes(LIMIT_MB * 1024 * 1024 + 10)
    expect(post(client, "big.safetensors", big), 413, "upload_too_large", "limit")
    headers = {"content-type": "multipart/form-data; boundary=xyz", "content-length": str(10 ** 12)}
    expect(client.post("/v1/predict", content=b"", headers=headers), 413, "upload_too_large")


def test_oversized_upload_is_aborted_while_streaming(client: TestClient) -> None:
    """Call the ASGI app with a body that never ends: it stops reading just past the cap (never buffers it)."""
    app = client.app
    sent = [0]
    head = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.safetensors\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n")

    async def receive() -> dict[str, Any]:
        if sent[0] == 0:
            sent[0] += len(head)
            return {"type": "http.request", "body": head, "more_body": True}
        sent[0] += 65536
        if sent[0] > 1 << 30:
            raise AssertionError("the server kept reading past 1 GB")
        return {"type": "http.request", "body": bytes(65536), "more_body": True}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/predict", "raw_path": b"/v1/predict", "query_string": b"",
             "root_path": "", "headers": [(b"content-type", b"multipart/form-data; boundary=b"), (b"host", b"t")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": {}}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in messages if m["type"] == "http.response.start")
    body = json.loads(b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body"))
    assert start["status"] == 413 and body["error"]["code"] == "upload_too_large"
    assert sent[0] < (LIMIT_MB + 4) * 1024 * 1024  # read up to the cap plus the form allowance, then stopped


def test_slow_upload_times_out_and_leaves_nothing(tmp_path: Path) -> None:
    """A client that stops sending mid-upload gets 408 once the upload time is up; its temp file is gone."""
    from wsl.serve import ServeError
    from wsl.serve.limits import read_multipart

    class Stalled:
        headers = {"content-type": "multipart/form-data; boundary=b"}

        async def stream(self) -> Any:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.pt"\r\n\r\nPK'
            await asyncio.sleep(3600)
            yield b""

    with pytest.raises(ServeError) as e:
        asyncio.run(read_multipart(Stalled(), tmp_path, 1000, timeout_s=0.2))
    assert e.value.status == 408 and e.value.code == "upload_timeout"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- architectures
_BERT = {"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
         "intermediate_size": 32, "max_position_embeddings": 16}
_VIT = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "image_size": 16, "patch_size": 8}
_GPT2 = {"vocab_size": 50, "n_positions": 16, "n_embd": 16, "n_layer": 1, "n_head": 2}
ARCHS = {  # every registered architecture, small where it takes sizes
    "mlp": "mlp([64, 8, 10])", "small_cnn": "small_cnn(channels=[4, 4])",
    "resnet": "resnet(layers=[1, 1, 1, 1], width=4, num_classes=10)", "resnet18": "resnet18(num_classes=10)",
    "resnet34": "resnet34(num_classes=10)", "resnet50": "resnet50(num_classes=10)", "vit_tiny": "vit_tiny()",
    "vit": f"vit({_VIT})", "vit_classifier": f"vit_classifier({_VIT})", "bert_layer": "bert_layer(hidden=16, heads=2)",
    "bert": f"bert({_BERT})", "bert_classifier": f"bert_classifier({_BERT})", "gpt2": f"gpt2({_GPT2})",
    "gpt2_lm": f"gpt2_lm({_GPT2})", "hf": f"hf({ {**_BERT, 'model_type': 'bert'} })",
}


def test_every_registered_architecture_is_covered() -> None:
    from wsl.archs.registry import REGISTRY

    assert set(ARCHS) == set(REGISTRY)


def _keys(ref: str) -> dict[str, tuple[int, ...]]:
    from wsl.io import resolve_arch

    with torch.device("meta"):
        module = resolve_arch(ref, allow_code=False)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_wrong_names_and_shapes_for_every_architecture(client: TestClient, name: str) -> None:
    ref = ARCHS[name]
    keys = _keys(ref)
    first = next(iter(keys))
    tiny = {k: torch.zeros(1) for k in keys}  # right names, wrong shapes (and a tiny upload)
    body = expect(post(client, "w.safetensors", st_bytes(tiny), arch=ref), 422, "state_dict_mismatch")
    assert "does not match" in body["error"]["message"] or "parameter values" in body["error"]["message"]
    renamed = {("renamed." + k): v for k, v in tiny.items()}
    expect(post(client, "w.safetensors", st_bytes(renamed), arch=ref), 422, "state_dict_mismatch")
    expect(post(client, "w.pt", _torch_bytes(tiny), arch=ref), 422, "state_dict_mismatch")
    if sum(torch.Size(s).numel() for s in keys.values()) < 200_000:  # small: exact names, one tensor wrong
        real = {k: torch.zeros(s) for k, s in keys.items()}
        one_renamed = {("x" + k if k == first else k): v for k, v in real.items()}
        expect(post(client, "w.safetensors", st_bytes(one_renamed), arch=ref), 422, "state_dict_mismatch",
               first)
        grown = dict(real)
        grown[first] = torch.zeros(tuple(d + 1 for d in keys[first]) or (2,))
        expect(post(client, "w.pt", _torch_bytes(grown), arch=ref), 422, "state_dict_mismatch", first,
               "wrong shape")


def _torch_bytes(sd: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_wrong_tensors_for_the_predictors_own_architecture(client: TestClient,
                                                          serve_env: ServeEnv) -> None:  # noqa: F811
    from safetensors.torch import load

    sd = load(example(serve_env))
    meta = {"wsl_arch": serve_env.arch_json}
    first = sorted(sd)[0]
    bad = {**sd, first: torch.zeros(3)}
    expect(post(client, "m.safetensors", st_bytes(bad, meta)), 422, "state_dict_mismatch", first)
    missing = {k: v for k, v in sd.items() if k != first}
    expect(post(client, "m.safetensors", st_bytes(missing, meta)), 422, "state_dict_mismatch", "missing", first)
    expect(post(client, "m.safetensors", st_bytes(sd)), 422, "invalid_architecture", "no architecture")


def test_non_finite_weights(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    from safetensors.torch import load

    sd = load(example(serve_env))
    meta = {"wsl_arch": serve_env.arch_json}
    name = sorted(sd)[1]
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = dict(sd)
        bad[name] = bad[name].clone()
        bad[name].view(-1)[0] = value
        expect(post(client, "nan.safetensors", st_bytes(bad, meta)), 422, "non_finite_weights", name)
        expect(post(client, "nan.pt", _torch_bytes(bad), arch=serve_env.arch_json), 422, "non_finite_weights")


def test_unsupported_layers_and_code_references(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    grouped = {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [2, 8, 8],  # conv blocks of 3 channels
               "layers": [{"type": "conv2d", "out_channels": 6, "kernel_size": 1},  # after norm blocks of 2: refused
                          {"type": "groupnorm", "num_groups": 3},
                          {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "groups": 2}, {"type": "flatten"},
                          {"type": "linear", "out_features": 10}]}
    from wsl.archs.describe import build

    sd = {k: torch.zeros(v.shape) for k, v in build(grouped).state_dict().items()}
    text = json.dumps(grouped)
    expect(post(client, "g.safetensors", st_bytes(sd), arch=text), 422, "unsupported_layer", "grouped")
    expect(post(client, "g.safetensors", st_bytes(sd, {"wsl_arch": text})), 422, "unsupported_layer", "grouped")
    lstm = {**grouped, "layers": [{"type": "lstm", "hidden_size": 4}]}
    expect(post(client, "l.safetensors", st_bytes(sd, {"wsl_arch": json.dumps(lstm)})), 422,
           "invalid_architecture", "lstm")
    good = example(serve_env)
    for ref in ("os:system", "wsl.archs:mlp([64, 10])", "/tmp/evil.py:make", "resnet18(num_classes=__import__('os'))",
                "not a reference!", "{not json", "nonexistent_arch", "/etc/hostname.json", "../arch.json",
                "resnet(layers=[1, 1, 1, 1], width=100000000)"):
        expect(post(client, "m.safetensors", good, arch=ref), 422, "invalid_architecture")
    expect(post(client, "m.safetensors", st_bytes(sd, {"wsl_arch": "resnet18"})), 422, "invalid_architecture", "JSON")


# ------------------------------------------------------------------------------ requests themselves
def test_hub_uris(client: TestClient) -> None:
    for uri in ("hf://", "hf://onlyorg", "hf://org/name@", "hf://org/../x", "hf://org/na me", "https://x/y",
                "hf://spaces/org/app", "hf://org/name/../../etc/passwd", "hf://org/name?x=1"):
        expect(client.post("/v1/predict/hub", json={"uri": uri}), 422, "invalid_hub_uri")
    expect(client.post("/v1/predict/hub", json={"uri": "hf://datasets/org/zoo"}), 422, "invalid_hub_uri", "dataset")
    expect(client.post("/v1/predict/hub", json={"uri": 5}), 422, "invalid_request")
    expect(client.post("/v1/predict/hub", json=["hf://org/name"]), 422, "invalid_request")
    expect(client.post("/v1/predict/hub", json={"uri": "hf://org/name", "evil": 1}), 422, "unknown_field")
    expect(client.post("/v1/predict/hub", content=b"{nope", headers={"content-type": "application/json"}), 400,
           "invalid_json")
    expect(client.post("/v1/predict/hub", content=b"uri=hf://a/b", headers={"content-type": "text/plain"}), 415,
           "unsupported_media_type")
    expect(client.post("/v1/predict/hub", json={"uri": "hf://org/name", "predictor": "nope"}), 404,
           "unknown_predictor")
    # well-formed but unreachable (the test suite is offline): a typed answer, not a 500
    r = client.post("/v1/predict/hub", json={"uri": "hf://org/name"})
    assert r.status_code in (502, 503) and r.json()["error"]["code"] in ("hub_unavailable", "hub_unreachable")


def test_bad_requests(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    good = example(serve_env)
    expect(client.post("/v1/predict", json={"file": "x"}), 415, "unsupported_media_type", "multipart")
    expect(client.post("/v1/predict", content=good, headers={"content-type": "application/octet-stream"}), 415,
           "unsupported_media_type")
    expect(post(client, "model.txt", b"hello"), 415, "unsupported_media_type", "unsupported file type")
    expect(post(client, "m.png", b"\x89PNG\r\n\x1a\n" + bytes(20)), 415, "unsupported_media_type")
    expect(post(client, "m.safetensors", good, predictor="no-such-predictor"), 404, "unknown_predictor", "tiny-serve")
    expect(post(client, "m.safetensors", good, color="red"), 422, "unknown_field", "color")
    expect(client.post("/v1/predict", data={"arch": "mlp"}, files={"other": ("a", b"x")}), 422, "unexpected_file")
    only_field = b"--b\r\nContent-Disposition: form-data; name=\"arch\"\r\n\r\nmlp\r\n--b--\r\n"
    expect(client.post("/v1/predict", content=only_field, headers={"content-type": "multipart/form-data; boundary=b"}),
           422, "missing_file")
    two = [("file", ("a.safetensors", good)), ("file", ("b.safetensors", good))]
    expect(client.post("/v1/predict", files=two), 422, "too_many_files")
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.safetensors\"\r\n\r\n" + good[:50]
    expect(client.post("/v1/predict", content=body, headers={"content-type": "multipart/form-data; boundary=b"}),
           400, "bad_multipart", "truncated")
    expect(client.post("/v1/predict", content=b"x", headers={"content-type": "multipart/form-data"}), 400,
           "bad_multipart", "boundary")
    expect(client.get("/v1/nothing"), 404, "not_found")
    expect(client.get("/v1/predict"), 405, "method_not_allowed")
    expect(client.get("/v1/examples/..%2F..%2Fetc%2Fpasswd"), 404, "not_found")


# ---------------------------------------------------------------------------------- resource bounds
@pytest.fixture(scope="module")
def limited(serve_env: ServeEnv) -> Iterator[TestClient]:  # noqa: F811
    """One worker, no queue, short limits, and a handler that can sleep, spin, allocate or crash on request."""
    from wsl.serve import create_app

    app = create_app([str(serve_env.predictor)], 5, workers=1, max_queue=0, time_limit_s=6, cpu_limit_s=1,
                     memory_mb=512, handler="serve_fixtures:slow_handler")
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _wait_workers(c: TestClient, n: int = 1, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while c.get("/healthz").json()["workers"] < n:
        assert time.monotonic() < deadline, "the worker was not replaced"
        time.sleep(0.2)


def test_time_cpu_memory_limits_and_recovery(limited: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    path = serve_env.example_files[0]
    data = path.read_bytes()
    ok = upload(limited, path)
    assert ok.status_code == 200
    r = post(limited, "sleep-30.safetensors", data)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    _wait_workers(limited)
    r = post(limited, "spin.safetensors", data)
    assert r.status_code == 504 and r.json()["error"]["code"] == "cpu_limit", r.text
    _wait_workers(limited)
    r = post(limited, "alloc.safetensors", data)
    assert r.status_code == 413 and r.json()["error"]["code"] == "memory_limit", r.text
    r = post(limited, "crash.safetensors", data)
    assert r.status_code == 422 and r.json()["error"]["code"] == "worker_crashed", r.text
    _wait_workers(limited)
    again = upload(limited, path)
    assert again.status_code == 200 and again.json() == ok.json()
    assert limited.get("/healthz").json()["restarts"] == 3
    assert list(limited.app.state.tmp_dir.iterdir()) == []


def test_full_queue_answers_503_with_retry_after(limited: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    path = serve_env.example_files[0]
    data = path.read_bytes()
    _wait_workers(limited)
    slow: dict[str, Any] = {}
    t = threading.Thread(target=lambda: slow.update(r=post(limited, "sleep-1.5.safetensors", data)))
    t.start()
    deadline = time.monotonic() + 30
    while limited.get("/healthz").json()["in_flight"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    busy = upload(limited, path)
    t.join()
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
    assert int(busy.headers["retry-after"]) >= 1
    assert slow["r"].status_code == 200
    assert upload(limited, path).status_code == 200
    assert list(limited.app.state.tmp_dir.iterdir()) == []


def test_temp_dir_is_empty_afterwards(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    assert post(client, "ok.safetensors", example(serve_env)).status_code == 200
    tmp = client.app.state.tmp_dir
    assert tmp.is_dir() and list(tmp.iterdir()) == []
    health = client.get("/healthz").json()
    assert health["in_flight"] == 0 and health["workers"] == 1
