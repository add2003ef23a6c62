"""keepalived's IPVS side (director.keepalived.model) into director's TOML.

Defaults are resolved as keepalived 2.2.7 resolves them
(check_data.c validate_check_config: a checker's setting, else its real
server's, else its virtual server's, else the checker type's default), then
mapped to director's keys (docs/config.md). Where director cannot say what
keepalived said, or says it with another meaning, a Note is written as a
comment at that place in the output and returned for the caller to list.

The timing of a check, as bench/README.md's "Equivalent check settings":
keepalived checks every delay_loop; a failed check of an up server is retried
`retry` times, delay_before_retry apart, and the server goes down when all
fail; one good check brings it back. So interval = delay_loop, timeout =
connect_timeout, fall = retry + 1, rise = 1. Without alpha, keepalived puts
a real server in the table at start before any check, as director's
`initial = "up"` does; with alpha it waits for a passed check, director's
default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address
from typing import Any

from director.keepalived.lexer import Location
from director.keepalived.model import (
    EVENT_CHECKERS,
    Checker,
    Forwarding,
    GroupEntry,
    IPAddress,
    KeepalivedConfig,
    Note,
    Notes,
    RealServer,
    Ssl,
    SyncDaemon,
    VirtualServer,
)
from director.keepalived.writer import Comment, Table

_FORWARD = {"NAT": "masq", "DR": "route", "TUN": "tunnel"}
_DEFAULT_RETRY = {"DNS_CHECK": 3, "MISC_CHECK": 0}  # others 1 (check_api.c queue_checker)
_DEFAULT_DELAY_BEFORE_RETRY = {"HTTP_GET": 3.0, "SSL_GET": 3.0}  # DNS_CHECK: delay_loop; others 1
_NESTED_MAX = 64  # reply bytes matched as a prefix either way; longer: the whole pattern

HEADER = """\
director.toml converted from {source} by `directorctl import-keepalived`.
How director differs from keepalived wherever it is used:
- At start, a real server enters the table at once in both (director: a check's
  `initial = "up"`, written wherever keepalived has no alpha), or, with alpha, when
  its first check passes. keepalived's first check at start has no retries: a server
  that fails it is out at once, where director waits for `fall` failed probes in a row.
- On stop, director leaves the table as it is, so traffic flows through a restart
  (keepalived removes its services; [daemon] flush_on_stop = true does that).
- A check's `rise` is 1 everywhere: keepalived brings a server back after one good check."""


@dataclass(frozen=True)
class _Service:
    """One director virtual service a keepalived virtual_server implies."""

    where: Location
    protocol: str | None  # tcp, udp, sctp; None for a fwmark
    address: IPAddress | None
    port: int
    fwmark: int | None = None
    family: str | None = None
    grouped: bool = False  # from a virtual_server_group


def convert(config: KeepalivedConfig, notes: Notes, source: str) -> list[Table]:
    """The tables of director.toml for `config`; notes get what changed."""
    top = Table(None)
    top.comment(HEADER.format(source=source))
    attached = {id(note) for vs in config.virtual_servers for note in vs.notes}
    for note in notes.items:
        if id(note) not in attached:
            top.comment(str(note))
    tables = [top]
    if config.timeouts is not None:
        tables.append(_ipvs(config, notes))
    if config.sync is not None:
        tables.append(_sync(config.sync, notes))
    for vs in config.virtual_servers:
        tables.extend(_virtual_server(vs, config, notes))
    return tables


def _note(table: Table, notes: Notes, where: Location, text: str) -> None:
    table.comment(str(notes.add(where, text)))


def _ipvs(config: KeepalivedConfig, notes: Notes) -> Table:
    timeouts = config.timeouts
    assert timeouts is not None
    table = Table("ipvs")
    values = {"tcp": timeouts.tcp, "tcpfin": timeouts.tcpfin, "udp": timeouts.udp}
    _note(
        table,
        notes,
        timeouts.where,
        "lvs_timeouts: keepalived puts the kernel's timeouts back when it stops; "
        "director leaves them set",
    )
    table.set("timeouts", values)
    return table


