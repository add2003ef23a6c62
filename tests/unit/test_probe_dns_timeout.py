"""DNS over TCP: the timeout is the server's time, not the daemon's lag, and
a timeout says what timed out (as for HTTPS: test_probe_http_timeout.py).

The responder is a task of this trio run on loopback, under the autojump
clock. The daemon's lag is the clock jumped while the probe's task runs (no
task runs meanwhile, as when a busy loop comes back to a probe late); every
connect's handshake is 1.2 ms as the kernel timed it, so that details are
exact. Before, the whole exchange ran under trio.fail_after from the start:
a daemon 1.5 s late to send the query failed a server that answered at once."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address

import dns.message
import pytest
import trio
import trio.testing
from tcp_support import syn_dropping_port
from test_probe_dns import authoritative

from director.health.probes import dns as dns_probe
from director.health.probes import probe, stream
from director.health.result import ProbeResult, Reason
from director.health.spec import DnsCheck, Timing

HERE = IPv4Address("127.0.0.1")
CHECK = DnsCheck(Timing(timeout=1.0), transport="tcp")
CONNECTED = "connected in 1.2 ms"

Behaviour = Callable[[trio.SocketStream], Awaitable[None]]
Serve = Callable[[Behaviour], Awaitable[int]]


@pytest.fixture(autouse=True)
def handshake_of_1_2_ms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "handshake_time", lambda sock, elapsed: 0.0012)


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Serve:
    async def start(behaviour: Behaviour) -> int:
        listeners = await trio.open_tcp_listeners(0, host=str(HERE))

        async def handler(raw: trio.SocketStream) -> None:
            async with raw:
                with contextlib.suppress(trio.BrokenResourceError):
                    await behaviour(raw)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    return start


async def read_query(stream: trio.SocketStream) -> bytes:
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack("!H", data[:2])[0]:
        more = await stream.receive_some(65536)
        if not more:
            raise trio.BrokenResourceError
        data += more
    return data[2:]


def reply_to(wire: bytes) -> bytes:
    (reply,) = authoritative(dns.message.from_wire(wire), wire)
    return struct.pack("!H", len(reply)) + reply


async def healthy(stream: trio.SocketStream) -> None:
    await stream.send_all(reply_to(await read_query(stream)))
    await stream.receive_some(65536)  # until the probe hangs up


async def silent(stream: trio.SocketStream) -> None:
    await read_query(stream)
    await trio.sleep_forever()


async def half(stream: trio.SocketStream) -> None:
    await stream.send_all(reply_to(await read_query(stream))[:10])
    await trio.sleep_forever()


def late(monkeypatch: pytest.MonkeyPatch, clock: trio.testing.MockClock, lag: float) -> None:
    """The daemon's lag: `lag` seconds between the connect and the query's send."""
    connect = dns_probe.connect

    async def late_connect(*args: object) -> stream.TimedConnection:
        connection = await connect(*args)  # type: ignore[arg-type]
        clock.jump(lag)
        return connection

    monkeypatch.setattr(dns_probe, "connect", late_connect)


async def timed(port: int) -> tuple[ProbeResult, float]:
    start = trio.current_time()
    result = await probe(CHECK, HERE, port)
    return result, trio.current_time() - start


async def test_the_daemons_lag_before_the_query_is_not_the_servers_timeout(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve(healthy)
    late(monkeypatch, autojump_clock, 1.5)
    result, took = await timed(port)
    assert (result.ok, result.reason, result.detail) == (True, Reason.OK, "NOERROR, 1 answer")
    assert took >= 1.5
    assert 0.0012 < result.latency < 0.5  # the server's: 1.2 ms and loopback's round


@pytest.mark.parametrize(
    ("behaviour", "detail"),
    [
        (silent, f"{CONNECTED}; no answer within 1 s of the request"),
        (half, f"{CONNECTED}; the reply incomplete within 1 s of the query"),
    ],
    ids=["silent", "half"],
)
async def test_a_timeout_says_what_timed_out_one_timeout_after_a_late_query(
    behaviour: Behaviour,
    detail: str,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The query goes 0.5 s late: the server gets its whole second from
    then, and no more."""
    port = await serve(behaviour)
    late(monkeypatch, autojump_clock, 0.5)
    result, took = await timed(port)
    assert (result.ok, result.reason, result.detail, result.latency) == (False, Reason.TIMEOUT, detail, 1.0)  # fmt: skip
    assert took == pytest.approx(0.5 + 1.0 - 0.0012, abs=0.05)


async def test_no_connection_says_so(autojump_clock: trio.testing.MockClock) -> None:
    with syn_dropping_port() as port:
        result, took = await timed(port)
    assert (result.ok, result.reason, result.detail, result.latency) == (False, Reason.TIMEOUT, "no connection within 1 s", 1.0)  # fmt: skip
    assert took == 1.0


async def test_a_daemon_late_by_a_whole_timeout_ends_the_probe_at_twice_it(
    serve: Serve, monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    """1.2 s late to send the query, to a server that never answers: at 2 s
    (stream.LIMIT x the timeout) the probe ends, the server having had its
    handshake and 0.8 s, and the detail says so."""
    monkeypatch.setattr(stream, "perf_counter", trio.current_time)
    port = await serve(silent)
    late(monkeypatch, autojump_clock, 1.2)
    result, took = await timed(port)
    detail = (
        "connected in 1.2 ms; no verdict within 2 s of the start:"
        " the server had 0.8 s of it, the rest was the daemon's lag"
    )
    assert (result.ok, result.reason, result.detail, result.latency) == (False, Reason.TIMEOUT, detail, 1.0)  # fmt: skip
    assert took == 2.0
