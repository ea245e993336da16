"""INR zoos and rendering: renders equal the training images, splits keep images apart, `wsl render`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from inr_fixtures import make_inr_zoo


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import os

    os.environ.setdefault("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    base = tmp_path_factory.mktemp("inr")
    seed = int(np.random.default_rng().integers(1000))
    return {"digits": make_inr_zoo(base / "digits", "digits", images=5, steps=60, seed=seed),
            "mnist1d": make_inr_zoo(base / "mnist1d", "mnist1d", images=4, steps=40, seed=seed)}


def _images(dataset: str) -> torch.Tensor:
    from wsl.zoo.data import digit_images, mnist1d_signals

    return digit_images(16)[0] if dataset == "digits" else mnist1d_signals()[0]


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_render_equals_the_training_image_within_the_recorded_fit_error(zoos: dict[str, Path], dataset: str) -> None:
    from wsl.tasks.inr import render, zoo_shape
    from wsl.zoo import load_zoo

    zoo = load_zoo(zoos[dataset])
    shape = zoo_shape(zoo)
    assert shape == ((16, 16) if dataset == "digits" else (40,))
    images = _images(dataset)
    fits = {"digits": 2, "mnist1d": 3}[dataset]
    assert len(zoo.model_ids()) == fits * (5 if dataset == "digits" else 4)
    for m in zoo:
        meta = m.metadata
        img = images[meta["image"]]
        got = render(m.module(), shape)
        assert got.shape == img.shape
        mse = float((got - img).square().mean())
        loss = meta["train_loss"]
        assert abs(mse - loss) <= 1e-4 * loss + 1e-9, (meta["model_id"], meta["epoch"], mse, loss)
    # the fits are real fits: every last checkpoint beats the best constant image (its mean) by far
    for m in zoo.latest():
        assert m.metadata["train_loss"] < 0.5 * float(images[m.metadata["image"]].var())


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
def test_batched_renderer_matches_module_render(zoos: dict[str, Path], dataset: str) -> None:
    from wsl.tasks.inr import Renderer, render, zoo_shape
    from wsl.zoo import load_zoo

    zoo = load_zoo(zoos[dataset])
    shape = zoo_shape(zoo)
    idx = np.random.default_rng(1).permutation(len(zoo))[:5]
    view = zoo[idx]
    rend = Renderer(zoo.architectures[view[0].arch_id]["arch"], shape)
    stacked = view.stacked()
    batch = rend(stacked)
    for j in range(len(view)):
        assert torch.allclose(batch[j], render(view[j].module(), shape), atol=1e-5)
    stacked = {k: v.clone().requires_grad_(True) for k, v in stacked.items()}
    rend(stacked).square().sum().backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in stacked.values())


def test_splits_keep_all_fits_of_an_image_together(tmp_path: Path) -> None:
    from wsl.zoo import load_zoo

    seed = int(np.random.default_rng().integers(1000))
    for dataset, n in (("digits", 40), ("mnist1d", 40)):
        zoo = load_zoo(make_inr_zoo(tmp_path / dataset, dataset, images=n, steps=1, seed=seed))
        split_of: dict[int, str] = {}
        for m in zoo:
            meta = m.metadata
            assert split_of.setdefault(meta["image"], meta["split"]) == meta["split"], meta["model_id"]
        assert len(split_of) == n
        by_split = {s: {i for i, t in split_of.items() if t == s} for s in ("train", "val", "test")}
        assert by_split["train"] and sum(map(len, by_split.values())) == n
        assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
        # the split is a function of the image index alone (not of the fit or the generation seed)
        from wsl.zoo.format import assign_split

        for i, s in split_of.items():
            assert assign_split(f"image{i:04d}", zoo.card["splits"]) == s


def test_render_errors(zoos: dict[str, Path]) -> None:
    from wsl.tasks.inr import INRError, Renderer, render, zoo_shape
    from wsl.zoo import load_zoo

    zoo = load_zoo(zoos["digits"])
    module = zoo[0].module()
    with pytest.raises(INRError, match="2-dimensional coordinates"):
        render(module, (40,))
    with pytest.raises(INRError, match="positive ints"):
        render(module, (16, 0))
    with pytest.raises(INRError, match="1-dimensional coordinates"):
        Renderer(zoo.architectures[zoo[0].arch_id]["arch"], (40,))
    from test_tasks import make_tiny_zoo

    with pytest.raises(INRError, match="resolution"):
        zoo_shape(load_zoo(make_tiny_zoo(Path(zoos["digits"]).parent / "cnn", n_models=5)))


def test_cli_render(zoos: dict[str, Path], tmp_path: Path) -> None:
    from wsl.cli import main
    from wsl.io import save_module
    from wsl.zoo import load_zoo

    out = tmp_path / "grid.png"
    assert main(["render", "--zoo", str(zoos["digits"]), "--rows", "0:6", "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert main(["render", "--zoo", str(zoos["mnist1d"]), "--rows", "1,3", "--split", "train",
                 "-o", str(tmp_path / "m.png")]) == 0
    ckpt = save_module(load_zoo(zoos["digits"])[0].module(), tmp_path / "inr.safetensors")
    assert main(["render", str(ckpt), "-o", str(tmp_path / "one.png")]) == 2  # no shape recorded: says so
    assert main(["render", str(ckpt), "--shape", "16x16", "-o", str(tmp_path / "one.png")]) == 0
    assert main(["render", f"{zoos['digits']}:3", str(ckpt), "--shape", "16x16", "-o", str(tmp_path / "two.png")]) == 0
    assert main(["render", "--zoo", str(zoos["digits"]), "--rows", "999", "-o", str(tmp_path / "x.png")]) == 2
    assert main(["render", "--zoo", str(zoos["digits"]), "-o", str(tmp_path / "x.jpg")]) == 2
