"""The prediction service's API: predictions equal ``wsl.predict`` and ``wsl predict --json``, cards, page,
examples, Hub URIs, and a short load test against a real ``wsl serve`` subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from serve_fixtures import PREDICTOR, Server, ServeEnv, running_server, serve_env  # noqa: E402,F401

NUMBERS = ("predicted_test_accuracy", "interval", "interval_level", "raw_prediction", "predictor", "architecture",
           "warnings", "target")


@pytest.fixture(scope="module")
def client(serve_env: ServeEnv) -> Iterator[TestClient]:  # noqa: F811
    from wsl.serve import create_app

    app = create_app([str(serve_env.predictor)], 5, examples_dir=serve_env.examples)
    with TestClient(app) as c:
        yield c


def upload(client: Any, path: Path, **fields: str) -> Any:
    return client.post("/v1/predict", files={"file": (path.name, path.read_bytes())}, data=fields)


def test_predictions_equal_in_process_predict(client: TestClient, serve_env: ServeEnv,  # noqa: F811
                                              one_thread: None) -> None:
    """The service's workers run on one thread; so does this process here, as an entry point would."""
    from wsl.predict import predict

    for path in serve_env.example_files:
        r = upload(client, path)
        assert r.status_code == 200, r.text
        got = r.json()
        want = predict(path, str(serve_env.predictor)).to_json()
        assert {k: got[k] for k in NUMBERS} == {k: want[k] for k in NUMBERS}
        assert got["source"] == path.name and 0 <= got["predicted_test_accuracy"] <= 1
        lo, hi = got["interval"]
        assert lo <= got["predicted_test_accuracy"] <= hi and got["interval_level"] == 0.9
        a = got["architecture"]
        assert a["num_parameters"] == 238 and a["num_nodes"] > 0 and a["num_edges"] > 0
    pt = serve_env.example_pt  # a torch.save zip plus its architecture as a form field
    r = upload(client, pt, arch=serve_env.arch_json, predictor=PREDICTOR)
    assert r.status_code == 200, r.text
    want = predict(pt, str(serve_env.predictor), arch=serve_env.arch_json).to_json()
    assert r.json()["predicted_test_accuracy"] == want["predicted_test_accuracy"]
    same = upload(client, serve_env.example_files[0]).json()["predicted_test_accuracy"]
    assert r.json()["predicted_test_accuracy"] == same  # .pt and .safetensors of the same model agree


def test_predictor_cards(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    data = client.get("/v1/predictors").json()
    assert data["default_order"] == [PREDICTOR]
    (card,) = data["predictors"]
    assert card["name"] == PREDICTOR and card["model"] == "nggnn" and card["target"] == "test_accuracy"
    assert card["training"]["zoo_name"] == PREDICTOR and card["training"]["num_train"] == 24
    assert set(card["metrics"]["test"]) >= {"tau", "r2", "mae"}
    assert card["calibration"]["level"] == 0.9 and card["calibration"]["abs_residual"] > 0
    assert card["family"]["output_sizes"] == [10] and set(card["family"]["activations"]) == {"relu", "tanh"}
    h = card["histogram"]
    assert len(h["edges"]) == len(h["counts"]) + 1 and sum(h["counts"]) == h["n"] == 40
    assert h["edges"][0] == 0.0 and h["edges"][-1] == 1.0
    assert "Kendall" in card["card"]


def test_health_docs_page_and_assets(client: TestClient) -> None:
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["workers"] == 1 and h["predictors"] == [PREDICTOR]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/v1/predict/hub" in docs.text and "/openapi.json" in docs.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/predict/hub", "/v1/predictors", "/healthz"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/static/app.js", "/static/app.css"):
        r = client.get(asset)
        assert r.status_code == 200 and len(r.text) > 500
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/app.css").text, docs.text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, \
            "the page must work offline: no external assets"


def test_favicon_is_served(client: TestClient) -> None:
    """Browsers ask for /favicon.ico on every page; a 404 there is a console error."""
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.text.lstrip().startswith("<svg") and "http://www.w3.org/2000/svg" in icon.text
    for page in ("/", "/docs"):  # both pages name it, so browsers fetch the SVG, not a guess
        assert "href='/static/favicon.svg'" in client.get(page).text.replace('"', "'"), page
    assert client.get("/static/favicon.svg").content == icon.content


def test_stored_histogram_names_its_zoo(tmp_path: Path) -> None:
    """A histogram stored in a shipped config lacks the zoo name; the card fills it (else 'Training zoo : n')."""
    from wsl.serve.app import predictor_card

    hist = {"edges": [0.0, 0.5, 1.0], "counts": [1, 2], "n": 3, "split": "all"}
    cfg = {"training": {"zoo_name": "digits-cnn-gs", "num_train": 3}, "target_histogram": hist}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert predictor_card("p", str(tmp_path))["histogram"] == {**hist, "zoo": "digits-cnn-gs"}
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "target_histogram": {**hist, "zoo": "own"}}))
    assert predictor_card("p", str(tmp_path))["histogram"]["zoo"] == "own"


