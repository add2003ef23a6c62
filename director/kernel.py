"""The kernel's IPVS table as seen from trio: the blocking backend runs in a
worker thread, one call at a time (a backend is not thread-safe).

`threaded=False` calls the backend inline instead; for the in-memory backend
under trio's autojump clock, where a worker thread would let virtual time jump
while a call is still running.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import trio

from director.ipvs.model import Connection, Info, ServiceEntry, ServiceKey, SyncDaemon, Timeouts
from director.ipvs.ops import Backend, Operation

T = TypeVar("T")


class KernelTable:
    def __init__(self, backend: Backend, *, threaded: bool = True) -> None:
        self.backend = backend
        self._threaded = threaded
        self._one_at_a_time = trio.CapacityLimiter(1)

    async def _call(self, function: Callable[[], T]) -> T:
        if not self._threaded:
            await trio.lowlevel.checkpoint()
            return function()
        return await trio.to_thread.run_sync(function, limiter=self._one_at_a_time)

    async def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        return await self._call(lambda: self.backend.services(only, brief=brief))

    async def apply(self, operations: Sequence[Operation]) -> None:
        if operations:
            batch = list(operations)
            await self._call(lambda: self.backend.apply(batch))

    async def timeouts(self) -> Timeouts:
        return await self._call(self.backend.timeouts)

    async def info(self) -> Info:
        return await self._call(self.backend.info)

    async def daemons(self) -> list[SyncDaemon]:
        return await self._call(self.backend.daemons)

    async def connections(self) -> list[Connection]:
        return await self._call(self.backend.connections)
