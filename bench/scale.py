"""Scale: directord and keepalived's checker each TCP-checking 10,000 real
servers behind 100 services every second, one after the other in namespaces
of their own; their CPU, memory and the probe rate they actually achieve.

Service i is 10.1.0.1:(20000 + i); its real servers are 10.2.(i+1).(j+1) on
the same port, j < 100, so every (address, port) is distinct. They live in a
second namespace behind a veth pair, where all of 10.2/16 is local: one
listening socket per port, bound to 0.0.0.0, accepts for all of them; forked
sink processes accept and close, counting connections: the probe rate is that
count over the measuring window. CPU % is utime+stime of the daemon's process
tree over the window (100 % = one core); memory is VmRSS at the end and VmHWM
(peak RSS), summed over the tree. "machine ms/probe" is the whole guest's busy
CPU over the window (/proc/stat) a probe: the kernel charges a probe's
packets to whichever process or softirq handles them (the daemon's connect
and close, the sink's accept and close), so this counts all of it, the
sink's and the bench's own (small) share included.

`--only keepalived-alpha` (or all three, `--only directord --only keepalived
--only keepalived-alpha`) adds keepalived with `alpha`: every real server
down until its first good check, which is how directord starts (plain
keepalived puts every server in the table before any check, so its "full"
is its start-up alone). Its "ready" is its checker process's pid file.
`--only directord-up` runs directord with `initial = "up"` checks, which
start as plain keepalived does: every server in the table before its first
probe; its warm-up begins once every server had its first verdict (each
a transition), so that its window is the steady state too. The ratio rows pair each directord with the keepalived that starts
as it does (directord/keepalived-alpha, directord-up/keepalived), then with
the other.

For directord, after the window, the engine's own costs at this size (issue 8):

- verdict to kernel: `--transitions` times, one real server is made to fail
  at once (a `prohibit` route to its address in the daemon's namespace: its
  connects fail with EACCES) and then restored; each time, the seconds from
  the daemon's `real_server_down` (or `real_server_up`) event to its
  `ipvs_op` for that server (the kernel acknowledged the change) and to the
  moment /proc/net/ip_vs shows it (polled every 5 ms: a substring test of the
  raw file, no parsing). Medians; compare a run of 10 servers
  (`--services 1 --per-service 10`) with one of 10,000 (the ratio must stay
  below 2);
- reload with one server changed: the config file rewritten with one real
  server's weight changed, SIGHUP, and the daemon's CPU (utime + stime)
  until its `reloaded` event, and the `ipvs_op` events it logged meanwhile
  (the target: exactly 1).

    DIRECTOR_VM_MEMORY=4G python tests/vm/run.py python bench/scale.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    AcceptCounter,
    BenchProcess,
    Directord,
    TcpTiming,
    VirtualService,
    cpu_seconds,
    descendants,
    destination_count,
    fork_sink,
    inside,
    listener,
    machine_cpu_seconds,
    memory_kib,
    namespace,
    print_table,
    process_counters,
    raise_fd_limit,
    ratio,
    server_namespace,
    stop_process,
)
from keepalived import Keepalived, KeepalivedAlpha

VIP = "10.1.0.1"
FIRST_PORT = 20000
SERVER_PREFIX = "10.2.0.0/16"


class DirectordUp(Directord):
    """directord with `initial = "up"` checks: every real server in the
    table before its first probe, as plain keepalived starts."""

    name = "directord-up"
    initial = "up"


class Floor(BenchProcess):
    """bench/floor.py: the least a CPython TCP checker does (a yardstick,
    no table: its "full" is never). Ready when it printed "ready"."""

    name = "floor"
    reuse = False

    def __init__(self, services: Sequence[VirtualService], timing: TcpTiming, workdir: Path):
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets = workdir / "targets"
        self.targets.write_text("".join(f"{a} {p}\n" for s in services for a, p in s.real_servers))
        self.timing = timing

    def start(self, timeout: float) -> float:
        started = time.monotonic()
        command = [sys.executable, str(Path(__file__).with_name("floor.py")), str(self.targets)]
        command += ["--interval", str(self.timing.interval), "--timeout", str(self.timing.timeout)]
        self.process = subprocess.Popen(
            command + (["--reuse"] if self.reuse else []), stdout=subprocess.PIPE
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError("bench/floor.py did not start")
        return time.monotonic() - started


class FloorReuse(Floor):
    """bench/floor.py --reuse: sockets disconnected and kept, as directord's."""

    name = "floor-reuse"
    reuse = True


