"""Harness shared by the daemon benchmarks (detection.py, scale.py).

Network namespaces the benchmark enters, TCP listeners in forked processes,
the kernel's IPVS table as seen from the current namespace, CPU and memory
meters over a process tree, summary statistics, and the way directord is
configured and started. keepalived's side is in keepalived.py.

Run only where the kernel has ip_vs (inside tests/vm/run.py), as root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import json
import mmap
import os
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLONE_NEWNET = 0x40000000
TICKS = os.sysconf("SC_CLK_TCK")
_libc = ctypes.CDLL(None, use_errno=True)


# -- what both daemons are asked to do ---------------------------------------


@dataclass(frozen=True)
class TcpTiming:
    """One TCP connect check, in the daemon-neutral terms of the benchmarks."""

    interval: float = 1.0  # seconds between checks of one server
    timeout: float = 1.0  # connect timeout
    fall: int = 2  # failed checks in a row that take an up server out
    rise: int = 1  # good checks in a row that bring a down server back


@dataclass(frozen=True)
class VirtualService:
    address: str
    port: int
    real_servers: tuple[tuple[str, int], ...]


# -- namespaces ---------------------------------------------------------------


def run(*argv: str) -> str:
    done = subprocess.run(argv, check=False, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def namespace(name: str, addresses: Sequence[str] = ()) -> Iterator[str]:
    """Create network namespace `name` (loopback up, `addresses` added to lo
    as /32s) and move this thread into it; undone on exit. Sockets opened and
    processes started meanwhile belong to it."""
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    run("ip", "netns", "add", name)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        run("ip", "link", "set", "lo", "up")
        for address in addresses:
            run("ip", "addr", "add", f"{address}/32", "dev", "lo")
        yield name
    finally:
        _setns(original)
        os.close(target)
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextlib.contextmanager
def inside(name: str) -> Iterator[None]:
    """Run this thread in existing namespace `name` for a while (e.g. to open
    sockets there), then come back."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(original)
        os.close(target)
        os.close(original)


@contextlib.contextmanager
def server_namespace(name: str, prefix: str) -> Iterator[str]:
    """A second namespace `name` for the real servers, joined to the current
    one by a veth pair: every address of `prefix` is local there (an AnyIP
    route, so listeners can bind any of them or 0.0.0.0) and routed there from
    here. The real servers are then remote, as in production: the kernel
    stores a local destination as forward "local" whatever was asked."""
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
    run("ip", "netns", "add", name)
    try:
        run(
            "ip",
            "link",
            "add",
            "to-servers",
            "type",
            "veth",
            "peer",
            "name",
            "to-director",
            "netns",
            name,
        )
        run("ip", "addr", "add", "192.168.255.1/30", "dev", "to-servers")
        run("ip", "link", "set", "to-servers", "up")
        run("ip", "route", "add", prefix, "via", "192.168.255.2")
        for argv in (
            ("link", "set", "lo", "up"),
            ("addr", "add", "192.168.255.2/30", "dev", "to-director"),
            ("link", "set", "to-director", "up"),
            ("route", "add", "local", prefix, "dev", "lo"),
        ):
            run("ip", "-n", name, *argv)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", "to-servers"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=False)


def raise_fd_limit(wanted: int = 1 << 20) -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limit in (wanted, hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(limit, hard)))
            return limit
    return soft


# -- the kernel's table ---------------------------------------------------------


def _hex_endpoint(text: str) -> tuple[str, int]:
    address, port = text.split(":")
    return socket.inet_ntoa(bytes.fromhex(address)), int(port, 16)


def ipvs_table() -> dict[tuple[str, int], set[tuple[str, int]]]:
    """The current namespace's IPv4 TCP/UDP services and their destinations.

    Read from /proc (one read, no fork, no netlink), so that a fast polling
    loop costs the daemon under test next to nothing."""
    table: dict[tuple[str, int], set[tuple[str, int]]] = {}
    current: set[tuple[str, int]] | None = None
    with open("/proc/thread-self/net/ip_vs") as lines:
        for line in lines:
            fields = line.split()
            if not fields:
                continue
            if fields[0] in ("TCP", "UDP", "SCTP") and ":" in fields[1]:
                current = table.setdefault(_hex_endpoint(fields[1]), set())
            elif fields[0] == "->" and current is not None and ":" in fields[1]:
                if fields[1] != "RemoteAddress:Port":
                    current.add(_hex_endpoint(fields[1]))
            else:
                current = None
    return table


def destination_count() -> int:
    return sum(len(dests) for dests in ipvs_table().values())


