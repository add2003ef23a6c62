"""TCP check: the server is up when it accepts a connection.

The probe is the one the checker runs most (10,000 a second is the target on
one core), so it drives a non-blocking stdlib socket itself: `connect_ex`,
a wait for the socket to turn writable under the check's timeout, and
SO_ERROR for the verdict (connect(2), "EINPROGRESS"). No name resolution (the
address is a literal), no exception on the way to a success, and the socket
is closed on every path, cancellation included. Failures carry the reasons
and details of `probe_attempt` (attempt.py).

`Connects` holds the connecting sockets in one epoll set and their deadlines
in one heap, and its `watch` task delivers each verdict to a callback: a
probe costs one epoll_ctl and no task, no cancel scope and no wake-up of its
own, and one wake-up serves every connect that completed meanwhile. The
checker starts its TCP probes this way (`Connects.start`), with no task per
probe; `probe_tcp` is the same probe for one caller, awaited. Through
`trio.lowlevel.wait_writable` under a cancel scope, each socket cost a failed
EPOLL_CTL_MOD (trio tries MOD, then ADD: an exception each time), a wake-up
and a deadline of its own: more than the rest of the probe.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import select
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

import outcome
import trio

from director.health.probes.attempt import translate
from director.health.probes.contain import BugLog, contained
from director.health.result import ProbeResult
from director.health.spec import TcpCheck
from director.ipvs.model import IPAddress

__all__ = ["Connects", "ProbeDone", "TcpDestination", "destination", "probe_tcp"]

ProbeDone = Callable[[ProbeResult], None]

_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# SO_LINGER on with a zero timeout: close() sends a RST instead of a FIN, so
# the probe leaves no TIME_WAIT socket behind. At 10,000 probes a second a
# FIN close would keep about 600,000 of them (60 s each), past the kernel's
# tcp_max_tw_buckets and into the ephemeral ports; HAProxy closes its health
# check connections the same way. The server sees a connection that was
# accepted and then reset, which is all a TCP check asks of it.
_RST_ON_CLOSE = struct.pack("ii", 1, 0)
_PENDING = (errno.EINPROGRESS, errno.EINTR)


@dataclass(frozen=True, slots=True)
class TcpDestination:
    """Where a TCP check connects, in the socket module's terms: computed
    once per target, not once per probe (formatting an address costs more
    than the rest of the probe's Python)."""

    check: TcpCheck
    address: IPAddress
    port: int
    family: int
    sockaddr: tuple[str, int]


def destination(check: TcpCheck, address: IPAddress, port: int) -> TcpDestination:
    """The check's own address and port where it has them, else the server's."""
    address = check.address or address
    port = check.port if check.port is not None else port
    family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
    return TcpDestination(check, address, port, family, (str(address), port))


async def probe_tcp(check: TcpCheck, address: IPAddress, port: int) -> ProbeResult:
    """One TCP probe, awaited. Cancellation passes through (the socket is
    closed). Network failures are failed results; see `Connects.start`."""
    task = trio.lowlevel.current_task()

    def done(result: ProbeResult) -> None:
        trio.lowlevel.reschedule(task, outcome.Value(result))

    connects = _connects()
    connect = connects.start(destination(check, address, port), done)

    def abort(_: object) -> trio.lowlevel.Abort:
        connects.cancel(connect)
        return trio.lowlevel.Abort.SUCCEEDED

    result: ProbeResult = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


@dataclass(eq=False, slots=True)
class _Connect:
    """One probe in flight. `done` is None once its verdict went out or it
    was cancelled; `sock` is None once the socket is closed."""

    target: TcpDestination
    started: float
    done: ProbeDone | None
    sock: socket.socket | None = None
    result: ProbeResult | None = None  # a verdict known at start, waiting to go out


class Connects:
    """Connecting sockets in one epoll set, their deadlines in one heap, and
    `watch`, which delivers each probe's verdict to its callback: a success
    when the connect completed, a failure with its reason when it failed
    (SO_ERROR) or its deadline passed.

    A socket is registered EPOLLOUT | EPOLLONESHOT: it reports once (when
    the connect completes, or fails: EPOLLERR and EPOLLHUP always report),
    then stays disarmed until close(2) takes it out of the set. A probe that
    ends without its event (deadline, cancel) takes its socket out at once:
    were the file kept open by a fork for a moment after our close, its
    entry could later wake whichever socket had reused the number.

    One owner: the task that runs `watch` (the checker's nursery, or a system
    task for `probe_tcp`). Callbacks run in that task, never inside `start`;
    an exception a callback raises ends `watch` with it. When `watch` ends,
    every socket still connecting is closed and its callback never runs."""

    def __init__(self, batch: int = 512, tick: float = 0.0) -> None:
        """`batch`: verdicts delivered between two checkpoints of `watch`.
        `tick` > 0 (seconds): once a connect is reported, `watch` waits for
        the next multiple of `tick` before reading, so that one read serves
        the connects that complete meanwhile (a verdict is read at most one
        tick late; its latency includes that wait)."""
        self._batch = batch
        self._tick = tick
        self._epoll = select.epoll()
        self._pending: dict[int, _Connect] = {}
        self._deadlines: list[tuple[float, int, _Connect]] = []
        self._sequence = 0
        self._known: list[_Connect] = []  # verdicts known at start
        self._deferred: deque[_Connect] = deque()  # asked for while verdicts were read
        self._reading = False  # `watch` is reading verdicts
        self._sleep: trio.CancelScope | None = None
        self._bugs = BugLog()
        self._closed = False

    def start(self, target: TcpDestination, done: ProbeDone) -> _Connect:
        """Begin one probe; `done(result)` is called later from `watch`,
        exactly once unless the probe is cancelled or `watch` ends first.
        While `watch` is reading verdicts the connect waits, and starts
        after them (at most `batch` at a time), its timeout counted from
        then. Never raises for the probe's sake: whatever goes wrong is its
        verdict (a bug: reason `error`, logged once in a while, contain.py).
        Raises trio.ClosedResourceError once `watch` has ended."""
        if self._closed:
            raise trio.ClosedResourceError("the TCP probes' watcher has ended")
        connect = _Connect(target, 0.0, done)
        if self._reading:
            self._deferred.append(connect)
        else:
            self._begin(connect)
        return connect

    def _begin(self, connect: _Connect) -> None:
        target = connect.target
        started = connect.started = trio.current_time()
        timeout = target.check.timing.timeout
        try:
            sock = connect.sock = socket.socket(target.family, _FLAGS)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
            code = sock.connect_ex(target.sockaddr)
            if code in _PENDING:
                fd = sock.fileno()
                self._epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
                self._pending[fd] = connect
                deadline = started + timeout
                self._sequence += 1
                heapq.heappush(self._deadlines, (deadline, self._sequence, connect))
                sleep = self._sleep
                if sleep is not None and deadline < sleep.deadline:
                    sleep.deadline = deadline
                return
            connect.result = _verdict(code, 0.0, timeout)
        except OSError as exc:
            reason, detail = translate(exc, timeout)
            connect.result = ProbeResult.failure(reason, 0.0, detail)
        except Exception as exc:  # a probe can only fail: see contain.py
            check, address, port = target.check, target.address, target.port
            connect.result = contained(exc, check, address, port, started, self._bugs)
        self._close(connect)
        self._known.append(connect)
        if self._sleep is not None:
            self._sleep.deadline = -math.inf

    @property
    def in_flight(self) -> int:
        """Connects begun whose verdict has not been read yet."""
        return len(self._pending)

    def cancel(self, connect: _Connect) -> None:
        """The probe's callback will not run; its socket is closed now."""
        connect.done = None
        if connect.sock is not None:
            self._forget(connect)

    async def watch(self) -> None:
        """Deliver verdicts until cancelled.

        Each round reads every connect the kernel reports done, in batches
        with a checkpoint between them (a busy loop must not starve the
        other tasks), then fails the connects whose deadline passed, then
        begins at most `batch` of the connects asked for meanwhile. A socket
        is timed out only when the kernel has not reported it after a full
        read, never for having waited its turn; and connects begin only as
        fast as their verdicts are read, so that under overload probes start
        late (the checker skips the starts they missed) instead of their
        verdicts waiting, unread, past their timeouts."""
        pending, epoll, deadlines, batch = self._pending, self._epoll, self._deadlines, self._batch
        deferred = self._deferred
        try:
            while True:
                while self._known:
                    known, self._known = self._known, []
                    for connect in known:
                        assert connect.result is not None
                        self._deliver(connect, connect.result)
                while deadlines and deadlines[0][2].sock is None:
                    heapq.heappop(deadlines)  # that probe is over
                if self._known or deferred:
                    wake_at = -math.inf
                else:
                    wake_at = deadlines[0][0] if deadlines else math.inf
                with trio.move_on_at(wake_at) as self._sleep:
                    await trio.lowlevel.wait_readable(epoll)
                self._sleep = None
                if self._tick > 0:
                    await trio.sleep_until(math.ceil(trio.current_time() / self._tick) * self._tick)
                self._reading = True
                while True:
                    events = epoll.poll(0, batch)
                    now = trio.current_time()
                    for fd, _ in events:
                        ready = pending.pop(fd, None)
                        sock = ready.sock if ready is not None else None
                        if ready is None or sock is None:
                            continue
                        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        self._close(ready)
                        timeout = ready.target.check.timing.timeout
                        self._deliver(ready, _verdict(code, now - ready.started, timeout))
                    if len(events) < batch:
                        break
                    await trio.lowlevel.checkpoint()
                now = trio.current_time()
                expired = 0
                while deadlines and deadlines[0][0] <= now and expired < batch:
                    connect = heapq.heappop(deadlines)[2]
                    if connect.sock is not None:
                        expired += 1
                        self._forget(connect)
                        timeout = connect.target.check.timing.timeout
                        self._deliver(connect, _verdict(errno.EINPROGRESS, now - connect.started, timeout))  # fmt: skip
                self._reading = False
                for _ in range(min(batch, len(deferred))):
                    connect = deferred.popleft()
                    if connect.done is not None:
                        self._begin(connect)
        finally:
            self._closed = True
            self._sleep = None
            self._reading = False
            for connect in list(pending.values()):
                connect.done = None
                self._forget(connect)
            self._known.clear()
            deferred.clear()
            epoll.close()

    def _deliver(self, connect: _Connect, result: ProbeResult) -> None:
        done, connect.done = connect.done, None
        if done is not None:
            done(result)

    def _forget(self, connect: _Connect) -> None:
        sock = connect.sock
        assert sock is not None
        fd = sock.fileno()
        if self._pending.get(fd) is connect:
            del self._pending[fd]
            self._epoll.unregister(fd)
        self._close(connect)

    def _close(self, connect: _Connect) -> None:
        if connect.sock is not None:
            connect.sock.close()
            connect.sock = None


def _verdict(code: int, latency: float, timeout: float) -> ProbeResult:
    """The result for a connect's outcome: 0, an errno, or EINPROGRESS for
    one still connecting at its deadline."""
    if code == 0:
        return ProbeResult.success(latency)
    failure = trio.TooSlowError() if code in _PENDING else OSError(code, os.strerror(code))
    reason, detail = translate(failure, timeout)
    return ProbeResult.failure(reason, latency, detail)


_CONNECTS: trio.lowlevel.RunVar[Connects] = trio.lowlevel.RunVar("director_tcp_connects")


def _connects() -> Connects:
    """The run's own `Connects` for `probe_tcp`, watched by a system task."""
    try:
        return _CONNECTS.get()
    except LookupError:
        connects = Connects()
        _CONNECTS.set(connects)
        trio.lowlevel.spawn_system_task(connects.watch)
        return connects
