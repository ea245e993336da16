"""wsl.hub against the loopback fake Hub (tests/hub_server.py): URIs, resolution, typed errors, lazy zoos,
offline caches, pushing predictors and zoos with cards, a MiniLM-sized checkpoint. No internet."""

from __future__ import annotations

import json
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hub_server import FakeHub
from safetensors.torch import save as st_save
from torch import nn

import wsl
from wsl.archs import mlp
from wsl.archs.hf import build_hf_model, from_hf_config, transformers_available
from wsl.cli import main
from wsl.errors import ArchitectureError, HubError
from wsl.hub import (
    HubAccessError, HubConnectionError, HubFileNotFoundError, HubOfflineError, HubPredictor, HubRepoNotFoundError,
    HubRevisionNotFoundError, HubURIError, parse_uri, resolve,
)
from wsl.hub.cards import split_front_matter
from wsl.hub.transformers_compat import load_hf_model
from wsl.zoo import ZooWriter

BERT = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0}


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    """A fresh fake Hub as HF_ENDPOINT, an empty cache, online, with a write token."""
    import huggingface_hub.constants as C

    server = FakeHub().start()
    monkeypatch.setattr(C, "ENDPOINT", server.url)
    monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", server.token)
    yield server
    server.stop()


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def bert_files(cfg: dict[str, Any] = BERT, seed: int = 0) -> dict[str, bytes]:
    torch.manual_seed(seed)
    sd = from_hf_config(cfg).state_dict()
    return {"config.json": json.dumps(cfg).encode(), "model.safetensors": st_save({k: v.contiguous() for k, v in
                                                                                   sd.items()})}


