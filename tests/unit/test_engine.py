"""The engine over the in-memory backend, with a fake probe and trio's
autojump clock: failover, restore, adoption at start, drift repair, reload and
ownership, in virtual time."""

from __future__ import annotations

import errno
import math
import random
import threading
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
import trio
import trio.lowlevel
import trio.testing

from director import configload, statefile
from director.config import Config, RealServerId, parse_config
from director.desired import AdminState
from director.engine import ABANDONED, Director, ReloadResult
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.health.state import Health
from director.ipvs.errors import (
    AcknowledgementsLost,
    BatchError,
    DumpInterrupted,
    KernelError,
    error_for,
)
from director.ipvs.facts import KernelModules
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Timeouts,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    EditDestination,
    Operation,
)
from director.kernel import READ_ATTEMPTS, KernelTable
from director.runtime import RuntimeLayer
from director.status import ServiceStatus, status_report, status_text

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


async def test_a_drained_server_at_weight_0_is_adopted_until_fall_probes_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 41: drained (weight 0, finishing its connections), the daemon
    killed and started again, the drained server and an enabled one stopped
    answering: the enabled one left after fall = 3 failures, the drained one
    at the first (only servers at a weight above 0 were adopted)."""
    existing = ServiceEntry(
        Service(VIP, scheduler="rr"),
        (
            DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=5)),
            DestinationEntry(Destination(ip_address("10.0.1.2"), 80, weight=0)),
        ),
    )
    backend = MemoryBackend([existing])
    config = parse_config(CONFIG)
    drained = config.virtual_servers[0].real_server_ids[1]
    director = Director(
        config, KernelTable(backend, threaded=False), probe=FakeNetwork().probe,
        rng=random.Random(1), runtime=RuntimeLayer(admin={drained: AdminState.DRAIN}),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)  # each failed once or twice (its first probe within 1 s)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 0}
        assert all(s.failures_in_row for s in director.checker.states().values())
        await trio.sleep(2.0)  # the third failure of each
        assert weights(backend) == {}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("reload", [False, True])
@pytest.mark.parametrize("back", [False, True])
async def test_a_server_kept_at_weight_0_for_its_failures_ramps_from_1_once_back(
    autojump_clock: trio.testing.MockClock, reload: bool, back: bool
) -> None:
    """on_failure = "weight0": a down server's mark in the table is weight
    0. Adopted at a start (or by a reload that adds its service), it stays
    at 0 until probed, `fall` failures take it down, and a first success
    brings it back as any server coming up: ramped from 1 by slow_start,
    not at its full weight at once (when it came back while the daemon was
    down, or after it went down again)."""
    existing = ServiceEntry(
        Service(VIP, scheduler="wrr"),
        (
            DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=100)),
            DestinationEntry(Destination(ip_address("10.0.1.2"), 80, weight=0)),
        ),
    )
    backend = FaultyKernel([existing])
    config = SLOW_START.replace('scheduler = "wrr"', 'scheduler = "wrr"\non_failure = "weight0"')
    network = FakeNetwork("10.0.1.1", *(["10.0.1.2"] if back else []))
    director = faulty_director(
        backend, network, "[daemon]\nreconcile_interval = 5.0\n" if reload else config
    )
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        if reload:
            await director.exclusive(lambda: director.reload(parse_config(config)))
        if not back:
            await trio.sleep(4.0)  # 10.0.1.2 fails its first probes: kept at 0
            assert weights(backend) == {"10.0.1.1": 100, "10.0.1.2": 0}
            assert (
                director.checker.states()[
                    director.config.virtual_servers[0].real_server_ids[1]
                ].status
                is Health.DOWN
            )
            network.alive.add(ip_address("10.0.1.2"))
        for _ in range(40):
            await trio.sleep(0.25)
            seen.append(weights(backend)["10.0.1.2"])
        nursery.cancel_scope.cancel()
    ramp = [w for w in seen if 0 < w < 50]
    assert ramp and ramp[0] <= 10, seen  # from 1, not at 50 at once
    assert seen == sorted(seen) and seen[-1] == 50


async def test_a_reload_sets_the_new_weight_of_a_server_not_probed_yet(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An adopted server stays in until probed, but at the weight the
    config gives it: a reload's new weight is one operation, at once (found
    at 10,000 servers, where it waited minutes for the first probe)."""
    existing = ServiceEntry(
        Service(VIP, scheduler="rr"),
        (
            DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=5)),
            DestinationEntry(Destination(ip_address("10.0.1.2"), 80, weight=7)),
        ),
    )
    backend = MemoryBackend([existing])
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = make_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        new = parse_config(CONFIG.replace("weight = 7", "weight = 9"))
        summary = await director.exclusive(lambda: director.reload(new))
        assert network.probes == 0
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 9}
        assert [type(op) for op in summary.operations] == [EditDestination]
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
        with structlog.testing.capture_logs() as logs:
            summary = await director.exclusive(lambda: director.reload(new))
        assert director.checker.state(kept) == before
        assert [str(t.address) for t in summary.real_servers_added] == ["10.0.1.3", "10.0.2.1"]
        assert [str(t.address) for t in summary.real_servers_removed] == ["10.0.1.2"]
        # The log names each real server's service (operator trial, stop 25).
        (reloaded,) = [e for e in logs if e["event"] == "reloaded"]
        assert reloaded["real_servers_added"] == {
            "TCP 10.0.0.1:80": ["10.0.1.3:80"],
            "UDP 10.0.0.1:53": ["10.0.2.1:53"],
        }
        assert reloaded["real_servers_removed"] == {"TCP 10.0.0.1:80": ["10.0.1.2:80"]}
        assert reloaded["real_servers_changed"] == {}
        assert weights(backend) == {"10.0.1.1": 5}
        udp = ServiceKey.inet(Protocol.UDP, "10.0.0.1", 53)
        assert weights(backend, udp) == {}

        # Drop the UDP service again: it is deleted, the unmanaged one stays.
        await director.exclusive(lambda: director.reload(parse_config(CONFIG)))
        keys = {e.service.key for e in backend.services()}
        assert keys == {VIP, OTHER}
        assert unmanaged in backend.services()
        nursery.cancel_scope.cancel()


