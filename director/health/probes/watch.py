"""Probes without a task each: non-blocking sockets in one epoll set, their
deadlines in one heap, and a `watch` task that delivers each verdict to a
callback.

`Watcher` is the machinery tcp.py's `Connects` and http_exchange.py's
`Exchanges` share: starting a probe (or deferring it while verdicts are
read), the watcher's rounds (read what the kernel reports in batches, fail
the probes whose deadline passed, begin at most `batch` deferred ones; a
checkpoint after each SLICE of that work),
cancellation and the closing of every socket when `watch` ends. Each
subclass keeps its own protocol steps: how a probe opens its socket
(`_open`), what the watcher does with an event (`_handle`), how it waits
between rounds (`_wait`). `read_now` reads, in the starter's task, what
the kernel already reports of probes just begun. `awaited` runs one probe for one caller through
the run's own watcher, which a system task watches (`run_watcher`).
"""

from __future__ import annotations

import _socket
import heapq
import math
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import outcome
import trio

from director.health.probes.attempt import own_shortage, translate
from director.health.probes.contain import BugLog, contained
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs.model import IPAddress

__all__ = [
    "Probe",
    "ProbeDone",
    "Target",
    "Watcher",
    "awaited",
    "disconnector",
    "give_way",
    "nap",
    "nap_until",
    "network_failure",
    "ready_events",
    "run_watcher",
]

ProbeDone = Callable[[ProbeResult], None]

# Seconds of work (wall clock) between two checkpoints of `watch`: a busy
# watcher lets the other tasks (the engine's pass, the control socket) run
# at least this often. Counted in probes, a batch of 512 was 0.5-1 s of work
# in the VM at 10,000 real servers, and each await of a pass waited that long.
SLICE = 0.005
# Verdicts read (and probes begun) between two reads of the clock for the
# slice's end: a clock read is a system call where the clock source has no
# vDSO read (the emulated VM's HPET: 2 us a read). Eight probes are about
# 0.1 ms of CPU on the host and 8 ms in that VM, so a slice may run over
# by that much.
CLOCK_EVERY = 8
# Rounds of `watch` that go at once, when their events come, between two
# multiples of the tick: two serve a probe alone whose two waits (connect,
# answer) fall in one tick, and bound a busy watcher to twice the tick's
# rate of reads.
READS_A_TICK = 2
# Events `read_now` handles at most: it runs in the starter's task, with no
# checkpoint (a busy watcher reads in its own rounds).
READ_NOW = 16
# Disconnected sockets kept for the next probes (`disconnector`): a connect
# on one saves its socket(2) and close(2) (and setsockopt(2)), and its
# epoll_ctl ADD. A watcher keeps at most as many sockets, kept and in use,
# as it had probes in flight at once over the last KEEP_REVIEW seconds, and
# KEEP_IDLE at least: an overloaded checker's rounds end hundreds of probes
# at once and start as many (with a fixed 256 half of its sockets closed
# and were made again), and a load that shrank gives its sockets back.
KEEP_IDLE = 256
KEEP_REVIEW = 1.0


class Target(Protocol):
    """What a watcher needs of a probe's destination."""

    @property
    def check(self) -> Check: ...
    @property
    def address(self) -> IPAddress: ...
    @property
    def port(self) -> int: ...


T = TypeVar("T", bound=Target)


@dataclass(eq=False, slots=True)
class Probe(Generic[T]):
    """One probe in flight. `done` is None once its verdict went out or it
    was cancelled; `sock` is None once the socket is closed."""

    target: T
    started: float
    done: ProbeDone | None
    sock: _socket.socket | None = None
    result: ProbeResult | None = None  # a verdict known at start, waiting to go out


P = TypeVar("P", bound=Probe[Any])


def network_failure(exc: BaseException, latency: float, timeout: float) -> ProbeResult:
    """The failed result for a network failure (attempt.py's reasons);
    trio.TooSlowError is the timeout's."""
    reason, detail = translate(exc, timeout)
    return ProbeResult.failure(reason, latency, detail, own=own_shortage(exc))


# A deadline is put back only for more than this (seconds): the server's
# time left, not rounding.
_RE_ARM_AT_LEAST = 0.001


