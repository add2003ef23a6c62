"""sd_notify datagrams as systemd receives them, on a socket bound under /tmp."""

import os
import socket
import tempfile
from collections.abc import Iterator

import pytest

from director.sdnotify import Notifier


@pytest.fixture
def systemd() -> Iterator[tuple[str, socket.socket]]:
    directory = tempfile.mkdtemp(prefix="sdn", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def test_extend_timeout_sends_microseconds(systemd: tuple[str, socket.socket]) -> None:
    path, sock = systemd
    notifier = Notifier(path)
    notifier.extend_timeout(30)
    notifier.extend_timeout(0.0015)
    notifier.ready("3 services")
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=30000000"
    assert sock.recv(4096) == b"EXTEND_TIMEOUT_USEC=1500"
    assert sock.recv(4096) == b"READY=1\nSTATUS=3 services"
    notifier.close()


@pytest.mark.parametrize("seconds", [-1.0, float("nan"), float("inf")])
def test_extend_timeout_refuses_what_is_not_a_duration(seconds: float) -> None:
    notifier = Notifier("/tmp/nowhere")
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        notifier.extend_timeout(seconds)
    notifier.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.extend_timeout(10)  # does nothing, raises nothing


def test_a_vanished_systemd_is_not_an_error(systemd: tuple[str, socket.socket]) -> None:
    notifier = Notifier(systemd[0] + ".gone")
    assert notifier.enabled
    notifier.extend_timeout(10)
    notifier.close()
    assert not notifier.enabled