async def test_a_reload_that_changes_a_service_says_what_changed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operator trial (stop 27): a reload that changed a scheduler, a
    persistence timeout and a netmask listed only real servers, and
    `reloaded` had no word of the services."""
    from director.control.handler import reload_data, reload_text

    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(2.1)
        first = CONFIG.replace('scheduler = "rr"', 'scheduler = "rr"\npersistent = 600\npersistent_netmask = 24')  # fmt: skip
        await director.exclusive(lambda: director.reload(parse_config(first)))
        changed = first.replace('scheduler = "rr"', 'scheduler = "sh"\nscheduler_flags = ["sh-port"]')  # fmt: skip
        changed = changed.replace("persistent = 600", "persistent = 1200").replace("persistent_netmask = 24", "persistent_netmask = 16")  # fmt: skip
        with structlog.testing.capture_logs() as logs:
            summary = await director.exclusive(lambda: director.reload(parse_config(changed)))
        what = ('scheduler "rr" -> "sh"', "persistent 600 -> 1200", "persistent_netmask 24 -> 16", 'scheduler_flags [] -> ["sh-port"]')  # fmt: skip
        assert summary.services_changed == ((VIP, what),)
        line = '~ service tcp:10.0.0.1:80: scheduler "rr" -> "sh", persistent 600 -> 1200, persistent_netmask 24 -> 16, scheduler_flags [] -> ["sh-port"]\n'  # fmt: skip
        assert line in reload_text(summary)
        assert reload_data(summary)["services_changed"] == {"tcp:10.0.0.1:80": list(what)}
        (reloaded,) = [e for e in logs if e["event"] == "reloaded"]
        assert reloaded["services_changed"] == {"TCP 10.0.0.1:80": list(what)}
        (service,) = [e.service for e in backend.services() if e.service.key == VIP]
        assert (service.scheduler, service.timeout) == ("sh", 1200)
        nursery.cancel_scope.cancel()


async def test_a_reload_that_changes_a_weight_names_the_real_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operator trial: weight 5 -> 3 was 'reloaded: 1 table operations' and
    real_servers_changed []; the check (what the checker probes) is the same,
    the real server is not."""
    from director.control.handler import reload_text

    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(2.1)
        new = parse_config(CONFIG.replace("weight = 5", "weight = 3"))
        summary = await director.exclusive(lambda: director.reload(new))
        assert summary.real_servers_changed == (RealServerId(VIP, ip_address("10.0.1.1"), 80),)
        assert summary.real_servers_added == summary.real_servers_removed == ()
        # (trial report: the line did not say what changed)
        assert "~ real server tcp:10.0.0.1:80 10.0.1.1:80: weight 5 -> 3\n" in reload_text(summary)
        assert weights(backend) == {"10.0.1.1": 3, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ('address = "10.0.1.2:8080"', 'address = "10.0.1.2:8080"\nforward = "masq"'),
        ('address = "10.0.1.2:8080"\nforward = "masq"', 'address = "10.0.1.2:8080"'),
        (
            'address = "10.0.1.2:80"\ncheck = { type = "tcp", port = 8080 }',
            'address = "10.0.1.2:8080"\nforward = "masq"',
        ),
    ],
    ids=["route to masq", "masq to route", "check port to masq"],
)
async def test_a_reload_that_moves_a_servers_entry_keeps_its_probe_and_health(
    autojump_clock: trio.testing.MockClock, before: str, after: str
) -> None:
    """route -> masq of a server probed on 8080 moves its table entry from
    :80 to :8080; the probe is the same, so is its health: the new entry
    is in the table as the reload ends, with no new verdict (stop 28's
    trial: out of the table until its next probe, 0.6-0.8 s there, a whole
    interval with a long one)."""
    interval = CONFIG.replace("interval = 1.0", "interval = 60.0")
    old = interval.replace('address = "10.0.1.2:80"', before)
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = Director(
        parse_config(old),
        KernelTable(backend, threaded=False),
        probe=network.probe,
        rng=random.Random(1),
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await until(lambda: len(weights(backend)) == 2)
            probes = network.probes
            new = parse_config(interval.replace('address = "10.0.1.2:80"', after))
            await director.exclusive(lambda: director.reload(new))
            table = {
                (str(d.destination.address), d.destination.port, d.destination.forward)
                for e in backend.services()
                for d in e.destinations
            }
            assert network.probes == probes  # no new probe was needed
            nursery.cancel_scope.cancel()
    moved = [rs for rs in new.virtual_servers[0].real_servers if str(rs.address) == "10.0.1.2"]
    assert table == {("10.0.1.1", 80, Forward.ROUTE), ("10.0.1.2", moved[0].port, moved[0].forward)}
    ups = [e for e in logs if e["event"] == "real_server_up" and e["rs"].startswith("10.0.1.2")]
    assert len(ups) == 1, ups


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


async def test_a_series_of_failed_probes_and_each_transition_are_logged(
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
    # Three failures in a row, one line: the first of the series.
    assert [(e["rs"], e["failures_in_row"]) for e in failed] == [("10.0.1.2:80", 1)]
    assert all(e["reason"] == "refused" and e["latency"] == 0.01 for e in failed)
    down = [e for e in logs if e["event"] == "real_server_down"]
    assert [(e["rs"], e["reason"], e["old"], e["new"]) for e in down] == [
        ("10.0.1.2:80", "refused", "unknown", "down")
    ]
    assert down[0]["latency"] == 0.01


async def test_a_server_probed_elsewhere_logs_where(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """10.0.1.2 written with port 8080, a route server behind :80: the
    table's 10.0.1.2:80, probed on 8080, and its lines say so (stop 28's
    trial: only :80 was named, which an operator found open)."""
    probed: list[int] = []

    async def probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
        probed.append(port if getattr(check, "port", None) is None else check.port)  # as tcp.py
        await trio.sleep(0.01)
        return ProbeResult.failure(Reason.REFUSED, 0.01)

    config = parse_config(CONFIG.replace('address = "10.0.1.2:80"', 'address = "10.0.1.2:8080"'))
    director = Director(
        config, KernelTable(MemoryBackend(), threaded=False), probe=probe, rng=random.Random(1)
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(3.5)
            nursery.cancel_scope.cancel()
    assert set(probed) == {80, 8080}
    lines = [e for e in logs if e["event"] in ("probe_failed", "real_server_down")]
    assert {(e["event"], e["rs"], e.get("probed")) for e in lines} == {
        ("probe_failed", "10.0.1.1:80", None),
        ("real_server_down", "10.0.1.1:80", None),
        ("probe_failed", "10.0.1.2:80", "10.0.1.2:8080"),
        ("real_server_down", "10.0.1.2:80", "10.0.1.2:8080"),
    }


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


# -- faults: the kernel refuses, reads fail, acknowledgements are lost ---------


class FaultyKernel(MemoryBackend):
    """The in-memory table with faults a test injects: operations refused
    (`refuse(op)` gives the errno, or None), reads interrupted, outcomes lost.
    A stand-in for unit tests of the engine; the kernel tests make the real
    kernel refuse."""

    def __init__(self, entries: list[ServiceEntry] | None = None) -> None:
        super().__init__(entries or [])
        self.refuse: Callable[[Operation], int | None] = lambda op: None
        self.reads_failing = 0
        self.acks_lost = 0
        self.reads = 0
        self.sent: list[Operation] = []
        self.skipped: set[ServiceKey] = set()  # left out of reads, as a dump may

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        self.reads += 1
        if self.reads_failing:
            self.reads_failing -= 1
            raise DumpInterrupted("GetService")
        entries = super().services(only, brief=brief)
        return [e for e in entries if e.service.key not in self.skipped]

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        outcomes: list[KernelError | None] = []
        for op in operations:
            self.sent.append(op)
            err = self.refuse(op)
            if err is not None:
                outcomes.append(error_for(err, type(op).__name__))
                continue
            try:
                self.apply([op])
                outcomes.append(None)
            except BatchError as error:
                outcomes.append(error.error)
        if self.acks_lost:
            self.acks_lost -= 1
            raise AcknowledgementsLost(0, len(operations) - 1)
        return outcomes


TWO_SERVICES = (
    CONFIG
    + """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.2:80"
scheduler = "rr"
check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }
[[virtual_server.real_server]]
address = "10.0.2.1:80"
weight = 3
"""
)
VIP2 = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)


def faulty_director(
    backend: FaultyKernel,
    network: FakeNetwork,
    config: str = TWO_SERVICES,
    state_path: Path | None = None,
    owned: frozenset[ServiceKey] = frozenset(),
) -> Director:
    return Director(
        parse_config(config),
        KernelTable(backend, threaded=False),
        probe=network.probe,
        rng=random.Random(1),
        state_path=state_path,
        owned=owned,
    )


def refuses_destination(address: str, err: int) -> Callable[[Operation], int | None]:
    def refuse(op: Operation) -> int | None:
        if isinstance(op, AddDestination) and op.destination.address == ip_address(address):
            return err
        return None

    return refuse


def refuses_service_add(key: ServiceKey, err: int) -> Callable[[Operation], int | None]:
    def refuse(op: Operation) -> int | None:
        return err if isinstance(op, AddService) and op.service.key == key else None

    return refuse


def status_now(director: Director, backend: MemoryBackend) -> tuple[ServiceStatus, ...]:
    """status_report of `director` over `backend`'s table, now."""
    return status_report(
        director.effective,
        director.checker.states(),
        {},
        {e.service.key: e for e in backend.services()},
        trio.current_time(),
        director.refusals,
    )


async def test_a_refused_destination_backs_off_and_everything_else_converges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operators' report: a real server with a multicast address (the kernel
    says EINVAL) made every pass fail and retry at once: 15,000 passes and
    15,000 error lines in 3 s."""
    backend = FaultyKernel()
    backend.refuse = refuses_destination("10.0.1.2", errno.EINVAL)
    network = FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1")
    director = faulty_director(backend, network)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(60)
            assert weights(backend) == {"10.0.1.1": 5}
            assert weights(backend, VIP2) == {"10.0.2.1": 3}
            # Another server goes down meanwhile: failover is not held up.
            network.alive.discard(ip_address("10.0.2.1"))
            await trio.sleep(3.1)
            assert weights(backend, VIP2) == {}
            nursery.cancel_scope.cancel()
    tries = [
        op
        for op in backend.sent
        if isinstance(op, AddDestination) and op.destination.address == ip_address("10.0.1.2")
    ]
    # 1, 2, 4, then every reconcile_interval (5 s): about 13 tries in 63 s.
    assert 10 <= len(tries) <= 16
    refused = [e for e in logs if e["event"] == "ipvs_refused"]
    assert [e["attempts"] for e in refused] == [1, 10]
    assert refused[0]["rs"] == "10.0.1.2:80"
    assert "address not unicast" in refused[0]["error"]
    assert director.counts()["refused"] == 1


async def test_status_names_what_the_kernel_refuses_and_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    backend.refuse = refuses_service_add(VIP, errno.ENOENT)
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(10)
        report = status_now(director, backend)
        nursery.cancel_scope.cancel()
    [vip, vip2] = report
    assert vip.refused is not None
    assert vip.refused.startswith(
        "AddService refused by the kernel: Scheduler or persistence engine not found ("
    )
    assert vip2.refused is None and vip2.in_kernel
    assert "AddService refused by the kernel" in status_text(report)
    # The service is refused; its destinations are not refusals of their own.
    assert list(director.refusals) == [("service", VIP)]


async def test_a_refused_service_is_retried_with_backoff_and_not_taken_for_a_moved_table(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A trial's report (a scheduler the kernel lacks): every retry of the
    refused add sent its servers' adds too, which the kernel refused for want
    of the service, and each was logged as `ipvs_table_moved` (another tool
    changed the table: false) and asked for a pass 1 s later: 20 lines in 40
    s. Status said its servers were "not in the kernel yet"."""
    backend = FaultyKernel()
    backend.refuse = refuses_service_add(VIP, errno.ENOENT)
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(60)
            report = status_now(director, backend)
            nursery.cancel_scope.cancel()
    assert [e for e in logs if e["event"] == "ipvs_table_moved"] == []
    adds = [op for op in backend.sent if isinstance(op, AddService) and op.service.key == VIP]
    # 1, 2, 4, then every reconcile_interval (5 s): about 13 tries in 60 s.
    assert 10 <= len(adds) <= 16
    assert list(director.refusals) == [("service", VIP)]
    [vip, vip2] = report
    assert [rs.pending for rs in vip.real_servers] == [
        "not in the kernel: its service is refused"
    ] * 2
    assert [rs.pending for rs in vip2.real_servers] == [None]


async def test_interrupted_reads_back_off_and_the_table_converges_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    backend.reads_failing = 1_000_000
    network = FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1")
    director = faulty_director(backend, network)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)  # starts although nothing can be read
            await trio.sleep(60)
            reads = backend.reads
            # Passes 1, 2, 4, 5, 5... s apart (and one per health change),
            # each read tried READ_ATTEMPTS times: not thousands.
            assert reads <= READ_ATTEMPTS * 20
            assert "DumpInterrupted" not in director.status_line()
            assert "passes failing" in director.status_line()
            backend.reads_failing = 0
            await trio.sleep(5.1)
            assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
            nursery.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "pass_failed"]
    assert [e["failures_in_row"] for e in failed] == [1, 10]
    assert failed[0]["error_type"] == "DumpInterrupted"
    assert [e["event"] for e in logs].count("pass_recovered") == 1


