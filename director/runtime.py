"""Operator changes made at runtime (through the control socket), kept as a
layer on top of the config file.

Pure. The layer records what the operator asked for (services added, edited
or deleted, real servers added, edited or deleted, admin states, timeouts);
`effective_config` merges it over whatever config file is loaded, so a reload
re-applies it and never discards it. Where the file and the layer both define
an object, the layer wins. `apply_operation` checks an ipvsadm operation
against the effective state the way the kernel would check it against its
table, and answers with the kernel's own error when it would refuse.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Protocol as TypingProtocol
from typing import TypeVar

from director.config import (
    PERSISTENCE_ENGINES,
    SCHEDULERS,
    Config,
    RealServer,
    RealServerId,
    VirtualServer,
    parse_endpoint,
)
from director.config.model import IpvsSettings
from director.desired import AdminState
from director.health.checker import validate_target
from director.ipvs.errors import IPVSError, error_for
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    Timeouts,
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
)

_SCHED_FLAGS = ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3


@dataclass(frozen=True)
class RuntimeLayer:
    """Operator changes over the config file. Mappings are read-only and keep
    insertion order (real servers appear in the order they were added)."""

    services: Mapping[ServiceKey, Service] = field(default_factory=dict)
    deleted_services: frozenset[ServiceKey] = frozenset()
    real_servers: Mapping[RealServerId, Destination] = field(default_factory=dict)
    deleted_real_servers: frozenset[RealServerId] = frozenset()
    admin: Mapping[RealServerId, AdminState] = field(default_factory=dict)
    timeouts: Timeouts | None = None

    def __post_init__(self) -> None:
        for name in ("services", "real_servers", "admin"):
            value = getattr(self, name)
            if not isinstance(value, MappingProxyType):
                # A dict is taken as is (callers hand over fresh ones): copying
                # it again would rehash every key, and keys hash slowly.
                owned = value if type(value) is dict else dict(value)
                object.__setattr__(self, name, MappingProxyType(owned))

    @property
    def empty(self) -> bool:
        return self == EMPTY


EMPTY = RuntimeLayer()


class ServiceLookup(TypingProtocol):
    """What checking a change needs to see of the effective state: a Config
    has it, and so has the cheaper LayeredView."""

    def service_keys(self) -> Set[ServiceKey]: ...

    def virtual_server(self, key: ServiceKey) -> VirtualServer: ...


class LayeredView:
    """The effective state one service at a time, without merging all of it:
    checking each line of a long `-R` against a full effective_config would
    cost the whole table per line."""

    def __init__(self, config: Config, layer: RuntimeLayer) -> None:
        self.config = config
        self.layer = layer
        self._file = {vs.key: vs for vs in config.virtual_servers}

    def service_keys(self) -> Set[ServiceKey]:
        return (self._file.keys() - self.layer.deleted_services) | self.layer.services.keys()

    def virtual_server(self, key: ServiceKey) -> VirtualServer:
        service = self.layer.services.get(key)
        vs = None if key in self.layer.deleted_services else self._file.get(key)
        if vs is None and service is None:
            raise KeyError(key)
        if vs is None:
            assert service is not None
            vs = virtual_server_for(service)
        elif service is not None:
            vs = with_service_fields(vs, service)
        changes = [(r, d) for r, d in self.layer.real_servers.items() if r.service == key]
        return _with_real_servers(vs, self.layer, changes)


class NotCheckable(IPVSError):
    """A real server the daemon could not health-check (port 0 and no check
    port): refused rather than added and never probed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EINVAL, "AddDestination")
        self.message = message
        self.args = (message,)


# -- merging ------------------------------------------------------------------


