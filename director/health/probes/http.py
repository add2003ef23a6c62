"""HTTP(S) check: the server is up when it answers with an expected status
(and, when asked, a body matching a regex).

One exchange per probe, on a connection of its own (`Connection: close`),
spoken by h11 (httpx's HTTP/1.1 engine) straight over a non-blocking socket:
a literal address needs no name resolution and one address no happy-eyeballs
race, and a health check needs no client, pool or proxy logic. The request
and the judging of the response's head are http_head.py's. A plain-HTTP
check without `expect_body` is judged on the head alone and runs without a
task of its own, in http_exchange.py's `Exchanges` (one epoll set; the
checker starts those probes there itself); `probe_http` sends such a check
there too. The others (HTTPS, `expect_body`) run here, in the caller's
task, over a stream. HTTPS runs
through `trio.SSLStream`; the contexts and the last TLS session of each
(settings, address, port, server name) are shared through `TlsContexts`, so
that a server that allows it resumes the session instead of a full handshake.
Building a context (loading the trust store: tens of milliseconds) happens in
a worker thread before the probe's clock starts, never inside a probe's time.

What a server sends is bounded before anything decodes it. The probe asks for
`Accept-Encoding: identity` and never decompresses: the body is read raw
(a lying `Content-Encoding` or a decompression bomb is just bytes), at most
MAX_BODY of it, and only when `expect_body` needs it. h11 buffers the header
section and refuses one that stays incomplete past MAX_INCOMPLETE_EVENT
(httpcore's limit, 100 KiB) plus at most one READ_SIZE read; a complete header
section above MAX_HEADER is a bad reply. Whatever trickles is cut by the
probe's timeout. Redirects are not followed: a 3xx is a status like any other.

A verdict on a reply (up, a bad status, body or reply) reports the server's
time, not the daemon's: the TCP handshake as the kernel timed it, then each
round trip of the exchange (TLS handshake included) from its first send to
the arrival in the kernel of the last data read for it (tcp.py's `arrival`:
to within two ticks of the kernel's clock when the daemon read it late),
as `TimedConnection` keeps it. The daemon's lag before a send or a read, its
TLS computations and a body's search are not in it. Other failures count
the time to their verdict, at most the timeout; a timeout, its timeout.

The timeout is the server's time too, counted as the latency is, on trio's
clock: the connect gets `timeout` from the start; once connected, the
server's time so far is the handshake, the rounds it answered, and the wait
since the first send of the round open (each wait of `TimedConnection` runs
under that round's deadline: its first send + timeout - the time the server
already had). The daemon's lag before a send (a TLS handshake or a request
sent late by a busy loop) is not counted, and a reply already in the kernel
when a deadline passes is read before anything is judged: an answer that
came in time is up, one that came after its deadline a timeout (tcp.py's
`answered`). A silent server
times out when its own time reaches the timeout (the handshake, the rounds
it answered, then the wait since the open round's first send): whatever the
daemon's lag, it gets its whole timeout, and no more.
The probe's waits on the network are bounded all the same, by LIMIT x
timeout from its start (every wait's deadline is at most that; an
`expect_body` search after them has a bound of its own): the connect's wait is at most
one timeout (the network's), the server's time at most another, and the
rest is the daemon's lag before its sends; a daemon late by more than a
whole timeout in all fails the probe ("... the rest was the daemon's lag")
rather than hold it, and the next one, without end. A timeout's detail
says what timed out (attempt.py's `timed_out`): the connect, the TLS
handshake, the answer, a head or a body still coming.

`expect_body` is searched by the `regex` module (the syntax of `re`) in a
worker thread that does not hold the GIL while it matches, with the check's
timeout as the search's own, from its start (the daemon's work, whatever the
server took: patterns.py): a pattern that backtracks catastrophically on a
hostile body fails its probe with a timeout and blocks neither the event
loop nor other probes. Such a search keeps its thread (one of at most
SEARCH_THREADS) until `regex` gives up, which it does some time after that
timeout (measured: up to 3x later).
"""

from __future__ import annotations

import email.message
import socket
import ssl
from collections.abc import Iterable
from dataclasses import replace
from functools import partial

import h11
import regex  # type: ignore[import-untyped]  # no stubs in the venv; the calls below are few
import trio

from director.health.probes import patterns
from director.health.probes.attempt import (
    ANSWER,
    BODY,
    CONNECT,
    HEAD,
    TLS,
    Attempt,
    probe_attempt,
    timed_out,
)
from director.health.probes.http_exchange import exchange_once, http_destination
from director.health.probes.http_head import (
    MAX_HEADER,
    READ_SIZE,
    Connection,
    head_failure,
    new_connection,
    next_response,
    receive,
    refusal,
    request,
    request_for,
    url_for,
)
from director.health.probes.stream import LIMIT, Silent, TimedConnection, connect, silence
from director.health.probes.tcp import answered
from director.health.probes.tls import TlsContexts, TlsSettings, TlsSetupError
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck, host_problem
from director.ipvs.model import IPAddress

