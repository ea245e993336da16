"""Tiny INR zoos for the INR tests, generated with the shipped recipes (a few images, a few dozen steps)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"digits": ROOT / "zoos" / "digits-siren.yaml", "mnist1d": ROOT / "zoos" / "mnist1d-siren.yaml"}


def make_inr_zoo(out: Path, dataset: str = "digits", images: int = 6, steps: int = 40, seed: int = 0) -> Path:
    """Generate ``images`` images' INRs (the recipe's fits per image) for ``steps`` steps into ``out``."""
    from wsl.zoo.generate import generate

    generate(RECIPES[dataset], out, num_models=images, epochs=steps, seed=seed, device="cpu", progress=False,
             workers=1)
    return out
