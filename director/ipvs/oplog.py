"""Operations as log fields: one flat dict per operation, named the way an
operator reads ipvsadm (vs="TCP 10.0.0.1:80", rs="10.0.0.2:80"), and a
run of like operations on one service's destinations as one line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from director.ipvs.model import (
    Service,
    ServiceEntry,
    ServiceFlags,
    endpoint,
    scheduler_flag_names,
    service_label,
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

_PERSISTENT, _ONEPACKET = int(ServiceFlags.PERSISTENT), int(ServiceFlags.ONEPACKET)


def flag_names(service: Service) -> list[str]:
    """A service's flags by the names ipvsadm -L shows them with:
    "persistent", "ops" (one-packet scheduling) and the scheduler's own
    (scheduler_flag_names); the kernel's HASHED is left out."""
    flags = int(service.flags)  # (IntFlag's & is Python code: a -R logs thousands)
    names = ["persistent"] if flags & _PERSISTENT else []
    if flags & _ONEPACKET:
        names.append("ops")
    return names + scheduler_flag_names(service.scheduler, service.flags)


def describe_operation(op: Operation) -> dict[str, object]:
    match op:
        case AddService(service) | EditService(service):
            return {
                "op": "add_service" if isinstance(op, AddService) else "edit_service",
                "vs": service_label(service.key),
                "scheduler": service.scheduler,
                "flags": flag_names(service),
                "timeout": service.timeout,
            }
        case DeleteService(key):
            return {"op": "delete_service", "vs": service_label(key)}
        case AddDestination(key, dest) | EditDestination(key, dest):
            return {
                "op": "add_destination" if isinstance(op, AddDestination) else "edit_destination",
                "vs": service_label(key),
                "rs": endpoint(dest.address, dest.port),
                "forward": dest.forward.name.lower(),
                "weight": dest.weight,
            }
        case DeleteDestination(key, address, port):
            return {
                "op": "delete_destination",
                "vs": service_label(key),
                "rs": endpoint(address, port),
            }
        case Flush():
            return {"op": "flush"}
        case Zero(key):
            return {"op": "zero", "vs": service_label(key) if key else "all"}
        case SetTimeouts(t):
            return {"op": "set_timeouts", "tcp": t.tcp, "tcpfin": t.tcp_fin, "udp": t.udp}
        case StartDaemon(d):
            fields: dict[str, object] = {
                "op": "start_daemon",
                "state": d.state.name,
                "mcast_ifn": d.mcast_ifn,
                "syncid": d.syncid,
            }
            # 0 and None are the kernel's defaults: left out, as ipvsadm's
            # --start-daemon leaves them unsent.
            if d.sync_maxlen:
                fields["sync_maxlen"] = d.sync_maxlen
            if d.mcast_group is not None:
                fields["mcast_group"] = str(d.mcast_group)
            if d.mcast_port:
                fields["mcast_port"] = d.mcast_port
            if d.mcast_ttl:
                fields["mcast_ttl"] = d.mcast_ttl
            return fields
        case StopDaemon(state):
            return {"op": "stop_daemon", "state": state.name}
    raise TypeError(f"not an operation: {op!r}")


def brief_operation(op: Operation, found: ServiceEntry | None = None) -> str:
    """One operation as one line of text: its `describe_operation` fields,
    the kind, service and real server first, then key=value; e.g.
    "add_destination TCP 10.0.0.1:80 10.0.0.2:80 forward=route weight=1".
    With `found` (the kernel's entry of the op's service, as read before
    it), an edit gives only the fields it changes, as found->wanted:
    "edit_destination TCP 10.0.0.1:80 10.0.0.2:80 weight=77->1"."""
    fields = describe_operation(op)
    words = [str(fields.pop(name)) for name in ("op", "vs", "rs") if name in fields]
    before = _found_fields(op, found)
    changed = {k: v for k, v in fields.items() if k in before and before[k] != v}
    if changed:
        words.extend(f"{k}={_text(before[k])}->{_text(v)}" for k, v in changed.items())
    else:  # nothing found to compare, or a change the fields do not show
        words.extend(f"{k}={_text(v)}" for k, v in fields.items())
    return " ".join(words)


def _found_fields(op: Operation, found: ServiceEntry | None) -> dict[str, object]:
    """describe_operation's fields of what an edit changes, as `found`."""
    if found is None:
        return {}
    if isinstance(op, EditService):
        return describe_operation(EditService(found.service))
    if isinstance(op, EditDestination):
        entry = found.destination(op.destination.key)
        if entry is not None:
            return describe_operation(EditDestination(op.service, entry.destination))
    return {}


def _text(value: object) -> str:
    """A field's value in a brief line: a list as its items with commas
    ("persistent,sh-port"; "none" when empty)."""
    if isinstance(value, list):
        return ",".join(map(str, value)) or "none"
    return str(value)


def _run_key(op: Operation) -> tuple[object, ...] | None:
    """What operations must share to be one line: their kind and service,
    and for an add or an edit the forwarding method and weight (the fields
    the line gives once); None for an operation logged alone."""
    match op:
        case AddDestination(key, dest) | EditDestination(key, dest):
            return (type(op), key, dest.forward, dest.weight)
        case DeleteDestination(key):
            return (DeleteDestination, key)
    return None


def _server_of(op: Operation) -> str:
    if isinstance(op, DeleteDestination):
        return endpoint(op.address, op.port)
    assert isinstance(op, AddDestination | EditDestination)
    return endpoint(op.destination.address, op.destination.port)


def operation_lines(ops: Sequence[Operation]) -> Iterator[tuple[str, dict[str, object]]]:
    """The log lines of operations the kernel took, in their order: each
    one `ipvs_op` (describe_operation), except that a run of two or more
    like destination operations (_run_key: a start's fill, a -R, a rack
    coming back) is one `ipvs_ops` line, its fields those of `ipvs_op` with
    `rs` the list of the run's real servers and `count` their number. A
    start at 10,000 real servers writes 200 lines, not 10,100."""
    i = 0
    while i < len(ops):
        run_key = _run_key(ops[i])
        j = i + 1
        if run_key is not None:
            while j < len(ops) and _run_key(ops[j]) == run_key:
                j += 1
        fields = describe_operation(ops[i])
        if j - i == 1:
            yield "ipvs_op", fields
        else:
            servers = [_server_of(op) for op in ops[i:j]]
            yield "ipvs_ops", fields | {"rs": servers, "count": len(servers)}
        i = j
