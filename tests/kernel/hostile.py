"""Hostile real servers for the kernel tests (stdlib only, so they start fast).

    python tests/kernel/hostile.py serve           # every behaviour, each on its port
    python tests/kernel/hostile.py canary --port 80

`serve` listens on every port of `BEHAVIOURS` at once (a thread per listener
and per connection): each port misbehaves in one way, and only when probed, so
one process in one namespace serves a whole test module. `canary` is a
well-behaved HTTP server whose /healthz answers 200, or 503 after SIGUSR1
(200 again after SIGUSR2): a server whose health a test flips at will, to see
that the daemon keeps converging. Both print "ready" once every socket is
bound.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# name: (protocol, port)
BEHAVIOURS: dict[str, tuple[str, int]] = {
    "lying_gzip": ("tcp", 8001),
    "endless_body": ("tcp", 8002),
    "gzip_bomb": ("tcp", 8003),
    "trickle_headers": ("tcp", 8004),
    "garbage_status": ("tcp", 8005),
    "huge_header": ("tcp", 8006),
    "tls_garbage": ("tcp", 8007),
    "accept_rst": ("tcp", 8008),
    "accept_hang": ("tcp", 8009),
    "endless_headers": ("tcp", 8010),
    "udp_garbage": ("udp", 9001),
}
HEALTHY_BODY = b"ok, healthy\n"
HEADER_LINE = 64 * 1024  # bytes in each long header line, CRLF included
SEND_TIMEOUT = 30.0  # a stalled client is given up after this long


def read_request(sock: socket.socket) -> bytes:
    """Whatever the client sent up to the end of its request head (or 64 KiB,
    or 2 s of silence): the behaviours answer after a request, as a server does."""
    data = b""
    sock.settimeout(2.0)
    try:
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    sock.settimeout(SEND_TIMEOUT)
    return data


def head(*lines: str) -> bytes:
    return "".join(f"{line}\r\n" for line in (*lines, "")).encode()


def lying_gzip(sock: socket.socket) -> None:
    """Content-Encoding: gzip over a plain body (whatever Accept-Encoding said)."""
    read_request(sock)
    sock.sendall(
        head(
            "HTTP/1.1 200 OK",
            "Content-Type: text/plain",
            "Content-Encoding: gzip",
            f"Content-Length: {len(HEALTHY_BODY)}",
            "Connection: close",
        )
        + HEALTHY_BODY
    )


def endless_body(sock: socket.socket) -> None:
    """200, then a body without a length that never ends."""
    read_request(sock)
    sock.sendall(head("HTTP/1.1 200 OK", "Content-Type: text/plain", "Connection: close"))
    filler = b"x" * 65536
    while True:
        sock.sendall(filler)


def gzip_blocks() -> tuple[bytes, bytes]:
    """A gzip stream's start (header and 1 MiB of zeros) and a block that,
    repeated after it, adds 1 MiB of zeros each time: about 1 KiB on the wire.
    A full flush resets the compressor, so every later block is the same."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    start = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return start, block


def gzip_bomb(sock: socket.socket) -> None:
    """A real gzip stream of zeros that never ends: each KiB sent inflates to 1 MiB."""
    start, block = gzip_blocks()
    read_request(sock)
    sock.sendall(
        head(
            "HTTP/1.1 200 OK",
            "Content-Type: text/plain",
            "Content-Encoding: gzip",
            "Connection: close",
        )
        + start
    )
    burst = block * 64
    while True:
        sock.sendall(burst)


def trickle_headers(sock: socket.socket) -> None:
    """A valid response, one byte a second."""
    read_request(sock)
    response = head("HTTP/1.1 200 OK", f"Content-Length: {len(HEALTHY_BODY)}") + HEALTHY_BODY
    for i in range(len(response)):
        sock.sendall(response[i : i + 1])
        time.sleep(1.0)


def garbage_status(sock: socket.socket) -> None:
    read_request(sock)
    sock.sendall(b"SPAM 2OO \xff\xfe not a status line\r\n" + head("Content-Length: 0"))


def filler_line() -> bytes:
    """A header line of HEADER_LINE bytes, CRLF included."""
    return b"X-Filler: " + b"a" * (HEADER_LINE - 12) + b"\r\n"


def huge_header(sock: socket.socket) -> None:
    """A valid 200 answer with one 64 KiB header line."""
    read_request(sock)
    sock.sendall(
        b"HTTP/1.1 200 OK\r\n"
        + filler_line()
        + head(f"Content-Length: {len(HEALTHY_BODY)}", "Connection: close")
        + HEALTHY_BODY
    )


def endless_headers(sock: socket.socket) -> None:
    """A 200 status line, then 64 KiB header lines without end."""
    read_request(sock)
    sock.sendall(b"HTTP/1.1 200 OK\r\n")
    line = filler_line()
    while True:
        sock.sendall(line)


def tls_garbage(sock: socket.socket) -> None:
    """Random bytes in answer to a TLS client hello."""
    sock.settimeout(2.0)
    with contextlib.suppress(OSError):
        sock.recv(4096)
    sock.settimeout(SEND_TIMEOUT)
    sock.sendall(os.urandom(16384))
    read_request(sock)  # until the client gives up


def accept_rst(sock: socket.socket) -> None:
    """Close at once with SO_LINGER 0: the client gets a reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def accept_hang(sock: socket.socket) -> None:
    """Accept, then neither read nor answer until the client leaves."""
    sock.settimeout(SEND_TIMEOUT)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


HANDLERS: dict[str, Callable[[socket.socket], None]] = {
    "lying_gzip": lying_gzip,
    "endless_body": endless_body,
    "gzip_bomb": gzip_bomb,
    "trickle_headers": trickle_headers,
    "garbage_status": garbage_status,
    "huge_header": huge_header,
    "endless_headers": endless_headers,
    "tls_garbage": tls_garbage,
    "accept_rst": accept_rst,
    "accept_hang": accept_hang,
}


def _handle(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
    # OSError: the client gave up, as a probe should.
    with conn, contextlib.suppress(OSError):
        handler(conn)


def _accept_forever(listener: socket.socket, handler: Callable[[socket.socket], None]) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_handle, args=(handler, conn), daemon=True).start()


def _udp_garbage(sock: socket.socket) -> None:
    """Answer every datagram with random bytes (never a valid reply: the
    first byte is 0xff)."""
    while True:
        _, peer = sock.recvfrom(65535)
        size = int.from_bytes(os.urandom(2), "big") % 512 + 1
        sock.sendto(b"\xff" + os.urandom(size), peer)


def serve() -> None:
    threads = []
    for name, (protocol, port) in BEHAVIOURS.items():
        if protocol == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", port))
            threads.append(threading.Thread(target=_udp_garbage, args=(sock,), daemon=True))
            continue
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(128)
        threads.append(
            threading.Thread(target=_accept_forever, args=(listener, HANDLERS[name]), daemon=True)
        )
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    threading.Event().wait()  # until killed


def canary(port: int) -> None:
    healthy = threading.Event()
    healthy.set()
    signal.signal(signal.SIGUSR1, lambda *_: healthy.clear())
    signal.signal(signal.SIGUSR2, lambda *_: healthy.set())

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            ok = self.path == "/healthz" and healthy.is_set()
            body = b"ok\n" if ok else b"unhealthy\n"
            self.send_response(200 if ok else 503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer(("0.0.0.0", port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever(poll_interval=0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("serve", "canary"))
    parser.add_argument("--port", type=int, default=80)
    args = parser.parse_args()
    if args.kind == "serve":
        serve()
    else:
        canary(args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