def _sync(sync: SyncDaemon, notes: Notes) -> Table:
    """[ipvs.sync] for lvs_sync_daemon. keepalived runs the master or the
    backup daemon as its VRRP instance is MASTER or BACKUP; director has no
    VRRP, so both run on every director (the kernel allows it: each sends
    its own connections and takes the other's)."""
    table = Table("ipvs.sync")
    _note(
        table,
        notes,
        sync.where,
        f"lvs_sync_daemon: keepalived ran the master or the backup daemon as VRRP "
        f"instance {sync.vrrp_instance} was MASTER or BACKUP; director has no VRRP, "
        'so role = "both" runs both on every director (set "master" or "backup" '
        "for a fixed pair)",
    )
    table.set("role", "both")
    table.set("interface", sync.interface)
    if sync.syncid is None:
        _note(
            table,
            notes,
            sync.where,
            f"lvs_sync_daemon: no id: keepalived used VRRP instance {sync.vrrp_instance}'s "
            "virtual_router_id; set syncid to it on every director (0 here: a backup "
            "takes every master's connections)",
        )
    table.set("syncid", sync.syncid or 0)
    for name in ("group", "port", "ttl"):
        value = getattr(sync, name)
        if value is not None:
            table.set(name, str(value) if name == "group" else value)
    if sync.maxlen is not None:
        if sync.maxlen < 1024:
            _note(
                table,
                notes,
                sync.where,
                f"lvs_sync_daemon: maxlen {sync.maxlen} is below a backup's least (1024), "
                "where the kernel would raise it: left to the kernel's default",
            )
        else:
            table.set("maxlen", sync.maxlen)
    return table


# -- virtual servers


def _virtual_server(vs: VirtualServer, config: KeepalivedConfig, notes: Notes) -> list[Table]:
    if not vs.real_servers:
        notes.add(vs.where, "virtual_server has no real servers: skipped (as keepalived does)")
        return []
    return [
        table
        for service in _services(vs, config, notes)
        for table in _service_tables(vs, service, config.ssl, notes)
    ]


def _services(vs: VirtualServer, config: KeepalivedConfig, notes: Notes) -> list[_Service]:
    protocol = (vs.protocol or "UDP").lower()
    family = _fwmark_family(vs)
    if vs.group is None:
        if vs.fwmark is not None:
            return [_Service(vs.where, None, None, 0, vs.fwmark, family)]
        return [_Service(vs.where, protocol, vs.address, vs.port)]
    entries = config.groups.get(vs.group)
    if entries is None:
        notes.add(vs.where, f"virtual_server group {vs.group}: no such group, skipped")
        return []
    result: list[_Service] = []
    for entry in entries:
        result.extend(_group_services(entry, protocol, family))
    return result


def _group_services(entry: GroupEntry, protocol: str, family: str) -> list[_Service]:
    if entry.fwmark is not None:
        entry_family = {"inet": "ipv4", "inet6": "ipv6"}.get(entry.family or "", family)
        return [_Service(entry.where, None, None, 0, entry.fwmark, entry_family, grouped=True)]
    return [_Service(entry.where, protocol, a, entry.port, grouped=True) for a in entry.addresses]


def _fwmark_family(vs: VirtualServer) -> str:
    """keepalived's vs->af for a fwmark service: ip_family, else the family
    of its first real or sorry server that is not tunnelled (rs_end_handler,
    vs_end_handler), else of the granularity ('.' is IPv4), else IPv4."""
    if vs.ip_family is not None:
        return "ipv6" if vs.ip_family == "inet6" else "ipv4"
    servers: list[tuple[IPAddress, Forwarding | None]] = [
        (rs.address, rs.forwarding) for rs in vs.real_servers
    ]
    if vs.sorry is not None:
        servers.append((vs.sorry.address, vs.sorry.forwarding))
    for address, forwarding in servers:
        if (forwarding or vs.forwarding or Forwarding("NAT")).method != "TUN":
            return f"ipv{address.version}"
    if vs.granularity is not None and "." not in vs.granularity:
        return "ipv6"
    return "ipv4"


