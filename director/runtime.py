"""Operator changes made at runtime (through the control socket), kept as a
layer on top of the config file.

Pure. The layer records what the operator asked for (services added, edited
or deleted, real servers added, edited or deleted, admin states, timeouts);
`effective_config` merges it over whatever config file is loaded, so a reload
re-applies it and never discards it. Where the file and the layer both define
an object, the layer wins. A `LayerBuilder` checks ipvsadm operations against
the effective state the way the kernel would check them against its table, in
the kernel's order, answers with the kernel's own error when it would refuse,
and records them.

What the layer cannot judge it leaves to the kernel: whether the kernel has a
scheduler or persistence engine (`kernel_probe` names the operation that asks
it), whether an address is one of the host's broadcast addresses, and the
timeouts --set gives (ip_vs_set_timeout bounds them by INT_MAX / HZ).

Deleting what the config defines and adding it back (`-C` or `-D` then `-A`,
`-d` then `-a`: the -Sn / -C / -R cycle) restores the config's definition:
its real servers and checks, with what the operator's line said recorded only
where it differs from the config (docs/runtime.md).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Container, Mapping, Set
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, TypeVar
from typing import Protocol as TypingProtocol

from director.config import (
    Config,
    RealServer,
    RealServerId,
    VirtualServer,
    parse_endpoint,
)
from director.desired import AdminState
from director.health.checker import target_problem
from director.health.spec import Check, probed_endpoint
from director.ipvs.errors import IPVSError, error_for
from director.ipvs.facts import (
    IPV6_PREFIX_RANGE,
    PROTOCOLS,
    destination_problem,
    persistence_engine_problem,
    scheduler_problem,
)
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    Timeouts,
    TunnelType,
    endpoint,
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
    # Config real servers that an -A of their deleted service brought back and
    # that an -a may still add once without "Destination already exists" (as
    # `ipvsadm -R` of a saved table does). Not worth persisting: lost, the
    # servers stay and a later -a of one answers as the kernel would.
    restored: frozenset[RealServerId] = frozenset()

    # `by_service`, made once (or handed over by the LayerBuilder that froze
    # the layer). Not part of the layer's value.
    _by_service: dict[ServiceKey, dict[RealServerId, Destination]] | None = field(
        default=None, init=False, repr=False, compare=False
    )

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

    @property
    def set_at_runtime(self) -> Container[object]:
        """The services and real servers whose kernel fields a runtime
        change sets (-A, -E; -a, -e), for `in`: what status marks as such."""
        return _Either(self.services, self.real_servers)

    @property
    def by_service(self) -> Mapping[ServiceKey, Mapping[RealServerId, Destination]]:
        """`real_servers` by service, each service's in their order there:
        made once (a LayerBuilder hands over its own), so that a builder
        over a layer of thousands of real servers starts without indexing
        them again. Read-only, shared with the builders made over it."""
        return self._index()

    def _index(self) -> dict[ServiceKey, dict[RealServerId, Destination]]:
        index = self._by_service
        if index is None:
            index = {}
            for rid, destination in self.real_servers.items():
                index.setdefault(rid.service, {})[rid] = destination
            object.__setattr__(self, "_by_service", index)
        return index


EMPTY = RuntimeLayer()


class ServiceLookup(TypingProtocol):
    """What deciding where a change goes needs to see of the effective state:
    a Config has it, and so has a LayerBuilder."""

    def service_keys(self) -> Set[ServiceKey]: ...


class Refused(IPVSError):
    """An -a the kernel would take and the daemon refuses, in words: a real
    server it could not health-check (port 0 and no check port), rather
    than added and never probed, or a service's sorry server."""

    def __init__(self, message: str, code: int = errno.EINVAL) -> None:
        super().__init__(code, "AddDestination")
        self.message = message
        self.args = (message,)


# -- merging ------------------------------------------------------------------


class _Either:
    """`in` either of two mappings."""

    __slots__ = ("_first", "_second")

    def __init__(self, first: Mapping[Any, object], second: Mapping[Any, object]) -> None:
        self._first, self._second = first, second

    def __contains__(self, item: object) -> bool:
        return item in self._first or item in self._second


