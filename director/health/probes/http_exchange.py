"""Plain-HTTP probes judged on the response's head, without a task each.

`Exchanges` drives each probe over a non-blocking socket in one epoll set,
as tcp.py's `Connects` does for TCP: connect(2), send the request h11 wrote,
read until h11 has the final response's head, judge its status
(http_head.py), close. Its `watch` task delivers each verdict to a callback;
a probe costs no task, no cancel scope and no wake-up of its own. A socket
is registered once, edge-triggered for reading and writing
(EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET): the connect's completion, then
each arrival of data, is one event, with no epoll_ctl between the two waits.

It serves the checks that need nothing past the head: plain `http` without
`expect_body` (`http_destination` returns None for the others, which take
http.py's task with `trio.SSLStream` and the body's search). Reasons and
details are those of http.py: attempt.py's for the network (refused,
unreachable, reset, timeout "no verdict within T s"), BAD_REPLY with h11's
message for a reply it refuses (or httpcore's "Server disconnected without
sending a response." for a close before a whole head), and the head's own
verdict. The body is never read: the socket is closed as soon as the head
is judged.

Whatever the server sends costs it, not the checker: at most one READ_SIZE
read per socket per round of `watch` (a socket whose read filled the buffer
is read again next round rather than drained now), h11 refuses a head that
stays incomplete past MAX_INCOMPLETE_EVENT, and every probe ends at its
deadline, whatever trickles in.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import select
import socket
from collections import deque
from dataclasses import dataclass
from ipaddress import IPv4Address

import h11
import outcome
import trio

from director.health.probes.attempt import translate
from director.health.probes.contain import BugLog, contained
from director.health.probes.http_head import (
    DISCONNECTED,
    READ_SIZE,
    Connection,
    head_failure,
    new_connection,
    next_response,
    receive,
    request,
)
from director.health.probes.tcp import ProbeDone
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck, host_problem
from director.ipvs.model import IPAddress

__all__ = ["Exchanges", "HttpDestination", "exchange_once", "http_destination"]

_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_FAILED = select.EPOLLERR | select.EPOLLHUP
_READABLE = select.EPOLLIN | select.EPOLLRDHUP | _FAILED
_CLOSED = select.EPOLLRDHUP | select.EPOLLHUP
_PENDING = (errno.EINPROGRESS, errno.EINTR)


@dataclass(frozen=True, slots=True)
class HttpDestination:
    """Where and what a plain HTTP check asks, computed once per target:
    the socket module's address, and the request (None when `problem`, the
    detail of an ERROR known before any I/O: a bad host or request)."""

    check: HttpCheck
    address: IPAddress
    port: int
    family: int
    sockaddr: tuple[str, int]
    request: h11.Request | None
    problem: str = ""


def http_destination(check: HttpCheck, address: IPAddress, port: int) -> HttpDestination | None:
    """The destination of a check `Exchanges` serves (the check's own
    address and port where it has them, else the server's), or None for one
    it does not: HTTPS, `expect_body`, or a request that cannot be built
    for a reason http.py contains as a bug."""
    if check.tls or check.expect_body is not None:
        return None
    address = check.address or address
    port = check.port if check.port is not None else port
    family = socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6
    sockaddr = (str(address), port)
    if check.host is not None:
        problem = host_problem(check.host)
        if problem is not None:
            return HttpDestination(check, address, port, family, sockaddr, None, f"host {check.host!r}: {problem}")  # fmt: skip
    try:
        built = request(check, address, port)
    except h11.LocalProtocolError as e:
        return HttpDestination(check, address, port, family, sockaddr, None, f"request: {e}")
    except Exception:
        return None
    return HttpDestination(check, address, port, family, sockaddr, built)


async def exchange_once(target: HttpDestination) -> ProbeResult:
    """One probe, awaited, through the run's own `Exchanges` (a system
    task watches it). Cancellation passes through (the socket is closed)."""
    task = trio.lowlevel.current_task()

    def done(result: ProbeResult) -> None:
        trio.lowlevel.reschedule(task, outcome.Value(result))

    exchanges = _exchanges()
    exchange = exchanges.start(target, done)

    def abort(_: object) -> trio.lowlevel.Abort:
        exchanges.cancel(exchange)
        return trio.lowlevel.Abort.SUCCEEDED

    result: ProbeResult = await trio.lowlevel.wait_task_rescheduled(abort)
    return result


@dataclass(eq=False, slots=True)
class _Exchange:
    """One probe in flight. `done` is None once its verdict went out or it
    was cancelled; `sock` is None once the socket is closed; `out` is the
    part of the request not sent yet (empty once it all went)."""

    target: HttpDestination
    started: float
    done: ProbeDone | None
    sock: socket.socket | None = None
    conn: Connection | None = None
    out: bytes = b""
    result: ProbeResult | None = None  # a verdict known at start, waiting to go out


class Exchanges:
    """HTTP exchanges in one epoll set, their deadlines in one heap, and
    `watch`, which delivers each probe's verdict to its callback.

    One owner: the task that runs `watch` (the checker's nursery, or a
    system task for `exchange_once`). Callbacks run in that task, never
    inside `start`; an exception a callback raises ends `watch` with it.
    When `watch` ends, every exchange in flight is closed and its callback
    never runs."""

    def __init__(self, batch: int = 512, tick: float = 0.0) -> None:
        """`batch`: events handled between two checkpoints of `watch`.
        `tick` > 0 (seconds): `watch` reads at most once between two
        multiples of `tick`. Woken by an event in a later tick than its last
        read, it reads at once; in the same tick, it waits for the next
        multiple, and while probes are in flight it sleeps until then
        instead of waiting for their events: one read serves the sockets
        that became ready meanwhile, and a lone probe costs one wake-up for
        each of its two waits (connect, answer), each up to one tick late."""
        self._batch = batch
        self._tick = tick
        self._epoll = select.epoll()
        self._pending: dict[int, _Exchange] = {}
        self._deadlines: list[tuple[float, int, _Exchange]] = []
        self._sequence = 0
        self._known: list[_Exchange] = []  # verdicts known at start
        self._again: list[_Exchange] = []  # their last read filled READ_SIZE: read again
        self._deferred: deque[_Exchange] = deque()  # asked for while verdicts were read
        self._reading = False
        self._next_read = -math.inf  # with a tick: the multiple of it after the last read
        self._sleep: trio.CancelScope | None = None
        self._bugs = BugLog()
        self._closed = False

    @property
    def in_flight(self) -> int:
        """Exchanges begun whose verdict has not been read yet."""
        return len(self._pending)

    def start(self, target: HttpDestination, done: ProbeDone) -> _Exchange:
        """Begin one probe; `done(result)` is called later from `watch`,
        exactly once unless the probe is cancelled or `watch` ends first.
        While `watch` is reading, the exchange waits and begins after the
        round (its timeout counted from then). Never raises for the probe's
        sake: whatever goes wrong is its verdict (a bug: reason `error`,
        logged once in a while, contain.py). Raises trio.ClosedResourceError
        once `watch` has ended."""
        if self._closed:
            raise trio.ClosedResourceError("the HTTP probes' watcher has ended")
        exchange = _Exchange(target, 0.0, done)
        if self._reading:
            self._deferred.append(exchange)
        else:
            self._begin(exchange)
        return exchange

    def cancel(self, exchange: _Exchange) -> None:
        """The probe's callback will not run; its socket is closed now."""
        exchange.done = None
        if exchange.sock is not None:
            self._forget(exchange)

    def _begin(self, exchange: _Exchange) -> None:
        target = exchange.target
        started = exchange.started = trio.current_time()
        timeout = target.check.timing.timeout
        try:
            if target.request is None:
                exchange.result = ProbeResult.failure(Reason.ERROR, 0.0, target.problem)
            else:
                # No EndOfMessage: the request has no body (its framing is
                # Content-Length: 0, whose end h11 writes as b""), and h11
                # reads the response whatever our side's state.
                conn = exchange.conn = new_connection()
                exchange.out = conn.send(target.request) or b""
                sock = exchange.sock = socket.socket(target.family, _FLAGS)
                code = sock.connect_ex(target.sockaddr)
                if code == 0 or code in _PENDING:
                    # Registered when already connected too: an edge-triggered
                    # set reports the state a socket is in when it is added.
                    fd = sock.fileno()
                    self._epoll.register(fd, _EVENTS)
                    self._pending[fd] = exchange
                    deadline = started + timeout
                    self._sequence += 1
                    heapq.heappush(self._deadlines, (deadline, self._sequence, exchange))
                    sleep = self._sleep
                    if sleep is not None and deadline < sleep.deadline:
                        sleep.deadline = deadline
                    return
                exchange.result = _failure(OSError(code, os.strerror(code)), 0.0, timeout)
        except OSError as exc:
            exchange.result = _failure(exc, 0.0, timeout)
        except Exception as exc:  # a probe can only fail: see contain.py
            exchange.result = contained(exc, target.check, target.address, target.port, started, self._bugs)  # fmt: skip
        self._close(exchange)
        self._known.append(exchange)
        if self._sleep is not None:
            self._sleep.deadline = -math.inf

    async def watch(self) -> None:
        """Deliver verdicts until cancelled: each round handles what the
        kernel reports (in batches, a checkpoint between them), then the
        sockets to read again, then fails the exchanges whose deadline
        passed, then begins at most `batch` of those asked for meanwhile
        (as `Connects.watch` does, so that under overload probes start late
        instead of their answers waiting, unread, past their timeouts)."""
        pending, epoll, deadlines, batch = self._pending, self._epoll, self._deadlines, self._batch
        deferred = self._deferred
        try:
            while True:
                while self._known:
                    known, self._known = self._known, []
                    for exchange in known:
                        assert exchange.result is not None
                        self._deliver(exchange, exchange.result)
                while deadlines and deadlines[0][2].sock is None:
                    heapq.heappop(deadlines)  # that probe is over
                if self._known or deferred or self._again:
                    wake_at = -math.inf
                else:
                    wake_at = deadlines[0][0] if deadlines else math.inf
                if pending and trio.current_time() < self._next_read:
                    await trio.sleep_until(self._next_read)
                else:
                    with trio.move_on_at(wake_at) as self._sleep:
                        await trio.lowlevel.wait_readable(epoll)
                    self._sleep = None
                    if trio.current_time() < self._next_read:
                        await trio.sleep_until(self._next_read)
                if self._tick > 0:
                    self._next_read = (trio.current_time() // self._tick + 1) * self._tick
                self._reading = True
                again, self._again = self._again, []
                while True:
                    events = epoll.poll(0, batch)
                    now = trio.current_time()
                    for fd, flags in events:
                        ready = pending.get(fd)
                        if ready is not None:
                            self._handle(ready, flags, now)
                    if len(events) < batch:
                        break
                    await trio.lowlevel.checkpoint()
                now = trio.current_time()
                for exchange in again:
                    if exchange.sock is not None:
                        self._handle(exchange, select.EPOLLIN, now)
                expired = 0
                while deadlines and deadlines[0][0] <= now and expired < batch:
                    exchange = heapq.heappop(deadlines)[2]
                    if exchange.sock is not None:
                        expired += 1
                        self._forget(exchange)
                        timeout = exchange.target.check.timing.timeout
                        self._deliver(exchange, _failure(trio.TooSlowError(), now - exchange.started, timeout))  # fmt: skip
                self._reading = False
                for _ in range(min(batch, len(deferred))):
                    exchange = deferred.popleft()
                    if exchange.done is not None:
                        self._begin(exchange)
        finally:
            self._closed = True
            self._sleep = None
            self._reading = False
            for exchange in list(pending.values()):
                exchange.done = None
                self._forget(exchange)
            self._known.clear()
            self._again.clear()
            deferred.clear()
            epoll.close()

    def _handle(self, exchange: _Exchange, flags: int, now: float) -> None:
        """Advance one exchange by what epoll reported; deliver its verdict
        when it has one."""
        target, sock = exchange.target, exchange.sock
        assert sock is not None
        try:
            result = self._advance(exchange, flags, now)
        except Exception as exc:  # a probe can only fail: see contain.py
            result = contained(exc, target.check, target.address, target.port, exchange.started, self._bugs)  # fmt: skip
        if result is not None:
            # Closed without EPOLL_CTL_DEL: close(2) takes the socket out of
            # the set. Were its file kept open a moment longer by a fork
            # (an exec check's), an event of the old socket could reach the
            # one that reuses its number: harmless, as every event is only
            # a cue to try the socket, which answers EAGAIN when not ready.
            del self._pending[sock.fileno()]
            self._close(exchange)
            self._deliver(exchange, result)

    def _advance(self, exchange: _Exchange, flags: int, now: float) -> ProbeResult | None:
        sock, conn = exchange.sock, exchange.conn
        assert sock is not None and conn is not None
        timeout = exchange.target.check.timing.timeout
        try:
            if exchange.out:  # connecting, or the request not all sent
                if flags & _FAILED:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, os.strerror(code))
                try:
                    exchange.out = exchange.out[sock.send(exchange.out) :]
                except BlockingIOError:
                    return None
                if exchange.out:
                    return None
            if not flags & _READABLE:
                return None
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                return None
            if len(data) == READ_SIZE or (data and flags & _CLOSED):
                # More may wait (data, or the end of the stream after the
                # data just read), and no new edge would say so.
                self._again.append(exchange)
            receive(conn, data)
            response = next_response(conn)
        except OSError as exc:
            return _failure(exc, now - exchange.started, timeout)
        except h11.RemoteProtocolError as e:
            return ProbeResult.failure(Reason.BAD_REPLY, now - exchange.started, str(e) or DISCONNECTED)  # fmt: skip
        if response is None:
            return None
        failure = head_failure(exchange.target.check, response)
        if failure is not None:
            return ProbeResult.failure(failure[0], now - exchange.started, failure[1])
        return ProbeResult.success(now - exchange.started, detail=f"status {response.status_code}")

    def _deliver(self, exchange: _Exchange, result: ProbeResult) -> None:
        done, exchange.done = exchange.done, None
        if done is not None:
            done(result)

    def _forget(self, exchange: _Exchange) -> None:
        sock = exchange.sock
        if sock is None:
            return
        fd = sock.fileno()
        if self._pending.get(fd) is exchange:
            del self._pending[fd]
            self._epoll.unregister(fd)
        self._close(exchange)

    def _close(self, exchange: _Exchange) -> None:
        if exchange.sock is not None:
            exchange.sock.close()
            exchange.sock = None
        exchange.conn = None


def _failure(exc: BaseException, latency: float, timeout: float) -> ProbeResult:
    reason, detail = translate(exc, timeout)
    return ProbeResult.failure(reason, latency, detail)


_EXCHANGES: trio.lowlevel.RunVar[Exchanges] = trio.lowlevel.RunVar("director_http_exchanges")


def _exchanges() -> Exchanges:
    """The run's own `Exchanges` for `exchange_once`, watched by a system task."""
    try:
        return _EXCHANGES.get()
    except LookupError:
        exchanges = Exchanges()
        _EXCHANGES.set(exchanges)
        trio.lowlevel.spawn_system_task(exchanges.watch)
        return exchanges
