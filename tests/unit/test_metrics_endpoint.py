"""The metrics endpoint over real loopback and Unix sockets: what it answers,
keep-alive, gzip, a stale socket file, a port in use, and a client that
misbehaves. The engine runs on the in-memory backend; these tests run on
trio's real clock (sockets, no sleeps) except the one that waits for a retry."""

from __future__ import annotations

import gzip
import os
import socket
from collections.abc import AsyncIterator
from functools import partial
from ipaddress import ip_address
from pathlib import Path

import pytest
import structlog.testing
import trio
import trio.testing
from test_engine import FakeNetwork, make_director
from test_metrics import METRICS, parse, value

from director import metrics
from director.config.model import MetricsSettings
from director.engine import Director
from director.ipvs.memory import MemoryBackend
from director.metrics.endpoint import LISTEN_RETRY, Scraper, serve

LOOPBACK = MetricsSettings("127.0.0.1:0", ip_address("127.0.0.1"), 0)


async def request(where: str, raw: bytes) -> bytes:
    """Send `raw`, read until the server closes (a reset too: a server that
    closes with a request unread resets)."""
    if where.startswith("/"):
        stream: trio.abc.Stream = await trio.open_unix_socket(where)
    else:
        host, port = where.rsplit(":", 1)
        stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
    async with stream:
        await stream.send_all(raw)
        data = b""
        with trio.fail_after(10):
            try:
                while chunk := await stream.receive_some(65536):
                    data += chunk
            except trio.BrokenResourceError:
                pass
    return data


