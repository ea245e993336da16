"""URI schemes in wsl.io: plain paths pass through, registered schemes resolve, unknown ones fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

import wsl
from wsl.errors import UnknownSchemeError, WslError
from wsl.io import local_path, register_scheme, registered_schemes, uri_scheme
from wsl.io import uri as uri_mod


@pytest.fixture()
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uri_mod, "_RESOLVERS", dict(uri_mod._RESOLVERS))


def test_plain_paths_pass_through(tmp_path: Path) -> None:
    assert local_path(tmp_path / "a.safetensors") == str(tmp_path / "a.safetensors")
    assert local_path("relative/dir") == "relative/dir"
    assert uri_scheme("relative/dir") is None
    assert uri_scheme("hf://org/name") == "hf://"


def test_importing_wsl_registers_the_hub_scheme() -> None:
    assert wsl.hub is not None
    assert "hf://" in registered_schemes()


def test_registered_scheme_resolves(clean_registry: None, tmp_path: Path) -> None:
    seen = []

    def resolver(uri: str, repo_type: str) -> Path:
        seen.append((uri, repo_type))
        return tmp_path / uri.removeprefix("mem://")

    register_scheme("mem://", resolver)
    assert local_path("mem://zoo", repo_type="dataset") == str(tmp_path / "zoo")
    assert seen == [("mem://zoo", "dataset")]


def test_unknown_scheme_names_the_scheme_and_the_known_ones() -> None:
    with pytest.raises(UnknownSchemeError, match=r"s3://bucket/zoo: no resolver for s3:// URIs.*hf://"):
        local_path("s3://bucket/zoo")
    with pytest.raises(UnknownSchemeError):
        wsl.load_zoo("s3://bucket/zoo")


@pytest.mark.parametrize("prefix", ["hf:", "://", "hf//", 3, "hf://x"])
def test_register_scheme_rejects_bad_prefixes(clean_registry: None, prefix: object) -> None:
    with pytest.raises(WslError, match="prefix must look like 'name://'"):
        register_scheme(prefix, lambda uri, kind: uri)  # type: ignore[arg-type]


def test_register_scheme_rejects_non_callables(clean_registry: None) -> None:
    with pytest.raises(WslError, match="must be callable"):
        register_scheme("mem://", "not a function")  # type: ignore[arg-type]