def _service_tables(
    vs: VirtualServer, service: _Service, ssl: Ssl | None, notes: Notes
) -> list[Table]:
    """The [[virtual_server]] table and its [[virtual_server.real_server]] tables."""
    table = Table("[virtual_server]")
    label = (
        f"fwmark {service.fwmark}"
        if service.fwmark is not None
        else f"{service.address} {service.port}"
    )
    group = f" (group {vs.group})" if vs.group else ""
    table.comment(f"{vs.where}: virtual_server {label}{group}")
    for note in vs.notes:
        table.comment(str(note))
    if service.fwmark is not None:
        table.set("fwmark", service.fwmark)
        if service.family == "ipv6":
            table.set("family", "ipv6")
        if vs.protocol is not None:
            _note(
                table,
                notes,
                vs.where,
                "protocol: ignored for a fwmark service (as keepalived does)",
            )
    else:
        assert service.address is not None
        if vs.protocol is None:
            _note(table, notes, vs.where, "no protocol: keepalived's default is UDP")
        table.set("protocol", service.protocol)
        table.set("address", _endpoint(service.address, service.port))
    table.set("scheduler", vs.scheduler or "wlc")
    _flags(vs, table, notes)
    _persistence(vs, service, table, notes)
    if vs.one_packet:
        if service.protocol in ("udp", None):
            table.set("one_packet", True)
        else:
            _note(
                table,
                notes,
                vs.where,
                "ops: only for UDP or fwmark services; dropped (as keepalived does)",
            )
    _on_failure(vs, table, notes)
    alpha_at = next((at for rs in vs.real_servers if (at := _alpha_at(vs, rs))), None)
    if alpha_at is not None:
        _note(
            table,
            notes,
            alpha_at,
            "alpha: no `initial` on the checks of servers in alpha mode: director, as "
            "keepalived, puts such a server in the table when its first probe passes; one "
            "already in the table at start director takes out after `fall` failed probes, "
            "keepalived only once it has passed a check and then failed",
        )
    real_servers = [_real_server(vs, rs, service, ssl, notes) for rs in vs.real_servers]
    kept = [rs for rs in real_servers if rs is not None]
    _quorum(vs, service, kept, table, notes)
    _checks(kept, table)
    tables = [table]
    for rs in kept:
        rs_table = Table("[virtual_server.real_server]")
        rs_table.entries.extend(Comment(c) for c in rs.comments)
        rs_table.entries.extend(rs.values.items())
        rs_table.entries.extend(Comment(str(n)) for n in rs.check_notes)
        if rs.check:
            rs_table.set("check", rs.check)
        tables.append(rs_table)
    return tables


def _endpoint(address: IPAddress, port: int | None) -> str:
    text = f"[{address}]" if isinstance(address, IPv6Address) else str(address)
    return text if port is None else f"{text}:{port}"


def _flags(vs: VirtualServer, table: Table, notes: Notes) -> None:
    scheduler = vs.scheduler or "wlc"
    flags = []
    for flag in vs.flags:
        owner = flag.split("-")[0]
        if owner in ("sh", "mh") and owner != scheduler:
            _note(
                table,
                notes,
                vs.where,
                f"{flag}: only for the {owner} scheduler; dropped (as keepalived does)",
            )
        else:
            flags.append(flag)
    if flags:
        table.set("scheduler_flags", list(dict.fromkeys(flags)))


def _persistence(vs: VirtualServer, service: _Service, table: Table, notes: Notes) -> None:
    timeout = vs.persistence_timeout
    if timeout is None and service.fwmark is None and service.port == 0:
        _note(
            table,
            notes,
            vs.where,
            "port 0 needs persistence: keepalived sets persistence_timeout 360",
        )
        timeout = 360
    if timeout is None:
        if vs.pe:
            _note(table, notes, vs.where, "persistence_engine: only with persistence; dropped")
        return
    table.set("persistent", min(timeout, 2678400))
    if vs.granularity is not None:
        prefix = _prefix(vs.granularity, service)
        if prefix is None:
            _note(
                table,
                notes,
                vs.where,
                f"persistence_granularity {vs.granularity}: not a contiguous netmask or prefix "
                "of this service's family; not converted",
            )
        else:
            table.set("persistent_netmask", prefix)
    if vs.pe:
        table.set("pe", vs.pe)


def _prefix(granularity: str, service: _Service) -> int | None:
    ipv6 = (
        service.address is not None and service.address.version == 6
    ) or service.family == "ipv6"
    if ipv6:
        return int(granularity) if granularity.isdigit() and 1 <= int(granularity) <= 128 else None
    try:
        return IPv4Network(f"0.0.0.0/{granularity}").prefixlen
    except ValueError:
        return None


