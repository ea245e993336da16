"""Fuzz the service's loader path with 10,000+ mutations of valid safetensors files: zero crashes.

Each mutant goes through what ``wsl serve`` does with an upload:
:func:`wsl.serve.validate.prevalidate` (header cap, structure), then
:func:`wsl.io.load_state_dict`, then the architecture check (names and
shapes against the architecture, finite values); every 5th mutant also goes
through the worker's full path (:func:`arch_precheck` on the ``meta`` device
and :func:`wsl.io.load_model`, which parses the possibly mutated ``wsl_arch``
metadata). Each step may accept the input or raise a :class:`WslError`;
anything else is a crash and fails the test with the seed to reproduce it.
Mutations are byte-level (bit flips, truncation, splices, the length prefix)
and structure-aware (a field of the JSON header replaced by a hostile value).
"""

from __future__ import annotations

import json
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from wsl.errors import WslError

N_MUTANTS = 10_000

_HOSTILE: list[Any] = [None, True, -1, 0, 1, 2**31, 2**63, 2**64 + 1, -(2**63), 1.5, float("1e308"), "", "F32",
                       "X" * 300, [], [1], [-1], [0, 2**62], [2**62, 2**62], [1, 2, 3], {}, {"a": 1}, [[1]], "I64",
                       "BOOL", "F16", "C64", "U64"]


def _seed_files(tmp: Path) -> list[tuple[bytes, dict[str, tuple[int, ...]]]]:
    """Valid files of two architectures (float32 and a BatchNorm net with an int64 buffer)."""
    from wsl.archs import small_cnn
    from wsl.archs.describe import describe
    from wsl.io import save_state_dict

    out = []
    torch.manual_seed(0)
    for i, module in enumerate((small_cnn(channels=(4, 4)), small_cnn(channels=(3,), norm="batch"))):
        p = tmp / f"seed{i}.safetensors"
        save_state_dict(module.state_dict(), p, metadata={"wsl_arch": json.dumps(describe(module))})
        out.append((p.read_bytes(), {k: tuple(v.shape) for k, v in module.state_dict().items()}))
    return out


