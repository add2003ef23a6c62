"""The checker's TCP probe is its own TcpDestination (tcp.py): it connects
where the check says when the check has its own address or port, else to the
server's, over IPv4 and IPv6 alike; the watcher sees it as any destination."""

from __future__ import annotations

import socket
from ipaddress import ip_address

import pytest
import trio

from director.health.checker import Checker, Target
from director.health.spec import TcpCheck, Timing
from director.health.state import Health, Transition

TIMING = Timing(interval=0.05, timeout=5.0, rise=1, fall=1)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


async def _verdicts(targets: dict[str, Target]) -> dict[str, Transition]:
    seen: dict[str, Transition] = {}
    done = trio.Event()

    def on_transition(key: str, transition: Transition) -> None:
        seen[key] = transition
        if len(seen) == len(targets):
            done.set()

    checker: Checker[str] = Checker(on_transition=on_transition)
    checker.set_targets(targets)
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run)
        with trio.fail_after(30):  # a guard against a hang, not a measurement
            await done.wait()
        nursery.cancel_scope.cancel()
    return seen


async def test_the_checks_own_address_and_port_or_the_servers() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    open_port = listeners[0].socket.getsockname()[1]
    closed = await trio.open_tcp_listeners(0, host="127.0.0.1")
    closed_port = closed[0].socket.getsockname()[1]
    await closed[0].aclose()
    here = ip_address("127.0.0.1")
    nowhere = ip_address("192.0.2.1")  # TEST-NET-1: never connected to here
    own_port = TcpCheck(timing=TIMING, port=open_port)
    own_both = TcpCheck(timing=TIMING, port=open_port, address=here)
    plain = TcpCheck(timing=TIMING)
    async with listeners[0]:
        seen = await _verdicts(
            {
                "server's": (plain, here, open_port),
                "check's port": (own_port, here, closed_port),
                "check's address and port": (own_both, nowhere, closed_port),
                "refused": (plain, here, closed_port),
            }
        )
    assert {key: t.new for key, t in seen.items()} == {
        "server's": Health.UP,
        "check's port": Health.UP,
        "check's address and port": Health.UP,
        "refused": Health.DOWN,
    }


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6() -> None:
    listeners = await trio.open_tcp_listeners(0, host="::1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        seen = await _verdicts({"v6": (TcpCheck(timing=TIMING), ip_address("::1"), port)})
    assert seen["v6"].new is Health.UP
