"""Wake-ups per probe at low rates (issue 8): with the daemon's tick, a TCP
probe alone is begun and its verdict read in one wake-up of the scheduler
(checker.py's `read_now` after a hand-out), and a watcher answers an event
at once unless it already made READS_A_TICK rounds in that tick (watch.py):
a busy watcher still reads about once a tick. Counted with an instrument
under the autojump clock, against real loopback sockets. And `nap`, the
timed wait of those wake-ups, which ends at its deadline without raising
Cancelled."""

from __future__ import annotations

import collections
import random
import socket
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
import trio
import trio.testing

from director.engine import CHECK_TICK
from director.health.checker import Checker, Target
from director.health.probes.tcp import Connects, destination
from director.health.probes.watch import READS_A_TICK, nap, nap_until
from director.health.result import ProbeResult
from director.health.spec import TcpCheck, Timing
from director.health.state import HealthState

HERE = ip_address("127.0.0.1")
TICK = CHECK_TICK  # the daemon's


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A loopback port whose listener never accepts: connects complete in
    its backlog, within connect(2)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1024)
        yield server.getsockname()[1]


class Steps(trio.abc.Instrument):
    """Task steps by the task's function name."""

    def __init__(self) -> None:
        self.steps: collections.Counter[str] = collections.Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name.rsplit(".", 1)[-1]] += 1


async def test_a_tcp_probe_alone_is_begun_and_read_in_one_wake_up(
    listening_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    # Ten targets, one probe each a second, at random within it: most
    # ticks have one probe due.
    # (Distinct timeouts make distinct targets on the one port.)
    targets: dict[int, Target] = {
        n: (TcpCheck(timing=Timing(interval=1.0, timeout=0.5 + n / 100)), HERE, listening_port)
        for n in range(10)
    }
    results: list[tuple[float, ProbeResult]] = []
    lateness: list[float] = []

    def on_result(key: int, before: HealthState, after: HealthState) -> None:
        assert after.last is not None
        results.append((trio.current_time(), after.last))

    def on_start(target: Target, late: float) -> None:
        lateness.append(late)

    checker: Checker[int] = Checker(
        on_result=on_result, on_start=on_start, rng=random.Random(3), tick=TICK
    )
    checker.set_targets(targets)
    steps = Steps()
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run)
        await trio.sleep(1.0)  # every target's first probe
        results.clear()
        lateness.clear()
        trio.lowlevel.add_instrument(steps)
        await trio.sleep(5.0)
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert 45 <= len(results) <= 55
    assert all(result.ok for _, result in results)
    # Read in the wake-up that began it: no time passed.
    assert all(result.latency == 0 for _, result in results)
    # Starts as late as before: at most one tick.
    assert len(lateness) >= len(results)
    assert max(lateness) <= TICK
    # One step of the scheduler for each tick with a probe due (at most one
    # a probe), and the watcher is not woken for them at all.
    assert steps.steps["_dispatch"] + steps.steps["run"] <= len(results)
    assert steps.steps["watch"] == 0


async def test_an_event_is_read_at_once_unless_the_tick_had_its_rounds(
    listening_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    """Probes begun one at a time, 1 ms apart, in a 1 s tick, through
    Connects itself (no `read_now`): the first READS_A_TICK verdicts are
    read as their connects complete; the others wait for the next tick."""
    tick = 1.0
    connects = Connects(tick=tick)
    where = destination(TcpCheck(timing=Timing(timeout=5.0)), HERE, listening_port)
    verdicts: list[tuple[float, ProbeResult]] = []

    def done(result: ProbeResult) -> None:
        verdicts.append((trio.current_time(), result))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connects.watch)
        await trio.sleep_until(10.5)
        for _ in range(5):
            connects.start(where, done)
            await trio.sleep(0.001)
        await trio.sleep_until(12.5)
        for _ in range(3):  # a new tick: at once again
            connects.start(where, done)
            await trio.sleep(0.001)
        await trio.sleep_until(13.5)
        nursery.cancel_scope.cancel()
    assert all(result.ok for _, result in verdicts)
    read_at = [round(at, 6) for at, _ in verdicts]
    first = [10.5 + 0.001 * n for n in range(READS_A_TICK)]
    assert read_at[:READS_A_TICK] == pytest.approx(first)
    assert read_at[READS_A_TICK:5] == [11.0] * (5 - READS_A_TICK)
    assert read_at[5:5 + READS_A_TICK] == pytest.approx([12.5 + 0.001 * n for n in range(READS_A_TICK)])  # fmt: skip
    assert read_at[5 + READS_A_TICK :] == [13.0] * (3 - READS_A_TICK)
    # The latency is the handshake's (the kernel's round trip on loopback,
    # well under a millisecond), not the wait for the read: 0.496 s for the
    # fifth, read at the next tick.
    assert all(0 <= result.latency < 0.001 for _, result in verdicts)
    assert verdicts[4][1].latency > 0  # a real round trip, not the virtual clock's


async def test_a_nap_ends_at_its_deadline_as_moved_without_a_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        with trio.CancelScope(deadline=start + 5.0) as scope:

            async def move() -> None:
                await trio.sleep(1.0)
                scope.deadline = start + 2.0

            nursery.start_soon(move)
            await nap(scope)
            woke = trio.current_time()
    assert woke == start + 2.0
    # Rescheduled with a value: no Cancelled went through the scope.
    assert scope.cancel_called and not scope.cancelled_caught
    await nap_until(start + 3.0)
    assert trio.current_time() == start + 3.0


async def test_a_cancellation_from_outside_goes_through_a_nap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    with trio.CancelScope(deadline=start + 1.0) as outer:
        with trio.CancelScope(deadline=start + 10.0) as scope:
            await nap(scope)
        pytest.fail("the nap outlived its caller's cancellation")  # pragma: no cover
    assert outer.cancelled_caught and not scope.cancel_called
    assert trio.current_time() == start + 1.0


async def test_probes_a_verdict_read_now_admits_are_begun_by_the_watcher(
    listening_port: int, autojump_clock: trio.testing.MockClock
) -> None:
    """One probe at a time (max_probes=1), five due in the same tick: the
    first one's verdict, read by the scheduler's read_now, frees the slot
    for the next, whose start the watcher defers and then begins, and so on:
    every probe runs once an interval, none lost or doubled."""
    targets: dict[int, Target] = {
        n: (TcpCheck(timing=Timing(interval=1.0, timeout=0.5 + n / 100)), HERE, listening_port)
        for n in range(5)
    }
    starts: collections.Counter[int] = collections.Counter()
    results: collections.Counter[int] = collections.Counter()

    def on_result(key: int, before: HealthState, after: HealthState) -> None:
        assert after.last is not None and after.last.ok
        results[key] += 1

    def on_start(target: Target, late: float) -> None:
        starts[target[0].timing.timeout] += 1
        assert late <= 2 * TICK  # a tick, and the turns of the four before it

    class SameDue(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return 0.5  # every target first due at 0.5 s

    checker: Checker[int] = Checker(
        on_result=on_result, on_start=on_start, rng=SameDue(), tick=TICK, max_probes=1
    )
    checker.set_targets(targets)
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run)
        await trio.sleep(3.0)  # due at 0.5, 1.5 and 2.5 s
        nursery.cancel_scope.cancel()
    assert results == {n: 3 for n in range(5)}
    assert sorted(starts.values()) == [3] * 5