MAX_BODY = 1 << 20  # bytes of raw body searched for expect_body
# Verdicts on a reply, whose latency is the server's time (`TimedConnection.served`).
_ANSWERED = frozenset({Reason.OK, Reason.BAD_STATUS, Reason.BAD_BODY, Reason.BAD_REPLY})
SEARCH_THREADS = patterns.SEARCH_THREADS  # expect_body searches at once, per trio run

__all__ = [
    "MAX_BODY",
    "MAX_HEADER",
    "TlsContexts",
    "decode_body",
    "probe_http",
    "request_for",
    "url_for",
]


async def probe_http(
    check: HttpCheck, address: IPAddress, port: int, tls: TlsContexts | None = None
) -> ProbeResult:
    """One HTTP(S) exchange with `address`:`port` (the check's own address and
    port when set). Never raises for anything the server or the network does:
    see attempt.py for the reasons; a reply h11 refuses is BAD_REPLY."""
    target = http_destination(check, address, port)
    if target is not None:
        return await exchange_once(target)
    address = check.address or address
    port = check.port if check.port is not None else port
    if check.host is not None:
        problem = host_problem(check.host)
        if problem is not None:
            return ProbeResult.failure(Reason.ERROR, 0.0, f"host {check.host!r}: {problem}")
    try:
        built = request(check, address, port)
    except h11.LocalProtocolError as e:
        return ProbeResult.failure(Reason.ERROR, 0.0, f"request: {e}")
    context: ssl.SSLContext | None = None
    if check.tls:
        tls = tls or TlsContexts()
        try:
            context = await tls.prepare(TlsSettings.of(check))  # off the probe's clock
        except TlsSetupError as e:
            return ProbeResult.failure(Reason.ERROR, 0.0, f"tls: {e}")
    exchange = _Exchange(check, address, port, built, context, tls)
    timeout = check.timing.timeout
    try:
        with probe_attempt(timeout, deadline=False) as attempt:  # the waits have theirs
            await exchange.run(attempt)
        # (before the close: a close_notify is a send, and opens a round)
        served = exchange.connection.served() if exchange.connection is not None else None
    finally:
        await exchange.close(attempt.started + LIMIT * timeout)
    result = attempt.result
    if served is not None and result.ok:
        result = answered(served, timeout, result.detail)
    elif served is not None and result.reason in _ANSWERED:
        result = replace(result, latency=served)
    elif result.latency > timeout or result.reason is Reason.TIMEOUT:
        # A timeout's latency is its timeout; a failure read late: the rest was the daemon's.
        result = replace(result, latency=timeout)
    return result