async def test_lost_acknowledgements_mean_a_fresh_read_not_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    backend.acks_lost = 3
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(15)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        assert weights(backend, VIP2) == {"10.0.2.1": 3}
        nursery.cancel_scope.cancel()


async def test_a_probe_that_raises_is_a_failed_probe_and_the_daemon_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def buggy(check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(0.01)
        if address == ip_address("10.0.1.2"):
            raise UnicodeError("label empty or too long")
        return ProbeResult.success(0.01)

    backend = FaultyKernel()
    director = Director(
        parse_config(TWO_SERVICES), KernelTable(backend, threaded=False), probe=buggy
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(3)
        assert weights(backend) == {"10.0.1.1": 5}
        last = director.checker.state(RealServerId(VIP, ip_address("10.0.1.2"), 80)).last
        assert last is not None and (last.ok, last.reason) == (False, Reason.ERROR)
        assert last.detail == "UnicodeError: label empty or too long"
        nursery.cancel_scope.cancel()


# -- ownership -------------------------------------------------------------------


async def test_a_service_dropped_by_a_reload_is_deleted_although_an_earlier_operation_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operators' report: `owned` was reset before the apply, so a service a
    reload dropped stayed in the kernel, unchecked, for good, when an earlier
    operation of the same batch failed."""
    backend = FaultyKernel()
    network = FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.1.9")
    director = faulty_director(backend, network)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(2)
        assert VIP2 in {e.service.key for e in backend.services()}
        backend.refuse = refuses_destination("10.0.1.9", errno.EINVAL)
        await director.exclusive(
            lambda: director.reload(parse_config(CONFIG.replace("10.0.1.2:80", "10.0.1.9:80")))
        )
        await trio.sleep(12)
        nursery.cancel_scope.cancel()
    assert {e.service.key for e in backend.services()} == {VIP}
    assert VIP2 not in director.owned


async def test_a_restart_deletes_what_a_previous_run_owned_and_the_config_dropped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    state = tmp_path / "state.json"
    backend = FaultyKernel()
    network = FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1")
    first = faulty_director(backend, network, state_path=state)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await trio.sleep(2)
        nursery.cancel_scope.cancel()
    assert statefile.load(state).owned == {VIP, VIP2}
    hand_made = ServiceKey.inet(Protocol.TCP, "10.0.0.3", 80)
    backend.apply([AddService(Service(hand_made, "rr"))])

    # Restarted (not reloaded) with VIP2 gone from the config.
    loaded = statefile.load(state)
    second = faulty_director(backend, network, CONFIG, state_path=state, owned=loaded.owned)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        assert {e.service.key for e in backend.services()} == {VIP, hand_made}
        nursery.cancel_scope.cancel()
    assert statefile.load(state).owned == {VIP}


async def test_a_new_service_is_owned_on_disk_before_the_kernel_has_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A crash right after the kernel took a service must not leave it
    unowned: the state file says so before the service is sent."""
    state = tmp_path / "state.json"
    backend = FaultyKernel()
    seen_on_disk: list[frozenset[ServiceKey]] = []

    def look(op: Operation) -> None:
        if isinstance(op, AddService):
            seen_on_disk.append(statefile.load(state).owned)
        return None

    backend.refuse = look  # type: ignore[assignment]
    director = faulty_director(backend, FakeNetwork(), state_path=state)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        nursery.cancel_scope.cancel()
    assert seen_on_disk == [frozenset({VIP, VIP2})] * 2


# -- what operators reported wrong -------------------------------------------------

SLOW_START = """
[daemon]
reconcile_interval = 5.0
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "wrr"
slow_start = 5
check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 2, fall = 3 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 100
[[virtual_server.real_server]]
address = "10.0.1.2:80"
weight = 50
"""


async def test_slow_start_does_not_ramp_again_after_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operators' report: slow_start = 5, weights 100 and 50, both up; after a
    restart each server fell to weight 1 at its first probe and ramped again."""
    existing = ServiceEntry(
        Service(VIP, scheduler="wrr"),
        (
            DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=100)),
            DestinationEntry(Destination(ip_address("10.0.1.2"), 80, weight=50)),
        ),
    )
    backend = FaultyKernel([existing])
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"), SLOW_START)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert weights(backend) == {"10.0.1.1": 100, "10.0.1.2": 50}
    assert not [op for op in backend.sent if isinstance(op, EditDestination)]


async def test_slow_start_goes_on_from_the_weight_found_after_a_restart_mid_ramp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    existing = ServiceEntry(
        Service(VIP, scheduler="wrr"),
        (DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=60)),),
    )
    backend = FaultyKernel([existing])
    director = faulty_director(backend, FakeNetwork("10.0.1.1"), SLOW_START)
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        for _ in range(30):
            await trio.sleep(0.25)
            seen.append(weights(backend).get("10.0.1.1", 0))
        nursery.cancel_scope.cancel()
    assert min(seen) >= 60
    assert seen == sorted(seen)
    assert seen[-1] == 100


async def test_slow_start_does_not_ramp_again_after_a_reload_that_retimes_the_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"), SLOW_START)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(10)
        assert weights(backend) == {"10.0.1.1": 100, "10.0.1.2": 50}
        sent = len(backend.sent)
        retimed = parse_config(SLOW_START.replace("interval = 1.0", "interval = 2.0"))
        await director.exclusive(lambda: director.reload(retimed))
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert weights(backend) == {"10.0.1.1": 100, "10.0.1.2": 50}
    assert backend.sent[sent:] == []


async def test_a_dynamic_weight_stays_through_a_failed_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Operators' report: an exec check with dynamic_weight reported 7; one
    probe timed out (fewer failures than fall): the weight jumped to the
    configured 5 until the next success."""
    answers = iter([7, None] + [7] * 100)

    async def exec_probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(0.01)
        if address != ip_address("10.0.1.1"):
            return ProbeResult.failure(Reason.REFUSED, 0.01)
        weight = next(answers)
        if weight is None:
            return ProbeResult.failure(Reason.TIMEOUT, 0.5)
        return ProbeResult.success(0.01, weight=weight)

    backend = FaultyKernel()
    director = Director(
        parse_config(CONFIG), KernelTable(backend, threaded=False), probe=exec_probe
    )
    seen: list[int] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        for _ in range(40):
            await trio.sleep(0.1)
            if "10.0.1.1" in weights(backend):
                seen.append(weights(backend)["10.0.1.1"])
        nursery.cancel_scope.cancel()
    assert seen and set(seen) == {7}


# -- one owner ---------------------------------------------------------------------


async def test_jobs_run_one_at_a_time_in_order_and_never_during_a_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    order: list[str] = []

    def job(name: str) -> Callable[[], Awaitable[str]]:
        async def run() -> str:
            order.append(f"{name} start")
            reads = backend.reads
            await trio.sleep(3)  # passes are due meanwhile; none may run
            assert backend.reads == reads
            order.append(f"{name} end")
            return name

        return run

    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        results: list[str] = []

        async def submit(name: str) -> None:
            results.append(await director.exclusive(job(name)))

        for name in ("first", "second", "third"):
            nursery.start_soon(submit, name)
            await trio.lowlevel.checkpoint()
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert order == [f"{n} {e}" for n in ("first", "second", "third") for e in ("start", "end")]
    assert results == ["first", "second", "third"]


async def test_a_job_that_raises_reports_to_its_caller_and_the_engine_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))

    async def broken() -> None:
        raise ValueError("a bug in a control request")

    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        with pytest.raises(ValueError, match="a bug in a control request"):
            await director.exclusive(broken)
        network_change = director.checker.states()
        assert network_change
        await trio.sleep(2)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("text", ["", "# cut short by a failed deploy\n[daemon]\n"])
