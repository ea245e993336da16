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
