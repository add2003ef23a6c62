"""keepalived's IPVS side as values, read from the statement tree.

What is read here is what keepalived 2.2.7's checker reads
(keepalived/check/check_parser.c, check_api.c, check_http.c, check_tcp.c,
check_udp.c, check_dns.c, check_misc.c, core/global_parser.c), with
keepalived's own checks of each value: a value keepalived refuses and
ignores is a note and ignored here too. Settings with no meaning to director
(notify scripts, SMTP alerts, SNMP names, ...) are notes here, each with why;
everything else becomes a value for director.keepalived.convert. Nothing read
is dropped without a note.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from ipaddress import IPv4Address, IPv6Address, ip_address

from director.keepalived.lexer import Location, quoted_escaped_words
from director.keepalived.parse import Node

IPAddress = IPv4Address | IPv6Address
UINT_MAX = 2**32 - 1
WEIGHT_LIMIT = 65535  # IPVS_WEIGHT_LIMIT (keepalived/include/check_data.h)
LVS_MAX_TIMEOUT = 86400 * 31  # keepalived/include/libipvs.h
# keepalived's lvs_schedulers (check_parser.c)
SCHEDULERS = frozenset(
    ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq", "twos")
)
SCHEDULER_FLAGS = ("flag-1", "flag-2", "flag-3", "sh-port", "sh-fallback", "mh-port", "mh-fallback")
CHECKERS = (
    "TCP_CHECK",
    "HTTP_GET",
    "SSL_GET",
    "UDP_CHECK",
    "DNS_CHECK",
    "MISC_CHECK",
    "SMTP_CHECK",
    "PING_CHECK",
    "BFD_CHECK",
    "FILE_CHECK",
)
# Checkers that are not probes: keepalived changes the server's state when
# the thing they follow changes (a BFD session, check_bfd.c; a tracked file
# read through inotify, track_file.c), so no delay_loop, retry or timeout
# applies. Director has neither: each is reported whole, at its line, with
# the keyword that names what it follows.
EVENT_CHECKERS = {"BFD_CHECK": "name", "FILE_CHECK": "track_file"}


@dataclass(frozen=True)
class Note:
    """Something the importer could not carry over as it was: where it is
    in keepalived.conf and what became of it."""

    where: Location
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


class Notes:
    def __init__(self) -> None:
        self.items: list[Note] = []

    def add(self, where: Location, text: str) -> Note:
        note = Note(where, text)
        self.items.append(note)
        return note


@dataclass
class Forwarding:
    method: str  # NAT, DR or TUN
    tun_type: str | None = None  # ipip, gue, gre
    tun_port: int | None = None
    csum: str | None = None  # nocsum, csum, remcsum


@dataclass
class Url:
    where: Location
    path: str | None = None
    statuses: list[tuple[int, int]] = field(default_factory=list)
    digest: str | None = None
    virtualhost: str | None = None
    regex: str | None = None
    regex_where: Location | None = None


@dataclass
class Checker:
    where: Location
    kind: str
    connect_ip: IPAddress | None = None
    connect_port: int | None = None
    connect_timeout: float | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    alpha: bool | None = None
    # HTTP_GET, SSL_GET
    urls: list[Url] = field(default_factory=list)
    virtualhost: str | None = None
    # MISC_CHECK
    misc_path: tuple[str, ...] = ()
    misc_timeout: int | None = None
    misc_dynamic: bool = False
    user: str | None = None
    # DNS_CHECK
    dns_type: str | None = None
    dns_name: str | None = None
    # UDP_CHECK
    payload: bytes | None = None
    require_reply: bool = False
    reply: str | None = None  # hex digits, X for a nibble that may be anything
    min_reply_length: int = 0
    max_reply_length: int = 255
    # BFD_CHECK, FILE_CHECK: the BFD instance or track_file it follows
    follows: str | None = None


@dataclass
class RealServer:
    where: Location
    address: IPAddress
    port: int  # 0: not given
    weight: int | None = None
    forwarding: Forwarding | None = None
    uthreshold: int = 0
    lthreshold: int = 0
    inhibit: bool | None = None
    alpha: bool | None = None
    retry: int | None = None
    delay_before_retry: float | None = None
    delay_loop: float | None = None
    connect_timeout: float | None = None
    virtualhost: str | None = None
    checkers: list[Checker] = field(default_factory=list)


@dataclass
class SorryServer:
    where: Location
    address: IPAddress
    port: int
    forwarding: Forwarding | None = None
    inhibit: bool = False


@dataclass
class GroupEntry:
    where: Location
    addresses: tuple[IPAddress, ...] = ()
    port: int = 0
    fwmark: int | None = None
    family: str | None = None  # inet or inet6, for a fwmark


@dataclass
class VirtualServer:
    where: Location
    address: IPAddress | None = None
    port: int = 0
    fwmark: int | None = None
    group: str | None = None
    scheduler: str | None = None
    flags: list[str] = field(default_factory=list)
    one_packet: bool = False
    forwarding: Forwarding | None = None
    persistence_timeout: int | None = None
    granularity: str | None = None
    pe: str | None = None
    protocol: str | None = None  # TCP, UDP, SCTP
    ip_family: str | None = None
    delay_loop: float = 60.0  # KEEPALIVED_DEFAULT_DELAY
    connect_timeout: float = 5.0
    retry: int | None = None
    delay_before_retry: float | None = None
    inhibit: bool = False
    alpha: bool = False
    omega: bool = False
    quorum: int = 1
    quorum_where: Location | None = None
    hysteresis: int = 0
    hysteresis_where: Location | None = None
    weight: int = 1
    virtualhost: str | None = None
    sorry: SorryServer | None = None
    real_servers: list[RealServer] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # made reading it, written with it


@dataclass
class Ssl:
    where: Location
    ca: str | None = None
    certificate: str | None = None
    key: str | None = None
    password: str | None = None


@dataclass
class Timeouts:
    where: Location
    tcp: int = 0
    tcpfin: int = 0
    udp: int = 0


@dataclass
class SyncDaemon:
    where: Location
    interface: str
    vrrp_instance: str
    syncid: int | None = None
    maxlen: int | None = None
    port: int | None = None
    ttl: int | None = None
    group: IPAddress | None = None


@dataclass
class KeepalivedConfig:
    virtual_servers: list[VirtualServer] = field(default_factory=list)
    groups: dict[str, list[GroupEntry]] = field(default_factory=dict)
    ssl: Ssl | None = None
    timeouts: Timeouts | None = None
    sync: SyncDaemon | None = None


# -- values, read as keepalived reads them (lib/parser.c)


def _unsigned(text: str, low: int, high: int) -> int | None:
    """read_unsigned: a decimal integer within [low, high], else None."""
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if low <= value <= high else None


def _timer(text: str, minimum: float = 0.0) -> float | None:
    """read_timer: seconds, fractions allowed (micro-second resolution)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite() or value < Decimal(str(minimum)) or value > UINT_MAX:
        return None
    return float(round(value, 6))


