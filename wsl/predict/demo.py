"""``wsl demo``: predict bundled held-out checkpoints and compare with their true accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable

from wsl.errors import PredictionError, WslError
from wsl.predict.examples import load_examples
from wsl.predict.shipped import models_dir, shipped


def run(fallback: Callable[[], int] | None = None) -> int:
    """Predict the bundled examples; without shipped predictors or examples run ``fallback`` (else raise)."""
    root = models_dir()
    examples = load_examples(root / "examples") if root else []
    if not shipped() or not examples:
        if fallback is None:
            raise PredictionError("wsl demo: no shipped predictors or held-out examples found in this installation")
        print("(no shipped predictors or examples found; showing the weight-space demo instead)\n")
        return fallback()
    from wsl.predict import predict

    assert root is not None
    print("wsl demo: predicting the test accuracy of held-out networks from their weights alone (no data)\n")
    print(f"{'example':<34} {'zoo':<16} {'params':>7} {'predicted':>9} {'interval':>15} {'true':>6}  predictor")
    t0 = time.time()
    errs, levels = [], {}
    for e in examples:
        try:
            p = predict(root / "examples" / e["file"])
        except WslError as err:
            print(f"{e['file'][:34]:<34} error: {err}")
            continue
        lo, hi = p.interval or (float("nan"), float("nan"))
        if p.interval_level is not None and p.interval_coverage is not None:
            levels[p.predictor] = (f"{p.predictor} {p.interval_level:.0%} (covers {p.interval_coverage:.1%} of its "
                                   "test split)")
        errs.append(abs(p.predicted_test_accuracy - e["test_accuracy"]))
        print(f"{e['model_id'][:34]:<34} {e['zoo'][:16]:<16} {e['num_parameters']:>7,} "
              f"{p.predicted_test_accuracy:>9.3f} {f'[{lo:.2f}, {hi:.2f}]':>15} {e['test_accuracy']:>6.3f}  "
              f"{p.predictor}")
        for w in p.warnings:
            print(f"{'':<34} warning: {w}")
    if errs:
        print(f"\nmean absolute error {sum(errs) / len(errs):.3f} over {len(errs)} held-out networks "
              f"({time.time() - t0:.1f} s). Predictors: {', '.join(n for n, _, _ in shipped())} "
              f"(cards in {root}).")
    if levels:
        print(f"Intervals, nominal level and measured coverage: {'; '.join(levels.values())}.")
    return 0