def _on_failure(vs: VirtualServer, table: Table, notes: Notes) -> None:
    inhibits = {rs.inhibit if rs.inhibit is not None else vs.inhibit for rs in vs.real_servers}
    if len(inhibits) > 1:
        _note(
            table,
            notes,
            vs.where,
            "inhibit_on_failure: set for some real servers only; director's on_failure is one "
            f"setting per service: {'weight0' if vs.inhibit else 'remove'} (the virtual server's)",
        )
        inhibit = vs.inhibit
    else:
        inhibit = inhibits.pop()
    if inhibit:
        table.set("on_failure", "weight0")


def _quorum(
    vs: VirtualServer, service: _Service, servers: list[_Converted], table: Table, notes: Notes
) -> None:
    where = vs.quorum_where or vs.where
    if vs.hysteresis:
        _note(
            table,
            notes,
            vs.hysteresis_where or vs.where,
            f"hysteresis {vs.hysteresis}: not converted (director's quorum has no hysteresis)",
        )
    if vs.sorry is None:
        if vs.quorum != 1:
            _note(
                table,
                notes,
                where,
                f"quorum {vs.quorum}: not converted (without a sorry server keepalived's quorum "
                "only runs quorum_up/quorum_down scripts)",
            )
        return
    weights = [int(rs.values["weight"]) for rs in servers]  # type: ignore[call-overload]
    count = _quorum_count(vs.quorum, weights)
    if vs.quorum != 1 or count != 1:
        if len(set(weights)) > 1 or (weights and weights[0] != 1):
            _note(table, notes, where, _quorum_note(vs.quorum, count, weights))
        table.set("quorum", count)
    sorry = vs.sorry
    forwarding = sorry.forwarding or vs.forwarding or Forwarding("NAT")
    port = _server_port(service, forwarding, sorry.port)
    _note(
        table,
        notes,
        sorry.where,
        "sorry_server: keepalived takes every real server out when the quorum is lost; "
        "director adds the sorry server and keeps the ones still up",
    )
    if sorry.inhibit:
        _note(
            table,
            notes,
            sorry.where,
            "sorry_server_inhibit: not converted (director removes the sorry server when the quorum is back)",
        )
    if port is None:
        _note(
            table,
            notes,
            sorry.where,
            "sorry_server: no port director can use (port 0); not converted",
        )
        return
    if sorry.port not in (None, 0, port):
        _note(
            table,
            notes,
            sorry.where,
            f"sorry_server port {sorry.port}: keepalived uses the virtual service's port "
            f"{port} with {forwarding.method}, as director does",
        )
    values: dict[str, object] = {"address": _endpoint(sorry.address, port)}
    values.update(_forwarding_keys(forwarding))
    table.set("sorry_server", values)


def _quorum_note(quorum: int, count: int, weights: list[int]) -> str:
    """keepalived's weight quorum against director's count of servers: when
    the two agree, and when they do not, with an example. `count` is the
    fewest servers that can make the weight (the heaviest first), so fewer
    never do in keepalived either: director is never the stricter one."""
    head = (
        f"quorum {quorum}: keepalived needs the weights of the live real servers to add up "
        f"to {quorum}, director counts live servers: quorum = {count}"
    )
    if len(set(weights)) == 1:
        return (
            f"{head}; every server weighs {weights[0]}, so the two agree (while the weights "
            "stay equal: a weight changed with -e or by a dynamic check is not counted)"
        )
    light = sorted(weights)[:count]
    if sum(light) >= quorum:
        return (
            f"{head}; any {count} of these servers (weights {sorted(weights)}) weigh at least "
            f"{quorum}, so the two agree"
        )
    return (
        f"{head}, the fewest that can weigh {quorum} (weights {sorted(weights)}). They differ "
        f"when light servers are the ones up: {count} of weights {light} weigh {sum(light)}, "
        f"below {quorum}: keepalived has lost the quorum (sorry server in, every real server "
        "out), director has not (the live servers stay, no sorry server). A higher quorum "
        "makes director the stricter one instead"
    )


def _quorum_count(quorum: int, weights: list[int]) -> int:
    """Servers up that make keepalived's weight quorum, with the smallest
    weights counted first when they differ (a lower bound), within
    1..len(weights) (keepalived lowers a quorum above the total weight)."""
    if not weights:
        return 1
    total = 0
    for i, weight in enumerate(sorted(weights, reverse=True), start=1):
        total += weight
        if total >= quorum:
            return max(1, i)
    return len(weights)


# -- real servers


@dataclass
class _Converted:
    values: dict[str, object]
    comments: list[str]
    check: dict[str, object]
    check_notes: list[Note]