def get(path: str = "/metrics", *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


def split(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.fixture
async def director() -> AsyncIterator[Director]:
    director = make_director(MemoryBackend(), FakeNetwork("10.0.1.1", "10.0.1.2"), extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        yield director
        nursery.cancel_scope.cancel()


@pytest.fixture
async def where(director: Director) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(serve, LOOPBACK, Scraper(director, director.kernel))
        nursery.cancel_scope.cancel()


async def test_get_metrics_answers_the_text_format(where: str) -> None:
    status, headers, body = split(await request(where, get()))
    assert status == 200
    assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    samples = parse(body.decode())
    assert value(samples, "director_ipvs_read_success") == 1
    assert any(name.startswith("process_") for name, _ in samples)


async def test_a_scrape_is_gzipped_when_the_client_accepts_it(where: str) -> None:
    status, headers, body = split(await request(where, get("/metrics", "Accept-Encoding: gzip")))
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert "director_build_info" in gzip.decompress(body).decode()
    refused = get("/metrics", "Accept-Encoding: gzip;q=0, identity")
    _, headers, body = split(await request(where, refused))
    assert "content-encoding" not in headers
    assert body.startswith(b"# HELP")


async def test_head_gives_the_length_without_the_body(where: str) -> None:
    status, headers, body = split(await request(where, get(method="HEAD")))
    assert status == 200 and body == b""
    assert int(headers["content-length"]) > 1000


async def test_other_paths_and_methods_are_refused(where: str) -> None:
    assert split(await request(where, get("/")))[0] == 200
    assert split(await request(where, get("/metrics?x=1")))[0] == 200
    assert split(await request(where, get("/favicon.ico")))[0] == 404
    status, headers, _ = split(await request(where, get(method="POST")))
    assert (status, headers["allow"]) == (405, "GET, HEAD")


async def test_two_requests_on_one_connection(where: str) -> None:
    keep = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"
    reply = await request(where, keep + get())
    assert reply.count(b"HTTP/1.1 200 ") == 2


async def test_garbage_closes_the_connection_and_the_server_goes_on(where: str) -> None:
    assert await request(where, b"\x00\x01 not http\r\n\r\n") == b""
    assert await request(where, b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\n\r\n") == b""
    assert split(await request(where, get()))[0] == 200


async def test_a_client_that_sends_half_a_request_holds_nothing_up(where: str) -> None:
    host, port = where.rsplit(":", 1)
    async with await trio.open_tcp_stream(host, int(port)) as idle:
        await idle.send_all(b"GET /metrics HTTP/1.1\r\n")
        assert split(await request(where, get()))[0] == 200


async def test_a_unix_socket_replaces_a_stale_file_and_is_removed_at_the_end(
    director: Director,
) -> None:
    path = Path("/tmp") / f"director-metrics-test-{os.getpid()}.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a daemon that died
    settings = MetricsSettings(str(path), path=str(path))
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve, settings, Scraper(director, director.kernel)) == str(path)
        assert oct(path.stat().st_mode & 0o777) == "0o666"
        assert split(await request(str(path), get()))[0] == 200
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_a_socket_path_someone_listens_on_is_not_taken(
    director: Director, autojump_clock: trio.testing.MockClock
) -> None:
    path = Path("/tmp") / f"director-metrics-busy-{os.getpid()}.sock"
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(path))
    other.listen()
    try:
        settings = MetricsSettings(str(path), path=str(path))
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, settings, Scraper(director, director.kernel))
                await trio.sleep(LISTEN_RETRY / 2)
                nursery.cancel_scope.cancel()
        failed = [e for e in logs if e["event"] == "metrics_listen_failed"]
        assert "another process listens" in failed[0]["error"]
        assert path.exists()
    finally:
        other.close()
        path.unlink()


async def test_a_port_in_use_is_retried_until_it_is_free(
    director: Director, autojump_clock: trio.testing.MockClock
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    settings = MetricsSettings(f"127.0.0.1:{port}", ip_address("127.0.0.1"), port)
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            started = trio.Event()

            async def watch() -> None:
                await nursery.start(serve, settings, Scraper(director, director.kernel))
                started.set()

            nursery.start_soon(watch)
            await trio.sleep(LISTEN_RETRY * 2.5)
            assert not started.is_set()
            holder.close()
            await trio.sleep(LISTEN_RETRY)
            assert started.is_set()
            nursery.cancel_scope.cancel()
    failed = [e for e in logs if e["event"] == "metrics_listen_failed"]
    assert [e["attempts"] for e in failed] == [1]  # then quiet until the 10th
    assert any(e["event"] == "metrics_listening" for e in logs)


async def test_metrics_serve_does_nothing_without_listen(director: Director) -> None:
    async with trio.open_nursery() as nursery:
        assert (
            await nursery.start(metrics.serve, MetricsSettings(), director, director.kernel) == ""
        )


async def test_the_package_serve_listens_when_asked(director: Director) -> None:
    async with trio.open_nursery() as nursery:
        where = await nursery.start(metrics.serve, LOOPBACK, director, director.kernel)
        assert where.startswith("127.0.0.1:")
        assert split(await request(where, get()))[0] == 200
        nursery.cancel_scope.cancel()


async def test_tried_is_set_after_the_first_try_to_bind_whatever_came_of_it(
    director: Director, autojump_clock: trio.testing.MockClock
) -> None:
    """The daemon waits for `tried` before it reads signals (trial 36, L4:
    `metrics_listening` was logged after a stop's `stopping`): set once the
    first try is logged, bound or failed (a port in use is tried again
    every LISTEN_RETRY s, and the daemon must not wait for that); at once
    without [metrics]."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    busy = MetricsSettings(f"127.0.0.1:{port}", ip_address("127.0.0.1"), port)
    try:
        for settings, logged in (
            (MetricsSettings(), None),
            (busy, "metrics_listen_failed"),
            (LOOPBACK, "metrics_listening"),
        ):
            tried = trio.Event()
            with structlog.testing.capture_logs() as logs:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        partial(metrics.serve, settings, director, director.kernel, tried=tried)
                    )
                    with trio.fail_after(1):
                        await tried.wait()
                    events = [e["event"] for e in logs]
                    nursery.cancel_scope.cancel()
            assert events == ([] if logged is None else [logged]), (settings, events)
    finally:
        holder.close()
