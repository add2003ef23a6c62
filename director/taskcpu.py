"""The CPU time a piece of work costs in one trio task: that task's own
steps and the worker threads it hands work to, without the other tasks'
turns while it waits. A reload at 10,000 real servers waits on the kernel
while the probes run; their CPU is not the reload's.

    with TaskCpu() as meter:
        await work()
    meter.seconds

A function run in a worker thread for the work counts its thread's CPU
when wrapped by `counted` in the task (trio.to_thread.run_sync runs it in
a copy of the task's context, where the meter is found).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TypeVar

import trio

__all__ = ["TaskCpu", "counted"]

T = TypeVar("T")


class TaskCpu(trio.abc.Instrument):
    """Enter it in the task whose work is measured. `seconds`: the CPU so
    far (the step running now included) while entered, the total after."""

    def __init__(self) -> None:
        self._task: trio.lowlevel.Task | None = None
        self._steps = 0.0  # seconds: the task's steps that ended
        self._step_began = 0.0  # time.thread_time() when its step began
        self._threads: list[float] = []  # seconds: each worker thread's part
        self._token: Token[TaskCpu | None] | None = None

    def __enter__(self) -> TaskCpu:
        self._task = trio.lowlevel.current_task()
        self._step_began = time.thread_time()
        self._token = _METER.set(self)
        trio.lowlevel.add_instrument(self)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        trio.lowlevel.remove_instrument(self)
        assert self._token is not None
        _METER.reset(self._token)
        self._steps += time.thread_time() - self._step_began
        self._task = None

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._task:
            self._step_began = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self._task:
            self._steps += time.thread_time() - self._step_began

    def add(self, seconds: float) -> None:
        """A worker thread's CPU for the work (from that thread)."""
        self._threads.append(seconds)

    @property
    def seconds(self) -> float:
        running = time.thread_time() - self._step_began if self._task is not None else 0.0
        return self._steps + running + sum(self._threads)


_METER: ContextVar[TaskCpu | None] = ContextVar("director_task_cpu", default=None)


def counted(function: Callable[[], T]) -> Callable[[], T]:
    """`function`, adding its thread's CPU to the meter the calling task
    is in, if any (call in the task; run the result in a worker thread)."""
    meter = _METER.get()
    if meter is None:
        return function

    def run() -> T:
        began = time.thread_time()
        try:
            return function()
        finally:
            meter.add(time.thread_time() - began)

    return run