async def test_a_reload_to_a_file_without_a_virtual_service_is_refused(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, text: str
) -> None:
    """Operator trial (stop 25): `directorctl reload` of an empty file
    deleted every service, all traffic stopped."""
    path = tmp_path / "director.toml"
    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await until(lambda: weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7})
        running = director.config
        path.write_text(text)
        result = await director.reload_file(path)
        assert result.summary is None
        assert result.errors == (
            f"{path}: no virtual service: the reload would delete the running config's 1"
            " virtual service; the running config is kept (restart directord to run without"
            " any)",
        )
        assert director.config is running
        await trio.sleep(10)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        path.write_text(CONFIG.replace("weight = 5", "weight = 4"))
        assert (await director.reload_file(path)).summary is not None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("section", "old", "new", "named"),
    [
        ("control", 'socket = "/run/a.sock"', 'socket = "/run/b.sock"', "[control] socket"),
        ("control", 'group = "adm"', 'group = "root"', "[control] group"),
        ("control", "mode = 0o660", "mode = 0o600", "[control] mode"),
        ("daemon", 'state_file = "/tmp/a"', 'state_file = "/tmp/b"', "[daemon] state_file"),
    ],
)
async def test_a_reload_that_needs_a_restart_is_rejected_and_keeps_the_running_config(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    section: str,
    old: str,
    new: str,
    named: str,
) -> None:
    """Operators' report: edits to [control] and [daemon] were silently
    ignored on reload."""
    base = CONFIG.replace(
        "[daemon]\n",
        f"[{section}]\n{old}\n[daemon]\n" if section != "daemon" else f"[daemon]\n{old}\n",
    )
    path = tmp_path / "director.toml"
    path.write_text(base)
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1"), base)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        running = director.config
        path.write_text(base.replace(old, new).replace("weight = 5", "weight = 6"))
        result = await director.reload_file(path)
        nursery.cancel_scope.cancel()
    assert result.summary is None
    assert [named in e and "needs a restart" in e for e in result.errors] == [True]
    # The line of the new value in the new file (operator trial, stop 25).
    line = base.replace(old, new).splitlines().index(new) + 1
    assert f"{named} (line {line}): " in result.errors[0], result.errors
    assert director.config is running


