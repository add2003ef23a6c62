"""TOML text into a validated director.config.model.Config.

Every problem is collected with its TOML path; ConfigError carries them all.
"""

from __future__ import annotations

import grp
import os
import re
import socket
import threading

# hashlib's own BLAKE2, without hashlib: its import loads OpenSSL's libcrypto
# (about 3 MiB of a daemon with no TLS check).
from _blake2 import blake2b
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import replace
from ipaddress import IPv4Address, ip_address
from pathlib import Path
from typing import TypeVar

import tomli

from director.config.bgp import bgp_service_problem, parse_bgp
from director.config.checks import parse_check, parse_server_check
from director.config.lines import key_lines
from director.config.model import (
    SUN_PATH_MAX,
    BgpSettings,
    Config,
    ControlSettings,
    DaemonSettings,
    IpvsSettings,
    LogLevel,
    MetricsSettings,
    OnFailure,
    RealServer,
    SorryServer,
    SyncRole,
    SyncSettings,
    VirtualServer,
)
from director.config.reader import Problems, Table, entry_name
from director.config.toml import string, syntax_error
from director.health.spec import Check, ExecCheck, TcpCheck
from director.ipvs.facts import (
    FWMARK_MAX,
    IPV6_PREFIX_RANGE,
    MAX_WEIGHT,
    PERSISTENCE_TIMEOUT_MAX,
    PORT_MAX,
    PROTOCOLS,
    THRESHOLD_MAX,
    U32_MAX,
    KernelModules,
    destination_problem,
    kernel_modules,
    persistence_engine_problem,
    scheduler_problem,
    unicast_problem,
)
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    DEFAULT_SCHEDULER,
    SCHEDULER_FLAGS,
    TIMEOUT_MAX,
    Forward,
    IPAddress,
    Protocol,
    ServiceFlags,
    ServiceKey,
    Timeouts,
    TunnelFlags,
    TunnelType,
    family_of,
)
from director.ipvs.model import endpoint as endpoint_text
from director.oserror import strerror
from director.sync import SYNCID_MAX, TTL_MAX, interface_problem, maxlen_range

_FORWARDS = {"route": Forward.ROUTE, "masq": Forward.MASQ, "tunnel": Forward.TUNNEL}
_FAMILIES = {"ipv4": AF_INET, "ipv6": AF_INET6}
_ON_FAILURE = {f.value: f for f in OnFailure}
_LOG_LEVELS = {level.value: level for level in LogLevel}
_TUN_TYPES = {"ipip": TunnelType.IPIP, "gue": TunnelType.GUE, "gre": TunnelType.GRE}
_TUN_CHECKSUMS = {
    "nocsum": TunnelFlags.NOCSUM,
    "csum": TunnelFlags.CSUM,
    "remcsum": TunnelFlags.REMCSUM,
}
_ENDPOINT = re.compile(
    r"\[(?P<v6>[^\]]+)\](?::(?P<v6port>[^:]*))?|(?P<v4>[^:]+)(?::(?P<v4port>.*))?"
)
# Not a kernel value: the number of real servers bounds it, this only the type.
_QUORUM_MAX = 2**31 - 1
# [daemon] max_exec_checks at most: each command running holds a process and
# its pipes, out of the probes' share of the file descriptors (half the limit).
MAX_EXEC_CHECKS = 1024
# [daemon] max_probes at most (the open-file limit bounds it further).
MAX_PROBES = 65536
T = TypeVar("T")


class ConfigError(Exception):
    """The configuration is invalid; `errors` lists every problem, each as
    'path: what is wrong: value', once, in the parse's order (for code);
    `named_errors` is what people read, a line each, and what every printer
    prints: the entries of arrays each is in and its line named after the
    path ('virtual_server[17].scheduler (10.0.0.1:80 tcp, line 204): ...'),
    in file order, one mistake repeated as the first and a line for the
    rest alike, at most 50 distinct (Problems.named_errors). `lines()` is
    how they print, and str() is what `directorctl check-config` prints:
    the count, then those lines."""

    def __init__(
        self, errors: list[str], source: str = "<config>", named_errors: list[str] | None = None
    ) -> None:
        self.errors = errors
        self.named_errors = named_errors if named_errors is not None else errors
        self.source = source
        count = f"{len(errors)} error" + ("s" if len(errors) != 1 else "")
        super().__init__(f"{source}: {count}:\n" + "\n".join(self.lines()))

    def lines(self, source: str | None = None) -> list[str]:
        """`named_errors` as directord --check, directorctl check-config and
        the control socket print them, each after the file's name (`source`,
        else the one parsed): 'director.toml: virtual_server[17].scheduler
        (10.0.0.1:80 tcp, line 204): ...'."""
        name = self.source if source is None else source
        return [f"{name}: {e}" for e in self.named_errors]


def load_config(path: str | Path, modules: KernelModules | None = None) -> Config:
    """parse_config of the file at `path` (blocking). Raises ConfigError,
    also when the file cannot be read."""
    return parse_config(read_config(path), str(path), modules)


