"""ipvsadm's output, compared with what ipvsadm 1.31 printed in the VM for
the same kernel table (tests/unit/test_ipvsadm_golden.json, captured from
/usr/sbin/ipvsadm on a real ip_vs table), plus cases derived from ipvsadm.c."""

from __future__ import annotations

import errno
import json
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.ipvs.errors import error_for
from director.ipvs.model import (
    AF_INET6,
    Connection,
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
)
from director.ipvsadm import listing
from director.ipvsadm.cli import parse
from director.ipvsadm.commands import ListFormat, ListServices

GOLDEN = json.loads((Path(__file__).parent / "test_ipvsadm_golden.json").read_text())
INFO = Info(version=0x010201, conn_tab_size=4096)
F = ServiceFlags
TCP, UDP, SCTP = Protocol.TCP, Protocol.UDP, Protocol.SCTP


def dest(
    address: str, port: int, forward: Forward, weight: int = 1, **kw: object
) -> DestinationEntry:
    return DestinationEntry(Destination(ip_address(address), port, forward, weight, **kw))  # type: ignore[arg-type]


def svc(key: ServiceKey, scheduler: str, *dests: DestinationEntry, **kw: object) -> ServiceEntry:
    return ServiceEntry(Service(key, scheduler, **kw), tuple(dests))  # type: ignore[arg-type]


# The table of the capture, in the kernel's own (--nosort) order.
TABLE = [
    svc(ServiceKey.inet(UDP, "10.0.0.1", 53), "rr", flags=F.ONEPACKET),
    svc(
        ServiceKey.inet(TCP, "2001:db8::1", 443),
        "mh",
        flags=F.PERSISTENT | F.SCHED1 | F.SCHED2,
        timeout=100,
        netmask=48,
        pe_name="sip",
    ),
    svc(
        ServiceKey.inet(TCP, "127.0.0.1", 80),
        "lc",
        dest("127.0.0.1", 8080, Forward.MASQ, 5, u_threshold=100, l_threshold=10),
        dest("127.0.0.2", 80, Forward.MASQ),
    ),
    svc(ServiceKey.inet(TCP, "192.168.0.1", 80), "wlc"),
    svc(
        ServiceKey.inet(TCP, "10.0.0.1", 80),
        "wlc",
        dest("2001:db8::9", 80, Forward.TUNNEL),
        dest("10.1.1.5", 80, Forward.TUNNEL, tun_type=TunnelType.GRE, tun_flags=TunnelFlags.CSUM),
        dest(
            "10.1.1.3",
            80,
            Forward.TUNNEL,
            tun_type=TunnelType.GUE,
            tun_port=6080,
            tun_flags=TunnelFlags.CSUM,
        ),
        dest("10.1.1.2", 80, Forward.TUNNEL),
        dest("10.1.1.1", 80, Forward.MASQ, 0),
        dest("192.168.1.1", 80, Forward.ROUTE),
        dest("10.0.0.2", 80, Forward.ROUTE, 70000),
    ),
    svc(ServiceKey.inet(SCTP, "10.0.0.3", 0), "wrr", flags=F.PERSISTENT, timeout=20),
    svc(
        ServiceKey.inet(TCP, "2001:db8::1", 80),
        "sh",
        dest("2001:db8::2", 8080, Forward.MASQ, 3),
        flags=F.SCHED2 | F.SCHED3,
    ),
    svc(
        ServiceKey.mark(5),
        "wlc",
        dest("10.2.0.2", 0, Forward.ROUTE),
        dest("10.2.0.1", 80, Forward.MASQ),
        flags=F.PERSISTENT,
        timeout=60,
        netmask=int(IPv4Address("255.255.255.0")),
    ),
    svc(
        ServiceKey.mark(6, AF_INET6),
        "wlc",
        dest("2001:db8::5", 80, Forward.MASQ),
        flags=F.PERSISTENT,
        timeout=360,
        netmask=64,
    ),
]


