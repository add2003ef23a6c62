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
from director.health.state import HealthState

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


async def watch_progress(count: list[int], marks: list[int]) -> None:
    """Note how far `count` has got each time this task gets to run."""
    for _ in range(PROBES * 3):
        marks.append(count[0])
        await trio.lowlevel.checkpoint()


async def first_starts(port: int, slice_: float, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    # The watcher's too: a probe's verdict, read in the watcher's slice,
    # hands out the next waiting probe.
    monkeypatch.setattr(checker_module, "SLICE", slice_)
    monkeypatch.setattr(watch, "SLICE", slice_)
    started, marks = [0], list[int]()
    async with trio.open_nursery() as nursery:

        def on_start(target: Target, lateness: float) -> None:
            if started[0] == 0:
                nursery.start_soon(watch_progress, started, marks)
            started[0] += 1

        checker: Checker[int] = Checker(rng=random.Random(7), on_start=on_start, tick=1.0)
        checker.set_targets(targets(port))
        await nursery.start(checker.run)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert started[0] == PROBES
    return marks


async def test_probes_due_together_start_in_slices_with_other_tasks_between(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await first_starts(listening_port, 0.0, monkeypatch)
    # Between two turns of the other task: one hand-out of the scheduler
    # (checker._HAND_OUT) and one verdict's hand-out of the watcher (a slot
    # freed); twice that when trio runs them in the other order in the next
    # batch.
    most = 2 * (16 + 1)
    assert marks[0] <= most
    steps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(steps) <= most
    assert marks[-1] == PROBES


async def test_without_slices_the_hand_out_holds_the_loop(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await first_starts(listening_port, FOREVER, monkeypatch)
    assert marks[0] == PROBES


async def verdicts_read(port: int, slice_: float, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr(watch, "SLICE", slice_)
    read, marks = [0], list[int]()
    async with trio.open_nursery() as nursery:

        def on_result(key: int, before: HealthState, after: HealthState) -> None:
            assert after.last is not None and after.last.ok
            if after.successes_in_row > 1:
                return  # the second round's, started on the 2 s tick
            if read[0] == 0:
                nursery.start_soon(watch_progress, read, marks)
            read[0] += 1

        checker: Checker[int] = Checker(rng=random.Random(7), on_result=on_result, tick=1.0)
        checker.set_targets(targets(port))
        await nursery.start(checker.run)
        await trio.sleep(2.5)  # started at 1 s, read on the 2 s tick
        nursery.cancel_scope.cancel()
    assert read[0] == PROBES
    return marks


async def test_verdicts_read_together_are_delivered_in_slices_with_other_tasks_between(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await verdicts_read(listening_port, 0.0, monkeypatch)
    assert marks[0] <= 2  # (two: see the hand-out's test)
    steps = [b - a for a, b in itertools.pairwise(marks)]
    assert max(steps) <= 2
    assert marks[-1] == PROBES


async def test_without_slices_the_verdicts_hold_the_loop(
    listening_port: int,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    marks = await verdicts_read(listening_port, FOREVER, monkeypatch)
    assert marks[0] == PROBES
