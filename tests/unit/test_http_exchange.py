"""Plain HTTP probes without a task each (http_exchange.py), as the checker
runs them: every hostile reply from a raw server on loopback, in this trio
run, gets its verdict while a healthy neighbour is probed on time by the
same checker, through the same epoll set."""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing
from tcp_support import syn_dropping_port

from director.engine import CHECK_TICK
from director.health.checker import Checker
from director.health.probes import http_exchange
from director.health.probes.http import probe_http
from director.health.probes.http_exchange import Exchanges, http_destination
from director.health.probes.http_head import (
    DISCONNECTED,
    MAX_HEADER,
    MAX_INCOMPLETE_EVENT,
    MAX_INTERIM,
)
from director.health.result import ProbeResult, Reason
from director.health.spec import HttpCheck, StatusRange, Timing
from director.health.state import HealthState

HERE = IPv4Address("127.0.0.1")
TICK = CHECK_TICK  # the daemon's
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Behaviour = Callable[[trio.SocketStream], Awaitable[None]]
Serve = Callable[[Behaviour], Awaitable[int]]


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Serve:
    """A raw server on loopback: reads the request, then `behaviour`."""

    async def start(behaviour: Behaviour) -> int:
        listeners = await trio.open_tcp_listeners(0, host=str(HERE))

        async def handler(stream: trio.SocketStream) -> None:
            try:
                await stream.receive_some(65536)
                await behaviour(stream)
            except trio.BrokenResourceError:
                pass
            finally:
                await trio.aclose_forcefully(stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    return start


async def healthy(stream: trio.SocketStream) -> None:
    await stream.send_all(OK)


async def run_checker(
    checks: dict[str, tuple[HttpCheck, int]], seconds: float, times: list[float] | None = None
) -> dict[str, list[ProbeResult]]:
    """The results of each key over `seconds` of a Checker with the real
    probes and the daemon's tick; in `times`, when each probe started and
    when each verdict came, in order (trio's clock)."""
    results: dict[str, list[ProbeResult]] = {key: [] for key in checks}

    def on_result(key: str, before: HealthState, after: HealthState) -> None:
        assert after.last is not None
        results[key].append(after.last)
        if times is not None:
            times.append(trio.current_time())

    def on_start(target: object, lateness: float) -> None:
        assert times is not None
        times.append(trio.current_time())

    checker: Checker[str] = Checker(
        on_result=on_result,
        on_start=None if times is None else on_start,
        rng=random.Random(1),
        tick=TICK,
    )
    checker.set_targets({key: (check, HERE, port) for key, (check, port) in checks.items()})
    async with trio.open_nursery() as nursery:
        await nursery.start(checker.run)
        await trio.sleep(seconds)
        assert checker._exchanges is not None  # the plain checks went through the epoll set
        nursery.cancel_scope.cancel()
    return results


async def verdict_beside_a_healthy_neighbour(
    serve: Serve, behaviour: Behaviour, check: HttpCheck
) -> ProbeResult:
    """The hostile target's first verdict; the neighbour, probed every
    second, must have passed every probe meanwhile (at least 4)."""
    bad, good = await serve(behaviour), await serve(healthy)
    neighbour = HttpCheck(timing=Timing(interval=1.0, timeout=1.0))
    results = await run_checker({"bad": (check, bad), "good": (neighbour, good)}, 5.5)
    assert len(results["good"]) >= 4
    assert all(r.ok and r.detail == "status 200" for r in results["good"])
    assert results["bad"]
    return results["bad"][0]


EVERY_10_S = Timing(interval=10.0, timeout=3.0)
HOLD = 0.05  # more than two ticks of the kernel's clock (tcp.TICK: 10 ms at most)


async def test_a_healthy_server_is_up_with_its_status(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    port = await serve(healthy)
    results = await run_checker({"a": (HttpCheck(timing=Timing(interval=1.0)), port)}, 3.5)
    assert len(results["a"]) in (3, 4)  # the first at random within the interval
    assert {r.detail for r in results["a"]} == {"status 200"}
    assert all(r.ok and r.latency <= 2 * TICK for r in results["a"])


async def test_an_unexpected_status_is_bad_status(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def unavailable(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")

    result = await verdict_beside_a_healthy_neighbour(serve, unavailable, HttpCheck(timing=EVERY_10_S))  # fmt: skip
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_STATUS, "status 503")
    check = HttpCheck(timing=EVERY_10_S, expect_status=(StatusRange(503, 503),))
    result = await verdict_beside_a_healthy_neighbour(serve, unavailable, check)
    assert (result.ok, result.detail) == (True, "status 503")


async def test_garbage_is_a_bad_reply_that_quotes_it(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x16\x03\x01garbage \xff\xfe\r\n\r\n")

    result = await verdict_beside_a_healthy_neighbour(serve, garbage, HttpCheck(timing=EVERY_10_S))
    detail = r'not an HTTP response: the first bytes were "\u0016\u0003\u0001garbage \u00ff\u00fe\r\n\r\n"'
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


@pytest.mark.parametrize(
    ("sent", "closed", "detail"),
    [
        (b"ok\n", True, r'not an HTTP response: the first bytes were "ok\n"'),
        (b"\x00\x01\x02", True, r'not an HTTP response: the first bytes were "\u0000\u0001\u0002"'),
        (b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n", True, 'not an HTTP response: the first bytes were "SSH-2.0-OpenSSH_9.2p1 Debian-2+d"...'),
        (b"H", True, "the head incomplete: the server closed after 1 byte"),
        # And one that waits: told at once, not at the timeout.
        (b"SSH-2.0-OpenSSH_9.2p1\r\n", False, 'not an HTTP response: the first bytes were "SSH-2.0-OpenSSH_9.2p1\\r\\n"'),
        (b"ok", False, 'not an HTTP response: the first bytes were "ok"'),
        (b"HTTP/1.1 2OO OK\r\n\r\n", False, 'illegal status line: "HTTP/1.1 2OO OK"'),
        (b"HTTP/1.1 200 OK\r\n\x00\x01: \xff\r\n\r\n", False, r'illegal header line: "\u0000\u0001: \u00ff"'),
        (b"HTTP/1.1 200 OK\r\nX-" + b"a" * 40 + b"\r\n\r\n", False, 'illegal header line: "X-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"...'),
        (b"HTTP/1.1 100 Continue\r\n\r\n\x15\x03\x03", False, r'illegal status line: "\u0015\u0003\u0003"'),
    ],
    ids=["ok", "control", "ssh", "H", "ssh-waits", "ok-waits", "status-line", "header-line", "long-header-line", "after-interim"],
)  # fmt: skip
async def test_a_reply_h11_refuses_is_named_in_words(
    serve: Serve, autojump_clock: trio.testing.MockClock, sent: bytes, closed: bool, detail: str
) -> None:
    """Bytes that are not HTTP then a close: what the server sent, not
    httpcore's "Server disconnected without sending a response." (a crash's
    words). A line h11 refuses: as text, where h11 says "illegal status
    line: bytearray(b'HTTP/1.1 2OO OK')", or "illegal request line" for a
    response's line that starts below "!"."""

    async def reply(stream: trio.SocketStream) -> None:
        await stream.send_all(sent)
        if not closed:
            await trio.sleep_forever()

    result = await verdict_beside_a_healthy_neighbour(serve, reply, HttpCheck(timing=EVERY_10_S))
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


def handshake_of_1_2_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every connect's handshake, as the kernel timed it, 1.2 ms: a figure
    a detail can be held to (loopback's is some µs, and varies)."""
    monkeypatch.setattr(http_exchange, "handshake_time", lambda sock, elapsed: 0.0012)


async def test_a_slow_drip_of_the_head_times_out(serve: Serve, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    handshake_of_1_2_ms(monkeypatch)

    async def drip(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while True:
            await trio.sleep(0.5)
            await stream.send_all(b"a")

    result = await verdict_beside_a_healthy_neighbour(serve, drip, HttpCheck(timing=EVERY_10_S))
    assert (result.ok, result.reason, result.detail) == (False, Reason.TIMEOUT, "connected in 1.2 ms; the head incomplete within 3 s of the request")  # fmt: skip
    assert result.latency == pytest.approx(3.0, abs=2 * TICK)


async def test_a_huge_header_line_is_refused_by_h11(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    # 1 MiB without an end of line: read 64 KiB a round, and h11 gives up
    # past its 100 KiB limit on an incomplete event.
    async def huge(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20))
        await trio.sleep_forever()

    result = await verdict_beside_a_healthy_neighbour(serve, huge, HttpCheck(timing=EVERY_10_S))
    detail = f"no end of the head within {MAX_INCOMPLETE_EVENT} bytes"  # not h11's "Receive buffer too long"
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


async def test_a_complete_header_section_over_the_limit_is_a_bad_reply(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def big(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n")

    result = await verdict_beside_a_healthy_neighbour(serve, big, HttpCheck(timing=EVERY_10_S))
    assert (result.ok, result.reason) == (False, Reason.BAD_REPLY)
    assert result.detail == f"status 200, {(64 << 10) + 5 + 4} bytes of header fields (limit {MAX_HEADER})"  # fmt: skip


async def test_a_reset_is_an_error_with_its_errno(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def reset(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()

    result = await verdict_beside_a_healthy_neighbour(serve, reset, HttpCheck(timing=EVERY_10_S))
    assert (result.ok, result.reason, result.detail) == (False, Reason.ERROR, "ECONNRESET: Connection reset by peer")  # fmt: skip


async def test_a_close_in_the_middle_of_the_head_is_a_bad_reply(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def half(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-")

    result = await verdict_beside_a_healthy_neighbour(serve, half, HttpCheck(timing=EVERY_10_S))
    detail = "the head incomplete: the server closed after 25 bytes"
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


async def test_a_close_before_any_reply_is_a_bad_reply(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def hang_up(stream: trio.SocketStream) -> None:
        pass

    result = await verdict_beside_a_healthy_neighbour(serve, hang_up, HttpCheck(timing=EVERY_10_S))
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, DISCONNECTED)


async def test_a_flood_of_interim_responses_is_a_bad_reply(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    # Complete 1xx events never reach h11's limit on an incomplete event.
    async def flood(stream: trio.SocketStream) -> None:
        interim = b"HTTP/1.1 100 Continue\r\n\r\n" * 2000
        while True:
            await stream.send_all(interim)

    result = await verdict_beside_a_healthy_neighbour(serve, flood, HttpCheck(timing=EVERY_10_S))
    detail = f"more than {MAX_INTERIM} interim (1xx) responses"
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


@pytest.mark.parametrize(
    ("head", "expect"),
    [
        (OK, (True, Reason.OK, "status 200")),
        (b"HTTP/1.1 503 No\r\n\r\n", (False, Reason.BAD_STATUS, "status 503")),
    ],
    ids=["200", "503"],
)
async def test_a_reply_read_late_reports_its_arrival_not_the_read(
    serve: Serve, head: bytes, expect: tuple[bool, Reason, str]
) -> None:
    """The server (a task of this trio run, on loopback) answers, then holds
    the event loop for HOLD seconds: the reply waits in the probe's socket,
    as it does while a busy daemon is at other work (a start, thousands of
    probes). The latency is the handshake and the request's round trip to
    the reply's arrival in the kernel, not to the watcher's read; the
    verdict and its detail are the reply's as ever."""

    async def answer_then_hold(stream: trio.SocketStream) -> None:
        # At once (no checkpoint: no other task runs before the hold).
        assert os.write(stream.socket.fileno(), head) == len(head)
        time.sleep(HOLD)  # noqa: ASYNC251  (the point: the loop held)

    port = await serve(answer_then_hold)
    before = trio.current_time()
    result = await probe_http(HttpCheck(), HERE, port)
    read = trio.current_time() - before
    assert (result.ok, result.reason, result.detail) == expect
    assert read > HOLD  # the watcher read the reply after the hold
    assert 0 < result.latency < HOLD


@pytest.mark.parametrize(
    ("took", "expect"),
    [
        (0.6, (True, Reason.OK, "status 200")),
        (1.3, (False, Reason.TIMEOUT, "answered in 1.3 s, past the 1 s timeout (status 200)")),
    ],
    ids=["in-time", "late"],
)
async def test_a_reply_that_came_after_the_timeout_is_a_timeout_however_late_it_is_read(
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
    took: float,
    expect: tuple[bool, Reason, str],
) -> None:
    """The kernel timed the reply's arrival `took` seconds after the
    request (tcp.py's `arrival`), the handshake 1.2 ms; the watcher read it
    then. A reply after the 1 s timeout is a timeout, with its latency the
    timeout (it was up before, with a latency over its timeout). The send
    and the read on one stopped clock: the real time between them is not
    in the figures."""
    monkeypatch.setattr(http_exchange, "handshake_time", lambda sock, elapsed: 0.0012)
    monkeypatch.setattr(http_exchange, "perf_counter", lambda: 100.0)
    monkeypatch.setattr(http_exchange, "arrival", lambda sock, now: now + took)
    port = await serve(healthy)
    result = await probe_http(HttpCheck(timing=Timing(timeout=1.0)), HERE, port)
    assert (result.ok, result.reason, result.detail) == expect
    assert result.latency == (1.0 if took > 1.0 else pytest.approx(0.0012 + took))


async def test_a_refused_connect_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    with socket.socket() as unused:
        unused.bind((str(HERE), 0))
        port = unused.getsockname()[1]
        results = await run_checker({"a": (HttpCheck(timing=EVERY_10_S), port)}, 10.5)
    [result] = results["a"]
    assert (result.ok, result.reason, result.detail) == (False, Reason.REFUSED, "ECONNREFUSED: Connection refused")  # fmt: skip


async def test_a_bad_host_is_an_error_before_any_connect(autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    check = HttpCheck(timing=EVERY_10_S, host="bad host")
    target = http_destination(check, HERE, 80)
    assert target is not None and target.request is None
    results = await run_checker({"a": (check, 80)}, 10.5)
    [result] = results["a"]
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("host 'bad host': ")


def test_the_request_is_written_once_for_its_target() -> None:
    """The bytes every probe of a target sends, as h11 writes the request
    (http_head.request_for): built with the target, not at each probe."""
    target = http_destination(HttpCheck(path="/health check"), HERE, 8080)
    assert target is not None
    assert target.wire == (
        b"GET /health%20check HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: */*\r\n"
        b"Accept-Encoding: identity\r\nConnection: close\r\n"
        b"User-Agent: director-health-check\r\n\r\n"
    )
    post = http_destination(HttpCheck(method="post"), HERE, 80)
    assert post is not None
    assert post.wire.startswith(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert post.wire.endswith(b"Content-Length: 0\r\n\r\n")


async def test_h11_keeps_state_only_for_a_probe_that_is_answered(serve: Serve, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    """One h11 connection writes a target's request (http_destination);
    then a probe makes one only once an answer comes: none for a refused
    connect, one for each probe answered."""
    made: list[object] = []
    real = http_exchange.new_connection

    def counted() -> http_exchange.Connection:
        made.append(conn := real())
        return conn

    monkeypatch.setattr(http_exchange, "new_connection", counted)
    with socket.socket() as unused:
        unused.bind((str(HERE), 0))
        refused = unused.getsockname()[1]
        results = await run_checker({"a": (HttpCheck(timing=Timing(interval=1.0)), refused)}, 3.5)
    assert len(results["a"]) >= 3 and not any(r.ok for r in results["a"])
    assert len(made) == 1
    made.clear()
    port = await serve(healthy)
    results = await run_checker({"a": (HttpCheck(timing=Timing(interval=1.0)), port)}, 3.5)
    assert len(results["a"]) >= 3 and all(r.ok for r in results["a"])
    assert len(made) == 1 + len(results["a"])


def test_checks_that_need_more_than_the_head_take_the_task_path() -> None:
    assert http_destination(HttpCheck(tls=True), HERE, 443) is None
    assert http_destination(HttpCheck(expect_body="ok"), HERE, 80) is None
    target = http_destination(HttpCheck(port=8080, address=IPv4Address("127.0.0.2")), HERE, 80)
    assert target is not None and target.sockaddr == ("127.0.0.2", 8080)


@pytest.fixture
async def exchanges() -> AsyncIterator[Exchanges]:
    exchanges = Exchanges()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(exchanges.watch)
        yield exchanges
        nursery.cancel_scope.cancel()


async def test_a_cancelled_exchange_never_calls_back(serve: Serve, exchanges: Exchanges, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await serve(hang)
    called: list[ProbeResult] = []
    target = http_destination(HttpCheck(timing=Timing(timeout=1.0)), HERE, port)
    assert target is not None
    exchange = exchanges.start(target, called.append)
    await trio.sleep(0.1)
    assert exchanges.in_flight == 1
    exchanges.cancel(exchange)
    assert exchanges.in_flight == 0
    await trio.sleep(2.0)
    assert called == []
    done: list[ProbeResult] = []
    exchanges.start(target, done.append)
    await trio.sleep(2.0)
    assert [r.reason for r in done] == [Reason.TIMEOUT]


async def test_a_watcher_that_ended_refuses_new_exchanges() -> None:
    exchanges = Exchanges()
    with trio.move_on_after(0.01):
        await exchanges.watch()
    target = http_destination(HttpCheck(), HERE, 80)
    assert target is not None
    with pytest.raises(trio.ClosedResourceError):
        exchanges.start(target, lambda result: None)


class _Steps(trio.abc.Instrument):
    """When the tasks named `name` take steps."""

    def __init__(self, name: str) -> None:
        self.name, self.times = name, list[float]()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.name):
            self.times.append(trio.current_time())


async def probed_with_steps(port: int) -> tuple[list[ProbeResult], list[float], list[float]]:
    """A plain HTTP check every second on `port` for 5.5 s: its results,
    when the HTTP watcher's task took a step, and how long after each
    probe's start its verdict was read (trio's clock; the result's latency
    is the server's time, on the kernel's)."""
    steps = _Steps(".watch")
    trio.lowlevel.add_instrument(steps)
    times: list[float] = []
    try:
        check = HttpCheck(timing=Timing(interval=1.0))
        results = await run_checker({"a": (check, port)}, 5.5, times)
    finally:
        trio.lowlevel.remove_instrument(steps)
    # A probe's start and its verdict alternate: one probe at a time.
    reads = [read - start for start, read in zip(times[::2], times[1::2], strict=False)]
    return results["a"], steps.times, reads


async def test_a_probe_alone_is_read_as_its_answer_comes(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    """At the daemon's tick, a lone probe's request goes in the scheduler's
    wake-up (read_now), and the watcher wakes once, for the answer, and
    reads it at once: not at the next tick, nor once more for the end of
    the stream after a head already judged."""
    results, steps, reads = await probed_with_steps(await serve(healthy))
    assert len(results) in (5, 6)
    assert all(r.ok for r in results)
    assert reads == [0] * len(results)
    # After the first probe (which starts the HTTP watcher) and before the
    # end (its cancellation): one step for each probe, its answer. The
    # sockets are real: on a loaded host an answer's bytes and its end come
    # apart at times, a step more; before, it took 4 steps a probe (16).
    assert 4 <= len([t for t in steps if 1.0 < t < 5.0]) <= 8


async def test_an_answer_later_in_the_tick_is_read_as_it_comes(serve: Serve, autojump_clock: trio.testing.MockClock) -> None:  # fmt: skip
    """A server that answers 3 ms after the request (in the same 10 ms
    tick): the answer is read as it comes, in one wake-up of the watcher,
    not at the next tick."""

    async def later(stream: trio.SocketStream) -> None:
        await trio.sleep(0.003)
        await stream.send_all(OK)

    results, steps, reads = await probed_with_steps(await serve(later))
    assert all(r.ok for r in results)
    assert reads == pytest.approx([0.003] * len(results))
    assert 4 <= len([t for t in steps if 1.0 < t < 5.0]) <= 8  # as above


async def test_the_daemons_lag_before_the_send_is_not_the_servers_timeout(
    serve: Serve, exchanges: Exchanges, autojump_clock: trio.testing.MockClock
) -> None:
    """The connect completes at once, but the daemon gets round to it (and
    sends the request) only after the deadline: the server, which answers
    at once, gets its whole timeout from the send, and is up. Its latency is
    its own. (Before, such a probe was a timeout: a busy daemon failed
    healthy servers, an operator's trial saw 107 of 200 flap.)"""
    port = await serve(healthy)
    target = http_destination(HttpCheck(timing=Timing(timeout=1.0)), HERE, port)
    assert target is not None
    done: list[ProbeResult] = []
    exchanges.start(target, done.append)
    autojump_clock.jump(1.5)  # no task ran: the watcher comes to it late
    await trio.sleep(0.5)
    [result] = done
    assert (result.ok, result.reason, result.detail) == (True, Reason.OK, "status 200")
    assert 0 < result.latency < 1.0


async def test_a_silent_server_still_times_out_after_a_late_send(
    serve: Serve,
    exchanges: Exchanges,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    handshake_of_1_2_ms(monkeypatch)

    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    port = await serve(hang)
    target = http_destination(HttpCheck(timing=Timing(timeout=1.0)), HERE, port)
    assert target is not None
    done: list[ProbeResult] = []
    at: list[float] = []

    def record(result: ProbeResult) -> None:
        done.append(result)
        at.append(trio.current_time())

    started = trio.current_time()
    exchanges.start(target, record)
    autojump_clock.jump(1.5)
    await trio.sleep(0.1)
    assert done == []  # the server has had 0.1 s of its 1 s since the send
    await trio.sleep(2.0)
    [result] = done
    assert (result.ok, result.reason, result.detail) == (
        False,
        Reason.TIMEOUT,
        "connected in 1.2 ms; no answer within 1 s of the request",
    )
    assert result.latency == 1.0
    # the late send, then its whole timeout less the handshake
    assert at[0] - started == pytest.approx(1.5 + 1.0 - 0.0012)


async def test_no_connection_says_so(autojump_clock: trio.testing.MockClock) -> None:
    """No SYN-ACK: the timeout names the connect, not the answer."""
    with syn_dropping_port() as port:
        result = await probe_http(HttpCheck(timing=Timing(timeout=2.0)), HERE, port)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 2.0)
    assert result.detail == "no connection within 2 s"