def read_config(path: str | Path) -> str:
    """The text of the file at `path` (blocking). Raises ConfigError when it
    cannot be read or is not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError([f"cannot read: {strerror(e)}"], str(path)) from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([_not_utf8(raw, e)], str(path)) from e


def unremembered(text: str) -> int:
    """How many characters of `text` parse_config would give tomli: all of
    them, less the virtual servers the last parse remembers unchanged at
    their place (_Remembered; a reload of a large file where one real
    server changed reads that one service again). For a caller choosing
    whether a parse is short enough to run where it is (the engine's
    reload, in the event loop's own thread). O(len(text)): str.find and
    a digest of each virtual server's text, in C."""
    cut = _cut_digests(text, keep=True)
    if cut is None:
        return len(text)
    head, texts, digests = cut
    fresh = len(head)
    for i, (piece, digest) in enumerate(zip(texts, digests, strict=True)):
        if not _REMEMBERED.holds(i, digest):
            fresh += len(piece)
    return fresh


def _piece_digest(piece: str) -> bytes:
    return blake2b(piece.encode(), digest_size=16).digest()


_Cut = tuple[str, list[str], list[bytes]]
# The text unremembered() cut last, by identity, until parse_config takes
# it: unremembered(text) then parse_config(text) of the same string (a
# reload) cut it and digest its pieces once, 4.8 -> 2.7 ms of the host's CPU
# for a one-server reload of 10,000 real servers. Taken, it is dropped (the
# text and its pieces: 1.2 MB there). A tuple swapped whole: a thread sees
# one or the other.
_last_cut: tuple[str, _Cut | None] | None = None


def _cut_digests(text: str, *, keep: bool = False) -> _Cut | None:
    """_cut(text) and each piece's digest; with `keep`, kept for the
    parse_config of the same string that follows."""
    global _last_cut
    last = _last_cut
    if last is not None and last[0] is text:
        if not keep:
            _last_cut = None
        return last[1]
    cut = _cut(text)
    result = None if cut is None else (cut[0], cut[1], [_piece_digest(p) for p in cut[1]])
    _last_cut = (text, result) if keep else None
    return result


def _not_utf8(raw: bytes, error: UnicodeDecodeError) -> str:
    """Where a file that is not UTF-8 (as TOML must be) first is not: its
    line and column (counted in bytes), and the byte."""
    line = raw.count(b"\n", 0, error.start) + 1
    column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
    return f"not UTF-8 (as TOML must be): byte 0x{raw[error.start]:02x} at line {line}, column {column}"


def parse_config(
    text: str, source: str = "<config>", modules: KernelModules | None = None
) -> Config:
    """The Config that TOML `text` describes; raises ConfigError (and nothing
    else) listing every problem. `modules`: the schedulers and persistence
    engines taken besides the known ones; by default the running kernel's
    (director.ipvs.facts.kernel_modules, which reads /lib/modules)."""
    # Equal addresses and ports as one object each (parse_endpoint): at
    # 10,000 real servers, one port object each cost 32 bytes a server.
    token = _shared.set({})
    try:
        return _parse_config(text, source, modules)
    finally:
        _shared.reset(token)


def _parse_config(text: str, source: str, modules: KernelModules | None) -> Config:
    if modules is None:
        modules = kernel_modules()
    try:
        data, pieces = _load(text, modules)
    except tomli.TOMLDecodeError as e:
        where = str(e)[len(e.msg) :]  # " (at line 2, column 8)"
        raise ConfigError([f"TOML syntax error: {syntax_error(e.msg)}{where}"], source) from e
    except RecursionError as e:  # tomli's bound on nested inline arrays and tables
        raise ConfigError([f"TOML too deeply nested: {e}"], source) from e
    problems = Problems()
    root = Table(data, "", problems)
    bgp = parse_bgp(root.table("bgp"))
    tables: list[tuple[bytes, Table | _Memory]]
    if pieces is None:
        tables = [(_digest(t.data), t) for t in root.tables("virtual_server")]
    else:
        root.raw("virtual_server")
        tables = [
            (digest, _piece_table(piece, i, problems) if isinstance(piece, dict) else piece)
            for i, (digest, piece) in enumerate(pieces)
        ]
    config = Config(
        ipvs=_ipvs(root.table("ipvs")),
        control=_control(root.table("control")),
        daemon=_daemon(root.table("daemon")),
        metrics=_metrics(root.table("metrics")),
        virtual_servers=_virtual_servers(tables, problems, modules, bgp, bgp_invalid="bgp" in data),
        bgp=bgp,
        source=source,
    )
    root.close()
    if problems.errors:
        raise ConfigError(problems.errors, source, problems.named_errors(key_lines(text)))
    return config


_shared: ContextVar[dict[object, object] | None] = ContextVar("config_shared", default=None)


def _share(value: T) -> T:
    """The first of the values equal to `value` that this parse_config saw
    (`value` outside of one)."""
    shared = _shared.get()
    if shared is None:
        return value
    return shared.setdefault(value, value)  # type: ignore[return-value]


def parse_endpoint(text: str) -> tuple[IPAddress, int | None] | None:
    """'10.0.0.1:80', '[2001:db8::1]:80', or an address alone (port None);
    None when it is neither. Within parse_config, equal addresses and equal
    ports are one object each."""
    # One colon: an IPv4 address and a port, never an address alone (the
    # common case, and a raised ValueError costs more than the rest).
    if text.count(":") != 1:
        try:
            return _share(ip_address(text)), None
        except ValueError:
            pass
    match = _ENDPOINT.fullmatch(text)
    if match is None:
        return None
    host = match["v6"] or match["v4"]
    port_text = match["v6port"] if match["v6"] else match["v4port"]
    try:
        address = _ipv4(host) if match["v4"] else ip_address(host)
    except ValueError:
        return None
    if match["v6"] and address.version != 6:
        return None
    if port_text is None:
        return _share(address), None
    if not port_text.isascii() or not port_text.isdigit() or int(port_text) > PORT_MAX:
        return None
    return _share(address), _share(int(port_text))


def _ipv4(text: str) -> IPAddress:
    """ip_address(text), faster for a dotted quad: inet_pton takes exactly
    what ipaddress takes for IPv4 (four decimal octets up to 255, no leading
    zeros, ASCII only); anything else goes to ip_address as before."""
    try:
        return IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError, UnicodeEncodeError):
        return ip_address(text)


