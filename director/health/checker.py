"""The checker: runs every target's health check on its own steady cadence.

A target is a check aimed at one real server, under a key of the caller's
(the engine's real-server id). Targets with the same (check, address, port)
share one probe: several services with the same real server and check cost
one probe per interval, and its result is fed to each key's own HealthState
(rise/fall, adoption, weight ramp), which reports its transitions through a
callback.

One scheduler task keeps the probes on a heap of due times (schedule.py) and
starts each one as a task of its own when it is due and a slot is free: at
most `max_probes` at once, of them at most `max_exec` commands (fewer for a
while after a probe found the daemon out of file descriptors). A probe's
starts stay on a steady grid, and one that overran its interval skips the
starts it missed. The first probe of each target is placed at random within
its interval, so that thousands of checks added at once do not fire
together. `set_targets` swaps the target set live: a target whose (check,
address, port) is unchanged keeps its state and its schedule, and one whose
check changed keeps its state (its health, counts and weight ramp) under a
new schedule, so a config reload loses no health. A removed target's probe is
cancelled, and a result that arrives for it anyway is dropped.

A probe can only fail: whatever a probe function raises becomes a failed
result (reason `error`), and the checker goes on.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import outcome
import trio

from director.health.probes import ProbeFunction, Prober
from director.health.probes.tcp import Connects, socket_address
from director.health.probes.watch import SLICE, give_way, nap
from director.health.result import ProbeResult, Reason
from director.health.schedule import Schedule, first_start, next_start
from director.health.spec import Check, ExecCheck, HttpCheck, TcpCheck, probed_endpoint
from director.health.state import HealthState, Transition, advance
from director.ipvs.model import IPAddress

if TYPE_CHECKING:  # h11 and httpx load only with a config that has HTTP checks
    from director.health.probes.http_exchange import Exchanges, HttpDestination

K = TypeVar("K", bound=Hashable)

Target = tuple[Check, IPAddress, int]

_MAX_IDLE_WORKERS = 256  # beyond that, a worker with nothing to do ends
# Due probes are handed out this many at a time, with a checkpoint after each
# SLICE seconds of it (watch.py): thousands due at once (a start, an
# overload) were seconds of work in the VM with no other task running.
_HAND_OUT = 16
# A due within this many ticks past a tick is on it (`Checker._wake_at`).
_ON_THE_TICK = 1e-6
# First starts are drawn on slots of up to _SLOT_TICKS ticks, as wide as
# leaves about _BURST probes due at once (`Checker._slot`).
_SLOT_TICKS = 5
_BURST = 100

__all__ = ["Checker", "Target", "default_max_probes", "next_start", "validate_target"]


@dataclass(eq=False, slots=True)
class _Slot:
    """One key's view of its target: its own health."""

    target: Target
    state: HealthState = field(default_factory=HealthState)


