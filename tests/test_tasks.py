"""Tests for wsl.tasks: targets, splits, inputs, augmentation, baselines (on tiny synthetic zoos)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsl.errors import WslError

SPLITS = ("train", "train", "train", "val", "test")


def _archs(mixed: bool) -> list[torch.nn.Module]:
    from wsl.archs import mlp, small_cnn

    out = [small_cnn(channels=(4, 4), activation="relu")]
    if mixed:
        out += [small_cnn(channels=(4, 6), kernel_size=3, norm="batch", activation="tanh"), mlp([64, 8, 10])]
    return out


def make_tiny_zoo(root: Path, n_models: int = 40, mixed: bool = False, seed: int = 0,
                  dataset: dict[str, Any] | None = None) -> Path:
    """A synthetic zoo: random small CNNs (and MLPs if ``mixed``) with 2 checkpoints each.

    Weights are Gaussian with a per-model scale; ``test_accuracy`` is a smooth
    function of the weights (so it is learnable from them) plus a little noise,
    ``train_accuracy`` is a bit higher. Splits are explicit: models 3 and 4
    of every 5 are val and test.
    """
    from wsl.zoo import ZooWriter

    g = torch.Generator().manual_seed(seed)
    archs = _archs(mixed)
    with ZooWriter(root, name="tiny", dataset=dataset or {"name": "synthetic"}, recipe={"kind": "random"}) as w:
        ids = [w.add_architecture(m) for m in archs]
        for a, (aid, module) in enumerate(zip(ids, archs)):
            names = list(module.state_dict())
            ref = module.state_dict()
            count = n_models if a == 0 else n_models // 2
            scales = torch.exp(torch.rand(count, generator=g) * 2.5 - 2.0)
            stacked: dict[str, list[torch.Tensor]] = {n: [] for n in names}
            rows = []
            for i in range(count):
                last = None
                for epoch in (1, 2):
                    s = float(scales[i]) * (0.7 if epoch == 1 else 1.0)
                    sd = {}
                    for n in names:
                        t = ref[n]
                        sd[n] = (torch.randn(t.shape, generator=g) * s if t.is_floating_point() else t.clone())
                        if n.endswith("running_var"):
                            sd[n] = sd[n].abs() + 0.5
                        stacked[n].append(sd[n])
                    w_last = sd[[n for n in names if n.endswith("weight")][-1]]
                    acc = 0.15 + 0.8 / (1 + math.exp(-3 * (math.log(s) + 0.8))) - 0.05 * float(w_last.mean())
                    acc = min(max(acc + 0.01 * float(torch.randn((), generator=g)), 0.0), 1.0)
                    last = acc
                    rows.append({"model_id": f"a{a}-m{i}", "epoch": epoch, "seed": i, "split": SPLITS[i % 5],
                                 "hparams": {"lr": s / 10, "init_std": s, "optimizer": ["sgd", "adam"][i % 2]},
                                 "train_accuracy": min(1.0, acc + 0.05), "test_accuracy": acc,
                                 "train_loss": 1 - acc, "test_loss": 1.1 - acc})
                assert last is not None
            w.append(aid, {n: torch.stack(v) for n, v in stacked.items()}, rows)
    return root


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_zoo(tmp_path_factory.mktemp("zoo") / "tiny", n_models=40)


@pytest.fixture(scope="module")
def wild_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_zoo(tmp_path_factory.mktemp("zoo") / "wild", n_models=30, mixed=True, seed=1)


def test_targets_checkpoints_and_splits(tiny_zoo: Path) -> None:
    import wsl
    from wsl.tasks.generalization import select_rows, target_values

    zoo = wsl.load_zoo(tiny_zoo)
    last = select_rows(zoo, "train", "last")
    every = select_rows(zoo, "train", "all")
    assert len(every) == 2 * len(last) == 48
    assert set(last.column("epoch").tolist()) == {2}
    assert set(select_rows(zoo, "val").column("split").tolist()) == {"val"}
    gap = target_values(last, "gap")
    np.testing.assert_allclose(gap, last.column("train_accuracy") - last.column("test_accuracy"))
    assert len(select_rows(zoo, "train", max_rows=5)) == 5
    from wsl.errors import ConfigError

    with pytest.raises(ConfigError, match="checkpoints"):
        select_rows(zoo, "train", "first")


@pytest.mark.parametrize("kind", ["features", "graph", "stats"])
def test_prepare_split_inputs_match_rows(tiny_zoo: Path, kind: str) -> None:
    import wsl
    from wsl.graph import WeightSpaceFeatures, build
    from wsl.tasks.statnn import statnn_features
    from wsl.tasks.generalization import prepare_split

    zoo = wsl.load_zoo(tiny_zoo)
    d = prepare_split(zoo, "val", "val", kind)
    assert len(d) == 8 and d.y.dtype == torch.float32
    view = zoo.split("val").latest()
    np.testing.assert_allclose(d.y.numpy(), view.column("test_accuracy"), rtol=1e-6)
    idx = torch.tensor([5, 0, 3])
    x, order = d.inputs(idx)
    assert order.tolist() == [5, 0, 3]
    space = view[0].space
    stacked = view.stacked(idx.numpy())
    if kind == "features":
        ref = WeightSpaceFeatures.from_state_dicts(space, stacked)
        for k in ref.blocks:
            assert torch.equal(x.blocks[k], ref.blocks[k])
    elif kind == "graph":
        ref = build(space, stacked)
        for key in ("x", "edge_attr", "edge_index", "edge_mask", "node_kind", "batch"):
            assert torch.equal(getattr(x, key), getattr(ref, key)), key
    else:
        assert torch.allclose(x, statnn_features(space, stacked).float())


def test_mixed_architecture_graph_batches_keep_targets_aligned(wild_zoo: Path) -> None:
    import wsl
    from wsl.tasks.generalization import prepare_split

    zoo = wsl.load_zoo(wild_zoo)
    d = prepare_split(zoo, "train", "train", "graph")
    assert len(d.groups) == 3
    with pytest.raises(WslError, match="one architecture"):
        prepare_split(zoo, "train", "train", "features")
    idx = torch.tensor([len(d) - 1, 0, 20, 1])  # mixes architectures
    batch, order = d.inputs(idx)
    assert sorted(order.tolist()) == sorted(idx.tolist()) and batch.num_graphs == 4
    archs = d.info["archs"]
    rows = zoo.rows
    for gi, pos in enumerate(order.tolist()):
        row = rows[int(d.rows[pos])]
        assert batch.arch[gi] == zoo[int(d.rows[pos])].space.signature
        assert row["arch"] in archs
    # the first graph of the batch has exactly its own row's weights on its edges
    from wsl.graph import build_one

    g0 = build_one(zoo[int(d.rows[int(order[0])])].space, zoo[int(d.rows[int(order[0])])].state_dict())
    assert torch.equal(batch.get_example(0).edge_attr[:, : g0.edge_attr.shape[1]], g0.edge_attr)


def test_permutation_augmentation_preserves_function(tiny_zoo: Path) -> None:
    import wsl
    from wsl.tasks.generalization import augment_stacked
    from wsl.train.config import AugmentConfig

    zoo = wsl.load_zoo(tiny_zoo)
    view = zoo.split("train").latest()
    space = view[0].space
    stacked = view.stacked([0, 1, 2])
    gen = torch.Generator().manual_seed(0)
    out = augment_stacked(space, stacked, AugmentConfig(permute=True), gen)
    assert any(not torch.equal(out[k], stacked[k]) for k in stacked)
    x = torch.randn(4, 1, 8, 8)
    for i in range(3):
        m1, m2 = view[i].module(), view[i].module()
        m2.load_state_dict({k: v[i] for k, v in out.items()})
        torch.testing.assert_close(m1(x), m2(x), rtol=1e-5, atol=1e-5)
    noisy = augment_stacked(space, stacked, AugmentConfig(noise=0.1), torch.Generator().manual_seed(0))
    w = "0.weight"
    rel = (noisy[w] - stacked[w]).flatten(1).std(1) / stacked[w].flatten(1).std(1)
    assert torch.all((rel > 0.05) & (rel < 0.2))
    same = augment_stacked(space, stacked, AugmentConfig(noise=0.1), torch.Generator().manual_seed(0))
    assert torch.equal(same[w], noisy[w])


def test_augmented_batches(tiny_zoo: Path) -> None:
    import wsl
    from wsl.tasks.generalization import prepare_split
    from wsl.train.config import AugmentConfig

    zoo = wsl.load_zoo(tiny_zoo)
    aug = AugmentConfig(permute=True, noise=0.0)
    for kind in ("features", "graph", "stats"):
        d = prepare_split(zoo, "train", "train", kind)
        idx = torch.tensor([2, 7])
        plain, _ = d.inputs(idx)
        x, order = d.inputs(idx, aug, torch.Generator().manual_seed(3))
        assert order.tolist() == [2, 7]
        if kind == "stats":  # statistics are permutation invariant
            assert torch.allclose(plain, x)
        elif kind == "graph":  # same multiset of edge weights, different order
            assert torch.equal(plain.edge_attr.sum(0), x.edge_attr.sum(0)) or torch.allclose(
                plain.edge_attr.sum(0), x.edge_attr.sum(0))
            assert not torch.equal(plain.edge_attr, x.edge_attr)


# ------------------------------------------------------------------------------------------------ baselines
def test_tensor_stats_match_numpy() -> None:
    from wsl.nn.stats import tensor_stats

    v = torch.randn(3, 17, dtype=torch.float64)
    s = tensor_stats(v).numpy()
    a = v.numpy()
    ref = np.concatenate([a.mean(1, keepdims=True), a.std(1, keepdims=True),
                          np.percentile(a, [0, 25, 50, 75, 100], axis=1).T], axis=1)
    np.testing.assert_allclose(s, ref, rtol=1e-12)


def test_statnn_layouts(tiny_zoo: Path, wild_zoo: Path) -> None:
    import wsl
    from wsl.tasks.statnn import NUM_BUCKET_FEATURES, statnn_matrix

    tiny = wsl.load_zoo(tiny_zoo).latest()
    per = statnn_matrix(tiny)  # 6 float tensors x 7
    assert per.shape == (len(tiny), 6 * 7)
    wild = wsl.load_zoo(wild_zoo).latest()
    b = statnn_matrix(wild)
    assert b.shape == (len(wild), NUM_BUCKET_FEATURES) and np.isfinite(b).all()
    from wsl.errors import ConfigError

    with pytest.raises(ConfigError, match="one architecture"):
        statnn_matrix(wild, "per_tensor")


def test_hparam_encoder() -> None:
    from wsl.tasks.baselines import HParamEncoder

    enc = HParamEncoder().fit([{"lr": 0.1, "opt": "sgd", "sub": {"d": 1}}, {"lr": 0.01, "opt": "adam"}])
    x = enc.transform([{"lr": 0.001, "opt": "adam"}, {"opt": "rmsprop", "sub": {"d": 2}}])
    assert enc.feature_names == ["lr", "sub.d", "opt=adam", "opt=sgd"]
    np.testing.assert_allclose(x[0, [0, 2, 3]], [-3.0, 1.0, 0.0])
    assert math.isnan(x[0, 1]) and math.isnan(x[1, 0]) and x[1, 1] == 2 and x[1, 2:].sum() == 0


@pytest.mark.parametrize("name", ["statnn_gbt", "statnn_linear", "hparams_gbt"])
def test_fit_baseline(tiny_zoo: Path, wild_zoo: Path, name: str) -> None:
    from wsl.tasks.baselines import fit_baseline

    res = fit_baseline(name, tiny_zoo, seed=0)
    assert res["n_train"] == 24 and res["val"]["n"] == 8 and res["test"]["n"] == 8
    for split in ("val", "test"):
        assert set(res[split]) == {"tau", "r2", "mae", "n"}
    # the synthetic target is a smooth function of the weight scale: StatNN should rank test models well
    if name != "statnn_linear":
        assert res["test"]["tau"] > 0.3
    wild = fit_baseline(name, wild_zoo, seed=0, target="gap", checkpoints="all")
    assert wild["n_train"] == 2 * 36 and wild["layout"] in ("buckets", "hparams")


def test_fit_baseline_errors(tiny_zoo: Path) -> None:
    from wsl.errors import ConfigError
    from wsl.tasks.baselines import fit_baseline

    with pytest.raises(ConfigError, match="unknown baseline"):
        fit_baseline("statnn_xgb", tiny_zoo)
    with pytest.raises(ConfigError, match="not a numeric field"):
        fit_baseline("hparams_gbt", tiny_zoo, target="model_id")


def test_feature_augmentation_equals_weight_augmentation(tiny_zoo: Path) -> None:
    """Permuting features directly == featurizing permuted weights (same generator draws)."""
    import wsl
    from wsl.graph import WeightSpaceFeatures
    from wsl.tasks.generalization import augment_features, augment_stacked
    from wsl.train.config import AugmentConfig

    view = wsl.load_zoo(tiny_zoo).split("train").latest()
    space, stacked = view[0].space, view.stacked([0, 4, 9])
    aug = AugmentConfig(permute=True)
    a = augment_features(WeightSpaceFeatures.from_state_dicts(space, stacked), aug, torch.Generator().manual_seed(5))
    b = WeightSpaceFeatures.from_state_dicts(space, augment_stacked(space, stacked, aug,
                                                                    torch.Generator().manual_seed(5)))
    for k in a.blocks:
        assert torch.equal(a.blocks[k], b.blocks[k])
