"""Scoped passes: a health change, a reload or a retry costs the work of the
services it touches, not of the whole table (issue 8); full passes still
repair drift and delete what the config dropped. The engine over the
in-memory backend, counted through a wrapper, under trio's autojump clock."""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import Collection, Sequence
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from engine_support import Network, running

from director import configload, engine
from director.config import parse_config
from director.config.model import RealServerId, VirtualServer
from director.desired import DesiredService
from director.engine import SPACING_MAX, Director
from director.health.result import Reason
from director.health.state import Health, Transition
from director.ipvs.errors import KernelError, error_for
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import Destination, IPAddress, Protocol, ServiceEntry, ServiceKey
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    Operation,
)
from director.kernel import KernelTable
from director.refusals import service_of

SERVICES = 3
PER_SERVICE = 4


def key(i: int) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, "10.0.0.1", 8000 + i)


def config_text(services: int = SERVICES, extra: dict[int, str] | None = None) -> str:
    lines = ["[daemon]", "reconcile_interval = 5.0"]
    for i in range(services):
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "10.0.0.1:{8000 + i}"',
            'scheduler = "rr"',
            'check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }',
            (extra or {}).get(i, ""),
        ]
        for j in range(PER_SERVICE):
            lines += ["[[virtual_server.real_server]]", f'address = "10.0.{i + 1}.{j + 1}"']
    return "\n".join(lines) + "\n"