def _ipvs(table: Table | None) -> IpvsSettings:
    if table is None:
        return IpvsSettings()
    timeouts = None
    t = table.table("timeouts")
    if t is not None:
        timeouts = Timeouts(
            tcp=t.integer("tcp", 0, TIMEOUT_MAX) or 0,
            tcp_fin=t.integer("tcpfin", 0, TIMEOUT_MAX) or 0,
            udp=t.integer("udp", 0, TIMEOUT_MAX) or 0,
        )
        t.close()
    sync = _sync(table.table("sync"))
    table.close()
    return IpvsSettings(timeouts, sync)


_SYNC_ROLES = {role.value: role for role in SyncRole}


def _sync(table: Table | None) -> SyncSettings | None:
    """[ipvs.sync]: the kernel's sync daemon(s), with the ranges
    ipvsadm's --start-daemon options and the kernel take (director.sync)."""
    if table is None:
        return None
    role = table.choice("role", _SYNC_ROLES)
    if "role" not in table:
        table.error("role", f"required ({', '.join(_SYNC_ROLES)})")
    interface = table.string("interface")
    if interface is None:
        if "interface" not in table:
            table.error("interface", "required: the interface sync messages use")
    elif (problem := interface_problem(interface)) is not None:
        table.error("interface", problem, interface)
        interface = None
    syncid = table.integer("syncid", 0, SYNCID_MAX)
    if "syncid" not in table:
        table.error("syncid", f"required (0..{SYNCID_MAX}; 0: a backup takes every master's)")
    group = _sync_group(table)
    port = table.integer("port", 1, PORT_MAX)
    ttl = table.integer("ttl", 1, TTL_MAX)
    maxlen = table.integer("maxlen", 1, PORT_MAX)
    if maxlen is not None and role is not None:
        low, high = maxlen_range(role.states, group)
        if not low <= maxlen <= high:
            # start_sync_thread would clamp it: say so rather than let the
            # kernel run with another value than the file's.
            why = f"a backup's is at least {low}" if maxlen < low else "with this group"
            table.error(
                "maxlen", f"must be between {low} and {high} for role {role.value} ({why})", maxlen
            )
            maxlen = None
    table.close()
    if role is None or interface is None or syncid is None:
        return None
    return SyncSettings(role, interface, syncid, group, port or 0, ttl or 0, maxlen or 0)


def _sync_group(table: Table) -> IPAddress | None:
    text = table.string("group")
    if text is None:
        return None
    try:
        group = ip_address(text)
    except ValueError:
        table.error("group", "not an IP address", text)
        return None
    if not group.is_multicast:
        table.error("group", "not a multicast address (224.0.0.0/4, ff00::/8)", text)
        return None
    return group


def _control(table: Table | None) -> ControlSettings:
    if table is None:
        return ControlSettings()
    socket = table.string("socket") or ControlSettings.socket
    if not socket.startswith("/"):
        table.error("socket", "must be an absolute path", socket)
    elif len(os.fsencode(socket)) > SUN_PATH_MAX:
        table.error("socket", f"longer than a socket path may be ({SUN_PATH_MAX} bytes)", socket)
    mode = ControlSettings.mode
    raw = table.raw("mode")
    if isinstance(raw, str) and re.fullmatch(r"0?[0-7]{3}", raw):
        mode = int(raw, 8)
    elif isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw <= 0o777:
        mode = raw
    elif raw is not None:
        table.error("mode", 'expected a file mode like 0o660 or "0660"', raw)
    runtime_checks: dict[str, Check] = {}
    for key in ("runtime_check", "runtime_check_udp"):
        check_table = table.table(key)
        check = parse_check(check_table) if check_table is not None else None
        if check is not None:
            runtime_checks[key] = check
    groups = {key: table.string(key) for key in ("group", "admin_group")}
    for key, name in groups.items():
        if name is not None and not _group_exists(name):
            table.error(key, "no such group", name)
    settings = ControlSettings(
        socket=socket,
        group=groups["group"],
        admin_group=groups["admin_group"],
        mode=mode,
        runtime_check=runtime_checks.get("runtime_check", ControlSettings.runtime_check),
        runtime_check_udp=runtime_checks.get(
            "runtime_check_udp", ControlSettings.runtime_check_udp
        ),
    )
    table.close()
    return settings


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except (KeyError, ValueError):
        return False
    return True


def _daemon(table: Table | None) -> DaemonSettings:
    if table is None:
        return DaemonSettings()
    state_file = table.string("state_file") or DaemonSettings.state_file
    if not state_file.startswith("/"):
        table.error("state_file", "must be an absolute path", state_file)
    settings = DaemonSettings(
        flush_on_stop=table.boolean("flush_on_stop", False),
        reconcile_interval=table.seconds("reconcile_interval") or DaemonSettings.reconcile_interval,
        state_file=state_file,
        log_level=table.choice("log_level", _LOG_LEVELS) or LogLevel.INFO,
        max_probes=table.integer("max_probes", 16, MAX_PROBES) or DaemonSettings.max_probes,
        max_exec_checks=(
            table.integer("max_exec_checks", 1, MAX_EXEC_CHECKS) or DaemonSettings.max_exec_checks
        ),
    )
    table.close()
    return settings


