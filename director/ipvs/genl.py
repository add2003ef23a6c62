"""IPVS generic-netlink messages as bytes: building requests and reading
replies, with no I/O.

Attribute numbers and layouts follow include/uapi/linux/ip_vs.h and the
kernel's parsers in net/netfilter/ipvs/ip_vs_ctl.c (ip_vs_genl_parse_*,
ip_vs_genl_fill_*). Requests are built in two parts: a body (generic-netlink
header and attributes) that depends only on the operation, and a netlink
header stamped on at send time with the family id and sequence number.

The encoder refuses (InvalidOperation) only what an attribute cannot carry
(a u16 port above 65535, a name longer than the kernel's buffer); whatever
fits is sent and the kernel decides (a timeout above INT_MAX/HZ, a weight
above INT_MAX, an IPv6 prefix of 0 or above 128: EINVAL or ERANGE, as with
ipvsadm). The decoders never fail on a value a newer kernel may send (an
unknown forwarding method, tunnel type, protocol, flag bit or attribute);
a reply they cannot read raises KernelReplyError, and nothing else.
"""

from __future__ import annotations

import functools
import json
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Address, IPv6Address
from typing import NamedTuple, ParamSpec, TypeVar

from director.ipvs import ops
from director.ipvs.errors import InvalidOperation as InvalidOperation
from director.ipvs.errors import KernelReplyError, UnrepresentableEntry
from director.ipvs.facts import IP_VS_PENAME_MAXLEN, IP_VS_SCHEDNAME_MAXLEN
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    SETTABLE_SERVICE_FLAGS,
    Destination,
    DestinationEntry,
    Forward,
    Info,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Stats,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelFlags,
    TunnelType,
    endpoint,
    service_label,
)

# netlink (linux/netlink.h)
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLMSG_MIN_TYPE = 0x10  # types below are netlink's own control messages
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10  # the dump changed while it was read
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF

# generic netlink controller (linux/genetlink.h)
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2

IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

# IPVS_CMD_*
CMD_NEW_SERVICE = 1
CMD_SET_SERVICE = 2
CMD_DEL_SERVICE = 3
CMD_GET_SERVICE = 4
CMD_NEW_DEST = 5
CMD_SET_DEST = 6
CMD_DEL_DEST = 7
CMD_GET_DEST = 8
CMD_NEW_DAEMON = 9
CMD_DEL_DAEMON = 10
CMD_GET_DAEMON = 11
CMD_SET_CONFIG = 12
CMD_GET_CONFIG = 13
CMD_GET_INFO = 15
CMD_ZERO = 16
CMD_FLUSH = 17

# IPVS_CMD_ATTR_*
CMD_ATTR_SERVICE = 1
CMD_ATTR_DEST = 2
CMD_ATTR_DAEMON = 3
CMD_ATTR_TIMEOUT_TCP = 4
CMD_ATTR_TIMEOUT_TCP_FIN = 5
CMD_ATTR_TIMEOUT_UDP = 6

# IPVS_SVC_ATTR_*
SVC_ATTR_AF = 1
SVC_ATTR_PROTOCOL = 2
SVC_ATTR_ADDR = 3
SVC_ATTR_PORT = 4
SVC_ATTR_FWMARK = 5
SVC_ATTR_SCHED_NAME = 6
SVC_ATTR_FLAGS = 7
SVC_ATTR_TIMEOUT = 8
SVC_ATTR_NETMASK = 9
SVC_ATTR_STATS = 10
SVC_ATTR_PE_NAME = 11
SVC_ATTR_STATS64 = 12

# IPVS_DEST_ATTR_*
DEST_ATTR_ADDR = 1
DEST_ATTR_PORT = 2
DEST_ATTR_FWD_METHOD = 3
DEST_ATTR_WEIGHT = 4
DEST_ATTR_U_THRESH = 5
DEST_ATTR_L_THRESH = 6
DEST_ATTR_ACTIVE_CONNS = 7
DEST_ATTR_INACT_CONNS = 8
DEST_ATTR_PERSIST_CONNS = 9
DEST_ATTR_STATS = 10
DEST_ATTR_ADDR_FAMILY = 11
DEST_ATTR_STATS64 = 12
DEST_ATTR_TUN_TYPE = 13
DEST_ATTR_TUN_PORT = 14
DEST_ATTR_TUN_FLAGS = 15

# IPVS_DAEMON_ATTR_*
DAEMON_ATTR_STATE = 1
DAEMON_ATTR_MCAST_IFN = 2
DAEMON_ATTR_SYNC_ID = 3
DAEMON_ATTR_SYNC_MAXLEN = 4
DAEMON_ATTR_MCAST_GROUP = 5
DAEMON_ATTR_MCAST_GROUP6 = 6
DAEMON_ATTR_MCAST_PORT = 7
DAEMON_ATTR_MCAST_TTL = 8

# IPVS_INFO_ATTR_*
INFO_ATTR_VERSION = 1
INFO_ATTR_CONN_TAB_SIZE = 2

# IPVS_STATS_ATTR_* in Stats field order
_STATS_FIELDS = (
    "conns",
    "inpkts",
    "outpkts",
    "inbytes",
    "outbytes",
    "cps",
    "inpps",
    "outpps",
    "inbps",
    "outbps",
)