class CaptureNames:
    """The names the capture's VM resolved (its /etc/hosts and /etc/services)."""

    def host_address(self, name: str) -> IPv4Address | None:
        return IPv4Address("127.0.0.1") if name == "localhost" else None

    def service_port(self, name: str, protocol: str) -> int | None:
        return None

    def host_name(self, address: IPAddress) -> str | None:
        return "localhost" if str(address) == "127.0.0.1" else None

    def service_name(self, port: int, protocol: str) -> str | None:
        return {
            (80, "tcp"): "http",
            (8080, "tcp"): "http-alt",
            (443, "tcp"): "https",
            (53, "udp"): "domain",
        }.get((port, protocol))


@pytest.mark.parametrize(
    "argv",
    [
        "-Ln",
        "-L",
        "-L -n --stats",
        "-L -n --stats --exact",
        "-L -n --rate",
        "-L -n --thresholds",
        "-L -n --persistent-conn",
        "-L -n --tun-info",
        "-L -n --nosort",
        "-L -n -t 10.0.0.1:80",
        "-L -f 5",
        "-L -f 6 -6 -n",
    ],
)
def test_listing_matches_ipvsadm(argv: str) -> None:
    command = parse(argv.split())
    assert isinstance(command, ListServices)
    names = CaptureNames()
    if command.service is None:
        out = listing.services(TABLE, INFO, command.format, names)
    else:
        found = listing.find_service(TABLE, command.service)
        assert found is not None
        out = listing.service(found, command.format, names)
    assert out == GOLDEN["listings"][argv]


def test_stats_of_a_single_service_match_ipvsadm() -> None:
    # The capture deleted 10.1.1.1 before this listing.
    entry = TABLE[4]
    trimmed = ServiceEntry(
        entry.service,
        tuple(d for d in entry.destinations if str(d.destination.address) != "10.1.1.1"),
    )
    command = parse(["-L", "-t", "10.0.0.1:80", "-n", "--stats"])
    assert isinstance(command, ListServices)
    out = listing.service(trimmed, command.format)
    assert out == GOLDEN["listings"]["-L -t 10.0.0.1:80 -n --stats"]


@pytest.mark.parametrize(("numeric", "key"), [(True, "-Sn"), (False, "-S")])
def test_save_matches_ipvsadm(numeric: bool, key: str) -> None:
    assert listing.save(TABLE, numeric, CaptureNames()) == GOLDEN["listings"][key]


def test_sort_reproduces_ipvsadm_wrapping_comparison() -> None:
    # 192.168.1.1 - 10.0.0.2 overflows a 32-bit int in libipvs: it sorts first.
    dests = [d.destination for d in listing.sort_destinations(TABLE[4].destinations)]
    assert [str(d.address) for d in dests][:2] == ["192.168.1.1", "10.0.0.2"]


# Addresses whose differences wrap as libipvs subtracts them (and ones that
# do not), so that both of sort_*'s paths are drawn.
_V4 = st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1", "172.16.5.4", "192.168.0.1"])
_V6 = st.sampled_from(["::1", "2001:db8::1", "2001:db8::2", "fd00::1", "ff02::1:2"])


@st.composite
def _keys(draw: st.DrawFn) -> ServiceKey:
    if draw(st.booleans()):
        return ServiceKey.mark(
            draw(st.sampled_from([1, 2, 2**31 + 5])), draw(st.sampled_from([2, 10]))
        )
    address = draw(st.one_of(_V4, _V6))
    return ServiceKey.inet(
        draw(st.sampled_from([TCP, UDP])), address, draw(st.sampled_from([0, 80]))
    )


@given(st.lists(_keys(), unique=True, max_size=12))
def test_sort_services_is_the_merge_sort_of_ipvsadm(keys: list[ServiceKey]) -> None:
    entries = [svc(key, "rr") for key in keys]
    expected = listing._merge_sort(list(entries), listing._compare_services)
    assert listing.sort_services(entries) == expected


@given(st.lists(st.tuples(st.one_of(_V4, _V6), st.sampled_from([0, 80, 65535])), unique=True))
def test_sort_destinations_is_the_merge_sort_of_ipvsadm(pairs: list[tuple[str, int]]) -> None:
    entries = [dest(address, port, Forward.TUNNEL) for address, port in pairs]
    expected = listing._merge_sort(list(entries), listing._compare_destinations)
    assert listing.sort_destinations(entries) == expected