def _metrics(table: Table | None) -> MetricsSettings:
    """[metrics] listen: an IP address and port (IPv6 in brackets) or an
    absolute Unix socket path; absent, no endpoint."""
    if table is None:
        return MetricsSettings()
    listen = table.string("listen")
    table.close()
    if listen is None:
        return MetricsSettings()
    if listen.startswith("/"):
        if len(os.fsencode(listen)) > SUN_PATH_MAX:
            table.error(
                "listen", f"longer than a socket path may be ({SUN_PATH_MAX} bytes)", listen
            )
        return MetricsSettings(listen=listen, path=listen)
    endpoint = parse_endpoint(listen)
    if endpoint is None or endpoint[1] is None or endpoint[1] == 0:
        table.error(
            "listen",
            f'{_listen_problem(listen)}: expected an IP address and port ("127.0.0.1:9531", '
            '"[::1]:9531") or an absolute Unix socket path',
            listen,
        )
        return MetricsSettings()
    return MetricsSettings(listen=listen, address=endpoint[0], port=endpoint[1])


def _listen_problem(listen: str) -> str:
    """What is wrong with a `listen` that parse_endpoint refused."""
    host, colon, port = listen.rpartition(":")
    if not colon:
        return "no port"
    if host.count(":") and not host.startswith("["):
        return "an IPv6 address goes in brackets"
    if not port.isdigit():
        return f"port {string(port)} is not a number"
    if not 1 <= int(port) <= 65535:
        return f"port {int(port)} is not in 1..65535"
    try:
        ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return f"{string(host)} is not an IP address (no host names)"
    return "not an endpoint"


# A [[virtual_server]] header (at a line's start) and the rest of its line;
# a line that opens anything but a virtual server's sub-table (another
# table, an array's element on a line of its own): see _cut.
_VS_HEADER = "[[virtual_server]]"
_HEADER_END = re.compile(r"[ \t]*(?:#[^\n]*)?(?:\n|\Z)")
_FOREIGN_LINE = re.compile(r"\n[ \t]*\[(?!\[?[ \t]*virtual_server[ \t]*[.\]])")


def _cut(text: str) -> tuple[str, list[str]] | None:
    """`text` cut before each `[[virtual_server]]` header that starts a
    line: the text before the first, and each virtual server's own (its
    header, its keys, its sub-tables). Each piece is then a TOML document of
    its own that says what it says in `text`. None when the text cannot be
    cut so: a multi-line string (it could hold such a line), no virtual
    server, or a line after the first one that opens anything but a virtual
    server's sub-table or header. (A header written otherwise, with spaces
    or quotes, stays inside a piece, whose own parse then finds two virtual
    servers or an error: _load reads the whole text.) O(len(text)) in C:
    str.find and one regex search."""
    if '"""' in text or "'''" in text:
        return None
    starts = [0] if text.startswith(_VS_HEADER) else []
    at = text.find("\n" + _VS_HEADER)
    while at != -1:
        starts.append(at + 1)
        at = text.find("\n" + _VS_HEADER, at + 1)
    if not starts or _FOREIGN_LINE.search(text, max(starts[0] - 1, 0)) is not None:
        return None
    for start in starts:
        if _HEADER_END.match(text, start + len(_VS_HEADER)) is None:
            return None
    ends = [*starts[1:], len(text)]
    return text[: starts[0]], [text[a:b] for a, b in zip(starts, ends, strict=True)]


def _load(
    text: str, modules: KernelModules
) -> tuple[dict[str, object], list[tuple[bytes, _Memory | dict[str, object]]] | None]:
    """tomli.loads(text), or, when the text can be cut at its virtual
    servers (_cut): the document without them and each virtual server's
    piece, as (digest of its text, the virtual server a previous parse made
    of the same text at the same position, or its table): a reload of a
    large file where one real server changed reads that one piece again.
    Raises what tomli raises, for the whole text (its line numbers)."""
    cut = _cut_digests(text)
    if cut is None:
        return tomli.loads(text), None
    head, texts, digests = cut
    try:
        data = tomli.loads(head)
        if "virtual_server" in data:
            return tomli.loads(text), None
        pieces: list[tuple[bytes, _Memory | dict[str, object]]] = []
        for i, (piece, digest) in enumerate(zip(texts, digests, strict=True)):
            memory = _REMEMBERED.get(i, digest, modules)
            if memory is not None:
                pieces.append((digest, memory))
                continue
            tables = tomli.loads(piece).get("virtual_server")
            if not (isinstance(tables, list) and len(tables) == 1 and isinstance(tables[0], dict)):
                return tomli.loads(text), None
            pieces.append((digest, tables[0]))
    except tomli.TOMLDecodeError:
        return tomli.loads(text), None  # its error, with the whole text's line numbers
    return data, pieces


def _piece_table(data: dict[str, object], i: int, problems: Problems) -> Table:
    """A virtual server's table, as Table.tables names it."""
    where = f"virtual_server[{i}]"
    what = entry_name(data)
    if what is not None:
        problems.name_entry(where, what)
    return Table(data, where, problems)


