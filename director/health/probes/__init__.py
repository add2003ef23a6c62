"""Probes: one look at one server, answered as a ProbeResult.

`Prober` runs a single check of any type, shares TLS contexts between probes
(the checker keeps one for its whole run) and never raises an Exception:
network failures are failed results with their reasons (`attempt.py`), and
anything else a probe raises is a failed result with reason `error`, logged
once in a while as a bug (`contain.py`). Cancellation passes through. `probe`
is the same for one call. The per-type functions (`probe_http`, ...) contain
network failures only.

Only the TCP probe is imported with this package. The others, and the
libraries they need (httpx and h11, dnspython, `regex`), load with the first
config that uses their type (`load_probe`, called by the config's parser),
or at their first call: a daemon that checks TCP alone never imports them
(about 60 ms and 6 MiB on the host; seconds in a VM that reads the package
over 9p).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, assert_never

import trio

from director.health.probes.contain import BugLog, contained
from director.health.probes.tcp import probe_tcp
from director.health.probes.tls import TlsContexts
from director.health.result import ProbeResult
from director.health.spec import Check, DnsCheck, ExecCheck, HttpCheck, TcpCheck, UdpCheck
from director.ipvs.model import IPAddress

ProbeFunction = Callable[[Check, IPAddress, int], Awaitable[ProbeResult]]

__all__ = [
    "ProbeFunction",
    "Prober",
    "load_probe",
    "probe",
    "probe_dns",
    "probe_exec",
    "probe_http",
    "probe_tcp",
    "probe_udp",
]

_MODULES: dict[type[Check], str] = {
    HttpCheck: "director.health.probes.http",
    UdpCheck: "director.health.probes.udp",
    DnsCheck: "director.health.probes.dns",
    ExecCheck: "director.health.probes.command",
}


def load_probe(check_type: type[Check]) -> None:
    """Import the probe of `check_type` and its libraries now, not at its
    first call: that would hold up the event loop, and every probe due
    meanwhile, for the length of the import."""
    module = _MODULES.get(check_type)
    if module is not None:
        importlib.import_module(module)


def _on_first_call(check_type: type[Check], name: str) -> Callable[..., Any]:
    """A stand-in for the function `name` of `check_type`'s probe module that
    imports the module at its first call (and finds it in sys.modules after)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(_MODULES[check_type]), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


if TYPE_CHECKING:
    from director.health.probes.command import probe_exec
    from director.health.probes.dns import probe_dns
    from director.health.probes.http import probe_http
    from director.health.probes.udp import probe_udp
else:
    probe_exec = _on_first_call(ExecCheck, "probe_exec")
    probe_dns = _on_first_call(DnsCheck, "probe_dns")
    probe_http = _on_first_call(HttpCheck, "probe_http")
    probe_udp = _on_first_call(UdpCheck, "probe_udp")


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
