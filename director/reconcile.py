"""The operations that turn the kernel table into the desired one.

Pure and minimal: a service or destination that already matches is not
touched, and a service that is neither desired nor owned (another tool's: a
hand-made ipvsadm entry, kube-proxy) is never touched at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set

from director.desired import DesiredService
from director.ipvs.model import (
    SETTABLE_SERVICE_FLAGS,
    Destination,
    Forward,
    IPAddress,
    Service,
    ServiceEntry,
    ServiceKey,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Operation,
)


def plan(
    desired: Mapping[ServiceKey, DesiredService],
    kernel: Mapping[ServiceKey, ServiceEntry],
    owned: Set[ServiceKey],
) -> list[Operation]:
    """Operations, in order: destination deletes, service deletes (owned,
    no longer desired), service adds and edits, destination adds and edits.
    Keys in `desired` count as owned."""
    delete_destinations: list[Operation] = []
    delete_services: list[Operation] = []
    services: list[Operation] = []
    destinations: list[Operation] = []

    for key in sorted(owned - desired.keys(), key=service_sort_key):
        if key in kernel:
            delete_services.append(DeleteService(key))

    for key in sorted(desired, key=service_sort_key):
        want = desired[key]
        entry = kernel.get(key)
        if entry is None:
            services.append(AddService(want.service))
            destinations.extend(AddDestination(key, d) for d in want.destinations)
            continue
        if not service_matches(want.service, entry.service):
            services.append(EditService(want.service))
        have = {e.destination.key: e.destination for e in entry.destinations}
        for d in want.destinations:
            current = have.pop(d.key, None)
            if current is None:
                destinations.append(AddDestination(key, d))
            elif not destination_matches(d, current):
                destinations.append(EditDestination(key, d))
        # What is left in `have` is not wanted (in the kernel's order).
        delete_destinations.extend(DeleteDestination(key, address, port) for address, port in have)

    return [*delete_destinations, *delete_services, *services, *destinations]


def plan_destinations(
    key: ServiceKey,
    wanted: Mapping[tuple[IPAddress, int], Destination | None],
    have: Mapping[tuple[IPAddress, int], Destination],
) -> tuple[list[Operation], list[Operation]]:
    """The operations that make the destinations of service `key` that
    `wanted` names as it says (None: absent), from `have` (the service's
    destinations by (address, port)); the service's other destinations are
    left alone. (deletes, adds and edits): plan puts them in that order.
    O(len(wanted))."""
    deletes: list[Operation] = []
    changes: list[Operation] = []
    for (address, port), want in wanted.items():
        current = have.get((address, port))
        if want is None:
            if current is not None:
                deletes.append(DeleteDestination(key, address, port))
        elif current is None:
            changes.append(AddDestination(key, want))
        elif not destination_matches(want, current):
            changes.append(EditDestination(key, want))
    return deletes, changes


def service_matches(want: Service, have: Service) -> bool:
    """Equal in every field a writer sets (the kernel adds HASHED)."""
    return (
        want.scheduler == have.scheduler
        and want.flags & SETTABLE_SERVICE_FLAGS == have.flags & SETTABLE_SERVICE_FLAGS
        and want.timeout == have.timeout
        and want.netmask == have.netmask
        and want.pe_name == have.pe_name
    )


def destination_matches(want: Destination, have: Destination) -> bool:
    """Equal in every field that matters for `want` (tunnel settings only
    matter for tunnels). The kernel turns the method of a destination whose
    address is local to the director into LOCAL, whatever was asked: that is
    a match, or every pass would edit it again."""
    forward_ok = want.forward == have.forward or have.forward == Forward.LOCAL
    tunnel_ok = want.forward != Forward.TUNNEL or (
        (want.tun_type, want.tun_port, want.tun_flags)
        == (have.tun_type, have.tun_port, have.tun_flags)
    )
    return (
        forward_ok
        and tunnel_ok
        and want.weight == have.weight
        and want.u_threshold == have.u_threshold
        and want.l_threshold == have.l_threshold
    )


def service_sort_key(key: ServiceKey) -> tuple[int, int, int, bytes, int]:
    """A total order on service keys (ServiceKey's own fails across families
    and between fwmark and address services)."""
    return (
        int(key.family),
        key.fwmark,
        int(key.protocol) if key.protocol is not None else 0,
        key.address.packed if key.address is not None else b"",
        key.port,
    )


def owned_after(owned: Iterable[ServiceKey], operations: Iterable[Operation]) -> set[ServiceKey]:
    """The owned set once `operations` are applied: added services join it,
    deleted ones leave it."""
    result = set(owned)
    for op in operations:
        if isinstance(op, AddService):
            result.add(op.service.key)
        elif isinstance(op, DeleteService):
            result.discard(op.key)
    return result