def _split(raw: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(header: dict[str, Any], data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _mutate_header(rng: random.Random, raw: bytes) -> bytes:
    header, data = _split(raw)
    names = [k for k in header if k != "__metadata__"]
    choice = rng.randrange(9)
    if choice == 0:  # a field of one tensor gets a hostile value
        entry = header[rng.choice(names)]
        entry[rng.choice(["dtype", "shape", "data_offsets", "extra"])] = rng.choice(_HOSTILE)
    elif choice == 1:  # shift one offset
        entry = header[rng.choice(names)]
        entry["data_offsets"] = [o + rng.randint(-8, 8) for o in entry["data_offsets"]]
    elif choice == 2:  # reshape keeping or not keeping the element count
        entry = header[rng.choice(names)]
        n = 1
        for d in entry["shape"]:
            n *= d
        entry["shape"] = rng.choice([[n], [1, n], [n, 1], [n + 1], [], [0], [n // 2 or 1, 2]])
    elif choice == 3:  # rename or drop a tensor
        name = rng.choice(names)
        entry = header.pop(name)
        if rng.random() < 0.5:
            header[name + rng.choice(["x", ".weight", "\u0000", "/../a"])] = entry
    elif choice == 4:  # retype: same bytes, another dtype
        header[rng.choice(names)]["dtype"] = rng.choice(["F16", "BF16", "I32", "U8", "F64", "BOOL", "I64", "F8_E4M3"])
    elif choice == 5:  # the architecture metadata
        meta = header.setdefault("__metadata__", {})
        arch = meta.get("wsl_arch", "{}")
        cut = rng.randrange(len(arch) + 1)
        meta["wsl_arch"] = rng.choice([arch[:cut], arch.replace("4", str(rng.choice([0, -1, 10**9]))),
                                       arch.replace("relu", rng.choice(["lstm", "", "sine", "softmax"])),
                                       json.dumps({"format": "wsl.arch/1", "kind": "builtin", "name": "resnet50"}),
                                       "resnet18", "os:system", "[" * 5000 + "]" * 5000])
    elif choice == 6:
        header["__metadata__"] = rng.choice(_HOSTILE)
    elif choice == 7:  # a duplicate name (written by hand: json.dumps cannot)
        name = rng.choice(names)
        text = json.dumps(header)
        dup = json.dumps({name: header[name]})[1:-1]
        h = ("{" + dup + "," + text[1:]).encode()
        return struct.pack("<Q", len(h)) + h + data
    else:  # non-finite or huge values in the data
        pos = rng.randrange(0, max(1, len(data) - 4))
        value = rng.choice([float("nan"), float("inf"), -float("inf"), 3e38])
        data = data[:pos] + struct.pack("<f", value) + data[pos + 4:]
    return _join(header, data)


def _mutate_bytes(rng: random.Random, raw: bytes) -> bytes:
    b = bytearray(raw)
    if len(b) < 2:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 16)))
    n = struct.unpack("<Q", raw[:8])[0] if len(raw) >= 8 else 0
    hend = min(8 + n, len(b))  # end of the (claimed) header
    choice = rng.randrange(7)
    if choice in (1, 6) and hend <= 8:
        choice = 0
    if choice == 0:  # flip bits anywhere
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif choice == 1:  # flip bits inside the JSON header
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(8, hend)
            b[i] ^= 1 << rng.randrange(8)
    elif choice == 2:  # truncate
        del b[rng.randrange(len(b)):]
    elif choice == 3:  # append garbage
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif choice == 4:  # the length prefix lies
        b[:8] = struct.pack("<Q", rng.choice([0, 1, max(0, n - 1), n + 1, len(raw), 2**40, 2**64 - 1,
                                              rng.randrange(2**16)]) % 2**64)
    elif choice == 5:  # splice: delete or duplicate a range
        i = rng.randrange(len(b))
        j = min(len(b), i + rng.randint(1, 32))
        b[i:j] = b"" if rng.random() < 0.5 else b[i:j] * 2
    else:  # random bytes over a range of the header
        i = rng.randrange(8, hend)
        b[i:i + 4] = bytes(rng.randrange(256) for _ in range(4))
    return bytes(b)


def _check(path: Path, expected: dict[str, tuple[int, ...]], full: bool) -> str:
    """Run the service's loader path on ``path``; "accepted" or the WslError class name.

    The library path (``load_state_dict`` + the architecture check, without the
    service's pre-validation) runs too, so both layers are fuzzed on their own.
    """
    from wsl.io import check_state_dict, load_model, load_state_dict, require_finite
    from wsl.serve.validate import arch_precheck, prevalidate

    try:
        sd = load_state_dict(path)
        check_state_dict(expected, sd, where=path.name)
        require_finite(sd, where=path.name)
    except WslError:
        pass
    try:
        kind = prevalidate(path, path.name)
        if full:
            arch_precheck(path, kind, None, path.name)
            load_model(path, allow_code=False)
        sd = load_state_dict(path)
        check_state_dict(expected, sd, where=path.name)
        require_finite(sd, where=path.name)
        return "accepted"
    except WslError as exc:
        return type(exc).__name__


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_ten_thousand_mutants_never_crash_the_loader(tmp_path: Path) -> None:
    seeds = _seed_files(tmp_path)
    rng = random.Random(1234)
    mutators: list[Callable[[random.Random, bytes], bytes]] = [_mutate_bytes, _mutate_header]
    outcomes: Counter[str] = Counter()
    path = tmp_path / "mutant.safetensors"
    for i in range(N_MUTANTS):
        raw, expected = seeds[i % len(seeds)]
        mutant = raw
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            try:
                mutant = rng.choice(mutators)(rng, mutant)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError, struct.error):
                mutant = _mutate_bytes(rng, mutant)  # the header no longer parses: stay at byte level
        path.unlink(missing_ok=True)  # a fresh inode: truncating a file safetensors still maps is slow
        path.write_bytes(mutant)
        try:
            outcomes[_check(path, expected, full=i % 5 == 0)] += 1
        except Exception as exc:  # a crash: not a WslError
            (tmp_path / f"crash-{i}.safetensors").write_bytes(mutant)
            pytest.fail(f"mutant {i} crashed the loader with {type(exc).__name__}: {exc} (saved as crash-{i})")
    assert sum(outcomes.values()) == N_MUTANTS >= 10_000
    assert outcomes["accepted"] > 0 and len(outcomes) >= 4, outcomes  # both accepted and varied rejections
    print(f"\n{N_MUTANTS} mutants: {dict(outcomes.most_common())}")


def test_mutated_torch_zips_never_crash_the_loader(tmp_path: Path) -> None:
    """5,000 byte-level mutants of a ``torch.save`` zip: weights-only loading alone, then pre-validation first."""
    from wsl.archs import small_cnn
    from wsl.io import load_state_dict
    from wsl.serve.validate import prevalidate

    module = small_cnn(channels=(4, 4))
    seed = tmp_path / "seed.pt"
    torch.save(module.state_dict(), seed)
    raw = seed.read_bytes()
    rng = random.Random(99)
    outcomes: Counter[str] = Counter()
    path = tmp_path / "mutant.pt"
    for i in range(5000):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 6)):
            j = rng.randrange(len(b))
            if rng.random() < 0.8:
                b[j] ^= 1 << rng.randrange(8)
            else:
                del b[j:j + rng.randint(1, 64)]
        path.unlink(missing_ok=True)
        path.write_bytes(bytes(b))
        try:
            try:
                load_state_dict(path)
            except WslError:
                pass
            prevalidate(path, path.name)
            load_state_dict(path)
            outcomes["accepted"] += 1
        except WslError as exc:
            outcomes[type(exc).__name__] += 1
        except Exception as exc:
            (tmp_path / f"crash-{i}.pt").write_bytes(bytes(b))
            pytest.fail(f"zip mutant {i} crashed the loader with {type(exc).__name__}: {exc}")
    assert sum(outcomes.values()) == 5000 and len(outcomes) >= 2, outcomes