async def test_reloads_apply_in_the_order_they_were_asked_for(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "director.toml"
    path.write_text(CONFIG)
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"), CONFIG)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(2)
        path.write_text(CONFIG.replace("weight = 5", "weight = 6"))
        async with trio.open_nursery() as reloads:
            reloads.start_soon(director.reload_file, path)
            await trio.lowlevel.checkpoint()
            path.write_text(CONFIG.replace("weight = 5", "weight = 8"))
            reloads.start_soon(director.reload_file, path)
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    # The first reload read the file in its turn, after the second write.
    assert weights(backend)["10.0.1.1"] == 8


async def test_a_dropped_service_a_read_skipped_is_still_deleted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found on the real kernel: an IPVS dump is no consistent snapshot
    (another tool's deletes during it make it skip services, and it never
    says so). A service a reload dropped while the read skipped it stopped
    being owned, and stayed in the kernel for good."""
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(2)
        backend.skipped = {VIP2}
        await director.exclusive(lambda: director.reload(parse_config(CONFIG)))
        assert VIP2 not in {e.service.key for e in MemoryBackend.services(backend)}
        assert VIP2 not in director.owned
        # Gone already: the kernel's "No such service" ends the ownership too.
        backend.skipped = set()
        nursery.cancel_scope.cancel()


async def test_an_add_of_what_the_kernel_has_means_read_again_not_a_refusal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"))
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(2)
            backend.skipped = {VIP}  # the next reads miss it: the pass adds it again
            await trio.sleep(6)
            backend.skipped = set()
            await trio.sleep(6)
            nursery.cancel_scope.cancel()
    assert director.refusals == {}
    assert not [e for e in logs if e["event"] == "ipvs_refused"]
    moved = [e for e in logs if e["event"] == "ipvs_table_moved"]
    assert moved and all(e["operations"] >= 1 for e in moved)
    assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}


@pytest.mark.parametrize("flush", [True, False])
async def test_no_pass_changes_the_table_after_the_stop(
    autojump_clock: trio.testing.MockClock, unmanaged: ServiceEntry, flush: bool
) -> None:
    """Operator trial: an `ipvs_apply` was logged after `table_left_in_place`.
    The stop is a job; the loop went on to the pass that was due, before the
    daemon cancelled it: after a flush, that pass put the services back."""
    backend = MemoryBackend([unmanaged])
    network = FakeNetwork("10.0.1.1")
    director = make_director(backend, network)
    director.config = replace(
        director.config, daemon=replace(director.config.daemon, flush_on_stop=flush)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(3.0)  # 10.0.1.1 is up and in the table
        before = backend.services()
        director.poke("a change")  # a pass is due when the stop's job ends
        with structlog.testing.capture_logs() as logs:
            await director.stop()
            probes = network.probes
            network.alive.clear()  # and 10.0.1.1 goes down after it
            await trio.sleep(10.0)  # the daemon's cancel may come later
        nursery.cancel_scope.cancel()
    assert backend.services() == ([unmanaged] if flush else before)
    assert [e["event"] for e in logs if e["event"] in ("ipvs_apply", "ipvs_op")] == []
    # Trial 40: the checks went on through the stop, logging servers up and
    # down in a table being flushed. They end with the stop's start.
    assert network.probes == probes
    assert [e for e in logs if e["event"].startswith("real_server_")] == []
    assert director.checker.state(next(iter(director.checker.states()))).status is Health.UP


async def test_the_checks_end_when_the_stop_is_asked_not_when_its_job_runs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 41: a job ran when the stop came (a pass); the stop's job
    waited its turn, and meanwhile probes went on, logging servers going
    down that the stop then left in the table."""
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = make_director(backend, network)
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(3.0)
        nursery.start_soon(director.exclusive, release.wait)  # a job that runs long
        await trio.sleep(0.1)
        with structlog.testing.capture_logs() as logs:
            nursery.start_soon(director.stop)
            while not director.stop_asked:  # (until the stop's task has run)
                await trio.lowlevel.checkpoint()
            probes = network.probes
            network.alive.clear()
            await trio.sleep(5.0)  # the stop's job still waits
            release.set()
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert network.probes == probes
    assert [e for e in logs if e["event"].startswith(("real_server_", "probe_"))] == []
    assert "table_left_in_place" in [e["event"] for e in logs]
    assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}


