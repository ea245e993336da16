"""``wsl.WeightSpace.from_pretrained("hf://...")`` and ``wsl inspect hf://...``: config.json + safetensors header only.

Offline tests use a hand-made Hugging Face cache (``HF_HUB_OFFLINE=1``, a
temporary ``HF_HUB_CACHE``) holding a tiny ``config.json`` and *header-only*
safetensors files (the 8-byte length and the JSON header, no data): tracing
succeeds from them, so no weight was needed. The online test uses the
loopback fake Hub (tests/hub_server.py) and checks that the weights file never
reaches the cache. No internet.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hub_server import FakeHub
from safetensors.torch import save as st_save

import wsl
from wsl.archs.hf import from_hf_config
from wsl.archs.hf_tiny import build_tiny, tiny_config
from wsl.cli import main
from wsl.errors import ArchitectureError, StateDictMismatchError
from wsl.space import WeightSpace

SHA = "0123456789abcdef0123456789abcdef01234567"
BERT = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 32,
        "type_vocab_size": 2}
needs_transformers = pytest.mark.skipif(not wsl.hub.transformers_available(),
                                        reason="the optional 'transformers' package is not installed")


def header_only(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A safetensors header describing float32 tensors of these shapes, without their data."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 4 * int(torch.Size(shape).numel())
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw


def shapes_of(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty offline Hugging Face cache; ``add(repo, files)`` puts a snapshot of ``files`` in it."""
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield tmp_path / "cache"


def add(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(SHA)
    snap = root / "snapshots" / SHA
    for name, data in files.items():
        (snap / name).parent.mkdir(parents=True, exist_ok=True)
        (snap / name).write_bytes(data)
    return snap


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@needs_transformers
def test_from_pretrained_reads_config_and_header_only(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config("LlamaForCausalLM")
    model = build_tiny("LlamaForCausalLM", "meta")
    add(cache, "org/tiny-llama", {"config.json": json.dumps(cfg).encode(),
                                  "model.safetensors": header_only(shapes_of(model))})
    space = wsl.WeightSpace.from_pretrained("hf://org/tiny-llama")
    want = WeightSpace.from_module(build_tiny("LlamaForCausalLM", "meta"))
    assert space.signature == want.signature and space.num_parameters == want.num_parameters
    rc, out, err = run(capsys, "inspect", "hf://org/tiny-llama", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["checkpoint"]["weights_read"] is False and d["checkpoint"]["header_checked"] is True
    assert d["checkpoint"]["module"] == "LlamaForCausalLM" and d["num_parameters"] == want.num_parameters


@needs_transformers
def test_sharded_header_only_checkpoint(cache: Path) -> None:
    cfg = tiny_config("Qwen2Model")
    shapes = shapes_of(build_tiny("Qwen2Model", "meta"))
    names = sorted(shapes)
    half = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    files = {f: header_only({n: shapes[n] for n in ns}) for f, ns in half.items()}
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {n: f for f, ns in half.items()
                                                                       for n in ns}}).encode()
    files["config.json"] = json.dumps(cfg).encode()
    add(cache, "org/sharded", files)
    space = WeightSpace.from_pretrained("hf://org/sharded")
    assert space.signature == WeightSpace.from_module(build_tiny("Qwen2Model", "meta")).signature


@needs_transformers
def test_a_header_that_does_not_match_the_config_is_refused(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_config("MistralModel")
    shapes = shapes_of(build_tiny("MistralModel", "meta"))
    shapes["layers.0.mlp.up_proj.weight"] = (40, 32)
    add(cache, "org/bad", {"config.json": json.dumps(cfg).encode(), "model.safetensors": header_only(shapes)})
    with pytest.raises(StateDictMismatchError, match=r"layers\.0\.mlp\.up_proj\.weight \(expected \(48, 32\)"):
        WeightSpace.from_pretrained("hf://org/bad")
    rc, _, err = run(capsys, "inspect", "hf://org/bad")
    assert rc != 0 and err.count("\n") == 1 and "up_proj" in err


def test_local_ports_serve_without_transformers(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the optional extra, BERT/ViT/GPT-2 configs are built by the local ports."""
    import wsl.archs.hf as hf

    monkeypatch.setattr(hf, "transformers_available", lambda: False)
    add(cache, "org/bert", {"config.json": json.dumps(BERT).encode(),
                            "model.safetensors": header_only(shapes_of(from_hf_config(BERT)))})
    space = WeightSpace.from_pretrained("hf://org/bert")
    assert space.signature == WeightSpace.from_module(from_hf_config(BERT)).signature
    assert space.meta("module") == "BertModel"


def test_a_folder_and_a_non_transformers_config(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text(json.dumps(BERT))
    assert WeightSpace.from_pretrained(tmp_path / "ok").num_parameters == \
        sum(p.numel() for p in from_hf_config(BERT).parameters())
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"hidden": 3}))
    with pytest.raises(ArchitectureError, match="model_type"):
        WeightSpace.from_pretrained(tmp_path / "other")


@needs_transformers
def test_online_inspect_never_downloads_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub.constants as C

    server = FakeHub().start()
    try:
        monkeypatch.setattr(C, "ENDPOINT", server.url)
        monkeypatch.setattr(C, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(C, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        model = build_tiny("GemmaModel")
        server.add_repo("org/gemma", {"config.json": json.dumps(tiny_config("GemmaModel")).encode(),
                                      "model.safetensors": st_save(model.state_dict())})
        rc, out, err = run(capsys, "inspect", "hf://org/gemma", "--json")
        assert rc == 0, err
        assert json.loads(out)["checkpoint"]["header_checked"] is True
        cached = {p.name for p in (tmp_path / "hf-cache").rglob("*") if p.is_file()}
        assert "config.json" in cached and "model.safetensors" not in cached
    finally:
        server.stop()