# Kernel limits (IP_VS_SCHEDNAME_MAXLEN, IP_VS_PENAME_MAXLEN, IP_VS_IFNAME_MAXLEN),
# each including the terminating NUL.
SCHEDNAME_MAXLEN = IP_VS_SCHEDNAME_MAXLEN
PENAME_MAXLEN = IP_VS_PENAME_MAXLEN
IFNAME_MAXLEN = 16

U8_MAX = 0xFF
U16_MAX = 0xFFFF
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

NLMSG_HEADER = struct.Struct("=IHHII")
GENL_HEADER = struct.Struct("=BBH")
NLA_HEADER = struct.Struct("=HH")
HEADERS_LEN = NLMSG_HEADER.size + GENL_HEADER.size

_u8 = struct.Struct("=B").pack
_u16 = struct.Struct("=H").pack
_u32 = struct.Struct("=I").pack
_be16 = struct.Struct("!H").pack
_be32 = struct.Struct("!I").pack
_flags = struct.Struct("=II").pack


# --- building -----------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(payload)
    return NLA_HEADER.pack(length, kind) + payload + b"\0" * (-length & 3)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


def genl_body(cmd: int, *attrs: bytes) -> bytes:
    """A request's generic-netlink header and attributes."""
    return GENL_HEADER.pack(cmd, IPVS_GENL_VERSION, 0) + b"".join(attrs)


def frame(family: int, flags: int, seq: int, body: bytes) -> bytes:
    """Prefix a body with its netlink header."""
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), family, flags, seq, 0) + body


def getfamily_request(seq: int, name: str = IPVS_GENL_NAME) -> bytes:
    body = GENL_HEADER.pack(CTRL_CMD_GETFAMILY, 1, 0) + attr(
        CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"
    )
    return frame(GENL_ID_CTRL, NLM_F_REQUEST, seq, body)


def _check_range(where: Callable[[], str], what: str, value: int, low: int, high: int) -> None:
    """`where` builds the location only on failure: formatting it for every
    operation of a large batch would cost more than the encoding."""
    if not low <= value <= high:
        raise InvalidOperation(f"{where()}: {what} {value} is out of range {low}..{high}")


def _name(where: Callable[[], str], what: str, value: str, maxlen: int) -> bytes:
    try:
        raw = value.encode()
    except UnicodeEncodeError:  # a lone surrogate: no UTF-8 for it
        raw = b"\0"
    if b"\0" in raw or len(raw) >= maxlen:
        raise InvalidOperation(
            f"{where()}: {what} {json.dumps(value)} must be at most {maxlen - 1} bytes"
            " of UTF-8, no NUL"
        )
    return raw + b"\0"


def _address_bytes(address: IPAddress) -> bytes:
    """union nf_inet_addr: 16 bytes, IPv4 in the first four."""
    return address.packed.ljust(16, b"\0")


@lru_cache(maxsize=65536)
def service_key_attrs(key: ServiceKey) -> bytes:
    """The identifying attributes of a service (inside IPVS_CMD_ATTR_SERVICE)."""
    if key.family not in (AF_INET, AF_INET6):
        raise InvalidOperation(
            f"service {service_label(key)}: family {key.family} is neither AF_INET nor AF_INET6"
        )
    family = attr(SVC_ATTR_AF, _u16(key.family))
    if key.fwmark:
        _check_range(lambda: f"service {service_label(key)}", "fwmark", key.fwmark, 1, U32_MAX)
        return family + attr(SVC_ATTR_FWMARK, _u32(key.fwmark))
    if key.protocol is None or key.address is None:
        raise InvalidOperation(
            f"service {service_label(key)}: needs a protocol and an address, or a fwmark"
        )
    if key.address.version != (4 if key.family == AF_INET else 6):
        raise InvalidOperation(
            f"service {service_label(key)}: address {key.address} is not in family {key.family}"
        )
    _check_range(lambda: f"service {service_label(key)}", "port", key.port, 0, U16_MAX)
    return (
        family
        + attr(SVC_ATTR_PROTOCOL, _u16(int(key.protocol)))
        + attr(SVC_ATTR_ADDR, _address_bytes(key.address))
        + attr(SVC_ATTR_PORT, _be16(key.port))
    )


@lru_cache(maxsize=65536)
def service_key_nest(key: ServiceKey) -> bytes:
    return nested(CMD_ATTR_SERVICE, service_key_attrs(key))


def service_nest(service: Service) -> bytes:
    key = service.key

    def where() -> str:
        return f"service {service_label(key)}"

    _check_range(where, "persistence timeout", service.timeout, 0, U32_MAX)
    # The kernel checks an IPv6 prefix (1..128, EINVAL in ip_vs_add_service).
    _check_range(where, "netmask", service.netmask, 0, U32_MAX)
    netmask = _be32(service.netmask) if key.family == AF_INET else _u32(service.netmask)
    parts = [
        service_key_attrs(key),
        attr(SVC_ATTR_SCHED_NAME, _name(where, "scheduler", service.scheduler, SCHEDNAME_MAXLEN)),
    ]
    if service.pe_name:
        parts.append(
            attr(
                SVC_ATTR_PE_NAME,
                _name(where, "persistence engine", service.pe_name, PENAME_MAXLEN),
            )
        )
    parts += [
        attr(SVC_ATTR_FLAGS, _flags(int(service.flags) & int(SETTABLE_SERVICE_FLAGS), U32_MAX)),
        attr(SVC_ATTR_TIMEOUT, _u32(service.timeout)),
        attr(SVC_ATTR_NETMASK, netmask),
    ]
    return nested(CMD_ATTR_SERVICE, *parts)


