"""A meter of the event loop's liveness for tests of work that must never
hold it up: how many times a task woke every 10 ms while something ran."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio


@dataclass
class Ticks:
    count: int = 0


@asynccontextmanager
async def ticking() -> AsyncIterator[Ticks]:
    """Count, in `Ticks.count`, the wake-ups of a task that sleeps 10 ms in
    a loop, for as long as the block runs (a real clock)."""
    ticks = Ticks()

    async def tick() -> None:
        while True:
            ticks.count += 1
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick)
        yield ticks
        nursery.cancel_scope.cancel()