def test_examples(client: TestClient, serve_env: ServeEnv) -> None:  # noqa: F811
    listed = client.get("/v1/examples").json()["examples"]
    assert [e["file"] for e in listed] == [p.name for p in serve_env.example_files]
    first = serve_env.example_files[0]
    r = client.get(f"/v1/examples/{first.name}")
    assert r.status_code == 200 and r.content == first.read_bytes()
    assert client.get("/v1/examples/examples.json").status_code == 404


@pytest.fixture(scope="module")
def server(serve_env: ServeEnv) -> Iterator[Server]:  # noqa: F811
    """A real `wsl serve` subprocess (uvicorn) over the session's models directory."""
    with running_server(serve_env, "--max-upload-mb", "1", "--queue", "32") as srv:
        yield srv


def test_cli_and_service_give_identical_numbers(serve_env: ServeEnv, server: Server) -> None:  # noqa: F811
    """`wsl predict FILE --json` (a subprocess) and a real `wsl serve` (a subprocess) agree exactly."""
    import os

    env = {**os.environ, "WSL_MODELS_DIR": str(serve_env.models)}
    files = [*serve_env.example_files]
    out = subprocess.run([sys.executable, "-m", "wsl", "predict", *map(str, files), "--json"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    cli = [json.loads(line) for line in out.splitlines()]
    assert len(cli) == len(files)
    for path, want in zip(files, cli):
        boundary = "wslboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
            f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(server.url + "/v1/predict", body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = json.loads(r.read())
        assert {k: got[k] for k in NUMBERS} == {k: want[k] for k in NUMBERS}


def test_load_short(serve_env: ServeEnv, server: Server) -> None:  # noqa: F811
    """A short form of benchmarks/serve_load.py: 20 concurrent clients, good and bad uploads, nothing lost."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import serve_load
    finally:
        sys.path.pop(0)
    cases = serve_load.make_cases(serve_env.example_files, str(serve_env.predictor))
    n = 200
    report = serve_load.run_load(server.url, cases, clients=20, requests=n, max_seconds=120, server_pid=server.pid)
    assert report.lost == 0 and report.wrong == [], report.wrong[:5]
    assert report.ok + report.rejected == report.sent == n
    assert report.ok == sum(1 for i in range(n) if cases[i % len(cases)].status == 200)
    assert report.peak_rss_mb > 0 and len(report.hwm_mb) >= 2  # the server and its worker


def test_predict_from_a_hub_repo(serve_env: ServeEnv, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                 tmp_path: Path) -> None:
    """A loopback fake Hub: the worker resolves hf:// like the CLI does, errors keep their meaning."""
    from hub_server import FakeHub

    from wsl.serve import create_app

    hub = FakeHub().start()
    try:
        hub.add_repo("org/tiny", {"model.safetensors": serve_env.example_files[0].read_bytes()})
        hub.add_repo("org/empty", {"README.md": "nothing here"})
        monkeypatch.setenv("HF_ENDPOINT", hub.url)  # read by the worker processes when they import the client
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("HF_TOKEN", hub.token)
        app = create_app([str(serve_env.predictor)], 5)
        with TestClient(app) as c:
            r = c.post("/v1/predict/hub", json={"uri": "hf://org/tiny"})
            assert r.status_code == 200, r.text
            local = c.post("/v1/predict", files={"file": ("m.safetensors", serve_env.example_files[0].read_bytes())})
            assert r.json()["predicted_test_accuracy"] == local.json()["predicted_test_accuracy"]
            assert r.json()["source"] == "hf://org/tiny"
            missing = c.post("/v1/predict/hub", json={"uri": "hf://org/missing"})
            assert missing.status_code == 404 and missing.json()["error"]["code"] == "hub_not_found"
            empty = c.post("/v1/predict/hub", json={"uri": "hf://org/empty"})
            assert empty.status_code in (404, 422), empty.text
            assert str(tmp_path) not in empty.text  # server paths never leak
    finally:
        hub.stop()


def test_service_worker_matches_predict_on_the_shipped_predictors() -> None:
    """With several predictors loaded, a worker picks the same one as wsl.predict (closest training
    family) and gives the same numbers, whatever this process's thread count."""
    import torch

    from wsl.predict import predict
    from wsl.predict.shipped import models_dir, shipped
    from wsl.serve.validate import WorkerState, handle_job, prevalidate

    found = shipped()
    if len(found) < 2 or models_dir() is None:
        pytest.skip("needs the repository's shipped predictors (models/)")
    state = WorkerState({name: str(path) for name, path, _ in found})
    examples = sorted((models_dir() / "examples").glob("*.safetensors"))  # type: ignore[operator]
    assert examples
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        used = set()
        for path in examples:
            want = predict(path).to_json()
            job = {"kind": "file", "path": str(path), "filename": path.name,
                   "format": prevalidate(path, path.name)}
            got = handle_job(state, job)
            assert got["ok"], got
            assert {k: got["prediction"][k] for k in NUMBERS} == {k: want[k] for k in NUMBERS}, path.name
            used.add(want["predictor"])
        assert len(used) >= 2  # both shipped predictors were chosen for some example
    finally:
        torch.set_num_threads(threads)
