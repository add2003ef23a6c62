"""TaskCpu: a piece of work's CPU is its task's own steps and the worker
threads it hands work to, not the other tasks' turns while it waits (a
reload's cpu_ms at 10,000 real servers counted the probes' CPU). The CPU
clock is a counter the "work" advances."""

from __future__ import annotations

import time

import pytest
import trio

from director.taskcpu import TaskCpu, counted


async def test_the_meter_counts_its_tasks_steps_and_threads_not_the_other_tasks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = [0.0]
    monkeypatch.setattr(time, "thread_time", lambda: cpu[0])

    def spend(seconds: float) -> None:
        cpu[0] += seconds

    async def other() -> None:
        spend(5.0)

    async with trio.open_nursery() as nursery:
        with TaskCpu() as meter:
            nursery.start_soon(other)
            spend(1.0)
            await trio.lowlevel.checkpoint()  # the other task runs meanwhile
            spend(2.0)
            assert meter.seconds == 3.0  # the step running now counts
            await trio.to_thread.run_sync(counted(lambda: spend(4.0)))
            await trio.to_thread.run_sync(lambda: spend(8.0))  # not counted: not wrapped
            spend(0.5)
        spend(16.0)  # after the meter
    assert cpu[0] == 36.5
    assert meter.seconds == 7.5


def test_outside_a_meter_a_function_is_run_as_it_is() -> None:
    def function() -> int:
        return 7

    assert counted(function) is function
