"""The IPVS table as plain values: what a service, a destination and their
counters are, with no I/O.

Every backend (netlink, in-memory) speaks these types, and so do the ipvsadm
parser and formatter. Values mirror the kernel's own fields (see
include/uapi/linux/ip_vs.h) so that nothing is lost between a dump and a write.
"""

from __future__ import annotations

import enum
import socket
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address

IPAddress = IPv4Address | IPv6Address

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6


class _OpenEnum(enum.IntEnum):
    """An IntEnum that a newer kernel's value does not break: an unknown value
    becomes a pseudo-member named UNKNOWN_<value> (not iterated, compares as
    its int), so a dump from a newer kernel still decodes and lists."""

    @classmethod
    def _missing_(cls, value: object) -> _OpenEnum | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]


class Protocol(_OpenEnum):
    TCP = socket.IPPROTO_TCP
    UDP = socket.IPPROTO_UDP
    SCTP = 132


class ServiceFlags(enum.IntFlag):
    """IP_VS_SVC_F_*; SCHED1..3 are the scheduler's own flags."""

    NONE = 0
    PERSISTENT = 0x0001
    HASHED = 0x0002
    ONEPACKET = 0x0004
    SCHED1 = 0x0008
    SCHED2 = 0x0010
    SCHED3 = 0x0020


# The scheduler's own flags as ipvsadm names them (-b, parse_sched_flags in
# ipvsadm.c): name -> (IP_VS_SVC_F_SCHED1..3 bit, the scheduler it is for;
# None: any scheduler).
SCHEDULER_FLAGS: dict[str, tuple[ServiceFlags, str | None]] = {
    "sh-fallback": (ServiceFlags.SCHED1, "sh"),
    "sh-port": (ServiceFlags.SCHED2, "sh"),
    "mh-fallback": (ServiceFlags.SCHED1, "mh"),
    "mh-port": (ServiceFlags.SCHED2, "mh"),
    "flag-1": (ServiceFlags.SCHED1, None),
    "flag-2": (ServiceFlags.SCHED2, None),
    "flag-3": (ServiceFlags.SCHED3, None),
}
_SCHEDULER_BITS = int(ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3)


def scheduler_flag_names(scheduler: str, flags: ServiceFlags) -> list[str]:
    """The names of `flags`' scheduler bits, as ipvsadm prints them for
    `scheduler` (print_sched_flags in ipvsadm.c): sh-fallback, sh-port for
    sh, mh-... for mh, flag-1..3 for any other."""
    bits = int(flags) & _SCHEDULER_BITS  # an int: IntFlag's & is Python code, and slow
    if not bits:
        return []
    owner = scheduler if scheduler in ("sh", "mh") else None
    return [name for name, (bit, o) in SCHEDULER_FLAGS.items() if o == owner and bits & bit]


# What the kernel reports but a writer must not set (HASHED is the kernel's own).
SETTABLE_SERVICE_FLAGS = (
    ServiceFlags.PERSISTENT
    | ServiceFlags.ONEPACKET
    | ServiceFlags.SCHED1
    | ServiceFlags.SCHED2
    | ServiceFlags.SCHED3
)


class Forward(_OpenEnum):
    """IP_VS_CONN_F_FWD_MASK values: how packets reach a destination."""

    MASQ = 0
    LOCAL = 1
    TUNNEL = 2
    ROUTE = 3


class TunnelType(_OpenEnum):
    IPIP = 0
    GUE = 1
    GRE = 2


class TunnelFlags(enum.IntFlag):
    """IP_VS_TUNNEL_ENCAP_FLAG_*; NOCSUM is the absence of the others."""

    NOCSUM = 0
    CSUM = 0x1
    REMCSUM = 0x2


class SyncState(enum.IntFlag):
    """IP_VS_STATE_* of the connection sync daemon."""

    NONE = 0
    MASTER = 1
    BACKUP = 2


# The largest connection timeout (seconds, ipvsadm --set) every kernel takes:
# INT_MAX // 1000. The kernel refuses a value > INT_MAX / HZ with EINVAL
# (net/netfilter/ipvs/ip_vs_ctl.c, ip_vs_set_timeout) and HZ is at most 1000;
# a kernel with a smaller HZ takes more (Debian's, HZ=250: 8589934).
TIMEOUT_MAX = 2147483
# The largest any kernel takes: INT_MAX // 100, HZ being at least 100. A
# value the kernel took was at most this; one above it, none ever will.
TIMEOUT_ANY_KERNEL = 21474836

DEFAULT_SCHEDULER = "wlc"
DEFAULT_PERSISTENCE_TIMEOUT = 300


def full_netmask(family: int) -> int:
    """The netmask the kernel stores when none is given: /32 for IPv4 (as a
    32-bit mask) and the prefix length 128 for IPv6."""
    return 0xFFFFFFFF if family == AF_INET else 128


def family_of(address: IPAddress) -> int:
    return AF_INET if address.version == 4 else AF_INET6


@dataclass(frozen=True, order=True)
class ServiceKey:
    """What identifies a virtual service: protocol+address+port, or a
    firewall mark (with protocol None and no address) in one family."""

    family: int
    protocol: Protocol | None
    address: IPAddress | None
    port: int
    fwmark: int = 0
    # A key of the engine's maps and sets, hashed at every transition and in
    # every pass: an IPv4Address hashes through hex() each time.
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_hash", hash((self.family, self.protocol, self.address, self.port, self.fwmark))
        )

    def __hash__(self) -> int:
        return self._hash

    @classmethod
    def inet(cls, protocol: Protocol, address: IPAddress | str, port: int) -> ServiceKey:
        addr = ip_address(address) if isinstance(address, str) else address
        return cls(family_of(addr), protocol, addr, port, 0)

    @classmethod
    def mark(cls, fwmark: int, family: int = AF_INET) -> ServiceKey:
        return cls(family, None, None, 0, fwmark)

    @property
    def is_fwmark(self) -> bool:
        return self.fwmark != 0


