"""Tiny real servers for the end-to-end tests (stdlib only, so they start fast).

    python tests/kernel/servers.py http --port 80 --name rs1
    python tests/kernel/servers.py udp --port 9000 --name u1

The HTTP server answers / with its name and /healthz with 200 (anything else
is 404); the UDP server answers every datagram with its name, a space and the
payload. Both print "ready" on stdout once their socket is bound, so whoever
started them can wait for that line instead of polling.
"""

from __future__ import annotations

import argparse
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_http(port: int, name: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:
            pages = {"/": f"{name}\n", "/healthz": "ok\n"}
            body = pages.get(self.path, "not found\n").encode()
            self.send_response(200 if self.path in pages else 404)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    with ThreadingHTTPServer(("0.0.0.0", port), Handler) as server:
        print("ready", flush=True)
        server.serve_forever()


def serve_udp(port: int, name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", port))
        print("ready", flush=True)
        while True:
            payload, peer = sock.recvfrom(65535)
            sock.sendto(name.encode() + b" " + payload, peer)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("http", "udp"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    args = parser.parse_args()
    (serve_http if args.kind == "http" else serve_udp)(args.port, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
