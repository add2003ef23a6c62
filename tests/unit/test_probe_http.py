from __future__ import annotations

import os
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from director.health.probes import Prober, probe, probe_http
from director.health.probes.http import TlsContexts, url_for
from director.health.probes.tls import TlsSettings, TlsSetupError, tls_context
from director.health.result import Reason
from director.health.spec import HttpCheck, StatusRange, Timing
from director.ipvs.model import IPAddress

LOOPBACKS = [IPv4Address("127.0.0.1"), IPv6Address("::1")]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"hello"
    hang: bool = False  # never answer
    hang_up: bool = False  # close without answering


@dataclass
class HttpServer:
    address: IPAddress
    port: int
    reply: Reply = field(default_factory=Reply)
    requests: list[h11.Request] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)
    connections: int = 0
    open_connections: int = 0


async def read_request(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Request | None:
    request = None
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request


async def handle(server: HttpServer, stream: trio.abc.Stream) -> None:
    """Serve requests on one connection, keeping it alive unless the client
    asks to close; then wait for the client to hang up."""
    server.connections += 1
    server.open_connections += 1
    try:
        conn = h11.Connection(h11.SERVER)
        while (request := await read_request(stream, conn)) is not None:
            server.requests.append(request)
            reply = server.reply
            if reply.hang:
                await trio.sleep_forever()
            if reply.hang_up:
                return
            headers = [("content-length", str(len(reply.body))), ("content-type", "text/plain")]
            await stream.send_all(conn.send(h11.Response(status_code=reply.status, headers=headers)))  # fmt: skip
            await stream.send_all(conn.send(h11.Data(data=reply.body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
    except (trio.BrokenResourceError, ssl.SSLError, h11.RemoteProtocolError):
        pass
    finally:
        server.open_connections -= 1
        await trio.aclose_forcefully(stream)


ServerFactory = Callable[..., Awaitable[HttpServer]]


@pytest.fixture
async def http_server(nursery: trio.Nursery) -> ServerFactory:
    async def start(address: IPAddress, tls: ssl.SSLContext | None = None) -> HttpServer:
        listeners = await trio.open_tcp_listeners(0, host=str(address))
        server = HttpServer(address, listeners[0].socket.getsockname()[1])

        async def handler(stream: trio.SocketStream) -> None:
            if tls is None:
                await handle(server, stream)
            else:
                await handle(server, trio.SSLStream(stream, tls, server_side=True))

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: server.server_names.append(name)  # type: ignore[func-returns-value]
        return server

    return start


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for health.test, 127.0.0.1 and ::1,
    valid a day, made by openssl: (cert.pem, key.pem) in `directory`."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=health.test", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:health.test,IP:127.0.0.1,IP:::1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.mark.parametrize("address", LOOPBACKS, ids=str)
async def test_status_200_is_up(address: IPAddress, http_server: ServerFactory) -> None:
    server = await http_server(address)
    result = await probe(HttpCheck(), address, server.port)
    assert (result.ok, result.reason, result.detail) == (True, Reason.OK, "status 200")
    [request] = server.requests
    headers = dict(request.headers)
    assert (request.method, request.target) == (b"GET", b"/")
    host = f"[{address}]" if address.version == 6 else str(address)
    assert headers[b"host"] == f"{host}:{server.port}".encode()
    assert headers[b"connection"] == b"close"


async def test_bad_status(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(status=503)
    result = await probe(HttpCheck(), server.address, server.port)
    assert (result.ok, result.reason, result.detail) == (False, Reason.BAD_STATUS, "status 503")


async def test_expected_status_ranges(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(status=302)
    check = HttpCheck(expect_status=(StatusRange(200, 200), StatusRange(301, 302)))
    assert (await probe(check, server.address, server.port)).ok
    server.reply = Reply(status=201)
    assert (await probe(check, server.address, server.port)).detail == "status 201"


async def test_method_path_and_host(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[1])
    check = HttpCheck(method="HEAD", path="/health?deep=1", host="www.example.test")
    server.reply = Reply(body=b"")
    assert (await probe(check, server.address, server.port)).ok
    [request] = server.requests
    assert (request.method, request.target) == (b"HEAD", b"/health?deep=1")
    assert dict(request.headers)[b"host"] == b"www.example.test"


async def test_body_regex_is_searched(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(body=b"db: ok\nqueue: ok\n")
    check = HttpCheck(expect_body=r"queue: ok")
    assert (await probe(check, server.address, server.port)).ok
    server.reply = Reply(body=b"db: ok\nqueue: stuck\n")
    result = await probe(check, server.address, server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_BODY)
    assert result.detail == "status 200, body does not match 'queue: ok'"


async def test_body_is_not_checked_when_status_is_bad(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(status=500, body=b"queue: ok")
    result = await probe(HttpCheck(expect_body="queue: ok"), server.address, server.port)
    assert (result.reason, result.detail) == (Reason.BAD_STATUS, "status 500")


async def test_port_and_address_override(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    check = HttpCheck(port=server.port, address=ip_address("127.0.0.1"))
    assert (await probe(check, ip_address("::1"), 1)).ok


async def test_refused(http_server: ServerFactory) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    result = await probe(HttpCheck(), LOOPBACKS[0], port)
    assert (result.ok, result.reason) == (False, Reason.REFUSED)


async def test_hang_up_without_answer_is_a_bad_reply(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(hang_up=True)
    result = await probe(HttpCheck(), server.address, server.port)
    assert (result.ok, result.reason) == (False, Reason.BAD_REPLY)


HOLD = 0.05  # more than two ticks of the kernel's clock (tcp.TICK: 10 ms at most)


class _Holding(trio.abc.Stream):
    """A server's connection whose writes go at once (os.write: no
    checkpoint, so no other task runs before what follows) and, once
    `hold` is set, hold the event loop that long after each: what it wrote
    waits unread in the peer's socket, as a reply does while a busy daemon
    is at other work."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.hold = stream, 0.0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.stream.socket.fileno(), view) :]
            except BlockingIOError:
                await self.stream.wait_send_all_might_not_block()
        if self.hold:
            time.sleep(self.hold)  # noqa: ASYNC251  (the point: the loop held)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.mark.parametrize(
    ("tls", "status", "expect"),
    [
        (False, 200, (True, Reason.OK)),
        (True, 200, (True, Reason.OK)),
        (True, 503, (False, Reason.BAD_STATUS)),
    ],
    ids=["expect_body", "https", "https-503"],
)
async def test_a_reply_read_late_reports_the_servers_time(
    tls: bool,
    status: int,
    expect: tuple[bool, Reason],
    nursery: trio.Nursery,
    server_tls: ssl.SSLContext,
) -> None:
    """The server (a task of this trio run, on loopback) writes its whole
    reply, then holds the event loop for HOLD seconds before the probe can
    read it. The latency is the server's time (the handshakes and the
    request's round trip, to the reply's arrival in the kernel), not the
    time to the probe's read; the verdict and its detail are the reply's as
    ever."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

    async def handler(raw: trio.SocketStream) -> None:
        holding = _Holding(raw)
        stream = trio.SSLStream(holding, server_tls, server_side=True) if tls else holding
        conn = h11.Connection(h11.SERVER)
        try:
            if await read_request(stream, conn) is not None:
                headers = [("content-length", "5")]
                reply = conn.send(h11.Response(status_code=status, headers=headers))
                reply += conn.send(h11.Data(data=b"hello")) + (conn.send(h11.EndOfMessage()) or b"")
                holding.hold = HOLD
                await stream.send_all(reply)
                await stream.receive_some(65536)  # until the probe hangs up
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    nursery.start_soon(trio.serve_listeners, handler, listeners)
    port = listeners[0].socket.getsockname()[1]
    check = HttpCheck(tls=True, verify_tls=False) if tls else HttpCheck(expect_body="hello")
    before = trio.current_time()
    result = await probe(check, LOOPBACKS[0], port)
    read = trio.current_time() - before
    assert (result.ok, result.reason, result.detail) == (*expect, f"status {status}")
    assert read > HOLD  # the probe read the reply after the hold
    assert 0 < result.latency < HOLD


async def test_no_answer_times_out(
    http_server: ServerFactory, autojump_clock: trio.testing.MockClock
) -> None:
    server = await http_server(LOOPBACKS[0])
    server.reply = Reply(hang=True)
    result = await probe(HttpCheck(timing=Timing(timeout=3.0)), server.address, server.port)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 3.0)


@pytest.mark.parametrize("address", LOOPBACKS, ids=str)
async def test_tls_without_verification(
    address: IPAddress, http_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    server = await http_server(address, server_tls)
    result = await probe(HttpCheck(tls=True, verify_tls=False), address, server.port)
    assert (result.ok, result.detail) == (True, "status 200")
    assert server.server_names == [None]  # no SNI for an IP address


async def test_tls_verification_rejects_a_self_signed_certificate(
    http_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    result = await probe(HttpCheck(tls=True), server.address, server.port)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("tls: self-signed certificate"), result.detail
    assert server.requests == []


async def test_tls_sends_the_host_as_server_name(
    http_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    check = HttpCheck(tls=True, verify_tls=False, host="health.test")
    assert (await probe(check, server.address, server.port)).ok
    assert server.server_names == ["health.test"]
    assert dict(server.requests[0].headers)[b"host"] == b"health.test"


async def test_plain_http_to_a_tls_server_fails(
    http_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    result = await probe(HttpCheck(timing=Timing(timeout=30)), server.address, server.port)
    assert not result.ok
    assert result.reason in {Reason.BAD_REPLY, Reason.ERROR}


async def test_probes_hold_no_connection_after_the_answer(
    http_server: ServerFactory, server_tls: ssl.SSLContext
) -> None:
    plain = await http_server(LOOPBACKS[0])
    secure = await http_server(LOOPBACKS[1], server_tls)
    checks = [
        (HttpCheck(), plain),
        (HttpCheck(expect_body="hello"), plain),
        (HttpCheck(tls=True, verify_tls=False, expect_body="hello"), secure),
    ]
    prober = Prober()
    for _ in range(5):
        for check, server in checks:
            assert (await prober(check, server.address, server.port)).ok
    # The server keeps a connection open as long as the client does.
    await trio.testing.wait_all_tasks_blocked()
    assert (plain.connections, secure.connections) == (10, 5)
    assert (plain.open_connections, secure.open_connections) == (0, 0)


async def test_tls_contexts_are_built_once_per_setting(
    http_server: ServerFactory, server_tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    contexts = TlsContexts()
    verifying = contexts.get(TlsSettings())
    assert contexts.get(TlsSettings()) is verifying
    assert verifying.verify_mode is ssl.CERT_REQUIRED
    assert contexts.get(TlsSettings(verify=False)).verify_mode is ssl.CERT_NONE
    with_ca = contexts.get(TlsSettings(ca_file=str(certificate[0])))
    assert with_ca is contexts.get(TlsSettings(ca_file=str(certificate[0])))
    assert with_ca not in (verifying, contexts.get(TlsSettings(verify=False)))
    check = HttpCheck(tls=True, verify_tls=False)
    assert (await probe_http(check, server.address, server.port, contexts)).ok
    result = await probe_http(HttpCheck(tls=True), server.address, server.port, contexts)
    assert result.detail.startswith("tls: self-signed certificate")


def test_url_for() -> None:
    assert (
        url_for(HttpCheck(path="/a?b=c"), ip_address("10.0.0.1"), 8080)
        == "http://10.0.0.1:8080/a?b=c"
    )
    assert (
        url_for(HttpCheck(tls=True), ip_address("2001:db8::1"), 443) == "https://[2001:db8::1]:443/"
    )


# -- trust: the system store, ca_file, client certificates, server names -----------------


def test_the_default_trust_is_the_systems_store() -> None:
    system = ssl.create_default_context()  # OpenSSL's default verify paths
    context = tls_context(TlsSettings())
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.get_ca_certs() == system.get_ca_certs()
    assert context.cert_store_stats() == system.cert_store_stats()


async def test_ca_file_replaces_the_system_store(
    http_server: ServerFactory, server_tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    check = HttpCheck(tls=True, host="health.test", ca_file=str(certificate[0]))
    result = await probe(check, server.address, server.port)
    assert (result.ok, result.detail) == (True, "status 200")
    assert server.server_names == ["health.test"]
    [ca] = tls_context(TlsSettings(ca_file=str(certificate[0]))).get_ca_certs()
    assert ca["subject"] == ((("commonName", "health.test"),),)
    # The name is checked against the certificate too.
    check = HttpCheck(tls=True, host="other.test", ca_file=str(certificate[0]))
    result = await probe(check, server.address, server.port)
    assert (result.reason, result.detail) == (Reason.ERROR, "tls: Hostname mismatch, certificate is not valid for 'other.test'.")  # fmt: skip


async def test_an_ip_literal_host_gets_no_sni_and_is_checked_as_an_address(
    http_server: ServerFactory, server_tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    server = await http_server(LOOPBACKS[0], server_tls)
    check = HttpCheck(tls=True, host="127.0.0.1", ca_file=str(certificate[0]))
    assert (await probe(check, ip_address("127.0.0.1"), server.port)).ok
    assert server.server_names == [None]
    assert dict(server.requests[0].headers)[b"host"] == b"127.0.0.1"


async def test_a_trailing_dot_is_left_out_of_the_server_name(
    http_server: ServerFactory, server_tls: ssl.SSLContext, certificate: tuple[Path, Path]
) -> None:
    server = await http_server(LOOPBACKS[1], server_tls)
    check = HttpCheck(tls=True, host="health.test.", ca_file=str(certificate[0]))
    assert (await probe(check, server.address, server.port)).ok
    assert server.server_names == ["health.test"]
    assert dict(server.requests[0].headers)[b"host"] == b"health.test."


async def test_an_ipv6_host_is_bracketed_in_the_host_header(http_server: ServerFactory) -> None:
    server = await http_server(LOOPBACKS[1])
    assert (await probe(HttpCheck(host="::1"), server.address, server.port)).ok
    assert dict(server.requests[0].headers)[b"host"] == b"[::1]"


@pytest.fixture(scope="session")
def client_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A client certificate, its key, and both in one file."""
    directory = tmp_path_factory.mktemp("client")
    cert, key, both = directory / "client.pem", directory / "client.key", directory / "both.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=director", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    return cert, key, both


async def test_mutual_tls(
    http_server: ServerFactory,
    certificate: tuple[Path, Path],
    client_certificate: tuple[Path, Path, Path],
) -> None:
    cert, key, both = (str(p) for p in client_certificate)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cert)
    server_tls.load_cert_chain(*certificate)
    server_tls.verify_mode = ssl.CERT_REQUIRED
    server = await http_server(LOOPBACKS[0], server_tls)
    ca = str(certificate[0])
    for check in (
        HttpCheck(tls=True, host="health.test", ca_file=ca, cert_file=cert, key_file=key),
        HttpCheck(tls=True, host="health.test", ca_file=ca, cert_file=both),
    ):
        result = await probe(check, server.address, server.port)
        assert (result.ok, result.detail) == (True, "status 200")
    result = await probe(HttpCheck(tls=True, host="health.test", ca_file=ca), server.address, server.port)  # fmt: skip
    # TLS 1.3: the server refuses after the client's handshake is done; the
    # client reads the alert, or the close if the alert is lost, or the reset
    # when the server closes with the request unread (Linux then drops what
    # the client had not yet read, the alert too).
    assert not result.ok
    assert (result.reason is Reason.ERROR and result.detail.startswith("tls: ")) or (
        (result.reason, result.detail)
        in {
            (Reason.BAD_REPLY, "Server disconnected without sending a response."),
            (Reason.ERROR, "ECONNRESET: Connection reset by peer"),
        }
    )
    assert len(server.requests) == 2


async def test_a_tls_file_gone_at_probe_time_is_an_error(tmp_path: Path) -> None:
    check = HttpCheck(tls=True, ca_file=str(tmp_path / "gone.pem"))
    result = await probe(check, LOOPBACKS[0], 1)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail == f"tls: ca_file {tmp_path}/gone.pem: ENOENT: No such file or directory"


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (TlsSettings(ca_file="/etc/hostname"), "ca_file /etc/hostname: [X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found"),
        (TlsSettings(ca_file="/dev/null"), "ca_file /dev/null: not a regular file"),
        (TlsSettings(ca_file="/etc"), "ca_file /etc: not a regular file"),
        (TlsSettings(verify=False, cert_file="/etc/hostname"), "cert_file /etc/hostname: [SSL] PEM lib (no private key in it? then set key_file)"),
    ],
)  # fmt: skip
def test_tls_setup_errors_name_the_key_and_file(settings: TlsSettings, error: str) -> None:
    with pytest.raises(TlsSetupError) as info:
        tls_context(settings)
    assert str(info.value) == error


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-days", "1", "-subj", "/CN=x", "-keyout", str(key), "-out", str(cert), "-passout", "pass:secret"],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    with pytest.raises(TlsSetupError) as info:
        tls_context(TlsSettings(cert_file=str(cert), key_file=str(key)))
    assert (info.value.key, info.value.path) == ("key_file", str(key))  # its fault, not cert_file's
    assert info.value.reason == "the private key is encrypted; give an unencrypted key"