def effective_config(config: Config, layer: RuntimeLayer) -> Config:
    """The config file with the runtime layer applied on top."""
    if layer.empty:
        return config
    changes: dict[ServiceKey, dict[RealServerId, Destination]] = {}
    for rid, destination in layer.real_servers.items():
        changes.setdefault(rid.service, {})[rid] = destination
    deleted = layer.deleted_real_servers
    virtual_servers: list[VirtualServer] = []
    seen: set[ServiceKey] = set()
    for vs in config.virtual_servers:
        seen.add(vs.key)
        if vs.key in layer.deleted_services:
            continue
        service = layer.services.get(vs.key)
        merged = vs if service is None else with_service_fields(vs, service)
        virtual_servers.append(_with_real_servers(merged, changes.get(vs.key, {}), deleted))
    for key, service in layer.services.items():
        if key not in seen:
            check = config.control.runtime_check_for(key)
            virtual_servers.append(virtual_server_for(service, check, changes.get(key)))
    ipvs = config.ipvs
    if layer.timeouts is not None:
        ipvs = replace(ipvs, timeouts=merge_timeouts(config.ipvs.timeouts, layer.timeouts))
    return replace(config, virtual_servers=tuple(virtual_servers), ipvs=ipvs)


def without_stale_admin(
    layer: RuntimeLayer, effective: Config
) -> tuple[RuntimeLayer, list[tuple[RealServerId, AdminState]]]:
    """`layer` without the admin states of real servers `effective` (the
    config with `layer` applied) no longer has, and those states in the
    layer's order. A server the config dropped is gone: a drain or disable
    kept for its address would greet the next machine a reload puts there
    (as -D of a service forgets its servers' states)."""
    if not layer.admin:
        return layer, []
    kept = {rid for vs in effective.virtual_servers for rid in vs.real_server_ids}
    stale = [(rid, state) for rid, state in layer.admin.items() if rid not in kept]
    if not stale:
        return layer, []
    gone = {rid for rid, _ in stale}
    admin = {rid: state for rid, state in layer.admin.items() if rid not in gone}
    return replace(layer, admin=admin), stale


def merge_timeouts(base: Timeouts | None, change: Timeouts) -> Timeouts:
    """`change` over `base`; a 0 in `change` keeps the base's value (as --set does)."""
    base = base or Timeouts()
    return Timeouts(
        tcp=change.tcp or base.tcp,
        tcp_fin=change.tcp_fin or base.tcp_fin,
        udp=change.udp or base.udp,
    )


def virtual_server_for(
    service: Service,
    check: Check,
    real_servers: Mapping[RealServerId, Destination] | None = None,
) -> VirtualServer:
    """A virtual server made with ipvsadm -A: the service's kernel fields and
    `check` (the config's [control] runtime_check), and the real servers
    added to it (each with that check). Made at once: with_service_fields
    and _with_real_servers would make it three times over. Its
    real_server_ids are the ids `real_servers` has (the engine, the checker
    and the pass ask for them at once: the same objects, not a new id each)."""
    vs = VirtualServer(
        key=service.key,
        check=check,
        scheduler=service.scheduler,
        persistent=service.timeout if service.persistent else None,
        persistent_netmask=service.netmask if service.persistent else None,
        scheduler_flags=service.flags & _SCHED_FLAGS,
        one_packet=bool(service.flags & ServiceFlags.ONEPACKET),
        pe=service.pe_name,
        real_servers=tuple(
            _real_server(rid, destination, check) for rid, destination in real_servers.items()
        )
        if real_servers
        else (),
    )
    if real_servers:
        # functools.cached_property keeps its value in the instance's
        # __dict__: this is the value it would compute, made already.
        vs.__dict__["real_server_ids"] = tuple(real_servers)
    return vs


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
    changes: Mapping[RealServerId, Destination],
    deleted: Set[RealServerId],
) -> VirtualServer:
    """`vs` with its runtime real servers (`changes`, all of this service)."""
    if not changes and not deleted:
        return vs
    real_servers: list[RealServer] = []
    present: set[RealServerId] = set()
    for rs in vs.real_servers:
        rid = vs.real_server_id(rs)
        if rid in deleted:
            continue
        present.add(rid)
        destination = changes.get(rid)
        real_servers.append(rs if destination is None else with_destination_fields(rs, destination))
    for rid, destination in changes.items():
        if rid not in present:
            real_servers.append(_real_server(rid, destination, vs.check))
    return replace(vs, real_servers=tuple(real_servers))


