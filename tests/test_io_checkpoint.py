"""Tests for wsl.io checkpoint loading, safetensors validation and atomic writes."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wsl.errors import CheckpointError, StateDictMismatchError, UnsafeCheckpointError
from wsl.io import (
    atomic_open,
    atomic_save_safetensors,
    atomic_write,
    check_finite,
    check_state_dict,
    inspect_safetensors,
    load_checkpoint_dir_config,
    load_safetensors,
    load_state_dict,
    require_finite,
    save_state_dict,
)


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(3, 4, generator=g),
        "fc.bias": torch.randn(3, generator=g),
        "steps": torch.tensor(7, dtype=torch.int64),
    }


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin", ".ckpt"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"w{suffix}"
    save_state_dict(_sd(), path)
    _assert_same(load_state_dict(path), _sd())
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_atomic_write_failure_leaves_target(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_atomic_open_and_legacy_and_device(tmp_path: Path) -> None:
    with atomic_open(tmp_path / "note.txt", "w") as fh:
        fh.write("hello")
    assert (tmp_path / "note.txt").read_text() == "hello"
    torch.save(_sd(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    _assert_same(load_state_dict(tmp_path / "legacy.pt"), _sd())
    with pytest.raises(CheckpointError, match="invalid device"):
        load_state_dict(tmp_path / "legacy.pt", device="potato")


def test_save_shared_and_noncontiguous(tmp_path: Path) -> None:
    w = torch.arange(12.0).reshape(3, 4)
    sd = {"a": w, "b": w, "t": w.t(), "row": w[1]}
    atomic_save_safetensors(sd, tmp_path / "s.safetensors", metadata={"k": "v"})
    out = load_safetensors(tmp_path / "s.safetensors")
    for k, v in sd.items():
        assert torch.equal(out[k], v)


def test_sniff_unknown_extension(tmp_path: Path) -> None:
    save_file(_sd(), str(tmp_path / "a.dat"))
    torch.save(_sd(), tmp_path / "b.weights")
    _assert_same(load_state_dict(tmp_path / "a.dat"), _sd())
    _assert_same(load_state_dict(tmp_path / "b.weights"), _sd())
    (tmp_path / "c.dat").write_text("just some text\n")
    with pytest.raises(CheckpointError, match=r"c\.dat.*supported"):
        load_state_dict(tmp_path / "c.dat")


# ------------------------------------------------------------- directories
def test_directory_single_files(tmp_path: Path) -> None:
    (tmp_path / "st").mkdir()
    save_file(_sd(), str(tmp_path / "st" / "model.safetensors"))
    _assert_same(load_state_dict(tmp_path / "st"), _sd())
    (tmp_path / "pt").mkdir()
    torch.save(_sd(), tmp_path / "pt" / "pytorch_model.bin")
    _assert_same(load_state_dict(tmp_path / "pt"), _sd())
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights"):
        load_state_dict(tmp_path / "empty")


def _write_sharded(d: Path, fmt: str, weight_map: dict[str, str] | None = None) -> None:
    sd = _sd()
    parts = {"shard-1": {"fc.weight": sd["fc.weight"]},
             "shard-2": {"fc.bias": sd["fc.bias"], "steps": sd["steps"]}}
    ext = ".safetensors" if fmt == "safetensors" else ".bin"
    wmap = {}
    for shard, tensors in parts.items():
        if fmt == "safetensors":
            save_file(tensors, str(d / f"{shard}{ext}"))
        else:
            torch.save(tensors, d / f"{shard}{ext}")
        wmap.update({k: f"{shard}{ext}" for k in tensors})
    index = f"{'model.safetensors' if fmt == 'safetensors' else 'pytorch_model.bin'}.index.json"
    (d / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map or wmap}))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_sharded_directory(tmp_path: Path, fmt: str) -> None:
    _write_sharded(tmp_path, fmt)
    _assert_same(load_state_dict(tmp_path), _sd())


@pytest.mark.parametrize(
    "bad", ["../outside.safetensors", "/etc/passwd", "sub/../../x", "nope.safetensors",
            "model.safetensors.index.json", "..\\outside.safetensors"]
)
def test_sharded_refuses_bad_paths(tmp_path: Path, bad: str) -> None:
    d = tmp_path / "ckpt"
    d.mkdir()
    save_file({"x": torch.ones(1)}, str(tmp_path / "outside.safetensors"))
    _write_sharded(d, "safetensors", {"fc.weight": "shard-1.safetensors", "x": bad})
    with pytest.raises(CheckpointError, match="weight_map"):
        load_state_dict(d)


def test_sharded_shard_mismatch(tmp_path: Path) -> None:
    _write_sharded(tmp_path, "safetensors", {"fc.bias": "shard-1.safetensors"})
    match = r"shard-1\.safetensors.*missing fc\.bias.*fc\.weight"
    with pytest.raises(CheckpointError, match=match):
        load_state_dict(tmp_path)


# ---------------------------------------------------------- unwrapping
def test_nested_containers_and_ddp(tmp_path: Path) -> None:
    sd = _sd()
    cases = {
        "a.pt": {"epoch": 3, "state_dict": sd},
        "b.pt": {"model": {"state_dict": sd}, "optimizer": {"lr": 0.1}},
        "c.pt": {"model_state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "d.pt": {f"module.{k}": v for k, v in sd.items()},
    }
    for name, obj in cases.items():
        torch.save(obj, tmp_path / name)
        _assert_same(load_state_dict(tmp_path / name), sd)
    save_file({f"module.{k}": v for k, v in sd.items()}, str(tmp_path / "f.safetensors"))
    _assert_same(load_state_dict(tmp_path / "f.safetensors"), sd)
    mixed = {"module.a": torch.ones(1), "b": torch.ones(1)}
    torch.save(mixed, tmp_path / "e.pt")
    assert set(load_state_dict(tmp_path / "e.pt")) == {"module.a", "b"}


@pytest.mark.parametrize(
    "obj",
    [[1, 2], {"a": {"b": {"state_dict": {"w": torch.ones(1)}}}}, {"w": torch.ones(1), "n": 3}],
)
def test_not_a_state_dict(tmp_path: Path, obj: object) -> None:
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=r"x\.pt: not a state_dict"):
        load_state_dict(tmp_path / "x.pt")


# ------------------------------------------------------------ hostile input
class _Touch:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle2", "pickle4"])
def test_hostile_pickle_is_refused(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    if writer == "torch.save":
        torch.save({"weight": torch.ones(2), "evil": _Touch(marker)}, path)
    else:  # a bare pickle (no torch framing)
        with open(path, "wb") as fh:
            pickle.dump({"weight": [1.0], "evil": _Touch(marker)}, fh, protocol=int(writer[-1]))
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.pt.*refused") as info:
        load_state_dict(path)
    if writer != "pickle4":
        assert "system" in str(info.value)
    assert not marker.exists()
    # The *file* is hostile: a plain unpickle in a fresh interpreter (where the
    # helper class does not exist) runs the payload.
    if writer == "torch.save":
        code = f"import torch; torch.load({str(path)!r}, weights_only=False)"
        subprocess.run([sys.executable, "-c", code], check=False, capture_output=True)
        assert marker.exists()


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "m.pt")
    with pytest.raises(UnsafeCheckpointError, match="Linear"):
        load_state_dict(tmp_path / "m.pt")


def test_corrupt_files(tmp_path: Path) -> None:
    torch.save(_sd(), tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "text.safetensors").write_text("hello, I am not a tensor file\n" * 3)
    for name in ["trunc.pt", "empty.pt", "empty.safetensors", "text.safetensors", "missing.pt"]:
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")) as info:
            load_state_dict(tmp_path / name)
        assert not isinstance(info.value, UnsafeCheckpointError)


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize(
    "header,data,msg",
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlap"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes"),
        ({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "non-negative"),
        ({"a": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, bytes(8),
         "too large|needs"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": 1}},
         bytes(8), "__metadata__"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, bytes(8), "exceeds"),
        ([1, 2], b"", "not a JSON object|start with"),
    ],
)
def test_safetensors_header_checks(tmp_path: Path, header: dict, data: bytes, msg: str) -> None:
    path = tmp_path / "h.safetensors"
    path.write_bytes(_raw_safetensors(header, data))
    with pytest.raises(CheckpointError, match=msg):
        inspect_safetensors(path)


def test_safetensors_header_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    save_file(_sd(), str(path))
    with pytest.raises(CheckpointError, match="limit"):
        inspect_safetensors(path, max_header_bytes=16)
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CheckpointError, match="header length"):
        load_safetensors(path)


# ------------------------------------------------------------------- fuzz
def _mutate(data: bytes, rng: random.Random) -> bytes:
    n = struct.unpack("<Q", data[:8])[0]
    kind = rng.randrange(6)
    if kind == 0:  # byte flips, biased to the header
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(8 + n) if rng.random() < 0.7 else rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2:
        i = rng.randrange(len(data))
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 9))) + data[i:]
    if kind == 3:
        new = rng.choice([0, 1, n - 1, n + 1, n + 8, 2**64 - 1, rng.randrange(2**32)])
        return struct.pack("<Q", new % 2**64) + data[8:]
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = header[name]
    values = [-1, 0, 1, 3, 2**31, 2**64 + 5, 1.5, "7", None, True]
    field = rng.choice(["dtype", "shape", "data_offsets", "drop", "meta"])
    if field == "dtype":
        entry["dtype"] = rng.choice(["F32", "F16", "I64", "BOOL", "U8", "F64", "Q4", "", 3])
    elif field == "shape":
        entry["shape"] = [rng.choice(values + [2, 4]) for _ in range(rng.randrange(4))]
    elif field == "data_offsets":
        start, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice(
            [[end, start], [start + 1, end], [start, end + rng.choice([-4, 4])],
             [rng.choice(values), rng.choice(values)], [start]]
        )
    elif field == "drop":
        del entry[rng.choice(list(entry))]
    else:
        header["__metadata__"] = rng.choice([{"a": 1}, ["x"], {"a": "b"}, "s", None])
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def test_fuzz_safetensors(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    tensors = {
        "w": torch.randn(3, 4, generator=g),
        "idx": torch.arange(5, dtype=torch.int64),
        "h": torch.randn(2, 2, 2, generator=g).half(),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4, dtype=torch.bfloat16),
        "scalar": torch.tensor(9, dtype=torch.uint8),
    }
    src = tmp_path / "src.safetensors"
    save_file(tensors, str(src), metadata={"note": "fuzz"})
    good = src.read_bytes()
    rng = random.Random(20240611)
    ok = bad = 0
    for i in range(3000):
        data = good
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            if len(data) < 8 or struct.unpack("<Q", data[:8])[0] > len(data) - 8:
                break
            try:
                data = _mutate(data, rng)
            except (ValueError, IndexError, KeyError, TypeError, AttributeError):
                break  # header already broken for JSON edits; keep what we have
        path = tmp_path / f"m{i}.safetensors"
        path.write_bytes(data)
        try:
            out = load_safetensors(path)
        except CheckpointError:
            bad += 1
        else:
            ok += 1
            info = inspect_safetensors(path)
            assert {k: tuple(v.shape) for k, v in out.items()} == {k: v[1] for k, v in info.items()}
        path.unlink()
    assert ok > 50 and bad > 1000, (ok, bad)


# ------------------------------------------------------------ checks
def test_check_state_dict_lists_names() -> None:
    expected = {"a": (2, 3), "b": (4,), "c": (1,)}
    sd = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "zzz": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(expected, sd, where="model.pt")
    msg = str(info.value)
    assert "model.pt" in msg and "missing c" in msg and "unexpected zzz" in msg
    assert "a (expected (2, 3), got (3, 2))" in msg
    check_state_dict({"b": (4,)}, {"b": torch.zeros(4)})


def test_finite_checks() -> None:
    sd = {"a": torch.tensor([1.0, float("nan")]), "b": torch.ones(2),
          "c": torch.tensor([float("inf")]), "i": torch.tensor([1])}
    assert check_finite(sd) == ["a", "c"]
    with pytest.raises(CheckpointError, match="x.pt: non-finite.*a, c"):
        require_finite(sd, where="x.pt")
    require_finite({"b": torch.ones(2)})


def test_dir_config(tmp_path: Path) -> None:
    assert load_checkpoint_dir_config(tmp_path) is None
    (tmp_path / "config.json").write_text('{"model_type": "x"}')
    assert load_checkpoint_dir_config(tmp_path) == {"model_type": "x"}
    (tmp_path / "config.json").write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(CheckpointError, match="config.json.*line 3 column 3"):
        load_checkpoint_dir_config(tmp_path)
    (tmp_path / "config.json").write_text("[1]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load_checkpoint_dir_config(tmp_path)
