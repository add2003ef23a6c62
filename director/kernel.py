"""The kernel's IPVS table as seen from trio: the blocking backend runs in a
worker thread, one call at a time (a backend is not thread-safe)."""

from __future__ import annotations

from collections.abc import Sequence

import trio

from director.ipvs.model import Connection, Info, ServiceEntry, SyncDaemon, Timeouts
from director.ipvs.ops import Backend, Operation


class KernelTable:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._one_at_a_time = trio.CapacityLimiter(1)

    async def services(self) -> list[ServiceEntry]:
        return await trio.to_thread.run_sync(self.backend.services, limiter=self._one_at_a_time)

    async def apply(self, operations: Sequence[Operation]) -> None:
        if operations:
            await trio.to_thread.run_sync(
                self.backend.apply, list(operations), limiter=self._one_at_a_time
            )

    async def timeouts(self) -> Timeouts:
        return await trio.to_thread.run_sync(self.backend.timeouts, limiter=self._one_at_a_time)

    async def info(self) -> Info:
        return await trio.to_thread.run_sync(self.backend.info, limiter=self._one_at_a_time)

    async def daemons(self) -> list[SyncDaemon]:
        return await trio.to_thread.run_sync(self.backend.daemons, limiter=self._one_at_a_time)

    async def connections(self) -> list[Connection]:
        return await trio.to_thread.run_sync(self.backend.connections, limiter=self._one_at_a_time)
