"""The checker alone, on the host: how many TCP probes a second it makes on
one core, what each costs in CPU, and how late each starts.

`--targets` distinct (address, port) pairs, `--addresses` loopback addresses
127.1.0.1, 127.1.0.2, ... times ports from `--first-port`, each a listening
socket (backlog 4096) held by a forked sink process that accepts and closes
(common.fork_sink): the servers' CPU is not the checker's. This process runs
director's Checker with the real probes (the TCP probe) on every target,
every `--interval` seconds, for `--duration` seconds. Over the window after
`--warmup` seconds it reports:

- probes/s: results over the window, and the fraction of the target
  (targets / interval);
- CPU: utime + stime of this process (getrusage(RUSAGE_SELF), the sink is a
  child and not counted) over the window, as % of one core and µs per probe;
- lateness: probe start - its due time (median, p99, max), from the
  checker's `on_start` meter; a checker without it (before issue 8) gets
  "n/a", and the cadence below tells the story;
- cadence: for each probe, start - (previous start of the same target +
  interval) (0 on a steady grid), and the starts skipped (gaps of 2 or more
  intervals);
- every target probed: from the start to every target's first verdict, and
  the CPU spent meanwhile (with `--engine`, each server's first transition);
- verdicts: results by reason (all "ok" unless the host ran short of
  something).

`--engine` runs the same targets through the daemon's engine instead of a
bare Checker: `Director` over the in-memory IPVS backend (no kernel), the
config bench/scale.py writes (`--addresses` real servers per service, one
service per port; a 1 s interval, the daemon's tick), log lines to
/dev/null as JSON, `--metrics` for the metrics events too (the engine counts them; no endpoint is served). Every server is
up: per probe, the engine's own part (its `on_result`: metrics events, the
failure filter) and whatever else the daemon runs meanwhile (drift checks
every 5 s, the log writer) on top of the checker's. The probes are counted
by a wrapper of the engine's `on_result` (one call a probe).

`--source DIR` imports `director` from another checkout (a `git worktree` of
an older commit), to compare before and after on the same host:

    .venv/bin/python bench/checker.py [--targets 10000] [--duration 20]
    git worktree add /tmp/checker-before <commit>
    .venv/bin/python bench/checker.py --source /tmp/checker-before
"""

from __future__ import annotations

