"""Fault containment: whatever a probe raises becomes a failed result.

Known network failures are translated where they happen (`attempt.py`). What
is left is a bug, or an input nobody foresaw (a library raising a type its
callers do not expect); it must not end the daemon. `contained` turns it into
a failed `ProbeResult` (reason `error`, detail "TypeName: message") and logs
it as `probe_error` with its traceback, at most once per BUG_LOG_INTERVAL for
each (check type, exception type): one broken server probed every second
must not flood the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import assert_never

import trio

from director import log
from director.health.result import ProbeResult, Reason
from director.health.spec import Check, DnsCheck, ExecCheck, HttpCheck, TcpCheck, UdpCheck
from director.ipvs.model import IPAddress

BUG_LOG_INTERVAL = 600.0  # seconds between two logs of the same (check type, exception type)
MAX_DETAIL = 200  # characters of the exception's message kept in the detail


@dataclass
class BugLog:
    """When to log an unexpected exception: the first time for a key, then at
    most once per `interval` seconds, counting what it left out."""

    interval: float = BUG_LOG_INTERVAL
    _last: dict[tuple[str, str], float] = field(default_factory=dict)
    _unlogged: dict[tuple[str, str], int] = field(default_factory=dict)

    def admit(self, key: tuple[str, str], now: float) -> int | None:
        """None to stay silent, else how many of `key` went unlogged since the last log."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._unlogged.pop(key, 0)


def check_type(check: Check) -> str:
    """The check's `type` as the config names it."""
    if isinstance(check, HttpCheck):
        return "https" if check.tls else "http"
    if isinstance(check, TcpCheck):
        return "tcp"
    if isinstance(check, UdpCheck):
        return "udp"
    if isinstance(check, ExecCheck):
        return "exec"
    if isinstance(check, DnsCheck):
        return "dns"
    assert_never(check)


def describe(exc: BaseException) -> str:
    message = str(exc)
    if len(message) > MAX_DETAIL:
        message = message[:MAX_DETAIL] + "..."
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def contained(
    exc: Exception,
    check: Check,
    address: IPAddress,
    port: int,
    started: float,
    bugs: BugLog,
) -> ProbeResult:
    """The failed result for `exc`, raised by a probe started at `started`
    (trio time); logs it when `bugs` admits it."""
    now = trio.current_time()
    kind = check_type(check)
    unlogged = bugs.admit((kind, type(exc).__qualname__), now)
    if unlogged is not None:
        log.get("probe").error(
            "probe_error",
            check=kind,
            address=str(address),
            port=port,
            error=describe(exc),
            unlogged=unlogged,
            exc_info=exc,
        )
    return ProbeResult.failure(Reason.ERROR, now - started, describe(exc))