def _kernel_port(service: _Service, forwarding: Forwarding, port: int) -> int:
    """The port keepalived gives a real or sorry server in the kernel, 0 for
    none (check_data.c validate_check_config, ipvswrapper.c ipvs_cmd and
    ipvs_group_cmd): with NAT its own (a lone service's when it has none);
    without NAT the service's, 0 for a fwmark service."""
    if forwarding.method == "NAT":
        if service.fwmark is None and not service.grouped:
            return port or service.port
        return port
    return 0 if service.fwmark is not None else service.port


def _server_port(service: _Service, forwarding: Forwarding, port: int) -> int | None:
    """_kernel_port, or the configured port where that is 0 (director needs one)."""
    return _kernel_port(service, forwarding, port) or port or None


def _forwarding_keys(forwarding: Forwarding) -> dict[str, object]:
    values: dict[str, object] = {"forward": _FORWARD[forwarding.method]}
    if forwarding.method == "TUN":
        if forwarding.tun_type not in (None, "ipip"):
            values["tun_type"] = forwarding.tun_type
        if forwarding.tun_port is not None:
            values["tun_port"] = forwarding.tun_port
        if forwarding.csum not in (None, "nocsum"):
            values["tun_checksum"] = forwarding.csum
    return values


def _real_server(
    vs: VirtualServer, rs: RealServer, service: _Service, ssl: Ssl | None, notes: Notes
) -> _Converted | None:
    comments: list[str] = []
    forwarding = rs.forwarding or vs.forwarding or Forwarding("NAT")

    def note(text: str) -> None:
        comments.append(str(notes.add(rs.where, text)))

    kernel_port = _kernel_port(service, forwarding, rs.port)
    port = _server_port(service, forwarding, rs.port)
    checker = rs.checkers[0] if rs.checkers else None
    if port is None and checker is not None and checker.connect_port is not None:
        port = checker.connect_port
    if port is None:
        notes.add(
            rs.where,
            "real_server: keepalived puts it in with port 0, which director "
            "cannot; no port given, nor a connect_port: skipped",
        )
        return None
    if kernel_port == 0:
        note(
            f"real_server: keepalived puts it in with port 0 (the kernel shows :0); director "
            f"needs a port: {port}"
            + (
                " (direct routing and tunnels keep the client's port)"
                if forwarding.method != "NAT"
                else ""
            )
        )
    elif rs.port not in (0, kernel_port):
        note(
            f"real_server port {rs.port}: keepalived uses the virtual service's port "
            f"{kernel_port} with {forwarding.method}, as director does"
        )
    if (
        rs.port == 0
        and checker is not None
        and checker.connect_port is None
        and (checker.kind not in ("MISC_CHECK", "PING_CHECK", "BFD_CHECK", "FILE_CHECK"))
    ):
        note(
            f"real_server without a port: keepalived's {checker.kind} connects to port 0 "
            f"(it copies the address before the port is filled in) and fails; director's "
            f"check connects to {port}"
        )
    values: dict[str, object] = {"address": _endpoint(rs.address, port)}
    values.update(_forwarding_keys(forwarding))
    values["weight"] = rs.weight if rs.weight is not None else vs.weight
    lower = rs.lthreshold
    if lower > rs.uthreshold:
        comments.append(
            str(
                notes.add(
                    rs.where,
                    (
                        f"lthreshold {lower} above uthreshold {rs.uthreshold}: the kernel refuses it; dropped"
                    ),
                )
            )
        )
        lower = 0
    if rs.uthreshold or lower:
        values["thresholds"] = {"upper": rs.uthreshold, "lower": lower}
    check, check_comments = _check(vs, rs, port, ssl, notes)
    return _Converted(values, comments, check, check_comments)


# -- checks


def _checks(servers: list[_Converted], table: Table) -> None:
    """One check for the service when every real server has the same one
    (each note's text once, with every line it is about), else a check on
    each real server."""
    if servers and all(rs.check == servers[0].check for rs in servers):
        lines: dict[str, list[Location]] = {}
        for rs in servers:
            for note in rs.check_notes:
                lines.setdefault(note.text, []).append(note.where)
        for text, places in lines.items():
            also = ", ".join(str(p.line) for p in places[1:])
            table.comment(f"{places[0]}: {text}" + (f" (also line {also})" if also else ""))
        table.set("check", servers[0].check)
        for rs in servers:
            rs.check = {}
            rs.check_notes = []


