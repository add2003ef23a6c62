"""UDP check: send a payload from a connected socket and wait for the reply.

With `expect`, a reply matching it is up. Without, any reply or silence until
the timeout is up; only an ICMP error (port or host unreachable, which a
connected socket reports on receive) is down.
"""

from __future__ import annotations

import re

import trio

from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import UdpCheck
from director.ipvs.model import IPAddress, family_of

MAX_DATAGRAM = 65535


async def probe_udp(check: UdpCheck, address: IPAddress, port: int) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    with probe_attempt(check.timing.timeout) as attempt:
        with trio.socket.socket(family_of(address), trio.socket.SOCK_DGRAM) as sock:
            await sock.connect((str(address), port))
            await sock.send(check.payload)
            reply = await sock.recv(MAX_DATAGRAM)
        if check.expect is None or re.search(check.expect, reply.decode("latin-1")):
            attempt.succeed(detail=f"{len(reply)} byte reply")
        else:
            attempt.fail(Reason.BAD_REPLY, f"reply {reply[:40]!r} does not match {check.expect!r}")
    return _interpret_silence(attempt.result, check)


def _interpret_silence(result: ProbeResult, check: UdpCheck) -> ProbeResult:
    if result.reason is Reason.TIMEOUT:
        if check.expect is None:
            return ProbeResult.success(result.latency, detail="no reply")
        return ProbeResult.failure(Reason.NO_REPLY, result.latency, result.detail)
    if result.reason is Reason.REFUSED:
        return ProbeResult.failure(Reason.UNREACHABLE, result.latency, "ICMP port unreachable")
    return result
