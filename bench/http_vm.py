"""HTTP probe cost: directord's `http` check against keepalived's HTTP_GET,
one after the other in the same VM boot, on the same real servers and timing.

Service i is 10.1.0.1:(20000 + i); its real servers are 10.2.(i+1).(j+1) on
the same port, in a second namespace behind a veth pair (as in scale.py).
Forked responder processes answer every request with `200 OK`, an empty body
and `Connection: close`, and count the requests they answered. Each daemon
runs alone; after it has every real server in the table and a warm-up, the
window measures its CPU (utime + stime of its process tree) and the requests
answered. CPU per probe = CPU seconds / requests. The load is one both
daemons sustain in the emulated VM, so the per-probe figures compare.

keepalived 2.2.7's HTTP_GET (keepalived.conf(5)): `url { path / status_code
200 }`, `connect_timeout`, `retry` and `delay_before_retry` as for TCP_CHECK
(README.md, "Equivalent check settings"). directord: `type = "http"`, path
"/", status 200-299, the same interval, timeout and fall, rise 1.

    python tests/vm/run.py python bench/http_vm.py [--services 2] [--per-service 100]
        [--floor] [--old-tree DIR]

With `--floor`, two yardsticks take their turns too (bench/floor.py, no
health state, no table, so no "full table" wait): "floor-http", a CPython
loop that makes each probe's request and parses its reply's head with h11
as directord must, and "floor-http-raw", the same loop with the request's
bytes made once and the status read by hand.

With `--old-tree DIR`, a third daemon, "directord-old", takes its turn in
each round: directord importing `director` from DIR first (PYTHONPATH), for
a before/after in the same boot. DIR must be readable in the guest (under
the checkout, e.g. .vmtest/, not the host's /tmp), and hold `director/`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    inside,
    listener,
    memory_kib,
    namespace,
    print_table,
    raise_fd_limit,
    ratio,
    server_namespace,
    stop_process,
    wait_for,
)
from keepalived import Keepalived
from scale import SERVER_PREFIX, Load

REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def fork_responder(sockets: Sequence[socket.socket], counter: AcceptCounter, slot: int) -> int:
    """Fork a process that answers each HTTP request on `sockets` with REPLY
    and closes; every answered request is counted in `counter`."""
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        poller = select.epoll()
        listeners = {sock.fileno(): sock for sock in sockets}
        for fd in listeners:
            poller.register(fd, select.EPOLLIN)
        pending: dict[int, tuple[socket.socket, bytes]] = {}
        while True:
            answered = 0
            for fd, _ in poller.poll():
                if fd in listeners:
                    while True:
                        try:
                            conn, _ = listeners[fd].accept()
                        except OSError:
                            break
                        conn.setblocking(False)
                        pending[conn.fileno()] = (conn, b"")
                        poller.register(conn.fileno(), select.EPOLLIN)
                    continue
                conn, seen = pending[fd]
                try:
                    data = conn.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                seen += data
                if data and b"\r\n\r\n" not in seen:
                    pending[fd] = (conn, seen)
                    continue
                if data:
                    with contextlib.suppress(OSError):
                        conn.send(REPLY)
                        answered += 1
                poller.unregister(fd)
                del pending[fd]
                conn.close()
            if answered:
                counter.add(slot, answered)
    finally:
        os._exit(1)


def directord_http_config(text: str) -> str:
    """scale.py's directord config with every TCP check made an HTTP one."""
    return text.replace('type = "tcp"', 'type = "http", path = "/"')


def keepalived_http_config(text: str) -> str:
    """keepalived's TCP_CHECK blocks made HTTP_GET blocks of the same timing."""
    return text.replace(
        "        TCP_CHECK {\n",
        "        HTTP_GET {\n            url {\n                path /\n"
        "                status_code 200\n            }\n",
    )


@dataclass(frozen=True)
class Result:
    name: str
    window: float
    requests: int
    cpu: float
    rss_mib: float

    @property
    def rate(self) -> float:
        return self.requests / self.window

    @property
    def cpu_ms_per_probe(self) -> float:
        return 1000 * self.cpu / self.requests if self.requests else float("nan")


class HttpFloor(BenchProcess):
    """bench/floor.py --http (or --http-raw): the least a CPython HTTP check
    does, probing the table's real servers; ready when it says so."""

    def __init__(
        self, table: Sequence[VirtualService], timing: TcpTiming, workdir: Path, raw: bool
    ):
        workdir.mkdir(parents=True, exist_ok=True)
        self.targets = workdir / "targets"
        self.targets.write_text("".join(f"{a} {p}\n" for s in table for a, p in s.real_servers))
        self.timing, self.raw = timing, raw

    def start(self, timeout: float) -> None:
        command = [sys.executable, str(Path(__file__).with_name("floor.py")), str(self.targets)]
        command += ["--interval", str(self.timing.interval), "--timeout", str(self.timing.timeout)]
        command.append("--http-raw" if self.raw else "--http")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        if self.process.stdout.readline() != b"ready\n":
            raise RuntimeError("bench/floor.py did not start")


