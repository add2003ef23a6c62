"""CPU per HTTP(S) probe: the prober alone, against a responder in other processes.

    .venv/bin/python bench/http_probe.py [--probes 3000] [--concurrency 1]
        [--old-tree /tmp/http-before] [--kinds http,https,https-no-reuse]
        [--checker 300 [--window 10]]

For each kind of probe, and for each source tree (this checkout, and with
--old-tree another one, e.g. `git worktree add /tmp/http-before <commit>`),
a fresh interpreter imports `director` from that tree, runs WARMUP probes, then
`--probes` probes of one `HttpCheck` (GET /, expect 200, no body check) through
one `Prober`, `--concurrency` at a time, against 127.0.0.1, and reports the
CPU time of its process (user + system, all threads) divided by the probes,
and the wall time per probe. Every probe must pass, or the run aborts.

With `--checker N`, each row is instead director's `Checker` with the real
probes, as the daemon runs it (its tick: engine.CHECK_TICK), on N
distinct targets of that kind (paths /0 .. /N-1 on the one responder), each
every second: the CPU of the process over `--window` seconds after a warm-up,
divided by the results in that window. That is the daemon's own way of
probing (plain HTTP checks without a task each since issue 8), where the
Prober's figure is one awaited probe at a time.

Kinds: `http`; `https` (TLS 1.3, the server sends session tickets, so a
client may resume); `https-no-reuse` (the server sends none: every handshake
is a full one). HTTPS probes verify the server's certificate (an ECDSA P-256
one, made for the run) against it as `ca_file`, as a production check does. For the TLS kinds the responder counts the handshakes that
resumed a session.

The responder is WORKERS forked processes on one listening socket, each a
blocking accept loop that reads the request head and answers
`200 OK` with `Content-Length: 0` and `Connection: close`; it runs in other
processes, so its CPU is not counted. Host figures only: Python in the VM is
about 6x slower. For a comparison with keepalived's HTTP_GET in one VM boot,
import `measure` (one kind, one tree, in this process) or run this file inside
`tests/vm/run.py`; keepalived's CPU per check comes from its own run against
the same responder (`serve`), e.g. through bench/keepalived.py's config writer
and bench/common.py's process meters.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KINDS = ("http", "https", "https-no-reuse")
WARMUP = 200
WORKERS = 2
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class Figures:
    kind: str
    probes: int
    cpu_us: float  # CPU of the probing process per probe, microseconds
    wall_us: float  # wall time per probe (with `concurrency` in flight)
    resumed: int  # TLS handshakes that resumed a session (server's count)


# -- the responder -------------------------------------------------------------


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=bench.test", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _worker(listener: socket.socket, context: ssl.SSLContext | None, resumed: object) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if context is not None:
                conn = context.wrap_socket(conn, server_side=True)
                if conn.session_reused:  # type: ignore[attr-defined]
                    with resumed.get_lock():  # type: ignore[attr-defined]
                        resumed.value += 1  # type: ignore[attr-defined]
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    break
                head += data
            conn.sendall(ANSWER)
            if isinstance(conn, ssl.SSLSocket):
                conn.unwrap()  # close_notify both ways, as a polite server does
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()


@contextmanager
def serve(kind: str, certificate: tuple[Path, Path]) -> Iterator[tuple[int, object]]:
    """A responder for `kind` on 127.0.0.1: yields its port and its shared
    count of resumed handshakes (a multiprocessing.Value)."""
    context = None
    if kind != "http":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certificate)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        if kind == "https-no-reuse":
            context.num_tickets = 0
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    resumed = multiprocessing.Value("l", 0)
    workers = [
        multiprocessing.Process(target=_worker, args=(listener, context, resumed), daemon=True)
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    try:
        yield listener.getsockname()[1], resumed
    finally:
        for worker in workers:
            worker.kill()
            worker.join()
        listener.close()


# -- the prober ----------------------------------------------------------------


def measure(
    kind: str, port: int, probes: int, concurrency: int = 1, ca_file: str | None = None
) -> tuple[float, float]:
    """CPU and wall seconds of `probes` probes of `kind` to 127.0.0.1:`port`
    through one Prober of the `director` on sys.path, after WARMUP of them.
    HTTPS verifies the server's certificate against `ca_file` when given."""
    from ipaddress import IPv4Address

    import trio

    from director.health.probes import Prober
    from director.health.spec import HttpCheck, Timing

    tls = kind != "http"
    check = HttpCheck(tls=tls, verify_tls=ca_file is not None, ca_file=ca_file, timing=Timing(timeout=5.0))  # fmt: skip
    address = IPv4Address("127.0.0.1")

    async def run() -> tuple[float, float]:
        prober = Prober()

        async def worker(count: int) -> None:
            for _ in range(count):
                result = await prober(check, address, port)
                if not result.ok:
                    raise SystemExit(f"probe failed: {result}")

        await worker(WARMUP)
        cpu, wall = time.process_time(), time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(worker, probes // concurrency + (i < probes % concurrency))
        return time.process_time() - cpu, time.perf_counter() - wall

    return trio.run(run)


CHECKER_WARMUP = 3.0  # seconds before the window: every target probed at least twice


def measure_checker(
    kind: str, port: int, targets: int, window: float, ca_file: str | None = None
) -> tuple[float, int]:
    """CPU seconds and results of director's Checker (real probes, the
    daemon's tick) over `window` seconds, probing `targets` distinct HTTP
    checks of `kind` to 127.0.0.1:`port` every second; failed probes abort."""
    from ipaddress import IPv4Address

    import trio

    from director.health.checker import Checker
    from director.health.spec import HttpCheck, Timing

    tls = kind != "http"
    address = IPv4Address("127.0.0.1")
    timing = Timing(interval=1.0, timeout=1.0)
    verify = ca_file is not None
    checks = {
        i: (
            HttpCheck(tls=tls, verify_tls=verify, ca_file=ca_file, path=f"/{i}", timing=timing),
            address,
            port,
        )
        for i in range(targets)
    }
    counted = {"results": 0, "failed": 0}

    def on_result(key: int, before: object, after: object) -> None:
        counted["results"] += 1
        if not after.last.ok:  # type: ignore[attr-defined]
            counted["failed"] += 1

    async def run() -> tuple[float, int]:
        from director.engine import CHECK_TICK  # (this tree's)

        checker: Checker[int] = Checker(on_result=on_result, tick=CHECK_TICK)
        checker.set_targets(checks)
        async with trio.open_nursery() as nursery:
            await nursery.start(checker.run)
            await trio.sleep(CHECKER_WARMUP)
            cpu, results = time.process_time(), counted["results"]
            await trio.sleep(window)
            cpu, results = time.process_time() - cpu, counted["results"] - results
            nursery.cancel_scope.cancel()
        if counted["failed"]:
            raise SystemExit(f"{counted['failed']} of {counted['results']} probes failed")
        return cpu, results

    return trio.run(run)


def _child(kind: str, port: int, probes: int, concurrency: int, ca_file: str) -> None:
    if CHECKER_TARGETS:
        cpu, results = measure_checker(kind, port, CHECKER_TARGETS, CHECKER_WINDOW, ca_file)
        print(json.dumps({"cpu": cpu, "wall": CHECKER_WINDOW, "probes": results}))
        return
    cpu, wall = measure(kind, port, probes, concurrency, ca_file)
    print(json.dumps({"cpu": cpu, "wall": wall, "probes": probes}))


CHECKER_TARGETS = 0  # set by --checker
CHECKER_WINDOW = 10.0


def run_tree(
    tree: Path, kind: str, port: int, probes: int, concurrency: int, ca_file: Path
) -> tuple[float, float]:
    """`measure` (or `measure_checker`) in a fresh interpreter that imports
    `director` from `tree`: CPU and wall seconds per probe."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(port), str(ca_file)]
    argv += ["--probes", str(probes), "--concurrency", str(concurrency)]
    argv += ["--checker", str(CHECKER_TARGETS), "--window", str(CHECKER_WINDOW)]
    done = subprocess.run(argv, env=env, cwd=tree, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree} {kind}: {done.stderr or done.stdout}")
    figures = json.loads(done.stdout.splitlines()[-1])
    return figures["cpu"] / figures["probes"], figures["wall"] / figures["probes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="rows are medians of rounds")
    parser.add_argument("--old-tree", type=Path, help="another checkout to compare with")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--checker", type=int, default=0, metavar="TARGETS")
    parser.add_argument("--window", type=float, default=10.0, help="seconds, with --checker")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PORT", "CA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global CHECKER_TARGETS, CHECKER_WINDOW
    CHECKER_TARGETS, CHECKER_WINDOW = args.checker, args.window
    if args.child:
        _child(args.child[0], int(args.child[1]), args.probes, args.concurrency, args.child[2])
        return
    trees = [("new", REPO)] + ([("old", args.old_tree.resolve())] if args.old_tree else [])
    if args.checker:
        print(
            f"Checker: {args.checker} targets every 1 s, each tree's tick, a {args.window:g} s window"
            f" after {CHECKER_WARMUP:g} s; medians of {args.rounds} rounds, the trees taking turns"
        )
    else:
        print(
            f"{args.probes} probes per round, {args.concurrency} at a time, after {WARMUP} of"
            f" warm-up; medians of {args.rounds} rounds, the trees taking turns"
        )
    print(f"{'kind':<16} {'tree':<4} {'CPU/probe':>11} {'wall/probe':>11} {'resumed':>11}")
    with tempfile.TemporaryDirectory() as directory:
        certificate = _certificate(Path(directory))
        for kind in args.kinds.split(","):
            rounds: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, tree in trees:
                    with serve(kind, certificate) as (port, resumed):
                        cpu, wall = run_tree(
                            tree, kind, port, args.probes, args.concurrency, certificate[0]
                        )
                        rounds[name].append((cpu, wall, resumed.value))  # type: ignore[attr-defined]
            for name, _ in trees:
                figures = Figures(
                    kind,
                    args.probes,
                    statistics.median(cpu for cpu, _, _ in rounds[name]) * 1e6,
                    statistics.median(wall for _, wall, _ in rounds[name]) * 1e6,
                    min(count for _, _, count in rounds[name]),
                )
                total = args.probes + WARMUP
                shown = f"{figures.resumed}" + ("" if args.checker else f"/{total}")
                shown = shown if kind != "http" else "-"
                print(
                    f"{kind:<16} {name:<4} {figures.cpu_us:>8.0f} µs"
                    f" {figures.wall_us:>8.0f} µs {shown:>11}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
