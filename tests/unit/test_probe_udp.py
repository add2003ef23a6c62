from __future__ import annotations

from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv6Address

import pytest
import trio
import trio.testing

from director.health.probes import probe_udp
from director.health.result import Reason
from director.health.spec import Timing, UdpCheck
from director.ipvs.model import IPAddress, family_of

LOOPBACKS = [IPv4Address("127.0.0.1"), IPv6Address("::1")]


@pytest.fixture(params=LOOPBACKS, ids=str)
def address(request: pytest.FixtureRequest) -> IPAddress:
    return request.param  # type: ignore[no-any-return]


async def bound_socket(address: IPAddress) -> trio.socket.SocketType:
    sock = trio.socket.socket(family_of(address), trio.socket.SOCK_DGRAM)
    await sock.bind((str(address), 0))
    return sock


@pytest.fixture
async def echo_port(address: IPAddress) -> AsyncIterator[int]:
    """A UDP server that answers every datagram with b"echo:" + the datagram."""
    sock = await bound_socket(address)

    async def echo() -> None:
        while True:
            data, peer = await sock.recvfrom(65535)
            await sock.sendto(b"echo:" + data, peer)

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(echo)
            yield sock.getsockname()[1]
            nursery.cancel_scope.cancel()


@pytest.fixture
async def silent_port(address: IPAddress) -> AsyncIterator[int]:
    with await bound_socket(address) as sock:
        yield sock.getsockname()[1]


@pytest.fixture
async def closed_port(address: IPAddress) -> int:
    with await bound_socket(address) as sock:
        port: int = sock.getsockname()[1]
    return port


async def test_reply_matching_expect_is_up(address: IPAddress, echo_port: int) -> None:
    check = UdpCheck(payload=b"ping\x00\xff", expect=r"^echo:ping\x00\xff$")
    result = await probe_udp(check, address, echo_port)
    assert (result.ok, result.reason, result.detail) == (True, Reason.OK, "11 byte reply")


async def test_reply_not_matching_expect_is_a_bad_reply(address: IPAddress, echo_port: int) -> None:
    result = await probe_udp(UdpCheck(payload=b"ping", expect="^pong"), address, echo_port)
    assert (result.ok, result.reason) == (False, Reason.BAD_REPLY)
    assert result.detail == "reply b'echo:ping' does not match '^pong'"


async def test_any_reply_is_up_without_expect(address: IPAddress, echo_port: int) -> None:
    result = await probe_udp(UdpCheck(payload=b"x"), address, echo_port)
    assert (result.ok, result.detail) == (True, "6 byte reply")


async def test_silence_is_up_without_expect(
    address: IPAddress, silent_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    result = await probe_udp(UdpCheck(timing=Timing(timeout=2.5)), address, silent_port)
    assert (result.ok, result.reason, result.detail, result.latency) == (True, Reason.OK, "no reply", 2.5)  # fmt: skip


async def test_silence_is_no_reply_with_expect(
    address: IPAddress, silent_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    check = UdpCheck(timing=Timing(timeout=2.5), payload=b"ping", expect="pong")
    result = await probe_udp(check, address, silent_port)
    assert (result.ok, result.reason, result.latency) == (False, Reason.NO_REPLY, 2.5)


@pytest.mark.parametrize("expect", [None, "pong"])
async def test_closed_port_is_unreachable(
    address: IPAddress, closed_port: int, expect: str | None
) -> None:
    # Real clock: the ICMP port unreachable comes back at once on loopback; the
    # long timeout only guards against a hang.
    check = UdpCheck(timing=Timing(timeout=30.0), payload=b"ping", expect=expect)
    result = await probe_udp(check, address, closed_port)
    icmp = "ICMP port unreachable" if address.version == 4 else "ICMPv6 port unreachable"
    assert (result.ok, result.reason, result.detail) == (False, Reason.UNREACHABLE, f"{icmp} from {address}")  # fmt: skip