def test_find_service_by_mark_ignores_protocol() -> None:
    assert listing.find_service(TABLE, ServiceKey.mark(5)) is TABLE[7]
    assert listing.find_service(TABLE, ServiceKey.mark(5, AF_INET6)) is None
    assert listing.find_service(TABLE, ServiceKey.inet(TCP, "10.9.9.9", 80)) is None


def test_timeouts_match_ipvsadm() -> None:
    assert listing.timeouts(Timeouts(900, 120, 300)) == GOLDEN["listings"]["-L --timeout"]


def test_empty_connection_listings_match_ipvsadm() -> None:
    assert listing.connections([]) == GOLDEN["listings"]["-L -c"]
    persistent = ListFormat(numeric=True, persistent_conn=True)
    assert listing.connections([], persistent) == GOLDEN["listings"]["-L -c -n --persistent-conn"]


def test_connection_lines_follow_print_conn() -> None:
    conn = Connection(
        "TCP",
        ip_address("10.0.0.9"),
        40000,
        ip_address("10.0.0.1"),
        80,
        ip_address("10.1.1.1"),
        80,
        "ESTABLISHED",
        65,
    )
    sip = Connection(
        "UDP",
        ip_address("::1"),
        5060,
        ip_address("::2"),
        5060,
        ip_address("::3"),
        5060,
        "UDP",
        300,
        "sip",
        "call-1",
    )
    lines = listing.connections([conn, sip], ListFormat(numeric=True, persistent_conn=True))
    assert lines.splitlines()[2:] == [
        "TCP 01:05  ESTABLISHED 10.0.0.9:40000     10.0.0.1:80        10.1.1.1:80",
        "UDP 05:00  UDP         [::1]:5060         [::2]:5060         [::3]:5060"
        + " " * 7
        + "sip"
        + " " * 16
        + "call-1",
    ]
    plain = listing.connections([conn], ListFormat(), CaptureNames())
    assert plain.splitlines()[2] == (
        "TCP 01:05  ESTABLISHED 10.0.0.9:40000     10.0.0.1:http      10.1.1.1:http"
    )


def test_daemons_follow_list_daemon() -> None:
    daemons = [
        SyncDaemon(SyncState.MASTER, "eth0", 7, 1472, ip_address("224.0.0.81"), 8848, 1),
        SyncDaemon(SyncState.BACKUP, "lo", 0),
        SyncDaemon(SyncState.NONE, "x"),
    ]
    assert listing.daemons(daemons) == (
        "master sync daemon (mcast=eth0, syncid=7, maxlen=1472, group=224.0.0.81,"
        " port=8848, ttl=1)\n"
        "backup sync daemon (mcast=lo, syncid=0)\n"
    )


@pytest.mark.parametrize(
    ("value", "exact", "text"),
    [
        (0, False, "        0"),
        (99_999_999, False, " 99999999"),
        (100_000_000, False, "  100000K"),
        (999_999_999, False, "  999999K"),
        (1_000_000_000, False, "    1000M"),
        (99_999_999_999, False, "   99999M"),
        (100_000_000_000, False, "     100G"),
        (100_000_000_000_000, False, "     100T"),
        (12345678, True, " 12345678"),
        (123456789, True, " 123456789"),
    ],
)
def test_largenum(value: int, exact: bool, text: str) -> None:
    assert listing.largenum(value, exact) == text


def test_stats_columns_scale_large_counters() -> None:
    entry = ServiceEntry(
        Service(ServiceKey.inet(TCP, "10.0.0.1", 80)),
        stats=Stats(conns=5, inpkts=123_456_789, outbytes=10**12),
    )
    out = listing.service(entry, ListFormat(numeric=True, stats=True))
    assert out.splitlines()[2] == (
        "TCP  10.0.0.1:80                         5  123456K        0        0    1000G"
    )


