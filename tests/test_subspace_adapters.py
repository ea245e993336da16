"""LoRA adapter collections: dW = s B A exactly (alpha/r, rsLoRA, fan_in_fan_out, patterns, embeddings, convs),
typed refusals, collection checks, the shared-A confounder report, the init null, open_source, and PEFT's merge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsl.errors import CheckpointError, SpaceMismatchError, WslError
from wsl.io import uri as uri_mod
from wsl.io import register_scheme
from wsl.subspace.adapters import ConfounderWarning, adapter_confounders, open_adapters
from wsl.subspace.sources import open_source
from wsl.subspace.spectrum import directions, overlap, spectrum

P = "base_model.model."


def write_adapter(folder: Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], *, name: str | None = None,
                  embedding: tuple[str, ...] = (), extra: dict[str, torch.Tensor] | None = None, **config) -> Path:
    """A PEFT-format adapter folder: ``{module: (A, B)}``, config fields as keywords (r, lora_alpha, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = f".{name}" if name else ""
    tensors = {}
    for mod, (a, b) in factors.items():
        kind = "lora_embedding_" if mod in embedding else "lora_"
        tail = "" if mod in embedding else ".weight"
        tensors[f"{P}{mod}.{kind}A{seg}{tail}"] = a.contiguous()
        tensors[f"{P}{mod}.{kind}B{seg}{tail}"] = b.contiguous()
    tensors.update(extra or {})
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "base_model_name_or_path": "tiny/base", "revision": None, "r": 4, "lora_alpha": 8,
           "target_modules": sorted(factors), "fan_in_fan_out": False, "use_rslora": False, "rank_pattern": {},
           "alpha_pattern": {}, "init_lora_weights": True, "use_dora": False, **config}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


def rand_factors(gen: torch.Generator, shapes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[torch.Tensor, ...]]:
    """``{module: (A (r, in), B (out, r))}`` for ``{module: (out, in, r)}``."""
    return {m: (torch.randn(r, i, generator=gen), torch.randn(o, r, generator=gen)) for m, (o, i, r) in shapes.items()}


