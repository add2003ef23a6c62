"""A scrape of a 10,000-real-server daemon, timed on the host.

    .venv/bin/python bench/metrics.py [--services 1000] [--servers 10] [--scrapes 7]

Runs the engine on the in-memory backend (director.ipvs.memory, in a worker
thread as the netlink backend runs) with every real server probed by a fake
probe that answers at once (9 of 10 up), serves [metrics] on an ephemeral
127.0.0.1 port, and scrapes it over HTTP with httpx: the whole path, request
to last byte, as Prometheus would (gzipped, as Prometheus asks; then once
plain). The client runs in a worker thread, so that the loop's figures are
the server's. Each
scrape is timed; the median is the figure (target: under 1 s). A ticker task
meanwhile measures how long the event loop went without a turn (its longest
stall during the scrapes), the share of a scrape that runs on the loop.

The kernel's stats are all zero on the in-memory backend, but every
destination's series are there, as many as on a real table.
"""

from __future__ import annotations

import argparse
import gzip
import random
import statistics
import sys
import time
from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from director import log
from director.config import MetricsSettings, parse_config
from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress
from director.kernel import KernelTable
from director.metrics.endpoint import Scraper, serve


def config_text(services: int, servers: int) -> str:
    lines = ["[daemon]", "reconcile_interval = 60.0", "[metrics]", 'listen = "127.0.0.1:9531"']
    base = int(IPv4Address("10.64.0.0"))
    for s in range(services):
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "10.0.{s // 250}.{s % 250 + 1}:80"',
            'scheduler = "wlc"',
            "check = { type = 'tcp', interval = 1.0, timeout = 0.5 }",
        ]
        for r in range(servers):
            address = IPv4Address(base + s * servers + r)
            lines += ["[[virtual_server.real_server]]", f'address = "{address}:8080"']
    return "\n".join(lines) + "\n"


async def probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
    await trio.lowlevel.checkpoint()
    if int(address) % 10 == 0:
        return ProbeResult.failure(Reason.REFUSED, 0.0002)
    return ProbeResult.success(0.0003)


def ready(director: Director, backend: MemoryBackend, servers: int) -> bool:
    """Every real server probed, and the table holds the 9 in 10 that are up."""
    if sum(1 for state in director.checker.states().values() if state.last) < servers:
        return False
    return sum(len(e.destinations) for e in backend.services()) >= servers * 9 // 10


class Ticker:
    """The longest the event loop went without running this task."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await trio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now


async def bench(services: int, servers: int, scrapes: int) -> None:
    config = parse_config(config_text(services, servers))
    backend = MemoryBackend()
    director = Director(config, KernelTable(backend), probe=probe, rng=random.Random(1))
    scraper = Scraper(director, KernelTable(backend), cache=0.0)
    ticker = Ticker()
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        # The configured port may be taken on this host: an ephemeral one.
        listen = MetricsSettings("127.0.0.1:0", IPv4Address("127.0.0.1"), 0)
        where = await nursery.start(serve, listen, scraper)
        total = services * servers
        began = time.perf_counter()
        while not ready(director, backend, total):  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(0.2)
        print(
            f"table: {services} services x {servers} real servers = {total:,}; "
            f"all probed after {time.perf_counter() - began:.1f} s"
        )
        nursery.start_soon(ticker.run)
        await trio.sleep(2.0)
        print(f"loop stalled at most {ticker.worst * 1000:.1f} ms in 2 s without a scrape")
        url = f"http://{where}/metrics"
        times = []
        with httpx.Client(timeout=60.0) as client:

            def get(encoding: str) -> tuple[bytes, float]:
                """The body as sent (not decompressed: the client's work is
                not the server's), and the seconds from request to last byte."""
                began = time.perf_counter()
                with client.stream("GET", url, headers={"accept-encoding": encoding}) as reply:
                    reply.raise_for_status()
                    body = b"".join(reply.iter_raw())
                return body, time.perf_counter() - began

            for i in range(scrapes + 1):
                ticker.worst = 0.0
                body, took = await trio.to_thread.run_sync(get, "gzip")
                stalled = ticker.worst
                text = gzip.decompress(body).decode()
                samples = sum(1 for line in text.splitlines() if not line.startswith("#"))
                label = "warm-up" if i == 0 else f"scrape {i}"
                print(
                    f"{label}: {took:.3f} s, {len(text) / 1e6:.1f} MB "
                    f"({len(body) / 1e6:.1f} MB gzipped), {samples:,} samples, "
                    f"loop stalled at most {stalled * 1000:.1f} ms"
                )
                if i:
                    times.append(took)
                # The decompression and count above ran on the loop: let the
                # ticker see that gap before the next scrape's figure starts.
                await trio.sleep(0.05)
            ticker.worst = 0.0
            body, took = await trio.to_thread.run_sync(get, "identity")
            print(
                f"not gzipped: {took:.3f} s, {len(body) / 1e6:.1f} MB, "
                f"loop stalled at most {ticker.worst * 1000:.1f} ms"
            )
        median = statistics.median(times)
        verdict = "under" if median < 1.0 else "OVER"
        print(f"median of {scrapes}: {median:.3f} s ({verdict} the 1 s target)")
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=10, help="real servers per service")
    parser.add_argument("--scrapes", type=int, default=7)
    args = parser.parse_args(argv)
    log.configure("warning", json=False)
    trio.run(bench, args.services, args.servers, args.scrapes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
