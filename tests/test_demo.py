"""``wsl demo``: predictions on the bundled examples, else the CLI's weight-space demo (passed in by the CLI)."""

from __future__ import annotations

import pytest

from wsl.cli import main
from wsl.errors import PredictionError
from wsl.predict import demo


def test_demo_without_shipped_predictors_runs_the_cli_fallback(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(demo, "shipped", lambda: [])
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "showing the weight-space demo instead" in out
    assert "random permutation of all hidden units: max output change" in out


def test_demo_without_shipped_predictors_or_fallback_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "shipped", lambda: [])
    with pytest.raises(PredictionError, match="no shipped predictors"):
        demo.run()