def test_delta_is_scaled_b_times_a_for_alpha_over_r_rslora_and_fan_in_fan_out(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    f = rand_factors(gen, {"enc.q": (7, 5, 4), "enc.v": (6, 5, 4)})
    cases = {"plain": ({}, 8 / 4, False), "rslora": ({"use_rslora": True}, 8 / math.sqrt(4), False),
             "fifo": ({"fan_in_fan_out": True, "lora_alpha": 3}, 3 / 4, True)}
    for tag, (cfg, scale, fifo) in cases.items():
        col = open_adapters([write_adapter(tmp_path / f"{tag}{k}", f, **cfg) for k in range(2)])
        stack = col.stack("delta")
        assert stack.names == ["enc.q.delta", "enc.v.delta"]
        for m, (a, b) in f.items():
            want = scale * (b @ a)
            want = want.T if fifo else want
            assert stack.shapes[f"{m}.delta"] == tuple(want.shape)
            torch.testing.assert_close(col.adapters[0].delta(m), want, rtol=1e-5, atol=1e-5)
            # streamed in blocks of two rows: same numbers
            got = torch.cat([x for _, x in stack.blocks(f"{m}.delta", block=2 * want.shape[1])], dim=1)
            torch.testing.assert_close(got, want.reshape(1, -1).expand(2, -1), rtol=1e-5, atol=1e-5)
        a_stack, b_stack = col.stack("lora_A"), col.stack("lora_B")
        torch.testing.assert_close(a_stack.model_tensor(1, "enc.q.lora_A"), f["enc.q"][0])
        torch.testing.assert_close(b_stack.model_tensor(0, "enc.v.lora_B"), f["enc.v"][1])


def test_rank_and_alpha_patterns_adapter_names_embeddings_and_convs(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    f = rand_factors(gen, {"layers.0.q": (6, 5, 4), "layers.1.q": (6, 5, 2), "layers.0.k": (6, 5, 4)})
    f["emb"] = (torch.randn(4, 11, generator=gen), torch.randn(3, 4, generator=gen))  # A (r, vocab), B (dim, r)
    f["conv"] = (torch.randn(4, 2, 3, 3, generator=gen), torch.randn(5, 4, 1, 1, generator=gen))
    folder = write_adapter(tmp_path / "a", f, name="default", embedding=("emb",), fan_in_fan_out=True,
                           rank_pattern={"layers.1.q": 2}, alpha_pattern={"q": 16, "conv": 2},
                           extra={f"{P}head.modules_to_save.default.weight": torch.zeros(2, 2)})
    ad = open_adapters(folder).adapters[0]
    assert set(ad.targets) == {"layers.0.q", "layers.1.q", "layers.0.k", "emb", "conv"}
    assert ad.ignored == [f"{P}head.modules_to_save.default.weight"]
    scales = {"layers.0.q": 16 / 4, "layers.1.q": 16 / 2, "layers.0.k": 8 / 4, "emb": 8 / 4, "conv": 2 / 4}
    for m in ("layers.0.q", "layers.1.q", "layers.0.k"):  # fan_in_fan_out: dW = s (B A)^T
        a, b = f[m]
        torch.testing.assert_close(ad.delta(m), scales[m] * (b @ a).T, rtol=1e-5, atol=1e-5)
    a, b = f["emb"]  # embeddings are always transposed: (vocab, dim)
    torch.testing.assert_close(ad.delta("emb"), scales["emb"] * (b @ a).T, rtol=1e-5, atol=1e-5)
    a, b = f["conv"]
    want = scales["conv"] * torch.einsum("or,rikl->oikl", b[:, :, 0, 0], a)
    torch.testing.assert_close(ad.delta("conv"), want, rtol=1e-5, atol=1e-5)
    assert ad.targets["conv"].shape == (5, 2, 3, 3) and ad.targets["emb"].kind == "embedding"


def test_unsupported_adapters_are_refused_with_the_reason(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    f = rand_factors(gen, {"q": (6, 5, 4)})
    bad = {"dora": ({"use_dora": True}, None, "use_dora"),
           "ia3": ({"peft_type": "IA3"}, None, "not LoRA"),
           "pissa": ({"init_lora_weights": "pissa_niter_4"}, None, "rewrites the base weights"),
           "rank": ({"r": 8}, None, "rank 4 but the config says r=8"),
           "magnitude": ({}, {f"{P}q.lora_magnitude_vector": torch.ones(6)}, "DoRA"),
           "bias": ({}, {f"{P}q.lora_B.bias": torch.ones(6)}, "lora_bias")}
    for tag, (cfg, extra, msg) in bad.items():
        folder = write_adapter(tmp_path / tag, f, extra=extra, **cfg)
        with pytest.raises(CheckpointError, match=rf"adapter {tag} .*{msg}"):
            open_adapters(folder)
    two = write_adapter(tmp_path / "two", f, name="default",
                        extra={f"{P}q.lora_A.other.weight": 2 * f["q"][0], f"{P}q.lora_B.other.weight": f["q"][1].clone()})
    with pytest.raises(CheckpointError, match=r"several adapters \['default', 'other'\]; choose one"):
        open_adapters(two)
    other = open_adapters(two, adapter_name="other").adapters[0]
    torch.testing.assert_close(other.delta("q"), 2 * (8 / 4) * f["q"][1] @ f["q"][0], rtol=1e-5, atol=1e-5)
    pickle = tmp_path / "bin"
    write_adapter(pickle, f)
    (pickle / "adapter_model.safetensors").rename(pickle / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="adapter_model.bin: pickle adapters are not read"):
        open_adapters(pickle)
    with pytest.raises(WslError, match="no LoRA adapter here"):
        open_adapters(tmp_path / "nothing")


def test_collection_mismatches_name_the_adapter_and_the_difference(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    f = rand_factors(gen, {"q": (6, 5, 4), "v": (6, 5, 4)})
    ok = write_adapter(tmp_path / "ok", f)
    other_base = write_adapter(tmp_path / "other_base", f, base_model_name_or_path="tiny/other")
    with pytest.raises(SpaceMismatchError, match=r"adapter other_base .*base_model_name_or_path is 'tiny/other'"):
        open_adapters([ok, other_base])
    fewer = write_adapter(tmp_path / "fewer", {"q": f["q"]})
    with pytest.raises(SpaceMismatchError, match=r"adapter fewer .*lacks target module 'v'"):
        open_adapters([ok, fewer])
    wider = write_adapter(tmp_path / "wider", {**f, "v": (f["v"][0], torch.randn(9, 4, generator=gen))})
    with pytest.raises(SpaceMismatchError, match=r"adapter wider .*'v' is a linear update of shape \(9, 5\)"):
        open_adapters([ok, wider])
    # another rank: dW still stacks, the factor views refuse
    rank2 = write_adapter(tmp_path / "rank2", rand_factors(gen, {"q": (6, 5, 2), "v": (6, 5, 2)}), r=2)
    col = open_adapters([ok, rank2])
    assert col.stack("delta").matrix("q.delta").shape == (2, 30)
    with pytest.raises(SpaceMismatchError, match=r"adapter rank2: lora_A of module 'q' has shape \(2, 5\)"):
        col.stack("lora_A")
    report = adapter_confounders(col, warn=False).to_dict()
    assert report["A"]["overall"]["n_pairs"] == 0  # no cosine between different shapes


def _collection_with_shared_a(root: Path, n: int, n_shared: int, seed: int, moved: float = 1e-3) -> list[Path]:
    gen = torch.Generator().manual_seed(seed)
    a0 = {m: torch.randn(4, 12, generator=gen) for m in ("q", "v")}
    folders = []
    for i in range(n):
        f = rand_factors(gen, {"q": (10, 12, 4), "v": (10, 12, 4)})
        if i < n_shared:  # shared init, moved by "training" by `moved` per entry (A0's entries are ~1)
            f = {m: (a0[m] + moved * torch.randn(4, 12, generator=gen), b) for m, (_, b) in f.items()}
        folders.append(write_adapter(root / f"ad{i:02d}", f))
    return folders


def test_confounders_find_the_half_that_shares_one_a(tmp_path: Path) -> None:
    _collection_with_shared_a(tmp_path / "col", n=10, n_shared=5, seed=4)
    with pytest.warns(ConfounderWarning, match="5 of 10 adapters .* near-identical A"):
        rep = adapter_confounders(tmp_path / "col", threshold=0.99)
    s = rep.to_dict()
    assert s["A"]["overall"]["fraction_in_clusters"] == pytest.approx(0.5)
    assert s["A"]["overall"]["clusters"] == [[f"ad{i:02d}" for i in range(5)]]
    for m in ("q", "v"):
        assert s["A"]["modules"][m]["fraction_in_clusters"] == pytest.approx(0.5)
    cos = rep.cosine["A"]["(all)"]
    assert float(cos[:5, :5].min()) > 0.999
    assert float(cos.clone().fill_diagonal_(0)[5:].abs().max()) < 0.9  # independent A: |cos| ~ 1/sqrt(96)
    assert s["B"]["overall"]["fraction_in_clusters"] == 0.0
    # the cosine is the plain one of the flattened factors
    col = open_adapters(tmp_path / "col")
    a = torch.cat([col.adapters[1].factor("q", "A").reshape(-1), col.adapters[1].factor("v", "A").reshape(-1)])
    b = torch.cat([col.adapters[7].factor("q", "A").reshape(-1), col.adapters[7].factor("v", "A").reshape(-1)])
    assert float(cos[1, 7]) == pytest.approx(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), abs=1e-6)
    assert "| A | (all) |" in rep.markdown()


def test_a_shared_init_moved_by_training_is_reported_as_related(tmp_path: Path) -> None:
    _collection_with_shared_a(tmp_path / "col", n=8, n_shared=3, seed=11, moved=0.5)  # cos ~ 1/sqrt(1.25) ~ 0.9
    with pytest.warns(ConfounderWarning, match="3 of 8 adapters have an A with cos > 0.5"):
        s = adapter_confounders(tmp_path / "col", threshold=0.99, related=0.5).to_dict()["A"]["overall"]
    assert s["fraction_in_clusters"] == 0.0 and s["fraction_related"] == pytest.approx(3 / 8)
    with pytest.raises(WslError, match="related <= threshold"):
        adapter_confounders(tmp_path / "col", threshold=0.5, related=0.9)


def test_independent_adapters_raise_no_warning(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    _collection_with_shared_a(tmp_path / "col", n=6, n_shared=0, seed=5)
    rep = adapter_confounders(tmp_path / "col")
    assert rep.warnings == [] and not [w for w in recwarn if issubclass(w.category, ConfounderWarning)]
    assert rep.to_dict()["A"]["overall"]["fraction_in_clusters"] == 0.0


def test_spectrum_of_delta_finds_a_planted_rank2_subspace_despite_unshared_factors(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(6)
    out, inp, r, n = 9, 7, 4, 14
    u = torch.linalg.qr(torch.randn(out, 2, generator=gen))[0]
    v = torch.linalg.qr(torch.randn(inp, 2, generator=gen))[0]
    planted = torch.stack([(u[:, k:k + 1] @ v[:, k:k + 1].T).reshape(-1) for k in range(2)], dim=1)  # (P, 2)
    for i in range(n):
        c = torch.randn(2, generator=gen) * torch.tensor([3.0, 1.0])
        rot = torch.randn(r, r, generator=gen) + 2 * torch.eye(r)  # each adapter mixes its factors differently
        a = rot @ torch.cat([v.T, torch.randn(r - 2, inp, generator=gen)])  # A_i = R_i [V^T; W_i^T]
        b = torch.cat([u * c, torch.zeros(out, r - 2)], dim=1) @ torch.linalg.inv(rot)  # B_i A_i = U diag(c) V^T
        write_adapter(tmp_path / f"ad{i:02d}", {"mlp.fc": (a, b)}, lora_alpha=4)
    src = open_source(tmp_path)
    sp = spectrum(src.stack, "mlp.fc.delta")
    assert sp.rank_for(0.99) == 2 and sp.explained_at(2) > 0.9999
    _, _, vecs = directions(src.stack, "mlp.fc.delta", 2)
    assert overlap(vecs.double(), torch.linalg.qr(planted.double())[0]) > 0.999
    rep = adapter_confounders(src, warn=False).to_dict()
    assert rep["A"]["overall"]["fraction_in_clusters"] == 0.0  # a real shared subspace, not a shared init


def test_open_source_gives_the_delta_stack_and_an_a_init_null(tmp_path: Path) -> None:
    _collection_with_shared_a(tmp_path / "col", n=6, n_shared=0, seed=7)
    src = open_source(tmp_path / "col")
    assert src.info["kind"] == "lora_adapters" and src.init is None and "B = 0" in src.init_reason
    assert src.stack.names == ["q.delta", "v.delta"] and len(src.stack) == 6
    assert src.info["targets"]["q"] == {"kind": "linear", "shape": [10, 12], "ranks": [4], "scales": [2.0]}
    null_a = src.info["init_views"]["lora_A"].matrix("q.lora_A", dtype=torch.float64)
    assert null_a.shape == (6, 48) and float(null_a.abs().max()) <= 1 / math.sqrt(12)  # kaiming-uniform, fan_in 12
    assert float(null_a.var()) == pytest.approx(1 / (3 * 12), rel=0.25)
    assert float(src.info["init_views"]["lora_B"].matrix("v.lora_B").abs().max()) == 0.0  # B = 0 at init
    again = open_source(tmp_path / "col").info["init_views"]["lora_A"].matrix("q.lora_A", dtype=torch.float64)
    assert torch.equal(null_a, again)  # seeded
    limited = open_source([tmp_path / "col" / "ad00", tmp_path / "col" / "ad01", tmp_path / "col" / "ad02"], limit=2)
    assert limited.stack.ids == ["ad00", "ad01"]


def test_uris_resolve_through_the_registered_scheme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uri_mod, "_RESOLVERS", dict(uri_mod._RESOLVERS))
    _collection_with_shared_a(tmp_path / "col", n=3, n_shared=0, seed=8)
    register_scheme("mem://", lambda uri, kind: tmp_path / "col" / uri.removeprefix("mem://"))
    col = open_adapters(["mem://ad00", "mem://ad02"])
    assert col.ids == ["ad00", "ad02"]


def test_delta_equals_what_peft_merges(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft", reason="peft is not installed (optional cross-check of dW against its merge)")
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.conv = nn.Conv2d(2, 5, 3)
            self.fc1 = nn.Linear(6, 8)
            self.fc2 = nn.Linear(8, 3)

    for rslora in (False, True):
        torch.manual_seed(9)
        base = Net()
        before = {k: v.clone() for k, v in base.state_dict().items()}
        cfg = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["emb", "conv", "fc1", "fc2"], use_rslora=rslora,
                              rank_pattern={} if rslora else {"fc2": 2}, alpha_pattern={"fc1": 3})
        model = peft.get_peft_model(base, cfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.normal_()
        folder = tmp_path / f"peft{int(rslora)}"
        model.save_pretrained(str(folder))
        merged = model.merge_and_unload().state_dict()
        ad = open_adapters(folder).adapters[0]
        assert set(ad.targets) == {"emb", "conv", "fc1", "fc2"}
        for m in ad.targets:
            torch.testing.assert_close(ad.delta(m), merged[f"{m}.weight"] - before[f"{m}.weight"], rtol=1e-4,
                                       atol=1e-4)
    # fan_in_fan_out: GPT-2's Conv1D stores its weight as (in, out)
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(10)
    base = nn.Sequential(Conv1D(7, 5), nn.ReLU(), Conv1D(3, 7))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=5, target_modules=["0", "2"],
                                                      fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_()
    model.save_pretrained(str(tmp_path / "fifo"))
    merged = model.merge_and_unload().state_dict()
    ad = open_adapters(tmp_path / "fifo").adapters[0]
    assert ad.targets["0"].shape == (5, 7)
    for m in ("0", "2"):
        torch.testing.assert_close(ad.delta(m), merged[f"{m}.weight"] - before[f"{m}.weight"], rtol=1e-4, atol=1e-4)