class CountingKernel(MemoryBackend):
    """The in-memory backend, recording the services each read returned and
    every operation sent; `refuse` may refuse an operation, `hide` keeps
    services out of reads (as a dump that skipped them)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[set[ServiceKey]] = []  # the services each read returned
        self.asked: list[set[ServiceKey] | None] = []  # and those it asked for (None: all)
        self.sent: list[Operation] = []
        self.refused_schedulers: set[str] = set()
        self.hide: set[ServiceKey] = set()

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        entries = [e for e in super().services(only, brief=brief) if e.service.key not in self.hide]
        self.reads.append({e.service.key for e in entries})
        self.asked.append(None if only is None else set(only))
        return entries

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        outcomes: list[KernelError | None] = []
        for op in operations:
            self.sent.append(op)
            if isinstance(op, AddService) and op.service.scheduler in self.refused_schedulers:
                outcomes.append(error_for(errno.ENOENT, "AddService"))
                continue
            outcomes.extend(super().apply_each([op]))
        return outcomes

    def table(self) -> dict[ServiceKey, set[IPAddress]]:
        return {
            e.service.key: {d.destination.address for d in e.destinations}
            for e in MemoryBackend.services(self)
        }


def director_for(
    backend: CountingKernel, network: Network, text: str | None = None, **kwargs: object
) -> Director:
    return Director(
        parse_config(text or config_text()),
        KernelTable(backend, threaded=False),
        probe=network.probe,
        rng=random.Random(3),
        **kwargs,  # type: ignore[arg-type]
    )


async def full_table(backend: CountingKernel, services: int = SERVICES) -> None:
    while sum(len(a) for a in backend.table().values()) < services * PER_SERVICE:  # noqa: ASYNC110
        await trio.sleep(0.1)


async def test_a_transition_changes_only_its_own_service_and_reads_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pass plans from the service as the last pass left it: no read of
    its destinations for one change."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    async with running(director):
        await full_table(backend)
        # Just after a drift pass, so that none falls into the window.
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        reads, sent = len(backend.reads), len(backend.sent)
        network.down.add(ip_address("10.0.2.3"))
        while ip_address("10.0.2.3") in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert backend.reads[reads:] == []
    assert backend.sent[sent:] == [DeleteDestination(key(1), ip_address("10.0.2.3"), 8001)]


async def test_a_transition_after_another_tool_moved_the_table_reads_and_repairs(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Someone deletes a destination by hand, then it goes down: the delete
    planned from the pass's own view finds nothing (the table moved), so
    the service is read and the rest of the table stays as desired; a
    destination deleted by hand that is still up comes back by the next
    read of its service."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        gone, kept = ip_address("10.0.2.3"), ip_address("10.0.2.4")
        MemoryBackend.apply_each(
            backend,
            [DeleteDestination(key(1), gone, 8001), DeleteDestination(key(1), kept, 8001)],
        )
        reads, sent = len(backend.reads), len(backend.sent)
        network.down.add(gone)
        while key(1) not in set().union(*backend.reads[reads:]):  # noqa: ASYNC110
            await trio.sleep(0.01)
        while kept not in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert backend.sent[sent] == DeleteDestination(key(1), gone, 8001)
    assert AddDestination(key(1), kept_destination(director, 1, kept)) in backend.sent[sent:]
    assert gone not in backend.table()[key(1)]
    assert backend.table()[key(1)] == {ip_address(f"10.0.2.{j}") for j in (1, 2, 4)}


def kept_destination(director: Director, i: int, address: IPAddress) -> Destination:
    vs = next(v for v in director.effective.virtual_servers if v.key == key(i))
    rs = next(r for r in vs.real_servers if r.address == address)
    return rs.destination(rs.weight)


async def test_a_transition_after_a_control_job_reads_its_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A job (a control command, a reload) may change the kernel itself:
    the next transition's pass reads its service again."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)

        async def job() -> None:
            MemoryBackend.apply_each(backend, [DeleteDestination(key(1), ip_address("10.0.2.4"), 8001)])  # fmt: skip

        await director.exclusive(job)
        reads = len(backend.reads)
        network.down.add(ip_address("10.0.2.3"))
        while ip_address("10.0.2.3") in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert backend.reads[reads] == {key(1)}
    assert ip_address("10.0.2.4") in backend.table()[key(1)]  # the read saw it gone


def one_server_reload(tmp_path: Path) -> tuple[CountingKernel, Director, Path]:
    """A director, and a file of its config with one real server's weight
    changed (10.0.3.2 of the third service: 9)."""
    # No drift pass may fall due while the reload reads its file in a real
    # thread (the autojump clock runs on meanwhile, as long as the host takes).
    text = config_text().replace("reconcile_interval = 5.0", "reconcile_interval = 3600.0")
    backend = CountingKernel()
    director = director_for(backend, Network(), text)
    path = tmp_path / "director.toml"
    server = 'address = "10.0.3.2"'
    path.write_text(text.replace(server, server + "\nweight = 9"))
    return backend, director, path


async def test_a_reload_with_one_server_changed_sends_exactly_one_operation(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend, director, path = one_server_reload(tmp_path)
    async with running(director):
        await full_table(backend)
        reads, sent = len(backend.reads), len(backend.sent)
        result = await director.reload_file(path)
    assert result.summary is not None
    assert [type(op) for op in result.summary.operations] == [EditDestination]
    assert backend.sent[sent:] == list(result.summary.operations)
    op = result.summary.operations[0]
    assert isinstance(op, EditDestination)
    assert (service_of(op), op.destination.address, op.destination.weight) == (
        key(2),
        ip_address("10.0.3.2"),
        9,
    )
    # One read of its service: the adoption's, which the pass plans from.
    assert backend.reads[reads:] == [{key(2)}]
    assert backend.asked[reads:] == [{key(2)}]


async def test_a_reload_that_adds_a_service_reads_it_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The adoption's read says the new service is not in the kernel; the
    pass adds it from that, without a read of its own."""
    text = config_text().replace("reconcile_interval = 5.0", "reconcile_interval = 3600.0")
    backend = CountingKernel()
    director = director_for(backend, Network(), text)
    path = tmp_path / "director.toml"
    path.write_text(
        config_text(SERVICES + 1).replace("reconcile_interval = 5.0", "reconcile_interval = 3600.0")
    )
    async with running(director):
        await full_table(backend)
        reads = len(backend.asked)
        result = await director.reload_file(path)
    assert result.summary is not None
    assert result.summary.services_added == (key(SERVICES),)
    assert [type(op) for op in result.summary.operations] == [AddService]
    assert backend.asked[reads:] == [{key(SERVICES)}]