def endpoint(address: IPAddress | None, port: int) -> str:
    """'10.0.0.1:80', '[2001:db8::1]:80': how logs and messages name an endpoint."""
    if isinstance(address, IPv4Address):
        # (inet_ntoa: half the cost of str(), for a log line of each real server)
        return f"{socket.inet_ntoa(address.packed)}:{port}"
    host = f"[{address}]" if isinstance(address, IPv6Address) else str(address)
    return f"{host}:{port}"


def service_label(key: ServiceKey) -> str:
    """ipvsadm-like name of a service: 'TCP 10.0.0.1:80', 'FWM 7 IPv6'."""
    if key.is_fwmark:
        return f"FWM {key.fwmark}" + ("" if key.family == AF_INET else " IPv6")
    name = key.protocol.name if key.protocol is not None else "?"
    return f"{name} {endpoint(key.address, key.port)}"


@dataclass(frozen=True)
class Service:
    """A virtual service's settings as the kernel holds them (IPVS_SVC_ATTR_*, what
    ipvsadm -A and -E set). `netmask` groups clients for persistence: an IPv4
    mask, or an IPv6 prefix length; `pe_name` a persistence engine, "" for none."""

    key: ServiceKey
    scheduler: str = DEFAULT_SCHEDULER
    flags: ServiceFlags = ServiceFlags.NONE
    timeout: int = 0  # persistence timeout, seconds; 0 when not persistent
    netmask: int = -1  # -1: full_netmask(key.family)
    pe_name: str = ""

    def __post_init__(self) -> None:
        if self.netmask == -1:
            object.__setattr__(self, "netmask", full_netmask(self.key.family))

    @property
    def persistent(self) -> bool:
        return bool(self.flags & ServiceFlags.PERSISTENT)


@dataclass(frozen=True)
class Destination:
    """A real server of a virtual service as the kernel holds it (IPVS_DEST_ATTR_*,
    what ipvsadm -a and -e set); `key` identifies it within its service. The
    tun_* settings matter only with Forward.TUNNEL."""

    address: IPAddress
    port: int
    forward: Forward = Forward.ROUTE
    weight: int = 1
    u_threshold: int = 0
    l_threshold: int = 0
    tun_type: TunnelType = TunnelType.IPIP
    tun_port: int = 0
    tun_flags: TunnelFlags = TunnelFlags.NOCSUM

    @property
    def family(self) -> int:
        return family_of(self.address)

    @property
    def key(self) -> tuple[IPAddress, int]:
        return (self.address, self.port)


@dataclass(frozen=True)
class Stats:
    """Counters (64-bit) and rates, as IPVS_STATS_ATTR_* report them."""

    conns: int = 0
    inpkts: int = 0
    outpkts: int = 0
    inbytes: int = 0
    outbytes: int = 0
    cps: int = 0
    inpps: int = 0
    outpps: int = 0
    inbps: int = 0
    outbps: int = 0


NO_STATS = Stats()


@dataclass(frozen=True)
class DestinationEntry:
    """A destination as dumped from the kernel: its config, connection
    counts and stats."""

    destination: Destination
    active_conns: int = 0
    inact_conns: int = 0
    persist_conns: int = 0
    stats: Stats = NO_STATS


@dataclass(frozen=True)
class ServiceEntry:
    """A service as dumped from the kernel, with its destinations in kernel order."""

    service: Service
    destinations: tuple[DestinationEntry, ...] = ()
    stats: Stats = NO_STATS

    def destination(self, key: tuple[IPAddress, int]) -> DestinationEntry | None:
        """The destination at `key` (Destination.key: address, port), or None."""
        for entry in self.destinations:
            if entry.destination.key == key:
                return entry
        return None


@dataclass(frozen=True)
class Timeouts:
    """Connection timeouts in seconds; on write, 0 keeps the current value."""

    tcp: int = 0
    tcp_fin: int = 0
    udp: int = 0


@dataclass(frozen=True)
class SyncDaemon:
    """Configuration of one connection sync daemon (master or backup)."""

    state: SyncState
    mcast_ifn: str
    syncid: int = 0
    sync_maxlen: int = 0  # 0: kernel default
    mcast_group: IPAddress | None = None
    mcast_port: int = 0
    mcast_ttl: int = 0


@dataclass(frozen=True)
class Info:
    """What IPVS_CMD_GET_INFO reports: the IPVS version and the size of the
    kernel's connection hash table, as ipvsadm's listing heads them ("IP
    Virtual Server version 1.2.1 (size=4096)")."""

    version: int  # (major << 16) | (minor << 8) | patch
    conn_tab_size: int

    @property
    def version_string(self) -> str:
        v = self.version
        return f"{v >> 16}.{(v >> 8) & 0xFF}.{v & 0xFF}"


@dataclass(frozen=True)
class Connection:
    """One line of the connection table (/proc/net/ip_vs_conn)."""

    protocol: str  # "TCP", "UDP", "SCTP", ... as the kernel prints it
    client: IPAddress
    client_port: int
    virtual: IPAddress
    virtual_port: int
    destination: IPAddress
    destination_port: int
    state: str
    expires: int  # seconds
    pe_name: str = ""
    pe_data: str = ""