class Watcher(Generic[T, P]):
    """Probes' sockets in one epoll set, their deadlines in one heap, and
    `watch`, which delivers each probe's verdict to its callback.

    One owner: the task that runs `watch` (the checker's nursery, or a
    system task for `awaited`). Callbacks run in that task, never inside
    `start`; an exception a callback raises ends `watch` with it. When
    `watch` ends, every probe in flight is closed and its callback never
    runs."""

    _what = "probes'"  # the subclass's name for its probes, in errors
    # Whether `_done_with` keeps sockets for later probes: for a subclass
    # that registers them EPOLLONESHOT and takes them in `_open`
    # (`_kept_socket`).
    _keeps_sockets = False

    def __init__(self, batch: int = 512, tick: float = 0.0) -> None:
        """`batch`: events handled between two checkpoints of `watch`.
        `tick` (seconds): the subclass's `_wait` says what it does."""
        self._batch = batch
        self._tick = tick
        self._epoll = select.epoll()
        self._pending: dict[int, P] = {}
        self._deadlines: list[tuple[float, int, P]] = []
        self._sequence = 0
        self._known: list[P] = []  # verdicts known at start
        self._again: list[P] = []  # to handle again next round, as if readable
        self._deferred: deque[P] = deque()  # asked for while verdicts were read
        self._reading = False  # `watch` is reading verdicts
        self._sleep: trio.CancelScope | None = None
        self._bugs = BugLog()
        self._closed = False
        # Sockets kept for the next probes, disconnected, by family; and the
        # sockets (kept or in use) in the epoll set, where a kept socket
        # stays between its probes.
        self._idle: dict[int, list[_socket.socket]] = {socket.AF_INET: [], socket.AF_INET6: []}
        self._in_set: set[int] = set()
        self._disconnect = disconnector()
        self._keep = KEEP_IDLE  # sockets kept and in use, at most (`_review`)
        self._peak = 0  # probes in flight at once since the last review
        self._review_at = -math.inf
        self._slice_end = 0.0  # when `watch` next checkpoints (time.perf_counter)
        self._hurried = False  # the slice ends at the next event (`hurry`)
        # With a tick: the multiple of it after the last round, and how many
        # rounds went since the one before it (`_wait`).
        self._next_tick = -math.inf
        self._reads = 0
        # The run's clock's own method: half trio.current_time's cost, read
        # at every probe's start.
        try:
            self._now: Callable[[], float] = trio.lowlevel.current_clock().current_time
        except RuntimeError:  # made outside a run
            self._now = trio.current_time

    @property
    def in_flight(self) -> int:
        """Probes begun whose verdict has not been read yet."""
        return len(self._pending)

    @property
    def kept(self) -> int:
        """Sockets kept for the next probes (open, not in use)."""
        return sum(len(idle) for idle in self._idle.values())

    def start(self, target: T, done: ProbeDone) -> P:
        """Begin one probe; `done(result)` is called later from `watch`,
        exactly once unless the probe is cancelled or `watch` ends first.
        While `watch` is reading verdicts the probe waits, and begins after
        them (at most `batch` at a time), its timeout counted from then.
        Never raises for the probe's sake: whatever goes wrong is its
        verdict (a bug: reason `error`, logged once in a while, contain.py).
        Raises trio.ClosedResourceError once `watch` has ended."""
        if self._closed:
            raise trio.ClosedResourceError(f"the {self._what} watcher has ended")
        probe = self._new(target, done)
        if self._reading:
            self._deferred.append(probe)
        else:
            self._begin(probe)
        return probe

    def hurry(self) -> None:
        """End the slice of work in progress (or the next one) at its next
        event: a verdict just delivered woke a task that should not wait
        it out (the engine's pass that puts a health change in the
        kernel: at 10,000 real servers, a slice of each busy task was
        most of a change's way to the kernel). See `give_way`."""
        self._hurried = True

    def cancel(self, probe: P) -> None:
        """The probe's callback will not run; its socket is closed now."""
        probe.done = None
        if probe.sock is not None:
            self._forget(probe)

    def _new(self, target: T, done: ProbeDone) -> P:
        raise NotImplementedError

    def _open(self, probe: P) -> int | ProbeResult:
        """Open the probe's socket: the epoll events to register it for, or
        its verdict when known at once. An OSError is its failure."""
        raise NotImplementedError

    def _handle(self, probe: P, flags: int, now: float) -> None:
        """Advance a registered probe by what epoll reported (`flags`);
        `_finish` it when it has its verdict."""
        raise NotImplementedError

    def _left(self, probe: P, now: float) -> float:
        """Seconds of its timeout the probe's server has not had yet, when
        its deadline has passed and a full read found no verdict: 0 when
        the server had all of it. A subclass whose probe waits on the
        daemon between two steps (an exchange's send after its connect)
        gives back the time the daemon's lag took."""
        return 0.0

    def _kept_socket(self, family: int) -> _socket.socket | None:
        """A socket kept for a new probe (`_done_with`), for `_open` to
        connect, or None: then `_open` makes one."""
        idle = self._idle[family]
        return idle.pop() if idle else None

    def _arm(self, fd: int, events: int) -> None:
        """Put a probe's socket in the epoll set for `events`; a kept
        socket, in it already but disarmed (`_done_with`), is re-armed."""
        in_set = self._in_set
        if fd in in_set:
            self._epoll.modify(fd, events)
        else:
            self._epoll.register(fd, events)
            in_set.add(fd)

    def _done_with(self, probe: P) -> None:
        """The socket (if any) of a probe that has its verdict from the
        kernel, by its event or at its start: disconnected and kept for
        another probe (`disconnector`: a connected one is reset, as a close
        with SO_LINGER 0 would), else closed. Only here: the kernel is done
        with it, and its one-shot registration disarmed by that event (all
        events, EPOLLHUP and EPOLLERR included: the disconnect's own, which
        epoll_ctl(2) adds to every registration, wake nothing). Only for a
        subclass that registers EPOLLONESHOT (`_keeps_sockets`). A socket
        whose probe ended otherwise (deadline, cancel) may still report; it
        is taken out of the set and closed (`_forget`)."""
        sock = probe.sock
        if sock is None:
            return
        idle = self._idle[sock.family]
        if (
            self._keeps_sockets
            and len(idle) + len(self._pending) < self._keep
            and self._disconnect(sock.fileno())
        ):
            idle.append(sock)
            probe.sock = None
        else:
            self._close(probe)

    def _silence(self, probe: P, timeout: float) -> str:
        """A timeout's detail: what the probe waited for (attempt.py's
        `timed_out`), before its socket is closed."""
        return translate(trio.TooSlowError(), timeout)[1]

    async def _wait(self, wake_at: float) -> None:
        """Wait until the next round: for an event or `wake_at`. With a tick,
        at most READS_A_TICK rounds go at once between two multiples of it;
        past those, the next round waits for the next multiple (while probes
        are in flight it sleeps until then rather than wait for their
        events: one round serves every socket that became ready meanwhile).
        So a busy watcher reads about once a tick, however many probes a
        second, and an idle one answers an event at once: a probe alone
        costs a wake-up for each of its events, not also a timed wake-up
        for each (a timed wake-up of an idle process costs trio more than
        the probe's own Python)."""
        if self._tick <= 0:
            await self._wait_readable(wake_at)
            return
        if self._spent() and self._pending:
            await nap_until(self._next_tick)
        else:
            await self._wait_readable(wake_at)
            if self._spent():  # (read_now may have spent them meanwhile)
                await nap_until(self._next_tick)
        self._spent()  # after a sleep: a new tick, whose count starts
        self._reads += 1

    def _spent(self) -> bool:
        """Whether this tick had its READS_A_TICK rounds (with a tick)."""
        now = trio.current_time()
        if now >= self._next_tick:
            self._next_tick = (now // self._tick + 1) * self._tick
            self._reads = 0
        return self._reads >= READS_A_TICK

    def read_now(self) -> None:
        """Deliver the verdicts the kernel already has (at most READ_NOW),
        from the caller's task: for the starter of probes, right after
        starting them (a connect to a host nearby has completed by then),
        so that a probe alone needs no wake-up of `watch` of its own. Does
        nothing unless `watch` is waiting for events and, with a tick, has
        a round of the tick left (the read is one). The deliveries are as
        `watch` makes them; probes started meanwhile, and sockets to read
        again, are left to `watch`, which is woken for them."""
        if self._sleep is None or self._reading or self._closed or not self._pending:
            return
        if self._tick > 0:
            if self._spent():
                return
            self._reads += 1
        events = self._epoll.poll(0, READ_NOW)
        if not events:
            return
        now = trio.current_time()
        pending = self._pending
        self._reading = True
        try:
            for fd, flags in events:
                ready = pending.get(fd)
                if ready is not None:
                    self._handle(ready, flags, now)
        finally:
            self._reading = False
            sleep = self._sleep
            if sleep is not None:
                # `watch` waits until the earliest deadline of a probe still
                # in flight (not one just read: a wake-up for nothing), or
                # not at all for the work left to it.
                if self._deferred or self._again or self._known:
                    sleep.deadline = -math.inf
                else:
                    deadlines = self._deadlines
                    while deadlines and deadlines[0][2].sock is None:
                        heapq.heappop(deadlines)  # that probe is over
                    wake_at = deadlines[0][0] if deadlines else math.inf
                    if sleep.deadline != wake_at:
                        sleep.deadline = wake_at

    async def _wait_readable(self, wake_at: float) -> None:
        with trio.move_on_at(wake_at) as self._sleep:
            await trio.lowlevel.wait_readable(self._epoll)
        self._sleep = None

    def _begin(self, probe: P) -> None:
        target = probe.target
        started = probe.started = self._now()
        timeout = target.check.timing.timeout
        try:
            opened = self._open(probe)
            if isinstance(opened, int):
                sock = probe.sock
                assert sock is not None
                fd = sock.fileno()
                self._arm(fd, opened)
                pending = self._pending
                pending[fd] = probe
                if len(pending) > self._peak:  # (its sockets kept: `_review`)
                    self._peak = len(pending)
                    self._keep = max(self._keep, self._peak)
                deadline = started + timeout
                self._sequence += 1
                heapq.heappush(self._deadlines, (deadline, self._sequence, probe))
                sleep = self._sleep
                if sleep is not None and deadline < sleep.deadline:
                    sleep.deadline = deadline
                return
            probe.result = opened
            self._done_with(probe)
        except OSError as exc:
            probe.result = network_failure(exc, 0.0, timeout)
            self._close(probe)
        except Exception as exc:  # a probe can only fail: see contain.py
            probe.result = contained(exc, target.check, target.address, target.port, started, self._bugs)  # fmt: skip
            self._close(probe)
        self._known.append(probe)
        if self._sleep is not None:
            self._sleep.deadline = -math.inf

    async def watch(self) -> None:
        """Deliver verdicts until cancelled.

        Each round handles every event the kernel reports, in batches with
        a checkpoint between them (a busy loop must not starve the other
        tasks), then the probes to handle again, then fails the probes whose
        deadline passed, then begins at most `batch` of the probes asked for
        meanwhile. A probe is timed out only when the kernel has nothing
        for its socket at its deadline (a zero poll then: what came during
        the round's work is read, not timed out), never for having waited
        its turn;
        and probes begin only as fast as their verdicts are read, so that
        under overload probes start late (the checker skips the starts they
        missed) instead of their verdicts waiting, unread, past their
        timeouts."""
        pending, epoll, deadlines, batch = self._pending, self._epoll, self._deadlines, self._batch
        deferred, perf_counter = self._deferred, time.perf_counter
        try:
            while True:
                while self._known:
                    known, self._known = self._known, []
                    for probe in known:
                        assert probe.result is not None
                        self._deliver(probe, probe.result)
                while deadlines and deadlines[0][2].sock is None:
                    heapq.heappop(deadlines)  # that probe is over
                if self._known or deferred or self._again:
                    wake_at = -math.inf
                else:
                    wake_at = deadlines[0][0] if deadlines else math.inf
                await self._wait(wake_at)
                self._slice_end = time.perf_counter() + SLICE
                self._reading = True
                again, self._again = self._again, []
                while True:
                    events = epoll.poll(0, batch)
                    now = self._now()
                    for n, (fd, flags) in enumerate(events, 1):
                        ready = pending.get(fd)
                        if ready is not None:
                            self._handle(ready, flags, now)
                            if self._hurried or (
                                not n % CLOCK_EVERY and perf_counter() >= self._slice_end
                            ):
                                await self._slice_over()
                    if len(events) < batch:
                        break
                    await trio.lowlevel.checkpoint()
                now = self._now()
                if now >= self._review_at and self._keeps_sockets:
                    self._review(now)
                for probe in again:
                    if probe.sock is not None:
                        self._handle(probe, select.EPOLLIN, now)
                        if self._hurried or perf_counter() >= self._slice_end:
                            await self._slice_over()
                expired = 0
                while deadlines and deadlines[0][0] <= now and expired < batch:
                    probe = heapq.heappop(deadlines)[2]
                    if probe.sock is not None:
                        expired += 1
                        # What came after the round's read (this round's
                        # work, or a pause, since) is read, not timed out:
                        # its kernel times judge it (an edge-triggered
                        # socket's event would wait for the next round).
                        came = ready_events(probe.sock)
                        if came:
                            self._handle(probe, came, now)
                            if probe.sock is None:  # judged
                                continue
                        left = self._left(probe, now)
                        if left > _RE_ARM_AT_LEAST:
                            # The daemon's lag used its time, not the server.
                            self._sequence += 1
                            heapq.heappush(deadlines, (now + left, self._sequence, probe))
                            continue
                        # Its latency is its timeout, however late this
                        # round came: the rest was the daemon's lag.
                        timeout = probe.target.check.timing.timeout
                        detail = self._silence(probe, timeout)
                        self._forget(probe)
                        self._deliver(probe, ProbeResult.failure(Reason.TIMEOUT, timeout, detail))
                        if self._hurried or perf_counter() >= self._slice_end:
                            await self._slice_over()
                self._reading = False
                for n in range(1, min(batch, len(deferred)) + 1):
                    probe = deferred.popleft()
                    if probe.done is not None:
                        self._begin(probe)
                        if self._hurried or (
                            not n % CLOCK_EVERY and perf_counter() >= self._slice_end
                        ):
                            await self._slice_over()
        finally:
            self._closed = True
            self._sleep = None
            self._reading = False
            for probe in list(pending.values()):
                probe.done = None
                self._forget(probe)
            self._known.clear()
            self._again.clear()
            deferred.clear()
            for idle in self._idle.values():
                for sock in idle:
                    sock.close()
                idle.clear()
            self._in_set.clear()
            epoll.close()

    def _review(self, now: float) -> None:
        """Once every KEEP_REVIEW seconds of a round (`now`, the run's
        clock): keep as many sockets, kept and in use, as there were probes
        in flight at once since the last review (KEEP_IDLE at least), and
        close the kept ones past that."""
        self._keep = max(KEEP_IDLE, self._peak)
        self._peak = len(self._pending)
        self._review_at = now + KEEP_REVIEW
        for idle in self._idle.values():
            while idle and len(idle) + len(self._pending) > self._keep:
                sock = idle.pop()
                self._in_set.discard(sock.fileno())
                sock.close()

    async def _slice_over(self) -> None:
        """A checkpoint once this stretch of work has run for SLICE seconds,
        or at once when hurried (`give_way`). Its callers test `_hurried`
        and `perf_counter() >= self._slice_end` first: a coroutine made and
        run for every event cost more than the test."""
        hurried, self._hurried = self._hurried, False
        if hurried or time.perf_counter() >= self._slice_end:
            await give_way(hurried)
            self._slice_end = time.perf_counter() + SLICE

    def _finish(self, probe: P, result: ProbeResult) -> None:
        """Done with a registered probe's socket (`_done_with`), and deliver
        its verdict.

        Closed without EPOLL_CTL_DEL: close(2) takes the socket out of the
        set. Were its file kept open a moment longer by a fork (an exec
        check's), an event of the old socket could reach the one that
        reuses its number: harmless, as every event is only a cue to try
        the socket (a subclass registered EPOLLONESHOT reports it once)."""
        sock = probe.sock
        assert sock is not None
        del self._pending[sock.fileno()]
        self._done_with(probe)
        self._deliver(probe, result)

    def _deliver(self, probe: P, result: ProbeResult) -> None:
        done, probe.done = probe.done, None
        if done is not None:
            done(result)

    def _forget(self, probe: P) -> None:
        sock = probe.sock
        if sock is None:
            return
        fd = sock.fileno()
        if self._pending.get(fd) is probe:
            del self._pending[fd]
            self._epoll.unregister(fd)
        self._close(probe)

    def _close(self, probe: P) -> None:
        sock = probe.sock
        if sock is not None:
            self._in_set.discard(sock.fileno())
            sock.close()
            probe.sock = None


async def give_way(hurried: bool = False) -> None:
    """A checkpoint between two slices of a busy task's work; `hurried`
    (a verdict woke a task that should run first): two. trio runs the tasks
    that are ready in a batch, in either order (it reverses half of them);
    a task that yields once may run its whole next slice before the one it
    woke, one that yields twice lets it run before its next slice, either
    way."""
    await trio.lowlevel.checkpoint()
    if hurried:
        await trio.lowlevel.checkpoint()


def disconnector() -> Callable[[int], bool]:
    """A function that ends the TCP connection of socket `fd` and keeps
    the socket for a new connect, and says whether it did (False: close
    it). It calls connect(2) with an address of family AF_UNSPEC, through
    libc, as Python's own connect takes only its family's addresses: the
    kernel resets a connected socket (a RST, as a close with SO_LINGER 0
    sends) and leaves it unbound for a new connect
    (`__inet_stream_connect`, net/ipv4/af_inet.c). `tcp_disconnect`
    (net/ipv4/tcp.c) clears the old connection's counters, TCP_INFO's
    retransmits and round trip among them (since Linux 5.5), and the new
    connect the error the reset left (`tcp_connect_init`, tcp_output.c).
    Where libc cannot be called, it always fails."""
    try:
        import ctypes

        connect = ctypes.CDLL(None).connect
    except (ImportError, OSError, AttributeError):
        return lambda fd: False
    unspec = ctypes.create_string_buffer(16)  # struct sockaddr, sa_family 0

    def disconnect(fd: int) -> bool:
        return bool(connect(fd, unspec, 16) == 0)

    return disconnect


async def nap(scope: trio.CancelScope) -> None:
    """Sleep until `scope` (entered by the caller, its deadline movable
    meanwhile) reaches its deadline, and return; a cancellation from outside
    it raises as usual. Not a checkpoint when the deadline ends it: where
    trio.sleep_until raises Cancelled at the deadline and its scope catches
    it (an exception, its traceback and an outcome.Error), this is rescheduled
    with a plain value, for the wake-ups a checker makes on every tick."""
    task = trio.lowlevel.current_task()

    def abort(_: object) -> trio.lowlevel.Abort:
        if scope.cancel_called:  # its own deadline (or its own cancel)
            trio.lowlevel.reschedule(task)
            return trio.lowlevel.Abort.FAILED
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)