def wait_for(what: str, condition: Callable[[], bool], timeout: float, poll: float = 0.02) -> float:
    """Poll `condition` until true; the monotonic time it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


# -- listeners ------------------------------------------------------------------


def listener(address: str, port: int, backlog: int = 4096) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class AcceptCounter:
    """Counters in memory shared with forked sink processes."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, 8 * slots)

    def add(self, slot: int, count: int) -> None:
        (value,) = struct.unpack_from("Q", self._memory, 8 * slot)
        struct.pack_into("Q", self._memory, 8 * slot, value + count)

    def total(self) -> int:
        return sum(struct.unpack_from(f"{self.slots}Q", self._memory))


def fork_sink(
    sockets: Sequence[socket.socket], counter: AcceptCounter | None = None, slot: int = 0
) -> int:
    """Fork a process that accepts and closes every connection made to
    `sockets`, counting them in `counter`; returns its pid. The caller should
    close its own copies of the sockets: killing the process then closes them
    for good (the listening port answers RST from then on)."""
    pid = os.fork()
    if pid:
        return pid
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        poller = select.epoll()
        by_fd = {sock.fileno(): sock for sock in sockets}
        for fd in by_fd:
            poller.register(fd, select.EPOLLIN)
        while True:
            for fd, _ in poller.poll():
                sock, accepted = by_fd[fd], 0
                while True:
                    try:
                        conn, _ = sock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # e.g. EMFILE: leave the rest in the queue
                        break
                    conn.close()
                    accepted += 1
                if counter is not None and accepted:
                    counter.add(slot, accepted)
    finally:
        os._exit(1)


