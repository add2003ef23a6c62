"""What an HTTP probe reports as its latency when the daemon is late to read
the answer: the server's time, or the daemon's lag (LAST PROBE in status).

A loopback server on the probe's own trio loop reads the request, writes
`200 OK` straight to the socket, then holds the loop `--hold` seconds (a busy
daemon: thousands of probes, a status, a start) before the probe gets its
turn to read. Per hold, `--probes` probes one after another; it prints the
reported latencies (median, max) and the time from each probe's start to its
verdict (median). With `--source DIR` the same runs import `director` from
DIR too (a `git worktree` of an older commit), each tree in a process of its
own, for a before and after on one host.

    .venv/bin/python bench/http_latency.py [--hold 0 0.2] [--probes 15] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, statistics, sys, time
from ipaddress import IPv4Address
import trio
from director.health.probes import probe
from director.health.spec import HttpCheck

HOLD, N = float(sys.argv[1]), int(sys.argv[2])
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

async def main():
    latency, verdict = [], []
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")

        async def handler(stream):
            await stream.receive_some(65536)
            os.write(stream.socket.fileno(), OK)
            if HOLD:
                time.sleep(HOLD)  # the loop held: the answer waits in the socket
            await trio.aclose_forcefully(stream)

        nursery.start_soon(trio.serve_listeners, handler, listeners)
        port = listeners[0].socket.getsockname()[1]
        for _ in range(N):
            start = trio.current_time()
            result = await probe(HttpCheck(), IPv4Address("127.0.0.1"), port)
            assert result.ok, result
            verdict.append(trio.current_time() - start)
            latency.append(result.latency)
        nursery.cancel_scope.cancel()
    print(json.dumps({
        "latency_median_ms": round(statistics.median(latency) * 1e3, 3),
        "latency_max_ms": round(max(latency) * 1e3, 3),
        "verdict_median_ms": round(statistics.median(verdict) * 1e3, 3),
    }))

trio.run(main)
"""


def run(tree: Path, hold: float, probes: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(hold), str(probes)],
        env=env,
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
        timeout=120 + probes * (hold + 2),
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=float, nargs="+", default=[0.0, 0.2])
    parser.add_argument("--probes", type=int, default=15)
    parser.add_argument("--source", type=Path, help="also import director from this checkout")
    args = parser.parse_args()
    trees = [REPO] + ([args.source.resolve()] if args.source else [])
    print(f"{'tree':40} {'hold ms':>8} {'latency median/max ms':>22} {'verdict median ms':>18}")
    for hold in args.hold:
        for tree in trees:
            f = run(tree, hold, args.probes)
            print(
                f"{tree!s:40} {hold * 1e3:8.0f} "
                f"{f['latency_median_ms']:>10.3f} / {f['latency_max_ms']:<9.3f} "
                f"{f['verdict_median_ms']:>18.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
