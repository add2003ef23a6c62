"""The checker shares the loop: thousands of probes due at once, or their
verdicts read at once, are worked through in slices with a checkpoint
between them, so that the engine's pass and the control socket run in
between (checker.py's hand-out, watch.py's SLICE).

Each test sets the slice to 0 (a checkpoint after every slice's first step)
and watches a task started by the first probe: it must run long before the
100th; the same test with a slice too long to end shows what it catches."""

from __future__ import annotations

import itertools
import random
import socket
from collections.abc import Iterator
from ipaddress import ip_address

import pytest
import trio
import trio.testing

from director.health import checker as checker_module
from director.health.checker import Checker, Target
from director.health.probes import watch
from director.health.spec import TcpCheck, Timing
from director.health.state import HealthState, Transition

HERE = ip_address("127.0.0.1")
PROBES = 100
FOREVER = 1e9  # a slice that never ends within a test


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A loopback port whose listener never accepts: connects complete in
    its backlog."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(PROBES * 2)
        yield server.getsockname()[1]


def targets(port: int) -> dict[int, Target]:
    # Distinct timeouts make distinct targets: one probe each, all due on
    # the first 1 s tick.
    return {
        n: (TcpCheck(timing=Timing(interval=1.0, timeout=0.5 + n / 1000)), HERE, port)
        for n in range(PROBES)
    }


class Meter:
    """Counts probe starts (or first verdicts); the first starts a task that
    notes the count each time it gets to run."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.count, self.marks, self._nursery = 0, list[int](), nursery

    def note(self) -> None:
        if self.count == 0:
            self._nursery.start_soon(self._watch)
        self.count += 1

    async def _watch(self) -> None:
        for _ in range(PROBES * 3):
            self.marks.append(self.count)
            await trio.lowlevel.checkpoint()


async def progress(
    port: int, slice_: float, monkeypatch: pytest.MonkeyPatch, *, verdicts: bool
) -> list[int]:
    """The marks of a task started by the first probe's start (or, with
    `verdicts`, by its first verdict), with both slices set to `slice_`."""
    monkeypatch.setattr(checker_module, "SLICE", slice_)
    monkeypatch.setattr(watch, "SLICE", slice_)
    async with trio.open_nursery() as nursery:
        meter = Meter(nursery)

        def on_start(target: Target, lateness: float) -> None:
            if not verdicts:
                meter.note()

        def on_result(key: int, before: HealthState, after: HealthState) -> None:
            assert after.last is not None and after.last.ok
            if verdicts and after.successes_in_row == 1:  # the first round's
                meter.note()

        checker: Checker[int] = Checker(
            rng=random.Random(7), on_start=on_start, on_result=on_result, tick=1.0
        )
        checker.set_targets(targets(port))
        await nursery.start(checker.run)
        # Started on the 1 s tick; their verdicts read on the 2 s tick.
        await trio.sleep(2.5 if verdicts else 1.5)
        nursery.cancel_scope.cancel()
    assert meter.count == PROBES
    return meter.marks


async def test_probes_due_together_start_in_slices_with_other_tasks_between(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await progress(listening_port, 0.0, monkeypatch, verdicts=False)
    # Between two turns of the other task: one hand-out of the scheduler
    # (checker._HAND_OUT) and the hand-outs of the verdicts the watcher reads
    # between two reads of the clock (a slot freed each, watch.CLOCK_EVERY);
    # twice that when trio runs them in the other order in the next batch.
    most = 2 * (checker_module._HAND_OUT + watch.CLOCK_EVERY)
    assert marks[0] <= most
    steps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(steps) <= most
    assert marks[-1] == PROBES


async def test_without_slices_the_hand_out_holds_the_loop(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await progress(listening_port, FOREVER, monkeypatch, verdicts=False)
    assert marks[0] == PROBES


async def test_verdicts_read_together_are_delivered_in_slices_with_other_tasks_between(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A slice ends on a read of the clock, once every CLOCK_EVERY
    verdicts (the clock is a system call in an emulated VM)."""
    marks = await progress(listening_port, 0.0, monkeypatch, verdicts=True)
    most = 2 * watch.CLOCK_EVERY  # (twice: see the hand-out's test)
    assert marks[0] <= most
    steps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(steps) <= most
    assert marks[-1] == PROBES


async def test_without_slices_the_verdicts_hold_the_loop(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await progress(listening_port, FOREVER, monkeypatch, verdicts=True)
    assert marks[0] == PROBES


async def test_a_transition_ends_the_slice_so_the_task_it_woke_runs_next(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A health change's callback wakes the engine's pass and hurries the
    checker: the watcher's slice ends at that verdict, however long a slice
    is (`hurry`), where without it the same slice delivers all 100 (the
    test above)."""
    monkeypatch.setattr(checker_module, "SLICE", FOREVER)
    monkeypatch.setattr(watch, "SLICE", FOREVER)
    async with trio.open_nursery() as nursery:
        meter = Meter(nursery)

        def on_transition(key: int, transition: Transition) -> None:
            if meter.count == 0:
                checker.hurry()
            meter.note()

        checker: Checker[int] = Checker(rng=random.Random(7), on_transition=on_transition, tick=1.0)
        checker.set_targets(targets(listening_port))
        await nursery.start(checker.run)
        await trio.sleep(2.5)
        nursery.cancel_scope.cancel()
    assert meter.count == PROBES  # each server's first verdict is a transition
    assert meter.marks[0] == 1


async def test_a_hurried_task_gives_way_to_the_task_it_woke_in_either_batch_order() -> None:
    """trio runs a batch of ready tasks in either order: one checkpoint
    lets the yielding task run first about half the time; give_way's two,
    never."""

    async def woken_first(hurried: bool) -> bool:
        ran = False

        async def woken() -> None:
            nonlocal ran
            ran = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(woken)
            await watch.give_way(hurried)
            first = ran
        return first

    assert all([await woken_first(True) for _ in range(50)])
    assert not all([await woken_first(False) for _ in range(50)])
