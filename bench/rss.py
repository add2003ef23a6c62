"""RSS of directord at scale on the host, no kernel needed (issue 8: <= 50 MiB
at 10,000 real servers).

directord runs as it would (director.daemon.main: control socket, state
file, engine, checker), with the in-memory IPVS backend in place of netlink,
on bench/scale.py's load: `--services` services of `--per-service` TCP real
servers each, checked every second. Real server j of service i is
127.2.(i+1).(j+1):(20000 + i), a closed loopback port: every probe is a real
connect that is refused at once. VmRSS and VmHWM (peak) of the process are
read `--after` seconds after it reports READY=1; the median of `--runs`
fresh starts is printed.

With `--keepalived` (where the kernel has IPVS: in the VM), keepalived's
checker (2.2.7, bench/keepalived.py) runs on the same load in a network
namespace of its own after directord's runs, and the VmRSS of its process
tree is read `--after` seconds after every server is in its table: the
reference, from the same boot, for the ratio.

With `--tracemalloc N`, one more run under tracemalloc prints the N biggest
allocation sites of what is live at that moment (by line, then by type of
object with --by-type) and the total: what each real server costs.

    python bench/rss.py [--runs 3] [--after 4] [--keepalived] [--tracemalloc 25]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    TcpTiming,
    VirtualService,
    descendants,
    directord_config,
    memory_kib,
    namespace,
)

# The daemon, with MemoryBackend for NetlinkBackend (no IPVS needed). Kept to
# the imports the daemon makes itself (bench/common's would count).
_CHILD = """
import sys
from director import daemon
from director.ipvs.memory import MemoryBackend
daemon.NetlinkBackend = MemoryBackend
sys.exit(daemon.main(sys.argv[1:]))
"""

# The same, with a snapshot of tracemalloc written to $RSS_SNAPSHOT once the
# parent creates $RSS_SNAPSHOT.go (looked for ten times a second).
_TRACED_CHILD = """
import os, sys, threading, time, tracemalloc
tracemalloc.start(int(os.environ.get("RSS_FRAMES", "1")))
from director import daemon
from director.ipvs.memory import MemoryBackend
daemon.NetlinkBackend = MemoryBackend
def snapshot():
    path = os.environ["RSS_SNAPSHOT"]
    while not os.path.exists(path + ".go"):
        time.sleep(0.1)
    tracemalloc.take_snapshot().dump(path + ".part")
    os.rename(path + ".part", path)