@dataclass(eq=False, slots=True)
class _Probe(Generic[K]):
    """One distinct (check, address, port), probed for each of its keys.
    A TCP check's probe is its own TcpDestination, started with
    `Connects.start(probe, probe)`, and a
    plain HTTP check's judged on its head with `Exchanges.start(http, done)`
    (http_exchange.py), no task of their own; the others run in a worker
    task."""

    target: Target
    # Its keys: almost every probe has one, held here (a dict of one cost
    # about 220 bytes a target); a probe several services share has the
    # others in `more`, in the order they joined.
    key: K | None = None
    slot: _Slot | None = None
    more: dict[K, _Slot] | None = None
    cancel_scope: trio.CancelScope | None = None  # while a probe runs
    started: float = 0.0  # when its last probe was handed out (the run's clock)
    tcp: bool = False  # then `family` and `sockaddr` are where it connects
    family: int = 0
    sockaddr: tuple[str, int] = ("", 0)
    http: HttpDestination | None = None
    # For TCP and plain HTTP: the checker that gets the verdict. The probe is
    # its own ProbeDone (a partial each cost 250 bytes a target).
    owner: Checker[K] | None = None

    def __call__(self, result: ProbeResult) -> None:
        assert self.owner is not None
        self.owner._probe_done(self, result)

    # The rest of a TcpDestination (tcp.py), for a TCP check's probe.
    @property
    def check(self) -> Check:
        return self.target[0]

    @property
    def address(self) -> IPAddress:
        check = self.target[0]
        if isinstance(check, TcpCheck) and check.address is not None:
            return check.address
        return self.target[1]

    @property
    def port(self) -> int:
        return self.sockaddr[1]

    def join(self, key: K, slot: _Slot) -> None:
        if self.slot is None:
            self.key, self.slot = key, slot
        elif self.more is None:
            self.more = {key: slot}
        else:
            self.more[key] = slot

    def leave(self, key: K) -> bool:
        """Forget `key` (one of its keys); whether none is left."""
        more = self.more
        if self.slot is not None and self.key == key:
            if more:
                self.key = key = next(iter(more))
                self.slot = more.pop(key)
            else:
                self.key = self.slot = None
        elif more is not None:
            del more[key]
        if not more:
            self.more = None
        return self.slot is None

    def holds(self, key: K, slot: _Slot) -> bool:
        if self.slot is slot:
            return True
        return self.more is not None and self.more.get(key) is slot

    def members(self) -> list[tuple[K, _Slot]]:
        """Its keys and their slots, in the order they joined."""
        if self.slot is None:
            return []
        first = [(cast(K, self.key), self.slot)]
        return first if self.more is None else first + list(self.more.items())


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
        on_start: Callable[[Target, float], None] | None = None,
        tick: float = 0.0,
        on_shortage: Callable[[Target, ProbeResult], None] | None = None,
    ) -> None:
        """`on_transition` and `on_result` run in the checker's task and must
        not block; `on_result` gets the state before and after each probe
        (the result is `after.last`). `probe` defaults to the real probes. At
        most `max_probes` probes (default: half the file descriptor limit)
        and `max_exec` commands run at once; the others wait their turn.
        A result that is the daemon's own shortage (ProbeResult.own: out of
        file descriptors, say) changes no health: `on_shortage(target,
        result)` is told of it instead of on_result.
        `on_start(target, lateness)` is told of each probe as it starts,
        with how many seconds after its due time (a meter: bench/checker.py).
        With `tick` > 0 (seconds), probes start on multiples of it, at most
        one tick late; a new probe's first start is drawn on a slot of one to
        _SLOT_TICKS ticks (`_slot`), so that at a low rate the scheduler
        wakes a few times a second, not at every tick; and the TCP and plain
        HTTP probes' verdicts are read
        at most a few times a tick (watch.py's READS_A_TICK): a few wake-ups
        a tick, however many probes a second, instead of a few for each
        probe. At a low rate the verdicts a hand-out's connects already have
        are read in the same wake-up (`Watcher.read_now`)."""
        self._on_transition = on_transition
        self._on_result = on_result
        self._on_start = on_start
        self._on_shortage = on_shortage
        self._tick = tick
        self._probe = probe
        self._rng = rng or random.Random()
        self._max_probes = max_probes or default_max_probes()
        self._max_exec = max_exec
        self._slots: dict[K, _Slot] = {}
        self._probes: dict[Target, _Probe[K]] = {}
        self._rate = 0.0  # probes a second the targets ask for (`_slot`)
        self._nursery: trio.Nursery | None = None
        self._schedule: Schedule[_Probe[K]] | None = None
        self._sleep: trio.CancelScope | None = None  # the scheduler's, while it waits
        # The due time `_sleep`'s deadline was last computed for (NaN: not
        # known): a verdict whose schedule's next due is the same (most of
        # them) leaves the deadline alone without computing it again.
        self._sleep_due = math.nan
        self._running_probe: ProbeFunction | None = None
        self._idle: list[trio.lowlevel.Task] = []  # workers waiting for a probe
        self._connects: Connects | None = None  # the real TCP probes, while running
        # trio.current_time, or while running the clock's own method (half
        # the cost: read a few times a probe).
        self._now: Callable[[], float] = trio.current_time
        self._exchanges: Exchanges | None = None  # the real plain HTTP probes, once one ran
        self._hurried = False  # the scheduler's slice ends at its next check (`_hurry`)
        self._frozen = False  # `freeze`: no verdict taken any more

    def set_targets(self, targets: Mapping[K, Target]) -> None:
        """Check exactly these targets from now on. Raises ValueError, naming
        the key, for a target that is not (check, address, port) with a
        usable check: then nothing changes."""
        _validate(targets)
        self._change(targets, [key for key in self._slots if key not in targets])

    def update_targets(self, targets: Mapping[K, Target], remove: Iterable[K] = ()) -> None:
        """Check `targets` from now on (added, or changed as
        set_targets changes them) and stop checking the keys in `remove`;
        every other target stays as it is. O(the change), where set_targets
        is O(all targets). Removing a key that is not checked is no error.
        Raises ValueError, naming the key, for a target set_targets would
        refuse or a key both set and removed: then nothing changes."""
        _validate(targets)
        gone = [key for key in remove if key in self._slots]
        for key in gone:
            if key in targets:
                raise ValueError(f"health check target {key!r}: both set and removed")
        self._change(targets, gone)

    def _change(self, targets: Mapping[K, Target], gone: Iterable[K]) -> None:
        """Stop checking `gone`, and check `targets` (valid): a key whose
        target is unchanged keeps its probe and schedule; one whose target
        changed keeps its health under the new target's probe. A new key
        whose target is probed for a key this change drops (a service
        renamed, a server moved to another service) takes that probe, its
        schedule and that key's health: the same server, checked the same
        way. One that joins a probe other keys keep starts its own health
        (`adopt` may make keys of one probe judge alike results apart)."""
        slots = self._slots
        emptied: dict[Target, HealthState] = {}  # probes left without a key, for now
        for key in gone:
            self._leave(key, slots.pop(key), emptied)
        kept: dict[K, HealthState] = {}
        for key, target in targets.items():
            slot = slots.get(key)
            if slot is not None and slot.target != target:
                del slots[key]
                self._leave(key, slot, emptied)
                kept[key] = slot.state
        # Joined after every leave, in the caller's order: a seeded
        # generator draws the same schedule every time.
        schedule, probes = self._schedule, self._probes
        now = trio.current_time() if schedule is not None else None
        fresh = HealthState() if now is None else HealthState(since=now)  # shared: frozen
        earliest = math.inf
        for key, target in targets.items():
            if key in slots:
                continue
            probe = probes.get(target)
            # A changed check keeps what is known of the server: a reload
            # that only retimes a check must not make it unknown.
            state = kept.get(key)
            if state is None:
                state = emptied.pop(target, fresh) if probe is not None else fresh
            if now is not None and state.last is None and state.since != now:
                state = replace(state, since=now)
            slot = slots[key] = _Slot(target, state)
            if probe is None:
                probe = probes[target] = self._new_probe(target)
                if schedule is not None and now is not None:  # (running: both are set)
                    earliest = min(earliest, self._schedule_new(schedule, probe, now))
            probe.join(key, slot)
        for target in emptied:
            probe = probes[target]
            if probe.slot is None:
                self._drop(probe)
        if earliest < math.inf:
            self._wake_by(earliest)

    def adopt(self, key: K, ramp_start: float | None = None) -> None:
        """Mark a target that is already in service and not yet probed as
        adopted: see HealthState.adopted and HealthState.ramp_start."""
        slot = self._slots[key]
        if slot.state.last is None:
            slot.state = replace(slot.state, adopted=True, ramp_start=ramp_start)

    def states(self) -> dict[K, HealthState]:
        return {key: slot.state for key, slot in self._slots.items()}

    def set_limits(self, *, max_probes: int | None = None, max_exec: int | None = None) -> None:
        """At most `max_probes` probes, of them `max_exec` commands, run at
        once from now on (each >= 1; None: as it is): a higher limit starts
        those waiting at once, a lower one stops none that runs and starts
        no more until fewer run."""
        probes = self._max_probes if max_probes is None else max_probes
        commands = self._max_exec if max_exec is None else max_exec
        if probes < 1 or commands < 1:
            raise ValueError(f"max_probes and max_exec must be >= 1, got {probes}, {commands}")
        raised = probes > self._max_probes or commands > self._max_exec
        self._max_probes, self._max_exec = probes, commands
        if self._schedule is not None:
            self._schedule.max_running, self._schedule.max_exec = probes, commands
            if raised:
                self._wake_by(trio.current_time())  # the scheduler starts those waiting

    @property
    def max_probes(self) -> int:
        return self._max_probes

    @property
    def max_exec(self) -> int:
        return self._max_exec

    def waiting_for_slot(self) -> dict[K, tuple[float, str]]:
        """The keys whose probe is due and waits for a slot, each with its
        due time (the run's clock) and the slot: "exec" (max_exec commands
        run already), "short" (fewer run while the daemon is short of its
        own resources: `held`) or "probe" (max_probes run)."""
        schedule = self._schedule
        if schedule is None:
            return {}
        return {
            key: (due, kind)
            for probe, due, kind in schedule.waiting(trio.current_time())
            for key, _ in probe.members()
        }

    def slot_waited(self) -> dict[str, float]:
        """When a due probe last waited for a slot, by kind ("exec",
        "short", "probe"; the run's clock); {} when none ever did."""
        return {} if self._schedule is None else dict(self._schedule.waited)

    def occupancy(self) -> tuple[int, int, int]:
        """Probes running now: all, commands, and those of targets removed
        since they started (a reload: they hold their slot until they end)."""
        schedule = self._schedule
        if schedule is None:
            return (0, 0, 0)
        return (schedule.running, schedule.running_exec, schedule.leaving)

    def held(self) -> tuple[int, float] | None:
        """While a probe that found the daemon short of its own resources
        (ProbeResult.own) holds the probes run at once below max_probes:
        how many may run, and for how many more seconds (schedule.py's
        SHORT_HOLD from the last such probe); else None."""
        schedule = self._schedule
        if schedule is None:
            return None
        now = trio.current_time()
        ceiling = schedule.held(now)
        return None if ceiling is None else (ceiling, schedule.held_until - now)

    def probing(self) -> dict[K, float]:
        """The keys whose probe is running now, each with when it started
        (the run's clock, seconds): what a status shows of a probe that
        takes long (an exec check's command), before its verdict."""
        schedule = self._schedule
        if schedule is None:
            return {}
        return {
            key: probe.started
            for probe in self._probes.values()
            if schedule.is_running(probe)
            for key, _ in probe.members()
        }

    def state(self, key: K) -> HealthState:
        try:
            return self._slots[key].state
        except KeyError:
            raise KeyError(f"no health check target {key!r}") from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe the targets until cancelled. Raises RuntimeError when this
        checker is already running."""
        if self._nursery is not None:
            raise RuntimeError("this Checker is already running")
        self._running_probe = self._probe or Prober()
        self._now = trio.lowlevel.current_clock().current_time
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self._probe is None:
                    self._connects = Connects(tick=self._tick)
                    nursery.start_soon(self._connects.watch)
                self._schedule = Schedule(self._max_probes, self._max_exec)
                now = trio.current_time()
                # Slots added before the run share their fresh state (frozen):
                # one replace for each distinct state, not for each slot.
                moved: dict[int, tuple[HealthState, HealthState]] = {}
                for slot in self._slots.values():
                    state = slot.state
                    if state.last is None:
                        known = moved.get(id(state))
                        if known is None:
                            known = moved[id(state)] = (state, replace(state, since=now))
                        slot.state = known[1]
                for probe in self._probes.values():
                    self._schedule_new(self._schedule, probe, now)
                task_status.started()
                await self._dispatch(self._schedule)
        finally:
            self._now = trio.current_time
            self._nursery = None
            self._schedule = None
            self._sleep = None
            self._running_probe = None
            self._connects = None
            self._exchanges = None
            self._idle.clear()

    def _new_probe(self, target: Target) -> _Probe[K]:
        probe: _Probe[K] = _Probe(target)
        check, address, port = target
        self._rate += 1.0 / check.timing.interval
        if isinstance(check, TcpCheck):
            where = probed_endpoint(check, address, port)
            assert where is not None  # (an exec check's alone is None)
            probe.tcp, (probe.family, probe.sockaddr) = True, socket_address(*where)
            probe.owner = self
        elif isinstance(check, HttpCheck):
            from director.health.probes.http_exchange import http_destination

            probe.http = http_destination(check, address, port)
            if probe.http is not None:
                probe.owner = self
        return probe

    def _leave(self, key: K, slot: _Slot, emptied: dict[Target, HealthState]) -> None:
        """`key` no longer checks its target. A probe left without a key
        goes into `emptied` with the key's health, kept (scheduled, and
        running if it is) for a key of the same change to take; the caller
        drops it (`_drop`) if none does."""
        if self._probes[slot.target].leave(key):
            emptied[slot.target] = slot.state

    def _drop(self, probe: _Probe[K]) -> None:
        del self._probes[probe.target]
        self._rate -= 1.0 / probe.target[0].timing.interval
        if self._schedule is not None:
            self._schedule.remove(probe)
        if probe.cancel_scope is not None:
            probe.cancel_scope.cancel()

    def _schedule_new(self, schedule: Schedule[_Probe[K]], probe: _Probe[K], now: float) -> float:
        """Put a new probe on `schedule`, its first start drawn within an
        interval from `now` (the caller's one clock read for all it adds);
        when it is first due (the caller wakes the scheduler by then)."""
        # Drawn here, in the caller's order of targets: a seeded generator
        # gives the same schedule every time.
        check = probe.target[0]
        interval = check.timing.interval
        due = first_start(now, interval, self._rng)
        if self._tick > 0:
            # On a slot: a grid whose interval is a whole number of ticks
            # then starts on time, where a draw between two ticks would
            # start up to a tick late every time.
            slot = self._slot()
            due = math.ceil(due / slot) * slot
        schedule.add(probe, due, interval, is_exec=isinstance(check, ExecCheck))
        return due

    def _slot(self) -> float:
        """The width of the slots first starts are drawn on (seconds): as
        many ticks, up to _SLOT_TICKS, as leave about _BURST probes due at
        once at the targets' rate (of those made so far, in a change that
        makes many). Each slot with a probe due is a wake-up of the daemon,
        and in a virtual machine a wake-up costs far more than its Python
        (bench/README.md, stop 32): 200 TCP probes a second cost 2.5 times
        less on 50 ms slots than on 10 ms ticks, while 10,000 a second keep
        bursts of 100."""
        tick, rate = self._tick, self._rate
        ticks = int(_BURST / (rate * tick)) if rate > 0 else _SLOT_TICKS
        return tick * max(1, min(_SLOT_TICKS, ticks))

    def _wake_at(self, due: float) -> float:
        """When the scheduler wakes for a probe due at `due`: the next tick,
        or `due` itself when it is a tick but for the rounding of the sums
        that made it (the grid's `due + interval`): not a tick later."""
        tick = self._tick
        if tick <= 0 or math.isinf(due):
            return due
        wake = math.ceil(due / tick - _ON_THE_TICK) * tick
        return wake if wake >= due else due

    def _wake_by(self, due: float) -> None:
        sleep = self._sleep
        if sleep is not None:
            wake = self._wake_at(due)
            if wake < sleep.deadline:
                sleep.deadline = wake
                self._sleep_due = math.nan

    async def _dispatch(self, schedule: Schedule[_Probe[K]]) -> None:
        """The scheduler: starts the probes that are due, sleeps until the
        next one is (a new target or a probe that ends moves that deadline
        earlier when needed)."""
        while True:
            end = time.perf_counter() + SLICE
            few = True
            while len(due := schedule.due(self._now(), _HAND_OUT)) == _HAND_OUT:
                few = False
                self._hand_out(due, keep=False)
                if self._hurried or time.perf_counter() >= end:  # more are due: let the others run
                    hurried, self._hurried = self._hurried, False
                    await give_way(hurried)
                    end = time.perf_counter() + SLICE
            self._hand_out(due, keep=False)
            if due and few:
                # What the kernel already knows of the few probes just
                # begun (a connect nearby completes within connect(2)) is
                # read in this wake-up, not in one of the watchers' own;
                # many are the watchers' to read, in their slices.
                if self._connects is not None:
                    self._connects.read_now()
                if self._exchanges is not None:
                    self._exchanges.read_now()
            self._sleep_due = due_at = schedule.next_due()
            with trio.CancelScope(deadline=self._wake_at(due_at)) as self._sleep:
                await nap(self._sleep)
            self._hurried = False  # (the woken task ran meanwhile)

    def _hand_out(self, due: list[tuple[_Probe[K], float]], *, keep: bool) -> _Probe[K] | None:
        """Start the probes in `due` on idle workers (or new ones); with
        `keep`, the caller is a worker and the first is returned for it to
        run itself, which saves a task switch.

        A watcher ends only with the run (its nursery cancelled, or failing
        on a bug), and may end before a task woken in the same instant gets
        here: the scheduler by its own deadline, a worker whose probe the
        stop cancelled, the other watcher with a verdict. Then the probes
        not yet started are dropped, and the caller's task ends at its next
        checkpoint, with the run. None starts once frozen (`freeze`)."""
        if not due or self._frozen:
            return None
        kept: _Probe[K] | None = None
        on_start, idle, connects = self._on_start, self._idle, self._connects
        now = self._now()  # one read for them all
        try:
            for probe, at in due:
                probe.started = now
                if on_start is not None:
                    on_start(probe.target, now - at)
                if connects is not None and probe.tcp and probe.owner is not None:
                    connects.start(probe, probe)
                elif connects is not None and probe.http is not None and probe.owner is not None:
                    self._http_exchanges().start(probe.http, probe)
                elif keep and kept is None:
                    kept = probe
                elif idle:
                    trio.lowlevel.reschedule(idle.pop(), outcome.Value(probe))
                else:
                    assert self._nursery is not None
                    self._nursery.start_soon(self._worker, probe)
        except trio.ClosedResourceError:  # a watcher has ended: the run is ending
            return None
        return kept

    async def _worker(self, probe: _Probe[K]) -> None:
        """Runs probes one after the other; waits in `_idle` between them.
        A worker costs less than a task for each probe (10,000 a second)."""
        task = trio.lowlevel.current_task()
        idle = self._idle

        def abort(_: object) -> trio.lowlevel.Abort:
            idle.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        while True:
            following = await self._run_probe(probe)
            if following is None:
                if len(idle) >= _MAX_IDLE_WORKERS:
                    return
                idle.append(task)
                following = await trio.lowlevel.wait_task_rescheduled(abort)
            probe = following

    async def _run_probe(self, probe: _Probe[K]) -> _Probe[K] | None:
        """Runs `probe`, feeds its result to its keys; returns a probe that
        was waiting for its slot, for this worker to run next."""
        schedule = self._schedule
        assert schedule is not None
        result: ProbeResult | None = None
        try:
            if probe.slot is None:
                pass  # its target went after it was handed out
            elif isinstance(probe.target[0], TcpCheck):
                # Not cancelled when its target goes: a TCP probe holds one
                # socket until its timeout at most, and a cancel scope for
                # each of 10,000 probes a second costs more than that.
                result = await self._attempt(probe.target)
            else:
                with trio.CancelScope() as probe.cancel_scope:
                    result = await self._attempt(probe.target)
        finally:
            probe.cancel_scope = None
            short = result is not None and result.own
            following = self._hand_out(
                schedule.finished(probe, trio.current_time(), short=short), keep=True
            )
            # Later too: under load, the workers start what is due as their
            # probes end, and the scheduler need not wake (each wake-up by a
            # deadline costs trio an exception).
            if self._sleep is not None:
                self._sleep_due = due_at = schedule.next_due()
                self._sleep.deadline = self._wake_at(due_at)
        if result is not None:
            self._record(probe, result)
        return following

    def _http_exchanges(self) -> Exchanges:
        """The run's `Exchanges`, started in its nursery at the first plain
        HTTP probe (a daemon without one never imports h11)."""
        exchanges = self._exchanges
        if exchanges is None:
            from director.health.probes.http_exchange import Exchanges

            assert self._nursery is not None
            exchanges = self._exchanges = Exchanges(tick=self._tick)
            self._nursery.start_soon(exchanges.watch)
        return exchanges

    def freeze(self) -> None:
        """Take no verdict from now on: the health stays as it is, and no
        probe starts. For a stop, whose cancel of `run`
        reaches a watcher at its next checkpoint: one that a wait had
        already woken delivered its batch of verdicts first (a kernel
        test: probe lines after `stopping`, 1 run in 10)."""
        self._frozen = True

    def _probe_done(self, probe: _Probe[K], result: ProbeResult) -> None:
        """A TCP or plain HTTP probe's verdict, from `Connects.watch` or
        `Exchanges.watch`: as `_run_probe` does when a worker's probe ends."""
        schedule = self._schedule
        if schedule is None or self._frozen:
            return
        now = self._now()
        following = schedule.finished(probe, now, short=result.own)
        if following:
            self._hand_out(following, keep=False)
        sleep = self._sleep
        if sleep is not None:
            due_at = schedule.next_due()
            if due_at != self._sleep_due:
                self._sleep_due = due_at
                wake = self._wake_at(due_at)
                if wake != sleep.deadline:  # setting it costs trio more than comparing
                    sleep.deadline = wake
        self._record(probe, result, now)

    def hurry(self) -> None:
        """The slices of work the scheduler and the watchers have in
        progress end at their next check (watch.py's `hurry`): for a
        callback (`on_transition`) that has just woken a task that should
        run within a few events of the verdict, not behind a slice (SLICE)
        of each: the engine's pass that puts a health change in the kernel.
        Not for every transition: at a start's fill, thousands of them, a
        yield after each would cost more than the pass they wait for."""
        self._hurried = True
        for watcher in (self._connects, self._exchanges):
            if watcher is not None:
                watcher.hurry()

    async def _attempt(self, target: Target) -> ProbeResult:
        function = self._running_probe
        assert function is not None
        began = trio.current_time()
        try:
            return await function(*target)
        except Exception as error:
            return ProbeResult.failure(
                Reason.ERROR, trio.current_time() - began, f"{type(error).__name__}: {error}"[:200]
            )

    def _record(self, probe: _Probe[K], result: ProbeResult, now: float | None = None) -> None:
        if self._frozen:
            return
        if result.own:  # no verdict on the server: the next probe gives one
            if self._on_shortage is not None:
                self._on_shortage(probe.target, result)
            return
        if now is None:
            now = trio.current_time()
        timing = probe.target[0].timing
        on_result, on_transition = self._on_result, self._on_transition
        slot = probe.slot
        if probe.more is None and slot is not None:  # one key: most probes
            key = probe.key  # (K: not None while it has a slot; no cast call)
            before = slot.state
            slot.state, transition = advance(before, result, now, timing)
            if on_result is not None:
                on_result(key, before, slot.state)  # type: ignore[arg-type]
            if transition is not None and on_transition is not None:
                on_transition(key, transition)  # type: ignore[arg-type]
            return
        for key, slot in probe.members():
            if not probe.holds(key, slot):  # a callback removed it meanwhile
                continue
            before = slot.state
            slot.state, transition = advance(before, result, now, timing)
            if on_result is not None:
                on_result(key, before, slot.state)
            if transition is not None and on_transition is not None:
                on_transition(key, transition)


def validate_target(key: object, target: object) -> None:
    """Raise ValueError, naming `key`, when `target` is no (check, address,
    port) the checker can probe. Called for every target of every reload:
    the message (the key's repr) is built only for a bad one."""
    problem = target_problem(target)
    if problem is not None:
        raise ValueError(f"health check target {key!r}: {problem}")


def _validate(targets: Mapping[Any, object]) -> None:
    """validate_target of each target, each distinct check's own settings
    judged once (thousands of targets share a handful of checks)."""
    checks: dict[int, str | None] = {}  # id(check): its problem; `targets` holds them
    for key, target in targets.items():
        problem = target_problem(target, checks)
        if problem is not None:
            raise ValueError(f"health check target {key!r}: {problem}")


def target_problem(target: object, checks: dict[int, str | None] | None = None) -> str | None:
    """What is wrong with `target`, or None. `checks` remembers each check's
    check_problem by id(), for a caller that keeps the checks alive."""
    if not (isinstance(target, tuple) and len(target) == 3):
        return f"expected (check, address, port), got {target!r}"
    check, address, port = target
    if not isinstance(check, Check):
        return f"{check!r} is not a health check"
    if not isinstance(address, IPv4Address | IPv6Address):
        return f"address {address!r} is not an IP address"
    if not (isinstance(port, int) and 0 <= port <= 65535):
        return f"port {port!r} is not in 0..65535"
    if not isinstance(check, ExecCheck) and (check.port if check.port is not None else port) == 0:
        return "no port to probe (the server's port is 0; set the check's port)"
    if checks is None:
        return check_problem(check)
    try:
        return checks[id(check)]
    except KeyError:
        problem = checks[id(check)] = check_problem(check)
        return problem


def check_problem(check: Check) -> str | None:
    """What is wrong with a check's timing, or None."""
    timing = check.timing
    for name in ("interval", "timeout"):
        value = getattr(timing, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            return f"{name} must be a positive number of seconds, got {value!r}"
    for name in ("rise", "fall"):
        value = getattr(timing, name)
        if not (isinstance(value, int) and value >= 1):
            return f"{name} must be a whole number >= 1, got {value!r}"
    return None


def default_max_probes(most: int = 4096) -> int:
    """`most` probes at once, or half the open-file limit (each probe may
    hold a file) when that is lower; 16 at least."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return most
    return max(16, min(most, soft // 2))