class _Remembered:
    """The virtual servers of the last parse that found no problem in them,
    with a digest of the TOML tables they came from, by position: a reload
    of a large file where one real server changed parses that one service
    again and takes the others as they were (a service's parse depends only
    on its table and the kernel's modules, except an exec check's user,
    which is looked up in the system and never remembered). A digest, not
    the tables: at 10,000 real servers tomli's tables held 3.2 MiB."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Memory | None] = []

    def get(self, i: int, digest: bytes, modules: KernelModules) -> _Memory | None:
        """What position `i` held, if its digest and the modules match."""
        with self._lock:
            entry = self._entries[i] if i < len(self._entries) else None
        if entry is not None and entry[0] == digest and entry[1] == modules:
            return entry
        return None

    def holds(self, i: int, digest: bytes) -> bool:
        """Whether position `i` holds `digest` (whatever the modules)."""
        with self._lock:
            entry = self._entries[i] if i < len(self._entries) else None
        return entry is not None and entry[0] == digest

    def keep(self, entries: list[_Memory | None]) -> None:
        with self._lock:
            self._entries = entries


# (digest, the kernel's modules, the virtual server, its entry name)
_Memory = tuple[bytes, KernelModules, VirtualServer, str | None]


_REMEMBERED = _Remembered()


def _digest(data: Mapping[str, object]) -> bytes:
    """A digest of a TOML table: equal only for equal values of equal types
    (repr tells 1, True and 1.0 apart, as the config does; tomli gives only
    str, int, float, bool, dates and times, lists and dicts, each with an
    exact repr). Keys in another order digest differently, which costs a
    parse, never a wrong answer."""
    return blake2b(repr(data).encode(), digest_size=16).digest()


def _looks_up_users(vs: VirtualServer) -> bool:
    """Whether a virtual server has an exec check (its user is looked up in
    the system at each parse). O(its real servers), that share one check
    object each when they have no check of their own."""
    if isinstance(vs.check, ExecCheck):
        return True
    last: Check | None = None
    for rs in vs.real_servers:
        if rs.check is not last:
            last = rs.check
            if isinstance(last, ExecCheck):
                return True
    return False


def _virtual_servers(
    pieces: list[tuple[bytes, Table | _Memory]],
    problems: Problems,
    modules: KernelModules,
    bgp: BgpSettings | None = None,
    *,
    bgp_invalid: bool = False,
) -> tuple[VirtualServer, ...]:
    """Each virtual server from its table, or as a previous parse made it
    (_load), with the digest it is remembered by. `bgp_invalid`: [bgp] is
    there but wrong (its own errors say why; a service's `bgp = true` is not
    also called wrong for it)."""
    result: list[VirtualServer] = []
    seen: dict[ServiceKey, str] = {}
    vips: dict[IPAddress, tuple[str, str]] = {}  # address -> (interface, path) first named
    remembered: list[_Memory | None] = []
    for i, (digest, piece) in enumerate(pieces):
        path = f"virtual_server[{i}]"
        memory = piece if isinstance(piece, tuple) else _REMEMBERED.get(i, digest, modules)
        vs: VirtualServer | None
        if memory is not None:
            vs, name = memory[2], memory[3]
            if name is not None:
                problems.name_entry(path, name)
            remembered.append(memory)
        else:
            assert isinstance(piece, Table)
            before = len(problems)
            vs = _virtual_server(piece, modules)
            clean = vs is not None and len(problems) == before
            remembered.append(
                (digest, modules, vs, entry_name(piece.data))
                if clean and vs is not None and not _looks_up_users(vs)
                else None
            )
        if vs is None:
            continue
        if vs.key in seen:
            problems.add(
                path,
                f"duplicate virtual service {vs.label} (first at {seen[vs.key]})",
                first=seen[vs.key],
            )
            continue
        seen[vs.key] = path
        if vs.vip_interface is not None and vs.key.address is not None:
            first = vips.setdefault(vs.key.address, (vs.vip_interface, path))
            if first[0] != vs.vip_interface:
                # One address is one VIP (services on it share it): on two
                # interfaces each copy would follow only its own services.
                problems.add(
                    f"{path}.vip_interface",
                    f"{vs.key.address} is already the VIP on {string(first[0])} "
                    f"(at {first[1]}): one address, one vip_interface",
                    vs.vip_interface,
                    first=first[1],
                )
                continue
        if vs.bgp and (bgp is not None or not bgp_invalid):
            problem = bgp_service_problem(vs, bgp)
        else:
            problem = None
        if problem is not None:
            problems.add(f"{path}.bgp", problem, True)
            continue
        result.append(vs)
    _REMEMBERED.keep(remembered)
    return tuple(result)


def _service_key(table: Table) -> ServiceKey | None:
    fwmark = table.integer("fwmark", 1, FWMARK_MAX)
    family_name = table.choice("family", _FAMILIES)
    ipv6 = table.raw("ipv6")
    if ipv6 is not None and not isinstance(ipv6, bool):
        table.error("ipv6", "expected a boolean", ipv6)
    address_text = table.string("address")
    protocol = table.choice("protocol", PROTOCOLS)
    if "fwmark" in table:
        for key in ("address", "protocol"):
            if key in table:
                table.error(key, "a fwmark service has no " + key)
        if family_name is not None and ipv6 is not None and (family_name == AF_INET6) != ipv6:
            table.error("ipv6", "contradicts family", ipv6)
        family = family_name or (AF_INET6 if ipv6 is True else AF_INET)
        return ServiceKey.mark(fwmark, family) if fwmark is not None else None
    for key in ("family", "ipv6"):
        if key in table:
            table.error(key, "only for fwmark services (the address gives the family)")
    if "address" not in table:
        table.error("address", "required (or fwmark instead of protocol and address)")
    if "protocol" not in table:
        table.error("protocol", f"required ({', '.join(PROTOCOLS)}), or fwmark instead")
    if address_text is None or protocol is None:
        return None
    endpoint = parse_endpoint(address_text)
    if endpoint is None or endpoint[1] is None:
        table.error("address", "not an IP address and port", address_text)
        return None
    problem = unicast_problem(endpoint[0])
    if problem is not None:
        table.error("address", problem, address_text)
        return None
    return ServiceKey.inet(protocol, endpoint[0], endpoint[1])


def _virtual_server(table: Table, modules: KernelModules) -> VirtualServer | None:
    key = _service_key(table)
    scheduler = table.string("scheduler")
    if scheduler is None:
        scheduler = DEFAULT_SCHEDULER
    else:
        problem = scheduler_problem(scheduler, modules.schedulers)
        if problem is not None:
            table.error("scheduler", problem, scheduler)
    persistent = table.integer("persistent", 1, PERSISTENCE_TIMEOUT_MAX)
    family = key.family if key is not None else None
    netmask = _netmask(table, family)
    if netmask is not None and persistent is None:
        table.error("persistent_netmask", "only for persistent services")
    flags = _scheduler_flags(table, scheduler)
    one_packet = table.boolean("one_packet", False)
    if one_packet and key is not None and key.protocol not in (Protocol.UDP, None):
        table.error("one_packet", "one-packet scheduling is only for UDP (or fwmark) services")
    pe = table.string("pe") or ""
    if "pe" in table:
        problem = persistence_engine_problem(pe, modules.persistence_engines)
        if problem is not None:
            table.error("pe", problem, pe)
    if pe and persistent is None:
        table.error("pe", "a persistence engine needs persistent")
    if key is not None and not key.is_fwmark and key.port == 0 and persistent is None:
        table.error("address", "port 0 (any port) only for persistent services")

    check = _service_check(table)
    real_servers = _real_servers(table, key, check)
    sorry = _sorry_server(table, key, real_servers)
    quorum = table.integer("quorum", 1, _QUORUM_MAX)
    if quorum is not None and quorum > len(real_servers) and real_servers:
        table.error("quorum", f"more than the {len(real_servers)} real servers", quorum)
    on_failure = table.choice("on_failure", _ON_FAILURE) or OnFailure.REMOVE
    panic = table.boolean("panic", False)
    slow_start = table.seconds("slow_start", allow_zero=True) or 0.0
    vip_interface, create_vip_interface = _vip_interface(table, key)
    bgp = table.boolean("bgp", False)
    table.close(elsewhere=_REAL_SERVER_KEYS)
    if key is None or check is None:
        return None
    return VirtualServer(
        key=key,
        scheduler=scheduler,
        persistent=persistent,
        persistent_netmask=netmask,
        scheduler_flags=flags,
        one_packet=one_packet,
        pe=pe,
        on_failure=on_failure,
        check=check,
        quorum=quorum or 1,
        sorry_server=sorry,
        panic=panic,
        slow_start=slow_start,
        real_servers=real_servers,
        vip_interface=vip_interface,
        create_vip_interface=create_vip_interface,
        bgp=bgp,
    )


def _vip_interface(table: Table, key: ServiceKey | None) -> tuple[str | None, bool]:
    """vip_interface and create_vip_interface (director.vips): an interface
    name as the kernel takes one (dev_valid_name), for a service with an
    address (a fwmark service has none to put there)."""
    name = table.string("vip_interface")
    create = table.boolean("create_vip_interface", False)
    if name is not None:
        if (problem := interface_problem(name)) is not None:
            table.error("vip_interface", problem, name)
            name = None
        elif key is not None and key.is_fwmark:
            table.error(
                "vip_interface",
                "a fwmark service has no address to put on an interface "
                "(put the addresses its mark matches there yourself)",
                name,
            )
            name = None
    elif create:
        table.error("create_vip_interface", "only with vip_interface")
    return name, create and name is not None


def _netmask(table: Table, family: int | None) -> int | None:
    raw = table.raw("persistent_netmask")
    if raw is None or family is None:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        limit = 32 if family == AF_INET else IPV6_PREFIX_RANGE[-1]
        if not 1 <= raw <= limit:
            table.error("persistent_netmask", f"prefix length must be 1..{limit}", raw)
            return None
        if family == AF_INET6:
            return raw
        return (U32_MAX << (32 - raw)) & U32_MAX
    if isinstance(raw, str) and family == AF_INET:
        try:
            mask = int(IPv4Address(raw))
        except ValueError:
            mask = -1
        inverted = ~mask & U32_MAX
        if mask > 0 and inverted & (inverted + 1) == 0:
            return mask
    table.error(
        "persistent_netmask",
        "expected a prefix length"
        + (' or a netmask like "255.255.255.0"' if family == AF_INET else ""),
        raw,
    )
    return None


def _scheduler_flags(table: Table, scheduler: str) -> ServiceFlags:
    raw = table.raw("scheduler_flags")
    flags = ServiceFlags.NONE
    if raw is None:
        return flags
    if not isinstance(raw, list):
        table.error("scheduler_flags", "expected an array of strings", raw)
        return flags
    for i, name in enumerate(raw):
        where = f"{table.where('scheduler_flags')}[{i}]"
        if not isinstance(name, str) or name not in SCHEDULER_FLAGS:
            table.problems.add(where, f"unknown flag (known: {', '.join(SCHEDULER_FLAGS)})", name)
            continue
        flag, owner = SCHEDULER_FLAGS[name]
        if owner is not None and owner != scheduler:
            table.problems.add(where, f"only for the {owner} scheduler, not {scheduler}", name)
        flags |= flag
    return flags


def _service_check(table: Table) -> Check | None:
    if "check" not in table:
        table.raw("check")
        return TcpCheck()
    check_table = table.table("check")
    return parse_check(check_table) if check_table is not None else None


def _real_servers(
    table: Table, key: ServiceKey | None, service_check: Check | None
) -> tuple[RealServer, ...]:
    items = table.raw("real_server")
    if isinstance(items, list) and key is not None and service_check is not None:
        plain = _plain_real_servers(items, key, service_check)
        if plain is not None:
            return plain
    base = table.data.get("check")
    base_check = base if isinstance(base, dict) else None
    result: list[RealServer] = []
    seen: dict[tuple[IPAddress, int], str] = {}
    for rs_table in table.tables("real_server"):
        rs = _real_server(rs_table, key, base_check, table.where("check"), service_check)
        if rs is None:
            continue
        if (rs.address, rs.port) in seen:
            first = seen[(rs.address, rs.port)]
            written = rs_table.data.get("address")
            endpoint = parse_endpoint(written) if isinstance(written, str) else None
            why = ""
            if endpoint is not None and endpoint[1] not in (None, rs.port):
                why = ": route and tunnel servers have the service's port in the table"
            rs_table.problems.add(
                rs_table.path,
                f"duplicate real server {rs.label} (first at {first}){why}",
                first=first,
            )
            continue
        seen[(rs.address, rs.port)] = rs_table.path
        result.append(rs)
    return tuple(result)


_PLAIN_KEYS = frozenset(("address", "weight", "forward"))
# A real server's keys that a virtual server does not have, for the hint of
# one written a level too high.
_REAL_SERVER_KEYS = {
    key: "a real server's key: under [[virtual_server.real_server]]"
    for key in ("weight", "forward", "thresholds", "tun_type", "tun_port", "tun_checksum", "name")
}


def _plain_real_servers(
    items: list[object], key: ServiceKey, check: Check
) -> tuple[RealServer, ...] | None:
    """The real servers of `items` when every one is plain (an address,
    and at most a weight and a forwarding method, all valid) and none is
    twice: what _real_server makes of each, without a Table and its getters
    (at 10,000 real servers these were most of a start's parse: 35 us a
    server on the host, several seconds in the VM). None for anything else:
    the caller takes the general path, which reports every problem.

    An IPv4 address with its port (`10.2.1.7:80`, most real servers) is
    read by _plain_ipv4, each distinct address made and checked once per
    service: 11 us a server on the host before, 8.9 after."""
    result: list[RealServer] = []
    # Real servers as (packed address, port): bytes keep their hash, where
    # an IPv4Address computes its own through hex() at each lookup.
    seen: set[tuple[bytes, int]] = set()
    made: dict[bytes, IPAddress] = {}  # the addresses checked, by packed form
    family = key.family
    for item in items:
        if type(item) is not dict or not item.keys() <= _PLAIN_KEYS:
            return None
        text = item.get("address")
        weight = item.get("weight", 1)
        name = item.get("forward", "route")
        if type(text) is not str or type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
            return None
        forward = _FORWARDS.get(name) if type(name) is str else None
        if forward is None:
            return None
        quad = _IPV4_ENDPOINT.fullmatch(text)
        if quad is not None:
            found = _plain_ipv4(quad[1], quad[2], made)
            if found is None:
                return None
            address, port, packed = found
            if forward is not Forward.TUNNEL and family != AF_INET:
                return None
        else:
            endpoint = parse_endpoint(text)
            if endpoint is None:
                return None
            address, maybe_port = endpoint
            if maybe_port is None:
                if key.is_fwmark:
                    return None
                maybe_port = key.port
            port, packed = maybe_port, address.packed
            if (
                port == 0
                or (forward is not Forward.TUNNEL and family_of(address) != family)
                or destination_problem(address) is not None
            ):
                return None
        if port != key.port and _takes_service_port(key, forward):
            return None  # (the general path sets the port, _real_server)
        if (packed, port) in seen:
            return None
        seen.add((packed, port))
        result.append(RealServer(address, port, forward, weight, check=check))
    return tuple(result)


# An IPv4 address and a port as _plain_real_servers reads them (ASCII
# digits only); inet_pton then takes exactly the quads ipaddress takes.
_IPV4_ENDPOINT = re.compile(r"([0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}):([0-9]{1,5})")


def _plain_ipv4(
    quad: str, port_text: str, made: dict[bytes, IPAddress]
) -> tuple[IPAddress, int, bytes] | None:
    """A plain real server's IPv4 address (shared within the parse, and one
    the kernel takes as a real server), its port and the address packed; None
    when either is not valid (the general path then says why)."""
    port = int(port_text)
    if not 0 < port <= PORT_MAX:
        return None
    try:
        packed = socket.inet_pton(socket.AF_INET, quad)
    except OSError:
        return None
    address = made.get(packed)
    if address is None:
        address = _share(IPv4Address(packed))
        if destination_problem(address) is not None:
            return None
        made[packed] = address
    return address, _share(port), packed


def _endpoint_of(table: Table, key: ServiceKey | None) -> tuple[IPAddress, int | None] | None:
    """The address of a real or sorry server and the port written with it
    (None: none written), or None when there is no valid address (the
    problem is recorded)."""
    text = table.string("address")
    if text is None:
        if "address" not in table:
            table.error("address", "required")
        return None
    endpoint = parse_endpoint(text)
    if endpoint is None:
        table.error("address", "not an IP address and port", text)
        return None
    address, port = endpoint
    problem = destination_problem(address)
    if problem is not None:
        table.error("address", problem, text)
        return None
    if port is None and key is not None and key.is_fwmark:
        table.error("address", "a fwmark service's real servers need a port", text)
        return None
    if port == 0:
        table.error("address", "port 0 is not a real server port", text)
        return None
    return address, port


def _table_port(key: ServiceKey, forward: Forward, written: int | None) -> int:
    """A server's port in the kernel's table: the service's for a route or
    tunnel server of a service with a port (ipvsadm -a sets it so, the -a/-e
    parse of ipvsadm.c; the packet keeps the port the client asked), else the
    port written, else the service's (0 for a port-0 service: the kernel then
    keeps the port the client asked, ip_vs_sched_persist)."""
    if written is None or _takes_service_port(key, forward):
        return key.port
    return written


def _takes_service_port(key: ServiceKey | None, forward: Forward) -> bool:
    """Whether a real server of service `key` forwarded by `forward` has
    the service's port in the kernel, whatever port it is written with."""
    return key is not None and not key.is_fwmark and forward in (Forward.ROUTE, Forward.TUNNEL)


