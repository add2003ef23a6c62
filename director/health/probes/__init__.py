"""Probes: one look at one server, answered as a ProbeResult.

`Prober` runs a single check of any type, shares TLS contexts between probes
(the checker keeps one for its whole run) and never raises an Exception:
network failures are failed results with their reasons (`attempt.py`), and
anything else a probe raises is a failed result with reason `error`, logged
once in a while as a bug (`contain.py`). Cancellation passes through. `probe`
is the same for one call. The per-type functions (`probe_http`, ...) contain
network failures only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import assert_never

import trio

from director.health.probes.command import probe_exec
from director.health.probes.contain import BugLog, contained
from director.health.probes.dns import probe_dns
from director.health.probes.http import probe_http
from director.health.probes.tcp import probe_tcp
from director.health.probes.tls import TlsContexts
from director.health.probes.udp import probe_udp
from director.health.result import ProbeResult
from director.health.spec import Check, DnsCheck, ExecCheck, HttpCheck, TcpCheck, UdpCheck
from director.ipvs.model import IPAddress

ProbeFunction = Callable[[Check, IPAddress, int], Awaitable[ProbeResult]]

__all__ = [
    "ProbeFunction",
    "Prober",
    "probe",
    "probe_dns",
    "probe_exec",
    "probe_http",
    "probe_tcp",
    "probe_udp",
]


class Prober:
    """Runs a check of any type; keep one for many probes."""

    def __init__(self) -> None:
        self._tls = TlsContexts()
        self._bugs = BugLog()

    async def __call__(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        started = trio.current_time()
        try:
            return await self._dispatch(check, address, port)
        except Exception as exc:  # a probe can only fail: see contain.py
            return contained(exc, check, address, port, started, self._bugs)

    async def _dispatch(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        if isinstance(check, TcpCheck):
            return await probe_tcp(check, address, port)
        if isinstance(check, HttpCheck):
            return await probe_http(check, address, port, self._tls)
        if isinstance(check, UdpCheck):
            return await probe_udp(check, address, port)
        if isinstance(check, DnsCheck):
            return await probe_dns(check, address, port)
        if isinstance(check, ExecCheck):
            return await probe_exec(check, address, port)
        assert_never(check)


async def probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
    return await Prober()(check, address, port)
