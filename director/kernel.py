"""The kernel's IPVS table as seen from trio: the blocking backend runs in a
worker thread, one call at a time (a backend is not thread-safe).

Reads that fail transiently (director.ipvs.errors.TransientKernelError: an
interrupted dump, a lost reply) are retried READ_ATTEMPTS times in all, with
a short growing pause, before the error is raised; writes are never retried
here (an unknown outcome is the caller's to resolve by reading). Everything
raised is a director.ipvs.errors.KernelError.

A KernelTable holds no state beyond its backend and its one-call-at-a-time
limiter: two tables over two backends (one for reconcile passes, one for
control-socket listings) run side by side in one process, each call of one
never waiting for the other.

A batch of at most INLINE_OPERATIONS operations (a health change's, a
control command's) is applied in the caller's thread, still one call at a
time: in a worker thread, each of its system calls gave up the GIL, and a
busy loop (10,000 real servers) held it up to its switch interval (5 ms)
each time, so that one server's change reached the kernel 40 ms after its
verdict where 10 ms was the idle loop's (bench/README.md, stop 33). A
netlink operation returns at once: the kernel answers it in the send.
Nor does it checkpoint when the table is free: each checkpoint of the
engine's pass let every busy task run a slice of its work before the
change went on.

`threaded=False` calls the backend inline instead; for the in-memory backend
under trio's autojump clock, where a worker thread would let virtual time jump
while a call is still running. `run_sync` runs other blocking work (the
state file, formatting a large listing) the same way: in a worker thread, or
inline when the table is not threaded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import trio

from director.ipvs.errors import KernelError, TransientKernelError
from director.ipvs.model import (
    Connection,
    Info,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    Timeouts,
)
from director.ipvs.netlink import NetlinkBackend
from director.ipvs.ops import Backend, Operation
from director.ipvs.servicetable import TableKey, proc_destination, table_key
from director.taskcpu import counted

T = TypeVar("T")

READ_ATTEMPTS = 4
INLINE_OPERATIONS = 32  # at most, applied without a worker thread
READ_BACKOFF = 0.05  # seconds before the second attempt; doubled before each next one


class KernelTable:
    def __init__(self, backend: Backend, *, threaded: bool = True) -> None:
        self.backend = backend
        self._threaded = threaded
        self._one_at_a_time = trio.CapacityLimiter(1)

    async def run_sync(self, function: Callable[[], T]) -> T:
        """`function()` in a worker thread (of its own, not the table's), or
        inline when the table is not threaded (tests under a virtual clock)."""
        if not self._threaded:
            await trio.lowlevel.checkpoint()
            return function()
        return await trio.to_thread.run_sync(counted(function))

    async def _call(self, function: Callable[[], T], *, inline: bool = False) -> T:
        """`function()` in a worker thread, one call at a time; with `inline`
        (a call that cannot block: a few operations), in this thread, still
        one at a time."""
        if not self._threaded:
            await trio.lowlevel.checkpoint()
            return function()
        if inline:
            limiter = self._one_at_a_time
            try:
                limiter.acquire_nowait()
            except trio.WouldBlock:
                await limiter.acquire()
            try:
                return function()
            finally:
                limiter.release()
        return await trio.to_thread.run_sync(counted(function), limiter=self._one_at_a_time)

    async def _read(self, function: Callable[[], T]) -> T:
        """`function` called until it does not fail transiently, at most
        READ_ATTEMPTS times; the last TransientKernelError is raised."""
        pause = READ_BACKOFF
        for _ in range(READ_ATTEMPTS - 1):
            try:
                return await self._call(function)
            except TransientKernelError:
                await trio.sleep(pause)
                pause *= 2
        return await self._call(function)

    async def services(
        self,
        only: Collection[ServiceKey] | None = None,
        *,
        brief: bool = False,
        counters: bool = True,
    ) -> list[ServiceEntry]:
        """Backend.services. `counters=False`: the caller needs no stats and
        no connection counts (a reconcile pass): the netlink backend then
        decodes none (they read as zero); other backends hold them anyway."""
        backend = self.backend
        if not counters and isinstance(backend, NetlinkBackend):
            return await self._read(lambda: backend.services(only, brief=brief, counters=False))
        return await self._read(lambda: backend.services(only, brief=brief))

    async def settled_digests(self, keys: Collection[ServiceKey]) -> dict[ServiceKey, bytes] | None:
        """The backend's `settled_digests(keys)` (NetlinkBackend's): for
        each of `keys` in the table, a hash of what a read in full decodes;
        None for a backend without it."""
        read = getattr(self.backend, "settled_digests", None)
        if read is None:
            return None
        wanted = list(keys)
        digests: dict[ServiceKey, bytes] = await self._read(lambda: read(wanted))
        return digests

    async def digests(self) -> dict[TableKey, str] | None:
        """What each service looks like, as a string that changes when what
        ipvsadm's plain listing shows of it changes (not its connection
        counts or stats), by servicetable.table_key: the backend's
        `service_digests()` where it has one (NetlinkBackend: one read of
        /proc/net/ip_vs, no destination decoded), else entry_digest of a
        brief read. None when the backend's cheap read failed (the caller
        reads the table instead)."""
        read = getattr(self.backend, "service_digests", None)
        if read is not None:
            digests: dict[TableKey, str] | None = await self._call(read)
            return digests
        digests = {}
        for entry in await self.services(brief=True):
            key = table_key(entry.service.key)
            digests[key] = digests.get(key, "") + entry_digest(entry)
        return digests

    async def apply(self, operations: Sequence[Operation]) -> None:
        """Backend.apply: stops at the first failure (BatchError)."""
        if operations:
            batch = list(operations)
            await self._call(
                lambda: self.backend.apply(batch), inline=len(batch) <= INLINE_OPERATIONS
            )

    async def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        """Backend.apply_each: every operation's outcome, in order (None:
        applied); raises only when outcomes are unknown."""
        if not operations:
            return []
        batch = list(operations)
        return await self._call(
            lambda: self.backend.apply_each(batch), inline=len(batch) <= INLINE_OPERATIONS
        )

    async def timeouts(self) -> Timeouts:
        return await self._read(self.backend.timeouts)

    async def info(self) -> Info:
        return await self._read(self.backend.info)

    async def daemons(self) -> list[SyncDaemon]:
        return await self._read(self.backend.daemons)

    async def connections(self) -> list[Connection]:
        return await self._read(self.backend.connections)


def entry_digest(entry: ServiceEntry) -> str:
    """The fields of a service and its destinations that /proc/net/ip_vs
    shows (director.ipvs.netlink.table_digests), as one string: for
    backends without the file, so that they see the same changes. Its
    destination lines are the file's (servicetable.proc_destination), which
    servicetable.digest_shows reads."""
    s = entry.service
    lines = [
        f"{s.key} {s.scheduler} {int(s.flags & (ServiceFlags.PERSISTENT | ServiceFlags.ONEPACKET))}"
    ]
    if s.flags & ServiceFlags.PERSISTENT:
        lines.append(f" {s.timeout} {s.netmask}")
    for e in entry.destinations:
        lines.append(f"\n  {proc_destination(e.destination)}")
    return "".join(lines) + "\n"
