"""The engine over the in-memory backend, with a fake probe and trio's
autojump clock: failover, restore, adoption at start, drift repair, reload and
ownership, in virtual time."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from ipaddress import ip_address

import pytest
import structlog.testing
import trio
import trio.testing

from director.config import RealServerId, parse_config
from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Timeouts,
)
from director.ipvs.ops import DeleteDestination
from director.kernel import KernelTable

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
OTHER = ServiceKey.inet(Protocol.TCP, "10.0.0.99", 443)

CONFIG_TEMPLATE = """
[ipvs]
timeouts = { tcp = 5, tcpfin = 10, udp = 300 }
[daemon]
reconcile_interval = 5.0
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
on_failure = "ON_FAILURE"
check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 2, fall = 3 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 5
[[virtual_server.real_server]]
address = "10.0.1.2:80"
weight = 7
"""
CONFIG = CONFIG_TEMPLATE.replace("ON_FAILURE", "remove")


class FakeNetwork:
    """Probes answer from a set of live addresses; nothing touches a socket."""

    def __init__(self, *alive: str) -> None:
        self.alive = {ip_address(a) for a in alive}
        self.probes = 0

    async def probe(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        self.probes += 1
        await trio.sleep(0.01)
        if address in self.alive:
            return ProbeResult.success(0.01)
        return ProbeResult.failure(Reason.REFUSED, 0.01)


def weights(backend: MemoryBackend, key: ServiceKey = VIP) -> dict[str, int]:
    for entry in backend.services():
        if entry.service.key == key:
            return {str(d.destination.address): d.destination.weight for d in entry.destinations}
    raise AssertionError(f"service {key} is not in the table")


async def until(condition: Callable[[], bool]) -> None:
    """Poll the table in virtual time: the backend has no change events."""
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.05)


def make_director(
    backend: MemoryBackend, network: FakeNetwork, on_failure: str = "remove", extra: str = ""
) -> Director:
    config = parse_config(CONFIG_TEMPLATE.replace("ON_FAILURE", on_failure) + extra)
    return Director(
        config, KernelTable(backend, threaded=False), probe=network.probe, rng=random.Random(1)
    )


@pytest.fixture
def unmanaged() -> ServiceEntry:
    return ServiceEntry(
        Service(OTHER, scheduler="wlc", flags=ServiceFlags.HASHED),
        (DestinationEntry(Destination(ip_address("10.9.9.9"), 443, weight=3)),),
    )


async def test_new_servers_enter_after_first_probe_and_dead_one_leaves_after_fall(
    autojump_clock: trio.testing.MockClock, unmanaged: ServiceEntry
) -> None:
    backend = MemoryBackend([unmanaged])
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = make_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        # Adopted an empty service: nothing probed yet, so nothing guessed.
        assert weights(backend) == {}
        assert backend.timeouts() == Timeouts(5, 10, 300)
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}

        network.alive.discard(ip_address("10.0.1.2"))
        killed = trio.current_time()
        await until(lambda: "10.0.1.2" not in weights(backend))
        # fall=3 failed probes one interval apart, then one pass.
        assert 2.0 <= trio.current_time() - killed <= 3 * 1.0 + 0.5 + 0.1
        assert weights(backend) == {"10.0.1.1": 5}

        network.alive.add(ip_address("10.0.1.2"))
        await until(lambda: "10.0.1.2" in weights(backend))
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()
    assert unmanaged in backend.services()


async def test_weight0_keeps_the_failed_server_with_weight_zero(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1")
    director = make_director(backend, network, on_failure="weight0")
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 0}
        nursery.cancel_scope.cancel()


async def test_start_adopts_the_table_until_each_server_is_probed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    existing = ServiceEntry(
        Service(VIP, scheduler="rr"),
        (
            DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=5)),
            DestinationEntry(Destination(ip_address("10.0.1.2"), 80, weight=7)),
        ),
    )
    backend = MemoryBackend([existing])
    network = FakeNetwork("10.0.1.1")  # .2 died while the daemon was down
    director = make_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        assert network.probes == 0
        # Adopted in service: one failed probe is not enough (fall = 3)...
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        # ...three in a row are.
        await trio.sleep(2.0)
        assert weights(backend) == {"10.0.1.1": 5}
        nursery.cancel_scope.cancel()


async def test_a_server_not_in_the_table_at_start_is_decided_by_its_first_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    existing = ServiceEntry(
        Service(VIP, scheduler="rr"),
        (DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=5)),),
    )
    backend = MemoryBackend([existing])
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()


async def test_a_server_deleted_behind_our_back_comes_back_on_the_next_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = make_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        backend.apply([DeleteDestination(VIP, ip_address("10.0.1.1"), 80)])
        assert weights(backend) == {"10.0.1.2": 7}
        await trio.sleep(director.config.daemon.reconcile_interval + 0.1)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()


async def test_reload_keeps_health_drops_removed_service_and_never_touches_unmanaged(
    autojump_clock: trio.testing.MockClock, unmanaged: ServiceEntry
) -> None:
    backend = MemoryBackend([unmanaged])
    network = FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1")
    director = make_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        kept = RealServerId(VIP, ip_address("10.0.1.1"), 80)
        before = director.checker.state(kept)

        new = parse_config(
            CONFIG.replace("10.0.1.2:80", "10.0.1.3:80")
            + """
