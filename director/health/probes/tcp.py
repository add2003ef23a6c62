"""TCP check: the server is up when it accepts a connection."""

from __future__ import annotations

import trio

from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult
from director.health.spec import TcpCheck
from director.ipvs.model import IPAddress, family_of


async def probe_tcp(check: TcpCheck, address: IPAddress, port: int) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    with probe_attempt(check.timing.timeout) as attempt:
        with trio.socket.socket(family_of(address), trio.socket.SOCK_STREAM) as sock:
            await sock.connect((str(address), port))
        attempt.succeed()
    return attempt.result
