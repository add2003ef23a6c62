"""systemd's notify protocol (sd_notify): READY, RELOADING, STOPPING,
WATCHDOG keep-alives, EXTEND_TIMEOUT_USEC and STATUS lines, sent as datagrams to
$NOTIFY_SOCKET (fields as in sd_notify(3)). Without that variable (not run by
systemd) every call does nothing."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def close(self) -> None:
        """Close the socket; later calls do nothing."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def notify(self, *fields: str) -> None:
        if self._socket is None or self._address is None:
            return
        # systemd gone or its socket full: nothing useful to do about it.
        with contextlib.suppress(OSError):
            self._socket.sendto("\n".join(fields).encode(), self._address)

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload units pair this with READY=1.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more of the current start-up, runtime or stop timeout
        (EXTEND_TIMEOUT_USEC, sd_notify(3), systemd >= 236): systemd then expects
        another message (this one again, or READY=1) within that time. Raises
        ValueError for a negative or non-finite number of seconds."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"extend_timeout takes a finite number of seconds >= 0, not {seconds}")
        self.notify(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")


def watchdog_interval() -> float | None:
    """Half of the watchdog timeout systemd asked for, or None when it asked none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