[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:53"
[[virtual_server.real_server]]
address = "10.0.2.1:53"
"""
        )
        summary = await director.reload(new)
        assert director.checker.state(kept) == before
        assert [str(t.address) for t in summary.real_servers_added] == ["10.0.1.3", "10.0.2.1"]
        assert [str(t.address) for t in summary.real_servers_removed] == ["10.0.1.2"]
        assert weights(backend) == {"10.0.1.1": 5}
        udp = ServiceKey.inet(Protocol.UDP, "10.0.0.1", 53)
        assert weights(backend, udp) == {}

        # Drop the UDP service again: it is deleted, the unmanaged one stays.
        await director.reload(parse_config(CONFIG))
        keys = {e.service.key for e in backend.services()}
        assert keys == {VIP, OTHER}
        assert unmanaged in backend.services()
        nursery.cancel_scope.cancel()


async def test_flush_on_stop_deletes_only_own_services(
    autojump_clock: trio.testing.MockClock, unmanaged: ServiceEntry
) -> None:
    backend = MemoryBackend([unmanaged])
    director = make_director(backend, FakeNetwork("10.0.1.1"))
    director.config = replace(
        director.config, daemon=replace(director.config.daemon, flush_on_stop=True)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await director.stop()
        nursery.cancel_scope.cancel()
    assert backend.services() == [unmanaged]


async def test_every_failed_probe_and_each_transition_is_one_log_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1"))
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(3.5)
            nursery.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "probe_failed"]
    assert {e["rs"] for e in failed} == {"10.0.1.2:80"}
    assert [e["failures_in_row"] for e in failed] == list(range(1, len(failed) + 1))
    assert len(failed) >= 3
    assert all(e["reason"] == "refused" and e["latency"] == 0.01 for e in failed)
    down = [e for e in logs if e["event"] == "real_server_down"]
    assert [(e["rs"], e["reason"], e["old"], e["new"]) for e in down] == [
        ("10.0.1.2:80", "refused", "unknown", "down")
    ]
    assert down[0]["latency"] == 0.01


async def test_a_dynamic_weight_from_the_check_is_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    weights_by_address = {ip_address("10.0.1.1"): 3, ip_address("10.0.1.2"): 9}

    async def exec_probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(0.01)
        return ProbeResult.success(0.01, weight=weights_by_address[address])

    backend = MemoryBackend()
    config = parse_config(CONFIG)
    director = Director(
        config, KernelTable(backend, threaded=False), probe=exec_probe, rng=random.Random(1)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 3, "10.0.1.2": 9}
        weights_by_address[ip_address("10.0.1.1")] = 40
        await trio.sleep(1.1)
        assert weights(backend) == {"10.0.1.1": 40, "10.0.1.2": 9}
        nursery.cancel_scope.cancel()
