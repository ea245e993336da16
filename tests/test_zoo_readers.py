"""wsl.zoo.readers and ``wsl zoo convert``: fixtures are written in the exact published layouts."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from wsl.archs import describe, mlp, small_cnn
from wsl.errors import WslError, ZooFormatError
from wsl.io import save_state_dict
from wsl.zoo import load_zoo
from wsl.zoo.readers import convert, open_source, read_table

# --------------------------------------------------------------------------- Small CNN Zoo
CONFIG_COLS = ["config.activation", "config.b_init", "config.dataset", "config.dnn_architecture",
               "config.dropout", "config.epochs", "config.epochs_between_checkpoints", "config.init_std",
               "config.l2reg", "config.learning_rate", "config.num_layers", "config.num_units",
               "config.optimizer", "config.random_seed", "config.train_fraction", "config.w_init"]
STEPS = (0, 1, 86)


def _layout(in_ch: int) -> list[tuple[str, tuple[int, ...]]]:
    """TF variables in published order (names sort alphabetically: bias before kernel)."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for k, name in enumerate(("conv2d", "conv2d_1", "conv2d_2")):
        out += [(f"sequential/{name}/bias:0", (16,)), (f"sequential/{name}/kernel:0", (3, 3, k and 16 or in_ch, 16))]
    return out + [("sequential/dense/bias:0", (10,)), ("sequential/dense/kernel:0", (16, 10))]


