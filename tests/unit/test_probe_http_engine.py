"""The HTTP probe's own engine (h11 over a socket of its own): TLS sessions
resumed across probes, contexts built off the probe's clock, the request it
sends, and an expect_body search that cannot block the event loop."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import pytest
import trio
import trio.testing
from test_probe_http import self_signed

import director.health.probes.http as http_module
import director.health.probes.tls as tls_module
from director.health.probes import Prober, probe_http
from director.health.probes.http import request_for
from director.health.probes.tls import TlsContexts, TlsSettings
from director.health.result import Reason
from director.health.spec import HttpCheck, Timing

HERE = IPv4Address("127.0.0.1")
SLOW = 30.0  # a timeout no probe reaches on a loaded machine
BUILD_TIME = 0.5
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


@dataclass
class TlsServer:
    port: int
    resumed: list[bool] = field(default_factory=list)  # per handshake, the server's view


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


TlsServerFactory = Callable[[ssl.SSLContext], Awaitable[TlsServer]]


@pytest.fixture
async def tls_server(nursery: trio.Nursery) -> TlsServerFactory:
    async def start(context: ssl.SSLContext) -> TlsServer:
        listeners = await trio.open_tcp_listeners(0, host=str(HERE))
        server = TlsServer(listeners[0].socket.getsockname()[1])

        async def handler(raw: trio.SocketStream) -> None:
            stream = trio.SSLStream(raw, context, server_side=True)
            try:
                await stream.do_handshake()
                server.resumed.append(stream.session_reused)
                while b"\r\n\r\n" not in await stream.receive_some(65536):
                    pass
                await stream.send_all(ANSWER)
                await stream.aclose()
            except (trio.BrokenResourceError, ssl.SSLError):
                pass
            finally:
                await trio.aclose_forcefully(stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        return server

    return start


def server_context(certificate: tuple[Path, Path], **options: object) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    for name, value in options.items():
        setattr(context, name, value)
    return context


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=str)
async def test_https_resumes_the_last_session(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path], version: ssl.TLSVersion
) -> None:
    server = await tls_server(server_context(certificate, maximum_version=version))
    prober = Prober()
    slow = Timing(timeout=SLOW)
    checks = [
        HttpCheck(tls=True, verify_tls=False, timing=slow),
        HttpCheck(tls=True, host="health.test", ca_file=str(certificate[0]), timing=slow),
    ]
    for check in checks:
        for _ in range(3):
            result = await prober(check, HERE, server.port)
            assert (result.ok, result.detail) == (True, "status 200")
    # One full handshake per (settings, server name), then resumptions.
    assert server.resumed == [False, True, True, False, True, True]


async def test_a_server_that_refuses_resumption_still_passes(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path]
) -> None:
    server = await tls_server(server_context(certificate, num_tickets=0))
    prober = Prober()
    for _ in range(3):
        check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=SLOW))
        assert (await prober(check, HERE, server.port)).ok
    assert server.resumed == [False, False, False]


async def test_an_https_request_is_not_held_back_by_nagle(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """TCP_NODELAY before the handshake: the client's Finished and the
    request are two writes, and with Nagle the request waited for the ACK
    of the Finished, which a server with nothing to send back (no session
    ticket) delays: host, bench/http_probe.py, https-no-reuse, 52.6 ms a
    probe of wall time, 7.0 with it."""
    seen: list[int] = []
    secure = http_module._Exchange._secure

    def spied(exchange: http_module._Exchange, stream: trio.abc.Stream, context: ssl.SSLContext) -> trio.abc.Stream:  # fmt: skip
        assert isinstance(stream, http_module.TimedConnection)
        seen.append(stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        return secure(exchange, stream, context)

    monkeypatch.setattr(http_module._Exchange, "_secure", spied)
    server = await tls_server(server_context(certificate, num_tickets=0))
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=SLOW))
    assert (await Prober()(check, HERE, server.port)).ok
    assert seen == [1] and server.resumed == [False]


async def test_sessions_are_kept_per_server(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path]
) -> None:
    context = server_context(certificate)
    first, second = await tls_server(context), await tls_server(context)
    prober = Prober()
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=SLOW))
    for server in (first, second, first, second):
        assert (await prober(check, HERE, server.port)).ok
    assert (first.resumed, second.resumed) == ([False, True], [False, True])


async def test_the_session_store_is_bounded(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await tls_server(server_context(certificate))
    contexts = TlsContexts()
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=SLOW))
    assert (await probe_http(check, HERE, server.port, contexts)).ok
    context = contexts.get(TlsSettings(verify=False))
    session = contexts.session(context, HERE, server.port, "127.0.0.1")
    assert isinstance(session, ssl.SSLSession)
    monkeypatch.setattr(tls_module, "MAX_SESSIONS", 3)
    for port in range(1, 5):
        contexts.keep_session(context, HERE, port, "127.0.0.1", session)
    kept = [contexts.session(context, HERE, port, "127.0.0.1") for port in (server.port, 1, 2, 3, 4)]  # fmt: skip
    assert kept == [None, None, session, session, session]


async def test_contexts_are_built_once_in_a_worker_thread_off_the_probes_clock(
    tls_server: TlsServerFactory, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await tls_server(server_context(certificate))
    builds: list[bool] = []
    real = tls_module.tls_context

    def slow_build(settings: TlsSettings) -> ssl.SSLContext:
        builds.append(threading.current_thread() is threading.main_thread())
        threading.Event().wait(BUILD_TIME)
        return real(settings)

    monkeypatch.setattr(tls_module, "tls_context", slow_build)
    prober = Prober()
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=SLOW))
    results = []

    async def one() -> None:
        started = trio.current_time()
        result = await prober(check, HERE, server.port)
        results.append((result.ok, result.detail, result.latency <= trio.current_time() - started - BUILD_TIME))  # fmt: skip

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert builds == [False]  # once, not on the event loop's thread
    # Every probe waited for the build, and none counts it in its latency.
    assert results == [(True, "status 200", True)] * 5


def test_request_is_what_httpx_sent() -> None:
    request = request_for(HttpCheck(path="/a?b=c"), ip_address("10.0.0.1"), 8080)
    assert (request.method, request.target) == (b"GET", b"/a?b=c")
    assert list(request.headers) == [
        (b"host", b"10.0.0.1:8080"),
        (b"accept", b"*/*"),
        (b"accept-encoding", b"identity"),
        (b"connection", b"close"),
        (b"user-agent", b"director-health-check"),
    ]
    hosts = [
        (HttpCheck(), "10.0.0.1", 80, b"10.0.0.1"),
        (HttpCheck(tls=True), "10.0.0.1", 443, b"10.0.0.1"),
        (HttpCheck(tls=True), "10.0.0.1", 80, b"10.0.0.1:80"),
        (HttpCheck(), "2001:db8::1", 80, b"[2001:db8::1]"),
        (HttpCheck(), "2001:db8::1", 81, b"[2001:db8::1]:81"),
        (HttpCheck(host="www.test"), "10.0.0.1", 81, b"www.test"),
    ]
    for check, address, port, host in hosts:
        assert dict(request_for(check, ip_address(address), port).headers)[b"host"] == host
    post = request_for(HttpCheck(method="POST"), ip_address("10.0.0.1"), 80)
    assert dict(post.headers)[b"content-length"] == b"0"


RawBehaviour = Callable[[trio.SocketStream], Awaitable[None]]


@pytest.fixture
async def raw_server(nursery: trio.Nursery) -> Callable[[RawBehaviour], Awaitable[int]]:
    async def start(behaviour: RawBehaviour) -> int:
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
        return int(listeners[0].socket.getsockname()[1])

    return start


async def test_a_redirect_is_not_followed(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    requests = []

    async def redirect(stream: trio.SocketStream) -> None:
        requests.append(1)
        await stream.send_all(b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\nContent-Length: 0\r\n\r\n")  # fmt: skip

    port = await raw_server(redirect)
    result = await Prober()(HttpCheck(timing=Timing(timeout=SLOW)), HERE, port)
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_STATUS, "status 302")
    assert requests == [1]


async def test_informational_responses_are_skipped(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    async def early_hints(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ANSWER)

    port = await raw_server(early_hints)
    result = await Prober()(HttpCheck(expect_body="ok", timing=Timing(timeout=SLOW)), HERE, port)
    assert (result.ok, result.detail) == (True, "status 200")


def test_paths_are_quoted_as_httpx_quoted_them() -> None:
    # The config takes these (test_config_checks); the old httpx probe sent
    # them quoted, and so does this one.
    quoted = {"/a b": b"/a%20b", "/ä": b"/%C3%A4", "/%zz": b"/%zz", "/[x]": b"/[x]", "/a?b=c d": b"/a?b=c%20d"}  # fmt: skip
    for path, target in quoted.items():
        assert request_for(HttpCheck(path=path), HERE, 80).target == target
    assert request_for(HttpCheck(method="head"), HERE, 80).method == b"HEAD"


async def test_a_method_http_cannot_carry_is_an_error(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    async def never(stream: trio.SocketStream) -> None:
        raise AssertionError("no request should come")

    port = await raw_server(never)
    result = await Prober()(HttpCheck(method="GET X"), HERE, port)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("request: "), result.detail


async def test_a_pattern_the_search_refuses_is_an_error(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    async def ok(stream: trio.SocketStream) -> None:
        await stream.send_all(ANSWER)

    port = await raw_server(ok)
    result = await Prober()(HttpCheck(expect_body="(ok", timing=Timing(timeout=SLOW)), HERE, port)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("expect_body '(ok': missing )"), result.detail


# -- a catastrophic expect_body -------------------------------------------------

HOSTILE_BODY = b"a" * 64 + b"!"


def hostile_answer() -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(HOSTILE_BODY)
    return head + HOSTILE_BODY


async def test_nested_quantifiers_that_stall_re_are_answered(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    # `(a+)+$` against a...a! takes re 2^n steps; the regex module sees
    # through it and answers at once.
    async def hostile(stream: trio.SocketStream) -> None:
        await stream.send_all(hostile_answer())

    port = await raw_server(hostile)
    result = await Prober()(
        HttpCheck(expect_body="(a+)+$", timing=Timing(timeout=SLOW)), HERE, port
    )
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)


async def test_a_catastrophic_expect_body_times_out_and_the_loop_goes_on(
    raw_server: Callable[[RawBehaviour], Awaitable[int]],
) -> None:
    # `(a|aa)+$` against 64 a's and a '!' backtracks for longer than anyone
    # waits, in the regex module too (a real clock: the search is real work).
    async def hostile(stream: trio.SocketStream) -> None:
        await stream.send_all(hostile_answer())

    async def healthy(stream: trio.SocketStream) -> None:
        await stream.send_all(ANSWER)

    hostile_port, healthy_port = await raw_server(hostile), await raw_server(healthy)
    prober = Prober()
    stuck = HttpCheck(expect_body="(a|aa)+$", timing=Timing(timeout=0.5))
    order: list[str] = []
    others: list[bool] = []

    async def stuck_probe() -> None:
        result = await prober(stuck, HERE, hostile_port)
        order.append("stuck")
        assert (result.ok, result.reason) == (False, Reason.TIMEOUT)
        assert result.detail == "no verdict within 0.5 s: expect_body '(a|aa)+$' still searching the body"  # fmt: skip

    async def other_probes() -> None:
        while "stuck" not in order:
            others.append(
                (await prober(HttpCheck(timing=Timing(timeout=SLOW)), HERE, healthy_port)).ok
            )
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_probe)
        nursery.start_soon(other_probes)
    # The other probes kept running, and passing, while the search was stuck.
    assert len(others) >= 5 and all(others), others
