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
unreachable, reset; a timeout says what timed out: "no connection within
T s", "connected in 1.2 ms; no answer within T s of the request", or "...;
the head incomplete within T s of the request"), BAD_REPLY for a reply h11
refuses or a close before a whole head, in http_head.refusal's words (h11's
message with the line it quotes as text, 'not an HTTP response: the first
bytes were "ok\\n"', httpcore's "Server disconnected without sending a
response." for a close before any byte), and the head's own verdict. The
body is never read: the socket is closed as soon as the head is judged.

A verdict on a reply reports the server's time, not the daemon's: the TCP
handshake as the kernel timed it (tcp.py's `handshake_time`), plus the time
from the request's send to the reply's arrival in the kernel (tcp.py's
`arrival`: exact when the daemon read it within a tick of the kernel's
clock, else to within two ticks, never less than the server took). A busy
daemon's lag between the connect and the send, or the arrival and the read,
is not in it; a reply that came after the deadline, read after it, is a
timeout as it would be read in time (tcp.py's `answered`: "answered in
1.3 s, past the 1 s timeout (status 200)"). A failure the kernel reports
(refused, reset) counts the time to its read, at most the timeout; a
timeout, its timeout.

Whatever the server sends costs it, not the checker: at most one READ_SIZE
read per socket per round of `watch` (a socket whose read filled the buffer
is read again next round rather than drained now), h11 refuses a head that
stays incomplete past MAX_INCOMPLETE_EVENT, and every probe ends at its
deadline, whatever trickles in.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address
from time import perf_counter

import h11
import trio

from director.health.probes.attempt import ANSWER, CONNECT, HEAD, timed_out
from director.health.probes.contain import contained
from director.health.probes.http_head import (
    READ_SIZE,
    Connection,
    head_failure,
    new_connection,
    next_response,
    receive,
    refusal,
    request,
)
from director.health.probes.tcp import answered, arrival, handshake_time
from director.health.probes.watch import (
    Probe,
    ProbeDone,
    Watcher,
    awaited,
    network_failure,
    run_watcher,
)
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
    the socket module's address, the request (None when `problem`, the
    detail of an ERROR known before any I/O: a bad host or request) and
    `wire`, its bytes as h11 writes them (every probe sends those; h11
    keeps no state of a probe that gets no answer)."""

    check: HttpCheck
    address: IPAddress
    port: int
    family: int
    sockaddr: tuple[str, int]
    request: h11.Request | None
    problem: str = ""
    wire: bytes = b""


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
        # No EndOfMessage: the request has no body (its framing is
        # Content-Length: 0, whose end h11 writes as b"").
        wire = new_connection().send(built) or b""
    except h11.LocalProtocolError as e:
        return HttpDestination(check, address, port, family, sockaddr, None, f"request: {e}")
    except Exception:
        return None
    return HttpDestination(check, address, port, family, sockaddr, built, wire=wire)


async def exchange_once(target: HttpDestination) -> ProbeResult:
    """One probe, awaited, through the run's own `Exchanges` (a system
    task watches it). Cancellation passes through (the socket is closed)."""
    watcher: Exchanges = run_watcher(_EXCHANGES, Exchanges)
    return await awaited(watcher, target)


@dataclass(eq=False, slots=True)
class _Exchange(Probe[HttpDestination]):
    """One probe in flight (watch.py's `Probe`); `out` is the part of the
    request not sent yet (empty once it all went); `conn`, h11's side of
    the exchange, once the first bytes of an answer (or its end) came;
    `handshake`, the connect's time as the kernel timed it, and `sent`, the
    request's first send (time.perf_counter), once connected."""

    conn: Connection | None = None
    out: bytes = b""
    handshake: float = 0.0
    sent: float = 0.0
    sent_at: float = -1.0  # the request's first send, on trio's clock (the deadlines')


class Exchanges(Watcher[HttpDestination, _Exchange]):
    """HTTP exchanges in one epoll set, their deadlines in one heap, and
    `watch`, which delivers each probe's verdict to its callback (watch.py's
    `Watcher`)."""

    _what = "HTTP probes'"

    def __init__(self, batch: int = 512, tick: float = 0.0) -> None:
        """`batch`: events handled between two checkpoints of `watch`.
        `tick` > 0 (seconds): as for tcp.py's `Connects` (watch.py's
        `Watcher._wait`): a lone probe's two waits (connect, answer) are
        read as their events come, and a busy watcher reads about once a
        tick."""
        super().__init__(batch, tick)

    def _new(self, target: HttpDestination, done: ProbeDone) -> _Exchange:
        return _Exchange(target, 0.0, done)

    def _open(self, probe: _Exchange) -> int | ProbeResult:
        target = probe.target
        if target.request is None:
            return ProbeResult.failure(Reason.ERROR, 0.0, target.problem)
        probe.out = target.wire
        # The C type itself, as tcp.py's Connects: socket.socket's Python
        # __init__ and close() were about 5 % of an HTTP probe in the VM.
        sock = probe.sock = _socket.socket(target.family, _FLAGS)
        code = sock.connect_ex(target.sockaddr)
        if code == 0 or code in _PENDING:
            # Registered when already connected too: an edge-triggered
            # set reports the state a socket is in when it is added.
            return _EVENTS
        return network_failure(OSError(code, os.strerror(code)), 0.0, target.check.timing.timeout)

    def _handle(self, probe: _Exchange, flags: int, now: float) -> None:
        """Advance one exchange by what epoll reported; deliver its verdict
        when it has one."""
        target = probe.target
        try:
            result = self._advance(probe, flags, now)
        except Exception as exc:  # a probe can only fail: see contain.py
            result = contained(exc, target.check, target.address, target.port, probe.started, self._bugs)  # fmt: skip
        if result is not None:
            self._finish(probe, result)

    def _advance(self, exchange: _Exchange, flags: int, now: float) -> ProbeResult | None:
        sock = exchange.sock
        assert sock is not None
        timeout = exchange.target.check.timing.timeout
        data = b""
        try:
            out = exchange.out
            if out:  # connecting, or the request not all sent
                if flags & _FAILED:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(code, os.strerror(code))
                if out is exchange.target.wire:  # connected: the first send
                    # (the clock now, not the round's: see tcp.Connects._handle)
                    exchange.handshake = handshake_time(sock, self._now() - exchange.started)
                    exchange.sent = perf_counter()
                    exchange.sent_at = now
                try:
                    exchange.out = out[sock.send(out) :]
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
            conn = exchange.conn
            if conn is None:
                # h11's state of an exchange whose request went (the bytes
                # sent are `wire`, what this send writes again); it reads
                # the response whatever our side's state (no EndOfMessage).
                request = exchange.target.request
                assert request is not None  # (else _open gave the verdict)
                conn = exchange.conn = new_connection()
                conn.send(request)
            receive(conn, data)
            response = next_response(conn)
            if response is None and (len(data) == READ_SIZE or (data and flags & _CLOSED)):
                # More may wait (data, or the end of the stream after the
                # data just read), and no new edge would say so. (Not once
                # judged: a round for a closed socket is a wake-up for
                # nothing, a tick later when the tick's rounds are spent.)
                self._again.append(exchange)
        except OSError as exc:
            return network_failure(exc, min(now - exchange.started, timeout), timeout)
        except h11.RemoteProtocolError as e:
            latency = _served(exchange, sock) if data else min(now - exchange.started, timeout)
            return ProbeResult.failure(Reason.BAD_REPLY, latency, refusal(exchange.conn, e))
        if response is None:
            return None
        failure = head_failure(exchange.target.check, response)
        if failure is not None:
            return ProbeResult.failure(failure[0], _served(exchange, sock), failure[1])
        return answered(_served(exchange, sock), timeout, f"status {response.status_code}")

    def _left(self, probe: _Exchange, now: float) -> float:
        """The timeout is the server's time, as the latency is: the
        handshake and the wait since the request went, not the daemon's lag
        between the connect and the send. A busy daemon that sent the
        request only as the deadline came gives the server the rest."""
        if probe.sent_at < 0:  # not connected after a full read: the network's time
            return 0.0
        served = probe.handshake + (now - probe.sent_at)
        return probe.target.check.timing.timeout - served

    def _silence(self, probe: _Exchange, timeout: float) -> str:
        if probe.sent_at < 0:
            return timed_out(CONNECT, timeout)
        # Bytes of an answer came (h11 has them) or none did.
        return timed_out(ANSWER if probe.conn is None else HEAD, timeout, probe.handshake)

    def _close(self, probe: _Exchange) -> None:
        super()._close(probe)
        probe.conn = None


def _served(exchange: _Exchange, sock: _socket.socket) -> float:
    """The server's time for the reply just read: the handshake as the
    kernel timed it, then the request's send to the reply's arrival in the
    kernel (tcp.py's `arrival`), not to the daemon's read of it."""
    return exchange.handshake + max(arrival(sock, perf_counter()) - exchange.sent, 0.0)


_EXCHANGES: trio.lowlevel.RunVar[Exchanges] = trio.lowlevel.RunVar("director_http_exchanges")
