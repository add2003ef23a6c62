"""The Prometheus endpoint: a small HTTP/1.1 server on trio and h11.

Why not an async HTTP server of a framework: prometheus_client's ASGI app and
its own HTTP servers render inline, and rendering 10,000 real servers' series
is CPU work (about a third of a second) that must not run on the event loop
the probes, passes and control socket share. Here the loop only parses the
request (h11, the sans-IO HTTP/1.1 state machine httpx's stack is built on),
copies the engine's state (collect.take_snapshot, O(real servers) in dict
copies, a few milliseconds at 10,000) and writes the reply; the kernel read
runs in the control socket's kernel table's worker thread
(director.kernel.KernelTable: the read that `ipvsadm -L --stats` through the
control socket makes, one call at a time with the listings), and the render
in a worker thread of its own. A scrape then takes the GIL from the loop in
slices of sys.getswitchinterval() (5 ms), not for its whole length, and one
render runs at a time.

The kernel read is cached for KERNEL_CACHE seconds: two Prometheus servers
scraping together cost one netlink dump. A failed read is reported by
`director_ipvs_read_success 0`, never as a failed scrape.

GET or HEAD /metrics (any query) answers the metrics in the text format
0.0.4 (collect.py says why not OpenMetrics), gzipped when Accept-Encoding
allows; / answers a line pointing there; anything else 404, other methods 405. At most
MAX_CONNECTIONS connections at once (more are closed at once); a connection
idle for IDLE_TIMEOUT seconds, or that does not take a reply within
SEND_TIMEOUT, is closed. A listen address that cannot be bound (a port in
use, say) is logged and tried again every LISTEN_RETRY seconds: metrics never
stop the daemon.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
import stat
from functools import partial
from typing import Any

import h11
import trio

from director import log
from director.config.model import MetricsSettings
from director.engine import Director
from director.ipvs.errors import KernelError
from director.ipvs.model import ServiceEntry
from director.kernel import KernelTable
from director.metrics.collect import CONTENT_TYPE, render, take_snapshot
from director.oserror import strerror

KERNEL_CACHE = 2.0  # seconds a kernel read serves scrapes
MAX_CONNECTIONS = 16
IDLE_TIMEOUT = 60.0  # seconds; Prometheus keeps its connection between scrapes
SEND_TIMEOUT = 30.0  # seconds for a client to take a reply
LISTEN_RETRY = 10.0  # seconds between two attempts to bind the listen address
SOCKET_MODE = 0o666  # a Unix socket: any local user may scrape, as on 127.0.0.1
_MAX_HEADERS = 16 * 1024  # bytes of a request head
_RECEIVE = 16 * 1024
_INDEX = b"directord: metrics at /metrics\n"


class Scraper:
    """What one scrape does: read the kernel (cached), snapshot the engine,
    render in a worker thread. `reads` is the kernel table of control-socket
    listings (or any KernelTable); a non-threaded one renders inline (tests
    under trio's autojump clock)."""

    def __init__(
        self, director: Director, reads: KernelTable, *, cache: float = KERNEL_CACHE
    ) -> None:
        self.director = director
        self.reads = reads
        self.cache = cache
        self.kernel_reads = 0  # reads made (a meter for tests and benches)
        self._lock = trio.Lock()
        self._render = trio.CapacityLimiter(1)
        self._kernel: tuple[list[ServiceEntry] | None, str | None] = (None, None)
        self._read_at: float | None = None

    async def kernel(self) -> tuple[list[ServiceEntry] | None, str | None]:
        """The daemon's services as the kernel has them, with their stats
        (or None and why not): read at most once per `cache` seconds."""
        async with self._lock:
            now = trio.current_time()
            if self._read_at is not None and now - self._read_at < self.cache:
                return self._kernel
            director = self.director
            managed = director.owned | director.effective.service_keys()
            self.kernel_reads += 1
            try:
                self._kernel = (await self.reads.services(managed), None)
            except KernelError as error:
                self._kernel = (None, str(error))
            self._read_at = trio.current_time()
            return self._kernel

    async def scrape(self, gzipped: bool = False) -> bytes:
        """The exposition body (collect.render: the text format 0.0.4)."""
        entries, error = await self.kernel()
        bgp = await self.director.bgp.report(self.director.vips.maintenance)
        async with self._render:
            snapshot = take_snapshot(self.director, entries, error, bgp)
            return await self.reads.run_sync(partial(render, snapshot, gzipped))


async def serve(
    settings: MetricsSettings,
    scraper: Scraper,
    *,
    tried: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the endpoint until cancelled; reports through task_status where
    it listens ('127.0.0.1:9531', '[::1]:9531' or the socket's path) once
    bound. Returns at once when [metrics] listen is not set. `tried` is set
    once the first try to bind is logged, `metrics_listening` or
    `metrics_listen_failed` (the daemon waits for it before it goes on: a
    stop asked during the start is logged after it)."""
    if tried is None:
        tried = trio.Event()
    if settings.listen is None:
        tried.set()
        task_status.started("")
        return
    logger = log.get("metrics")
    sock, where = await _bind_retrying(settings, logger, tried)
    identity = os.stat(settings.path) if settings.path is not None else None
    try:
        logger.info("metrics_listening", listen=where)
        tried.set()
        task_status.started(where)
        await _accept_loop(trio.SocketListener(sock), scraper, logger)
    finally:
        sock.close()
        if settings.path is not None and identity is not None:
            _remove_if_ours(settings.path, identity)


async def _bind_retrying(
    settings: MetricsSettings, logger: Any, tried: trio.Event
) -> tuple[trio.socket.SocketType, str]:
    failures = 0
    while True:
        try:
            return await _bind(settings)
        except OSError as error:
            failures += 1
            count = failures
            while count % 10 == 0:
                count //= 10
            if count == 1:
                logger.error(
                    "metrics_listen_failed",
                    listen=settings.listen,
                    error=strerror(error),
                    attempts=failures,
                    retry_in=LISTEN_RETRY,
                )
            tried.set()
            await trio.sleep(LISTEN_RETRY)


async def _bind(settings: MetricsSettings) -> tuple[trio.socket.SocketType, str]:
    """A listening socket on `settings` (OSError when it cannot be had)."""
    if settings.path is not None:
        path = settings.path
        await _clear_stale(path)
        sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            os.chmod(path, SOCKET_MODE)
            sock.listen(MAX_CONNECTIONS)
        except BaseException:
            sock.close()
            raise
        return sock, path
    address = settings.address
    assert address is not None
    family = stdlib_socket.AF_INET6 if address.version == 6 else stdlib_socket.AF_INET
    sock = trio.socket.socket(family, stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        await sock.bind((str(address), settings.port))
        sock.listen(MAX_CONNECTIONS)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    host = f"[{address}]" if address.version == 6 else str(address)
    return sock, f"{host}:{port}"


async def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on (a daemon that died); raise
    OSError(EADDRINUSE) when someone does, or when `path` is not a socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EADDRINUSE, f"{path} exists and is not a socket")
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another process listens on {path}")


def _remove_if_ours(path: str, identity: os.stat_result) -> None:
    try:
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
            os.unlink(path)
    except OSError:
        pass


async def _accept_loop(listener: trio.SocketListener, scraper: Scraper, logger: Any) -> None:
    active = 0

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            await _serve_connection(stream, scraper, logger)
        except Exception:
            logger.exception("metrics_connection_failed")
        finally:
            active -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError as error:
                # Out of descriptors or memory, or the socket broke: the
                # daemon goes on; try again shortly.
                logger.warning("metrics_accept_failed", error=strerror(error))
                await trio.sleep(1.0)
                continue
            if active >= MAX_CONNECTIONS:
                await trio.aclose_forcefully(stream)
                continue
            active += 1
            nursery.start_soon(connection, stream)


async def _serve_connection(stream: trio.SocketStream, scraper: Scraper, logger: Any) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEADERS)
    while True:
        with trio.move_on_after(IDLE_TIMEOUT):
            request = await _next_request(stream, conn)
        if request is None:
            return
        status, headers, body = await _answer(request, scraper, logger)
        headers.append((b"content-length", str(len(body)).encode()))
        if request.method == b"HEAD":
            body = b""
        with trio.move_on_after(SEND_TIMEOUT) as sending:
            await _send(stream, conn, status, headers, body)
        if sending.cancelled_caught or conn.our_state is not h11.DONE:
            return
        if conn.their_state is not h11.DONE:
            return  # a body we did not read: close rather than parse it
        conn.start_next_cycle()


async def _next_request(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The next complete request (its body, if any, read and dropped), or
    None when the client closed or sent no valid HTTP."""
    request: h11.Request | None = None
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(_RECEIVE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.EndOfMessage):
            return request
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


async def _answer(
    request: h11.Request, scraper: Scraper, logger: Any
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = dict(request.headers)
    if request.method not in (b"GET", b"HEAD"):
        return 405, [(b"allow", b"GET, HEAD")], b"GET or HEAD only\n"
    path = request.target.split(b"?", 1)[0]
    if path == b"/":
        return 200, [(b"content-type", b"text/plain; charset=utf-8")], _INDEX
    if path != b"/metrics":
        return 404, [(b"content-type", b"text/plain; charset=utf-8")], b"not found\n"
    gzipped = _accepts_gzip(headers.get(b"accept-encoding", b"").decode("latin-1"))
    try:
        body = await scraper.scrape(gzipped)
    except Exception:  # a bug answers 500 and is logged; the daemon goes on
        logger.exception("metrics_scrape_failed")
        return 500, [(b"content-type", b"text/plain; charset=utf-8")], b"scrape failed\n"
    reply = [(b"content-type", CONTENT_TYPE.encode("latin-1")), (b"vary", b"accept-encoding")]
    if gzipped:
        reply.append((b"content-encoding", b"gzip"))
    return 200, reply, body


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() == "gzip":
            q = params.strip().lower()
            return not (q.startswith("q=") and q[2:].strip() in ("0", "0.0", "0.00", "0.000"))
    return False


async def _send(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
) -> None:
    try:
        data = conn.send(h11.Response(status_code=status, headers=headers))
        assert data is not None
        await stream.send_all(data)
        if body:
            data = conn.send(h11.Data(data=body))
            assert data is not None
            await stream.send_all(data)
        data = conn.send(h11.EndOfMessage())
        assert data is not None
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        return
