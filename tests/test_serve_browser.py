"""The web page in a real headless Chromium (Playwright driving Debian's ``chromium``), against ``wsl serve``.

Uploads a bundled example through the file picker and through the example
button, reads the prediction off the page and checks it equals the API's
number; checks the histogram, the architecture table, an error display, that
the page made no request off this machine and logged no error (a CSP
violation or a script error would). Skipped only when Chromium or Playwright
is missing *and* ``CI`` is unset: in CI (``.ci/run`` installs chromium and
exports ``CI=1``) a missing browser fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest

from serve_fixtures import ServeEnv, Server, running_server, serve_env  # noqa: F401

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _chromium() -> str:
    path = os.environ.get("WSL_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing = f"the playwright Python package is not installed ({exc})"
    else:
        if Path(path).is_file():
            return path
        missing = f"no chromium at {path} (apt-get install chromium)"
    if _in_ci():
        pytest.fail(f"browser test cannot run in CI: {missing}", pytrace=False)
    pytest.skip(missing)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    path = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(serve_env: ServeEnv) -> Iterator[Server]:  # noqa: F811
    with running_server(serve_env) as srv:
        yield srv


def api_predict(url: str, path: Path) -> dict[str, Any]:
    boundary = "browsertest"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n\r\n"
            ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/v1/predict", body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


@pytest.fixture
def page(browser: Any, server: Server) -> Iterator[Any]:
    """A fresh page on the service; records console errors and refuses any request off loopback."""
    context = browser.new_context()
    pg = context.new_page()
    pg.errors, pg.offsite = [], []
    pg.on("console", lambda m: pg.errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    own = urlsplit(server.url).netloc

    def guard(route: Any) -> None:
        if urlsplit(route.request.url).netloc == own:
            route.continue_()
        else:
            pg.offsite.append(route.request.url)
            route.abort()

    pg.route("**/*", guard)
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready='1']")
    pg.wait_for_selector("#predictor-select option[value='tiny-serve']", state="attached")
    try:
        yield pg
    finally:
        context.close()


def _result(pg: Any) -> float:
    pg.wait_for_selector("#result:not([hidden])", timeout=60_000)
    return float(pg.get_attribute("#result-accuracy", "data-value"))


def test_upload_an_example_and_read_the_prediction(page: Any, server: Server, serve_env: ServeEnv,  # noqa: F811
                                                   tmp_path: Path) -> None:
    example = serve_env.example_files[1]
    want = api_predict(server.url, example)
    page.set_input_files("#file-input", str(example))
    page.click("#predict-button")
    assert _result(page) == want["predicted_test_accuracy"]
    shown = page.inner_text("#result-accuracy")
    assert shown == f"{100 * want['predicted_test_accuracy']:.1f}%"
    assert page.inner_text("#result-source") == example.name
    assert page.inner_text("#result-predictor") == want["predictor"]
    lo, hi = want["interval"]
    assert f"{100 * lo:.1f}%" in page.inner_text("#result-interval")
    assert f"{100 * hi:.1f}%" in page.inner_text("#result-interval")
    assert page.locator("#histogram svg rect.bar").count() == 20
    assert page.locator("#histogram svg line.marker").count() == 1
    assert "training zoo" in page.inner_text("#histogram-caption").lower()
    table = page.inner_text("#arch-table")
    assert "238" in table and str(want["architecture"]["num_edges"]) in table
    assert page.get_attribute("#upload-progress", "value") in ("100", None)
    assert page.is_hidden("#progress") and page.is_hidden("#error")
    page.screenshot(path=str(tmp_path / "result.png"), full_page=True)
    assert page.errors == [] and page.offsite == []


def test_example_button_and_error_display(page: Any, server: Server, serve_env: ServeEnv,  # noqa: F811
                                          tmp_path: Path) -> None:
    first = serve_env.example_files[0]
    want = api_predict(server.url, first)["predicted_test_accuracy"]
    page.wait_for_selector("#examples:not([hidden]) button.example")
    assert page.locator("button.example").count() == len(serve_env.example_files)
    page.click(f"button.example[data-file='{first.name}']")
    assert _result(page) == want
    assert page.inner_text("#result-source") == first.name
    bad = tmp_path / "notes.txt"
    bad.write_text("not a checkpoint")
    page.set_input_files("#file-input", str(bad))
    page.click("#predict-button")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error-code") == "unsupported_media_type"
    assert page.is_hidden("#result")
    cards = page.inner_text("#predictor-cards")
    assert "tiny-serve" in cards and "Kendall" in cards
    assert page.offsite == []
    assert all("415" in e for e in page.errors), page.errors  # only the browser's note about the 415 response


def _answer(page: Any, value: float, interval: list[float], coverage: float | None = None) -> None:
    """Make /v1/predict answer ``value`` with ``interval`` (the edge cases a real tiny predictor never hits)."""
    body = {"source": "edge.safetensors", "predicted_test_accuracy": value, "interval": interval,
            "interval_level": 0.9, "interval_coverage": coverage, "predictor": "tiny-serve", "warnings": [],
            "architecture": {}}
    page.unroute("**/v1/predict")
    page.route("**/v1/predict", lambda r: r.fulfill(status=200, content_type="application/json",
                                                    body=json.dumps(body)))
    page.set_input_files("#file-input", files=[{"name": "edge.safetensors", "mimeType": "application/octet-stream",
                                                "buffer": b"unused"}])
    page.click("#predict-button")
    page.wait_for_selector(f"#result-accuracy[data-value='{value:g}']")  # JS String(): 1, 0, 0.5 (no eval: CSP)


def _box(page: Any, selector: str) -> dict[str, float]:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return {left: r.left, right: r.right, width: r.width}; }")


def test_histogram_edges_label_interval_and_caption(page: Any, tmp_path: Path) -> None:
    """At 100% and 0% the marker label stays inside the figure; a one-value interval is still shaded;
    the caption reads 'Training zoo NAME: n models' (and 'Training zoo: n' without a name)."""
    for value in (1.0, 0.0, 0.5):
        _answer(page, value, [value, value])
        svg, label = _box(page, "#histogram svg"), _box(page, "#histogram svg .marker-label")
        assert svg["left"] <= label["left"] and label["right"] <= svg["right"], (value, svg, label)
        band = _box(page, "#histogram svg rect.band")
        assert band["width"] >= 10 and svg["left"] <= band["left"] and band["right"] <= svg["right"], band
        seen = page.eval_on_selector("#histogram svg rect.band", "b => { const r = b.getBoundingClientRect(); "
                                     "const e = document.elementFromPoint(r.left + 2, r.bottom - 3); return e === b; }")
        assert seen, f"the one-value interval at {value} is hidden behind the bars"
        caption = page.inner_text("#histogram-caption")
        assert caption.startswith("Training zoo tiny-serve: 40 models") and "single value" in caption, caption
        page.screenshot(path=str(tmp_path / f"edge-{value}.png"), full_page=True)
    _answer(page, 0.62, [0.55, 0.70], coverage=0.883)
    assert "single value" not in page.inner_text("#histogram-caption")
    assert page.inner_text("#result-interval") == "90% interval: 55.0% – 70.0% (held for 88.3% of test networks)"
    assert _box(page, "#histogram svg rect.band")["width"] > 14

    def nameless(route: Any) -> None:  # a card whose histogram names no zoo
        cards = route.fetch().json()["predictors"]
        for c in cards:
            c["histogram"].pop("zoo", None)
        route.fulfill(json={"predictors": cards})

    page.route("**/v1/predictors", nameless)
    page.reload()
    page.wait_for_selector("#predictor-select option[value='tiny-serve']", state="attached")
    _answer(page, 0.62, [0.55, 0.70])
    assert page.inner_text("#histogram-caption").startswith("Training zoo: 40 models")
    assert page.errors == [] and page.offsite == []