def _dest_key_attrs(where: Callable[[], str], address: IPAddress, port: int) -> bytes:
    _check_range(where, "port", port, 0, U16_MAX)
    family = AF_INET if address.version == 4 else AF_INET6
    return (
        attr(DEST_ATTR_ADDR_FAMILY, _u16(family))
        + attr(DEST_ATTR_ADDR, _address_bytes(address))
        + attr(DEST_ATTR_PORT, _be16(port))
    )


# IPVS_CMD_ATTR_DEST with all its attributes in one go: it is the bulk of a
# large table, so it is packed by a single Struct (ports pre-swapped to network
# order).
_DEST_NEST = struct.Struct("=HH" + "HHH2x" + "HH16s" + "HHH2x" + "HHI" * 4 + "HHB3x" + "HHH2x" * 2)


def destination_nest(service: ServiceKey, dest: Destination) -> bytes:
    """IPVS_CMD_ATTR_DEST. A weight above INT_MAX goes out: the kernel reads
    it as a negative int and answers ERANGE (ip_vs_add_dest), as ipvsadm
    shows."""
    port, weight, tun_port = dest.port, dest.weight, dest.tun_port
    u_threshold, l_threshold = dest.u_threshold, dest.l_threshold
    forward, tun_type, tun_flags = dest.forward, dest.tun_type, dest.tun_flags
    if not (
        0 <= port <= U16_MAX
        and 0 <= weight <= U32_MAX
        and 0 <= u_threshold <= U32_MAX
        and 0 <= l_threshold <= U32_MAX
        and 0 <= tun_port <= U16_MAX
        and 0 <= forward <= U32_MAX
        and 0 <= tun_type <= U8_MAX
        and 0 <= tun_flags <= U16_MAX
    ):

        def where() -> str:
            return f"destination {endpoint(dest.address, port)} of service {service_label(service)}"

        _check_range(where, "port", port, 0, U16_MAX)
        _check_range(where, "weight", weight, 0, U32_MAX)
        _check_range(where, "upper threshold", u_threshold, 0, U32_MAX)
        _check_range(where, "lower threshold", l_threshold, 0, U32_MAX)
        _check_range(where, "tunnel port", tun_port, 0, U16_MAX)
        _check_range(where, "forwarding method", forward, 0, U32_MAX)
        _check_range(where, "tunnel type", tun_type, 0, U8_MAX)
        _check_range(where, "tunnel flags", tun_flags, 0, U16_MAX)
    address = dest.address
    return _DEST_NEST.pack(
        _DEST_NEST.size,
        CMD_ATTR_DEST,
        6,
        DEST_ATTR_ADDR_FAMILY,
        AF_INET if address.version == 4 else AF_INET6,
        20,
        DEST_ATTR_ADDR,
        address.packed,
        6,
        DEST_ATTR_PORT,
        socket.htons(port),
        8,
        DEST_ATTR_FWD_METHOD,
        forward,
        8,
        DEST_ATTR_WEIGHT,
        weight,
        8,
        DEST_ATTR_U_THRESH,
        u_threshold,
        8,
        DEST_ATTR_L_THRESH,
        l_threshold,
        5,
        DEST_ATTR_TUN_TYPE,
        tun_type,
        6,
        DEST_ATTR_TUN_PORT,
        socket.htons(tun_port),
        6,
        DEST_ATTR_TUN_FLAGS,
        tun_flags,
    )


# IPVS_CMD_ATTR_DEST as the kernel writes it in a GET_DEST reply
# (ip_vs_genl_fill_dest, net/netfilter/ipvs/ip_vs_ctl.c): these attributes
# (kind, payload format, padding) in this order, each of a fixed size, then
# the STATS and STATS64 nests (ip_vs_genl_fill_stats and _stats64), of fixed
# sizes too where a u64 needs no padding attribute before it (x86-64 and
# most others). Linux 5.3 on; 4.1 to 5.1 write the same without the tunnel
# attributes (TUN_TYPE and TUN_PORT came in 5.2, TUN_FLAGS in 5.3).
_FILL_DEST = (
    (DEST_ATTR_ADDR, "16s", 0),
    (DEST_ATTR_PORT, "H", 2),  # network order
    (DEST_ATTR_FWD_METHOD, "I", 0),
    (DEST_ATTR_WEIGHT, "I", 0),
    (DEST_ATTR_TUN_TYPE, "B", 3),
    (DEST_ATTR_TUN_PORT, "H", 2),  # network order
    (DEST_ATTR_TUN_FLAGS, "H", 2),
    (DEST_ATTR_U_THRESH, "I", 0),
    (DEST_ATTR_L_THRESH, "I", 0),
    (DEST_ATTR_ACTIVE_CONNS, "I", 0),
    (DEST_ATTR_INACT_CONNS, "I", 0),
    (DEST_ATTR_PERSIST_CONNS, "I", 0),
    (DEST_ATTR_ADDR_FAMILY, "H", 2),
)
_TUNNEL_ATTRS = (DEST_ATTR_TUN_TYPE, DEST_ATTR_TUN_PORT, DEST_ATTR_TUN_FLAGS)
_FILL_DEST_BEFORE_TUNNELS = tuple(f for f in _FILL_DEST if f[0] not in _TUNNEL_ATTRS)
_FILL_DEST_KINDS = frozenset(kind for kind, _, _ in _FILL_DEST)
# ip_vs_genl_fill_stats: the packet and connection counters and the rates as
# u32, the byte counters as u64 (all ten as u64 in the STATS64 nest).
_STATS32_FORMATS = "III" + "QQ" + "IIIII"
_FILL_DEST_STATS = (
    (DEST_ATTR_STATS, f"{sum(NLA_HEADER.size + struct.calcsize(f) for f in _STATS32_FORMATS)}s", 0),
    (DEST_ATTR_STATS64, f"{len(_STATS_FIELDS) * (NLA_HEADER.size + 8)}s", 0),
)