def _check_family(
    table: Table, key: ServiceKey | None, address: IPAddress, forward: Forward
) -> None:
    if key is None or forward == Forward.TUNNEL or family_of(address) == key.family:
        return
    table.error(
        "address",
        'IPv4 and IPv6 can only be mixed with forward = "tunnel"',
        table.string("address"),
    )


def _real_server(
    table: Table,
    key: ServiceKey | None,
    base_check: Mapping[str, object] | None,
    base_path: str,
    service_check: Check | None,
) -> RealServer | None:
    endpoint = _endpoint_of(table, key)
    forward = _default(table.choice("forward", _FORWARDS), Forward.ROUTE)
    weight = table.integer("weight", 0, MAX_WEIGHT)
    u_threshold = l_threshold = 0
    thresholds = table.table("thresholds")
    if thresholds is not None:
        u_threshold = thresholds.integer("upper", 0, THRESHOLD_MAX) or 0
        l_threshold = thresholds.integer("lower", 0, THRESHOLD_MAX) or 0
        if l_threshold > u_threshold:
            thresholds.error("lower", f"above upper ({u_threshold})", l_threshold)
        thresholds.close()
    tun_type = table.choice("tun_type", _TUN_TYPES)
    tun_port = table.integer("tun_port", 1, PORT_MAX)
    tun_flags = table.choice("tun_checksum", _TUN_CHECKSUMS)
    if forward != Forward.TUNNEL:
        for option in ("tun_type", "tun_port", "tun_checksum"):
            if option in table:
                table.error(option, 'only with forward = "tunnel"')
    elif tun_type == TunnelType.GUE and "tun_port" not in table:
        table.error("tun_port", 'required with tun_type = "gue"')
    elif tun_type != TunnelType.GUE and "tun_port" in table:
        table.error("tun_port", 'only with tun_type = "gue"')
    if tun_type in (None, TunnelType.IPIP) and tun_flags not in (None, TunnelFlags.NOCSUM):
        table.error("tun_checksum", 'only with tun_type "gue" or "gre"')
    name = table.string("name")
    if name is not None and not name.isprintable():
        # A newline or tab would split or shift the line of a log or a
        # status table that shows it.
        table.error("name", "must be printable (no newline, tab or other control character)", name)
        name = None
    check = service_check
    override = table.raw("check")
    if override is not None:
        if isinstance(override, dict):
            check = parse_server_check(
                base_check, base_path, override, table.where("check"), table.problems
            )
        else:
            table.table("check")
    table.close()
    if endpoint is None or check is None or key is None:
        return None
    address, written = endpoint
    _check_family(table, key, address, forward)
    port = _table_port(key, forward, written)
    if not isinstance(check, ExecCheck) and check.port is None:
        if written is not None and written != port:
            check = replace(check, port=written)  # probed where it was written
        elif port == 0:
            table.error(
                "address",
                "a real server of a port-0 service needs a port for its check:"
                " write it with the address, or give the check a port",
                table.string("address"),
            )
            return None
    return RealServer(
        address=address,
        port=port,
        forward=forward,
        weight=1 if weight is None else weight,
        u_threshold=u_threshold,
        l_threshold=l_threshold,
        tun_type=tun_type or TunnelType.IPIP,
        tun_port=tun_port or 0,
        tun_flags=tun_flags or TunnelFlags.NOCSUM,
        check=check,
        name=name,
    )


def _sorry_server(
    table: Table, key: ServiceKey | None, real_servers: tuple[RealServer, ...]
) -> SorryServer | None:
    sorry = table.table("sorry_server")
    if sorry is None:
        return None
    endpoint = _endpoint_of(sorry, key)
    forward = _default(sorry.choice("forward", _FORWARDS), Forward.ROUTE)
    weight = sorry.integer("weight", 0, MAX_WEIGHT)
    sorry.close()
    if endpoint is None or key is None:
        return None
    address, written = endpoint
    _check_family(sorry, key, address, forward)
    port = _table_port(key, forward, written)
    if any((rs.address, rs.port) == (address, port) for rs in real_servers):
        sorry.error(
            "address",
            f"is also a real server of this service ({endpoint_text(address, port)} in the table)",
            sorry.string("address"),
        )
    return SorryServer(address, port, forward, 1 if weight is None else weight)


def _default(value: T | None, default: T) -> T:
    return default if value is None else value
