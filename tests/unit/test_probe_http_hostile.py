"""HTTP(S) probes against servers that misbehave: each test is one hostile
behaviour, served from loopback by a raw trio server in the test's own run.

Every probe goes through `probe` (the Prober): it must come back with a
verdict and the right reason, and without a `probe_error` log (the probe did
not raise: a contained bug would also be a failed result, with a traceback)."""

from __future__ import annotations

import gzip
import socket
import struct
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from director.health.probes import probe
from director.health.probes.http import MAX_BODY, MAX_HEADER, decode_body
from director.health.probes.http_head import MAX_INCOMPLETE_EVENT
from director.health.result import ProbeResult, Reason
from director.health.spec import Check, HttpCheck, Timing

HERE = IPv4Address("127.0.0.1")
OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"

Behaviour = Callable[[trio.SocketStream], Awaitable[None]]


@dataclass
class RawServer:
    port: int
    requests: list[bytes] = field(default_factory=list)
    sent: int = 0  # bytes the behaviour sent
    broken: bool = False  # the client went away while the behaviour was sending


@pytest.fixture
async def serve(nursery: trio.Nursery) -> Callable[[Behaviour], Awaitable[RawServer]]:
    async def start(behaviour: Behaviour) -> RawServer:
        listeners = await trio.open_tcp_listeners(0, host=str(HERE))
        server = RawServer(listeners[0].socket.getsockname()[1])

        async def handler(stream: trio.SocketStream) -> None:
            server.requests.append(await stream.receive_some(65536))
            try:
                await behaviour(CountingStream(stream, server))  # type: ignore[arg-type]
            except trio.BrokenResourceError:
                server.broken = True
            finally:
                await trio.aclose_forcefully(stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        return server

    return start


class CountingStream:
    def __init__(self, stream: trio.SocketStream, server: RawServer) -> None:
        self.stream, self.server = stream, server
        self.socket = stream.socket

    async def send_all(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.server.sent += len(data)


async def probe_quietly(check: Check, port: int) -> ProbeResult:
    with capture_logs() as logs:
        result = await probe(check, HERE, port)
    assert [e for e in logs if e["event"] == "probe_error"] == []
    return result


def answer(body: bytes, *headers: bytes) -> bytes:
    return OK_HEAD + b"".join(h + b"\r\n" for h in headers) + b"Content-Length: %d\r\n\r\n" % len(body) + body  # fmt: skip


async def test_the_probe_asks_for_identity_encoding(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    async def plain(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(b"ok"))

    server = await serve(plain)
    assert (await probe_quietly(HttpCheck(), server.port)).ok
    [request] = server.requests
    assert b"\r\naccept-encoding: identity\r\n" in request.lower()


async def test_lying_content_encoding_with_expect_body(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    # The crash: gzip announced over a plain body raised DecodingError.
    async def lying(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(b"status: healthy", b"Content-Encoding: gzip"))

    server = await serve(lying)
    result = await probe_quietly(HttpCheck(expect_body="healthy"), server.port)
    assert (result.ok, result.reason, result.detail) == (True, Reason.OK, "status 200")
    result = await probe_quietly(HttpCheck(expect_body="sick"), server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)


async def test_compressed_body_is_searched_as_sent(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    # A server that compresses although asked not to: its bytes, not the text.
    async def gzipping(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(gzip.compress(b"healthy"), b"Content-Encoding: gzip"))

    server = await serve(gzipping)
    result = await probe_quietly(HttpCheck(expect_body="healthy"), server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """64 MiB of zeros in about 64 KiB of gzip."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    return b"".join(compressor.compress(zeros) for _ in range(64)) + compressor.flush()


async def test_decompression_bomb_neither_raises_nor_grows_memory(
    serve: Callable[[Behaviour], Awaitable[RawServer]], gzip_bomb: bytes
) -> None:
    async def bomb(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(gzip_bomb, b"Content-Encoding: gzip"))

    server = await serve(bomb)
    tracemalloc.start()
    try:
        result = await probe_quietly(HttpCheck(expect_body="never there"), server.port)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)
    # Decoding even one 64 KiB read of it would take 64 MiB.
    assert peak < 8 << 20, f"peak {peak} bytes"


async def test_body_that_never_ends_is_read_up_to_the_limit(
    serve: Callable[[Behaviour], Awaitable[RawServer]],
) -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await stream.send_all(OK_HEAD + b"Connection: close\r\n\r\n")  # body until EOF
        while True:
            await stream.send_all(b"x" * 65536)

    server = await serve(endless)
    result = await probe_quietly(HttpCheck(expect_body="healthy"), server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)
    await trio.testing.wait_all_tasks_blocked()
    assert server.broken  # the probe hung up
    assert server.sent < MAX_BODY + (64 << 20)  # what socket buffers can hold on top


async def test_body_that_never_ends_is_not_read_without_expect_body(
    serve: Callable[[Behaviour], Awaitable[RawServer]],
) -> None:
    async def endless(stream: trio.SocketStream) -> None:
        await stream.send_all(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
        while True:
            await stream.send_all(b"10000\r\n" + b"x" * 65536 + b"\r\n")

    server = await serve(endless)
    result = await probe_quietly(HttpCheck(), server.port)
    assert (result.ok, result.detail) == (True, "status 200")


async def test_body_trickling_forever_times_out(
    serve: Callable[[Behaviour], Awaitable[RawServer]], autojump_clock: trio.testing.MockClock
) -> None:
    async def trickle(stream: trio.SocketStream) -> None:
        await stream.send_all(OK_HEAD + b"Content-Length: 1000000\r\n\r\n")
        while True:
            await stream.send_all(b"x")
            await trio.sleep(1)

    server = await serve(trickle)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=5.0), expect_body="ok"), server.port)  # fmt: skip
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 5.0)


async def test_headers_trickling_one_byte_a_second_time_out(
    serve: Callable[[Behaviour], Awaitable[RawServer]], autojump_clock: trio.testing.MockClock
) -> None:
    # The server runs in this trio run, so its sleeps are on the autojump
    # clock too: the probe meets the trickle in virtual time.
    async def trickle(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        while True:
            await stream.send_all(b"a")
            await trio.sleep(1)

    server = await serve(trickle)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=5.0)), server.port)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 5.0)
    assert 4 <= server.sent - len(b"HTTP/1.1 200 OK\r\nX-Slow: ") <= 6  # it did trickle


async def test_a_64_kib_header_line_is_a_bad_reply(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    async def big(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(b"ok", b"X-Big: " + b"a" * (64 << 10)))

    server = await serve(big)
    result = await probe_quietly(HttpCheck(), server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_REPLY)
    assert result.detail.startswith("status 200, 6")
    assert result.detail.endswith(f" bytes of header fields (limit {MAX_HEADER})")


# A plain check judged on its head (http_exchange.py), and one that reads the
# body (http.py's stream): the same details.
PATHS = pytest.mark.parametrize("expect_body", [None, "ok"], ids=["head", "body"])


@PATHS
async def test_a_header_line_without_end_is_refused_by_h11(serve: Callable[[Behaviour], Awaitable[RawServer]], expect_body: str | None) -> None:  # fmt: skip
    # 1 MiB and no end of line: h11 refuses an incomplete event past httpcore's
    # 100 KiB, so the buffer stays bounded; the detail names that limit (h11:
    # "Receive buffer too long").
    async def endless_line(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (1 << 20))
        await trio.sleep_forever()

    server = await serve(endless_line)
    check = HttpCheck(timing=Timing(timeout=30.0), expect_body=expect_body)
    result = await probe_quietly(check, server.port)
    detail = f"no end of the head within {MAX_INCOMPLETE_EVENT} bytes"
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


async def test_endless_header_lines_are_a_bad_reply(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    async def endless_headers(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        for i in range(0, 100_000, 1000):
            await stream.send_all(b"".join(b"X-%d: y\r\n" % n for n in range(i, i + 1000)))

    server = await serve(endless_headers)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=30.0)), server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_REPLY)
    assert server.sent < 1 << 20


@PATHS
@pytest.mark.parametrize(
    ("sent", "detail"),
    [
        (b"\x16\x03\x01garbage \xff\xfe\r\n\r\n", r'not an HTTP response: the first bytes were "\u0016\u0003\u0001garbage \u00ff\u00fe\r\n\r\n"'),
        (b"ok\n", r'not an HTTP response: the first bytes were "ok\n"'),
        (bytes(range(255, 205, -1)), r'not an HTTP response: the first bytes were "\u00ff\u00fe\u00fd\u00fc\u00fb\u00fa\u00f9\u00f8\u00f7\u00f6\u00f5\u00f4\u00f3\u00f2\u00f1\u00f0\u00ef\u00ee\u00ed\u00ec\u00eb\u00ea\u00e9\u00e8\u00e7\u00e6\u00e5\u00e4\u00e3\u00e2\u00e1\u00e0"...'),
        (b"HTTP/1.1 200 OK\r\nContent-", "the head incomplete: the server closed after 25 bytes"),
        (b"", "Server disconnected without sending a response."),
        (b"HTTP/1.1 2OO OK\r\n\r\n", 'illegal status line: "HTTP/1.1 2OO OK"'),
    ],
    ids=["garbage", "ok", "random", "half-head", "nothing", "status-line"],
)  # fmt: skip
async def test_a_reply_that_is_not_http_is_quoted(
    serve: Callable[[Behaviour], Awaitable[RawServer]],
    expect_body: str | None,
    sent: bytes,
    detail: str,
) -> None:
    # Sent, then a close: only a server that sent nothing gets httpcore's words.
    async def not_http(stream: trio.SocketStream) -> None:
        await stream.send_all(sent)

    server = await serve(not_http)
    result = await probe_quietly(HttpCheck(expect_body=expect_body), server.port)
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\nok", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nok\r\n0\r\n\r\n", r'illegal chunk header: "zz\r\n"'),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"f" * 200_000 + b"\r\n", f"no end of a chunk header or trailer within {MAX_INCOMPLETE_EVENT} bytes"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n", r'malformed chunk footer: "XX" (expected "\r\n")'),
        (b"HTTP/1.1 99999 Nope\r\nContent-Length: 0\r\n\r\n", 'illegal status line: "HTTP/1.1 99999 Nope"'),
        (b"HTTP/1.1 200 OK\r\n\x00\x01: \xff\r\n\r\n", r'illegal header line: "\u0000\u0001: \u00ff"'),
    ],
    ids=["content-length", "chunk-size", "chunk-size-line", "chunk-footer", "status", "header-name"],
)  # fmt: skip
async def test_malformed_framing_is_a_bad_reply(
    serve: Callable[[Behaviour], Awaitable[RawServer]], bad: bytes, detail: str
) -> None:
    # The line h11 quotes as a Python bytes repr (bytearray(b'zz\r\n')) is text.
    async def malformed(stream: trio.SocketStream) -> None:
        await stream.send_all(bad)
        await trio.sleep_forever()

    server = await serve(malformed)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=30.0), expect_body="ok"), server.port)  # fmt: skip
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_REPLY, detail)


async def test_tls_garbage_is_an_error_with_a_detail(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    async def garbage(stream: trio.SocketStream) -> None:
        await stream.send_all(b"\x15\x03\x03\x00\x02\x02\x50" + bytes(range(256)) * 8)
        await trio.sleep_forever()

    server = await serve(garbage)
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=30.0))
    result = await probe_quietly(check, server.port)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("tls: "), result.detail


async def test_https_to_a_plain_http_port_says_so(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    # An HTTP server answers the client hello as a bad request (nginx's
    # "400 The plain HTTP request was sent to HTTPS port" is the other way).
    async def plain_http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip

    server = await serve(plain_http)
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=30.0))
    result = await probe_quietly(check, server.port)
    detail = "tls: WRONG_VERSION_NUMBER (the server's first bytes are not TLS: plain HTTP on this port?)"  # fmt: skip
    assert (result.ok, result.reason, result.detail) == (False, Reason.ERROR, detail)


@pytest.mark.parametrize("reply", [b"", b"ok\n", b"\x16\x03"], ids=["nothing", "short text", "a record's start"])  # fmt: skip
async def test_https_to_a_server_that_closes_during_the_handshake_says_so(
    serve: Callable[[Behaviour], Awaitable[RawServer]], reply: bytes
) -> None:
    # Python's text for it was "TLS/SSL connection has been closed (EOF)
    # (_ssl.c:992)".
    async def short(stream: trio.SocketStream) -> None:
        await stream.send_all(reply)

    server = await serve(short)
    check = HttpCheck(tls=True, verify_tls=False, timing=Timing(timeout=30.0))
    result = await probe_quietly(check, server.port)
    detail = "tls: the server closed the connection before the TLS handshake ended (no TLS on this port?)"  # fmt: skip
    assert (result.ok, result.reason, result.detail) == (False, Reason.ERROR, detail)


async def test_accept_then_reset(serve: Callable[[Behaviour], Awaitable[RawServer]]) -> None:  # fmt: skip
    async def reset(stream: trio.SocketStream) -> None:
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # with a zero linger: an RST, not a FIN

    server = await serve(reset)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=30.0)), server.port)
    assert not result.ok
    assert (result.reason, result.detail) in {
        (Reason.ERROR, "ECONNRESET: Connection reset by peer"),
        (Reason.BAD_REPLY, "Server disconnected without sending a response."),
    }


async def test_accept_then_hang_times_out(
    serve: Callable[[Behaviour], Awaitable[RawServer]], autojump_clock: trio.testing.MockClock
) -> None:
    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    server = await serve(hang)
    result = await probe_quietly(HttpCheck(timing=Timing(timeout=2.0)), server.port)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 2.0)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("host", ["bücher.test", "a b", "-bad.test", "x" * 64 + ".test", "a..b"])
async def test_bad_host_at_probe_time_is_an_error(
    serve: Callable[[Behaviour], Awaitable[RawServer]], host: str, tls: bool
) -> None:
    # The config refuses these; a check built in code (or a config from before
    # the rule) reaches the probe. The crash: UnicodeEncodeError.
    async def plain(stream: trio.SocketStream) -> None:
        await stream.send_all(answer(b"ok"))

    server = await serve(plain)
    result = await probe_quietly(HttpCheck(host=host, tls=tls, verify_tls=False), server.port)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith(f"host {host!r}: "), result.detail
    assert server.requests == []


@pytest.mark.parametrize("charset", ["rot13", "idna", "utf-16", "no-such-charset", "base64"])
async def test_hostile_charset_with_expect_body(
    serve: Callable[[Behaviour], Awaitable[RawServer]], charset: str
) -> None:
    async def odd(stream: trio.SocketStream) -> None:
        body = b"healthy \xff\xfe\x00"
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=%s\r\nContent-Length: %d\r\n\r\n%s" % (charset.encode(), len(body), body))  # fmt: skip

    server = await serve(odd)
    result = await probe_quietly(HttpCheck(expect_body="healthy|h.e.a.l.t.h.y"), server.port)
    assert result.reason in {Reason.OK, Reason.BAD_BODY}
    assert result.ok == (charset != "utf-16" or "h\x00" in "healthy")


def test_decode_body_falls_back_to_utf8() -> None:
    assert decode_body(b"ok \xff", "idna") == "ok \ufffd"
    assert decode_body(b"ok", "rot13") == "ok"
    assert decode_body("é".encode("latin-1"), "latin-1") == "é"
    assert decode_body(b"ok", None) == "ok"


def test_limits() -> None:
    assert (MAX_BODY, MAX_HEADER) == (1 << 20, 32 << 10)
