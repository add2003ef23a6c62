"""/proc/net/ip_vs parsing, on text in the kernel's format (ip_vs_ctl.c,
ip_vs_info_seq_show; checked against the real kernel in
tests/kernel/test_netlink.py)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from director.ipvs.model import (
    AF_INET6,
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    ServiceKey,
)
from director.ipvs.servicetable import exact_destinations, parse_service_table, table_key

HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
)
V6 = "2001:0db8:0000:0000:0000:0000:0000:0001"
TABLE = HEADER + (
    "TCP  0A000001:0050 wlc \n"
    "  -> 0A000102:1F90      Masq    2      3          14        \n"
    "  -> 7F000001:0050      Local   1      0          0         \n"
    f"UDP  [{V6}]:0035 rr ops persistent 300 FFFFFF80\n"
    f"  -> [{V6}]:0035      Route   65535  0          0         \n"
    "FWM  00000007 sh persistent 60 FFFFFFFF\n"
    f"  -> [{V6}]:0000      Tunnel  0      1          2         \n"
    "SCTP 0A000002:0009 rr \n"
)


def dest(address: str, port: int, forward: Forward, weight: int, active: int, inact: int):
    return DestinationEntry(Destination(ip_address(address), port, forward, weight), active, inact)


def test_services_and_destinations_in_kernel_order() -> None:
    assert parse_service_table(TABLE) == [
        (
            ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80),
            [
                dest("10.0.1.2", 8080, Forward.MASQ, 2, 3, 14),
                dest("127.0.0.1", 80, Forward.LOCAL, 1, 0, 0),
            ],
        ),
        (
            ServiceKey(AF_INET6, Protocol.UDP, ip_address("2001:db8::1"), 53),
            [dest("2001:db8::1", 53, Forward.ROUTE, 65535, 0, 0)],
        ),
        (("FWM", 7), [dest("2001:db8::1", 0, Forward.TUNNEL, 0, 1, 2)]),
        (ServiceKey.inet(Protocol.SCTP, "10.0.0.2", 9), []),
    ]


def test_an_empty_table() -> None:
    assert parse_service_table(HEADER) == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("ICMP 0A000001:0050 rr", "unknown protocol 'ICMP'"),
        ("TCP  0A00001:zz rr", "invalid literal"),
        ("  -> 0A000102:1F90      Bounce  2      3          14", "unknown forwarding method"),
        ("  -> 0A000102:1F90      Masq    2      3", "expected '-> ADDRESS:PORT"),
    ],
)
def test_a_malformed_line_is_named(line: str, why: str) -> None:
    text = HEADER + "TCP  0A000001:0050 wlc\n" + line + "\n"
    with pytest.raises(ValueError, match="/proc/net/ip_vs line 5: ") as caught:
        parse_service_table(text)
    assert why in str(caught.value)


def test_a_destination_before_any_service_is_refused() -> None:
    with pytest.raises(ValueError, match="line 4: a destination before any service"):
        parse_service_table(HEADER + "  -> 0A000102:1F90      Masq    2      3          14\n")


def test_not_a_service_table() -> None:
    with pytest.raises(ValueError, match="not an IPVS service table"):
        parse_service_table("TCP 0A000001 C350\n")


def test_exact_destinations_leave_out_tunnels_and_marks_in_both_families() -> None:
    both_families = (
        HEADER
        + "TCP  0A000001:0050 wlc \n"
        + "  -> 0A000102:1F90      Masq    2      3          14        \n"
        + "FWM  00000007 rr \n"
        + "FWM  00000007 rr \n"
        + "FWM  00000008 rr \n"
    )
    exact = exact_destinations(parse_service_table(both_families))
    plain = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    assert exact == {plain: [dest("10.0.1.2", 8080, Forward.MASQ, 2, 3, 14)], ("FWM", 8): []}
    assert table_key(plain) == plain
    assert table_key(ServiceKey.mark(7, AF_INET6)) == ("FWM", 7)
    tunnelled = exact_destinations(parse_service_table(TABLE))
    assert ("FWM", 7) not in tunnelled and len(tunnelled) == 3
