"""CPU per UDP and DNS probe: the prober alone, against a responder in another process.

    .venv/bin/python bench/udp_dns_probe.py [--probes 3000] [--rounds 3]
        [--old-tree /tmp/udp-before]

For each source tree (this checkout, and with --old-tree another one, e.g.
`git worktree add /tmp/udp-before <commit>`), taking turns each round, a
fresh interpreter imports `director` from that tree and runs, one at a time,
WARMUP then `--probes` probes of each kind against 127.0.0.1: `udp` (a
payload, any reply up), `udp-expect` (the reply matched by `expect`, the
search in a worker thread) and `dns` (a SOA query of the root, over UDP).
Printed per kind and tree: the medians over the rounds of the CPU time of
the prober's process (user + system, all threads) per probe, the wall time
per probe, and the mean latency the probes reported. Every probe must pass,
or the run aborts.

The responder (RESPONDER, a process of its own, so its CPU is not counted)
echoes UDP payloads as `echo:<payload>` on one port and answers DNS queries
on another (dnspython builds each distinct answer once). Host figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WARMUP = 50
KINDS = ("udp", "udp-expect", "dns")

RESPONDER = r"""
import select, socket
import dns.message, dns.rrset
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("127.0.0.1", 0))
names = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); names.bind(("127.0.0.1", 0))
print(echo.getsockname()[1], names.getsockname()[1], flush=True)
answers = {}
while True:
    for sock in select.select([echo, names], [], [])[0]:
        data, peer = sock.recvfrom(65535)
        if sock is echo:
            sock.sendto(b"echo:" + data, peer)
            continue
        key = data[2:]
        if key not in answers:
            reply = dns.message.make_response(dns.message.from_wire(data))
            reply.answer.append(dns.rrset.from_text(".", 300, "IN", "SOA",
                "a.root-servers.net. nstld.verisign-grs.com. 2026113000 1800 900 604800 86400"))
            answers[key] = reply.to_wire()[2:]
        sock.sendto(data[:2] + answers[key], peer)
"""


def measure(echo_port: int, dns_port: int, probes: int) -> dict[str, tuple[float, float, float]]:
    """Per kind: CPU and wall seconds per probe, and the mean latency reported."""
    from ipaddress import IPv4Address

    import trio

    from director.health.probes.dns import probe_dns
    from director.health.probes.udp import probe_udp
    from director.health.spec import DnsCheck, Timing, UdpCheck

    here = IPv4Address("127.0.0.1")
    timing = Timing(timeout=1.0)
    cases = {
        "udp": (probe_udp, UdpCheck(timing, payload=b"ping"), echo_port),
        "udp-expect": (
            probe_udp,
            UdpCheck(timing, payload=b"ping", expect="^echo:ping$"),
            echo_port,
        ),
        "dns": (probe_dns, DnsCheck(timing), dns_port),
    }
    figures: dict[str, tuple[float, float, float]] = {}

    async def run() -> None:
        for kind, (probe, check, port) in cases.items():
            for _ in range(WARMUP):
                result = await probe(check, here, port)  # type: ignore[operator]
                if not result.ok:
                    raise SystemExit(f"{kind}: {result}")
            cpu, wall, latency = time.process_time(), time.perf_counter(), 0.0
            for _ in range(probes):
                result = await probe(check, here, port)  # type: ignore[operator]
                if not result.ok:
                    raise SystemExit(f"{kind}: {result}")
                latency += result.latency
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            figures[kind] = (cpu / probes, wall / probes, latency / probes)

    trio.run(run)
    return figures


def run_tree(tree: Path, echo_port: int, dns_port: int, probes: int) -> dict[str, list[float]]:
    """`measure` in a fresh interpreter that imports `director` from `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", str(echo_port), str(dns_port)]
    argv += ["--probes", str(probes)]
    done = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr or done.stdout}")
    figures: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3, help="rows are medians of rounds")
    parser.add_argument("--old-tree", type=Path, help="another checkout to compare with")
    parser.add_argument(
        "--child", nargs=2, type=int, metavar=("ECHO", "DNS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.probes)))
        return
    trees = {"new": Path(__file__).resolve().parents[1]}
    if args.old_tree:
        trees["old"] = args.old_tree.resolve()
    responder = subprocess.Popen(
        [sys.executable, "-c", RESPONDER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert responder.stdout is not None
        echo_port, dns_port = map(int, responder.stdout.readline().split())
        rows: dict[tuple[str, str], list[list[float]]] = {}
        for round_ in range(args.rounds):
            names = list(trees) if round_ % 2 == 0 else list(reversed(trees))
            for name in names:
                figures = run_tree(trees[name], echo_port, dns_port, args.probes)
                for kind in KINDS:
                    rows.setdefault((kind, name), []).append(figures[kind])
    finally:
        responder.kill()
        responder.wait()
    print(f"{args.probes} probes of each kind, one at a time; medians of {args.rounds} rounds")
    print(f"{'kind':<11} {'tree':<5} {'CPU/probe':>10} {'wall/probe':>11} {'latency':>10}")
    for (kind, name), runs in rows.items():
        cpu, wall, latency = (statistics.median(r[i] for r in runs) * 1e6 for i in range(3))
        print(f"{kind:<11} {name:<5} {cpu:>7.1f} µs {wall:>8.1f} µs {latency:>7.1f} µs")


if __name__ == "__main__":
    main()