def _check(
    vs: VirtualServer, rs: RealServer, port: int, ssl: Ssl | None, notes: Notes
) -> tuple[dict[str, object], list[Note]]:
    comments: list[Note] = []

    def note(where: Location, text: str) -> None:
        comments.append(notes.add(where, text))

    for extra in rs.checkers[1:]:
        note(
            extra.where,
            (
                f"{extra.kind}: not converted (director has one check per real server; "
                f"keepalived needs all of them up, this one and the {rs.checkers[0].kind} above)"
            ),
        )
    delay_loop = rs.delay_loop or vs.delay_loop
    up = not _alpha(vs, rs)
    if not rs.checkers:
        note(
            rs.where,
            "real_server without a checker: keepalived keeps it up; so does "
            "an exec check of `true`",
        )
        return _timed({"type": "exec", "command": ["true"]}, delay_loop, 1.0, 1, up), comments
    checker = rs.checkers[0]
    if checker.kind in EVENT_CHECKERS:
        note(checker.where, _event_checker_note(checker))
        return _timed({"type": "exec", "command": ["true"]}, delay_loop, 1.0, 1, up), comments
    delay_loop = checker.delay_loop or delay_loop
    retry = _first(checker.retry, rs.retry, vs.retry, _DEFAULT_RETRY.get(checker.kind, 1))
    delay_before_retry = _first(
        checker.delay_before_retry,
        rs.delay_before_retry,
        vs.delay_before_retry,
        _DEFAULT_DELAY_BEFORE_RETRY.get(
            checker.kind, delay_loop if checker.kind == "DNS_CHECK" else 1.0
        ),
    )
    timeout = _first(checker.connect_timeout, rs.connect_timeout, vs.connect_timeout)
    if checker.kind == "MISC_CHECK":
        timeout = float(checker.misc_timeout) if checker.misc_timeout else vs.delay_loop
    spacing = (
        f"; keepalived retries {delay_before_retry:g}s apart, director probes every "
        f"{delay_loop:g}s: down after about {retry * delay_loop:g}s of failures, not "
        f"{retry * delay_before_retry:g}s"
        if retry and delay_before_retry != delay_loop
        else ""
    )
    note(
        checker.where,
        (
            f"{checker.kind}: retry {retry} -> fall = {retry + 1} (keepalived's retries follow "
            f"the first failure), delay_loop -> interval, rise = 1{spacing}"
        ),
    )
    check = _check_keys(vs, rs, checker, port, timeout, note)
    if checker.kind == "SSL_GET" and ssl is not None:
        check.update(_ssl(ssl, note))
    return _timed(check, delay_loop, timeout, retry + 1, up), comments


def _alpha(vs: VirtualServer, rs: RealServer) -> bool:
    """Whether keepalived keeps `rs` out of the table at start until its
    checks pass: when any of its checkers is in alpha mode, the checker's
    alpha, else its real server's, else its virtual server's (check_data.c
    validate_check_config; a FILE_CHECK never is, check_file.c). Without
    checkers it is in at once (ipwrapper.c init_service_rs)."""
    return _alpha_at(vs, rs) is not None


def _alpha_at(vs: VirtualServer, rs: RealServer) -> Location | None:
    """Where the alpha that keeps `rs` out at start is set (see _alpha): the
    block of the first checker in alpha mode, or of its real server, or of
    its virtual server, whichever says so for it; None when none does."""
    for checker in rs.checkers:
        if checker.kind == "FILE_CHECK":
            continue
        said = ((checker.alpha, checker.where), (rs.alpha, rs.where), (vs.alpha, vs.where))
        alpha, where = next((on, at) for on, at in said if on is not None)  # vs's is set
        if alpha:
            return where
    return None