def test_long_names_are_cut_like_ipvsadm() -> None:
    class LongNames(CaptureNames):
        def host_name(self, address: IPAddress) -> str | None:
            return "a-very-long-host-name.example.internal"

    out = listing.service(TABLE[2], ListFormat(), LongNames()).splitlines()
    assert out[2] == "TCP  a-very-long-host-name.exampl lc"
    assert out[3] == "  -> a-very-long-host-name.exampl Masq    5      0          0         "
    rule = listing.save([TABLE[2]], names=LongNames()).splitlines()
    assert rule[0] == "-A -t a-very-long-host-name.example.internal:http -s lc"


def test_help_and_version_match_ipvsadm() -> None:
    assert listing.usage("ipvsadm") == GOLDEN["help"]["out"]
    (version_case,) = [c for c in GOLDEN["argv_cases"] if c["argv"] == ["-v"]]
    assert listing.version() == version_case["out"]


def test_kernel_error_text() -> None:
    assert listing.kernel_error(error_for(errno.EEXIST, "AddService")) == "Service already exists\n"


HIGH_MARKS = [
    svc(ServiceKey.mark(2**31), "rr", dest("10.4.0.9", 80, Forward.MASQ)),
    svc(ServiceKey.mark(2**32 - 1, AF_INET6), "none"),
    svc(ServiceKey.mark(2**31 - 1), "wlc"),
]


def test_marks_of_2_31_or_more_print_signed_like_ipvsadm_1_31() -> None:
    """print_service_entry() formats the mark with "%d": -L and -S alike,
    the -a lines of -S too, and --stats (the name is padded to 33)."""
    assert listing.save(HIGH_MARKS, numeric=True) == (
        "-A -f -2147483648 -s rr\n"
        "-a -f -2147483648 -r 10.4.0.9:80 -m -w 1\n"
        "-A -f -1 -6 -s none\n"
        "-A -f 2147483647 -s wlc\n"
    )
    text = listing.services(HIGH_MARKS, INFO, ListFormat(numeric=True))
    assert text.splitlines()[3:] == [
        "FWM  -2147483648 rr",
        "  -> 10.4.0.9:80                  Masq    1      0          0         ",
        "FWM  -1 IPv6 none",
        "FWM  2147483647 wlc",
    ]
    stats = listing.service(HIGH_MARKS[0], ListFormat(numeric=True, stats=True))
    assert stats.splitlines()[2].startswith(f"{'FWM  -2147483648':<33}        0")
    assert listing.signed_fwmark(2**31 - 1) == 2**31 - 1


def test_values_of_a_newer_kernel_print_as_ipvsadm_1_31_prints_them() -> None:
    """A forwarding method or tunnel type ipvsadm does not know: fwd_name()
    and fwd_switch() return NULL, which glibc prints "(null)"; --tun-info
    says "n/a" and -S leaves --tun-type out. A tunnel flag ipvsadm would read
    out of bounds is printed as its number."""
    vs = ServiceKey.inet(TCP, "10.5.0.1", 80)
    entry = svc(
        vs,
        "rr",
        dest("10.5.0.2", 80, Forward(7), weight=3),
        dest("10.5.0.3", 80, Forward.TUNNEL, tun_type=TunnelType(9)),
        dest("10.5.0.4", 80, Forward.TUNNEL, tun_type=TunnelType.GRE, tun_flags=TunnelFlags(6)),
    )
    assert listing.save([entry], numeric=True).splitlines()[1:] == [
        "-a -t 10.5.0.1:80 -r 10.5.0.2:80 (null) -w 3",
        "-a -t 10.5.0.1:80 -r 10.5.0.3:80 -i -w 1",
        "-a -t 10.5.0.1:80 -r 10.5.0.4:80 -i -w 1 --tun-type gre 6",
    ]
    rows = listing.service(entry, ListFormat(numeric=True)).splitlines()[3:]
    assert rows[0] == "  -> 10.5.0.2:80                  (null)  3      0          0         "
    tun = listing.service(entry, ListFormat(numeric=True, tun_info=True)).splitlines()[3:]
    assert [row.split()[2:4] for row in tun] == [
        ["(null)", "n/a"],
        ["Tunnel", "n/a"],
        ["Tunnel", "gre:6"],
    ]
