"""An IPVS table in memory, refusing what the kernel refuses with the same
errors, for unit tests of the pure core.

It is a model, not the kernel: nothing claimed about the kernel may rest on
it. Known differences: services and destinations come back in the order they
were added (the kernel's dump order is its hash order), counters only move
when a test sets them, and there is no connection table unless one is given.

Operations go through the netlink encoder first (director.ipvs.genl), so
what it refuses is refused here too (InvalidOperation), then through the
kernel's checks in the kernel's order (net/netfilter/ipvs/ip_vs_ctl.c).
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import replace

from director.ipvs import genl
from director.ipvs.errors import BatchError, InvalidOperation, KernelError, error_for
from director.ipvs.facts import KNOWN_SCHEDULERS, PERSISTENCE_ENGINES, destination_problem
from director.ipvs.model import (
    AF_INET6,
    Connection,
    Destination,
    DestinationEntry,
    Info,
    IPAddress,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Stats,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelType,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Flush,
    Operation,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    Zero,
)

KERNEL_SCHEDULERS = frozenset(KNOWN_SCHEDULERS)
KERNEL_PERSISTENCE_ENGINES = frozenset(PERSISTENCE_ENGINES)
DEFAULT_TIMEOUTS = Timeouts(tcp=900, tcp_fin=120, udp=300)
DEFAULT_INFO = Info(version=0x010201, conn_tab_size=4096)  # IPVS 1.2.1
DEFAULT_HZ = 250  # Debian's kernel: timeouts up to INT_MAX // 250 seconds
INT_MAX = 0x7FFFFFFF


class _Failure(Exception):
    def __init__(self, err: int) -> None:
        self.errno = err


class MemoryBackend:
    """director.ipvs.ops.Backend over dicts."""

    def __init__(
        self,
        services: Iterable[ServiceEntry] = (),
        *,
        timeouts: Timeouts = DEFAULT_TIMEOUTS,
        schedulers: Iterable[str] = KERNEL_SCHEDULERS,
        connections: Iterable[Connection] = (),
        info: Info = DEFAULT_INFO,
        hz: int = DEFAULT_HZ,
    ) -> None:
        self._services: dict[ServiceKey, ServiceEntry] = {}
        for entry in services:
            self._services[entry.service.key] = entry
        self._timeouts = timeouts
        self._schedulers = frozenset(schedulers)
        self._connections = list(connections)
        self._daemons: dict[SyncState, SyncDaemon] = {}
        self._info = info
        self._hz = hz
        self.closed = False
        self.applied: list[Operation] = []  # every operation that succeeded, in order

    def info(self) -> Info:
        return self._info

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        return [
            replace(e, service=replace(e.service, flags=e.service.flags | ServiceFlags.HASHED))
            for e in self._services.values()
            if only is None or e.service.key in only
        ]

    def settled_digests(self, keys: Collection[ServiceKey]) -> dict[ServiceKey, bytes]:
        """As NetlinkBackend.settled_digests: a hash of each of `keys`'
        service and destinations without stats and connection counts."""
        digests: dict[ServiceKey, bytes] = {}
        for key in keys:
            entry = self._services.get(key)
            if entry is not None:
                settled = (entry.service, tuple(d.destination for d in entry.destinations))
                digests[key] = hashlib.blake2b(repr(settled).encode(), digest_size=16).digest()
        return digests

    def timeouts(self) -> Timeouts:
        return self._timeouts

    def daemons(self) -> list[SyncDaemon]:
        return list(self._daemons.values())

    def connections(self) -> list[Connection]:
        return list(self._connections)

    def close(self) -> None:
        self.closed = True

    def apply(self, operations: Sequence[Operation]) -> None:
        """As NetlinkBackend.apply: InvalidOperation (nothing applied) if the
        encoder refuses one; BatchError at the first the kernel would refuse."""
        for index, op in enumerate(operations):
            try:
                genl.operation_body(op)
            except InvalidOperation as exc:
                raise InvalidOperation(f"operation {index}: {exc}") from exc
        for index, op in enumerate(operations):
            try:
                self._apply(op)
            except _Failure as failure:
                raise BatchError(index, op, error_for(failure.errno, type(op).__name__)) from None
            self.applied.append(op)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        """As NetlinkBackend.apply_each: every operation is tried; each one's
        outcome in order (None: applied)."""
        outcomes: list[KernelError | None] = []
        for op in operations:
            try:
                genl.operation_body(op)
                self._apply(op)
            except InvalidOperation as exc:
                outcomes.append(exc)
            except _Failure as failure:
                outcomes.append(error_for(failure.errno, type(op).__name__))
            else:
                self.applied.append(op)
                outcomes.append(None)
        return outcomes

    def _apply(self, op: Operation) -> None:
        if isinstance(op, AddService):
            if op.service.key in self._services:
                raise _Failure(errno.EEXIST)
            self._check_service(op.service)
            self._services[op.service.key] = ServiceEntry(_stored(op.service))
        elif isinstance(op, EditService):
            entry = self._service(op.service.key)
            self._check_service(op.service)
            self._put(replace(entry, service=_stored(op.service)))
        elif isinstance(op, DeleteService):
            self._service(op.key)
            del self._services[op.key]
        elif isinstance(op, AddDestination):
            entry = self._service(op.service)
            _check_destination(op.destination)
            if _find(entry, op.destination.address, op.destination.port) is not None:
                raise _Failure(errno.EEXIST)
            if not _unicast(op.destination.address):
                raise _Failure(errno.EINVAL)  # ip_vs_new_dest
            new = DestinationEntry(op.destination)
            self._put(replace(entry, destinations=(*entry.destinations, new)))
        elif isinstance(op, EditDestination):
            entry = self._service(op.service)
            _check_destination(op.destination)
            index = self._destination(entry, op.destination.address, op.destination.port)
            edited = replace(entry.destinations[index], destination=op.destination)
            self._put(replace(entry, destinations=_spliced(entry, index, edited)))
        elif isinstance(op, DeleteDestination):
            entry = self._service(op.service)
            index = self._destination(entry, op.address, op.port)
            self._put(replace(entry, destinations=_spliced(entry, index)))
        elif isinstance(op, Flush):
            self._services.clear()
        elif isinstance(op, Zero):
            keys = (
                list(self._services)
                if op.service is None
                else [self._service(op.service).service.key]
            )
            for key in keys:
                self._put(_zeroed(self._services[key]))
        elif isinstance(op, SetTimeouts):
            limit = INT_MAX // self._hz  # ip_vs_set_timeout
            if any(t > limit for t in (op.timeouts.tcp, op.timeouts.tcp_fin, op.timeouts.udp)):
                raise _Failure(errno.EINVAL)
            self._timeouts = Timeouts(
                tcp=op.timeouts.tcp or self._timeouts.tcp,
                tcp_fin=op.timeouts.tcp_fin or self._timeouts.tcp_fin,
                udp=op.timeouts.udp or self._timeouts.udp,
            )
        elif isinstance(op, StartDaemon):
            for state in (SyncState.MASTER, SyncState.BACKUP):
                if op.daemon.state & state and state in self._daemons:
                    raise _Failure(errno.EEXIST)
            for state in (SyncState.MASTER, SyncState.BACKUP):
                if op.daemon.state & state:
                    self._daemons[state] = replace(op.daemon, state=state)
        elif isinstance(op, StopDaemon):
            stopping = [s for s in (SyncState.MASTER, SyncState.BACKUP) if op.state & s]
            if not stopping or any(s not in self._daemons for s in stopping):
                raise _Failure(errno.ESRCH)
            for state in stopping:
                del self._daemons[state]
        else:  # pragma: no cover - exhaustive over Operation
            raise TypeError(f"not an IPVS operation: {op!r}")

    def _service(self, key: ServiceKey) -> ServiceEntry:
        entry = self._services.get(key)
        if entry is None:
            raise _Failure(errno.ESRCH)
        return entry

    def _destination(self, entry: ServiceEntry, address: IPAddress, port: int) -> int:
        index = _find(entry, address, port)
        if index is None:
            raise _Failure(errno.ENOENT)
        return index

    def _put(self, entry: ServiceEntry) -> None:
        self._services[entry.service.key] = entry

    def _check_service(self, service: Service) -> None:
        if service.scheduler not in self._schedulers:
            raise _Failure(errno.ENOENT)
        if service.pe_name and service.pe_name not in KERNEL_PERSISTENCE_ENGINES:
            raise _Failure(errno.ENOENT)
        if service.key.family == AF_INET6 and not 1 <= service.netmask <= 128:
            raise _Failure(errno.EINVAL)


def _stored(service: Service) -> Service:
    return replace(service, flags=service.flags & ~ServiceFlags.HASHED)


def _find(entry: ServiceEntry, address: IPAddress, port: int) -> int | None:
    for i, e in enumerate(entry.destinations):
        if e.destination.address == address and e.destination.port == port:
            return i
    return None


def _spliced(
    entry: ServiceEntry, index: int, *new: DestinationEntry
) -> tuple[DestinationEntry, ...]:
    return (*entry.destinations[:index], *new, *entry.destinations[index + 1 :])


def _check_destination(dest: Destination) -> None:
    # ip_vs_add_dest/ip_vs_edit_dest check these before looking the destination up;
    # a weight above INT_MAX is a negative int to the kernel.
    if not 0 <= dest.weight <= INT_MAX:
        raise _Failure(errno.ERANGE)
    if dest.l_threshold > dest.u_threshold:
        raise _Failure(errno.ERANGE)
    if dest.tun_type == TunnelType.GUE and dest.tun_port == 0:
        raise _Failure(errno.EINVAL)


def _zeroed(entry: ServiceEntry) -> ServiceEntry:
    return replace(
        entry,
        stats=Stats(),
        destinations=tuple(replace(d, stats=Stats()) for d in entry.destinations),
    )


def _unicast(address: IPAddress) -> bool:
    """What ip_vs_new_dest takes, for addresses not local to the host."""
    return destination_problem(address) is None