@dataclass(frozen=True)
class _Layout:
    """A run of fixed-size attributes read by one Struct, three values an
    attribute (its length, its kind and its payload)."""

    struct: struct.Struct
    lengths: tuple[int, ...]
    kinds: tuple[int, ...]
    tunnels: bool  # has the tunnel attributes
    whole: bool  # the stats nests too: nothing may follow

    @classmethod
    def of(cls, fields: tuple[tuple[int, str, int], ...]) -> _Layout:
        kinds = tuple(kind for kind, _, _ in fields)
        return cls(
            struct.Struct("=" + "".join("HH" + value + "x" * pad for _, value, pad in fields)),
            tuple(NLA_HEADER.size + struct.calcsize("=" + value) for _, value, _ in fields),
            kinds,
            tunnels=DEST_ATTR_TUN_TYPE in kinds,
            whole=DEST_ATTR_STATS64 in kinds,
        )


# Tried in this order.
_DEST_LAYOUTS = (
    _Layout.of(_FILL_DEST + _FILL_DEST_STATS),
    _Layout.of(_FILL_DEST),
    _Layout.of(_FILL_DEST_BEFORE_TUNNELS),
)
_FIRST_ATTR = (_DEST_LAYOUTS[0].lengths[0], _DEST_LAYOUTS[0].kinds[0])  # the address's


def destination_reply_nest(entry: DestinationEntry, *, tunnels: bool = True) -> bytes:
    """IPVS_CMD_ATTR_DEST of a GET_DEST reply, byte for byte as the kernel
    writes it on x86-64 (ip_vs_genl_fill_dest; `tunnels=False`: as 4.1 to
    5.1 do): what tests and benchmarks feed the reader. Values are written
    as they are (a reply is not a request: no range checks)."""
    d = entry.destination
    by_kind = {
        DEST_ATTR_ADDR: _address_bytes(d.address),
        DEST_ATTR_PORT: _be16(d.port),
        DEST_ATTR_FWD_METHOD: _u32(d.forward),
        DEST_ATTR_WEIGHT: _u32(d.weight),
        DEST_ATTR_TUN_TYPE: _u8(d.tun_type),
        DEST_ATTR_TUN_PORT: _be16(d.tun_port),
        DEST_ATTR_TUN_FLAGS: _u16(d.tun_flags),
        DEST_ATTR_U_THRESH: _u32(d.u_threshold),
        DEST_ATTR_L_THRESH: _u32(d.l_threshold),
        DEST_ATTR_ACTIVE_CONNS: _u32(entry.active_conns),
        DEST_ATTR_INACT_CONNS: _u32(entry.inact_conns),
        DEST_ATTR_PERSIST_CONNS: _u32(entry.persist_conns),
        DEST_ATTR_ADDR_FAMILY: _u16(d.family),
    }
    fields = _FILL_DEST if tunnels else _FILL_DEST_BEFORE_TUNNELS
    counters = [getattr(entry.stats, name) for name in _STATS_FIELDS]
    stats32 = (
        attr(i + 1, struct.pack("=" + f, value & (U32_MAX if f == "I" else U64_MAX)))
        for i, (f, value) in enumerate(zip(_STATS32_FORMATS, counters, strict=True))
    )
    stats64 = (attr(i + 1, struct.pack("=Q", value)) for i, value in enumerate(counters))
    return nested(
        CMD_ATTR_DEST,
        *(attr(kind, by_kind[kind]) for kind, _, _ in fields),
        nested(DEST_ATTR_STATS, *stats32),
        nested(DEST_ATTR_STATS64, *stats64),
    )


