"""Operations as log fields: one flat dict per operation, named the way an
operator reads ipvsadm (vs="TCP 10.0.0.1:80", rs="10.0.0.2:80")."""

from __future__ import annotations

from director.ipvs.model import (
    Service,
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


def flag_names(service: Service) -> list[str]:
    """A service's flags by the names ipvsadm -L shows them with:
    "persistent", "ops" (one-packet scheduling) and the scheduler's own
    (scheduler_flag_names); the kernel's HASHED is left out."""
    names = ["persistent"] if service.flags & ServiceFlags.PERSISTENT else []
    if service.flags & ServiceFlags.ONEPACKET:
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