def stop_process(pid: int, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# -- meters ---------------------------------------------------------------------


def descendants(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(pids: Sequence[int], *, system: bool | None = None) -> float:
    """utime + stime of `pids` (all their threads), in seconds; stime
    alone with `system=True`, utime alone with `system=False`."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += (int(fields[11]) if system is not True else 0) + (
                int(fields[12]) if system is not False else 0
            )
    return ticks / TICKS


def _daemon_env(**extra: str) -> dict[str, str]:
    """The environment directord starts in: this one, with
    $DIRECTOR_BENCH_SOURCE (a checkout of another commit, e.g. a `git
    worktree`) first on PYTHONPATH, to run that tree's daemon beside
    keepalived in the same boot: its `director` package copied to local
    storage and byte-compiled (`_local_source`)."""
    env = dict(os.environ, **extra)
    source = os.environ.get("DIRECTOR_BENCH_SOURCE")
    if source:
        local = _local_source(source)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (local, env.get("PYTHONPATH")) if p)
    return env


@functools.cache
def _local_source(source: str) -> str:
    """A directory holding a copy of `source`'s `director` package with its
    .pyc files, made once a run, removed at its exit: as an installed
    package is. In the VM a checkout is on the 9p share, where the guest
    runs with PYTHONDONTWRITEBYTECODE: a daemon imported from it compiled
    every module again at each start, each file a few round trips to the
    host, and its start-up figures counted that (stop 35: about half of
    the samples from the start to READY=1 in py-spy were imports)."""
    local = tempfile.mkdtemp(prefix="director-bench-source-")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    shutil.copytree(
        Path(source, "director"),
        Path(local, "director"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", local],
        check=True,
        capture_output=True,
    )
    return local


def machine_cpu_seconds() -> float:
    """CPU time the whole machine spent busy (every CPU's user, nice,
    system, irq, softirq and steal in /proc/stat), in seconds: where the
    kernel charged a probe's packets (the sender's system call, a softirq,
    the server's), all of it."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in first[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def process_counters(pids: Sequence[int]) -> dict[str, int]:
    """Counts the kernel keeps for `pids` (all their threads), summed:
    minor and major page faults (/proc/PID/stat), voluntary and
    involuntary context switches (/proc/PID/task/TID/status), and
    threads. For the kernel time a probe costs that strace's system
    call counts do not show: a page fault is no system call."""
    totals = dict.fromkeys(("minflt", "majflt", "voluntary", "involuntary", "threads"), 0)
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            totals["minflt"] += int(fields[7])
            totals["majflt"] += int(fields[9])
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    totals["threads"] += 1
                    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
                        if line.startswith("voluntary_ctxt_switches:"):
                            totals["voluntary"] += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            totals["involuntary"] += int(line.split()[1])
    return totals


def memory_kib(pids: Sequence[int], field: str) -> int:
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over `pids`, in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


# -- statistics -----------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    count: int
    median: float
    p99: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        ordered = sorted(values)
        p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98]
        return cls(len(ordered), statistics.median(ordered), p99, ordered[0], ordered[-1])


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "n/a"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, [""] * len(header), *rows]:
        cells = [
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        if not any(row):
            cells = ["-" * w for w in widths]
        print("  " + "  ".join(cells))
    sys.stdout.flush()


# -- directord ------------------------------------------------------------------


def directord_config(
    services: Sequence[VirtualService], timing: TcpTiming, workdir: Path, initial: str = "unknown"
) -> str:
    """`initial`: the checks' `initial` ("up": every server in before its
    first probe, as keepalived without alpha; written only then, so that an
    older tree, `--source`, reads the default config)."""
    initial_key = f', initial = "{initial}"' if initial != "unknown" else ""
    check = (
        f'{{ type = "tcp", interval = {timing.interval}, timeout = {timing.timeout}, '
        f"rise = {timing.rise}, fall = {timing.fall}{initial_key} }}"
    )
    lines = [
        "[daemon]",
        "flush_on_stop = true",
        f"reconcile_interval = {os.environ.get('DIRECTOR_BENCH_RECONCILE', '5.0')}",
        f'state_file = "{workdir / "state.json"}"',
        'log_level = "info"',
        "",
        "[control]",
        f'socket = "{workdir / "director.sock"}"',
        f"runtime_check = {check}",
    ]
    for service in services:
        lines += [
            "",
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "{service.address}:{service.port}"',
            'scheduler = "rr"',
            f"check = {check}",
        ]
        for address, port in service.real_servers:
            lines += ["[[virtual_server.real_server]]", f'address = "{address}:{port}"']
    return "\n".join(lines) + "\n"


class BenchProcess:
    """A daemon under benchmark: its pid, and a stop that escalates to kill."""

    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _profiled() -> list[str]:
    """cProfile's arguments when $DIRECTOR_BENCH_PROFILE names a file for
    directord's profile (written when it stops), else none."""
    path = os.environ.get("DIRECTOR_BENCH_PROFILE")
    return ["-m", "cProfile", "-o", path] if path else []


def _sampled() -> list[str]:
    """py-spy's command line when $DIRECTOR_BENCH_PYSPY names a file for a
    sampled profile of directord (speedscope JSON, samples in time order,
    written when the bench stops it with SIGINT), else none. Unlike
    cProfile, it does not slow the daemon's Python code."""
    path = os.environ.get("DIRECTOR_BENCH_PYSPY")
    if not path:
        return []
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [spy, "record", "--rate", "50", "--format", "speedscope", "--output", path, "--"]


class Directord(BenchProcess):
    """directord started in the current namespace, READY=1 awaited over
    $NOTIFY_SOCKET; its log goes to workdir/directord.log."""

    name = "directord"
    initial = "unknown"  # its checks' `initial`

    def __init__(self, services: Sequence[VirtualService], timing: TcpTiming, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "director.toml"
        self.config.write_text(directord_config(services, timing, workdir, self.initial))
        self.process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is None or not _sampled():
            super().stop()
            return
        # Under py-spy ($DIRECTOR_BENCH_PYSPY), the process is py-spy's: it
        # writes its profile on SIGINT and leaves its child running.
        below = descendants(self.pid)[1:]
        self.process.send_signal(signal.SIGINT)
        self.process.wait(120)
        for pid in below:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def start(self, timeout: float) -> float:
        """Start it; returns the seconds until it reported READY=1."""
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(timeout)
            env = _daemon_env(NOTIFY_SOCKET=str(notify_path))  # (a copy's compile: not the start's)
            started = time.monotonic()
            log = (self.workdir / "directord.log").open("wb")
            self.process = subprocess.Popen(
                [
                    *_sampled(),
                    sys.executable,
                    *_profiled(),
                    "-m",
                    "director.entry",
                    "--config",
                    str(self.config),
                ],
                cwd=REPO,
                stdout=log,
                stderr=log,
                env=env,
            )
            log.close()
            # One deadline for the whole start: the daemon's start-up
            # keep-alives (EXTEND_TIMEOUT_USEC, every few seconds) must not
            # restart it, or a daemon that never gets ready is waited for
            # for ever.
            deadline = started + timeout
            while True:
                try:
                    notify.settimeout(max(deadline - time.monotonic(), 0.001))
                    message = notify.recv(4096).decode()
                except TimeoutError:
                    self.stop()
                    raise TimeoutError(self._failure("no READY=1")) from None
                if "READY=1" in message.splitlines():
                    return time.monotonic() - started

    def events(self, event: str | None) -> list[dict[str, object]]:
        """The JSON log lines whose "event" is `event` (None: all), oldest first."""
        found = []
        for line in (self.workdir / "directord.log").read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and (event is None or record.get("event") == event):
                    found.append(record)
        return found

    def _failure(self, what: str) -> str:
        tail = (self.workdir / "directord.log").read_text(errors="replace")[-2000:]
        return f"directord: {what}; log tail:\n{tail}"