@pytest.mark.parametrize("inline", [True, False])
async def test_a_reload_parses_a_small_change_in_the_loops_thread_and_a_large_one_in_a_worker(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    inline: bool,
    parse_threads: list[bool],
) -> None:
    """A change the last parse does not remember of at most INLINE_PARSE
    characters is parsed where the engine runs: beside a busy loop a
    worker thread got the GIL back a switch interval at a time, and cost
    the reload many times its parse (stop 35). A larger one is parsed in a
    worker thread, so that the loop goes on meanwhile."""
    backend, director, path = one_server_reload(tmp_path)
    if not inline:
        monkeypatch.setattr(configload, "INLINE_PARSE", 10)
    async with running(director):
        await full_table(backend)
        result = await director.reload_file(path)
    assert result.summary is not None
    assert [type(op) for op in result.summary.operations] == [EditDestination]
    assert parse_threads == [inline]


async def test_a_refusal_in_one_service_backs_off_while_another_fails_over(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend, network = CountingKernel(), Network()
    backend.refused_schedulers.add("sed")
    text = config_text(extra={0: ""}).replace('scheduler = "rr"', 'scheduler = "sed"', 1)
    director = director_for(backend, network, text)
    async with running(director):
        await trio.sleep(30)
        assert key(0) not in backend.table()
        assert backend.table()[key(1)] == {ip_address(f"10.0.2.{j + 1}") for j in range(4)}
        network.down.add(ip_address("10.0.2.1"))
        started = trio.current_time()
        while ip_address("10.0.2.1") in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
        # One probe (fall = 1) and one pass: the refusal holds nothing up.
        assert trio.current_time() - started <= 1.1
        await trio.sleep(30)
    tries = [op for op in backend.sent if isinstance(op, AddService) and op.service.key == key(0)]
    # 1, 2, 4 s, then every reconcile_interval (5 s): about 14 tries in 61 s.
    assert 10 <= len(tries) <= 16
    refusal = director.refusals[("service", key(0))]
    assert refusal.attempts == len(tries)
    # Its servers are not refusals of their own, and no other service has one.
    assert list(director.refusals) == [("service", key(0))]


async def test_a_reload_deletes_the_dropped_service_even_when_a_read_skipped_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    path = tmp_path / "director.toml"
    path.write_text(config_text(services=2))
    async with running(director):
        await full_table(backend)
        backend.hide.add(key(2))
        result = await director.reload_file(path)
    assert result.summary is not None
    assert result.summary.operations == (DeleteService(key(2)),)
    assert key(2) not in backend.table()
    assert key(2) not in director.owned


async def test_drift_passes_repair_the_table_while_another_service_flaps(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Scoped passes never postpone the full one: with a server flapping in
    one service, a server deleted behind the daemon's back in another comes
    back within reconcile_interval."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    flapper = ip_address("10.0.1.1")

    async def flap() -> None:
        while True:
            network.down ^= {flapper}
            await trio.sleep(1.5)

    async with running(director) as nursery:
        await full_table(backend)
        nursery.start_soon(flap)
        await trio.sleep(2)
        MemoryBackend.apply(backend, [DeleteDestination(key(2), ip_address("10.0.3.4"), 8002)])
        deleted = trio.current_time()
        while ip_address("10.0.3.4") not in backend.table()[key(2)]:  # noqa: ASYNC110
            await trio.sleep(0.05)
        repaired = trio.current_time() - deleted
    assert repaired <= 5.0 + 0.1
    flaps = [op for op in backend.sent if isinstance(op, AddDestination | DeleteDestination)]
    assert any(service_of(op) == key(0) for op in flaps)
    assert AddDestination in {type(op) for op in backend.sent[-3:] if service_of(op) == key(2)}


class SlowKernel(CountingKernel):
    """Each apply takes `cost` seconds of the test's clock (a kernel, or a
    loop, that is slow), and is timed."""

    def __init__(self, clock: trio.testing.MockClock, cost: float) -> None:
        super().__init__()
        self.clock, self.cost = clock, cost
        self.applies: list[tuple[float, float]] = []  # (start, end)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        start = trio.current_time()
        self.clock.jump(self.cost)
        self.applies.append((start, trio.current_time()))
        return super().apply_each(operations)


async def test_a_scoped_pass_waits_as_long_as_the_last_one_took(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Servers going down one after the other while each pass takes 0.3 s:
    a pass never starts sooner after the last one than that one took, so
    the changes of a burst share passes; each still reaches the kernel."""
    backend, network = SlowKernel(autojump_clock, 0.3), Network()
    director = director_for(backend, network)
    downs = [ip_address(f"10.0.{i + 1}.{j + 1}") for i in range(SERVICES) for j in range(3)]
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        first = len(backend.applies)
        for address in downs:
            network.down.add(address)
            await trio.sleep(0.1)
        while any(d in backend.table()[key(i)] for i in range(SERVICES) for d in downs):  # noqa: ASYNC110
            await trio.sleep(0.05)
    applies = backend.applies[first:]
    assert 1 < len(applies) < len(downs)
    for (start, end), (after, _) in itertools.pairwise(applies):
        assert after >= end + (end - start) - 0.02  # (the pass's own work before its apply)


async def test_after_a_pass_the_kernel_held_up_the_next_waits_at_most_spacing_max(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend, network = SlowKernel(autojump_clock, 0.0), Network()
    # No drift check in the way: it would take the change up at once.
    text = config_text().replace("reconcile_interval = 5.0", "reconcile_interval = 3600.0")
    director = director_for(backend, network, text)
    async with running(director):
        await full_table(backend)
        backend.cost = 4.0  # the next apply takes 4 s
        network.down.add(ip_address("10.0.1.1"))
        while ip_address("10.0.1.1") in backend.table()[key(0)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
        backend.cost = 0.0
        first = len(backend.applies)
        network.down.add(ip_address("10.0.2.1"))
        while ip_address("10.0.2.1") in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    (slow_start, slow_end), (after, _) = backend.applies[first - 1], backend.applies[first]
    assert slow_end - slow_start == 4.0
    assert slow_end + SPACING_MAX - 0.02 <= after < slow_end + 4.0


class PlannedServices:
    """Counts the services a pass planned as a whole (desired_service)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.services: list[ServiceKey] = []
        whole = engine.desired_service

        def counted(vs: VirtualServer, *args: Any, **kwargs: Any) -> DesiredService:
            self.services.append(vs.key)
            return whole(vs, *args, **kwargs)

        monkeypatch.setattr(engine, "desired_service", counted)


async def test_a_transition_plans_its_own_server_only(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass for one server's health change plans that server's place
    alone (O(the change), issue 8), and two changes of one service before a
    pass go out in that one pass."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    planned = PlannedServices(monkeypatch)
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        before, sent, passes = len(planned.services), len(backend.sent), director._passes
        network.down.update({ip_address("10.0.2.3"), ip_address("10.0.2.1")})
        while backend.table()[key(1)] != {ip_address("10.0.2.2"), ip_address("10.0.2.4")}:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert planned.services[before:] == []
        assert sorted(map(repr, backend.sent[sent:])) == sorted(
            repr(DeleteDestination(key(1), ip_address(f"10.0.2.{j}"), 8001)) for j in (1, 3)
        )
        assert director._passes - passes <= 2
        network.down.clear()
        while len(backend.table()[key(1)]) < PER_SERVICE:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert planned.services[before:] == []
        assert backend.sent[-1] in {
            AddDestination(key(1), kept_destination(director, 1, ip_address(f"10.0.2.{j}")))
            for j in (1, 3)
        }


async def test_a_sorry_server_service_is_planned_whole_and_takes_its_sorry_server(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quorum ties a service's servers together: a change of one server is
    planned over the whole service, which puts the sorry server in when the
    quorum is lost."""
    extra = {1: f'quorum = {PER_SERVICE}\nsorry_server = {{ address = "10.0.9.9" }}'}
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network, config_text(extra=extra))
    planned = PlannedServices(monkeypatch)
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        before = len(planned.services)
        network.down.add(ip_address("10.0.2.3"))
        while ip_address("10.0.9.9") not in backend.table()[key(1)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert key(1) in planned.services[before:]
    assert ip_address("10.0.2.3") not in backend.table()[key(1)]


async def test_a_server_back_in_a_ramping_service_ramps_up(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With slow start, the server's return is planned from its own place
    (weight 1, the ramp's start) and the ramp's steps over the whole
    service take it up to its weight."""
    text = config_text(extra={1: "slow_start = 3.0"})
    for j in range(1, PER_SERVICE + 1):
        text = text.replace(f'address = "10.0.2.{j}"', f'address = "10.0.2.{j}"\nweight = 10')
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network, text)
    planned = PlannedServices(monkeypatch)
    back = ip_address("10.0.2.3")

    def weight() -> int | None:
        (entry,) = MemoryBackend.services(backend, {key(1)})
        return next(
            (d.destination.weight for d in entry.destinations if d.destination.address == back),
            None,
        )

    async with running(director):
        await full_table(backend)
        await trio.sleep(10)  # the start's ramp is over
        assert weight() == 10
        network.down.add(back)
        while weight() is not None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        network.down.clear()
        while weight() is None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        before = len(planned.services)
        weights = [weight()]
        while weights[-1] != 10:
            await trio.sleep(0.25)
            weights.append(weight())
    assert weights[0] is not None and weights[0] < 4
    assert weights == sorted(weights, key=lambda w: w or 0) and len(set(weights)) >= 3
    assert key(1) in planned.services[before:]  # the ramp's steps


async def test_a_transition_hurries_the_probes_when_its_pass_can_start_at_once(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probes' slices end (Checker.hurry) when a health change can be
    passed at once: not for a second change the loop is already woken
    for, nor while the scoped passes' spacing holds the next back (a
    start's fill: thousands of first verdicts would each cost a yield)."""
    backend, network = CountingKernel(), Network()
    director = director_for(backend, network)
    hurried: list[float] = []
    monkeypatch.setattr(director.checker, "hurry", lambda: hurried.append(trio.current_time()))
    async with running(director):
        await full_table(backend)
        await trio.sleep(director._full_due() - trio.current_time() + 0.05)
        hurried.clear()
        # A server fails: its change hurries the probes, and reaches the table.
        network.down.add(ip_address("10.0.1.1"))
        while ip_address("10.0.1.1") in backend.table()[key(0)]:  # noqa: ASYNC110
            await trio.sleep(0.01)
        assert len(hurried) == 1
        # Two changes delivered before the loop runs: one hurry, for the first.
        hurried.clear()
        now = trio.current_time()
        down = Transition(Health.UP, Health.DOWN, now, now - 5, Reason.REFUSED, "", 0, 1)
        for address in ("10.0.2.1", "10.0.2.2"):
            director._on_transition(RealServerId(key(1), ip_address(address), 8001), down)
        assert len(hurried) == 1
        # A change while the spacing holds the next scoped pass back: none.
        hurried.clear()
        director._scoped_at = trio.current_time() + 10.0
        network.down.add(ip_address("10.0.3.1"))
        await trio.sleep(2.0)
        assert hurried == []