threading.Thread(target=snapshot, daemon=True).start()
sys.exit(daemon.main(sys.argv[1:]))
"""


TIMING = TcpTiming(1.0, 1.0, 2, 1)


def load(services: int, per_service: int) -> list[VirtualService]:
    return [
        VirtualService(
            "10.1.0.1",
            20000 + i,
            tuple((f"127.2.{i + 1}.{j + 1}", 20000 + i) for j in range(per_service)),
        )
        for i in range(services)
    ]


def status_kib(pid: int) -> dict[str, int]:
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            figures[name] = int(value.split()[0])
    return figures


def run_once(
    workdir: Path, code: str, after: float, env: dict[str, str] | None = None
) -> tuple[float, dict[str, int], subprocess.Popen[bytes]]:
    """Start the daemon, wait for READY=1 and `after` seconds more; returns
    the seconds to READY, its figures (KiB) and the still running process."""
    notify_path = workdir / "notify.sock"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(120)
        log = (workdir / "directord.log").open("wb")
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", code, "--config", str(workdir / "director.toml")],
            cwd=REPO,
            stdout=log,
            stderr=log,
            env=dict(os.environ, NOTIFY_SOCKET=str(notify_path), **(env or {})),
        )
        log.close()
        try:
            while "READY=1" not in notify.recv(4096).decode().splitlines():
                pass
        except TimeoutError:
            process.kill()
            process.wait()
            tail = (workdir / "directord.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"directord: no READY=1; log tail:\n{tail}") from None
    ready = time.monotonic() - started
    time.sleep(after)
    return ready, status_kib(process.pid), process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def keepalived_rss(services: list[VirtualService], workdir: Path, after: float) -> float:
    """keepalived's checker on `services` in a namespace of its own: the
    VmRSS (MiB) of its process tree `after` seconds after it was ready."""
    from keepalived import Keepalived

    with namespace("bench-rss-keepalived"):
        daemon = Keepalived(services, TIMING, workdir / "keepalived")
        ready = daemon.start(timeout=600)
        try:
            time.sleep(after)
            rss = memory_kib(descendants(daemon.pid), "VmRSS") / 1024
        finally:
            daemon.stop()
    print(
        f"keepalived: ready after {ready:.2f} s, {after:g} s later VmRSS {rss:.1f} MiB", flush=True
    )
    return rss


def traced(workdir: Path, after: float, top: int, by_type: bool, frames: int) -> None:
    import tracemalloc

    path = workdir / "snapshot"
    path.unlink(missing_ok=True)
    Path(f"{path}.go").unlink(missing_ok=True)
    _, figures, process = run_once(
        workdir, _TRACED_CHILD, after, {"RSS_SNAPSHOT": str(path), "RSS_FRAMES": str(frames)}
    )
    try:
        Path(f"{path}.go").touch()
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop(process)
    snapshot = tracemalloc.Snapshot.load(str(path)).filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    )
    stats = snapshot.statistics("traceback" if frames > 1 else "lineno")
    total = sum(stat.size for stat in stats)
    print(
        f"\ntracemalloc: {total / 1024 / 1024:.1f} MiB live in {len(stats)} sites "
        f"(VmRSS under tracemalloc {figures['VmRSS'] / 1024:.1f} MiB)"
    )
    for stat in stats[:top]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} blocks  {where}")
        for frame in list(stat.traceback)[1:]:
            print(f"{'':30}{Path(frame.filename).name}:{frame.lineno}")
    if by_type:
        print("\nby file:")
        for stat in snapshot.statistics("filename")[:top]:
            name = stat.traceback[0].filename
            print(f"{stat.size / 1024:10.0f} KiB {stat.count:8d} blocks  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--per-service", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--after", type=float, default=4.0, help="seconds after READY=1")
    parser.add_argument("--keepalived", action="store_true", help="keepalived's too (needs IPVS)")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="TOP")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc's frames a site")
    parser.add_argument("--by-type", action="store_true", help="also by file")
    args = parser.parse_args()
    services = load(args.services, args.per_service)
    count = args.services * args.per_service
    with tempfile.TemporaryDirectory(prefix="director-rss-") as name:
        workdir = Path(name)
        (workdir / "director.toml").write_text(directord_config(services, TIMING, workdir))
        rss, hwm, readies = [], [], []
        for run in range(args.runs):
            (workdir / "state.json").unlink(missing_ok=True)
            ready, figures, process = run_once(workdir, _CHILD, args.after)
            stop(process)
            rss.append(figures["VmRSS"] / 1024)
            hwm.append(figures["VmHWM"] / 1024)
            readies.append(ready)
            print(
                f"run {run + 1}: {count} real servers, READY=1 after {ready:.2f} s, "
                f"{args.after:g} s later VmRSS {rss[-1]:.1f} MiB (anon "
                f"{figures['RssAnon'] / 1024:.1f}, file {figures['RssFile'] / 1024:.1f}), "
                f"VmHWM {hwm[-1]:.1f} MiB",
                flush=True,
            )
        if args.runs:
            print(
                f"median of {args.runs}: VmRSS {statistics.median(rss):.1f} MiB, "
                f"VmHWM {statistics.median(hwm):.1f} MiB, "
                f"READY=1 {statistics.median(readies):.2f} s"
            )
        if args.keepalived and args.runs:
            theirs = keepalived_rss(services, workdir, args.after)
            print(f"ratio directord/keepalived: {statistics.median(rss) / theirs:.2f}")
        if args.tracemalloc:
            (workdir / "state.json").unlink(missing_ok=True)
            traced(workdir, args.after, args.tracemalloc, args.by_type, args.frames)


if __name__ == "__main__":
    main()