def write_small_cnn_zoo(root: Path, *, in_ch: int, dataset: str, n_models: int = 6, gz: bool = True,
                        pandas_index: bool = False, seed: int = 0) -> np.ndarray:
    """A Small CNN Zoo directory; returns the weights matrix."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, pos = [["varname", "start_idx", "end_idx", "shape"]], 0
    for name, shape in _layout(in_ch):
        rows.append([name, pos, pos + int(np.prod(shape)), str(shape)])
        pos += int(np.prod(shape))
    with open(root / "layout.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    weights = (rng.standard_normal((n_models * len(STEPS), pos)) * 0.4).astype(np.float32)
    np.save(root / "weights.npy", weights)
    header = ([""] if pandas_index else []) + CONFIG_COLS + [
        "modeldir", "step", "test_accuracy", "test_loss", "train_accuracy", "train_loss"]
    lines = []
    for m in range(n_models):
        act = "relu" if m % 2 == 0 else "tanh"
        for s in STEPS:
            cfg = [act, "zeros", dataset, "cnn", 0.1 * (m % 3), 86, 20, 0.05, 0.001, 0.01, 3, 16, "adam", 42,
                   1.0, "he_normal"]
            run = f"/tmp/zoo/{dataset}/run_{m:04d}"
            vals = [f"{run}/permanent_ckpt-{s}" if pandas_index else run, s, rng.uniform(), rng.uniform(),
                    rng.uniform(), "nan" if s == 0 else rng.uniform()]
            lines.append(([len(lines)] if pandas_index else []) + cfg + vals)
    opener = gzip.open if gz else open
    with opener(root / ("metrics.csv.gz" if gz else "metrics.csv"), "wt", newline="") as fh:
        csv.writer(fh).writerows([header, *lines])
    return weights


def tf_reference_logits(vec: np.ndarray, x_nhwc: np.ndarray, in_ch: int, act: str, padding: str) -> np.ndarray:
    """The Keras model evaluated directly from raw TF-order weights (float64 numpy)."""
    params, pos = {}, 0
    for name, shape in _layout(in_ch):
        size = int(np.prod(shape))
        params[name] = vec[pos:pos + size].astype(np.float64).reshape(shape)
        pos += size
    x = x_nhwc.astype(np.float64)
    for layer in ("conv2d", "conv2d_1", "conv2d_2"):
        k, b = params[f"sequential/{layer}/kernel:0"], params[f"sequential/{layer}/bias:0"]
        s, kh = 2, k.shape[0]
        h, w = x.shape[1:3]
        if padding == "same":  # TF: out = ceil(n / s), total pad split with the extra pixel after
            oh, ow = -(-h // s), -(-w // s)
            ph, pw = max((oh - 1) * s + kh - h, 0), max((ow - 1) * s + kh - w, 0)
            x = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
        else:
            oh, ow = (h - kh) // s + 1, (w - kh) // s + 1
        y = b + sum(x[:, di:di + s * (oh - 1) + 1:s, dj:dj + s * (ow - 1) + 1:s, :] @ k[di, dj]
                    for di in range(kh) for dj in range(kh))
        x = np.maximum(y, 0.0) if act == "relu" else np.tanh(y)
    pooled = x.mean(axis=(1, 2))
    return pooled @ params["sequential/dense/kernel:0"] + params["sequential/dense/bias:0"]


@pytest.mark.parametrize("in_ch,size,dataset,padding", [
    (1, 28, "mnist", "valid"), (3, 32, "cifar10", "valid"), (1, 28, "fashion_mnist", "same"),
    (3, 32, "svhn_cropped", "same")])
def test_small_cnn_zoo_logits_match_tf(tmp_path: Path, in_ch: int, size: int, dataset: str, padding: str) -> None:
    src = tmp_path / "src"
    weights = write_small_cnn_zoo(src, in_ch=in_ch, dataset=dataset, gz=in_ch == 1, pandas_index=in_ch == 3)
    report = convert("small-cnn-zoo", src, tmp_path / "out", padding=padding, progress=False)
    zoo = load_zoo(tmp_path / "out")
    assert len(zoo) == len(weights) == report.rows_written
    assert report.num_models == 6 and len(zoo.architectures) == 2  # relu and tanh
    x = np.random.default_rng(1).standard_normal((4, size, size, in_ch)).astype(np.float32)
    source_row = {(f"/tmp/zoo/{dataset}/run_{m:04d}", s): m * len(STEPS) + j
                  for m in range(6) for j, s in enumerate(STEPS)}
    for i in range(len(zoo)):
        row = zoo[i].metadata
        j = source_row[(row["model_id"], row["epoch"])]
        with torch.no_grad():
            got = zoo[i].module()(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()
        want = tf_reference_logits(weights[j], x, in_ch, row["hparams"]["activation"], padding)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        assert row["step"] == row["epoch"] and row["seed"] == 42
        assert row["hparams"]["dataset"] == dataset and row["hparams"]["optimizer"] == "adam"
    assert zoo[0].metadata["train_loss"] is None  # "nan" in metrics.csv -> null
    splits = {}
    for r in zoo.rows:
        assert splits.setdefault(r["model_id"], r["split"]) == r["split"]
    layers = [layer["type"] for layer in zoo[0].arch["layers"]]
    assert ("pad2d" in layers) == (padding == "same")


def test_tf_same_padding_is_not_pytorch_padding_1() -> None:
    """Documents the design decision: symmetric padding=1 gives different logits."""
    from wsl.zoo.readers.small_cnn_zoo import _tf_same_pads

    assert _tf_same_pads(28, 3, 2) == (0, 1, 14) and _tf_same_pads(14, 3, 2) == (0, 1, 7)
    assert _tf_same_pads(7, 3, 2) == (1, 1, 4) and _tf_same_pads(32, 3, 2) == (0, 1, 16)
    conv, x = nn.Conv2d(1, 4, 3, stride=2, padding=1), torch.randn(1, 1, 28, 28)
    tf_like = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
    assert tf_like.shape == conv(x).shape and not torch.allclose(tf_like, conv(x))


def test_small_cnn_zoo_limit_nonfinite_and_resume(tmp_path: Path) -> None:
    src = tmp_path / "src"
    weights = write_small_cnn_zoo(src, in_ch=1, dataset="mnist")
    weights[4, 7] = np.nan  # model 1, step 1
    np.save(src / "weights.npy", weights)
    report = convert("small-cnn-zoo", src, tmp_path / "a", limit=2, progress=False)
    assert report.rows_written == 5 and report.num_models == 2
    assert any("NaN" in n for n in report.notes)
    again = convert("small-cnn-zoo", src, tmp_path / "a", limit=2, progress=False)
    assert again.rows_written == 0 and again.rows_already_present == 5
    with pytest.raises(ZooFormatError, match="different zoo"):
        convert("small-cnn-zoo", src, tmp_path / "a", limit=3, progress=False)
    assert convert("small-cnn-zoo", src, tmp_path / "b", limit=2, keep_nonfinite=True, progress=False).rows_written == 6


def _rewrite(path: Path, edit: Any) -> None:
    rows = list(csv.reader(open(path, newline="")))
    edit(rows)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)


@pytest.mark.parametrize("breakage,match", [
    (lambda s: (s / "weights.npy").unlink(), "weights.npy: file not found"),
    (lambda s: (s / "metrics.csv").unlink(), "neither metrics.csv"),
    (lambda s: _rewrite(s / "layout.csv", lambda r: r[2].__setitem__(3, "(3, 3, 2, 16)")), r"row 2.*needs 288"),
    (lambda s: _rewrite(s / "layout.csv", lambda r: r[3].__setitem__(0, "sequential/batch_norm/gamma:0")),
     r"layout.csv row 3 \(column 'varname'\): unsupported variable"),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: [x.pop(0) for x in r]), "missing column 'config.activation'"),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r[5].__setitem__(0, "selu")),
     r"metrics.csv row 5 \(column 'config.activation'\): unsupported activation 'selu'"),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r.pop()), "17 rows but .*weights.npy has 18"),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r[2].__setitem__(CONFIG_COLS.index("config.dataset"), "x")),
     r"row 2 \(column 'config.dataset'\): cannot infer the input size.*--input-size"),
    (lambda s: np.save(s / "weights.npy", np.zeros((18, 10), np.float32)), "covers 4970 columns but"),
])
def test_small_cnn_zoo_errors(tmp_path: Path, breakage: Any, match: str) -> None:
    src = tmp_path / "src"
    write_small_cnn_zoo(src, in_ch=1, dataset="mnist", gz=False)
    breakage(src)
    with pytest.raises(ZooFormatError, match=match):
        convert("small-cnn-zoo", src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # validation happens before anything is written


# --------------------------------------------------------------------------- Schuerholt et al. model zoos
_NLIN = {"tanh": nn.Tanh, "leakyrelu": nn.LeakyReLU, "relu": nn.ReLU}


class PublishedCNN(nn.Module):
    """The published CNN/CNN3 layer order (conv -> pool -> nlin -> [dropout] ...) in a module_list."""

    def __init__(self, kind: str, channels_in: int, nlin: str, dropout: float) -> None:
        super().__init__()
        convs = [(8, 5, 1), (6, 5, 1), (4, 2, 0)] if kind == "CNN" else [(16, 3, 1), (32, 3, 1), (15, 3, 1)]
        always, prev, mods = kind == "CNN3", channels_in, []
        for i, (ch, k, pool) in enumerate(convs):
            mods.append(nn.Conv2d(prev, ch, k))
            mods += [nn.MaxPool2d(2, 2)] if pool else []
            mods.append(_NLIN[nlin]())
            mods += [nn.Dropout(dropout)] if (dropout > 0 and i < 2) or always else []
            prev = ch
        mods += [nn.Flatten(), nn.Linear(36 if kind == "CNN" else 60, 20), _NLIN[nlin]()]
        mods += [nn.Dropout(dropout)] if dropout > 0 or always else []
        mods.append(nn.Linear(20, 10))
        self.module_list = nn.ModuleList(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.module_list:
            x = m(x)
        return x


TRIALS = [("CNN", 1, "tanh", 0.0, "checkpoint_{}"), ("CNN", 1, "leakyrelu", 0.2, "checkpoint_{:06d}"),
          ("CNN3", 3, "relu", 0.0, "checkpoint_{:06d}")]


def write_schuerholt_zoo(root: Path, trials: list[tuple[str, int, str, float, str]] = TRIALS) -> dict[str, list]:
    """A Ray Tune experiment dir; returns {trial name: [state_dict per checkpoint]}."""
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model::type": "CNN", "seed": "{'grid_search': [1, 2, 3]}"}))
    out = {}
    for t, (kind, ch, nlin, p, fmt) in enumerate(trials):
        params = {"model::type": kind, "model::channels_in": ch, "model::nlin": nlin, "model::dropout": p,
                  "model::init_type": "kaiming_uniform", "model::use_bias": False, "optim::optimizer": "adam",
                  "optim::lr": 3e-4, "optim::wd": 0.0, "seed": t + 1, "training::batchsize": 10, "cuda": False,
                  "dataset::dump": "/data/zoos/MNIST/tune_zoo_mnist_uniform/dataset.pt"}
        trial = root / f"NN_tune_trainable_a1b2c_{t:05d}_{t}_seed={t + 1}_2022-01-01_12-00-0{t}"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(params))
        lines = [json.dumps({"train_loss": 2.0 / it if it else -999, "train_acc": 0.2 * it if it else -999,
                             "test_loss": 2.3 - 0.1 * it, "test_acc": 0.1 + 0.2 * it, "time_this_iter_s": 1.5,
                             "done": it == 3, "training_iteration": it, "trial_id": "a1b2c", "config": params})
                 for it in range(4)]
        (trial / "result.json").write_text("\n".join(lines) + "\n")
        torch.manual_seed(t)
        model = PublishedCNN(kind, ch, nlin, p)
        out[trial.name] = []
        for it in (0, 1, 3):
            sd = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
            (trial / fmt.format(it)).mkdir()
            torch.save(sd, trial / fmt.format(it) / "checkpoints")
            torch.save({"state": {}}, trial / fmt.format(it) / "optimizer")
            out[trial.name].append(sd)
    return out


def test_schuerholt_zoo_converts_and_reproduces_outputs(tmp_path: Path) -> None:
    sds = write_schuerholt_zoo(tmp_path / "tune_zoo_mnist_uniform")
    report = convert("schuerholt", tmp_path / "tune_zoo_mnist_uniform", tmp_path / "out", progress=False)
    assert report.rows_written == 9 and report.num_models == 3 and len(report.architectures) == 3
    zoo = load_zoo(tmp_path / "out")
    assert zoo.card["dataset"]["name"] == "mnist"
    for i in range(len(zoo)):
        row = zoo[i].metadata
        kind, ch, nlin, p, _ = TRIALS[int(row["seed"]) - 1]
        ref = PublishedCNN(kind, ch, nlin, p).eval()
        ref.load_state_dict(sds[row["model_id"]][[0, 1, 3].index(row["epoch"])])
        size = 28 if kind == "CNN" else 32
        x = torch.randn(3, ch, size, size)
        with torch.no_grad():
            torch.testing.assert_close(zoo[i].module()(x), ref(x))
        assert row["hparams"]["model::nlin"] == nlin and row["source"].endswith("/checkpoints")
        assert row["test_accuracy"] == pytest.approx(0.1 + 0.2 * row["epoch"])
        assert row["train_accuracy"] is None if row["epoch"] == 0 else row["train_accuracy"] > 0
        assert "time_this_iter_s" not in row
    shifted = [a for a in zoo.architectures.values() if any(l["type"] == "dropout" for l in a["arch"]["layers"])]
    assert len(shifted) == 2  # the dropout CNN and CNN3


def test_schuerholt_limit_and_nested_root(tmp_path: Path) -> None:
    write_schuerholt_zoo(tmp_path / "zoo" / "tune_zoo_mnist_uniform")
    report = convert("model-zoos", tmp_path / "zoo", tmp_path / "out", limit=1, progress=False)
    assert report.rows_written == 3 and report.num_models == 1


@pytest.mark.parametrize("breakage,match", [
    (lambda t: (t / "params.json").write_text("{bad"), r"params.json.*(JSON|json)"),
    (lambda t: (t / "result.json").write_text('{"training_iteration": 0}\n{oops\n'), r"result.json line 2"),
    (lambda t: (t / "checkpoint_1" / "checkpoints").unlink(), r"checkpoint_1: checkpoint directory without"),
    (lambda t: (t / "params.json").write_text(json.dumps({"model::nlin": "elu", "model::type": "CNN"})),
     r"'model::nlin' is 'elu'"),
    (lambda t: torch.save({"module_list.0.weight": torch.zeros(8, 1, 5, 5), "module_list.0.bias": torch.zeros(8),
                           "module_list.1.running_mean": torch.zeros(8)}, t / "checkpoint_0" / "checkpoints"),
     r"checkpoint_0/checkpoints: unsupported state_dict entry 'module_list.1.running_mean'"),
    (lambda t: torch.save({"module_list.0.weight": torch.zeros(8, 1, 5, 5)}, t / "checkpoint_3" / "checkpoints"),
     r"checkpoint_3/checkpoints: entry"),
    (lambda t: (t / "checkpoint_3" / "checkpoints").write_bytes(b"\x80\x02cos\nsystem\n"), r"checkpoint_3/checkpoints"),
])
def test_schuerholt_errors(tmp_path: Path, breakage: Any, match: str) -> None:
    write_schuerholt_zoo(tmp_path / "src", TRIALS[:1])
    trial = next(p for p in (tmp_path / "src").iterdir() if p.is_dir())
    breakage(trial)
    with pytest.raises(ZooFormatError, match=match):
        convert("schuerholt", tmp_path / "src", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # a conversion failing before its first row leaves nothing


# --------------------------------------------------------------------------- plain checkpoint directory
def write_checkpoint_dir(root: Path, n: int = 5, metrics: bool = True) -> dict[str, nn.Module]:
    """Checkpoints of mlp([4, 8, 3]) (.safetensors and .pt) plus metrics.csv keyed by stem."""
    root.mkdir(parents=True)
    models = {}
    for i in range(n):
        torch.manual_seed(i)
        m = mlp([4, 8, 3]).eval()
        stem = f"run{i // 2}_ep{i % 2}"
        save_state_dict(m.state_dict(), root / (stem + (".safetensors" if i % 2 == 0 else ".pt")))
        models[stem] = m
    if metrics:
        rows = [[stem if i != 1 else stem + ".pt", f"run{i // 2}", i % 2, i // 2, 0.5 + 0.1 * i,
                 "" if i == 0 else 1.0 / (i + 1), 0.01, "adam", 8] for i, stem in enumerate(models)]
        with open(root / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["file", "model_id", "epoch", "seed", "test_acc", "train_loss", "lr",
                                       "optimizer", "hp.width"], *rows])
    return models


def test_checkpoint_dir_with_arch_option(tmp_path: Path) -> None:
    models = write_checkpoint_dir(tmp_path / "ckpts")
    report = convert("checkpoint-dir", tmp_path / "ckpts", tmp_path / "out", arch="mlp(sizes=[4, 8, 3])",
                     name="tiny", progress=False)
    assert report.rows_written == 5 and report.num_models == 3
    zoo = load_zoo(tmp_path / "out")
    assert zoo.name == "tiny"
    x = torch.randn(6, 4)
    for i in range(len(zoo)):
        row = zoo[i].metadata
        stem = Path(row["source"]).name.split(".")[0]
        with torch.no_grad():
            torch.testing.assert_close(zoo[i].module()(x), models[stem](x))
        assert row["model_id"] == stem.split("_")[0] and row["epoch"] == int(stem[-1])
        assert row["hparams"] == {"optimizer": "adam", "width": 8} and row["lr"] == 0.01
    by_stem = {Path(r["source"]).name.split(".")[0]: r for r in zoo.rows}
    assert by_stem["run0_ep0"]["train_loss"] is None and by_stem["run1_ep0"]["test_accuracy"] == pytest.approx(0.7)
    assert zoo.split("train").model_ids() + zoo.split("val").model_ids() + zoo.split("test").model_ids()


def test_checkpoint_dir_per_row_arch_and_embedded_metadata(tmp_path: Path) -> None:
    src = tmp_path / "ckpts"
    write_checkpoint_dir(src, n=2, metrics=False)
    cnn = small_cnn(in_channels=1, channels=(4, 4))
    (src / "cnn.json").write_text(json.dumps(describe(cnn)))
    save_state_dict(cnn.state_dict(), src / "cnn_a.pt")
    meta = {"wsl_arch": json.dumps(describe(mlp([4, 8, 3])))}
    save_state_dict(mlp([4, 8, 3]).state_dict(), src / "meta.safetensors", meta)
    with open(src / "metrics.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "arch", "test_accuracy"], ["run0_ep0", "mlp(sizes=[4, 8, 3])", 0.5],
                                  ["run0_ep1", "mlp(sizes=[4, 8, 3])", 0.6], ["cnn_a", "cnn.json", 0.7]])
    report = convert("checkpoint-dir", src, tmp_path / "out", progress=False)
    assert report.rows_written == 4 and len(report.architectures) == 2
    assert any("no row" in n for n in report.notes)  # meta.safetensors: arch from metadata, metrics null
    zoo = load_zoo(tmp_path / "out")
    accs = {Path(r["source"]).stem: r["test_accuracy"] for r in zoo.rows}
    assert accs == {"cnn_a": 0.7, "meta": None, "run0_ep0": 0.5, "run0_ep1": 0.6}
    assert len(zoo.card["shards"]) == 2


@pytest.mark.parametrize("breakage,match,kwargs", [
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r.append(["ghost", "x", 0, 0, 0.1, 0.1, 0.1, "a", 1])),
     r"metrics.csv row 6 \(column 'file'\): no checkpoint 'ghost'", {"arch": "mlp(sizes=[4, 8, 3])"}),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r[0].__setitem__(0, "name")), "needs a 'file' or 'id' column",
     {"arch": "mlp(sizes=[4, 8, 3])"}),
    (lambda s: _rewrite(s / "metrics.csv", lambda r: r[3].__setitem__(2, "1.5")),
     r"row 3 \(column 'epoch'\): expected an integer", {"arch": "mlp(sizes=[4, 8, 3])"}),
    (lambda s: None, "run0_ep0.safetensors: no architecture", {}),
    (lambda s: None, r"run0_ep0.safetensors.*wrong shape.*0.weight", {"arch": "mlp(sizes=[4, 9, 3])"}),
    (lambda s: [p.unlink() for p in s.iterdir() if p.suffix in (".pt", ".safetensors")], "no checkpoint files", {}),
    (lambda s: (s / "run0_ep0.pt").write_bytes(b"x"), "share the stem 'run0_ep0'", {}),
])
def test_checkpoint_dir_errors(tmp_path: Path, breakage: Any, match: str, kwargs: dict[str, Any]) -> None:
    write_checkpoint_dir(tmp_path / "src")
    breakage(tmp_path / "src")
    with pytest.raises(ZooFormatError, match=match):
        convert("checkpoint-dir", tmp_path / "src", tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- registry, tables, CLI
def test_registry_and_option_errors(tmp_path: Path) -> None:
    with pytest.raises(WslError, match="unknown zoo format 'hdf5'"):
        open_source("hdf5", tmp_path)
    with pytest.raises(WslError, match="option 'arch' does not apply to format 'small-cnn-zoo'"):
        open_source("small-cnn-zoo", tmp_path, arch="mlp")
    with pytest.raises(ZooFormatError, match="no such directory"):
        open_source("schuerholt", tmp_path / "nope")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ZooFormatError, match="no Ray Tune trial directories"):
        open_source("schuerholt", tmp_path / "empty")
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    with pytest.raises(ZooFormatError, match=r"bad.csv row 1: 3 fields, header has 2"):
        read_table(tmp_path / "bad.csv")


def test_cli_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main

    write_small_cnn_zoo(tmp_path / "src", in_ch=1, dataset="mnist", n_models=3)
    rc = main(["zoo", "convert", "--from", "small-cnn-zoo", str(tmp_path / "src"), "-o", str(tmp_path / "out"),
               "--name", "scz", "--limit", "2", "--quiet"])
    out = capsys.readouterr()
    assert rc == 0 and "wrote 6 rows (2 models" in out.out
    assert load_zoo(tmp_path / "out").name == "scz"
    rc = main(["zoo", "convert", "--from", "checkpoint-dir", str(tmp_path / "src"), "-o", str(tmp_path / "o2")])
    assert rc == 2 and "no checkpoint files" in capsys.readouterr().err