def make_zoo(root: Path, shard_max_bytes: int = 1 << 30) -> None:
    torch.manual_seed(0)
    with ZooWriter(root, name="toy", dataset={"name": "toy", "num_classes": 3},
                   recipe={"epochs": 2, "hparams": {"lr": [0.1, 0.2]}}, shard_max_bytes=shard_max_bytes) as w:
        aid = w.add_architecture(mlp([4, 8, 3]))
        sds = [mlp([4, 8, 3]).state_dict() for _ in range(12)]
        rows = [{"model_id": f"m{i // 2}", "epoch": i % 2, "hparams": {"lr": 0.1 * (1 + i % 2)},
                 "test_accuracy": 0.3 + 0.05 * i, "train_accuracy": 0.9} for i in range(12)]
        w.append(aid, {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, rows, chunk="c")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


# ------------------------------------------------------------------------------------------------ URIs
def test_parse_uri_forms() -> None:
    assert parse_uri("hf://org/name") == parse_uri("hf://models/org/name")
    r = parse_uri("hf://datasets/org/zoo@v1.0/sub/dir/")
    assert (r.repo_type, r.repo_id, r.revision, r.path) == ("dataset", "org/zoo", "v1.0", "sub/dir")
    assert parse_uri("hf://org/m@feature%2Fx/a.json").revision == "feature/x"
    assert parse_uri("hf://org/m@feature%2Fx/a.json").uri == "hf://org/m@feature%2Fx/a.json"
    r = parse_uri("hf://org/m@refs/pr/3/w.safetensors")
    assert (r.revision, r.path, r.cache_folder) == ("refs/pr/3", "w.safetensors", "models--org--m")


@pytest.mark.parametrize("uri", ["hf://", "hf://onlyorg", "hf://a/b@", "hf://a b/c", "hf://spaces/a/b",
                                 "hf://a/b//c", "hf://a/b/../c", "hf://-a/b", "hf://a--x/b", "hf://a/b@x:y",
                                 "hf://datasets/", "http://a/b", "hf://a/b?x=1"])
def test_malformed_uris(uri: str) -> None:
    with pytest.raises(HubURIError) as e:
        parse_uri(uri)
    assert "\n" not in str(e.value) and "hf://" in str(e.value)


# ------------------------------------------------------------------------------------------ resolution
def test_resolve_downloads_only_what_is_needed(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    files = bert_files()
    hub.add_repo("org/bert", {**files, "README.md": "card", "tf_model.h5": b"x" * 1000, "extra/big.bin": b"y" * 999})
    path = resolve("hf://org/bert")
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not any(p.endswith((".h5", "big.bin")) for p in hub.downloads())
    assert (path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert resolve("hf://org/bert/README.md").read_text() == "card"
    shards = {"model-1.safetensors": b"a", "model-2.safetensors": b"b"}
    index = {"metadata": {}, "weight_map": {"w1": "model-1.safetensors", "w2": "model-2.safetensors"}}
    hub.add_repo("org/sharded", {"config.json": "{}", "model.safetensors.index.json": json.dumps(index),
                                 **shards, "model-3.safetensors": b"unlisted", "pytorch_model.bin": b"old"})
    got = sorted(p.name for p in resolve("hf://org/sharded").iterdir())
    assert got == ["config.json", "model-1.safetensors", "model-2.safetensors", "model.safetensors.index.json"]
    hub.add_repo("org/bin", {"config.json": "{}", "pytorch_model.bin": b"w", "flax_model.msgpack": b"f",
                             **{f"raw/{i}.txt": str(i) for i in range(10)}, "zoo/zoo.json": "{}"})
    assert sorted(p.name for p in resolve("hf://org/bin").iterdir()) == ["config.json", "pytorch_model.bin"]
    assert len(list(resolve("hf://org/bin/raw").iterdir())) == 10  # a plain folder: everything in it
    n = len(hub.requests)
    go_offline(monkeypatch)  # everything above is now served from the cache, without a request
    assert resolve("hf://org/bert") == path and resolve("hf://org/sharded@main").is_dir()
    assert len(hub.requests) == n


def test_cli_inspect_and_graph_from_hub(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hub.add_repo("org/tiny-bert", bert_files())
    rc, out, err = run(capsys, "inspect", "hf://org/tiny-bert", "--json")
    assert rc == 0, err
    desc = json.loads(out)
    assert desc["path"] == "hf://org/tiny-bert"
    assert desc["num_parameters"] == sum(p.numel() for p in from_hf_config(BERT).parameters())
    rc, _, err = run(capsys, "inspect", "hf://org/missing")
    assert rc == 2 and err.count("\n") == 1 and "not found" in err
    from wsl.archs import example_input
    from wsl.graph import build_one, load_graph
    from wsl.space import WeightSpace

    rc, out, err = run(capsys, "graph", "hf://org/tiny-bert/model.safetensors", "-o", str(tmp_path / "g.pt"))
    assert rc == 0, err
    got = load_graph(tmp_path / "g.pt")
    module, sd = load_hf_model("hf://org/tiny-bert")
    want = build_one(WeightSpace.from_module(module, example_input(module)), sd)
    assert f"{want.num_nodes:,} nodes, {want.num_edges:,} edges" in out
    assert got.keys() == want.keys()
    for key in want.keys():
        a, b = got[key], want[key]
        assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b, key


def test_minilm_sized_checkpoint_inspects(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = {**BERT, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
           "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512}
    hub.add_repo("org/minilm", bert_files(cfg))
    rc, out, err = run(capsys, "inspect", "hf://org/minilm", "--json")
    assert rc == 0, err
    desc = json.loads(out)
    assert desc["num_parameters"] == 22_713_216
    assert len(desc["tensors"]) == 103  # 5 embedding + 6 x 16 layer + 2 pooler tensors


def test_hf_checkpoints_and_the_transformers_extra(hub: FakeHub, tmp_path: Path) -> None:
    files = bert_files()
    hub.add_repo("org/tiny-bert", files)
    module, sd = load_hf_model("hf://org/tiny-bert")
    assert type(module).__module__ == "wsl.archs.bert" and set(sd) == set(module.state_dict())
    roberta = {**BERT, "architectures": ["RobertaModel"], "model_type": "roberta"}
    if not transformers_available():
        with pytest.raises(ArchitectureError, match=r"pip install 'wsl\[transformers\]'"):
            build_hf_model(roberta)
        return
    hf_bert = build_hf_model(BERT, prefer_local=False)  # transformers' BertModel, weights into the local port
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps(BERT))
    (tmp_path / "b" / "model.safetensors").write_bytes(st_save({k: v.contiguous()
                                                                for k, v in hf_bert.state_dict().items()}))
    local, _ = load_hf_model(tmp_path / "b")
    ids = torch.randint(0, 100, (2, 8))
    out = local(ids)
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert torch.allclose(out, hf_bert.eval()(ids).last_hidden_state, atol=1e-5)
    rob = build_hf_model(roberta)
    hub.add_repo("org/roberta", {"config.json": json.dumps(roberta),
                                 "model.safetensors": st_save({k: v.contiguous() for k, v in rob.state_dict().items()})})
    got, _ = load_hf_model("hf://org/roberta")
    assert type(got).__name__ == "RobertaModel"
    assert all(torch.equal(v, rob.state_dict()[k]) for k, v in got.state_dict().items())


# ---------------------------------------------------------------------------------------------- errors
def test_typed_errors(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_repo("org/m", {"config.json": "{}"})
    hub.add_repo("org/gated", {"config.json": "{}"}, gated=True)
    hub.add_repo("org/secret", {"config.json": "{}"}, private=True)
    cases: list[tuple[str, type[HubError], str]] = [
        ("hf://org/nope", HubRepoNotFoundError, "not found"),
        ("hf://org/m@v9", HubRevisionNotFoundError, "revision 'v9'"),
        ("hf://org/m/weights.bin", HubFileNotFoundError, "weights.bin"),
        ("hf://org/gated", HubAccessError, "gated"),
    ]
    for uri, cls, text in cases:
        with pytest.raises(cls) as e:
            resolve(uri)
        assert text in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(HubRepoNotFoundError, match="hf://datasets/org/zoo"):  # zoo context: hint at datasets/
        wsl.load_zoo("hf://org/zoo")
    hub.tokens.add("hf_reader")
    monkeypatch.setenv("HF_TOKEN", "hf_reader")  # a valid token that was not granted access: 403
    with pytest.raises(HubAccessError, match="gated"):
        resolve("hf://org/gated/config.json")
    hub.repo("org/gated").granted.add("hf_reader")
    assert resolve("hf://org/gated/config.json").read_text() == "{}"
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubRepoNotFoundError, match="private"):
        resolve("hf://org/secret")
    go_offline(monkeypatch)
    with pytest.raises(HubOfflineError, match="HF_HUB_OFFLINE"):
        resolve("hf://org/m")


def test_unreachable_hub_is_a_connection_error(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as C

    hub.add_repo("org/m", {"config.json": "{}"})
    cached = resolve("hf://org/m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    monkeypatch.setattr(C, "ENDPOINT", dead)
    with pytest.raises(HubConnectionError, match="cannot reach"):
        resolve("hf://org/other")
    assert resolve("hf://org/m") == cached  # falls back to the cache, like huggingface_hub


def test_offline_from_hand_made_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants as C

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--org--hand"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snap = repo / "snapshots" / sha
    snap.mkdir(parents=True)
    for name, data in bert_files().items():
        (snap / name).write_bytes(data)
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "cache"))
    go_offline(monkeypatch)
    assert resolve("hf://org/hand") == snap and resolve(f"hf://org/hand@{sha}/config.json") == snap / "config.json"
    rc, out, err = run(capsys, "inspect", "hf://org/hand", "--json")
    assert rc == 0 and json.loads(out)["num_parameters"] > 0, err
    with pytest.raises(HubOfflineError):
        resolve("hf://org/hand/model.bin")
    with pytest.raises(HubOfflineError):
        resolve("hf://org/hand@v2")


# ------------------------------------------------------------------------------------------ lazy zoos
def test_lazy_zoo_from_hub(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    make_zoo(tmp_path / "zoo", shard_max_bytes=4 * 4 * (32 + 8 + 24 + 3))
    local = wsl.load_zoo(tmp_path / "zoo")
    n_shards = len(local.card["shards"])
    assert n_shards == 3
    hub.add_folder("org/toy", tmp_path / "zoo", repo_type="dataset", prefix="v1")
    zoo = wsl.load_zoo("hf://datasets/org/toy/v1")
    assert len(zoo) == 12 and zoo.column("test_accuracy").shape == (12,)
    assert not any("shards/" in p for p in hub.downloads())  # card + metadata only
    rc, out, err = run(capsys, "zoo", "info", "hf://datasets/org/toy/v1", "--json")
    assert rc == 0 and json.loads(out)["num_rows"] == 12, err
    sd = zoo[5].state_dict()
    assert torch.equal(sd["0.weight"], local[5].state_dict()["0.weight"])
    assert sum("shards/" in p for p in hub.downloads()) == 1  # only the shard holding row 5
    clone = pickle.loads(pickle.dumps(zoo))  # DataLoader workers get a picklable lazy store
    assert torch.equal(clone.stacked()["3.bias"], local.stacked()["3.bias"])
    assert sum("shards/" in p for p in hub.downloads()) == n_shards
    hub.add_folder("org/toy2", tmp_path / "zoo", repo_type="dataset")
    fresh = wsl.load_zoo("hf://datasets/org/toy2")
    go_offline(monkeypatch)
    again = wsl.load_zoo("hf://datasets/org/toy/v1", verify="eager")
    assert torch.equal(again.stacked()["0.bias"], local.stacked()["0.bias"])
    with pytest.raises(HubOfflineError, match="shards/"):
        fresh[0].state_dict()


# ------------------------------------------------------------------------------------------------ push
def test_push_zoo_in_batches(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_zoo(tmp_path / "zoo", shard_max_bytes=2 * 4 * (32 + 8 + 24 + 3))
    local = wsl.load_zoo(tmp_path / "zoo")
    assert len(local.card["shards"]) == 6
    rc, out, err = run(capsys, "zoo", "push", str(tmp_path / "zoo"), "hf://datasets/org/toy",
                       "--files-per-commit", "4", "--license", "cc-by-4.0")
    assert rc == 0, err
    repo = hub.repo("org/toy", "dataset")
    assert [m for _, m in repo.history][-3:] == ["Upload wsl zoo toy (12 rows) (1/3)",
                                                  "Upload wsl zoo toy (12 rows) (2/3)",
                                                  "Upload wsl zoo toy (12 rows) (3/3)"]
    remote = hub.files("org/toy", "dataset")
    for name in ["zoo.json", "metadata.jsonl", *(s["file"] for s in local.card["shards"])]:
        assert remote[name] == (tmp_path / "zoo" / name).read_bytes(), name
    meta, body = split_front_matter(remote["README.md"].decode())
    assert meta["license"] == "cc-by-4.0" and {"weight-space-learning", "wsl"} <= set(meta["tags"])
    assert "wsl.load_zoo(\"hf://datasets/org/toy\")" in body and "test_accuracy" in body
    pulled = wsl.load_zoo("hf://datasets/org/toy")
    assert torch.equal(pulled.stacked()["0.weight"], local.stacked()["0.weight"])
    commits = len(repo.history)
    rc, out, err = run(capsys, "zoo", "push", str(tmp_path / "zoo"), "hf://datasets/org/toy", "--license", "cc-by-4.0")
    assert rc == 0 and len(repo.history) == commits, err  # nothing changed: nothing committed
    rc, out, err = run(capsys, "zoo", "push", str(tmp_path / "zoo"), "hf://datasets/org/toy", "--no-verify")
    assert rc == 0 and len(repo.history) == commits + 1, err  # only the card changed (default license)
    assert "license: apache-2.0" in hub.files("org/toy", "dataset")["README.md"].decode()


def test_push_errors(hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsl.hub import push_zoo

    make_zoo(tmp_path / "zoo")
    with pytest.raises(HubURIError, match="hf://datasets/ORG/NAME"):
        push_zoo(tmp_path / "zoo", "hf://org/toy")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubAccessError, match="token"):
        push_zoo(tmp_path / "zoo", "hf://datasets/org/toy")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    with pytest.raises(HubAccessError, match="401"):
        push_zoo(tmp_path / "zoo", "hf://datasets/org/toy")
    go_offline(monkeypatch)
    with pytest.raises(HubOfflineError):
        push_zoo(tmp_path / "zoo", "hf://datasets/org/toy")


class _StatsHead(nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.lin = nn.Linear(num_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def _write_predictor(directory: Path) -> tuple[Any, dict[str, torch.Tensor]]:
    from wsl.space import WeightSpace
    from wsl.tasks.statnn import statnn_features
    from wsl.train.predictor import predictor_config, save_predictor
    from wsl.train.registry import InputInfo, register_model

    register_model("hubtest_stats", "stats", lambda info, **p: _StatsHead(info.num_features))
    torch.manual_seed(0)
    space = WeightSpace.from_module(mlp([4, 8, 3]))
    stacked = space.stack([mlp([4, 8, 3]).state_dict() for _ in range(5)])
    info = InputInfo(kind="stats", space=space, num_features=int(statnn_features(space, stacked).shape[1]),
                     stats_layout="per_tensor")
    metrics = {"val": {"tau": 0.71, "r2": 0.5, "mae": 0.02, "n": 20}, "test": {"tau": 0.7, "r2": 0.48, "mae": 0.021,
               "n": 20}, "best_epoch": 3, "num_parameters": info.num_features + 1}
    training = {"zoo": "hf://datasets/org/toy", "zoo_name": "toy", "checkpoints": "last", "num_train": 80,
                "architectures": {"a0": {"signature": space.signature, "num_parameters": space.num_parameters}}}
    cfg = predictor_config("hubtest_stats", {}, info, "test_accuracy", 0.5, 0.1, training, metrics)
    save_predictor(directory, model=_StatsHead(info.num_features), config=cfg, space=space, readme="# local\n")
    return space, stacked


def test_push_and_pull_predictor(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.train.predictor import load_predictor

    space, stacked = _write_predictor(tmp_path / "pred")
    rc, out, err = run(capsys, "push", str(tmp_path / "pred"), "hf://org/pred", "--private", "--revision", "v1")
    assert rc == 0, err
    repo = hub.repo("org/pred")
    assert repo.private and "v1" in repo.branches and "README.md" not in hub.files("org/pred")
    remote = hub.files("org/pred", revision="v1")
    assert {"config.json", "model.safetensors", "space.json", "README.md"} <= set(remote)
    meta, body = split_front_matter(remote["README.md"].decode())
    assert meta["license"] == "apache-2.0" and {"weight-space-learning", "wsl"} <= set(meta["tags"])
    assert meta["datasets"] == ["org/toy"]
    values = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values == {"kendall_tau": 0.7, "r_squared": 0.48, "mae": 0.021}
    assert "Intended inputs and limits" in body and space.signature in body
    want = load_predictor(tmp_path / "pred").predict(space, stacked)
    pulled = HubPredictor.from_pretrained("hf://org/pred", revision="v1")
    assert pulled.predict(space, stacked) == pytest.approx(want)
    assert load_predictor("hf://org/pred@v1").predict(space, stacked) == pytest.approx(want)
    saved = pulled.save_pretrained(tmp_path / "copy", repo_id="org/pred")
    assert yaml.safe_load((saved / "README.md").read_text().split("---")[1])["library_name"] == "wsl"
    pulled.push_to_hub("hf://org/pred2")
    assert hub.files("org/pred2")["model.safetensors"] == remote["model.safetensors"]


# ----------------------------------------------------------------------------------- network guard
def test_network_guard_blocks_non_loopback() -> None:
    import conftest

    start = len(conftest._ATTEMPTS)
    with socket.socket() as s, pytest.raises(conftest.NetworkAccessBlocked):
        s.connect(("192.0.2.1", 80))  # TEST-NET-1: never routed
    with pytest.raises(conftest.NetworkAccessBlocked):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(conftest._ATTEMPTS) == start + 2
    del conftest._ATTEMPTS[start:]  # expected here: do not fail this test
    with FakeHub() as server:  # loopback stays allowed
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))):
            pass


# ----------------------------------------------------------------------------------- NeuMeta runs
def test_push_and_pull_hypernetwork(hub: FakeHub, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`wsl push RUN` on a `wsl hyper train` run directory; `load_hyper` / `wsl hyper sample` read it back."""
    from wsl.hyper.run import load_hyper, resolve_config, run as hyper_run

    cfg = resolve_config({"dataset": "digits", "solver": "two_opt", "eval_ratios": [0.5, 1.0],
                          "base": {"arch": {"name": "small_cnn", "kwargs": {"channels": [4, 4, 4]}}, "steps": 5},
                          "model": {"hidden": 8, "blocks": 1}, "train": {"steps": 2, "batch": 8},
                          "checkpoint_every": 1})
    hyper_run(cfg, tmp_path / "run")
    rc, out, err = run(capsys, "push", str(tmp_path / "run"), "hf://org/neumeta")
    assert rc == 0, err
    remote = hub.files("org/neumeta")
    assert {"hyper.safetensors", "base.safetensors", "config.json", "metrics.json", "README.md"} <= set(remote)
    assert not any(name.startswith("checkpoint/") for name in remote)
    meta, body = split_front_matter(remote["README.md"].decode())
    assert meta["library_name"] == "wsl" and {"hypernetwork", "neumeta", "small_cnn"} <= set(meta["tags"])
    accs = json.loads(remote["metrics.json"])["accuracy"]
    assert [m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]] == [accs["0.5"], accs["1.0"]]
    assert "wsl hyper sample hf://org/neumeta" in body
    x = torch.randn(3, 1, 8, 8)
    want = load_hyper(tmp_path / "run").sample(0.5)(x)
    torch.testing.assert_close(load_hyper("hf://org/neumeta").sample(0.5)(x), want)
    rc, out, err = run(capsys, "hyper", "sample", "hf://org/neumeta", "--width", "0.5", "-o", str(tmp_path / "n.safetensors"))
    assert rc == 0, err
    from wsl.io import load_model

    torch.testing.assert_close(load_model(tmp_path / "n.safetensors")[0](x), want)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "hyper.safetensors").write_bytes(b"junk")
    rc, out, err = run(capsys, "push", str(tmp_path / "bad"), "hf://org/bad")
    assert rc != 0 and "config.json" in err
