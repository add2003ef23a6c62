"""Detection time: from a real server's death to its removal from the kernel's
IPVS table, for directord and for keepalived's checker with equivalent TCP
check settings (see README.md for the mapping).

Each daemon runs alone in a network namespace of its own holding one virtual
service (10.0.0.1:8080) and four real servers 10.2.0.1-4:8080 in a second
namespace behind a veth pair, each a listening socket held by a forked process. A kill is SIGKILL to one of
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
from dataclasses import dataclass
from datetime import datetime
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
    inside,
    ipvs_table,
    listener,
    namespace,
    print_table,
    ratio,
    server_namespace,
    stop_process,
    wait_for,
)
from keepalived import Keepalived

VIP = ("10.0.0.1", 8080)
REAL_SERVERS = tuple((f"10.2.0.{n}", 8080) for n in range(1, 5))
SERVER_PREFIX = "10.2.0.0/16"
POLL = 0.02


class Daemon(Protocol):
    name: str

    def start(self, timeout: float) -> float: ...
    def stop(self) -> None: ...


DaemonFactory = Callable[[Sequence[VirtualService], TcpTiming, Path], Daemon]


def serve(servers_namespace: str, server: tuple[str, int]) -> int:
    with inside(servers_namespace):
        sock = listener(*server)
    pid = fork_sink([sock])
    sock.close()
    return pid


def in_table(server: tuple[str, int]) -> bool:
    return server in ipvs_table().get(VIP, set())


def out_of_table(server: tuple[str, int]) -> bool:
    return not in_table(server)


@dataclass(frozen=True)
class Kill:
    victim: tuple[str, int]
    killed_at: float  # wall clock, to compare with the daemon's log
    removed_after: float  # seconds, monotonic


def measure(
    factory: DaemonFactory, timing: TcpTiming, kills: int, workdir: Path, rng: random.Random
) -> tuple[Daemon, list[Kill]]:
    """Each kill and how long the server took to leave the table."""
    samples: list[Kill] = []
    service = VirtualService(*VIP, real_servers=REAL_SERVERS)
    daemon = factory([service], timing, workdir)
    with (
        namespace(f"bench-detect-{daemon.name}", [VIP[0]]),
        server_namespace(f"bench-detect-{daemon.name}-servers", SERVER_PREFIX) as servers,
    ):
        sinks = {server: serve(servers, server) for server in REAL_SERVERS}
        try:
            daemon.start(timeout=120)
            wait_for("every real server in the table", lambda: all(map(in_table, REAL_SERVERS)), 60)
            for kill in range(kills):
                victim = REAL_SERVERS[kill % len(REAL_SERVERS)]
                time.sleep(0.2 + rng.uniform(0, timing.interval))
                killed_at, killed_wall = time.monotonic(), time.time()
                stop_process(sinks[victim], signal.SIGKILL)
                gone_at = wait_for(
                    f"{daemon.name} to remove {victim}",
                    partial(out_of_table, victim),
                    timeout=30 * timing.interval * timing.fall,
                    poll=POLL,
                )
                samples.append(Kill(victim, killed_wall, gone_at - killed_at))
                print(
                    f"  {daemon.name}: kill {kill + 1}/{kills}: {samples[-1].removed_after:.3f} s",
                    flush=True,
                )
                sinks[victim] = serve(servers, victim)
                wait_for(f"{daemon.name} to restore {victim}", partial(in_table, victim), 60)
        finally:
            daemon.stop()
            for pid in sinks.values():
                stop_process(pid, signal.SIGKILL)
    return daemon, samples


def decomposition(daemon: Directord, kills: Sequence[Kill]) -> tuple[Summary, Summary] | None:
    """From directord's log: kill -> its real_server_down event (the probes'
    part), and that event -> removal from the table (the reconcile part)."""
    downs = [
        (str(e.get("rs")), datetime.fromisoformat(str(e["timestamp"])).timestamp())
        for e in daemon.events("real_server_down")
        if "timestamp" in e
    ]
    decided, applied = [], []
    for kill in kills:
        rs = f"{kill.victim[0]}:{kill.victim[1]}"
        at = next((t for name, t in downs if name == rs and t >= kill.killed_at), None)
        if at is None:
            return None
        decided.append(at - kill.killed_at)
        applied.append(kill.killed_at + kill.removed_after - at)
    return Summary.of(decided), Summary.of(applied)


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
            daemon, kills = measure(factories[name], timing, args.kills, workdir, rng)
            results[name] = Summary.of([kill.removed_after for kill in kills])
            if isinstance(daemon, Directord):
                parts = decomposition(daemon, kills)
                if parts:
                    results["  kill -> down event"], results["  down event -> removed"] = parts
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
