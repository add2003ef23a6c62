"""Changes to the IPVS table as values, and the one interface every backend
implements.

A list of these operations is what the reconciler produces and what a backend
applies (in order, batched where it can). They map one-to-one onto the kernel's
IPVS generic-netlink commands and onto ipvsadm's command line.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from director.ipvs.model import (
    Connection,
    Destination,
    Info,
    IPAddress,
    Service,
    ServiceEntry,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
)

if TYPE_CHECKING:
    from director.ipvs.errors import KernelError


@dataclass(frozen=True)
class AddService:
    """Add a virtual service (IPVS_CMD_NEW_SERVICE, ipvsadm -A)."""

    service: Service


@dataclass(frozen=True)
class EditService:
    """Change the settings of the virtual service with this key
    (IPVS_CMD_SET_SERVICE, ipvsadm -E)."""

    service: Service


@dataclass(frozen=True)
class DeleteService:
    """Delete a virtual service and its destinations (IPVS_CMD_DEL_SERVICE,
    ipvsadm -D)."""

    key: ServiceKey


@dataclass(frozen=True)
class AddDestination:
    """Add a destination (real server) to a virtual service (IPVS_CMD_NEW_DEST,
    ipvsadm -a)."""

    service: ServiceKey
    destination: Destination


@dataclass(frozen=True)
class EditDestination:
    """Change the settings of the destination with this address and port in a
    virtual service (IPVS_CMD_SET_DEST, ipvsadm -e)."""

    service: ServiceKey
    destination: Destination


@dataclass(frozen=True)
class DeleteDestination:
    """Remove a destination from a virtual service (IPVS_CMD_DEL_DEST, ipvsadm -d)."""

    service: ServiceKey
    address: IPAddress
    port: int


@dataclass(frozen=True)
class Flush:
    """Delete every service (ipvsadm -C)."""


@dataclass(frozen=True)
class Zero:
    """Zero the counters of one service, or of all when service is None."""

    service: ServiceKey | None = None


@dataclass(frozen=True)
class SetTimeouts:
    """Set the connection timeouts, in seconds; 0 keeps one as it is
    (IPVS_CMD_SET_CONFIG, ipvsadm --set tcp tcpfin udp)."""

    timeouts: Timeouts


@dataclass(frozen=True)
class StartDaemon:
    """Start a connection sync daemon, master or backup (IPVS_CMD_NEW_DAEMON,
    ipvsadm --start-daemon)."""

    daemon: SyncDaemon


@dataclass(frozen=True)
class StopDaemon:
    """Stop the connection sync daemon of a state, MASTER or BACKUP
    (IPVS_CMD_DEL_DAEMON, ipvsadm --stop-daemon)."""

    state: SyncState


Operation = (
    AddService
    | EditService
    | DeleteService
    | AddDestination
    | EditDestination
    | DeleteDestination
    | Flush
    | Zero
    | SetTimeouts
    | StartDaemon
    | StopDaemon
)


class Backend(TypingProtocol):
    """The kernel's IPVS table, or a stand-in for it.

    Calls block; trio code runs them in a worker thread. Every method raises
    only director.ipvs.errors.KernelError (see the tree there). apply() sends
    every operation and checks every acknowledgement; on the first failure it
    raises director.ipvs.errors.BatchError naming that operation (the ones
    before it stay applied, as with ipvsadm -R). apply_each() goes on past a
    failure and returns every operation's outcome.
    """

    def info(self) -> Info: ...

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        """Every service with its destinations, in kernel order; with `only`,
        just those services (the others' destinations are not even read).
        A `brief` read may lack stats, and its destinations thresholds and
        persistent-connection counts (zero): what ipvsadm's plain listings
        and -S show is exact, and costs a backend less to read."""
        ...

    def apply(self, operations: Sequence[Operation]) -> None:
        """Apply in order, stopping at the first failure: InvalidOperation
        (nothing sent) if the encoder refuses any, BatchError for the first
        the kernel refuses (those before it applied), AcknowledgementsLost
        when outcomes are unknown."""
        ...

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        """Send every operation in order; a failure does not stop the later
        ones. One outcome per operation, in order: None (applied) or the
        KernelError that refused it (InvalidOperation: the encoder refused
        it and it was not sent; an IPVSError: the kernel's answer; a
        TransientKernelError: it could not be sent). Raises only when
        outcomes are unknown (AcknowledgementsLost, a TransientKernelError)."""
        ...

    def timeouts(self) -> Timeouts: ...

    def daemons(self) -> list[SyncDaemon]: ...

    def connections(self) -> list[Connection]: ...

    def close(self) -> None: ...