def daemon_nest(daemon: SyncDaemon) -> bytes:
    """IPVS_CMD_ATTR_DAEMON. The syncid is refused above 255 (the kernel
    would truncate it to its u8, ip_vs_genl_new_daemon); a group that is not
    multicast goes out and the kernel answers EINVAL."""

    def where() -> str:
        return f"sync daemon {(daemon.state.name or str(int(daemon.state))).lower()}"

    if daemon.state not in (SyncState.MASTER, SyncState.BACKUP):
        raise InvalidOperation(f"{where()}: state must be MASTER or BACKUP")
    _check_range(where, "syncid", daemon.syncid, 0, 255)
    _check_range(where, "sync maxlen", daemon.sync_maxlen, 0, U16_MAX)
    _check_range(where, "mcast port", daemon.mcast_port, 0, U16_MAX)
    _check_range(where, "mcast ttl", daemon.mcast_ttl, 0, 255)
    parts = [
        attr(DAEMON_ATTR_STATE, _u32(int(daemon.state))),
        attr(DAEMON_ATTR_MCAST_IFN, _name(where, "interface", daemon.mcast_ifn, IFNAME_MAXLEN)),
        attr(DAEMON_ATTR_SYNC_ID, _u32(daemon.syncid)),
    ]
    if daemon.sync_maxlen:
        parts.append(attr(DAEMON_ATTR_SYNC_MAXLEN, _u16(daemon.sync_maxlen)))
    if daemon.mcast_port:
        parts.append(attr(DAEMON_ATTR_MCAST_PORT, _u16(daemon.mcast_port)))
    if daemon.mcast_ttl:
        parts.append(attr(DAEMON_ATTR_MCAST_TTL, _u8(daemon.mcast_ttl)))
    group = daemon.mcast_group
    if group is not None:
        kind = DAEMON_ATTR_MCAST_GROUP if group.version == 4 else DAEMON_ATTR_MCAST_GROUP6
        parts.append(attr(kind, group.packed))
    return nested(CMD_ATTR_DAEMON, *parts)


def timeouts_attrs(timeouts: Timeouts) -> list[bytes]:
    """Only the non-zero timeouts: zero keeps the kernel's current value.
    Any u32 goes out: the kernel refuses one above INT_MAX/HZ with EINVAL
    (ip_vs_set_timeout), a limit that depends on its HZ
    (director.ipvs.model.TIMEOUT_MAX is the one every kernel takes)."""
    out = []
    for kind, what, value in (
        (CMD_ATTR_TIMEOUT_TCP, "tcp", timeouts.tcp),
        (CMD_ATTR_TIMEOUT_TCP_FIN, "tcp_fin", timeouts.tcp_fin),
        (CMD_ATTR_TIMEOUT_UDP, "udp", timeouts.udp),
    ):
        _check_range(lambda: "timeouts", what, value, 0, U32_MAX)
        if value:
            out.append(attr(kind, _u32(value)))
    return out


_NEW_DEST = GENL_HEADER.pack(CMD_NEW_DEST, IPVS_GENL_VERSION, 0)


def operation_body(op: ops.Operation) -> bytes:
    """The generic-netlink body of the request carrying `op`."""
    match op:
        case ops.AddDestination(service=key, destination=dest):
            return _NEW_DEST + service_key_nest(key) + destination_nest(key, dest)
        case ops.EditDestination(service=key, destination=dest):
            return genl_body(CMD_SET_DEST, service_key_nest(key), destination_nest(key, dest))
        case ops.DeleteDestination(service=key, address=address, port=port):
            return genl_body(
                CMD_DEL_DEST,
                service_key_nest(key),
                nested(
                    CMD_ATTR_DEST,
                    _dest_key_attrs(
                        lambda: (
                            f"destination {endpoint(address, port)} of service {service_label(key)}"
                        ),
                        address,
                        port,
                    ),
                ),
            )
        case ops.AddService(service=service):
            return genl_body(CMD_NEW_SERVICE, service_nest(service))
        case ops.EditService(service=service):
            return genl_body(CMD_SET_SERVICE, service_nest(service))
        case ops.DeleteService(key=key):
            return genl_body(CMD_DEL_SERVICE, service_key_nest(key))
        case ops.Flush():
            return genl_body(CMD_FLUSH)
        case ops.Zero(service=None):
            return genl_body(CMD_ZERO)
        case ops.Zero(service=ServiceKey() as key):
            return genl_body(CMD_ZERO, service_key_nest(key))
        case ops.SetTimeouts(timeouts=timeouts):
            return genl_body(CMD_SET_CONFIG, *timeouts_attrs(timeouts))
        case ops.StartDaemon(daemon=daemon):
            return genl_body(CMD_NEW_DAEMON, daemon_nest(daemon))
        case ops.StopDaemon(state=state):
            if state not in (SyncState.MASTER, SyncState.BACKUP):
                raise InvalidOperation(
                    f"stop sync daemon: state must be MASTER or BACKUP, not {getattr(state, 'name', state)}"
                )
            return genl_body(
                CMD_DEL_DAEMON, nested(CMD_ATTR_DAEMON, attr(DAEMON_ATTR_STATE, _u32(state)))
            )
    raise InvalidOperation(f"not an IPVS operation: {op!r}")


def get_dests_body(key: ServiceKey) -> bytes:
    return genl_body(CMD_GET_DEST, service_key_nest(key))


# --- reading ------------------------------------------------------------------

P = ParamSpec("P")
R = TypeVar("R")


