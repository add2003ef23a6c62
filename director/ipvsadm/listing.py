"""ipvsadm 1.31's output, byte for byte, from the model's values.

Pure functions returning the text ipvsadm prints on stdout (errors are in
`kernel_error`). Host and port names come from a `Names` (numeric by default,
the same as ipvsadm when no name resolves).
"""

from __future__ import annotations

from _socket import inet_ntoa
from collections.abc import Callable, Sequence
from typing import TypeVar

from director.ipvs.errors import IPVSError
from director.ipvs.facts import KERNEL_PROTOCOLS, PROTOCOL_NAMES
from director.ipvs.model import (
    AF_INET6,
    Connection,
    DestinationEntry,
    Forward,
    Info,
    IPAddress,
    Protocol,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelType,
    full_netmask,
    scheduler_flag_names,
)
from director.ipvsadm.commands import PLAIN, ListFormat
from director.ipvsadm.libc import inet_ntop
from director.ipvsadm.names import NUMERIC, Names

IPVSADM_VERSION = "v1.31 2019/12/24"
IPVS_COMPILED_VERSION = "1.2.1"
SCHEDULERS = "rr|wrr|lc|wlc|lblc|lblcr|dh|sh|sed|nq|fo|ovf|mh"
PE_LIST = "sip"

_PROTOCOL_NAMES = PROTOCOL_NAMES
_FORWARD_NAMES = {
    Forward.MASQ: "Masq",
    Forward.LOCAL: "Local",
    Forward.TUNNEL: "Tunnel",
    Forward.ROUTE: "Route",
}
_FORWARD_SWITCHES = {
    Forward.MASQ: "-m",
    Forward.TUNNEL: "-i",
    Forward.LOCAL: "-g",
    Forward.ROUTE: "-g",
}
_TUNNEL_NAMES = {TunnelType.IPIP: "ipip", TunnelType.GUE: "gue", TunnelType.GRE: "gre"}
_TUNNEL_FLAGS = ("-c", "+c", "r+c")
_TUNNEL_FLAG_OPTIONS = ("--tun-nocsum", "--tun-csum", "--tun-remcsum")
# What ipvsadm 1.31 prints for a value a newer kernel may send and it does not
# know: printf("%s", NULL) of glibc for a forwarding method (fwd_name() and
# fwd_switch() return NULL), "n/a" for tunnel information.
_UNKNOWN_FORWARD = "(null)"
_SCHED_FLAG_BITS = ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3


def version() -> str:
    """-v"""
    return f"ipvsadm {IPVSADM_VERSION} (compiled with popt and IPVS v{IPVS_COMPILED_VERSION})\n"


def header(info: Info) -> str:
    return f"IP Virtual Server version {info.version_string} (size={info.conn_tab_size})\n"


def services(
    entries: Sequence[ServiceEntry],
    info: Info,
    format: ListFormat = PLAIN,
    names: Names = NUMERIC,
) -> str:
    """ipvsadm -L (and ipvsadm alone): header, title and every service."""
    ordered = entries if format.nosort else sort_services(entries)
    body = "".join(_service(entry, format, names, rule=False) for entry in ordered)
    return header(info) + title(format) + body


def service(entry: ServiceEntry, format: ListFormat = PLAIN, names: Names = NUMERIC) -> str:
    """ipvsadm -L VIRTUAL-SERVICE: title and that one service, no header."""
    return title(format) + _service(entry, format, names, rule=False)


def find_service(entries: Sequence[ServiceEntry], key: ServiceKey) -> ServiceEntry | None:
    """The entry `ipvsadm -L VIRTUAL-SERVICE` shows, as the kernel looks it up
    (a fwmark service by mark and family only)."""
    for entry in entries:
        candidate = entry.service.key
        if key.fwmark or candidate.fwmark:
            if (candidate.fwmark, candidate.family) == (key.fwmark, key.family):
                return entry
        elif candidate == key:
            return entry
    return None


def save(entries: Sequence[ServiceEntry], numeric: bool = False, names: Names = NUMERIC) -> str:
    """ipvsadm -S [-n]: the rules that rebuild the table, one per line."""
    format = ListFormat(numeric=numeric)
    return "".join(_service(entry, format, names, rule=True) for entry in sort_services(entries))