def effective_config(config: Config, layer: RuntimeLayer) -> Config:
    """The config file with the runtime layer applied on top."""
    if layer.empty:
        return config
    changes: dict[ServiceKey, list[tuple[RealServerId, Destination]]] = {}
    for rid, destination in layer.real_servers.items():
        changes.setdefault(rid.service, []).append((rid, destination))
    virtual_servers: list[VirtualServer] = []
    seen: set[ServiceKey] = set()
    for vs in config.virtual_servers:
        seen.add(vs.key)
        if vs.key in layer.deleted_services:
            continue
        service = layer.services.get(vs.key)
        merged = vs if service is None else with_service_fields(vs, service)
        virtual_servers.append(_with_real_servers(merged, layer, changes.get(vs.key, [])))
    for key, service in layer.services.items():
        if key not in seen:
            vs = virtual_server_for(service)
            virtual_servers.append(_with_real_servers(vs, layer, changes.get(key, [])))
    ipvs = config.ipvs
    if layer.timeouts is not None:
        ipvs = IpvsSettings(merge_timeouts(config.ipvs.timeouts, layer.timeouts))
    return replace(config, virtual_servers=tuple(virtual_servers), ipvs=ipvs)


def merge_timeouts(base: Timeouts | None, change: Timeouts) -> Timeouts:
    """`change` over `base`; a 0 in `change` keeps the base's value (as --set does)."""
    base = base or Timeouts()
    return Timeouts(
        tcp=change.tcp or base.tcp,
        tcp_fin=change.tcp_fin or base.tcp_fin,
        udp=change.udp or base.udp,
    )


def virtual_server_for(service: Service) -> VirtualServer:
    """A virtual server made with ipvsadm -A: the service's kernel fields and
    the default check."""
    return with_service_fields(VirtualServer(key=service.key), service)


def with_service_fields(vs: VirtualServer, service: Service) -> VirtualServer:
    return replace(
        vs,
        scheduler=service.scheduler,
        persistent=service.timeout if service.persistent else None,
        persistent_netmask=service.netmask if service.persistent else None,
        scheduler_flags=service.flags & _SCHED_FLAGS,
        one_packet=bool(service.flags & ServiceFlags.ONEPACKET),
        pe=service.pe_name,
    )


def _with_real_servers(
    vs: VirtualServer,
    layer: RuntimeLayer,
    changes: Sequence[tuple[RealServerId, Destination]],
) -> VirtualServer:
    if not changes and not layer.deleted_real_servers:
        return vs
    real_servers: list[RealServer] = []
    present: set[RealServerId] = set()
    for rs in vs.real_servers:
        rid = vs.real_server_id(rs)
        if rid in layer.deleted_real_servers:
            continue
        present.add(rid)
        destination = layer.real_servers.get(rid)
        real_servers.append(rs if destination is None else with_destination_fields(rs, destination))
    for rid, destination in changes:
        if rid not in present:
            real_servers.append(
                with_destination_fields(
                    RealServer(rid.address, rid.port, check=vs.check), destination
                )
            )
    return replace(vs, real_servers=tuple(real_servers))


def with_destination_fields(rs: RealServer, destination: Destination) -> RealServer:
    return replace(
        rs,
        forward=destination.forward,
        weight=destination.weight,
        u_threshold=destination.u_threshold,
        l_threshold=destination.l_threshold,
        tun_type=destination.tun_type,
        tun_port=destination.tun_port,
        tun_flags=destination.tun_flags,
    )


# -- changes ------------------------------------------------------------------


def is_managed(
    op: Operation, effective: ServiceLookup, kernel: Set[ServiceKey], owned: Set[ServiceKey]
) -> bool:
    """Whether `op` changes the daemon's desired state (True) or goes to the
    kernel as it is, like ipvsadm would send it (False): operations on
    services the daemon does not manage, -Z and the sync daemon commands.

    A service is managed when the effective config has it, or the daemon owns
    it (deleted but not yet gone from the kernel); -A of a service the kernel
    does not have makes a new managed one."""
    managed = effective.service_keys() | owned
    match op:
        case AddService(service):
            return service.key in managed or service.key not in kernel
        case EditService(service):
            return service.key in managed
        case DeleteService(key) | AddDestination(key, _) | EditDestination(key, _):
            return key in managed
        case DeleteDestination(key, _, _):
            return key in managed
        case Flush() | SetTimeouts():
            return True
    return False