def _event_checker_note(checker: Checker) -> str:
    """A BFD_CHECK or FILE_CHECK, reported whole: what keepalived does with
    it (at once, on a change: no delay_loop or retry) and what the converted
    server gets instead."""
    key = EVENT_CHECKERS[checker.kind]
    follows = f" ({key} {checker.follows})" if checker.follows else ""
    if checker.kind == "BFD_CHECK":
        what = (
            "director has no BFD; keepalived takes the server out as soon as that BFD "
            "session goes down and puts it back when it comes up"
        )
    else:
        what = (
            "director does not track files; keepalived reads the file's value as soon as "
            "it changes (inotify) and sets the server's state from it at once, with no "
            "delay_loop, retry or connect_timeout; an exec check that reads the file would "
            "see a change only at its next probe, up to interval later"
        )
    return (
        f"{checker.kind}{follows}: not converted ({what}); the server is kept up by an exec "
        "check of `true`, so director never takes it out"
    )


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _timed(
    check: dict[str, object], interval: float, timeout: float, fall: int, up: bool
) -> dict[str, object]:
    """The check's timing keys; `up`: in service before its first probe, as
    keepalived puts a server without alpha in the table at start."""
    timing: dict[str, object] = {
        "interval": _seconds(interval),
        "timeout": _seconds(timeout),
        "rise": 1,
        "fall": fall,
    }
    if up:
        timing["initial"] = "up"
    return {**check, **timing}


def _seconds(value: float) -> int | float:
    return int(value) if value == int(value) else value


def _check_keys(
    vs: VirtualServer,
    rs: RealServer,
    checker: Checker,
    port: int,
    timeout: float,
    note: Any,
) -> dict[str, object]:
    kind = checker.kind
    check: dict[str, object] = {}
    target: dict[str, object] = {}
    if checker.connect_port is not None and checker.connect_port != port:
        target["port"] = checker.connect_port
    if checker.connect_ip is not None and checker.connect_ip != rs.address:
        target["address"] = str(checker.connect_ip)
    if kind == "TCP_CHECK":
        return {"type": "tcp", **target}
    if kind in ("HTTP_GET", "SSL_GET"):
        return _http(vs, rs, checker, target, note)
    if kind == "DNS_CHECK":
        check = {"type": "dns", **target}
        if checker.dns_name is not None:
            check["query_name"] = checker.dns_name
        if checker.dns_type is not None:
            check["query_type"] = checker.dns_type.upper()
        return check
    if kind == "UDP_CHECK":
        return _udp(checker, target, note)
    if kind == "MISC_CHECK":
        return _misc(rs, checker, vs, note)
    if kind == "SMTP_CHECK":
        note(
            checker.where,
            "SMTP_CHECK: converted to a TCP connect check (director does not speak SMTP)",
        )
        return {"type": "tcp", **target}
    if kind == "PING_CHECK":
        address = str(checker.connect_ip or rs.address)
        note(checker.where, "PING_CHECK: converted to an exec check of ping(8)")
        return {
            "type": "exec",
            "command": [
                "ping",
                "-n",
                "-q",
                "-c",
                "1",
                "-W",
                str(max(1, math.ceil(timeout))),
                address,
            ],
        }
    note(
        checker.where,
        f"{kind}: not converted (director has no {kind}); the server is kept up by an exec check of `true`",
    )
    return {"type": "exec", "command": ["true"]}


def _http(
    vs: VirtualServer, rs: RealServer, checker: Checker, target: dict[str, object], note: Any
) -> dict[str, object]:
    url = checker.urls[0]
    check: dict[str, object] = {"type": "https" if checker.kind == "SSL_GET" else "http", **target}
    for extra in checker.urls[1:]:
        note(
            extra.where,
            (
                f"url {extra.path}: not converted (director's check asks one path; keepalived "
                f"needs every url to pass, this one and {url.path})"
            ),
        )
    check["path"] = url.path
    host = url.virtualhost or checker.virtualhost or rs.virtualhost or vs.virtualhost
    if host is not None:
        check["host"] = host
    if url.statuses and url.statuses != [(200, 299)]:
        check["expect_status"] = [
            low if low == high else f"{low}-{high}" for low, high in url.statuses
        ]
    if url.digest is not None:
        note(
            url.where,
            (
                f"digest {url.digest}: not converted (director cannot compare the body's MD5); "
                "the check tests the status only; expect_body can test the body's text"
            ),
        )
    if url.regex is not None:
        check["expect_body"] = url.regex
        note(
            url.regex_where or url.where,
            (
                "regex: PCRE2 in keepalived, the regex module (Python's syntax) in director: "
                "check that the pattern means the same"
            ),
        )
    if checker.kind == "SSL_GET":
        check["verify_tls"] = False  # keepalived never verifies the server's certificate
    return check


