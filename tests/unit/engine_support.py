"""What the engine's unit tests share: a network of probes that answers
from a set of addresses that are down, and a director running in a nursery
of its own for the length of a block (under trio's autojump clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs.model import IPAddress


class Network:
    """Every probe answers after 10 ms: refused for an address in `down`,
    else a success. Nothing touches a socket."""

    def __init__(self) -> None:
        self.down: set[IPAddress] = set()

    async def probe(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(0.01)
        if address in self.down:
            return ProbeResult.failure(Reason.REFUSED, 0.01)
        return ProbeResult.success(0.01)


@asynccontextmanager
async def running(director: Director) -> AsyncIterator[trio.Nursery]:
    """`director.run` started in a nursery, cancelled when the block ends."""
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        yield nursery
        nursery.cancel_scope.cancel()