def measure(
    name: str,
    table: list[VirtualService],
    timing: TcpTiming,
    warmup: float,
    window: float,
    workdir: Path,
    old_tree: Path | None = None,
) -> Result:
    daemon: Directord | Keepalived | HttpFloor
    if name.startswith("floor-http"):
        daemon = HttpFloor(table, timing, workdir, raw=name == "floor-http-raw")
    elif name.startswith("directord"):
        daemon = Directord(table, timing, workdir)
        daemon.config.write_text(directord_http_config(daemon.config.read_text()))
    else:
        daemon = Keepalived(table, timing, workdir)
        daemon.config.write_text(keepalived_http_config(daemon.config.read_text()))
    wanted = sum(len(s.real_servers) for s in table)
    counter = AcceptCounter(1)
    with (
        namespace(f"bench-http-{name}"),
        server_namespace(f"bench-http-{name}-servers", SERVER_PREFIX) as servers,
    ):
        with inside(servers):
            sockets = [listener("0.0.0.0", s.port) for s in table]
        responder = fork_responder(sockets, counter, 0)
        for sock in sockets:
            sock.close()
        try:
            started = time.monotonic()
            with python_path(old_tree if name == "directord-old" else None):
                daemon.start(timeout=300)
            try:
                wait_for(
                    "every real server in the table",
                    lambda: isinstance(daemon, HttpFloor) or destination_count() >= wanted,
                    120,
                )
            except TimeoutError:
                logs = sorted(workdir.glob("*.log"))
                tail = logs[0].read_text(errors="replace")[-3000:] if logs else "(no log)"
                raise TimeoutError(
                    f"{name}: {destination_count()} of {wanted} in the table; log tail:\n{tail}"
                ) from None
            what = "probing" if isinstance(daemon, HttpFloor) else "full table"
            print(f"  {name}: {what} after {time.monotonic() - started:.1f} s", flush=True)
            time.sleep(warmup)
            pids = descendants(daemon.pid)
            cpu0, requests0, t0 = cpu_seconds(pids), counter.total(), time.monotonic()
            time.sleep(window)
            pids = descendants(daemon.pid)
            cpu1, requests1, t1 = cpu_seconds(pids), counter.total(), time.monotonic()
            in_table = wanted if isinstance(daemon, HttpFloor) else destination_count()
            if in_table < wanted:
                # A result, not an error: a daemon that cannot keep every
                # server up under this load fails probes it should not.
                print(f"  {name}: only {in_table} of {wanted} in the table at the end", flush=True)
            result = Result(
                name, t1 - t0, requests1 - requests0, cpu1 - cpu0, memory_kib(pids, "VmRSS") / 1024
            )
            print(
                f"  {name}: {result.rate:.0f} probes/s, {result.cpu_ms_per_probe:.3f} ms CPU/probe",
                flush=True,
            )
            return result
        finally:
            daemon.stop()
            stop_process(responder, signal.SIGKILL)


@contextlib.contextmanager
def python_path(first: Path | None) -> Iterator[None]:
    """$PYTHONPATH with `first` ahead of it, for the processes started
    meanwhile (their environment is copied at start)."""
    if first is None:
        yield
        return
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = f"{first}:{before}" if before else str(first)
    try:
        yield
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=2)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="each daemon, alternating")
    parser.add_argument("--old-tree", type=Path, help="also directord from this tree's director/")
    parser.add_argument("--floor", action="store_true", help="also bench/floor.py's HTTP floors")
    args = parser.parse_args()
    old_tree = args.old_tree.resolve() if args.old_tree else None
    if old_tree is not None and not (old_tree / "director" / "__init__.py").is_file():
        parser.error(f"{old_tree} holds no director/ package")
    raise_fd_limit()
    timing = TcpTiming(interval=args.interval, timeout=args.timeout, fall=2, rise=1)
    table = Load(args.services, args.per_service, timing).virtual_services()
    names = ["directord", "keepalived"] + (["directord-old"] if old_tree else [])
    names += ["floor-http", "floor-http-raw"] if args.floor else []
    results: dict[str, list[Result]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        for round_ in range(args.rounds):
            order = names if round_ % 2 == 0 else names[::-1]
            for name in order:
                print(f"round {round_ + 1}: {name}", flush=True)
                workdir = Path(tmp) / f"{name}-{round_}"
                results[name].append(
                    measure(name, table, timing, args.warmup, args.window, workdir, old_tree)
                )
    rows = []
    best = {}
    for name, runs in results.items():
        best[name] = min(r.cpu_ms_per_probe for r in runs)
        for r in runs:
            rows.append([name, f"{r.rate:.0f}", f"{r.cpu_ms_per_probe:.3f}", f"{r.rss_mib:.1f}"])
    for name in [n for n in names if n != "keepalived"]:
        rows.append([f"{name}/keepalived (best)", "", ratio(best[name], best["keepalived"]), ""])
    print_table(
        f"HTTP check: {len(table) * args.per_service} real servers, every {args.interval:g} s",
        ["daemon", "probes/s", "CPU ms/probe", "RSS MiB"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