def _udp(checker: Checker, target: dict[str, object], note: Any) -> dict[str, object]:
    check: dict[str, object] = {"type": "udp", **target}
    if checker.payload is not None:
        check["payload"] = "hex:" + checker.payload.hex()
    else:
        note(
            checker.where,
            "UDP_CHECK without payload: keepalived sends random bytes, director an empty datagram",
        )
    if checker.require_reply:
        if checker.reply is None and (checker.min_reply_length, checker.max_reply_length) == (
            0,
            255,
        ):
            check["silence"] = "down"
        else:
            check["expect"] = _reply_pattern(checker, note)
    elif (checker.min_reply_length, checker.max_reply_length) != (0, 255):
        note(
            checker.where,
            "min_reply_length/max_reply_length: keepalived checks them only with require_reply; not converted",
        )
    return check


def _reply_pattern(checker: Checker, note: Any) -> str:
    """A regex (on the reply read as Latin-1) for keepalived's reply test
    (check_udp.c check_udp_reply): a length within min..max, and the first
    min(len, pattern) bytes equal to the pattern's (X: any nibble)."""
    low, high = checker.min_reply_length, checker.max_reply_length
    length = f"(?=.{{{low},{high}}}\\Z)"
    if checker.reply is None:
        return f"(?s)\\A{length}"
    pairs = [checker.reply[i : i + 2] for i in range(0, len(checker.reply), 2)]
    parts = [_byte_class(pair) for pair in pairs]
    whole = "".join(parts)
    if len(parts) > _NESTED_MAX:
        note(
            checker.where,
            (
                f"require_reply: a reply shorter than the {len(parts)} bytes given passes keepalived "
                "when it matches as far as it goes; director requires them all"
            ),
        )
        return f"(?s)\\A{length}{whole}"
    nested = ""
    for part in reversed(parts):
        nested = f"(?:{part}{nested})?"
    return f"(?s)\\A{length}(?:{whole}|{nested}\\Z)"


def _byte_class(pair: str) -> str:
    high, low = pair[0], pair[1]
    if high == "x" and low == "x":
        return "."
    values = [
        int(first + second, 16)
        for first in ("0123456789ABCDEF" if high == "x" else high)
        for second in ("0123456789ABCDEF" if low == "x" else low)
    ]
    if len(values) == 1:
        return _char(values[0])
    return "[" + "".join(_char(v) for v in values) + "]"


def _char(value: int) -> str:
    return f"\\x{value:02x}"


def _misc(rs: RealServer, checker: Checker, vs: VirtualServer, note: Any) -> dict[str, object]:
    command = list(checker.misc_path)
    check: dict[str, object] = {"type": "exec"}
    if checker.misc_dynamic:
        weight = rs.weight if rs.weight is not None else vs.weight
        # keepalived: exit 0 is up at the configured weight, 1 is down, 2..255
        # is up at weight status - 2 (check_misc.c misc_check_child_thread).
        script = (
            f'"$0" "$@"; s=$?; case $s in 0) echo {weight};; 1) exit 1;; *) echo $((s - 2));; esac'
        )
        command = ["/bin/sh", "-c", script, *command]
        check["dynamic_weight"] = True
        note(
            checker.where,
            (
                "misc_dynamic: director reads the weight from the command's last output line; "
                "the command runs under /bin/sh, which prints it from the exit status as keepalived "
                "reads it (0: the configured weight, 1: down, 2..255: status - 2); a script killed by "
                "a signal is read as a weight there, where keepalived counts a failure"
            ),
        )
    check["command"] = command
    if checker.user is not None:
        check["user"] = checker.user
    else:
        note(
            checker.where,
            (
                "MISC_CHECK without user: keepalived runs it as keepalived_script when that user "
                "exists, director as its own user (root under the shipped unit)"
            ),
        )
    return check


def _ssl(ssl: Ssl, note: Any) -> dict[str, object]:
    """The client certificate of keepalived's SSL block, for an https check."""
    keys: dict[str, object] = {}
    if ssl.certificate is not None:
        keys["cert_file"] = ssl.certificate
        if ssl.key is not None:
            keys["key_file"] = ssl.key
    if ssl.ca is not None:
        note(
            ssl.where,
            (
                f"SSL ca {ssl.ca}: not converted (keepalived loads it but never verifies the "
                "server's certificate; set verify_tls = true and ca_file to verify)"
            ),
        )
    if ssl.password is not None:
        note(ssl.where, "SSL password: not converted (director needs an unencrypted key_file)")
    if any(not str(path).startswith("/") for path in keys.values()):
        note(ssl.where, "SSL certificate/key: director needs absolute paths")
    return keys
