"""-Ln at scale (issue 8): a numeric IPv4 endpoint is written without
ipaddress's str() (a third of a 10,000-destination listing's CPU), and reads
as ipvsadm's inet_ntop text did."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.ipvsadm import NUMERIC, listing
from director.ipvsadm.libc import inet_ntop


@given(st.integers(0, 2**32 - 1), st.integers(0, 65535))
def test_a_numeric_ipv4_endpoint_is_inet_ntops_text(address: int, port: int) -> None:
    ip = IPv4Address(address)
    assert listing._addrport(ip, port, "tcp", True, NUMERIC) == f"{inet_ntop(ip)}:{port}"


def test_a_numeric_ipv4_endpoint_does_not_go_through_inet_ntop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def slow(address: object) -> str:
        raise AssertionError("inet_ntop (ipaddress's str) for a numeric IPv4 endpoint")

    monkeypatch.setattr(listing, "inet_ntop", slow)
    assert listing._addrport(IPv4Address("10.2.0.1"), 80, "tcp", True, NUMERIC) == "10.2.0.1:80"


def test_ipv6_and_named_endpoints_are_as_before() -> None:
    assert listing._addrport(IPv6Address("2001:db8::1"), 80, "tcp", True, NUMERIC) == (
        "[2001:db8::1]:80"
    )
    assert listing._addrport(IPv4Address("10.2.0.1"), 80, "tcp", False, NUMERIC) == "10.2.0.1:80"