class Daemon(Protocol):
    name: str

    def start(self, timeout: float) -> float: ...
    def stop(self) -> None: ...
    @property
    def pid(self) -> int: ...


DaemonFactory = Callable[[Sequence[VirtualService], TcpTiming, Path], Daemon]


@dataclass(frozen=True)
class Load:
    services: int
    per_service: int
    timing: TcpTiming

    @property
    def real_servers(self) -> int:
        return self.services * self.per_service

    @property
    def target_rate(self) -> float:
        return self.real_servers / self.timing.interval

    def virtual_services(self) -> list[VirtualService]:
        if self.services > 254 or self.per_service > 254:
            raise ValueError("at most 254 services of 254 real servers each")
        return [
            VirtualService(
                VIP,
                FIRST_PORT + i,
                tuple((f"10.2.{i + 1}.{j + 1}", FIRST_PORT + i) for j in range(self.per_service)),
            )
            for i in range(self.services)
        ]


@dataclass(frozen=True)
class EngineFigures:
    """directord's engine at this size: medians of verdict -> ipvs_op and
    verdict -> seen in /proc, in seconds; the reload's CPU and operations."""

    transitions: int
    to_op: float
    to_table: float
    reload_cpu: float
    reload_ops: int


@dataclass(frozen=True)
class Measurement:
    name: str
    ready_after: float  # start -> the daemon's own readiness
    full_after: float | None  # start -> every real server in the table
    window: float
    probes: int
    cpu_percent: float
    rss_mib: float
    hwm_mib: float
    fewest_in_table: int
    sink_cpu_percent: float
    machine_cpu_percent: float = float("nan")  # the whole machine's busy CPU over the window
    system_percent: float = float("nan")  # of cpu_percent, the kernel's (stime)
    engine: EngineFigures | None = None

    def probe_rate(self) -> float:
        return self.probes / self.window

    def cpu_ms_per_probe(self) -> float:
        return 10 * self.cpu_percent / self.probe_rate() if self.probes else float("nan")

    def machine_ms_per_probe(self) -> float:
        return 10 * self.machine_cpu_percent / self.probe_rate() if self.probes else float("nan")


def wait_full(name: str, wanted: int, started: float, timeout: float) -> float | None:
    """Seconds from `started` until `wanted` destinations were in the table;
    None if that did not happen within `timeout` (the benchmark goes on: a
    daemon that cannot keep every server up under this load is a result)."""
    last_report = time.monotonic()
    while (count := destination_count()) < wanted:
        now = time.monotonic()
        if now - started > timeout:
            print(
                f"  {name}: only {count} of {wanted} in the table after {timeout:g} s", flush=True
            )
            return None
        if now - last_report >= 10:
            print(f"  {name}: {count} of {wanted} in the table", flush=True)
            last_report = now
        time.sleep(0.5)
    full_after = time.monotonic() - started
    print(f"  {name}: all {wanted} in the table after {full_after:.1f} s", flush=True)
    return full_after


def wait_first_verdicts(daemon: Directord, wanted: int, started: float, timeout: float) -> None:
    """Until `wanted` real servers had their first verdict (a first success
    is a `real_server_up` line): with `initial = "up"` the table is full
    before any probe, and the window would otherwise measure the storm of
    first verdicts (each a transition: a log line and a pass), not the
    steady state it measures for the others."""
    log = daemon.workdir / "directord.log"
    while True:
        count = log.read_bytes().count(b'"real_server_up"') if log.exists() else 0
        if count >= wanted or time.monotonic() - started > timeout:
            break
        time.sleep(1.0)
    print(f"  {daemon.name}: {count} first verdicts up after {time.monotonic() - started:.1f} s", flush=True)  # fmt: skip


def _stamp(event: dict[str, object]) -> float:
    """An event's ISO UTC timestamp (director.log) as a time.time() value."""
    text = str(event["timestamp"]).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(text).timestamp()


def _in_proc_table(address: str, port: int) -> bool:
    needle = f"{socket.inet_aton(address).hex().upper()}:{port:04X}"
    with open("/proc/thread-self/net/ip_vs") as table:
        return needle in table.read()


