"""Kernel tests: each one runs in a fresh network namespace of its own.

The `netns` fixture moves the test's thread into a new, empty network
namespace (loopback up) for the duration of the test, so sockets opened by the
test and processes it starts (ipvsadm, directord) see that namespace's own IPVS
table, never the host's. These tests need a kernel with ip_vs: run them with
`python tests/vm/run.py pytest tests/kernel` (the VM, or natively where the host
has ip_vs).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from topology import Network, RealServers, network

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.kernel)


def pytest_sessionstart(session: pytest.Session) -> None:
    if not Path("/proc/net/ip_vs").exists() and not _modprobe("ip_vs"):
        raise pytest.UsageError(
            "kernel tests need ip_vs: run them through tests/vm/run.py (boots a kernel that has it)"
        )


def _modprobe(module: str) -> bool:
    return subprocess.run(["modprobe", "-q", module], check=False).returncode == 0


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """Run the test inside a fresh network namespace; yields its name."""
    name = f"dt{os.getpid()}-{next(_counter)}"
    ip("netns", "add", name)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        ip("link", "set", "lo", "up")
        yield name
    finally:
        _setns(original)
        os.close(target)
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], check=False)


# -- the end-to-end network (tests/kernel/topology.py) and its real servers


@pytest.fixture
def net(netns: str) -> Iterator[Network]:
    """Client, director and real-server namespaces wired to the test's own."""
    with network(netns) as built:
        yield built


@pytest.fixture
def servers(net: Network) -> Iterator[RealServers]:
    """Every real server of `net` running; stopped at teardown."""
    running = RealServers(net)
    try:
        running.start_all()
        yield running
    finally:
        running.close()
