"""Detection time: from a real server's death to its removal from the kernel's
IPVS table, for directord and for keepalived's checker with equivalent TCP
check settings (see README.md for the mapping).

Each daemon runs alone in a network namespace of its own holding one virtual
service (10.0.0.1:8080) and four real servers (10.0.1.1-4:8080 on loopback),
each a listening socket held by a forked process. A kill is SIGKILL to one of
those processes (its socket closes: connects are refused from then on); the
table is polled every 20 ms from /proc until the server is gone. The server
is then restarted and must come back before the next kill, which happens
after a random pause so that kills land at every phase of the check schedule.

    python tests/vm/run.py python bench/detection.py [--kills 20]
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    Directord,
    Summary,
    TcpTiming,
    VirtualService,
    fork_sink,
    ipvs_table,
    listener,
    namespace,
    print_table,
    ratio,
    stop_process,
    wait_for,
)
from keepalived import Keepalived

VIP = ("10.0.0.1", 8080)
REAL_SERVERS = tuple((f"10.0.1.{n}", 8080) for n in range(1, 5))
POLL = 0.02


class Daemon(Protocol):
    name: str

    def start(self, timeout: float) -> float: ...
    def stop(self) -> None: ...


DaemonFactory = Callable[[Sequence[VirtualService], TcpTiming, Path], Daemon]


def serve(server: tuple[str, int]) -> int:
    sock = listener(*server)
    pid = fork_sink([sock])
    sock.close()
    return pid


def in_table(server: tuple[str, int]) -> bool:
    return server in ipvs_table().get(VIP, set())


def out_of_table(server: tuple[str, int]) -> bool:
    return not in_table(server)


def measure(
    factory: DaemonFactory, timing: TcpTiming, kills: int, workdir: Path, rng: random.Random
) -> list[float]:
    """Seconds from each kill to the server's removal from the table."""
    samples: list[float] = []
    service = VirtualService(*VIP, real_servers=REAL_SERVERS)
    daemon = factory([service], timing, workdir)
    addresses = [VIP[0], *(address for address, _ in REAL_SERVERS)]
    with namespace(f"bench-detect-{daemon.name}", addresses):
        sinks = {server: serve(server) for server in REAL_SERVERS}
        try:
            daemon.start(timeout=120)
            wait_for("every real server in the table", lambda: all(map(in_table, REAL_SERVERS)), 60)
            for kill in range(kills):
                victim = REAL_SERVERS[kill % len(REAL_SERVERS)]
                time.sleep(0.2 + rng.uniform(0, timing.interval))
                killed_at = time.monotonic()
                stop_process(sinks[victim], signal.SIGKILL)
                gone_at = wait_for(
                    f"{daemon.name} to remove {victim}",
                    partial(out_of_table, victim),
                    timeout=30 * timing.interval * timing.fall,
                    poll=POLL,
                )
                samples.append(gone_at - killed_at)
                print(f"  {daemon.name}: kill {kill + 1}/{kills}: {samples[-1]:.3f} s", flush=True)
                sinks[victim] = serve(victim)
                wait_for(f"{daemon.name} to restore {victim}", partial(in_table, victim), 60)
        finally:
            daemon.stop()
            for pid in sinks.values():
                stop_process(pid, signal.SIGKILL)
    return samples


def report(results: dict[str, Summary]) -> None:
    rows = [
        [
            name,
            str(s.count),
            f"{s.median:.3f}",
            f"{s.p99:.3f}",
            f"{s.minimum:.3f}",
            f"{s.maximum:.3f}",
        ]
        for name, s in results.items()
    ]
    if {"directord", "keepalived"} <= results.keys():
        d, k = results["directord"], results["keepalived"]
        rows.append(
            [
                "directord/keepalived",
                "",
                ratio(d.median, k.median),
                ratio(d.p99, k.p99),
                ratio(d.minimum, k.minimum),
                ratio(d.maximum, k.maximum),
            ]
        )
    print_table(
        "Detection time, real server killed -> removed from the IPVS table (seconds)",
        ["daemon", "kills", "median", "p99", "min", "max"],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--interval", type=float, default=1.0, help="check interval (s)")
    parser.add_argument("--timeout", type=float, default=1.0, help="connect timeout (s)")
    parser.add_argument("--fall", type=int, default=2, help="failures in a row to remove")
    parser.add_argument("--only", choices=("directord", "keepalived"), action="append")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    timing = TcpTiming(interval=args.interval, timeout=args.timeout, fall=args.fall, rise=1)
    factories: dict[str, DaemonFactory] = {"directord": Directord, "keepalived": Keepalived}
    chosen = args.only or list(factories)
    print(
        f"detection: TCP check every {timing.interval:g} s, timeout {timing.timeout:g} s, "
        f"fall {timing.fall} (keepalived: delay_loop {timing.interval:g}, connect_timeout "
        f"{timing.timeout:g}, retry {timing.fall - 1}, delay_before_retry {timing.interval:g}); "
        f"{args.kills} kills each, table polled every {POLL * 1000:.0f} ms",
        flush=True,
    )
    results: dict[str, Summary] = {}
    with tempfile.TemporaryDirectory(prefix="director-bench-") as tmp:
        for name in chosen:
            rng = random.Random(args.seed)
            workdir = Path(tmp) / name
            samples = measure(factories[name], timing, args.kills, workdir, rng)
            results[name] = Summary.of(samples)
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