def title(format: ListFormat) -> str:
    first = f"{'Prot LocalAddress:Port':<33}"
    if format.stats:
        columns = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
        return first + "".join(f" {c:>8}" for c in columns) + "\n  -> RemoteAddress:Port\n"
    if format.rate:
        columns = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")
        return first + "".join(f" {c:>8}" for c in columns) + "\n  -> RemoteAddress:Port\n"
    if format.thresholds:
        thresholds = ("Uthreshold", "Lthreshold", "ActiveConn", "InActConn")
        return first + "".join(f" {c:<10}" for c in thresholds) + "\n  -> RemoteAddress:Port\n"
    if format.persistent_conn:
        return (
            f"{first} {'Weight':<9} {'PersistConn':<11} {'ActiveConn':<10} {'InActConn':<10}\n"
            "  -> RemoteAddress:Port\n"
        )
    if format.tun_info:
        return (
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward TunnelInfo    Weight ActiveConn InActConn\n"
        )
    return (
        "Prot LocalAddress:Port Scheduler Flags\n"
        "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    )


def timeouts(value: Timeouts) -> str:
    """ipvsadm -L --timeout"""
    return f"Timeout (tcp tcpfin udp): {value.tcp} {value.tcp_fin} {value.udp}\n"


def daemons(values: Sequence[SyncDaemon]) -> str:
    """ipvsadm -L --daemon"""
    out = ""
    for daemon in values:
        if daemon.state & SyncState.MASTER:
            kind = "master"
        elif daemon.state & SyncState.BACKUP:
            kind = "backup"
        else:
            continue
        out += f"{kind} sync daemon (mcast={daemon.mcast_ifn}, syncid={daemon.syncid}"
        if daemon.sync_maxlen:
            out += f", maxlen={daemon.sync_maxlen}"
        if daemon.mcast_group is not None:
            out += f", group={inet_ntop(daemon.mcast_group)}"
        if daemon.mcast_port:
            out += f", port={daemon.mcast_port}"
        if daemon.mcast_ttl:
            out += f", ttl={daemon.mcast_ttl}"
        out += ")\n"
    return out


def connections(
    values: Sequence[Connection], format: ListFormat = PLAIN, names: Names = NUMERIC
) -> str:
    """ipvsadm -L -c [-n] [--persistent-conn]"""
    out = "IPVS connection entries\n"
    if format.persistent_conn:
        out += (
            f"pro expire {'state':<11} {'source':<18} {'virtual':<18} {'destination':<18}"
            f" {'pe name':<16} pe_data\n"
        )
    else:
        out += f"pro expire {'state':<11} {'source':<18} {'virtual':<18} destination\n"
    for conn in values:
        protocol = conn.protocol.lower() if conn.protocol in KERNEL_PROTOCOLS else None
        client = _addrport(conn.client, conn.client_port, protocol, format.numeric, names)
        virtual = _addrport(conn.virtual, conn.virtual_port, protocol, format.numeric, names)
        dest = _addrport(conn.destination, conn.destination_port, protocol, format.numeric, names)
        expire = f"{conn.expires // 60:02d}:{conn.expires % 60:02d}"
        if format.persistent_conn and conn.pe_name and conn.pe_data:
            out += (
                f"{conn.protocol:<3} {expire:<6} {conn.state:<11} {client:<18} {virtual:<18}"
                f" {dest:<16} {conn.pe_name:<18} {conn.pe_data}\n"
            )
        else:
            out += (
                f"{conn.protocol:<3} {expire:<6} {conn.state:<11} {client:<18} {virtual:<18}"
                f" {dest}\n"
            )
    return out


def kernel_error(error: IPVSError) -> str:
    """What ipvsadm writes to stderr when the kernel refuses a command (it
    then exits with status 255; 1 when a listing fails)."""
    return f"{error.message}\n"


def largenum(value: int, exact: bool) -> str:
    """print_largenum(): 9 columns, K/M/G/T-scaled unless --exact."""
    if exact:
        digits = str(value)
        return f"{value:>{9 if len(digits) <= 8 else len(digits) + 1}}"
    if value < 100_000_000:
        return f"{value:9d}"
    if value < 1_000_000_000:
        return f"{value // 1000:8d}K"
    if value < 100_000_000_000:
        return f"{value // 1_000_000:8d}M"
    if value < 100_000_000_000_000:
        return f"{value // 1_000_000_000:8d}G"
    return f"{value // 1_000_000_000_000:8d}T"


def _addrport(
    address: IPAddress, port: int, protocol: str | None, numeric: bool, names: Names
) -> str:
    """addrport_to_anyname(), cut at 59 characters as its buffer does."""
    if numeric and address.version == 4:
        # inet_ntop's text, without ipaddress's str() (a third of a 10,000
        # destination -Ln's CPU); at most 21 characters, under the cut.
        return f"{inet_ntoa(address.packed)}:{port}"
    host = inet_ntop(address)
    if numeric:
        port_text = str(port)
    else:
        host = names.host_name(address) or host
        port_text = (protocol and names.service_name(port, protocol)) or str(port)
    if address.version == 6:
        host = f"[{host}]"
    return f"{host}:{port_text}"[:59]


def signed_fwmark(mark: int) -> int:
    """A firewall mark (0..2**32-1) as ipvsadm 1.31 prints it: with "%d"
    (print_service_entry() in ipvsadm.c, in -L and -S alike), so a mark of
    2**31 or more comes out negative. (ipvsadm fixed this after 1.31.)"""
    return mark - 2**32 if mark >= 2**31 else mark


def _sched_flags(scheduler: str, flags: ServiceFlags) -> str:
    return ",".join(scheduler_flag_names(scheduler, flags))


def _netmask_text(family: int, netmask: int) -> str | None:
    if netmask == full_netmask(family):
        return None
    if family == AF_INET6:
        return str(netmask)
    return ".".join(str((netmask >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def _service_name(entry: ServiceEntry, format: ListFormat, names: Names, rule: bool) -> str:
    key = entry.service.key
    v6 = key.family == AF_INET6
    if key.is_fwmark:
        mark = signed_fwmark(key.fwmark)
        if rule:
            return f"-f {mark}" + (" -6" if v6 else "")
        return f"FWM  {mark}" + (" IPv6" if v6 else "")
    assert key.address is not None and key.protocol is not None
    protocol = _PROTOCOL_NAMES.get(key.protocol)
    vname = _addrport(key.address, key.port, protocol, format.numeric, names)
    if rule:
        switch = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
        return f"{switch.get(key.protocol, '--xxx-service')} {vname}"
    name = f"{key.protocol.name if protocol else '?':<4} {vname}"
    return name if v6 else name[:33]


def _service(entry: ServiceEntry, format: ListFormat, names: Names, rule: bool) -> str:
    svc = entry.service
    name = _service_name(entry, format, names, rule)
    if rule:
        line = f"-A {name} -s {svc.scheduler}"
        if svc.persistent:
            line += f" -p {svc.timeout}"
            mask = _netmask_text(svc.key.family, svc.netmask)
            if mask is not None:
                line += f" -M {mask}"
        if svc.pe_name:
            line += f" --pe {svc.pe_name}"
        if svc.flags & ServiceFlags.ONEPACKET:
            line += " -o"
        if svc.flags & _SCHED_FLAG_BITS:
            line += f" -b {_sched_flags(svc.scheduler, svc.flags)}"
    elif format.stats or format.rate:
        s = entry.stats
        values = (
            (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
            if format.stats
            else (s.cps, s.inpps, s.outpps, s.inbps, s.outbps)
        )
        line = f"{name:<33}" + "".join(largenum(v, format.exact) for v in values)
    else:
        line = f"{name} {svc.scheduler}"
        if svc.flags & _SCHED_FLAG_BITS:
            line += f" ({_sched_flags(svc.scheduler, svc.flags)})"
        if svc.persistent:
            line += f" persistent {svc.timeout}"
            mask = _netmask_text(svc.key.family, svc.netmask)
            if mask is not None:
                line += f" mask {mask}"
            if svc.pe_name:
                line += f" pe {svc.pe_name}"
        if svc.flags & ServiceFlags.ONEPACKET:
            line += " ops"
    out = line + "\n"
    dests = entry.destinations if format.nosort else sort_destinations(entry.destinations)
    for dest in dests:
        out += _destination(name, dest, svc.key, format, names, rule)
    return out


def _destination(
    service_name: str,
    entry: DestinationEntry,
    key: ServiceKey,
    format: ListFormat,
    names: Names,
    rule: bool,
) -> str:
    d = entry.destination
    protocol = _PROTOCOL_NAMES.get(key.protocol) if key.protocol is not None else None
    dname = _addrport(d.address, d.port, protocol, format.numeric, names)
    if rule:
        switch = _FORWARD_SWITCHES.get(d.forward, _UNKNOWN_FORWARD)
        line = f"-a {service_name} -r {dname} {switch} -w {d.weight}"
        if d.forward is Forward.TUNNEL and d.tun_type in _TUNNEL_NAMES:
            line += f" --tun-type {_TUNNEL_NAMES[d.tun_type]}"
            if d.tun_type is TunnelType.GUE:
                line += f" --tun-port {d.tun_port}"
            if d.tun_type is not TunnelType.IPIP:
                line += f" {_tunnel_flag(d.tun_flags, _TUNNEL_FLAG_OPTIONS)}"
        return line + "\n"
    if d.address.version == 4:
        dname = dname[:28]
    s = entry.stats
    exact = format.exact
    if format.stats:
        values = (s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes)
        return f"  -> {dname:<28}" + "".join(largenum(v, exact) for v in values) + "\n"
    if format.rate:
        return (
            f"  -> {dname:<28} {s.cps:8d} {s.inpps:8d} {s.outpps:8d}"
            + largenum(s.inbps, exact)
            + largenum(s.outbps, exact)
            + "\n"
        )
    if format.thresholds:
        return (
            f"  -> {dname:<28} {d.u_threshold:<10} {d.l_threshold:<10}"
            f" {entry.active_conns:<10} {entry.inact_conns:<10}\n"
        )
    if format.persistent_conn:
        return (
            f"  -> {dname:<28} {d.weight:<9} {entry.persist_conns:<11}"
            f" {entry.active_conns:<10} {entry.inact_conns:<10}\n"
        )
    forward = _FORWARD_NAMES.get(d.forward, _UNKNOWN_FORWARD)
    if format.tun_info:
        return (
            f"  -> {dname:<28} {forward:<7} {_tunnel_info(entry):<13} {d.weight:<6}"
            f" {entry.active_conns:<10} {entry.inact_conns:<10}\n"
        )
    return (
        f"  -> {dname:<28} {forward:<7} {d.weight:<6}"
        f" {entry.active_conns:<10} {entry.inact_conns:<10}\n"
    )


def _tunnel_info(entry: DestinationEntry) -> str:
    d = entry.destination
    if d.forward is not Forward.TUNNEL or d.tun_type not in _TUNNEL_NAMES:
        return "n/a"
    if d.tun_type is TunnelType.IPIP:
        return "ipip"
    flags = _tunnel_flag(d.tun_flags, _TUNNEL_FLAGS)
    if d.tun_type is TunnelType.GUE:
        return f"gue:{d.tun_port}:{flags}"[:15]
    return f"gre:{flags}"


def _tunnel_flag(flags: int, names: tuple[str, ...]) -> str:
    """ipvsadm indexes its table with the kernel's value; one it does not
    know (a newer kernel's) reads out of bounds there: the number here."""
    return names[flags] if 0 <= flags < len(names) else str(int(flags))


# ipvsadm sorts with libipvs's comparators, which subtract 32-bit unsigned
# values into an int: their order wraps (192.168.0.1 sorts before 10.0.0.1),
# and glibc's qsort is a merge sort. Both are reproduced.


def _wrap(a: int, b: int) -> int:
    diff = (a - b) & 0xFFFFFFFF
    return diff - 2**32 if diff >= 2**31 else diff


def _words(address: IPAddress | None) -> tuple[int, int, int, int]:
    """The address as libipvs compares it: four 32-bit words, an IPv4
    address in the first."""
    if address is None:
        return (0, 0, 0, 0)
    n = int(address)
    if address.version == 4:
        return (n, 0, 0, 0)
    return (n >> 96, (n >> 64) & 0xFFFFFFFF, (n >> 32) & 0xFFFFFFFF, n & 0xFFFFFFFF)


def _compare_services(a: ServiceEntry, b: ServiceEntry) -> int:
    ka, kb = a.service.key, b.service.key
    r = _wrap(ka.fwmark, kb.fwmark)
    if r:
        return r
    r = ka.family - kb.family
    if r:
        return r
    r = int(ka.protocol or 0) - int(kb.protocol or 0)
    if r:
        return r
    r = _compare_addresses(ka.family == AF_INET6, ka.address, kb.address)
    return r or ka.port - kb.port


def _compare_addresses(v6: bool, a: IPAddress | None, b: IPAddress | None) -> int:
    wa, wb = _words(a), _words(b)
    for i in range(4 if v6 else 1):
        r = _wrap(wa[i], wb[i])
        if r:
            return r
    return 0


def _compare_destinations(a: DestinationEntry, b: DestinationEntry) -> int:
    da, db = a.destination, b.destination
    r = _compare_addresses(da.family == AF_INET6, da.address, db.address)
    return r or da.port - db.port


T = TypeVar("T")


def _merge_sort(items: list[T], compare: Callable[[T, T], int]) -> list[T]:
    """glibc msort: halves, then merge taking from the left while <= 0."""
    if len(items) <= 1:
        return items
    half = len(items) // 2
    left, right = _merge_sort(items[:half], compare), _merge_sort(items[half:], compare)
    out: list[T] = []
    i = j = 0
    while i < len(left) and j < len(right):
        if compare(left[i], right[j]) <= 0:
            out.append(left[i])
            i += 1
        else:
            out.append(right[j])
            j += 1
    return out + left[i:] + right[j:]


def _sorted(
    items: Sequence[T], keys: Sequence[tuple[int, ...]], compare: Callable[[T, T], int]
) -> list[T]:
    """What _merge_sort(items, compare) returns, where `compare` subtracts the
    components of `keys` in order. When no component spans 2**31 or more, no
    subtraction wraps: `compare` is then the plain order of `keys`, and a
    stable sort by them gives the same list, at C speed."""
    if all(max(column) - min(column) < 2**31 for column in zip(*keys, strict=True)):
        order = sorted(range(len(items)), key=keys.__getitem__)
        return [items[i] for i in order]
    return _merge_sort(list(items), compare)


def sort_services(entries: Sequence[ServiceEntry]) -> list[ServiceEntry]:
    keys = [
        (k.fwmark, k.family, int(k.protocol or 0), *_words(k.address), k.port)
        for k in (entry.service.key for entry in entries)
    ]
    return _sorted(entries, keys, _compare_services)


def sort_destinations(entries: Sequence[DestinationEntry]) -> list[DestinationEntry]:
    dests = [entry.destination for entry in entries]
    keys: list[tuple[int, ...]]
    if all(d.address.version == 4 for d in dests):
        keys = [(int(d.address), d.port) for d in dests]  # its other words are 0
    elif all(d.address.version == 6 for d in dests):
        keys = [(*_words(d.address), d.port) for d in dests]
    else:
        # _compare_destinations reads as many words as its left side's
        # family has: not an order of any key.
        return _merge_sort(list(entries), _compare_destinations)
    return _sorted(entries, keys, _compare_destinations)


def usage(program: str = "ipvsadm") -> str:
    """-h"""
    p = program
    return (
        version() + "Usage:\n"
        f"  {p} -A|E virtual-service [-s scheduler] [-p [timeout]] [-M netmask]"
        " [--pe persistence_engine] [-b sched-flags]\n"
        f"  {p} -D virtual-service\n"
        f"  {p} -C\n"
        f"  {p} -R\n"
        f"  {p} -S [-n]\n"
        f"  {p} -a|e virtual-service -r server-address [options]\n"
        f"  {p} -d virtual-service -r server-address\n"
        f"  {p} -L|l [virtual-service] [options]\n"
        f"  {p} -Z [virtual-service]\n"
        f"  {p} --set tcp tcpfin udp\n"
        f"  {p} --start-daemon {{master|backup}} [daemon-options]\n"
        f"  {p} --stop-daemon {{master|backup}}\n"
        f"  {p} -h\n\n" + _USAGE_REST
    )


_USAGE_REST = (
    "Commands:\n"
    "Either long or short options are allowed.\n"
    "  --add-service     -A        add virtual service with options\n"
    "  --edit-service    -E        edit virtual service with options\n"
    "  --delete-service  -D        delete virtual service\n"
    "  --clear           -C        clear the whole table\n"
    "  --restore         -R        restore rules from stdin\n"
    "  --save            -S        save rules to stdout\n"
    "  --add-server      -a        add real server with options\n"
    "  --edit-server     -e        edit real server with options\n"
    "  --delete-server   -d        delete real server\n"
    "  --list            -L|-l     list the table\n"
    "  --zero            -Z        zero counters in a service or all services\n"
    "  --set tcp tcpfin udp        set connection timeout values\n"
    "  --start-daemon              start connection sync daemon\n"
    "  --stop-daemon               stop connection sync daemon\n"
    "  --help            -h        display this help message\n\n"
    "virtual-service:\n"
    "  --tcp-service|-t  service-address   service-address is host[:port]\n"
    "  --udp-service|-u  service-address   service-address is host[:port]\n"
    "  --sctp-service    service-address   service-address is host[:port]\n"
    "  --fwmark-service|-f fwmark          fwmark is an integer greater than zero\n"
    "\n"
    "Options:\n"
    "  --ipv6         -6                   fwmark entry uses IPv6\n"
    f"  --scheduler    -s scheduler         one of {SCHEDULERS},\n"
    "                                      the default scheduler is wlc.\n"
    f"  --pe            engine              alternate persistence engine may be {PE_LIST},\n"
    "                                      not set by default.\n"
    "  --persistent   -p [timeout]         persistent service\n"
    "  --netmask      -M netmask           persistent granularity mask\n"
    "  --real-server  -r server-address    server-address is host (and port)\n"
    "  --gatewaying   -g                   gatewaying (direct routing) (default)\n"
    "  --ipip         -i                   ipip encapsulation (tunneling)\n"
    "  --masquerading -m                   masquerading (NAT)\n"
    "  --tun-type      type                one of ipip|gue|gre,\n"
    "                                      the default tunnel type is ipip.\n"
    "  --tun-port      port                tunnel destination port\n"
    "  --tun-nocsum                        tunnel encapsulation without checksum\n"
    "  --tun-csum                          tunnel encapsulation with checksum\n"
    "  --tun-remcsum                       tunnel encapsulation with remote checksum\n"
    "  --weight       -w weight            capacity of real server\n"
    "  --u-threshold  -x uthreshold        upper threshold of connections\n"
    "  --l-threshold  -y lthreshold        lower threshold of connections\n"
    "  --connection   -c                   output of current IPVS connections\n"
    "  --timeout                           output of timeout (tcp tcpfin udp)\n"
    "  --daemon                            output of daemon information\n"
    "  --stats                             output of statistics information\n"
    "  --rate                              output of rate information\n"
    "  --exact                             expand numbers (display exact values)\n"
    "  --thresholds                        output of thresholds information\n"
    "  --persistent-conn                   output of persistent connection info\n"
    "  --tun-info                          output of tunnel information\n"
    "  --nosort                            disable sorting output of service/server entries\n"
    "  --sort                              does nothing, for backwards compatibility\n"
    "  --ops          -o                   one-packet scheduling\n"
    "  --numeric      -n                   numeric output of addresses and ports\n"
    "  --sched-flags  -b flags             scheduler flags (comma-separated)\n"
    "Daemon Options:\n"
    "  --syncid sid                        syncid for connection sync (default=255)\n"
    "  --sync-maxlen length                Max sync message length (default=1472)\n"
    "  --mcast-interface interface         multicast interface for connection sync\n"
    "  --mcast-group address               IPv4/IPv6 group (default=224.0.0.81)\n"
    "  --mcast-port port                   UDP port (default=8848)\n"
    "  --mcast-ttl ttl                     Multicast TTL (default=1)\n"
)