class _Exchange:
    """One request and its answer, judged into an Attempt; the connection
    stays open until `close`, outside the probe's time."""

    def __init__(
        self,
        check: HttpCheck,
        address: IPAddress,
        port: int,
        request: h11.Request,
        context: ssl.SSLContext | None,
        tls: TlsContexts | None,
    ) -> None:
        self.check, self.address, self.port = check, address, port
        self.request, self.context, self.tls = request, context, tls
        self.server_name = check.host.removesuffix(".") if check.host else str(address)
        self.connection: TimedConnection | None = None
        self.conn: Connection | None = None  # h11's side, once the request goes
        self.stream: trio.abc.Stream | None = None  # the connection, or TLS over it
        self.answered = False  # a whole response head came back
        self.step = CONNECT  # what the exchange waits for (attempt.py's steps)
        self.status: int | None = None  # the answer's, once its head came

    async def run(self, attempt: Attempt) -> None:
        timeout = attempt.timeout
        try:
            self.stream = self.connection = await connect(self.address, self.port, attempt)
            if self.context is not None:
                # The client's Finished and the request are two writes: with
                # Nagle, the request waits for the ACK of the first, which a
                # server that sends no session ticket delays (40 ms on Linux).
                self.connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.step = TLS
                self.stream = secure = self._secure(self.connection, self.context)
                await secure.do_handshake()
            await self._converse(self.stream, attempt)
        except h11.RemoteProtocolError as e:
            attempt.fail(Reason.BAD_REPLY, refusal(self.conn, e))
        except Silent as silent:
            attempt.fail(Reason.TIMEOUT, self._silence(silent, timeout))

    def _silence(self, silent: Silent, timeout: float) -> str:
        """What timed out, for a timeout's detail."""
        handshake = self.connection.handshake if self.connection is not None else 0.0
        return silence(silent, timed_out(self.step, timeout, handshake, self.status), timeout)

    async def close(self, deadline: float) -> None:
        """Close the connection; after a TLS exchange that was answered, keep
        its session and send a close_notify first, by `deadline` (a server
        then sees a clean end; and OpenSSL marks the session of a connection
        freed without one not resumable, which matters wherever Python does
        not copy the session it hands out)."""
        if self.connection is None:
            return
        try:
            if isinstance(self.stream, trio.SSLStream) and self.answered:
                self._keep_session(self.stream)
                with trio.move_on_at(deadline):
                    await self.stream.aclose()
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            self.connection.close()

    def _secure(
        self, stream: trio.abc.Stream, context: ssl.SSLContext
    ) -> trio.SSLStream[trio.abc.Stream]:
        # Python's ssl sends no SNI for an IP literal; it then checks the
        # certificate's IP addresses instead of its names.
        secure = trio.SSLStream(stream, context, server_hostname=self.server_name)
        assert self.tls is not None
        session = self.tls.session(context, self.address, self.port, self.server_name)
        if session is not None:
            secure.session = session
        return secure

    def _keep_session(self, stream: trio.SSLStream[trio.abc.Stream]) -> None:
        # CPython copies a session through its DER form both ways (getting
        # and setting it: about 300 us of the host's CPU each, the peer's
        # certificate parsed again), so one that resumed is kept as it is: a
        # server that no longer takes it gets a full handshake, and then a
        # new session is kept.
        assert self.tls is not None and self.context is not None
        if stream.session_reused:
            return
        session = stream.session
        if isinstance(session, ssl.SSLSession):
            self.tls.keep_session(self.context, self.address, self.port, self.server_name, session)  # fmt: skip

    async def _converse(self, stream: trio.abc.Stream, attempt: Attempt) -> None:
        check = self.check
        conn = self.conn = new_connection()
        self.step = ANSWER
        assert self.connection is not None
        self.connection.next_round()
        await stream.send_all(conn.send(self.request) + (conn.send(h11.EndOfMessage()) or b""))
        response = await self._response(conn, stream)
        self.answered = True
        status = self.status = response.status_code
        failure = head_failure(check, response)
        if failure is not None:
            attempt.fail(*failure)
        elif check.expect_body is None:
            attempt.succeed(detail=f"status {status}")
        else:
            self.step = BODY
            body = await read_raw_body(conn, stream, MAX_BODY)
            charset = charset_of(response.headers)
            # The search is the daemon's work, with a time of its own (patterns.py).
            search = partial(body_matches, check.expect_body, body, charset)
            try:
                matched = await patterns.in_time(search, attempt.timeout)
            except regex.error as e:
                attempt.fail(Reason.ERROR, f"expect_body {check.expect_body!r}: {e}")
                return
            if matched is None:
                detail = f"expect_body {check.expect_body!r} still searching the body"
                attempt.fail(Reason.TIMEOUT, f"no verdict within {attempt.timeout:g} s: {detail}")
            elif matched:
                attempt.succeed(detail=f"status {status}")
            else:
                detail = f"status {status}, body does not match {check.expect_body!r}"
                attempt.fail(Reason.BAD_BODY, detail)

    async def _response(self, conn: Connection, stream: trio.abc.Stream) -> h11.Response:
        """The final response (http_head.next_response); raises
        h11.RemoteProtocolError."""
        while True:
            response = next_response(conn)
            if response is not None:
                return response
            data = bytes(await stream.receive_some(READ_SIZE))
            if data:
                self.step = HEAD
            receive(conn, data)


async def _next_event(conn: Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        receive(conn, bytes(await stream.receive_some(READ_SIZE)))


async def read_raw_body(conn: Connection, stream: trio.abc.Stream, limit: int) -> bytes:
    """At most `limit` bytes of the body as sent, after the transfer coding
    (chunks) but with no content decoding; the rest is never read. Raises
    h11.RemoteProtocolError for a body that ends early or is badly framed."""
    body = bytearray()
    while len(body) < limit:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            body += event.data[: limit - len(body)]
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            break
    return bytes(body)


def charset_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The charset parameter of Content-Type, as httpx reads it (the email
    package's parser), or None."""
    for name, value in headers:
        if name == b"content-type":
            message = email.message.Message()
            message["content-type"] = value.decode("latin-1")
            charset = message.get_content_charset(failobj=None)
            return charset if isinstance(charset, str) else None
    return None


def decode_body(body: bytes, charset: str | None) -> str:
    """The body as text in its charset, or UTF-8 when the charset is absent or
    not a text codec ("rot13", "idna" refuses 'replace'); undecodable bytes
    become U+FFFD."""
    if charset is not None:
        try:
            return body.decode(charset, "replace")
        except (LookupError, ValueError, TypeError):
            pass
    return body.decode("utf-8", "replace")


def body_matches(pattern: str, body: bytes, charset: str | None, seconds: float) -> bool:
    """Whether `pattern` is found in the decoded body, giving up with
    patterns.StillSearching after `seconds`. Raises regex.error for a bad
    pattern."""
    return patterns.search_now(pattern, decode_body(body, charset), seconds)