def _wait_event(daemon: Directord, event: str, after: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(daemon.events(event)) <= after:
        if time.monotonic() > deadline:
            raise TimeoutError(f"directord: no {event} event after {timeout:g} s")
        time.sleep(0.05)


def _op_event(
    daemon: Directord, rs: str, going_down: bool, after: int, since: float, timeout: float = 60.0
) -> dict[str, object]:
    """The ipvs_op event that took `rs` out (or put it back): the log is
    written from a queue, so it may come a little after the kernel change."""
    wanted = "delete_destination" if going_down else "add_destination"
    deadline = time.monotonic() + timeout
    while True:
        for e in daemon.events("ipvs_op")[after:]:
            if e.get("rs") == rs and e.get("op") == wanted:
                return e
        for e in daemon.events("ipvs_ops"):  # a run of like operations, rs a list
            if rs in e.get("rs", ()) and e.get("op") == wanted and _stamp(e) >= since:
                return e
        if time.monotonic() > deadline:
            raise TimeoutError(f"directord: no {wanted} of {rs} after {timeout:g} s")
        time.sleep(0.05)


def engine_figures(daemon: Directord, load: Load, transitions: int) -> EngineFigures:
    """Verdict-to-kernel latency and the cost of a one-server reload (see the
    module's docstring)."""
    to_op: list[float] = []
    to_table: list[float] = []
    for n in range(transitions):
        i = n % load.services
        address, port = f"10.2.{i + 1}.{n // load.services % load.per_service + 1}", FIRST_PORT + i
        rs = f"{address}:{port}"
        for going_down in (True, False):
            event = "real_server_down" if going_down else "real_server_up"
            ops_before = len(daemon.events("ipvs_op"))
            seen_before = len(daemon.events(event))
            verb = "add" if going_down else "del"
            subprocess.run(
                ["ip", "route", verb, "prohibit", f"{address}/32"], check=True, capture_output=True
            )
            deadline = time.monotonic() + 60.0
            while _in_proc_table(address, port) == going_down:
                if time.monotonic() > deadline:
                    said = [r for r in daemon.events(None) if rs in str(r.get("rs", ""))]
                    for record in said[-12:]:
                        print(f"  directord said: {record}", flush=True)
                    state = "in" if going_down else "out of"
                    raise TimeoutError(f"{rs} still {state} /proc/net/ip_vs after 60 s")
                time.sleep(0.005)
            changed_at = time.time()
            _wait_event(daemon, event, seen_before)
            verdict = next(e for e in daemon.events(event)[seen_before:] if e.get("rs") == rs)
            op = _op_event(daemon, rs, going_down, ops_before, _stamp(verdict))
            to_op.append(_stamp(op) - _stamp(verdict))
            to_table.append(changed_at - _stamp(verdict))
    # Reload: the first real server of the first service gets weight 3.
    text = daemon.config.read_text()
    server = f'address = "10.2.1.1:{FIRST_PORT}"'
    daemon.config.write_text(text.replace(server, server + "\nweight = 3", 1))
    reloads = len(daemon.events("reloaded"))
    pids = descendants(daemon.pid)
    cpu0 = cpu_seconds(pids)
    os.kill(daemon.pid, signal.SIGHUP)
    _wait_event(daemon, "reloaded", reloads)
    cpu1 = cpu_seconds(pids)
    reloaded = daemon.events("reloaded")[reloads]
    # The ipvs_op events between the reload's start and its end.
    records = daemon.events(None)
    start = max(i for i, r in enumerate(records) if r.get("event") == "reload")
    end = next(i for i, r in enumerate(records) if i > start and r.get("event") == "reloaded")
    ops = sum(
        r.get("count", 1) for r in records[start:end] if r.get("event") in ("ipvs_op", "ipvs_ops")
    )
    print(
        f"  directord: reload: daemon CPU {1000 * (cpu1 - cpu0):.1f} ms over the wait "
        f"(probes included), its own count {reloaded.get('cpu_ms')} ms "
        f"(the parse {reloaded.get('parse_cpu_ms', '?')} ms), "
        f"{reloaded.get('operations')} operations, {ops} ipvs_op, "
        f"{1000 * (_stamp(records[end]) - _stamp(records[start])):.0f} ms from reload to reloaded",
        flush=True,
    )
    return EngineFigures(
        transitions=len(to_op),
        to_op=statistics.median(to_op),
        to_table=statistics.median(to_table),
        reload_cpu=float(str(reloaded.get("cpu_ms", "nan"))) / 1000,
        reload_ops=ops,
    )


def measure(
    factory: DaemonFactory,
    load: Load,
    warmup: float,
    window: float,
    sinks: int,
    fill_timeout: float,
    workdir: Path,
    transitions: int = 0,
) -> Measurement:
    daemon = factory(load.virtual_services(), load.timing, workdir)
    counter = AcceptCounter(sinks)
    with (
        namespace(f"bench-scale-{daemon.name}"),
        server_namespace(f"bench-scale-{daemon.name}-servers", SERVER_PREFIX) as servers,
    ):
        with inside(servers):
            sockets = [listener("0.0.0.0", FIRST_PORT + i) for i in range(load.services)]
        sink_pids = [fork_sink(sockets, counter, slot) for slot in range(sinks)]
        for sock in sockets:
            sock.close()
        try:
            started = time.monotonic()
            ready_after = daemon.start(timeout=fill_timeout)
            print(f"  {daemon.name}: ready after {ready_after:.1f} s", flush=True)
            full_after = (
                None
                if isinstance(daemon, Floor)
                else wait_full(daemon.name, load.real_servers, started, fill_timeout)
            )
            if isinstance(daemon, DirectordUp):
                wait_first_verdicts(daemon, load.real_servers, started, fill_timeout)
            time.sleep(warmup)
            pids = descendants(daemon.pid)
            system0 = cpu_seconds(pids, system=True)
            counts0 = process_counters(pids)
            cpu0, sink0, machine0, probes0, t0 = (
                cpu_seconds(pids),
                cpu_seconds(sink_pids),
                machine_cpu_seconds(),
                counter.total(),
                time.monotonic(),
            )
            fewest = destination_count()
            while time.monotonic() - t0 < window:
                time.sleep(min(2.0, max(0.0, window - (time.monotonic() - t0))))
                fewest = min(fewest, destination_count())
            pids = descendants(daemon.pid)
            system1 = cpu_seconds(pids, system=True)
            counts1 = process_counters(pids)
            cpu1, sink1, machine1, probes1, t1 = (
                cpu_seconds(pids),
                cpu_seconds(sink_pids),
                machine_cpu_seconds(),
                counter.total(),
                time.monotonic(),
            )
            elapsed = t1 - t0
            measurement = Measurement(
                name=daemon.name,
                ready_after=ready_after,
                full_after=full_after,
                window=elapsed,
                probes=probes1 - probes0,
                cpu_percent=100 * (cpu1 - cpu0) / elapsed,
                system_percent=100 * (system1 - system0) / elapsed,
                rss_mib=memory_kib(pids, "VmRSS") / 1024,
                hwm_mib=memory_kib(pids, "VmHWM") / 1024,
                fewest_in_table=fewest,
                sink_cpu_percent=100 * (sink1 - sink0) / elapsed,
                machine_cpu_percent=100 * (machine1 - machine0) / elapsed,
            )
            print(
                f"  {daemon.name}: {measurement.probe_rate():.0f} probes/s, "
                f"CPU {measurement.cpu_percent:.1f} % (system {measurement.system_percent:.1f}), "
                f"RSS {measurement.rss_mib:.1f} MiB",
                flush=True,
            )
            probes = max(1, measurement.probes)
            print(
                f"  {daemon.name}: a probe's kernel counts: "
                + ", ".join(
                    f"{key} {(counts1[key] - counts0[key]) / probes:.3f}"
                    for key in ("minflt", "majflt", "voluntary", "involuntary")
                )
                + f"; threads {counts1['threads']}",
                flush=True,
            )
            if isinstance(daemon, Directord) and daemon.name == "directord" and transitions:
                engine = engine_figures(daemon, load, transitions)
                print(
                    f"  {daemon.name}: verdict -> ipvs_op {engine.to_op * 1000:.1f} ms, "
                    f"-> /proc {engine.to_table * 1000:.1f} ms (median of {engine.transitions}); "
                    f"reload of one server: {engine.reload_cpu * 1000:.1f} ms CPU, "
                    f"{engine.reload_ops} ipvs_op",
                    flush=True,
                )
                measurement = replace(measurement, engine=engine)
            return measurement
        finally:
            daemon.stop()
            for pid in sink_pids:
                stop_process(pid, signal.SIGKILL)


def ratios(d: Measurement, k: Measurement) -> list[str]:
    """directord's figures over another daemon's, as a row of the table."""
    return [
        f"{d.name}/{k.name}",
        ratio(d.probe_rate(), k.probe_rate()),
        "",
        ratio(d.cpu_percent, k.cpu_percent),
        ratio(d.cpu_ms_per_probe(), k.cpu_ms_per_probe()),
        ratio(d.rss_mib, k.rss_mib),
        ratio(d.hwm_mib, k.hwm_mib),
        ratio(d.ready_after, k.ready_after),
        ratio(d.full_after, k.full_after)
        if d.full_after is not None and k.full_after is not None
        else "",
        "",
        "",
        ratio(d.machine_ms_per_probe(), k.machine_ms_per_probe()),
    ]


def report(load: Load, results: dict[str, Measurement]) -> None:
    def row(m: Measurement) -> list[str]:
        return [
            m.name,
            f"{m.probe_rate():.0f}",
            f"{100 * m.probe_rate() / load.target_rate:.1f}",
            f"{m.cpu_percent:.1f}",
            f"{m.cpu_ms_per_probe():.3f}",
            f"{m.rss_mib:.1f}",
            f"{m.hwm_mib:.1f}",
            f"{m.ready_after:.1f}",
            f"{m.full_after:.1f}" if m.full_after is not None else "never",
            str(m.fewest_in_table),
            f"{m.sink_cpu_percent:.1f}",
            f"{m.machine_ms_per_probe():.3f}",
        ]

    rows = [row(m) for m in results.values()]
    # Each directord against the keepalived that starts as it does, and
    # against the other where both ran.
    pairs = [("directord", "keepalived-alpha"), ("directord-up", "keepalived"),
             ("directord", "keepalived"), ("directord-up", "keepalived-alpha"),
             ("floor", "keepalived"), ("floor-reuse", "keepalived")]  # fmt: skip
    for mine, other in pairs:
        if {mine, other} <= results.keys():
            rows.append(ratios(results[mine], results[other]))
    print_table(
        f"Scale: {load.real_servers} real servers x {load.services} services, TCP check every "
        f"{load.timing.interval:g} s (target {load.target_rate:.0f} probes/s); "
        f"window {next(iter(results.values())).window:.0f} s",
        [
            "daemon",
            "probes/s",
            "% target",
            "CPU %",
            "CPU ms/probe",
            "RSS MiB",
            "peak MiB",
            "ready s",
            "full s",
            "min in table",
            "sink CPU %",
            "machine ms/probe",
        ],
        rows,
    )
    for m in results.values():
        if m.engine is not None:
            e = m.engine
            print(
                f"{m.name} engine at {load.real_servers} servers: verdict -> ipvs_op "
                f"{e.to_op * 1000:.1f} ms, verdict -> /proc {e.to_table * 1000:.1f} ms "
                f"(medians of {e.transitions}); reload with one server changed: "
                f"{e.reload_cpu * 1000:.1f} ms CPU, {e.reload_ops} ipvs_op"
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0, help="check interval (s)")
    parser.add_argument("--timeout", type=float, default=1.0, help="connect timeout (s)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the window")
    parser.add_argument("--window", type=float, default=60.0, help="measuring window (s)")
    parser.add_argument("--sinks", type=int, default=1, help="accepting processes")
    parser.add_argument(
        "--fill-timeout", type=float, default=900.0, help="max wait for the full table (s)"
    )
    parser.add_argument(
        "--only",
        choices=(
            "directord",
            "directord-up",
            "keepalived",
            "keepalived-alpha",
            "floor",
            "floor-reuse",
        ),
        action="append",
    )
    parser.add_argument(
        "--transitions",
        type=int,
        default=5,
        help="directord: servers failed and restored for the verdict-to-kernel latency (0: none)",
    )
    parser.add_argument("--keep", type=Path, help="copy each daemon's log into this directory")
    args = parser.parse_args(argv)
    load = Load(args.services, args.per_service, TcpTiming(args.interval, args.timeout, 2, 1))
    limit = raise_fd_limit()
    factories: dict[str, DaemonFactory] = {
        "directord": Directord,
        "directord-up": DirectordUp,
        "keepalived": Keepalived,
        "keepalived-alpha": KeepalivedAlpha,
        "floor": Floor,
        "floor-reuse": FloorReuse,
    }
    print(
        f"scale: {load.real_servers} real servers, {load.services} services, "
        f"TCP check every {args.interval:g} s, timeout {args.timeout:g} s; "
        f"warm-up {args.warmup:g} s, window {args.window:g} s; fd limit {limit}",
        flush=True,
    )
    results: dict[str, Measurement] = {}
    with tempfile.TemporaryDirectory(prefix="director-bench-") as tmp:
        for name in args.only or [n for n in factories if n != "floor-reuse"]:
            try:
                results[name] = measure(
                    factories[name],
                    load,
                    args.warmup,
                    args.window,
                    args.sinks,
                    args.fill_timeout,
                    Path(tmp) / name,
                    args.transitions,
                )
            finally:
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    for log in (Path(tmp) / name).glob("*.log"):
                        shutil.copy(log, args.keep / f"{name}-{log.name}")
    report(load, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
