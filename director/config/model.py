"""The daemon's configuration as validated values.

Everything here has been checked by director.config.parse; the kernel values
a virtual or real server implies (Service, Destination) are derived here so
that the rest of the daemon never re-reads TOML.
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import PurePath

from director.config.toml import literal
from director.health.spec import Check, ExecCheck, TcpCheck, UdpCheck, probed_endpoint
from director.ipvs.model import (
    Destination,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelFlags,
    TunnelType,
    endpoint,
    full_netmask,
    scheduler_flag_names,
    service_label,
)

# A virtual server without a check table gets a TCP connect check.
DEFAULT_CHECK: Check = TcpCheck()
# A UDP service added with directorctl -A: an empty datagram, down on the
# ICMP error of a closed port (a TCP connect fails a UDP-only server).
DEFAULT_UDP_CHECK: Check = UdpCheck()


class OnFailure(enum.Enum):
    REMOVE = "remove"  # take the server out of the table
    WEIGHT0 = "weight0"  # keep it with weight 0: established connections live on


@dataclass(frozen=True, slots=True)
class RealServerId:
    """Names one real server of one virtual service across config reloads."""

    service: ServiceKey
    address: IPAddress
    port: int
    # The key of every per-server map, looked up in each pass: hashing a
    # ServiceKey and an address (IPv4Address hashes through hex()) every time
    # cost more than the lookups themselves. Kept to 30 bits, one digit of a
    # Python int: 32 bytes a server instead of 48.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        whole = hash((self.service, self.address, self.port))
        object.__setattr__(self, "_hash", whole & 0x3FFFFFFF)

    def __hash__(self) -> int:
        return self._hash


@dataclass(frozen=True, slots=True)
class RealServer:
    """A [[virtual_server.real_server]]: one real server as ipvsadm -a would add it
    (`destination()`), the check that probes it (its service's, with this
    server's overrides) and an optional `name` for logs and status."""

    address: IPAddress
    port: int
    forward: Forward = Forward.ROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: TunnelType = TunnelType.IPIP
    tun_port: int = 0
    tun_flags: TunnelFlags = TunnelFlags.NOCSUM
    check: Check = DEFAULT_CHECK
    name: str | None = None

    def destination(self, weight: int | None = None) -> Destination:
        """The kernel destination, with the configured weight unless given."""
        return Destination(
            address=self.address,
            port=self.port,
            forward=self.forward,
            weight=self.weight if weight is None else weight,
            u_threshold=self.u_threshold,
            l_threshold=self.l_threshold,
            tun_type=self.tun_type,
            tun_port=self.tun_port,
            tun_flags=self.tun_flags,
        )

    @property
    def label(self) -> str:
        return self.name or endpoint(self.address, self.port)


@dataclass(frozen=True)
class SorryServer:
    """Put in the table when fewer than `quorum` real servers are up."""

    address: IPAddress
    port: int
    forward: Forward = Forward.ROUTE
    weight: int = 1

    def destination(self) -> Destination:
        return Destination(self.address, self.port, self.forward, self.weight)


@dataclass(frozen=True)
class VirtualServer:
    """A [[virtual_server]]: one virtual service (its kernel settings: `service()`),
    its real servers, and what the daemon does as their health changes."""

    key: ServiceKey
    scheduler: str = "wlc"
    persistent: int | None = None  # persistence timeout in seconds
    persistent_netmask: int | None = None  # as the kernel stores it; None: full
    scheduler_flags: ServiceFlags = ServiceFlags.NONE  # SCHED1..3 only
    one_packet: bool = False
    pe: str = ""
    on_failure: OnFailure = OnFailure.REMOVE
    check: Check = DEFAULT_CHECK
    quorum: int = 1
    sorry_server: SorryServer | None = None
    panic: bool = False
    slow_start: float = 0.0  # seconds
    real_servers: tuple[RealServer, ...] = ()
    # The interface the daemon puts the VIP on while the service should
    # receive traffic (director.vips); None: the VIP is not the daemon's.
    vip_interface: str | None = None
    create_vip_interface: bool = False  # a missing vip_interface is made a dummy one
    # The VIP is announced over BGP ([bgp]) while the service should receive
    # traffic (director.bgp).
    bgp: bool = False

    def service(self) -> Service:
        """The kernel service this virtual server implies."""
        flags = self.scheduler_flags
        if self.persistent is not None:
            flags |= ServiceFlags.PERSISTENT
        if self.one_packet:
            flags |= ServiceFlags.ONEPACKET
        netmask = self.persistent_netmask
        return Service(
            key=self.key,
            scheduler=self.scheduler,
            flags=flags,
            timeout=self.persistent or 0,
            netmask=full_netmask(self.key.family) if netmask is None else netmask,
            pe_name=self.pe,
        )

    def real_server_id(self, real_server: RealServer) -> RealServerId:
        return RealServerId(self.key, real_server.address, real_server.port)

    @cached_property
    def real_server_ids(self) -> tuple[RealServerId, ...]:
        """real_server_id of each of `real_servers`, in order (made once)."""
        return tuple(RealServerId(self.key, rs.address, rs.port) for rs in self.real_servers)

    @cached_property
    def real_server_index(self) -> dict[RealServerId, RealServer]:
        """Each of `real_servers` by its id (made when first asked for: a
        health pass over some of a service's servers looks them up)."""
        return dict(zip(self.real_server_ids, self.real_servers, strict=True))

    @property
    def label(self) -> str:
        return service_label(self.key)


class SyncRole(enum.Enum):
    """Which of the kernel's two sync daemons run (ipvsadm --start-daemon
    takes master or backup; "both" starts the two)."""

    MASTER = "master"
    BACKUP = "backup"
    BOTH = "both"

    @property
    def states(self) -> tuple[SyncState, ...]:
        if self is SyncRole.BOTH:
            return (SyncState.MASTER, SyncState.BACKUP)
        return (SyncState.MASTER,) if self is SyncRole.MASTER else (SyncState.BACKUP,)


@dataclass(frozen=True)
class SyncSettings:
    """[ipvs.sync]: the kernel's connection sync daemon(s). 0 (or None for
    the group) leaves a value to the kernel's default (start_sync_thread,
    net/netfilter/ipvs/ip_vs_sync.c): group 224.0.0.81, port 8848, ttl 1,
    maxlen from the interface's MTU."""

    role: SyncRole
    interface: str
    syncid: int
    group: IPAddress | None = None
    port: int = 0
    ttl: int = 0
    maxlen: int = 0  # bytes of UDP payload in a sync message

    def daemons(self) -> dict[SyncState, SyncDaemon]:
        """The daemon of each state `role` runs, as IPVS_CMD_NEW_DAEMON sends it."""
        return {
            state: SyncDaemon(
                state,
                self.interface,
                self.syncid,
                self.maxlen,
                self.group,
                self.port,
                self.ttl,
            )
            for state in self.role.states
        }


@dataclass(frozen=True)
class IpvsSettings:
    """[ipvs]: the kernel-wide settings the daemon keeps: the connection timeouts
    (ipvsadm --set) and the connection sync daemons."""

    timeouts: Timeouts | None = None  # None: leave the kernel's as they are
    sync: SyncSettings | None = None  # None: no sync daemon of the config's


BGP_PORT = 179


@dataclass(frozen=True)
class BgpPeer:
    """[[bgp.peer]]: one BGP neighbour (a router), `as_number` its AS
    (TOML key "as"). VIPs of the peer's address family go to it."""

    address: IPAddress
    as_number: int
    port: int = BGP_PORT
    # An eBGP neighbour more than one hop away (BIRD's `multihop`); None: directly connected.
    multihop: int | None = None
    password: str | None = None  # TCP MD5 signature (RFC 2385)


@dataclass(frozen=True)
class BgpSettings:
    """[bgp]: the VIPs of the services with `bgp = true` are announced as
    host routes (/32, /128) through BIRD 2, which directord runs as its
    child (director.bird). `hold_time` in seconds (RFC 4271: 0 or 3..65535;
    keepalives at a third of it); `med` (MULTI_EXIT_DISC) and `local_pref`
    (iBGP peers only) make a pair active/backup instead of ECMP; `next_hop`
    None: this director's own address on the session."""

    local_as: int
    peers: tuple[BgpPeer, ...]
    router_id: IPAddress | None = None  # IPv4; None: BIRD takes its lowest IPv4 address
    next_hop: IPAddress | None = None
    hold_time: int = 90
    med: int | None = None
    local_pref: int | None = None
    bird: str = "bird"
    birdc: str = "birdc"
    runtime_dir: str = "/run/director/bgp"  # BIRD's config file and control socket

    @property
    def families(self) -> frozenset[int]:
        """The address families (4, 6) of the peers."""
        return frozenset(peer.address.version for peer in self.peers)


SUN_PATH_MAX = 107  # bytes of a Unix socket path: sizeof(sun_path) - 1, <sys/un.h>


@dataclass(frozen=True)
class ControlSettings:
    """[control]: the control socket directorctl speaks to. The socket file gets
    `mode` and `group` (whose members may then connect and read); root and the
    members of `admin_group` may also change state."""

    socket: str = "/run/director/director.sock"
    group: str | None = None  # may read status
    admin_group: str | None = None  # may also change state
    mode: int = 0o660
    runtime_check: Check = DEFAULT_CHECK  # of a service added with directorctl -A
    runtime_check_udp: Check = DEFAULT_UDP_CHECK  # of a UDP one (-A -u)

    def runtime_check_for(self, key: ServiceKey) -> Check:
        """The check of service `key` added at runtime: runtime_check_udp
        for a UDP one, runtime_check for the others (TCP, SCTP, fwmark)."""
        return self.runtime_check_udp if key.protocol is Protocol.UDP else self.runtime_check


class LogLevel(enum.Enum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class DaemonSettings:
    """[daemon]: `reconcile_interval` is the seconds between drift repairs (and the
    longest backoff of a refused operation); `flush_on_stop` removes the owned
    services and VIPs at stop; `state_file` is where director.statefile saves;
    `max_probes` is how many probes run at once (at most half the open-file
    limit), `max_exec_checks` how many of them exec checks' commands."""

    flush_on_stop: bool = False
    reconcile_interval: float = 5.0
    state_file: str = "/var/lib/director/state.json"
    log_level: LogLevel = LogLevel.INFO
    max_probes: int = 4096
    max_exec_checks: int = 16


@dataclass(frozen=True)
class MetricsSettings:
    """[metrics]: where the Prometheus endpoint listens; off when `listen` is
    None. `listen` is as written ('127.0.0.1:9531', '[::1]:9531' or an
    absolute Unix socket path); `address` and `port` are set for an IP
    endpoint, `path` for a Unix socket."""

    listen: str | None = None
    address: IPAddress | None = None
    port: int = 0
    path: str | None = None


@dataclass(frozen=True)
class Config:
    """The daemon's whole configuration, as parse_config makes it from the TOML
    file (`source`: its path, or "<config>"); the runtime layer's changes give
    another Config over it (director.runtime.effective_config)."""

    virtual_servers: tuple[VirtualServer, ...] = ()
    ipvs: IpvsSettings = IpvsSettings()
    control: ControlSettings = ControlSettings()
    daemon: DaemonSettings = DaemonSettings()
    metrics: MetricsSettings = MetricsSettings()
    bgp: BgpSettings | None = None  # None: nothing announced
    source: str = "<config>"

    def service_keys(self) -> frozenset[ServiceKey]:
        return frozenset(vs.key for vs in self.virtual_servers)

    def virtual_server(self, key: ServiceKey) -> VirtualServer:
        for vs in self.virtual_servers:
            if vs.key == key:
                return vs
        raise KeyError(key)

    def real_server_ids(self) -> list[RealServerId]:
        return [vs.real_server_id(rs) for vs in self.virtual_servers for rs in vs.real_servers]

    def counts(self) -> str:
        """ "1 virtual service, 4 real servers": what `directord --check` and
        `directorctl check-config` say of a valid file."""
        services = len(self.virtual_servers)
        servers = sum(len(vs.real_servers) for vs in self.virtual_servers)
        return f"{_plural(services, 'virtual service')}, {_plural(servers, 'real server')}"

    def warnings(self) -> list[str]:
        """What `directord --check` and `directorctl check-config` warn of in
        a valid file: no virtual service at all (an empty or cut-short file
        written by a failed deploy reads as valid TOML)."""
        if self.virtual_servers:
            return []
        return [NO_SERVICE]


# A reload to a file without a virtual service would delete every service
# the running config has: refused (Director.reload_file); a start takes it.
NO_SERVICE = (
    "no virtual service: a reload to this file is refused; a start with it deletes"
    " every service directord manages"
)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def service_changes(old: VirtualServer, new: VirtualServer) -> tuple[str, ...]:
    """What differs in a virtual server's own settings (its real servers
    aside), each as the config writes it: `scheduler "wlc" -> "wrr"`,
    `persistent 600 -> 1200`, `persistent_netmask 24 -> 16`,
    `scheduler_flags ["sh-port"] -> []`, `sorry_server { address =
    "10.0.9.9:80", forward = "route", weight = 1 } -> (none)`; the check's
    keys as check_changes words them: `check.interval 1.0 -> 2.0`."""
    changes = []
    for setting in fields(VirtualServer):
        name = setting.name
        before, after = getattr(old, name), getattr(new, name)
        if name in ("key", "real_servers") or before == after:
            continue
        if name == "check":
            changes += check_changes(before, after)
            continue
        shown = _setting_text(name, old, before), _setting_text(name, new, after)
        changes.append(name if None in shown else f"{name} {shown[0]} -> {shown[1]}")
    return tuple(changes)


def check_changes(old: Check, new: Check) -> list[str]:
    """What differs between two checks, each as the config writes it:
    `check.type "tcp" -> "http"` (and nothing more), `check.interval 1.0 ->
    2.0`, `check.path "/" -> "/health"`; a setting of many values by its
    key alone (`check.expect_status`, `check.command`)."""
    kinds = _check_type(old), _check_type(new)
    if kinds[0] != kinds[1]:
        return [f"check.type {literal(kinds[0])} -> {literal(kinds[1])}"]
    changes = []
    for setting in fields(old):
        name = setting.name
        before, after = getattr(old, name), getattr(new, name)
        if before == after or name == "tls":
            continue
        pairs = (
            [(f.name, getattr(before, f.name), getattr(after, f.name)) for f in fields(before)]
            if name == "timing"
            else [(name, before, after)]
        )
        for key, was, now in pairs:
            if was != now:
                shown = value_text(was), value_text(now)
                changes.append(
                    f"check.{key}" if None in shown else f"check.{key} {shown[0]} -> {shown[1]}"
                )
    return changes


def _check_type(check: Check) -> str:
    """A check's `type` as the config writes it."""
    name = type(check).__name__.removesuffix("Check").lower()
    return "https" if getattr(check, "tls", False) else name


# A real server's field -> its key in the config, where they differ.
_REAL_SERVER_KEYS = {
    "u_threshold": "thresholds.upper",
    "l_threshold": "thresholds.lower",
    "tun_flags": "tun_checksum",
}


def real_server_changes(
    old: RealServer, new: RealServer, service_checks: tuple[Check, Check] | None = None
) -> tuple[str, ...]:
    """What differs in a real server's settings (one of the same address
    and port in the table), each as the config writes it: `weight 1 ->
    3`, `forward "route" -> "masq"`, `thresholds.upper 0 -> 500`; its
    check's keys as check_changes words them (`check.path "/" ->
    "/health"`), or where it probes when only that changed: `probed
    10.0.0.2:8080 -> 10.0.0.2:8081` (a route server written with another
    port), and nothing when that stayed (route -> masq on the port
    probed). `service_checks`: its service's check before and after; a
    server whose check is the service's in both shows none of its change
    (the service's line says it, once for all its servers)."""
    changes: list[str] = []
    for setting in fields(RealServer):
        name = setting.name
        before, after = getattr(old, name), getattr(new, name)
        if name in ("address", "port") or before == after:
            continue
        if name == "check":
            if service_checks is None or (before, after) != service_checks:
                changes += _check_changes(old, new)
            continue
        key = _REAL_SERVER_KEYS.get(name, name)
        shown = value_text(before), value_text(after)
        changes.append(key if None in shown else f"{key} {shown[0]} -> {shown[1]}")
    return tuple(changes)


def _check_changes(old: RealServer, new: RealServer) -> list[str]:
    before, after = old.check, new.check
    if isinstance(before, ExecCheck) or type(before) is not type(after):
        return check_changes(before, after)
    if replace(before, port=after.port, address=after.address) != after:
        return check_changes(before, after)
    was = probed_endpoint(before, old.address, old.port)
    now = probed_endpoint(after, new.address, new.port)
    if was == now or was is None or now is None:
        return []
    return [f"probed {endpoint(*was)} -> {endpoint(*now)}"]


def value_text(value: object, *, unset: str = "(none)", name: str = "") -> str | None:
    """A value as the config writes it: as TOML does for a string, a number
    or a boolean (a path as its string, the control socket's mode in
    octal), an enum by its word in the config ("masq", "warning"), the
    timeouts as their inline table; `unset` for None; None for one of many
    values (the caller names its key alone)."""
    if value is None:
        return unset
    if isinstance(value, enum.Enum):
        return literal(value.value if isinstance(value.value, str) else value.name.lower())
    if isinstance(value, Timeouts):
        return f"{{ tcp = {value.tcp}, tcpfin = {value.tcp_fin}, udp = {value.udp} }}"
    if name == "mode" and isinstance(value, int):
        return oct(value)
    if isinstance(value, PurePath):
        return literal(str(value))
    return literal(value) if isinstance(value, str | int | float) else None


def _setting_text(name: str, vs: VirtualServer, value: object) -> str | None:
    if value is None:
        return "(none)"
    if name == "scheduler_flags":
        assert isinstance(value, ServiceFlags)
        return literal(scheduler_flag_names(vs.scheduler, value))
    if name == "persistent_netmask" and vs.key.family == socket.AF_INET:
        assert isinstance(value, int)
        return str(value.bit_count())  # the mask as its prefix length
    if isinstance(value, SorryServer):
        where = literal(endpoint(value.address, value.port))
        forward = value.forward.name.lower()
        return f'{{ address = {where}, forward = "{forward}", weight = {value.weight} }}'
    return value_text(value)


def restart_needed(
    old: Config, new: Config, line_of: Callable[[str], int | None] | None = None
) -> list[str]:
    """Settings a reload cannot apply: the control socket is bound and the
    state file opened once, at start. Each as '[section] key: old -> new',
    the values as TOML writes them, with the new file's line (`line_of` a
    dotted path, config.lines.key_lines) as '[section] key (line 7): ...'."""
    changes = []
    for section, name in _RESTART_SETTINGS:
        before = getattr(getattr(old, section), name)
        after = getattr(getattr(new, section), name)
        if before != after:
            shown = [value_text(value, unset=_UNSET, name=name) for value in (before, after)]
            line = line_of(f"{section}.{name}") if line_of is not None else None
            where = f" (line {line})" if line is not None else ""
            changes.append(f"[{section}] {name}{where}: {shown[0]} -> {shown[1]}")
    return changes


# A setting of the daemon absent from the file, as a reload's lines show it.
_UNSET = "(not set)"

# The settings a reload refuses to change (restart_needed), in its order.
_RESTART_SETTINGS = (
    ("control", "socket"),
    ("control", "group"),
    ("control", "admin_group"),
    ("control", "mode"),
    ("daemon", "state_file"),
    ("metrics", "listen"),
)


def settings_changed(old: Config, new: Config) -> tuple[str, ...]:
    """The settings outside the virtual servers a reload changed, each as
    '[section] key: old -> new' with the values as TOML writes them
    ('[daemon] flush_on_stop: false -> true'), or the key alone for one of
    many values ('[ipvs] sync', '[bgp]'); a check's as check_changes words
    them ('[control] runtime_check: check.interval 1.0 -> 2.0')."""
    changes: list[str] = []
    # ([metrics] is its `listen` and what is read from it: a restart's.)
    for section in ("ipvs", "daemon", "control"):
        before, after = getattr(old, section), getattr(new, section)
        if before == after:
            continue
        for setting in fields(before):
            name = setting.name
            was, now = getattr(before, name), getattr(after, name)
            if was == now or (section, name) in _RESTART_SETTINGS:
                continue
            if isinstance(was, Check) and isinstance(now, Check):
                changes.append(f"[{section}] {name}: {', '.join(check_changes(was, now))}")
                continue
            shown = value_text(was, unset=_UNSET), value_text(now, unset=_UNSET)
            changes.append(
                f"[{section}] {name}"
                if shown[0] is None or shown[1] is None
                else f"[{section}] {name}: {shown[0]} -> {shown[1]}"
            )
    if old.bgp != new.bgp:
        changes.append("[bgp]")
    return tuple(changes)