def _bool(args: tuple[str, ...]) -> bool | None:
    """check_true_false (keepalived's parser.c: strcmp, so "YES" is no
    boolean); no argument is true."""
    if not args:
        return True
    word = args[0]
    if word in ("on", "true", "yes"):
        return True
    if word in ("off", "false", "no"):
        return False
    return None


def _address(text: str) -> IPAddress | None:
    try:
        return ip_address(text)
    except ValueError:
        return None


def _port(args: tuple[str, ...], index: int) -> int | None:
    """A port argument: 0 when absent (keepalived takes an all-zero port as
    none: alloc_vs, alloc_rs); None when not a port."""
    if len(args) <= index:
        return 0
    return _unsigned(args[index], 0, 65535)


# Keywords director has no use for, with why (checked after the convertible ones).
_NOT_FOR_DIRECTOR: dict[str, str] = {
    "notify_up": "director logs real_server_up instead of running a script",
    "notify_down": "director logs real_server_down instead of running a script",
    "quorum_up": "director runs no script on quorum changes (it logs every state change)",
    "quorum_down": "director runs no script on quorum changes (it logs every state change)",
    "smtp_alert": "director sends no mail (it logs every state change)",
    "snmp_name": "director has no SNMP agent",
    "ha_suspend": "director has no VRRP address to wait for: its checks always run",
    "omega": "director runs no notify script at shutdown",
    "warmup": "director always spreads its first probes at random over one interval",
    "log_all_failures": "director logs every failed probe's reason in its status",
    "bindto": "director's probes leave from the address the routing table picks",
    "bind_port": "director's probes use an ephemeral source port",
    "bind_if": "director's probes leave by the interface the routing table picks",
    "fwmark": "director does not mark its probes' packets",
    "hashed": "the kernel sets IP_VS_SVC_F_HASHED itself; nothing to convert",
    "fast_recovery": "director probes every interval whether the server is up or down",
    "http_protocol": "director's HTTP probes speak HTTP/1.1",
    "enable_sni": "director sends the server name (SNI) whenever the check has a host",
    "regex_options": "director's expect_body uses Python's regex syntax without PCRE2 options",
    "regex_stack": "director's expect_body has no PCRE2 JIT stack",
    "regex_min_offset": "director's expect_body searches the whole body (first 1 MiB)",
    "regex_max_offset": "director's expect_body searches the whole body (first 1 MiB)",
    "regex_no_match": "director's expect_body must match; it cannot require no match",
    "lvs_flush": "director never flushes the table at start: it adopts what is there",
    "lvs_flush_on_stop": "see [daemon] flush_on_stop (director removes only its own services)",
}


