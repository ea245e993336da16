"""INR tasks: equivariant editing heads, sign symmetries, edits, baselines, data splits, configs, trainers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inr_fixtures import make_inr_zoo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 digit images x 2 fits, 25 steps: every split holds images (splits are a function of the image index)."""
    return make_inr_zoo(tmp_path_factory.mktemp("inr") / "digits", "digits", images=40, steps=25,
                        seed=int(np.random.default_rng().integers(1000)))


def _siren(hidden: tuple[int, ...] = (8, 6), d: int = 2) -> tuple[Any, dict[str, Any]]:
    from wsl.archs.describe import build
    from wsl.space import WeightSpace
    from wsl.zoo.siren import siren_description

    desc = siren_description(list(hidden), 30.0, d)
    return WeightSpace.from_module(build(desc)), desc


def _random_stacked(space: Any, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.randn(n, *t.shape, generator=g) * 0.5 for k, t in space.tensors.items()}


def _randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """Random values everywhere (the editing heads start at zero, which would make equivariance trivial)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@pytest.mark.parametrize("name", ["np", "hnp", "nft", "nggnn", "ngt"])
def test_editing_head_is_exactly_permutation_equivariant(name: str) -> None:
    from wsl.graph import WeightSpaceFeatures, build
    from wsl.space import random_permutation
    from wsl.tasks.inr_editing import decode_update
    from wsl.train.registry import InputInfo, build_model

    seed = int(np.random.default_rng().integers(1 << 30))
    g = torch.Generator().manual_seed(seed)
    space, _ = _siren()
    graph = name in ("nggnn", "ngt")
    params = {"hidden": 16, "num_layers": 2} if graph else {"channels": 8} if name == "nft" else {"channels": [8, 8]}
    info = InputInfo("graph" if graph else "features", space, edge_dim=1 if graph else None, output="update")
    model = build_model(name, info, params).eval()
    _randomize(model, g)
    n = 3
    w = _random_stacked(space, n, g)
    perms = random_permutation(space, g, batch=n)
    w_perm = space.permute(w, perms, batched=True)

    def update(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = build(space, sd) if graph else WeightSpaceFeatures.from_state_dicts(space, sd)
        with torch.no_grad():
            return decode_update(space, model(x), n)

    u, u_perm = update(w), update(w_perm)
    assert max(float(v.abs().max()) for v in u.values()) > 1e-3  # not a zero map
    expected = space.permute(u, perms, batched=True)
    for k in u:
        assert torch.allclose(u_perm[k], expected[k], atol=1e-5, rtol=1e-4), (name, k, seed)


def test_flat_mlp_update_is_not_equivariant() -> None:
    """The check above can fail: the flat MLP baseline (no symmetry) breaks it."""
    from wsl.graph import WeightSpaceFeatures
    from wsl.space import random_permutation
    from wsl.train.registry import InputInfo, build_model

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    space, _ = _siren()
    model = build_model("flat_mlp", InputInfo("features", space, output="update"), {"hidden": [32]}).eval()
    _randomize(model, g)
    w = _random_stacked(space, 2, g)
    perms = random_permutation(space, g, batch=2)
    with torch.no_grad():
        u = model(WeightSpaceFeatures.from_state_dicts(space, w))
        u_perm = model(WeightSpaceFeatures.from_state_dicts(space, space.permute(w, perms, batched=True)))
    expected = space.permute(u, perms, batched=True)
    assert max(float((u_perm[k] - expected[k]).abs().max()) for k in u) > 1e-3


def test_untrained_editing_models_are_the_identity_edit() -> None:
    from wsl.graph import WeightSpaceFeatures
    from wsl.train.registry import InputInfo, build_model

    space, _ = _siren()
    w = _random_stacked(space, 2, torch.Generator().manual_seed(0))
    for name in ("np", "hnp", "nft", "flat_mlp"):
        model = build_model(name, InputInfo("features", space, output="update"), {})
        with torch.no_grad():
            u = model(WeightSpaceFeatures.from_state_dicts(space, w))
        assert all(float(v.abs().max()) == 0.0 for v in u.values()), name


@pytest.mark.parametrize("d", [1, 2])
def test_sign_flips_preserve_the_function(d: int) -> None:
    from wsl.tasks.inr import Renderer
    from wsl.tasks.inr_symmetry import flip_signs, random_signs, sign_groups

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    space, desc = _siren((7, 5), d)
    groups = sign_groups(space, desc)
    assert sorted(groups) == sorted(gr.id for gr in space.groups if not gr.fixed)
    w = {k: v * 0.3 for k, v in _random_stacked(space, 4, g).items()}
    signs = random_signs(space, groups, g, 4)
    flipped = flip_signs(space, w, signs)
    assert any(not torch.equal(flipped[k], w[k]) for k in w)
    rend = Renderer(desc, (9,) * d)
    assert torch.allclose(rend(flipped), rend(w), atol=1e-5)
    # an even activation is refused rather than flipped wrongly
    from wsl.tasks.inr import INRError

    relu = {**desc, "layers": [dict(s, type="relu") if s["type"] == "sine" else s for s in desc["layers"]]}
    relu = {k: v for k, v in relu.items()}
    with pytest.raises(INRError, match="odd activations"):
        sign_groups(space, relu)


def test_edits() -> None:
    from wsl.tasks.inr import INRError
    from wsl.tasks.inr_edits import EDITS, apply_edit

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    x = torch.rand(5, 12, 12, generator=g) * 2 - 1
    dil, ero = apply_edit("dilate", x), apply_edit("erode", x)
    assert (dil >= x).all() and (ero <= x).all() and torch.equal(apply_edit("erode", -x), -dil)
    i, j = int(torch.randint(1, 11, (1,), generator=g)), int(torch.randint(1, 11, (1,), generator=g))
    dot = -torch.ones(1, 12, 12)
    dot[0, i, j] = 1.0
    assert int((apply_edit("dilate", dot) > 0).sum()) == 9 and int((apply_edit("erode", dot) > 0).sum()) == 0
    const = torch.full((2, 7, 9), 0.3)
    for e in EDITS:
        assert torch.allclose(apply_edit(e, const), const, atol=1e-6), e
    blurred = apply_edit("gaussian_blur", x)
    assert blurred.std() < x.std() and abs(float(blurred.mean() - x.mean())) < 0.05
    sig = torch.rand(3, 40, generator=g) * 2 - 1
    assert (apply_edit("dilate", sig) >= sig).all() and apply_edit("gaussian_blur", sig).shape == sig.shape
    c = apply_edit("contrast", x * 0.4)
    m = (x * 0.4).flatten(1).mean(1).view(-1, 1, 1)
    assert torch.allclose(c, (m + 1.5 * (x * 0.4 - m)).clamp(-1, 1))
    with pytest.raises(INRError, match="unknown edit"):
        apply_edit("sharpen", x)


def test_identity_baseline_scores_the_identity_mse(zoo_path: Path) -> None:
    from wsl.tasks.inr import render, zoo_shape
    from wsl.tasks.inr_baselines import run_inr_baseline
    from wsl.tasks.inr_edits import apply_edit
    from wsl.zoo import load_zoo

    zoo = load_zoo(zoo_path)
    edit = str(np.random.default_rng().choice(["dilate", "erode", "contrast", "gaussian_blur"]))
    res = run_inr_baseline("inr_editing", "identity", zoo, {}, edit=edit)
    test = zoo.split("test").latest()
    shape = zoo_shape(zoo)
    renders = torch.stack([render(m.module(), shape) for m in test])
    expected = float((renders - apply_edit(edit, renders)).square().flatten(1).mean(1).mean())
    assert res["test"]["n"] == len(test)
    assert abs(res["test"]["mse"] - expected) < 1e-6 and res["test"]["identity_mse"] == res["test"]["mse"]
    gd = run_inr_baseline("inr_editing", "gd_fit", zoo, {"steps": 15, "lr": 2e-3}, edit=edit)
    assert gd["test"]["mse"] < 0.8 * res["test"]["mse"] and gd["models_per_s"] > 0


def test_splits_keep_images_apart_and_mixed_splits_are_refused(zoo_path: Path) -> None:
    from wsl.tasks.inr import INRError
    from wsl.tasks.inr_data import check_disjoint_images, prepare_inr_split
    from wsl.zoo import load_zoo

    zoo = load_zoo(zoo_path)
    data = {r: prepare_inr_split(zoo, r, r, "features") for r in ("train", "val", "test")}
    assert all(len(d) > 0 for d in data.values())
    check_disjoint_images(data)
    sets = [set(d.images.tolist()) for d in data.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    shared = next(iter(sets[1]))
    data["train"].images = np.append(data["train"].images, shared)
    with pytest.raises(INRError, match=f"image {shared} has INRs in splits"):
        check_disjoint_images(data)


def test_inr_configs_load() -> None:
    from wsl.tasks.inr_baselines import INR_BASELINES
    from wsl.train.config import load_config
    from wsl.train.registry import MODELS

    files = sorted((ROOT / "configs" / "inr").glob("*.yaml"))
    assert len(files) >= 20
    for f in files:
        cfg = load_config(f)
        assert cfg.task in ("inr_classification", "inr_editing"), f
        assert cfg.data.zoo in ("zoos-out/digits-siren", "zoos-out/mnist1d-siren"), f
        assert cfg.model.name in MODELS or cfg.model.name in INR_BASELINES[cfg.task], f
        if cfg.model.name in MODELS and cfg.task == "inr_editing":
            assert MODELS[cfg.model.name].editor is not None, f
    from wsl.errors import ConfigError

    with pytest.raises(ConfigError, match="task is 'inr_segmentation'"):
        load_config(files[0], ["task=inr_segmentation"])
    with pytest.raises(ConfigError, match="inr.edit"):
        load_config(ROOT / "configs" / "inr" / "digits_edit_np.yaml", ["inr.edit=sharpen"])
    with pytest.raises(ConfigError, match="sign_flip is for INR tasks"):
        load_config(ROOT / "configs" / "generalization" / "gs_np.yaml", ["augment.sign_flip=true"])
    with pytest.raises(ConfigError, match="augment.noise"):
        load_config(ROOT / "configs" / "inr" / "digits_edit_np.yaml", ["augment.noise=0.1"])


def _cfg(zoo: Path, out: Path, task: str, model: dict[str, Any], **over: Any) -> Any:
    from wsl.train.config import load_config

    raw = {"task": task, "data": {"zoo": str(zoo)}, "model": model, "output": str(out),
           "train": {"epochs": 2, "batch_size": 16, "progress": False, "seed": 3},
           "augment": {"permute": True, "sign_flip": True}, "inr": {"edit": over.pop("edit", "dilate")}}
    raw.update(over)
    return load_config(raw=raw)


@pytest.mark.parametrize("model", [{"name": "np", "channels": [8, 8], "head_hidden": [32]},
                                   {"name": "ngt", "hidden": 16, "num_layers": 2},
                                   {"name": "render_cnn", "channels": [8], "hidden": 16}])
def test_classification_trainer(zoo_path: Path, tmp_path: Path, model: dict[str, Any]) -> None:
    from wsl.train.inr_editor import load_inr_model
    from wsl.train.run import train
    from wsl.zoo import load_zoo

    m = train(_cfg(zoo_path, tmp_path / "run", "inr_classification", model))
    assert m["task"] == "inr_classification" and m["num_classes"] == 10
    assert 0.0 <= m["test"]["accuracy"] <= 1.0 and m["models_per_s"] > 0
    clf = load_inr_model(tmp_path / "run")
    test = load_zoo(zoo_path).split("test").latest()
    logits = clf.logits(test.stacked())
    acc = float((logits.argmax(1) == torch.as_tensor(test.column("label"))).double().mean())
    assert abs(acc - m["test"]["accuracy"]) < 1e-9


@pytest.mark.parametrize("model", [{"name": "hnp", "channels": [8, 8]}, {"name": "nggnn", "hidden": 16,
                                                                          "num_layers": 2}])
def test_editing_trainer_and_saved_editor(zoo_path: Path, tmp_path: Path, model: dict[str, Any]) -> None:
    from wsl.tasks.inr import Renderer, zoo_shape
    from wsl.tasks.inr_edits import apply_edit
    from wsl.train.inr_editor import load_inr_model
    from wsl.train.run import train
    from wsl.zoo import load_zoo

    cfg = _cfg(zoo_path, tmp_path / "run", "inr_editing", model, edit="erode")
    cfg.optim.lr = 3e-3
    m = train(cfg)
    assert m["task"] == "inr_editing" and m["edit"] == "erode"
    from wsl.tasks.inr_baselines import run_inr_baseline

    ident = run_inr_baseline("inr_editing", "identity", load_zoo(zoo_path), {}, edit="erode")
    assert abs(m["test"]["identity_mse"] - ident["test"]["mse"]) < 1e-6
    assert (tmp_path / "run" / "edit_examples.png").is_file()
    editor = load_inr_model(tmp_path / "run")
    zoo = load_zoo(zoo_path)
    test = zoo.split("test").latest()
    rend = Renderer(zoo.architectures[test[0].arch_id]["arch"], zoo_shape(zoo))
    raw = test.stacked()
    before = rend(raw).detach()
    with torch.no_grad():
        mse = float((rend(editor.edit(raw)) - apply_edit("erode", before)).square().flatten(1).mean(1).mean())
    assert abs(mse - m["test"]["mse"]) < 1e-5


def test_editing_resume_equals_uninterrupted_run(zoo_path: Path, tmp_path: Path) -> None:
    """The INR trainers keep the Trainer's exact resume (augmentation RNG included)."""
    from wsl.io import load_safetensors
    from wsl.train.inr_trainers import INREditingTrainer

    cfg = _cfg(zoo_path, tmp_path / "full", "inr_editing", {"name": "np", "channels": [8]}, edit="gaussian_blur")
    cfg.train.epochs = 3
    full = INREditingTrainer(cfg, tmp_path / "full").fit()
    INREditingTrainer(cfg, tmp_path / "part").fit(stop_after=1)
    resumed = INREditingTrainer(cfg, tmp_path / "part", resume=True).fit()
    assert resumed["test"] == full["test"]
    a = load_safetensors(tmp_path / "full" / "inr_model" / "model.safetensors")
    b = load_safetensors(tmp_path / "part" / "inr_model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_output_affine_edit_is_exact_in_weight_space(zoo_path: Path) -> None:
    from wsl.tasks.inr import Renderer, zoo_shape
    from wsl.tasks.inr_baselines import affine_output, run_inr_baseline
    from wsl.zoo import load_zoo

    rng = np.random.default_rng()
    a, b = float(rng.uniform(0.5, 1.5)), float(rng.uniform(-0.5, 0.5))
    zoo = load_zoo(zoo_path)
    view = zoo.split("val").latest()
    desc = zoo.architectures[view[0].arch_id]["arch"]
    rend = Renderer(desc, zoo_shape(zoo))
    raw = view.stacked()
    with torch.no_grad():
        assert torch.allclose(rend(affine_output(view[0].space, desc, raw, a, b)), a * rend(raw) + b, atol=1e-5)
    res = run_inr_baseline("inr_editing", "output_affine", zoo, {}, edit="erode")
    assert res["test"]["mse"] < res["test"]["identity_mse"]  # erosion darkens: a shift/scale of the output helps