def with_destination_fields(rs: RealServer, destination: Destination) -> RealServer:
    """`rs` with `destination`'s kernel fields: replace(rs, forward=...,
    weight=..., ...), made directly (thousands per -R; a unit test holds it
    to replace's answer for every field RealServer has)."""
    return _with_fields(rs.address, rs.port, destination, rs.check, rs.name)


def _real_server(rid: RealServerId, destination: Destination, check: Check) -> RealServer:
    """A real server added at runtime: with_destination_fields of
    RealServer(rid.address, rid.port, check=check)."""
    return _with_fields(rid.address, rid.port, destination, check, None)


def _with_fields(
    address: IPAddress, port: int, destination: Destination, check: Check, name: str | None
) -> RealServer:
    return RealServer(
        address=address,
        port=port,
        forward=destination.forward,
        weight=destination.weight,
        u_threshold=destination.u_threshold,
        l_threshold=destination.l_threshold,
        tun_type=destination.tun_type,
        tun_port=destination.tun_port,
        tun_flags=destination.tun_flags,
        check=check,
        name=name,
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
    keys = effective.service_keys()
    match op:
        case AddService(service):
            return service.key in keys or service.key in owned or service.key not in kernel
        case EditService(service):
            return service.key in keys or service.key in owned
        case DeleteService(key) | AddDestination(key, _) | EditDestination(key, _):
            return key in keys or key in owned
        case DeleteDestination(key, _, _):
            return key in keys or key in owned
        case Flush() | SetTimeouts():
            return True
    return False


EngineCheck = Callable[[Service], bool]
"""Whether the kernel would take a service's scheduler and persistence engine."""


def listed_engines(service: Service) -> bool:
    """The names director.ipvs.facts knows ("none" included). LayerBuilder's
    default until its caller asks the kernel with `kernel_probe` (then it
    passes engines=None): the kernel's own answer is the one to give."""
    return scheduler_problem(service.scheduler) is None and (
        not service.pe_name or persistence_engine_problem(service.pe_name) is None
    )


def kernel_probe(op: Operation, kernel: Set[ServiceKey]) -> Operation | None:
    """The operation that asks the kernel whether it has the scheduler and
    persistence engine of a managed -A or -E, or None for other operations.

    Only the kernel knows (ip_vs_scheduler_get loads ip_vs_<name> on demand;
    "none" is no scheduler), so the caller sends this before recording `op`
    and answers the kernel's error if it refuses ("Scheduler or persistence
    engine not found" for ENOENT, from ip_vs_add_service/ip_vs_edit_service).
    It is what the next reconcile pass would send anyway: an edit of the
    service if `kernel` (the kernel's service keys) has it, else its add."""
    match op:
        case AddService(service) | EditService(service):
            return EditService(service) if service.key in kernel else AddService(service)
    return None


class LayerBuilder:
    """A runtime layer being changed, and the effective state it makes with
    the config file, one service at a time.

    One request makes its changes here in place and freezes the result once:
    a change costs the size of its own service, not of the whole table, so a
    long `-R` stays linear. `apply` checks an ipvsadm operation against the
    effective state the way the kernel checks it against its table, in the
    kernel's order, and answers with the kernel's own error when it would
    refuse (changing nothing then)."""

    def __init__(
        self,
        config: Config,
        layer: RuntimeLayer = EMPTY,
        *,
        engines: EngineCheck | None = listed_engines,
    ) -> None:
        """`engines` judges the scheduler and persistence engine of -A and -E
        (True: taken); None leaves them to the kernel, for a caller that
        sends `kernel_probe(op)` to the kernel before `apply(op)`."""
        self.config = config
        self._engines = engines
        self._file = {vs.key: vs for vs in config.virtual_servers}
        self._file_servers: dict[ServiceKey, dict[RealServerId, RealServer]] = {}
        self._services = _copy(layer.services)
        self._deleted_services = set(layer.deleted_services)
        self._real_servers = _copy(layer.real_servers)
        self._deleted_real_servers = set(layer.deleted_real_servers)
        self._admin = _copy(layer.admin)
        self._timeouts = layer.timeouts
        self._restored = set(layer.restored)
        self._keys = (self._file.keys() - self._deleted_services) | self._services.keys()
        # The layer's real servers by service: the layer's own index, each
        # service's copied before its first change here (_servers_of).
        self._by_service = layer._index().copy()
        self._mine: set[ServiceKey] = set()  # the services of _by_service copied
        # The services whose effective state may have changed since `layer`
        # (`effective`; -C deletes all, and each that comes back is touched).
        self._touched: set[ServiceKey] = set()
        self._checks: dict[int, str | None] = {}  # target_problem's, by id() of the check
        self._last_rid: tuple[ServiceKey, Destination, RealServerId] | None = None

    def freeze(self) -> RuntimeLayer:
        """The layer as changed so far (the builder can go on changing)."""
        layer = RuntimeLayer(
            services=self._services.copy(),
            deleted_services=frozenset(self._deleted_services),
            real_servers=self._real_servers.copy(),
            deleted_real_servers=frozenset(self._deleted_real_servers),
            admin=self._admin.copy(),
            timeouts=self._timeouts,
            restored=frozenset(self._restored),
        )
        # The index goes with it; this builder copies a service's again
        # before it changes it.
        object.__setattr__(layer, "_by_service", self._by_service.copy())
        self._mine.clear()
        return layer

    def effective(self, before: Config) -> Config:
        """effective_config(self.config, self.freeze()), given `before`, the
        effective config of the layer this builder started from over the
        same config: the services no change touched are taken from it as
        they are, so a change costs its own services, not the table."""
        if (
            not self._services
            and not self._deleted_services
            and not self._real_servers
            and not self._deleted_real_servers
            and not self._admin
            and self._timeouts is None
            and not self._restored
        ):
            return self.config  # an empty layer: effective_config's answer
        touched = self._touched
        old = {vs.key: vs for vs in before.virtual_servers}
        virtual_servers: list[VirtualServer] = []
        for vs in self.config.virtual_servers:
            key = vs.key
            if key not in self._deleted_services:
                virtual_servers.append(self._current(key, old, touched))
        for key in self._services:
            if key not in self._file:
                virtual_servers.append(self._current(key, old, touched))
        ipvs = self.config.ipvs
        if self._timeouts is not None:
            ipvs = replace(ipvs, timeouts=merge_timeouts(ipvs.timeouts, self._timeouts))
        return replace(self.config, virtual_servers=tuple(virtual_servers), ipvs=ipvs)

    def _current(
        self, key: ServiceKey, old: Mapping[ServiceKey, VirtualServer], touched: Set[ServiceKey]
    ) -> VirtualServer:
        vs = None if key in touched else old.get(key)
        return self.virtual_server(key) if vs is None else vs

    def _servers_of(self, key: ServiceKey) -> dict[RealServerId, Destination]:
        """The real servers of service `key` in the layer, to change: the
        builder's own copy."""
        if key not in self._mine:
            self._mine.add(key)
            self._by_service[key] = self._by_service.get(key, {}).copy()
        return self._by_service[key]

    # -- the effective state --------------------------------------------------

    def service_keys(self) -> Set[ServiceKey]:
        return self._keys

    def virtual_server(self, key: ServiceKey) -> VirtualServer:
        servers = self._by_service.get(key, {})
        if key in self._deleted_services or key not in self._file:
            # made at runtime: at once, with its real servers
            check = self.config.control.runtime_check_for(key)
            return virtual_server_for(self._services[key], check, servers)
        return _with_real_servers(self._base(key), servers, self._deleted_real_servers)

    def _base(self, key: ServiceKey) -> VirtualServer:
        """The virtual server without its runtime real servers."""
        service = self._services.get(key)
        vs = None if key in self._deleted_services else self._file.get(key)
        if vs is None:
            if service is None:
                raise KeyError(key)
            return virtual_server_for(service, self.config.control.runtime_check_for(key))
        return vs if service is None else with_service_fields(vs, service)

    def _rid(self, key: ServiceKey, destination: Destination) -> RealServerId:
        """The id of `destination` in service `key`: made once for an -a or
        -e (its checks, then its record)."""
        last = self._last_rid
        if last is not None and last[0] is key and last[1] is destination:
            return last[2]
        rid = RealServerId(key, destination.address, destination.port)
        self._last_rid = (key, destination, rid)
        return rid

    def _check(self, key: ServiceKey) -> Check:
        """The check of service `key` (one of the effective state's): the
        config's, or [control] runtime_check (runtime_check_udp) for a
        service made at runtime (what _base(key).check is, without making
        the virtual server)."""
        vs = None if key in self._deleted_services else self._file.get(key)
        return self.config.control.runtime_check_for(key) if vs is None else vs.check

    def _not_checkable(self, rid: RealServerId, problem: str) -> str:
        """Why real server `rid` cannot be added: its check (`_check`) has
        `problem` with it; the message names the server, its service, and
        the setting that gives its check."""
        key = rid.service
        vs = None if key in self._deleted_services else self._file.get(key)
        if vs is not None:
            where = "the service's, in the config file"
        elif key.protocol is Protocol.UDP:
            where = "[control] runtime_check_udp (for UDP services added at runtime)"
        else:
            where = "[control] runtime_check (for services added at runtime)"
        return (
            f"cannot health-check real server {endpoint(rid.address, rid.port)} of "
            f"{service_label(key)}: {problem}; its check is {where}"
        )

    def _config_server(self, rid: RealServerId) -> RealServer | None:
        """The config file's definition of `rid`, if its service is the
        file's (not deleted at runtime)."""
        key = rid.service
        if key not in self._file or key in self._deleted_services:
            return None
        if key not in self._file_servers:
            vs = self._file[key]
            self._file_servers[key] = {vs.real_server_id(rs): rs for rs in vs.real_servers}
        return self._file_servers[key].get(rid)

    def _sorry(self, key: ServiceKey) -> RealServerId | None:
        """The id of the config file's sorry server of service `key`, if
        the service is the file's."""
        vs = None if key in self._deleted_services else self._file.get(key)
        if vs is None or vs.sorry_server is None:
            return None
        return RealServerId(key, vs.sorry_server.address, vs.sorry_server.port)

    def _sorry_refusal(self, key: ServiceKey, destination: Destination) -> IPVSError | None:
        """An -a of service `key`'s sorry server: the daemon's to put in and
        take out. Taken (recording nothing) once after the service came
        back by -A (the -R of what -S saved while it stood in) when its
        fields are the file's; otherwise refused in the daemon's own words
        (it may stand in the table)."""
        vs = self._file[key]
        assert vs.sorry_server is not None
        rid = RealServerId(key, destination.address, destination.port)
        if rid in self._restored and destination == vs.sorry_server.destination():
            return None
        return Refused(
            f"{endpoint(rid.address, rid.port)} is the sorry server of {service_label(key)}:"
            " the daemon puts it in while the quorum is lost; to make it a real server,"
            " change the config",
            errno.EEXIST,
        )

    def has_real_server(self, rid: RealServerId) -> bool:
        if rid in self._by_service.get(rid.service, ()):
            return True
        return self._config_server(rid) is not None and rid not in self._deleted_real_servers

    # -- changes --------------------------------------------------------------

    def apply(self, op: Operation) -> IPVSError | None:
        """Record `op`, or answer the error the kernel would give for it.

        The checks run in the kernel's order (net/netfilter/ipvs/ip_vs_ctl.c:
        ip_vs_genl_set_cmd finds the service, then ip_vs_add_service,
        ip_vs_edit_service, ip_vs_add_dest, ip_vs_edit_dest, ip_vs_del_dest),
        so one operation with two faults gets the kernel's answer. Whether
        the kernel has a scheduler or persistence engine is not checked here:
        see `kernel_probe`."""
        error = self._refusal(op)
        if error is not None:
            return error
        match op:
            case AddService(service):
                self._add_service(service)
            case EditService(service):
                self._set_service(service)
            case AddDestination(key, destination):
                rid = self._rid(key, destination)
                if rid == self._sorry(key):
                    # The file's sorry server, saved by -S while it stood in:
                    # the -R of it records nothing (the quorum decides).
                    self._restored.discard(rid)
                    return None
                configured = self._config_server(rid)
                destination = _with_saved_thresholds(configured, destination)
                weight = None if configured is None else configured.weight
                destination = self._weight_or_drain(rid, destination, weight)
                self._set_real_server(rid, destination, configured)
            case EditDestination(key, destination):
                rid = self._rid(key, destination)
                destination = self._weight_or_drain(rid, destination, self._weight(rid))
                self._set_real_server(rid, destination, self._config_server(rid))
            case DeleteService(key):
                self._delete_service(key)
            case DeleteDestination(key, address, port):
                self._delete_real_server(RealServerId(key, address, port))
            case Flush():
                self._flush()
            case SetTimeouts(timeouts):
                merged = merge_timeouts(self._timeouts, timeouts)
                file = self.config.ipvs.timeouts
                # Back to the file's values: the file's again, as an -e back
                # to a server's drops its edit (a file without timeouts has
                # none to go back to).
                same = file is not None and merge_timeouts(file, merged) == file
                self._timeouts = None if same else merged
            case _:
                name = type(op).__name__
                raise ValueError(f"{name} does not change the desired state; send it to the kernel")
        return None

    def refusal(self, op: Operation) -> IPVSError | None:
        """The error `apply` would answer for `op`, recording nothing."""
        return self._refusal(op)

    def _refusal(self, op: Operation) -> IPVSError | None:
        name = type(op).__name__
        match op:
            case AddService(service):
                # ip_vs_genl_set_cmd: EEXIST before ip_vs_add_service runs.
                if service.key in self._keys:
                    return error_for(errno.EEXIST, name)
                return self._service_refusal(service, name)
            case EditService(service):
                if service.key not in self._keys:
                    return error_for(errno.ESRCH, name)
                return self._service_refusal(service, name)
            case DeleteService(key):
                if key not in self._keys:
                    return error_for(errno.ESRCH, name)
            case AddDestination(key, destination) | EditDestination(key, destination):
                if key not in self._keys:
                    return error_for(errno.ESRCH, name)
                error = _destination_refusal(key, destination, name)
                if error is not None:
                    return error
                rid = self._rid(key, destination)
                sorry = self._sorry(key)
                if rid == sorry and isinstance(op, AddDestination):
                    return self._sorry_refusal(key, destination)
                configured = self._config_server(rid)
                exists = rid in self._by_service.get(key, ()) or (
                    configured is not None and rid not in self._deleted_real_servers
                )  # has_real_server(rid)
                if isinstance(op, EditDestination):
                    return None if exists else error_for(errno.ENOENT, name)
                if exists and rid not in self._restored:
                    return error_for(errno.EEXIST, name)
                # ip_vs_new_dest, after the lookups
                if destination_problem(destination.address) is not None:
                    return error_for(errno.EINVAL, name)
                if configured is None:
                    target = (self._check(key), destination.address, destination.port)
                    problem = target_problem(target, self._checks)
                    if problem is not None:
                        return Refused(self._not_checkable(rid, problem))
            case DeleteDestination(key, address, port):
                if key not in self._keys:
                    return error_for(errno.ESRCH, name)
                if not self.has_real_server(RealServerId(key, address, port)):
                    return error_for(errno.ENOENT, name)
        return None

    def _add_service(self, service: Service) -> None:
        key = service.key
        if key in self._deleted_services:
            # A config service coming back: with the config's real servers,
            # each of which one -a may still add (the -R after a -C).
            self._deleted_services.discard(key)
            vs = self._file.get(key)
            if vs is not None:
                self._restored.update(vs.real_server_id(rs) for rs in vs.real_servers)
                sorry = self._sorry(key)
                if sorry is not None:
                    self._restored.add(sorry)
        self._keys.add(key)
        self._set_service(service)

    def _set_service(self, service: Service) -> None:
        """Record `service`'s fields where they differ from the config's."""
        self._touched.add(service.key)
        vs = None if service.key in self._deleted_services else self._file.get(service.key)
        if vs is not None and vs.service() == service:
            self._services.pop(service.key, None)
        else:
            self._services[service.key] = service

    def _weight(self, rid: RealServerId) -> int | None:
        """`rid`'s weight in the effective state (None: no such server)."""
        destination = self._by_service.get(rid.service, {}).get(rid)
        if destination is not None:
            return destination.weight
        configured = self._config_server(rid)
        return None if configured is None else configured.weight

    def _weight_or_drain(
        self, rid: RealServerId, destination: Destination, weight: int | None
    ) -> Destination:
        """Weight 0 is ipvsadm's way to drain (ipvsadm(8): "quiesced"), and
        what -S saves for a drained server: an -a or -e of weight 0 for a
        server whose `weight` (its weight before this line) is not 0 drains
        it as `directorctl drain` does and keeps that weight, so `status`
        says drain, `enable` restores the weight, and a later -S saves 0
        again. A weight that is not 0 ends a drain (the kernel gets what the
        line asks for); disabled stays disabled."""
        state = self._admin.get(rid)
        if destination.weight == 0 and weight:
            if state is not AdminState.DISABLED:
                self._admin[rid] = AdminState.DRAIN
            return replace(destination, weight=weight)
        if destination.weight and state is AdminState.DRAIN:
            del self._admin[rid]
        return destination

    def _set_real_server(
        self, rid: RealServerId, destination: Destination, configured: RealServer | None
    ) -> None:
        """Record `destination`'s fields where they differ from the config's
        (`configured`: _config_server(rid))."""
        by_service = self._servers_of(rid.service)
        self._touched.add(rid.service)
        if configured is not None and configured.destination() == destination:
            self._real_servers.pop(rid, None)
            by_service.pop(rid, None)
        else:
            self._real_servers[rid] = destination
            by_service[rid] = destination
        self._deleted_real_servers.discard(rid)
        self._restored.discard(rid)

    def _delete_service(self, key: ServiceKey) -> None:
        """-D: forget every runtime change to the service and its real
        servers, and hide the config's definition of it if it has one (a
        later -A brings that definition back)."""
        self._touched.add(key)
        self._mine.discard(key)
        for rid in list(self._by_service.pop(key, {})):
            del self._real_servers[rid]
        vs = self._file.get(key)
        if vs is not None:
            for rs in vs.real_servers:
                rid = vs.real_server_id(rs)
                self._deleted_real_servers.discard(rid)
                self._restored.discard(rid)
            self._deleted_services.add(key)
        for rid in [rid for rid in self._admin if rid.service == key]:
            del self._admin[rid]
        self._services.pop(key, None)
        self._keys.discard(key)

    def _flush(self) -> None:
        """-C: every service deleted, as _delete_service does one."""
        self._deleted_services.update(self._keys & self._file.keys())
        self._keys.clear()
        self._services.clear()
        self._real_servers.clear()
        self._by_service.clear()
        self._mine.clear()
        self._deleted_real_servers.clear()
        self._admin.clear()
        self._restored.clear()

    def _delete_real_server(self, rid: RealServerId) -> None:
        if self._config_server(rid) is not None:
            self._deleted_real_servers.add(rid)
        self._touched.add(rid.service)
        self._real_servers.pop(rid, None)
        if rid in self._by_service.get(rid.service, ()):
            del self._servers_of(rid.service)[rid]
        self._admin.pop(rid, None)
        self._restored.discard(rid)

    def set_admin(self, rid: RealServerId, state: AdminState) -> RealServerId:
        """drain / disable / enable one real server of the effective state:
        `rid`, or the one server its check probes at `rid`'s address and
        port (a route server written with another port: the config's
        words). The id of the server changed; LookupError when none is."""
        if rid.service not in self._keys:
            raise LookupError(f"no virtual service {describe_service(rid.service)}")
        if not self.has_real_server(rid):
            rid = self._probed_at(rid)
        self._admin.pop(rid, None)
        if state is not AdminState.ENABLED:
            self._admin[rid] = state
        return rid

    def _probed_at(self, rid: RealServerId) -> RealServerId:
        vs = self.virtual_server(rid.service)
        same = [rs for rs in vs.real_servers if rs.address == rid.address]
        probed = [
            rs
            for rs in same
            if probed_endpoint(rs.check, rs.address, rs.port) == (rid.address, rid.port)
        ]
        if len(probed) == 1:
            return vs.real_server_id(probed[0])
        has = ", ".join(endpoint(rs.address, rs.port) for rs in same)
        raise LookupError(
            f"no real server {describe_endpoint(rid.address, rid.port)}"
            f" in {describe_service(rid.service)}" + (f" (it has {has})" if has else "")
        )

    def _service_refusal(self, service: Service, name: str) -> IPVSError | None:
        """ip_vs_add_service / ip_vs_edit_service: the scheduler and the
        persistence engine (ENOENT), then an IPv6 netmask outside 1..128
        (EINVAL)."""
        if self._engines is not None and not self._engines(service):
            return error_for(errno.ENOENT, name)
        if service.key.family == AF_INET6 and service.netmask not in IPV6_PREFIX_RANGE:
            return error_for(errno.EINVAL, name)
        return None


def _with_saved_thresholds(configured: RealServer | None, destination: Destination) -> Destination:
    """-a of a server the config defines (`configured`), without thresholds:
    the config's. ipvsadm -S never saves -x and -y (print_service_entry), so
    re-adding a line of a save must not drop them."""
    if configured is None or destination.u_threshold or destination.l_threshold:
        return destination
    return replace(
        destination,
        u_threshold=configured.u_threshold,
        l_threshold=configured.l_threshold,
    )


def _destination_refusal(key: ServiceKey, destination: Destination, name: str) -> IPVSError | None:
    """What the kernel refuses of an -a or -e before it looks the destination
    up: another family than the service's unless tunnelled (EINVAL,
    ip_vs_genl_set_cmd), a negative weight or a lower threshold above the
    upper one (ERANGE), a GUE tunnel without a port (EINVAL; ip_vs_add_dest
    and ip_vs_edit_dest, in that order)."""
    if destination.family != key.family and destination.forward is not Forward.TUNNEL:
        return error_for(errno.EINVAL, name)
    if destination.weight < 0 or destination.l_threshold > destination.u_threshold:
        return error_for(errno.ERANGE, name)
    if destination.tun_type is TunnelType.GUE and destination.tun_port == 0:
        return error_for(errno.EINVAL, name)
    return None


def apply_operation(
    config: Config,
    layer: RuntimeLayer,
    op: Operation,
    *,
    engines: EngineCheck | None = listed_engines,
) -> tuple[RuntimeLayer, IPVSError | None]:
    """`layer` with `op` recorded, or `layer` unchanged and the error the
    kernel would give for `op` on a table holding the effective state."""
    builder = LayerBuilder(config, layer, engines=engines)
    error = builder.apply(op)
    return (layer, error) if error is not None else (builder.freeze(), None)


def set_admin(
    config: Config, layer: RuntimeLayer, rid: RealServerId, state: AdminState
) -> RuntimeLayer:
    builder = LayerBuilder(config, layer)
    builder.set_admin(rid, state)
    return builder.freeze()


K = TypeVar("K")
V = TypeVar("V")


def _copy(mapping: Mapping[K, V]) -> dict[K, V]:
    # MappingProxyType.copy() is dict.copy(): it keeps the stored hashes
    # (keys hash slowly).
    copy: dict[K, V] = mapping.copy()  # type: ignore[attr-defined]
    return copy


# -- naming services and real servers -------------------------------------------

_PROTOCOL_NAMES = PROTOCOLS
_SERVICE = re.compile(rf"(?i)\s*({'|'.join(PROTOCOLS)})[:\s]\s*(\S+)\s*")
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


describe_endpoint = endpoint  # '10.0.0.1:80', '[2001:db8::1]:80'


def describe_service(key: ServiceKey) -> str:
    """The name parse_service reads back: 'tcp:10.0.0.1:80', 'fwm:7:ipv6'."""
    if key.is_fwmark:
        return f"fwm:{key.fwmark}" + (":ipv6" if key.family == AF_INET6 else "")
    assert key.protocol is not None
    return f"{key.protocol.name.lower()}:{describe_endpoint(key.address, key.port)}"