class Reader:
    """Reads the tree into a KeepalivedConfig, noting what it cannot use."""

    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self.config = KeepalivedConfig()

    def note(self, node: Node, text: str) -> None:
        self.notes.add(node.where, text)

    def ignored(self, node: Node, reason: str | None = None) -> None:
        why = reason or _NOT_FOR_DIRECTOR.get(node.keyword)
        text = f"{node.keyword}: not converted"
        self.note(node, f"{text} ({why})" if why else f"{text} (unknown keyword here)")

    def invalid(self, node: Node, what: str = "value") -> None:
        shown = " ".join(node.args) or "(none)"
        self.note(node, f"{node.keyword}: invalid {what} {shown!r}, ignored (as keepalived does)")

    def read(self, nodes: tuple[Node, ...]) -> KeepalivedConfig:
        for node in nodes:
            handler = _TOP.get(node.keyword)
            if handler is not None:
                handler(self, node)
            elif node.keyword == "track_file":
                self.note(
                    node,
                    "track_file: not converted (director does not track files; the "
                    "FILE_CHECKs that use it are noted where they are)",
                )
            elif node.keyword.startswith(("vrrp_", "static_", "track_", "garp_")) or (
                node.keyword in ("bfd_instance", "linkbeat_interfaces", "net_namespace")
            ):
                self.note(node, f"{node.keyword}: not converted (director has no VRRP or BFD)")
            else:
                self.ignored(node)
        return self.config

    # -- global_defs and SSL

    def global_defs(self, node: Node) -> None:
        other: list[str] = []
        for child in node.children():
            if child.keyword == "lvs_timeouts":
                self.lvs_timeouts(child)
            elif child.keyword == "lvs_sync_daemon":
                self.lvs_sync_daemon(child)
            elif child.keyword in _NOT_FOR_DIRECTOR:
                self.ignored(child)
            elif child.keyword == "net_namespace":
                self.note(
                    child,
                    f"net_namespace {' '.join(child.args)}: not converted; keepalived manages the "
                    "IPVS table of that namespace: run directord inside it "
                    "(`ip netns exec NAME directord ...`, or NetworkNamespacePath= in its unit)",
                )
            else:
                other.append(child.keyword)
        if other:
            self.note(
                node,
                f"global_defs: not converted (not IPVS settings): {', '.join(dict.fromkeys(other))}",
            )

    def lvs_timeouts(self, node: Node) -> None:
        timeouts = self.config.timeouts or Timeouts(node.where)
        args = node.args
        i = 0
        while i < len(args):
            name = args[i]
            value = _unsigned(args[i + 1], 0, LVS_MAX_TIMEOUT) if i + 1 < len(args) else None
            if name not in ("tcp", "tcpfin", "udp") or value is None:
                self.note(node, f"lvs_timeouts: invalid {name!r}, ignored (as keepalived does)")
                i += 1 if name not in ("tcp", "tcpfin", "udp") else 2
                continue
            setattr(timeouts, name, value)
            i += 2
        self.config.timeouts = timeouts

    def lvs_sync_daemon(self, node: Node) -> None:
        """`lvs_sync_daemon INTERFACE VRRP_INSTANCE [id N] [maxlen N] [port N]
        [ttl N] [group ADDRESS]` (keepalived.conf(5)); keepalived's default
        id is the VRRP instance's virtual_router_id, which is not converted."""
        args = node.args
        if len(args) < 2:
            self.invalid(node, "interface and VRRP instance")
            return
        sync = SyncDaemon(node.where, args[0], args[1])
        limits = {"id": 255, "maxlen": 65507, "port": 65535, "ttl": 255}
        i = 2
        while i < len(args):
            name = args[i]
            value = args[i + 1] if i + 1 < len(args) else None
            if name == "group" and value is not None:
                try:
                    sync.group = ip_address(value)
                except ValueError:
                    self.note(node, f"lvs_sync_daemon: invalid group {value!r}, ignored")
            elif name in limits and value is not None:
                number = _unsigned(value, 0 if name == "id" else 1, limits[name])
                if number is None:
                    self.note(node, f"lvs_sync_daemon: invalid {name} {value!r}, ignored")
                else:
                    setattr(sync, "syncid" if name == "id" else name, number)
            else:
                self.note(node, f"lvs_sync_daemon: unknown {name!r}, ignored")
                i += 1
                continue
            i += 2
        self.config.sync = sync

    def ssl(self, node: Node) -> None:
        ssl = Ssl(node.where)
        for child in node.children():
            if child.keyword in ("ca", "certificate", "key", "password") and child.args:
                setattr(ssl, child.keyword, child.args[0])
            else:
                self.ignored(child)
        self.config.ssl = ssl

    # -- virtual_server_group

    def group(self, node: Node) -> None:
        if not node.args:
            self.invalid(node, "name")
            return
        entries: list[GroupEntry] = []
        for child in node.children():
            entry = self.group_entry(child)
            if entry is not None:
                entries.append(entry)
        if not entries:
            self.note(node, f"virtual_server_group {node.args[0]}: no entries, ignored")
            return
        self.config.groups[node.args[0]] = entries

    def group_entry(self, node: Node) -> GroupEntry | None:
        words = node.words
        if words[0] == "fwmark":
            mark = _unsigned(words[1], 0, UINT_MAX) if len(words) > 1 else None
            family = words[2] if len(words) > 2 else None
            if mark is None or family not in (None, "inet", "inet6"):
                self.note(node, f"invalid group entry {node.text!r}, ignored (as keepalived does)")
                return None
            return GroupEntry(node.where, fwmark=mark, family=family)
        port = _port(words, 1)
        addresses = address_range(words[0])
        if port is None or addresses is None:
            self.note(node, f"invalid group entry {node.text!r}, ignored (as keepalived does)")
            return None
        return GroupEntry(node.where, addresses=addresses, port=port)

    # -- virtual_server

    def virtual_server(self, node: Node) -> None:
        args = node.args
        vs = VirtualServer(node.where)
        first_note = len(self.notes.items)
        if len(args) >= 2 and args[0] == "group":
            vs.group = args[1]
        elif len(args) >= 2 and args[0] == "fwmark":
            vs.fwmark = _unsigned(args[1], 0, UINT_MAX)
            if vs.fwmark is None:
                self.invalid(node, "fwmark")
                return
        else:
            address = _address(args[0]) if args else None
            port = _port(args, 1)
            if address is None or port is None:
                self.note(
                    node, "virtual_server: invalid address or port, skipped (as keepalived does)"
                )
                return
            vs.address, vs.port = address, port
        for child in node.children():
            handler = _VS.get(child.keyword)
            if handler is not None:
                handler(self, vs, child)
            elif child.keyword in SCHEDULER_FLAGS:
                vs.flags.append(child.keyword)
            else:
                self.ignored(child)
        vs.notes = self.notes.items[first_note:]
        self.config.virtual_servers.append(vs)

    def vs_scheduler(self, vs: VirtualServer, node: Node) -> None:
        if node.args and node.args[0] in SCHEDULERS:
            vs.scheduler = node.args[0]
        else:
            self.invalid(node, "scheduler")

    def vs_forwarding(self, vs: VirtualServer, node: Node) -> None:
        vs.forwarding = self.forwarding(node) or vs.forwarding

    def forwarding(self, node: Node) -> Forwarding | None:
        """lvs_method NAT|DR|TUN [type ipip|gue|gre] [port N] [nocsum|csum|remcsum]
        (check_parser.c svr_forwarding_handler)."""
        args = node.args
        if not args or args[0] not in ("NAT", "DR", "TUN"):
            self.invalid(node, "forwarding method")
            return None
        result = Forwarding(args[0])
        i = 1
        while i < len(args):
            word = args[i]
            if word in ("type", "port") and i + 1 < len(args):
                if word == "type" and args[i + 1] in ("ipip", "gue", "gre"):
                    result.tun_type = args[i + 1]
                elif word == "port" and (port := _unsigned(args[i + 1], 1, 65535)) is not None:
                    result.tun_port = port
                else:
                    self.invalid(node, "tunnel option")
                    return None
                i += 2
            elif word in ("nocsum", "csum", "remcsum"):
                result.csum = word
                i += 1
            else:
                self.invalid(node, "tunnel option")
                return None
        if (result.tun_type == "gue") != (result.tun_port is not None):
            self.note(node, f"{node.keyword}: gue tunnels need a port, others take none; ignored")
            return None
        return result

    def vs_persistence(self, vs: VirtualServer, node: Node) -> None:
        if not node.args:
            vs.persistence_timeout = 360  # IPVS_SVC_PERSISTENT_TIMEOUT
            return
        value = _unsigned(node.args[0], 1, LVS_MAX_TIMEOUT)
        if value is None:
            self.invalid(node)
        else:
            vs.persistence_timeout = value

    def vs_granularity(self, vs: VirtualServer, node: Node) -> None:
        if not node.args:
            self.invalid(node)
            return
        vs.granularity = node.args[0]
        if vs.persistence_timeout is None:
            vs.persistence_timeout = 360  # pgr_handler makes the service persistent

    def vs_protocol(self, vs: VirtualServer, node: Node) -> None:
        if node.args and node.args[0].upper() in ("TCP", "UDP", "SCTP"):
            vs.protocol = node.args[0].upper()
        else:
            self.invalid(node, "protocol")

    def vs_timer(self, vs: VirtualServer, node: Node) -> None:
        minimum = 0.0 if node.keyword == "delay_before_retry" else 0.000001
        value = _timer(node.args[0], minimum) if node.args else None
        if value is None:
            self.invalid(node)
        else:
            setattr(vs, node.keyword, value)

    def vs_retry(self, vs: VirtualServer, node: Node) -> None:
        value = _unsigned(node.args[0], 1, UINT_MAX) if node.args else None
        if value is None:
            self.invalid(node)
        else:
            vs.retry = value

    def vs_flag(self, vs: VirtualServer, node: Node) -> None:
        if node.keyword == "ops":
            vs.one_packet = True
        elif node.keyword == "inhibit_on_failure":
            vs.inhibit = True
        elif node.keyword == "alpha":
            vs.alpha = True
        else:  # omega
            vs.omega = True
            self.ignored(node)

    def vs_integer(self, vs: VirtualServer, node: Node) -> None:
        low, high = {"quorum": (1, UINT_MAX), "hysteresis": (0, UINT_MAX)}.get(
            node.keyword, (1, WEIGHT_LIMIT)
        )
        value = _unsigned(node.args[0], low, high) if node.args else None
        if value is None:
            self.invalid(node)
            return
        setattr(vs, node.keyword, value)
        if node.keyword in ("quorum", "hysteresis"):
            setattr(vs, f"{node.keyword}_where", node.where)

    def vs_string(self, vs: VirtualServer, node: Node) -> None:
        if not node.args:
            self.invalid(node)
            return
        key = {"persistence_engine": "pe"}.get(node.keyword, node.keyword)
        if node.keyword == "ip_family" and node.args[0] not in ("inet", "inet6"):
            self.invalid(node, "family")
            return
        setattr(vs, key, node.args[0])

    def vs_sorry(self, vs: VirtualServer, node: Node) -> None:
        address = _address(node.args[0]) if node.args else None
        port = _port(node.args, 1)
        if address is None or port is None:
            self.invalid(node, "address")
            return
        vs.sorry = SorryServer(node.where, address, port, vs.forwarding)

    def vs_sorry_option(self, vs: VirtualServer, node: Node) -> None:
        if vs.sorry is None:
            self.note(node, f"{node.keyword} without a sorry_server before it, ignored")
        elif node.keyword == "sorry_server_inhibit":
            vs.sorry.inhibit = True
        else:
            vs.sorry.forwarding = self.forwarding(node) or vs.sorry.forwarding

    # -- real_server

    def real_server(self, vs: VirtualServer, node: Node) -> None:
        address = _address(node.args[0]) if node.args else None
        port = _port(node.args, 1)
        if address is None or port is None:
            self.note(node, "real_server: invalid address or port, skipped (as keepalived does)")
            return
        rs = RealServer(node.where, address, port, forwarding=vs.forwarding)
        for child in node.children():
            self.real_server_keyword(rs, child)
        vs.real_servers.append(rs)

    def real_server_keyword(self, rs: RealServer, node: Node) -> None:
        key, args = node.keyword, node.args
        if key in CHECKERS:
            checker = self.checker(node)
            if checker is not None:
                rs.checkers.append(checker)
        elif key in ("weight", "uthreshold", "lthreshold"):
            high = WEIGHT_LIMIT if key == "weight" else UINT_MAX
            value = _unsigned(args[0], 0, high) if args else None
            if value is None:
                self.invalid(node)
            else:
                setattr(rs, key, value)
        elif key == "lvs_method":
            rs.forwarding = self.forwarding(node) or rs.forwarding
        elif key in ("inhibit_on_failure", "alpha"):
            value = _bool(args)
            if value is None:
                self.invalid(node)
            else:
                setattr(rs, "inhibit" if key == "inhibit_on_failure" else key, value)
        elif key == "retry":
            retry = _unsigned(args[0], 1, UINT_MAX) if args else None
            if retry is None:
                self.invalid(node)
            else:
                rs.retry = retry
        elif key in ("delay_before_retry", "delay_loop", "connect_timeout"):
            seconds = (
                _timer(args[0], 0.0 if key == "delay_before_retry" else 0.000001) if args else None
            )
            if seconds is None:
                self.invalid(node)
            else:
                setattr(rs, key, seconds)
        elif key == "virtualhost" and args:
            rs.virtualhost = args[0]
        else:
            self.ignored(node)

    # -- checkers

    def alpha(self, node: Node) -> bool | None:
        """A checker's `alpha [yes|no]`; an invalid value is noted and
        ignored, as keepalived ignores it."""
        value = _bool(node.args)
        if value is None:
            self.invalid(node)
        return value

    def checker(self, node: Node) -> Checker | None:
        checker = Checker(node.where, node.keyword)
        follows = EVENT_CHECKERS.get(checker.kind)
        if follows is not None:
            # Not converted, so none of its keywords is read on its own but
            # alpha, which sets when keepalived puts the server in at start
            # (a FILE_CHECK is never alpha: check_file.c clears it).
            for child in node.children():
                if child.keyword == follows and child.args:
                    checker.follows = child.args[0]
                elif child.keyword == "alpha" and checker.kind == "BFD_CHECK":
                    checker.alpha = self.alpha(child)
            return checker
        for child in node.children():
            if not self.checker_keyword(checker, child):
                self.ignored(child)
        if checker.kind in ("HTTP_GET", "SSL_GET") and not checker.urls:
            self.note(node, f"{checker.kind} has no url with a path: ignored (as keepalived does)")
            return None
        if checker.kind == "MISC_CHECK" and not checker.misc_path:
            self.note(node, "MISC_CHECK without misc_path: ignored")
            return None
        return checker

    def checker_keyword(self, checker: Checker, node: Node) -> bool:
        """Read one keyword of a checker; False when it is not one to convert."""
        key, args = node.keyword, node.args
        kind = checker.kind
        connection = kind not in ("MISC_CHECK", "BFD_CHECK", "FILE_CHECK")
        if connection and key == "connect_ip":
            checker.connect_ip = _address(args[0]) if args else None
            if checker.connect_ip is None:
                self.invalid(node, "address")
        elif connection and key == "connect_port":
            checker.connect_port = _unsigned(args[0], 1, 65535) if args else None
            if checker.connect_port is None:
                self.invalid(node, "port")
        elif key in ("connect_timeout", "delay_before_retry", "delay_loop") and (
            connection or key != "connect_timeout"
        ):
            minimum = 0.0 if key == "delay_before_retry" else 0.000001
            value = _timer(args[0], minimum) if args else None
            if value is None:
                self.invalid(node)
            else:
                setattr(checker, key, value)
        elif key in ("retry", "nb_get_retry"):
            retry = _unsigned(args[0], 0, UINT_MAX) if args else None
            if retry is None:
                self.invalid(node)
            else:
                checker.retry = retry
        elif key == "alpha":
            checker.alpha = self.alpha(node)
        elif kind in ("HTTP_GET", "SSL_GET") and key == "url":
            url = self.url(node)
            if url is not None:
                checker.urls.append(url)
        elif kind in ("HTTP_GET", "SSL_GET") and key == "virtualhost" and args:
            checker.virtualhost = args[0]
        elif kind == "MISC_CHECK":
            return self.misc_keyword(checker, node)
        elif kind == "DNS_CHECK" and key in ("type", "name") and args:
            setattr(checker, f"dns_{key}", args[0])
        elif kind == "UDP_CHECK":
            return self.udp_keyword(checker, node)
        else:
            return False
        return True

    def misc_keyword(self, checker: Checker, node: Node) -> bool:
        key, args = node.keyword, node.args
        if key == "misc_path":
            # keepalived re-reads the line with quotes and escapes, then its
            # first argument again as the command and its arguments.
            line = quoted_escaped_words(node.text, node.where)
            checker.misc_path = quoted_escaped_words(line[1], node.where) if len(line) > 1 else ()
        elif key == "misc_timeout":
            checker.misc_timeout = _unsigned(args[0], 0, UINT_MAX // 1000) if args else None
            if checker.misc_timeout is None:
                self.invalid(node)
        elif key == "misc_dynamic":
            checker.misc_dynamic = True
        elif key == "user" and args:
            checker.user = args[0]
            if len(args) > 1:
                self.note(
                    node,
                    f"user: group {args[1]!r} not converted (director runs an exec "
                    "check with the user's own groups)",
                )
        else:
            return False
        return True

    def udp_keyword(self, checker: Checker, node: Node) -> bool:
        key, args = node.keyword, node.args
        if key == "payload":
            data = hex_bytes("".join(args))
            if data is None or not data:
                self.invalid(node, "hex string")
            else:
                checker.payload = data
        elif key == "require_reply":
            checker.require_reply = True
            if args:
                reply = hex_pattern("".join(args))
                if reply is None:
                    self.invalid(node, "hex string")
                else:
                    checker.reply = reply
        elif key in ("min_reply_length", "max_reply_length"):
            value = _unsigned(args[0], 0, 65535) if args else None
            if value is None:
                self.invalid(node)
            else:
                setattr(checker, key, value)
        else:
            return False
        return True

    def url(self, node: Node) -> Url | None:
        url = Url(node.where)
        for child in node.children():
            key, args = child.keyword, child.args
            if key == "path" and args:
                url.path = args[0]
            elif key == "digest" and args:
                url.digest = args[0]
            elif key == "virtualhost" and args:
                url.virtualhost = args[0]
            elif key == "regex":
                words = quoted_escaped_words(child.text, child.where)
                url.regex = words[1] if len(words) == 2 else None
                url.regex_where = child.where
                if url.regex is None:
                    self.invalid(child, "regex (one pattern expected)")
            elif key == "status_code":
                for word in args:
                    status = status_range(word)
                    if status is None:
                        self.note(
                            child, f"status_code: invalid {word!r}, ignored (as keepalived does)"
                        )
                    else:
                        url.statuses.append(status)
            else:
                self.ignored(child)
        if url.path is None:
            self.note(node, "url without a path: ignored (as keepalived does)")
            return None
        return url


def status_range(word: str) -> tuple[int, int] | None:
    """'200' or '200-299' within 100..599 (check_http.c status_code_handler)."""
    low_text, _, high_text = word.partition("-")
    low = _unsigned(low_text, 100, 599)
    high = _unsigned(high_text, 100, 599) if high_text else low
    if low is None or high is None or low > high:
        return None
    return low, high


def hex_pattern(text: str) -> str | None:
    """keepalived's read_hex_str free format (lib/parser.c): blanks separate
    groups, a group of odd length has a leading 0 implied, and X stands for a
    nibble that may be anything; as pairs of hex digits ('AB12x3'), or None."""
    groups = text.split()
    digits = []
    for group in groups:
        if not all(c in "0123456789abcdefABCDEFxX" for c in group):
            return None
        digits.append(("0" + group) if len(group) % 2 else group)
    joined = "".join(digits)
    return joined.upper().replace("X", "x") if joined else None


def hex_bytes(text: str) -> bytes | None:
    pattern = hex_pattern(text)
    if pattern is None or "x" in pattern:
        return None
    return bytes.fromhex(pattern)


def address_range(text: str) -> tuple[IPAddress, ...] | None:
    """A virtual_server_group address: one address, a range of the last
    part ('10.0.0.1-10'), a range of whole addresses ('10.0.0.250-10.0.1.5'),
    or a prefix ('10.0.0.8/29', every address in it) (check_data.c
    alloc_vsg_entry). None when it is none of these or holds more than
    MAX_RANGE addresses."""
    if "/" in text:
        base, _, bits = text.partition("/")
        start = _address(base)
        prefix = _unsigned(bits, 1, 128)
        if start is None or prefix is None or prefix > start.max_prefixlen:
            return None
        size = 1 << (start.max_prefixlen - prefix)
        if int(start) % size:
            return None  # keepalived: "Address mask bits not empty"
        return _span(start, size)
    first, dash, last = text.partition("-")
    start = _address(first)
    if start is None:
        return None
    if not dash:
        return (start,)
    separator = "." if start.version == 4 else ":"
    if separator in last:
        end = _address(last)
    else:
        head, _, _ = first.rpartition(separator)
        radix = 10 if start.version == 4 else 16
        try:
            end = _address(f"{head}{separator}{int(last, radix):{'d' if radix == 10 else 'x'}}")
        except ValueError:
            return None
    if end is None or end.version != start.version or int(end) < int(start):
        return None
    return _span(start, int(end) - int(start) + 1)


MAX_RANGE = 4096  # addresses one group entry may expand to in director's file


def _span(start: IPAddress, count: int) -> tuple[IPAddress, ...] | None:
    if count > MAX_RANGE:
        return None
    return tuple(
        ip_address(int(start) + i) if start.version == 4 else IPv6Address(int(start) + i)
        for i in range(count)
    )


_TOP: dict[str, Callable[[Reader, Node], None]] = {
    "global_defs": Reader.global_defs,
    "SSL": Reader.ssl,
    "virtual_server_group": Reader.group,
    "virtual_server": Reader.virtual_server,
}
_VS: dict[str, Callable[[Reader, VirtualServer, Node], None]] = {
    "lb_algo": Reader.vs_scheduler,
    "lvs_sched": Reader.vs_scheduler,
    "lb_kind": Reader.vs_forwarding,
    "lvs_method": Reader.vs_forwarding,
    "persistence_timeout": Reader.vs_persistence,
    "persistence_granularity": Reader.vs_granularity,
    "persistence_engine": Reader.vs_string,
    "protocol": Reader.vs_protocol,
    "ip_family": Reader.vs_string,
    "virtualhost": Reader.vs_string,
    "delay_loop": Reader.vs_timer,
    "connect_timeout": Reader.vs_timer,
    "delay_before_retry": Reader.vs_timer,
    "retry": Reader.vs_retry,
    "ops": Reader.vs_flag,
    "inhibit_on_failure": Reader.vs_flag,
    "alpha": Reader.vs_flag,
    "omega": Reader.vs_flag,
    "quorum": Reader.vs_integer,
    "hysteresis": Reader.vs_integer,
    "weight": Reader.vs_integer,
    "sorry_server": Reader.vs_sorry,
    "sorry_server_inhibit": Reader.vs_sorry_option,
    "sorry_server_lvs_method": Reader.vs_sorry_option,
    "real_server": Reader.real_server,
}