def apply_operation(
    layer: RuntimeLayer, effective: ServiceLookup, op: Operation
) -> tuple[RuntimeLayer, IPVSError | None]:
    """The layer with `op` recorded, or the layer unchanged and the error the
    kernel would give for `op` on a table holding `effective`."""
    keys = effective.service_keys()
    name = type(op).__name__

    def refuse(err: int) -> tuple[RuntimeLayer, IPVSError]:
        return layer, error_for(err, name)

    match op:
        case AddService(service):
            if service.key in keys:
                return refuse(errno.EEXIST)
            if not _known_engines(service):
                return refuse(errno.ENOENT)
            return add_service(layer, effective, service), None
        case EditService(service):
            if service.key not in keys:
                return refuse(errno.ESRCH)
            if not _known_engines(service):
                return refuse(errno.ENOENT)
            return _put_service(layer, service), None
        case DeleteService(key):
            if key not in keys:
                return refuse(errno.ESRCH)
            return delete_service(layer, effective, key), None
        case AddDestination(key, destination) | EditDestination(key, destination):
            if key not in keys:
                return refuse(errno.ESRCH)
            vs = effective.virtual_server(key)
            rid = RealServerId(key, destination.address, destination.port)
            exists = any(vs.real_server_id(rs) == rid for rs in vs.real_servers)
            if isinstance(op, AddDestination) and exists:
                return refuse(errno.EEXIST)
            if isinstance(op, EditDestination) and not exists:
                return refuse(errno.ENOENT)
            if destination.weight < 0 or destination.l_threshold > destination.u_threshold:
                return refuse(errno.ERANGE)
            if isinstance(op, AddDestination):
                try:
                    validate_target(rid, (vs.check, destination.address, destination.port))
                except ValueError as error:
                    return layer, NotCheckable(f"{error}")
            return _put_real_server(layer, rid, destination), None
        case DeleteDestination(key, address, port):
            if key not in keys:
                return refuse(errno.ESRCH)
            rid = RealServerId(key, address, port)
            vs = effective.virtual_server(key)
            if not any(vs.real_server_id(rs) == rid for rs in vs.real_servers):
                return refuse(errno.ENOENT)
            return delete_real_servers(layer, [rid]), None
        case Flush():
            for key in sorted(keys, key=str):
                layer = delete_service(layer, effective, key)
            return layer, None
        case SetTimeouts(timeouts):
            return replace(layer, timeouts=merge_timeouts(layer.timeouts, timeouts)), None
    raise ValueError(f"{name} does not change the desired state; send it to the kernel")


def _known_engines(service: Service) -> bool:
    return service.scheduler in SCHEDULERS and (
        not service.pe_name or service.pe_name in PERSISTENCE_ENGINES
    )


def add_service(layer: RuntimeLayer, effective: ServiceLookup, service: Service) -> RuntimeLayer:
    """-A: a new, empty service. One the config file defines but the operator
    deleted comes back without the file's real servers, as ipvsadm would
    create it."""
    layer = _put_service(layer, service)
    if service.key not in layer.deleted_services:
        return layer
    return replace(layer, deleted_services=layer.deleted_services - {service.key})


def _put_service(layer: RuntimeLayer, service: Service) -> RuntimeLayer:
    return replace(layer, services=_with(layer.services, service.key, service))


def delete_service(layer: RuntimeLayer, effective: ServiceLookup, key: ServiceKey) -> RuntimeLayer:
    """-D: forget every runtime change to the service and hide the file's
    definition of it, real servers included (so that a later -A starts empty)."""
    rids = [
        effective.virtual_server(key).real_server_id(rs)
        for rs in effective.virtual_server(key).real_servers
    ]
    layer = delete_real_servers(layer, rids)
    return replace(
        layer,
        services=_without(layer.services, [key]),
        deleted_services=layer.deleted_services | {key},
    )


def delete_real_servers(layer: RuntimeLayer, rids: Iterable[RealServerId]) -> RuntimeLayer:
    gone = frozenset(rids)
    return replace(
        layer,
        real_servers=_without(layer.real_servers, gone),
        deleted_real_servers=layer.deleted_real_servers | gone,
        admin=_without(layer.admin, gone),
    )