async def test_initial_up_puts_every_server_in_before_a_probe_and_fall_takes_one_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1")
    config = CONFIG.replace("fall = 3 }", 'fall = 3, initial = "up" }')
    director = Director(
        parse_config(config), KernelTable(backend, threaded=False), probe=network.probe,
        rng=random.Random(1),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        with structlog.testing.capture_logs() as logs:
            await nursery.start(director.run)
        assert (network.probes, weights(backend)) == (0, {"10.0.1.1": 5, "10.0.1.2": 7})
        # Operator trial (stop 25): ready said "up: 0" alone, with both in the table.
        (ready,) = [e for e in logs if e["event"] == "ready"]
        assert (ready["up"], ready["unknown"], ready["initial_up"]) == (0, 2, 2)
        assert director.status_line().endswith(
            '0 up, 0 down, 2 unknown (2 of them in service: initial = "up")'
        )
        await until(lambda: "10.0.1.2" not in weights(backend))
        assert director.counts()["initial_up"] == 0
        states = director.checker.states()
        assert [s.failures_in_row for s in states.values() if s.status is Health.DOWN] == [3]
        assert weights(backend) == {"10.0.1.1": 5}
        # a reload that adds a server puts it in at once; one that retimes
        # the check of the server found dead keeps it out
        grown = config.replace("interval = 1.0", "interval = 2.0") + (
            '[[virtual_server.real_server]]\naddress = "10.0.1.3:80"\nweight = 2\n'
        )
        probes = network.probes
        await director.exclusive(lambda: director.reload(parse_config(grown)))
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.3": 2}
        assert network.probes == probes
        nursery.cancel_scope.cancel()


async def test_a_stop_abandons_a_reload_still_reading_its_file(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parse runs in a thread, in the engine's turn: a stop no longer
    waits for it (a large file under a busy loop took tens of seconds, past
    systemd's stop timeout). The reload, and one queued behind it, answer
    that they were abandoned; the running config stays."""
    path = tmp_path / "director.toml"
    path.write_text(CONFIG.replace("weight = 5", "weight = 6"))
    parsing, release = threading.Event(), threading.Event()
    read = configload._read

    def slow_read(name: str) -> tuple[str, KernelModules]:
        parsing.set()
        release.wait(30)
        return read(name)

    monkeypatch.setattr(configload, "_read", slow_read)
    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    results: list[ReloadResult] = []

    async def reload() -> None:
        results.append(await director.reload_file(path))

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            await trio.sleep(1.1)
            nursery.start_soon(reload)
            await trio.to_thread.run_sync(parsing.wait)
            nursery.start_soon(reload)  # queued behind the first
            await trio.testing.wait_all_tasks_blocked()
            await director.stop()
            assert [r.errors for r in results] == [(f"{path}: {ABANDONED}",)] * 2
            assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
            assert director.config.virtual_servers[0].real_servers[0].weight == 5
            nursery.cancel_scope.cancel()
    finally:
        release.set()


async def test_a_stop_during_a_parse_in_the_loops_thread_abandons_the_reload(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small change is parsed in the loop's own thread (configload), where
    no checkpoint lets a stop's cancel in: the reload checks for it after
    the parse, and is abandoned as one still reading its file is."""
    path = tmp_path / "director.toml"
    path.write_text(CONFIG.replace("weight = 5", "weight = 6"))
    backend = MemoryBackend()
    director = make_director(backend, FakeNetwork("10.0.1.1", "10.0.1.2"))
    parse = configload.parse_config

    def parse_config(*args: Any) -> Config:
        assert director._parse is not None
        director._parse.cancel()  # what stop() does first
        return parse(*args)

    monkeypatch.setattr(configload, "parse_config", parse_config)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        result = await director.reload_file(path)
        assert result.errors == (f"{path}: {ABANDONED}",)
        assert weights(backend) == {"10.0.1.1": 5, "10.0.1.2": 7}
        nursery.cancel_scope.cancel()


async def test_a_state_file_that_cannot_be_written_is_reported_once_a_minute(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Operator trial (stop 25): with the state file's path a directory, every
    save failed and logged a line, ten in seven seconds, in Python's
    notation ("[Errno 21] Is a directory: '...'")."""
    backend = MemoryBackend()
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    config = parse_config(CONFIG_TEMPLATE.replace("ON_FAILURE", "remove"))
    director = Director(
        config,
        KernelTable(backend, threaded=False),
        probe=network.probe,
        rng=random.Random(1),
        state_path=tmp_path,  # a directory: no file can replace it
    )
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            for _ in range(13):  # a server down and up again: passes, each saving
                network.alive.discard(ip_address("10.0.1.2"))
                await until(lambda: "10.0.1.2" not in weights(backend))
                network.alive.add(ip_address("10.0.1.2"))
                await until(lambda: "10.0.1.2" in weights(backend))
            ended = trio.current_time()
            nursery.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "state_file_write_failed"]
    assert ended > 60
    assert 2 <= len(failed) <= math.ceil(ended / 60)
    assert failed[0]["error"] == "Is a directory"
    assert failed[0]["suppressed"] == 0
    assert failed[1]["suppressed"] > 0
