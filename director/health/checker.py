"""The checker: runs every target's health check on its own steady cadence.

Each target (a check aimed at one real server) gets a task that probes it
every `interval` seconds, feeds the results through the rise/fall machine and
reports transitions through a callback. The first probe of each target is
placed at random within its interval, so that thousands of checks added at
once do not fire together. `set_targets` swaps the target set live: a target
whose (check, address, port) is unchanged keeps its state and its schedule,
and one whose check changed keeps its state (its health, counts and weight
ramp) under a new schedule, so a config reload loses no health.

A probe can only fail: whatever a probe function raises becomes a failed
result (reason `error`), and the checker goes on.
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import Generic, TypeVar

import trio

from director.health.probes import ProbeFunction, Prober
from director.health.result import ProbeResult, Reason
from director.health.spec import Check, ExecCheck
from director.health.state import HealthState, Transition, advance
from director.ipvs.model import IPAddress

K = TypeVar("K", bound=Hashable)

Target = tuple[Check, IPAddress, int]


@dataclass(eq=False)
class _Slot:
    target: Target
    state: HealthState = field(default_factory=HealthState)
    cancel_scope: trio.CancelScope | None = None
    removed: bool = False


class Checker(Generic[K]):
    def __init__(
        self,
        *,
        on_transition: Callable[[K, Transition], None] | None = None,
        on_result: Callable[[K, HealthState, HealthState], None] | None = None,
        probe: ProbeFunction | None = None,
        rng: random.Random | None = None,
        max_probes: int | None = None,
        max_exec: int = 16,
    ) -> None:
        """`on_transition` and `on_result` run in the checker's task and must
        not block; `on_result` gets the state before and after each probe
        (the result is `after.last`). `probe` defaults to the real probes. At most `max_probes`
        probes (default: half the file descriptor limit) and `max_exec`
        commands run at once; the others wait their turn."""
        self._on_transition = on_transition
        self._on_result = on_result
        self._probe = probe
        self._rng = rng or random.Random()
        self._probe_limiter = trio.CapacityLimiter(max_probes or default_max_probes())
        self._exec_limiter = trio.CapacityLimiter(max_exec)
        self._slots: dict[K, _Slot] = {}
        self._nursery: trio.Nursery | None = None
        self._running_probe: ProbeFunction | None = None

    def set_targets(self, targets: Mapping[K, Target]) -> None:
        """Check exactly these targets from now on."""
        for key, target in targets.items():
            validate_target(key, target)
        kept: dict[K, HealthState] = {}
        for key, slot in list(self._slots.items()):
            wanted = targets.get(key)
            if wanted != slot.target:
                self._drop(key)
                if wanted is not None:
                    kept[key] = slot.state
        for key, target in targets.items():
            if key not in self._slots:
                slot = self._slots[key] = _Slot(target, kept.get(key, HealthState()))
                if self._nursery is not None:
                    self._spawn(self._nursery, key, slot)

    def adopt(self, key: K, ramp_start: float | None = None) -> None:
        """Mark a target that is already in service and not yet probed as
        adopted: see HealthState.adopted and HealthState.ramp_start."""
        slot = self._slots[key]
        if slot.state.last is None:
            slot.state = replace(slot.state, adopted=True, ramp_start=ramp_start)

    def states(self) -> dict[K, HealthState]:
        return {key: slot.state for key, slot in self._slots.items()}

    def state(self, key: K) -> HealthState:
        try:
            return self._slots[key].state
        except KeyError:
            raise KeyError(f"no health check target {key!r}") from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._nursery is not None:
            raise RuntimeError("this Checker is already running")
        self._running_probe = self._probe or Prober()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for key, slot in self._slots.items():
                    self._spawn(nursery, key, slot)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self._running_probe = None

    def _drop(self, key: K) -> None:
        slot = self._slots.pop(key)
        slot.removed = True
        if slot.cancel_scope is not None:
            slot.cancel_scope.cancel()

    def _spawn(self, nursery: trio.Nursery, key: K, slot: _Slot) -> None:
        # Drawn here, in the caller's order, not in the task: trio starts tasks
        # in an unspecified order, and a seeded generator must give the same
        # schedule every time.
        offset = self._rng.uniform(0, slot.target[0].timing.interval)
        nursery.start_soon(self._watch, key, slot, offset)

    async def _watch(self, key: K, slot: _Slot, offset: float) -> None:
        if slot.removed:
            return
        check, address, port = slot.target
        interval = check.timing.interval
        probe = self._running_probe
        assert probe is not None
        # Exec first: commands waiting their turn must not hold socket slots.
        exec_limiter = (
            self._exec_limiter if isinstance(check, ExecCheck) else contextlib.nullcontext()
        )
        with trio.CancelScope() as slot.cancel_scope:
            now = trio.current_time()
            if slot.state.last is None:
                slot.state = replace(slot.state, since=now)
            start = now + offset
            while True:
                await trio.sleep_until(start)
                async with exec_limiter, self._probe_limiter:
                    began = trio.current_time()
                    try:
                        result = await probe(check, address, port)
                    except Exception as error:
                        result = ProbeResult.failure(
                            Reason.ERROR,
                            trio.current_time() - began,
                            f"{type(error).__name__}: {error}"[:200],
                        )
                self._record(key, slot, result)
                start = next_start(start, trio.current_time(), interval)

    def _record(self, key: K, slot: _Slot, result: ProbeResult) -> None:
        if slot.removed:
            return
        before = slot.state
        slot.state, transition = advance(before, result, trio.current_time(), slot.target[0].timing)
        if self._on_result is not None:
            self._on_result(key, before, slot.state)
        if transition is not None and self._on_transition is not None:
            self._on_transition(key, transition)


def next_start(previous: float, now: float, interval: float) -> float:
    """The next probe start on the grid `previous + n * interval` that is not
    in the past: a probe that overran its interval skips the starts it missed
    rather than shifting every later one."""
    upcoming = previous + interval
    if upcoming >= now:
        return upcoming
    return upcoming + math.ceil((now - upcoming) / interval) * interval


def validate_target(key: object, target: object) -> None:
    where = f"health check target {key!r}"
    if not (isinstance(target, tuple) and len(target) == 3):
        raise ValueError(f"{where}: expected (check, address, port), got {target!r}")
    check, address, port = target
    if not isinstance(check, Check):
        raise ValueError(f"{where}: {check!r} is not a health check")
    if not isinstance(address, IPv4Address | IPv6Address):
        raise ValueError(f"{where}: address {address!r} is not an IP address")
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise ValueError(f"{where}: port {port!r} is not in 0..65535")
    if not isinstance(check, ExecCheck) and (check.port if check.port is not None else port) == 0:
        raise ValueError(
            f"{where}: no port to probe (the server's port is 0; set the check's port)"
        )
    timing = check.timing
    for name in ("interval", "timeout"):
        value = getattr(timing, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ValueError(f"{where}: {name} must be a positive number of seconds, got {value!r}")
    for name in ("rise", "fall"):
        value = getattr(timing, name)
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{where}: {name} must be a whole number >= 1, got {value!r}")


def default_max_probes() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4096
    return max(16, min(4096, soft // 2))