def _put_real_server(
    layer: RuntimeLayer, rid: RealServerId, destination: Destination
) -> RuntimeLayer:
    return replace(
        layer,
        real_servers=_with(layer.real_servers, rid, destination),
        deleted_real_servers=layer.deleted_real_servers - {rid},
    )


K = TypeVar("K")
V = TypeVar("V")


def _with(mapping: Mapping[K, V], key: K, value: V) -> dict[K, V]:
    # MappingProxyType.copy() is dict.copy(): it keeps the stored hashes.
    copy: dict[K, V] = mapping.copy()  # type: ignore[attr-defined]
    copy[key] = value
    return copy


def _without(mapping: Mapping[K, V], keys: Iterable[K]) -> dict[K, V]:
    copy: dict[K, V] = mapping.copy()  # type: ignore[attr-defined]
    for key in keys:
        copy.pop(key, None)
    return copy


def set_admin(
    layer: RuntimeLayer, effective: ServiceLookup, rid: RealServerId, state: AdminState
) -> RuntimeLayer:
    """drain / disable / enable one real server of the effective config."""
    if rid.service not in effective.service_keys():
        raise LookupError(f"no virtual service {describe_service(rid.service)}")
    vs = effective.virtual_server(rid.service)
    if not any(vs.real_server_id(rs) == rid for rs in vs.real_servers):
        raise LookupError(
            f"no real server {describe_endpoint(rid.address, rid.port)} in {describe_service(rid.service)}"
        )
    admin = _without(layer.admin, [rid])
    if state is not AdminState.ENABLED:
        admin[rid] = state
    return replace(layer, admin=admin)


# -- naming services and real servers -------------------------------------------

_PROTOCOL_NAMES = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}
_SERVICE = re.compile(r"(?i)\s*(tcp|udp|sctp)[:\s]\s*(\S+)\s*")
_FWMARK = re.compile(r"(?i)\s*(fwm|fwmark)[:\s]\s*(\d+)(?:[:\s]\s*(ipv6))?\s*")


def parse_service(text: str) -> ServiceKey:
    """'tcp:10.0.0.1:80', 'udp:[2001:db8::1]:53', 'fwm:7', 'fwm:7:ipv6', or
    the way `status` prints them ('TCP 10.0.0.1:80', 'FWM 7 IPv6')."""
    match = _SERVICE.fullmatch(text)
    if match:
        endpoint = parse_endpoint(match[2])
        if endpoint is None or endpoint[1] is None:
            raise ValueError(f"virtual service {text!r}: {match[2]!r} is not an address:port")
        return ServiceKey.inet(_PROTOCOL_NAMES[match[1].lower()], endpoint[0], endpoint[1])
    match = _FWMARK.fullmatch(text)
    if match:
        mark = int(match[2])
        if not 1 <= mark <= 2**32 - 1:
            raise ValueError(f"virtual service {text!r}: firewall mark out of range")
        return ServiceKey.mark(mark, AF_INET6 if match[3] else AF_INET)
    raise ValueError(
        f"virtual service {text!r}: expected tcp:ADDRESS:PORT, udp:..., sctp:..., or fwm:MARK[:ipv6]"
    )


def parse_real_server(service: ServiceKey, text: str) -> RealServerId:
    """'10.0.1.1:80', '[2001:db8::2]:80', or an address alone (the service's port)."""
    endpoint = parse_endpoint(text.strip())
    if endpoint is None:
        raise ValueError(f"real server {text!r}: not an address or address:port")
    address, port = endpoint
    if port is None:
        if service.is_fwmark:
            raise ValueError(f"real server {text!r}: a fwmark service's real server needs a port")
        port = service.port
    return RealServerId(service, address, port)


def describe_endpoint(address: object, port: int) -> str:
    text = str(address)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


def describe_service(key: ServiceKey) -> str:
    """The name parse_service reads back: 'tcp:10.0.0.1:80', 'fwm:7:ipv6'."""
    if key.is_fwmark:
        return f"fwm:{key.fwmark}" + (":ipv6" if key.family == AF_INET6 else "")
    assert key.protocol is not None
    return f"{key.protocol.name.lower()}:{describe_endpoint(key.address, key.port)}"