async def nap_until(deadline: float) -> None:
    """trio.sleep_until(deadline), by `nap`."""
    with trio.CancelScope(deadline=deadline) as scope:
        await nap(scope)


W = TypeVar("W", bound=Watcher[Any, Any])


def run_watcher(var: trio.lowlevel.RunVar[W], new: Callable[[], W]) -> W:
    """The run's own watcher in `var` (made by `new` the first time),
    watched by a system task."""
    try:
        return var.get()
    except LookupError:
        watcher = new()
        var.set(watcher)
        trio.lowlevel.spawn_system_task(watcher.watch)
        return watcher


async def awaited(watcher: Watcher[T, Any], target: T) -> ProbeResult:
    """One probe through `watcher`, awaited. Cancellation passes through
    (the probe is cancelled: its socket is closed)."""
    task = trio.lowlevel.current_task()

    def done(result: ProbeResult) -> None:
        trio.lowlevel.reschedule(task, outcome.Value(result))

    probe = watcher.start(target, done)

    def abort(_: object) -> trio.lowlevel.Abort:
        watcher.cancel(probe)
        return trio.lowlevel.Abort.SUCCEEDED

    result: ProbeResult = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


_POLL_EVENTS = select.POLLIN | select.POLLOUT


def ready_events(sock: _socket.socket | socket.socket) -> int:
    """The events the kernel has for `sock` now (a zero-timeout poll; its
    POLL* bits are epoll's EPOLL* on Linux), 0 for none."""
    poll = select.poll()
    poll.register(sock, _POLL_EVENTS)
    got = poll.poll(0)
    return got[0][1] if got else 0
