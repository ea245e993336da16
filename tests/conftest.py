"""Shared pytest configuration. Sections are owned by different parts of the suite; append yours below."""

from __future__ import annotations

# =============================================================================================================
# Network isolation and Hugging Face Hub defaults (owner: wsl.hub; tests/test_hub.py, tests/hub_server.py)
#
# * Before anything imports huggingface_hub (its constants are read at import time), the suite gets a
#   private HF_HOME (no user cache or token is read or written) and HF_HUB_OFFLINE=1, so an accidental Hub
#   call fails at once instead of retrying for ~20 s. Tests that talk to the loopback fake Hub
#   (tests/hub_server.py) switch these per test.
# * Guard: for the whole session, connecting a socket (or resolving a host name) anywhere but loopback
#   (127.0.0.0/8, ::1, localhost, this machine's own name) raises NetworkAccessBlocked, and the test that
#   tried fails even if the error was swallowed. Unix sockets and C++ transports (gloo/DDP rendezvous on
#   localhost) are unaffected.
# =============================================================================================================
import atexit
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

if "huggingface_hub" not in sys.modules:
    _HF_HOME = tempfile.mkdtemp(prefix="wsl-tests-hf-")
    atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
    os.environ["HF_HOME"] = _HF_HOME
    for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "HF_ENDPOINT", "HF_TOKEN",
                 "HUGGING_FACE_HUB_TOKEN"):
        os.environ.pop(_var, None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class NetworkAccessBlocked(RuntimeError):
    """Raised when a test tries to reach a non-loopback address."""


_LOOPBACK_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_ATTEMPTS: list[str] = []


def _own_names() -> set[str]:
    names = set()
    for fn in (socket.gethostname, socket.getfqdn):
        try:
            names.add(fn().lower())
        except OSError:
            pass
    return names


def is_loopback_host(host: Any) -> bool:
    """Whether ``host`` (name, address string, bytes or None) designates this machine's loopback."""
    if host is None:
        return True
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    h = str(host).strip("[]").lower()
    if h in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(h.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or ip.is_unspecified or bool(mapped and mapped.is_loopback)


def _blocked(what: str) -> NetworkAccessBlocked:
    _ATTEMPTS.append(what)
    return NetworkAccessBlocked(f"tests must not use the network: {what} refused (only loopback is allowed)")


@pytest.fixture(scope="session", autouse=True)
def _wsl_network_guard() -> Iterator[None]:
    """Refuse non-loopback connects and name lookups for the whole session."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo
    own = _own_names()

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
            if not is_loopback_host(address[0]) and str(address[0]).lower() not in own:
                raise _blocked(f"connect to {address[0]}:{address[1] if len(address) > 1 else '?'}")

    def connect(self: socket.socket, address: Any) -> Any:
        check(self, address)
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        check(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode(errors="replace") if isinstance(host, bytes) else host
        if not is_loopback_host(name) and str(name).lower() not in own:
            raise _blocked(f"name lookup of {name!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex = real_connect, real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo


@pytest.fixture(autouse=True)
def _wsl_no_network(_wsl_network_guard: None) -> Iterator[None]:
    """Fail the test if it tried to reach the network (even if the error was caught)."""
    start = len(_ATTEMPTS)
    yield
    if len(_ATTEMPTS) > start:
        pytest.fail("test tried to use the network: " + "; ".join(_ATTEMPTS[start:]), pytrace=False)
# ======================================== end of the wsl.hub section ========================================


# =============================================================================================================
# Process state (owner: tests/test_threads.py)
#
# Library code leaves torch's thread count alone; entry points (`wsl` commands, worker processes, benchmark
# scripts) set it. Tests that run an entry point in this process (``wsl.cli.main([...])``) must not leak its
# setting into later tests, so every test gets the thread count back. ``one_thread`` is for tests that act as
# an entry point and compare bits with `wsl predict` / `wsl serve`, which run on one thread.
# =============================================================================================================
@pytest.fixture(autouse=True)
def _wsl_restore_threads() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_thread() -> None:
    """Run this test on one torch thread, as `wsl predict` and the `wsl serve` workers do (restored after)."""
    import torch

    torch.set_num_threads(1)
# ======================================== end of the process-state section ==================================