def _decoder(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn whatever a decoder trips on in a bad reply (a missing attribute,
    short bytes, an address of the wrong size, a malformed attribute) into
    KernelReplyError naming `what` was being read."""

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def decode(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return function(*args, **kwargs)
            except UnrepresentableEntry:
                raise  # a good reply of an entry the model cannot hold
            except KernelReplyError as exc:
                raise KernelReplyError(f"{what}: {exc}") from exc
            except KeyError as exc:
                raise KernelReplyError(f"{what}: attribute {exc} missing") from exc
            except (ValueError, IndexError, struct.error) as exc:
                raise KernelReplyError(f"{what}: {exc}") from exc

        return decode

    return wrap


class Message(NamedTuple):
    """One netlink message of a reply: its header fields and payload (after
    the netlink header). A named tuple: a dump makes one per entry, and a
    frozen dataclass costs twice as much to make."""

    type: int
    flags: int
    seq: int
    payload: bytes


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages packed in one datagram; KernelReplyError where a
    length runs past the datagram."""
    offset, end = 0, len(data)
    while offset + NLMSG_HEADER.size <= end:
        length, kind, flags, seq, _pid = NLMSG_HEADER.unpack_from(data, offset)
        if length < NLMSG_HEADER.size or offset + length > end:
            raise KernelReplyError(
                f"truncated netlink message at offset {offset} (length {length})"
            )
        yield Message(kind, flags, seq, data[offset + NLMSG_HEADER.size : offset + length])
        offset += (length + 3) & ~3


@_decoder("netlink error message")
def error_code(message: Message) -> int:
    """The positive errno of an NLMSG_ERROR (0 for an acknowledgement)."""
    return -int(struct.unpack_from("=i", message.payload)[0])


@_decoder("netlink error message")
def acked_seq(message: Message) -> int:
    """The sequence number of the request an NLMSG_ERROR answers."""
    return int(struct.unpack_from("=I", message.payload, 4 + 8)[0])


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """Attributes from `offset` to the end of `data`, by type (of every type:
    those this code does not know are kept and ignored by the parsers)."""
    out: dict[int, bytes] = {}
    end = len(data)
    header, mask = NLA_HEADER.unpack_from, NLA_TYPE_MASK
    while offset + 4 <= end:
        length, kind = header(data, offset)
        if length < 4 or offset + length > end:
            raise KernelReplyError(
                f"malformed netlink attribute at offset {offset} (length {length})"
            )
        out[kind & mask] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


# What moves with traffic, left out of `settled_bytes`.
_MOVING = {
    CMD_ATTR_SERVICE: frozenset({SVC_ATTR_STATS, SVC_ATTR_STATS64}),
    CMD_ATTR_DEST: frozenset(
        {
            DEST_ATTR_ACTIVE_CONNS,
            DEST_ATTR_INACT_CONNS,
            DEST_ATTR_PERSIST_CONNS,
            DEST_ATTR_STATS,
            DEST_ATTR_STATS64,
        }
    ),
}


def settled_bytes(message: Message) -> bytes:
    """A GET_SERVICE or GET_DEST reply's service or destination attributes
    as the kernel wrote them (ip_vs_genl_fill_service, _fill_dest in
    net/netfilter/ipvs/ip_vs_ctl.c), without those that move with traffic
    (the stats nests, the connection counts): two reads of an entry nobody
    changed give equal bytes, and any setting that differs (a threshold, a
    tunnel type, a persistence engine) gives other bytes. Walked, not
    decoded. KernelReplyError for a malformed attribute."""
    data = message.payload
    end = len(data)
    header, mask = NLA_HEADER.unpack_from, NLA_TYPE_MASK
    parts: list[bytes] = []
    offset = GENL_HEADER.size
    while offset + 4 <= end:
        length, kind = header(data, offset)
        if length < 4 or offset + length > end:
            raise KernelReplyError(f"malformed netlink attribute at offset {offset} (length {length})")  # fmt: skip
        moving = _MOVING.get(kind & mask)
        if moving is None:
            parts.append(data[offset : offset + length])
        else:
            inner, stop = offset + 4, offset + length
            run = inner  # the start of the attributes kept since the last moving one
            while inner + 4 <= stop:
                size, what = header(data, inner)
                if size < 4 or inner + size > stop:
                    raise KernelReplyError(f"malformed netlink attribute at offset {inner} (length {size})")  # fmt: skip
                following = inner + ((size + 3) & ~3)
                if what & mask in moving:
                    parts.append(data[run:inner])
                    run = following
                inner = following
            parts.append(data[run:stop])
        offset += (length + 3) & ~3
    return b"".join(parts)


def genl_attrs(message: Message) -> dict[int, bytes]:
    """The top-level attributes of a generic-netlink message."""
    return parse_attrs(message.payload, GENL_HEADER.size)


def _uint(raw: bytes) -> int:
    return int.from_bytes(raw, "little") if raw else 0


def _be(raw: bytes) -> int:
    return int.from_bytes(raw, "big")


def _string(raw: bytes) -> str:
    # Kernel names are ASCII; anything else still lists, escaped.
    return raw.split(b"\0", 1)[0].decode(errors="backslashreplace")


def _address(family: int, raw: bytes) -> IPAddress:
    if family == AF_INET:
        return IPv4Address(raw[:4])
    if family == AF_INET6:
        return IPv6Address(raw[:16])
    # ipvsadm cannot print one either (addrport_to_anyname fails); such an
    # entry is left out of a listing (UnrepresentableEntry).
    raise UnrepresentableEntry(f"address family {family} is neither AF_INET nor AF_INET6")


@_decoder("family lookup reply")
def family_id(message: Message) -> int:
    return _uint(genl_attrs(message)[CTRL_ATTR_FAMILY_ID])


# A stats nest as ip_vs_genl_fill_stats64 writes it where no padding is
# needed (nla_put_u64_64bit on x86-64 and others): every counter, in order,
# as a 12-byte u64 attribute. One unpack instead of a walk; any other layout
# takes the walk.
_STATS64_PLAIN = struct.Struct("=" + "HHQ" * len(_STATS_FIELDS))
_STATS64_LENGTHS = (12,) * len(_STATS_FIELDS)
_STATS64_KINDS = tuple(range(1, len(_STATS_FIELDS) + 1))


@_decoder("stats")
def parse_stats(raw: bytes) -> Stats:
    if len(raw) == _STATS64_PLAIN.size:
        values = _STATS64_PLAIN.unpack(raw)
        if values[0::3] == _STATS64_LENGTHS and values[1::3] == _STATS64_KINDS:
            return Stats(*values[2::3])
    attrs = parse_attrs(raw)
    return Stats(*(_uint(attrs.get(i + 1, b"")) for i in range(len(_STATS_FIELDS))))


def _stats_of(attrs: dict[int, bytes], stats64: int, stats32: int) -> Stats:
    raw = attrs.get(stats64)
    if raw is None:
        raw = attrs.get(stats32)
    return parse_stats(raw) if raw is not None else Stats()


@_decoder("service reply")
def parse_service(message: Message, stats: bool = True) -> ServiceEntry:
    """A service from a GET_SERVICE reply (without its destinations; without
    its stats unless `stats`). An unknown protocol decodes to a Protocol
    pseudo-member (ipvsadm prints it as "?"); flag bits other than the
    settable ones are dropped (the kernel's HASHED, and any a newer kernel
    adds: ipvsadm prints none of them). UnrepresentableEntry for an address
    in an unknown family; KernelReplyError for a reply it cannot read."""
    svc = parse_attrs(genl_attrs(message)[CMD_ATTR_SERVICE])
    family = _uint(svc[SVC_ATTR_AF])
    fwmark = _uint(svc.get(SVC_ATTR_FWMARK, b""))
    if fwmark:
        key = ServiceKey(family, None, None, 0, fwmark)
    else:
        key = ServiceKey(
            family,
            Protocol(_uint(svc[SVC_ATTR_PROTOCOL])),
            _address(family, svc[SVC_ATTR_ADDR]),
            _be(svc[SVC_ATTR_PORT]),
        )
    flags, mask = struct.unpack_from("=II", svc[SVC_ATTR_FLAGS])
    raw_netmask = svc[SVC_ATTR_NETMASK]
    service = Service(
        key=key,
        scheduler=_string(svc[SVC_ATTR_SCHED_NAME]),
        flags=ServiceFlags(flags & mask & int(SETTABLE_SERVICE_FLAGS)),
        timeout=_uint(svc[SVC_ATTR_TIMEOUT]),
        netmask=_be(raw_netmask) if family == AF_INET else _uint(raw_netmask),
        pe_name=_string(svc.get(SVC_ATTR_PE_NAME, b"")),
    )
    if not stats:
        return ServiceEntry(service)
    return ServiceEntry(service, (), _stats_of(svc, SVC_ATTR_STATS64, SVC_ATTR_STATS))


E = TypeVar("E", Forward, TunnelType, TunnelFlags)

# Enum members by value, filled as values turn up: an enum call costs more
# than decoding the attribute it comes from. An unknown value gets its
# pseudo-member, as from the enum itself.
_FORWARDS: dict[int, Forward] = {}
_TUNNEL_TYPES: dict[int, TunnelType] = {}
_TUNNEL_FLAGS: dict[int, TunnelFlags] = {}


def _member(kind: type[E], members: dict[int, E], value: int) -> E:
    member = members.get(value)
    if member is None:
        member = members[value] = kind(value)
    return member


@_decoder("destination reply")
def parse_destination(
    message: Message, service_family: int, counters: bool = True
) -> DestinationEntry:
    """A destination from a GET_DEST reply (without its connection counts
    and stats unless `counters`). An unknown forwarding method or tunnel
    type decodes to a pseudo-member, unknown tunnel flag bits are kept;
    UnrepresentableEntry for an address in an unknown family. A reply as
    the kernel writes it is read in one unpack, any other by the walk, with
    the same result."""
    entry = _filled_destination(message.payload, service_family, counters)
    if entry is None:
        entry = _walked_destination(message, service_family, counters)
    return entry


def _filled_destination(
    payload: bytes, service_family: int, counters: bool
) -> DestinationEntry | None:
    """The destination of a reply whose one attribute is IPVS_CMD_ATTR_DEST as
    ip_vs_genl_fill_dest writes it (a layout of _DEST_LAYOUTS, then only
    well-formed attributes of other kinds), read in one unpack; None for
    anything else, left to the walk (whose errors name what it read)."""
    start = GENL_HEADER.size + NLA_HEADER.size
    end = len(payload)
    if end < start:
        return None
    length, kind = NLA_HEADER.unpack_from(payload, GENL_HEADER.size)
    if kind & NLA_TYPE_MASK != CMD_ATTR_DEST or GENL_HEADER.size + length != end:
        return None
    if end - start < NLA_HEADER.size or NLA_HEADER.unpack_from(payload, start) != _FIRST_ATTR:
        return None  # every layout starts with the address: no unpack of any of them
    for layout in _DEST_LAYOUTS:
        size = layout.struct.size
        if size == end - start or (size < end - start and not layout.whole):
            values = layout.struct.unpack_from(payload, start)
            if values[0::3] == layout.lengths and values[1::3] == layout.kinds:
                break
    else:
        return None
    fields = values[2::3]
    if not layout.tunnels:
        fields = (*fields[:4], 0, 0, 0, *fields[4:])
    (raw, port, forward, weight, tun_type, tun_port, tun_flags, u_threshold, l_threshold,
     active, inactive, persistent, family) = fields[:13]  # fmt: skip
    if layout.whole:
        rest = {DEST_ATTR_STATS: fields[13], DEST_ATTR_STATS64: fields[14]}
    elif (other := _other_attrs(payload, start + size)) is not None:
        rest = other
    else:
        return None
    destination = Destination(
        _address(family or service_family, raw),
        socket.ntohs(port),
        _member(Forward, _FORWARDS, forward & 0x7),
        weight,
        u_threshold,
        l_threshold,
        _member(TunnelType, _TUNNEL_TYPES, tun_type),
        socket.ntohs(tun_port),
        _member(TunnelFlags, _TUNNEL_FLAGS, tun_flags),
    )
    if not counters:
        return DestinationEntry(destination)
    stats = _stats_of(rest, DEST_ATTR_STATS64, DEST_ATTR_STATS)
    return DestinationEntry(destination, active, inactive, persistent, stats)


def _other_attrs(data: bytes, offset: int) -> dict[int, bytes] | None:
    """parse_attrs from `offset`, or None where an attribute is malformed or
    of a kind _FILL_DEST has (the walk would take its value, not the first)."""
    out: dict[int, bytes] = {}
    end = len(data)
    header, mask, fixed = NLA_HEADER.unpack_from, NLA_TYPE_MASK, _FILL_DEST_KINDS
    while offset + 4 <= end:
        length, kind = header(data, offset)
        kind &= mask
        if length < 4 or offset + length > end or kind in fixed:
            return None
        out[kind] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return out


def _walked_destination(message: Message, service_family: int, counters: bool) -> DestinationEntry:
    dest = parse_attrs(genl_attrs(message)[CMD_ATTR_DEST])
    family = _uint(dest.get(DEST_ATTR_ADDR_FAMILY, b"")) or service_family
    destination = Destination(
        address=_address(family, dest[DEST_ATTR_ADDR]),
        port=_be(dest[DEST_ATTR_PORT]),
        forward=_member(Forward, _FORWARDS, _uint(dest[DEST_ATTR_FWD_METHOD]) & 0x7),
        weight=_uint(dest[DEST_ATTR_WEIGHT]),
        u_threshold=_uint(dest[DEST_ATTR_U_THRESH]),
        l_threshold=_uint(dest[DEST_ATTR_L_THRESH]),
        tun_type=_member(TunnelType, _TUNNEL_TYPES, _uint(dest.get(DEST_ATTR_TUN_TYPE, b""))),
        tun_port=_be(dest.get(DEST_ATTR_TUN_PORT, b"\0\0")),
        tun_flags=_member(TunnelFlags, _TUNNEL_FLAGS, _uint(dest.get(DEST_ATTR_TUN_FLAGS, b""))),
    )
    if not counters:
        return DestinationEntry(destination)
    return DestinationEntry(
        destination,
        active_conns=_uint(dest.get(DEST_ATTR_ACTIVE_CONNS, b"")),
        inact_conns=_uint(dest.get(DEST_ATTR_INACT_CONNS, b"")),
        persist_conns=_uint(dest.get(DEST_ATTR_PERSIST_CONNS, b"")),
        stats=_stats_of(dest, DEST_ATTR_STATS64, DEST_ATTR_STATS),
    )


@_decoder("sync daemon reply")
def parse_daemon(message: Message) -> SyncDaemon:
    daemon = parse_attrs(genl_attrs(message)[CMD_ATTR_DAEMON])
    group: IPAddress | None = None
    if DAEMON_ATTR_MCAST_GROUP in daemon:
        group = IPv4Address(daemon[DAEMON_ATTR_MCAST_GROUP][:4])
    elif DAEMON_ATTR_MCAST_GROUP6 in daemon:
        group = IPv6Address(daemon[DAEMON_ATTR_MCAST_GROUP6][:16])
    return SyncDaemon(
        state=SyncState(_uint(daemon[DAEMON_ATTR_STATE])),
        mcast_ifn=_string(daemon[DAEMON_ATTR_MCAST_IFN]),
        syncid=_uint(daemon[DAEMON_ATTR_SYNC_ID]),
        sync_maxlen=_uint(daemon.get(DAEMON_ATTR_SYNC_MAXLEN, b"")),
        mcast_group=group,
        mcast_port=_uint(daemon.get(DAEMON_ATTR_MCAST_PORT, b"")),
        mcast_ttl=_uint(daemon.get(DAEMON_ATTR_MCAST_TTL, b"")),
    )


@_decoder("timeouts reply")
def parse_timeouts(message: Message) -> Timeouts:
    attrs = genl_attrs(message)
    return Timeouts(
        tcp=_uint(attrs.get(CMD_ATTR_TIMEOUT_TCP, b"")),
        tcp_fin=_uint(attrs.get(CMD_ATTR_TIMEOUT_TCP_FIN, b"")),
        udp=_uint(attrs.get(CMD_ATTR_TIMEOUT_UDP, b"")),
    )


@_decoder("info reply")
def parse_info(message: Message) -> Info:
    attrs = genl_attrs(message)
    return Info(_uint(attrs[INFO_ATTR_VERSION]), _uint(attrs[INFO_ATTR_CONN_TAB_SIZE]))