import argparse
import collections
import importlib
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, fork_sink, listener, raise_fd_limit, stop_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--addresses", type=int, default=100)
    parser.add_argument("--first-port", type=int, default=21000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument(
        "--tick",
        type=float,
        help="the checker's tick (s); by default the imported tree's engine.CHECK_TICK",
    )
    parser.add_argument("--source", type=Path, help="import director from this checkout")
    parser.add_argument("--engine", action="store_true", help="through Director, not a Checker")
    parser.add_argument("--metrics", action="store_true", help="with --engine: [metrics] on")
    parser.add_argument(
        "--initial",
        choices=("unknown", "up"),
        default="unknown",
        help="with --engine: the checks' `initial`",
    )
    args = parser.parse_args()
    if args.source is not None:
        sys.path.insert(0, str(args.source.resolve()))
    raise_fd_limit()
    endpoints = endpoints_for(args.targets, args.addresses, args.first_port)
    sockets = [listener(address, port) for address, port in endpoints]
    sink = fork_sink(sockets)
    for sock in sockets:
        sock.close()
    try:
        report = measure(args, endpoints)
        sink_cpu = cpu_seconds([sink])
    finally:
        stop_process(sink)
    report["sink CPU s (whole run)"] = f"{sink_cpu:.2f}"
    for name, value in report.items():
        print(f"{name:32} {value}")


def endpoints_for(count: int, addresses: int, first_port: int) -> list[tuple[str, int]]:
    ports = -(-count // addresses)
    pairs = [(f"127.1.{a // 250}.{a % 250 + 1}", first_port + p) for p in range(ports) for a in range(addresses)]  # fmt: skip
    return pairs[:count]


def measure(args: argparse.Namespace, endpoints: list[tuple[str, int]]) -> dict[str, str]:
    import trio

    checker_module = importlib.import_module("director.health.checker")
    spec = importlib.import_module("director.health.spec")
    print(f"director from {Path(checker_module.__file__ or '').parent.parent.parent}")
    check = spec.TcpCheck(timing=spec.Timing(interval=args.interval, timeout=args.timeout))
    targets = {i: (check, ip_address(a), p) for i, (a, p) in enumerate(endpoints)}
    window = {"open": False}
    reasons: collections.Counter[str] = collections.Counter()
    lateness: list[float] = []
    slips: list[float] = []
    skipped = 0
    last_start: dict[int, float] = {}
    interval = args.interval
    figures: dict[str, Any] = {}

    def on_result(key: int, before: Any, after: Any) -> None:
        nonlocal skipped
        start = trio.current_time() - after.last.latency
        previous = last_start.get(key)
        last_start[key] = start
        if previous is None and len(last_start) == len(targets):
            figures["filled"], figures["cpu_filled"] = time.monotonic(), cpu()
        if not window["open"]:
            return
        reasons[after.last.reason] += 1
        if previous is not None:
            gaps = round((start - previous) / interval)
            skipped += max(0, gaps - 1)
            slips.append(start - previous - max(1, gaps) * interval)

    def on_start(target: Any, late: float) -> None:
        if window["open"]:
            lateness.append(late)

    kwargs: dict[str, Callable[..., None] | random.Random] = {
        "on_result": on_result,
        "rng": random.Random(1),
    }
    runner: Callable[..., Any]
    if args.engine:
        runner = engine_runner(args, endpoints, on_result, on_start)
    else:
        tick = args.tick
        if tick is None:
            tick = getattr(importlib.import_module("director.engine"), "CHECK_TICK", 0.0)
        try:
            checker = checker_module.Checker(on_start=on_start, tick=tick, **kwargs)
        except TypeError:  # a checker from before the tick, or the on_start meter
            try:
                checker = checker_module.Checker(on_start=on_start, **kwargs)
            except TypeError:
                checker = checker_module.Checker(**kwargs)
        checker.set_targets(targets)
        runner = checker.run

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            started = trio.current_time()
            figures["begun"], figures["cpu_begun"] = time.monotonic(), cpu()
            await nursery.start(runner)
            await trio.sleep_until(started + args.warmup)
            window["open"] = True
            figures["cpu0"], figures["t0"] = cpu(), time.monotonic()
            await trio.sleep_until(started + args.duration)
            window["open"] = False
            figures["cpu1"], figures["t1"] = cpu(), time.monotonic()
            nursery.cancel_scope.cancel()

    trio.run(run)
    seconds = figures["t1"] - figures["t0"]
    user = figures["cpu1"][0] - figures["cpu0"][0]
    system = figures["cpu1"][1] - figures["cpu0"][1]
    used = user + system
    probes = sum(reasons.values())
    target_rate = len(targets) / interval
    report = {
        "targets": f"{len(targets)} every {interval:g} s ({target_rate:,.0f} probes/s asked)",
        "window s": f"{seconds:.1f}",
        "probes/s": f"{probes / seconds:,.0f} ({100 * probes / seconds / target_rate:.1f} % of target)",
        "CPU % of one core": f"{100 * used / seconds:.1f}",
        "CPU µs per probe": f"{1e6 * used / max(1, probes):.1f} (user {1e6 * user / max(1, probes):.1f}, system {1e6 * system / max(1, probes):.1f})",
        "lateness ms median/p99/max": spread(lateness),
        "cadence slip ms median/p99/max": spread(slips),
        "starts skipped": f"{skipped} ({100 * skipped / max(1, probes + skipped):.2f} %)",
        "every target probed after s": fill(figures),
        "verdicts": ", ".join(f"{r}: {n}" for r, n in reasons.most_common()),
        "max RSS MiB": f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}",
    }
    return report


def engine_runner(
    args: argparse.Namespace,
    endpoints: list[tuple[str, int]],
    on_result: Callable[..., None],
    on_start: Callable[[Any, float], None],
) -> Callable[..., Any]:
    """`Director.run` of a Director over the in-memory backend, checking
    `endpoints` (one service per port), with the bench's meters wrapped
    around the engine's own callbacks (keys: the real servers' ids)."""
    import os
    import tempfile

    from common import TcpTiming, VirtualService, directord_config

    from director import log
    from director.config import load_config
    from director.engine import Director
    from director.ipvs.memory import MemoryBackend
    from director.kernel import KernelTable

    by_port: dict[int, list[tuple[str, int]]] = {}
    for address, port in endpoints:
        by_port.setdefault(port, []).append((address, port))
    services = [VirtualService("10.1.0.1", port, tuple(rs)) for port, rs in sorted(by_port.items())]
    timing = TcpTiming(interval=args.interval, timeout=args.timeout)
    workdir = Path(tempfile.mkdtemp(prefix="director-bench-checker-"))
    text = directord_config(services, timing, workdir, args.initial)
    if args.metrics:
        text = text.replace("[control]", '[metrics]\nlisten = "127.0.0.1:9"\n\n[control]', 1)
    (workdir / "director.toml").write_text(text)
    log.configure("info", open(os.devnull, "w"), json=True)  # noqa: SIM115
    config = load_config(str(workdir / "director.toml"))
    director = Director(config, KernelTable(MemoryBackend(), threaded=False), rng=random.Random(1))
    checker = director.checker
    engine_result = checker._on_result
    keys: dict[Any, int] = {}

    def counted(key: Any, before: Any, after: Any) -> None:
        engine_result(key, before, after)
        on_result(keys.setdefault(key, len(keys)), before, after)

    engine_start = checker._on_start

    def started(target: Any, late: float) -> None:
        if engine_start is not None:
            engine_start(target, late)
        on_start(target, late)

    checker._on_result, checker._on_start = counted, started
    return director.run


def fill(figures: dict[str, Any]) -> str:
    """From the run's start to every target's first verdict: seconds, and
    the CPU seconds spent meanwhile (with --engine: the start's passes and
    each server's first transition, its log line, its table operation)."""
    if "filled" not in figures:
        return "not within the run"
    spent = sum(figures["cpu_filled"]) - sum(figures["cpu_begun"])
    return f"{figures['filled'] - figures['begun']:.2f} (CPU {spent:.2f} s)"


def cpu() -> tuple[float, float]:
    """User and system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return f"{1e3 * statistics.median(values):.2f} / {1e3 * p99:.2f} / {1e3 * values[-1]:.2f} ({len(values)} starts)"  # fmt: skip


if __name__ == "__main__":
    main()
