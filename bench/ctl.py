"""directorctl against ipvsadm: `-Ln` and `-Sn` of one table, start-up included.

In a fresh network namespace: directord runs with no virtual servers (control
socket and state file in a temporary directory); the table (1,000 TCP services
x 4 masquerading destinations by default) is loaded with `ipvsadm -R`, so the
daemon does not manage it and lists it from the kernel as ipvsadm does. Then,
for --rounds rounds, each command runs once per client in an order rotated
every round: ipvsadm itself, and directorctl started three ways:

  script   .venv/bin/directorctl, the console script (site, the editable
           install's import hook)
  launcher a script `#!PYTHON -IS` that puts the checkout on sys.path and
           calls director.ctl.main (no site, no environment)
  file     PYTHON -I -S director/ctl.py (the module run as a file)

Every directorctl output (stdout, stderr, exit status) must be ipvsadm's of the
same round, byte for byte, or the run fails. Printed: median and minimum wall
time of each (a subprocess from fork to exit, output read through a pipe), the
ratio of medians to ipvsadm's, and to explain them Python's bare start-up and
the daemon's answer time seen from a client already connected.

With --managed (default on) a second namespace follows: a fresh directord, the
same table sent with `directorctl -R` (timed, next to the `ipvsadm -R` of the
first part), its 4,000 real servers health-checked (TCP connect, every
--managed-interval seconds, 60 by default: the emulated VM sustains a few
hundred probes a second, and a saturated daemon answers everything late)
against a listener in a server namespace, and once they are all in the table
the same rounds again.

With --restore (default on) a part of its own times the table's restore,
--rounds times each, alternating which goes first: `ipvsadm -R` into an
empty table, and `directorctl -R` (--restore-client, the console script by
default) into a freshly started directord, whose services it then manages
(their real servers checked as in the managed part). Printed: medians, the
ratio directorctl/ipvsadm, the daemon's own answer to the same -R sent
over a raw connection (after a -C on the same daemon), so the rest is the
client's start-up, its read of stdin and the wire, and from the daemon's
log (control_restore_timing) how the first -R's answer split ("daemon:")
and the raw one's ("raw:"): parsing, the lines' changes (kernel probes
included), and the commit (state file, pass). --only-restore skips the
listing parts.

    python tests/vm/run.py python bench/ctl.py [--services 1000] [--dests 4] [--rounds 10]
    python tests/vm/run.py python bench/ctl.py --only-restore --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    Directord,
    TcpTiming,
    destination_count,
    fork_sink,
    inside,
    ipvs_table,
    listener,
    namespace,
    print_table,
    ratio,
    server_namespace,
    stop_process,
)

IPVSADM = "/usr/sbin/ipvsadm"
COMMANDS = (("-Ln",), ("-Sn",))
SERVER_PREFIX = "10.2.0.0/16"
PORT = 80


def table(services: int, dests: int) -> str:
    """ipvsadm -R input: service i is 10.1.x.y:80, its servers 10.2.x.y:80."""
    lines = []
    for i in range(services):
        vip = f"10.1.{i // 250}.{i % 250 + 1}:{PORT}"
        lines.append(f"-A -t {vip} -s wrr")
        for j in range(dests):
            n = i * dests + j
            lines.append(f"-a -t {vip} -r 10.2.{n // 250}.{n % 250 + 1}:{PORT} -m -w 1")
    return "".join(f"{line}\n" for line in lines)


def clients(workdir: Path, sock: Path) -> dict[str, list[str]]:
    launcher = workdir / "directorctl-fast"
    launcher.write_text(
        f"#!{sys.executable} -IS\n"
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from director.ctl import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    where = ["--socket", str(sock)]
    return {
        "ipvsadm": [IPVSADM],
        "script": [str(REPO / ".venv" / "bin" / "directorctl"), *where],
        "launcher": [str(launcher), *where],
        "file": [sys.executable, "-I", "-S", str(REPO / "director" / "ctl.py"), *where],
    }


# Seconds any one command or raw request may take (--step-timeout): past
# that it is a hang, reported with what is known, not a wait for ever (two
# -R rounds in the VM once printed nothing for 8 minutes).
STEP_TIMEOUT = 600.0
# The directord the current step talks to, for the hang report.
WATCHED: list[Directord] = []


def timed(argv: Sequence[str], stdin: bytes | None = None) -> tuple[float, bytes, bytes, int]:
    started = time.perf_counter()
    try:
        done = subprocess.run(
            argv, input=stdin, capture_output=True, check=False, timeout=STEP_TIMEOUT
        )
    except subprocess.TimeoutExpired as expired:
        raise SystemExit(
            hang_report(
                f"{' '.join(argv)}{' (with input)' if stdin else ''}",
                time.perf_counter() - started,
                expired.stdout,
                expired.stderr,
            )
        ) from None
    return time.perf_counter() - started, done.stdout, done.stderr, done.returncode


def hang_report(what: str, seconds: float, out: bytes | None, err: bytes | None) -> str:
    """What is known when `what` did not finish: its output so far, and the
    daemon's state (process and threads, where they wait, its Python stacks
    when py-spy is there, its log's tail, the kernel's table size)."""
    lines = [
        f"HANG: {what} did not finish in {seconds:.1f} s (--step-timeout {STEP_TIMEOUT:g}); killed",
        f"  its stdout so far: {(out or b'')[-500:]!r}",
        f"  its stderr so far: {(err or b'')[-500:]!r}",
    ]
    try:
        lines.append(f"  kernel table: {len(ipvs_table())} services")
    except Exception as error:  # a report must not fail on what it reports
        lines.append(f"  kernel table: unreadable ({error!r})")
    for daemon in WATCHED:
        lines.extend(_daemon_state(daemon))
    return "\n".join(lines)


def _daemon_state(daemon: Directord) -> list[str]:
    process = daemon.process
    if process is None:
        return ["  directord: not started"]
    pid = process.pid
    if process.poll() is not None:
        lines = [f"  directord {pid}: exited with {process.returncode}"]
    else:
        lines = [f"  directord {pid}: running"]
        for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
            try:
                stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
                wchan = (task / "wchan").read_text()
                comm = (task / "comm").read_text().strip()
            except OSError:
                continue
            lines.append(f"    thread {task.name} ({comm}): state {stat[0]}, wchan {wchan}")
        spy = REPO / ".venv" / "bin" / "py-spy"
        if spy.exists():
            try:
                dump = subprocess.run(
                    [str(spy), "dump", "--pid", str(pid)],
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
                lines.append("    py-spy dump:")
                lines.extend(f"      {line}" for line in dump.stdout.decode().splitlines())
                if dump.returncode:
                    lines.append(f"      (py-spy: {dump.stderr.decode()[-300:]!r})")
            except subprocess.TimeoutExpired:
                lines.append("    py-spy dump: no answer in 120 s")
    try:
        log = (daemon.workdir / "directord.log").read_text(errors="replace").splitlines()
    except OSError as error:
        log = [f"(log unreadable: {error})"]
    lines.append(f"  directord log, last {min(len(log), 30)} of {len(log)} lines:")
    lines.extend(f"    {line[:400]}" for line in log[-30:])
    return lines


def _request_line(
    conn: socket.socket, reader: object, request: bytes, what: str
) -> dict[str, object]:
    """One raw request and its response line, within STEP_TIMEOUT."""
    started = time.perf_counter()
    try:
        conn.sendall(request)
        line = reader.readline()  # type: ignore[attr-defined]
    except TimeoutError:
        raise SystemExit(hang_report(what, time.perf_counter() - started, None, None)) from None
    reply: dict[str, object] = json.loads(line)
    return reply


def rounds(
    runs: dict[str, list[str]], count: int
) -> tuple[dict[tuple[str, str], list[float]], int]:
    """Each command by each client, order rotated per round; outputs checked
    unless the table changed meanwhile (a health check): then counted."""
    times: dict[tuple[str, str], list[float]] = {}
    names = list(runs)
    moved = 0
    for round_ in range(count):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for command in COMMANDS:
            outputs = {}
            before = ipvs_table()
            for name in order:
                seconds, out, err, status = timed([*runs[name], *command])
                times.setdefault((command[0], name), []).append(seconds)
                outputs[name] = (out, err, status)
            print(
                f"  round {round_ + 1} {command[0]}: "
                + ", ".join(f"{n} {times[(command[0], n)][-1] * 1000:.0f} ms" for n in names),
                flush=True,
            )
            if ipvs_table() != before:
                moved += 1
                continue
            expected = outputs["ipvsadm"]
            if expected[2] != 0 or not expected[0]:
                raise SystemExit(f"ipvsadm {command[0]} failed: {expected}")
            for name, got in outputs.items():
                if got != expected:
                    raise SystemExit(
                        f"round {round_ + 1}: {name} {command[0]} differs from ipvsadm's"
                        f" (status {got[2]} vs {expected[2]}, {len(got[0])} vs"
                        f" {len(expected[0])} bytes, stderr {got[1][:300]!r})"
                    )
    return times, moved


def answer_time(sock: Path, argv: Sequence[str], count: int) -> float:
    """Median seconds from request to the whole response, already connected."""
    request = json.dumps({"v": 1, "argv": list(argv)}).encode() + b"\n"
    samples = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(STEP_TIMEOUT)
        conn.connect(str(sock))
        with conn.makefile("rb") as reader:
            for _ in range(count):
                started = time.perf_counter()
                reply = _request_line(conn, reader, request, f"raw {' '.join(argv)}")
                samples.append(time.perf_counter() - started)
                if reply.get("status") != 0:
                    raise SystemExit(f"daemon answered {argv}: {reply}")
    return statistics.median(samples)


def raw_answer(
    sock: Path, argv: Sequence[str], stdin: str | None = None
) -> tuple[float, dict[str, object]]:
    """Seconds from one request to its whole response over a connection
    opened beforehand, and the response."""
    message: dict[str, object] = {"v": 1, "argv": list(argv)}
    if stdin is not None:
        message["args"] = {"stdin": stdin}
    request = json.dumps(message).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(STEP_TIMEOUT)
        conn.connect(str(sock))
        with conn.makefile("rb") as reader:
            started = time.perf_counter()
            what = f"raw {' '.join(argv)}"
            if stdin:
                what += f" ({len(stdin)} characters of input)"
            reply = _request_line(conn, reader, request, what)
            return time.perf_counter() - started, reply


def answer_split(count: int) -> dict[str, float]:
    """Where the daemon's answer goes, measured in this process: reading the
    table (brief, as plain listings and -S read it, and in full over
    netlink), and formatting it as ipvsadm does."""
    from director.ipvs.netlink import NetlinkBackend
    from director.ipvsadm import listing
    from director.ipvsadm.commands import ListFormat

    with NetlinkBackend() as backend:
        dumps: dict[str, list[float]] = {"full read": [], "brief read": []}
        entries = backend.services(brief=True)
        for _ in range(count):
            for name, brief in (("full read", False), ("brief read", True)):
                started = time.perf_counter()
                entries = backend.services(brief=brief)
                dumps[name].append(time.perf_counter() - started)
        info = backend.info()
    formats: dict[str, list[float]] = {"format -Ln": [], "format -Sn": []}
    for _ in range(count):
        started = time.perf_counter()
        listing.services(entries, info, ListFormat(numeric=True))
        formats["format -Ln"].append(time.perf_counter() - started)
        started = time.perf_counter()
        listing.save(entries, True)
        formats["format -Sn"].append(time.perf_counter() - started)
    return {k: statistics.median(v) for k, v in (dumps | formats).items()}


def startup(count: int) -> dict[str, float]:
    """Median wall time of an interpreter doing nothing, with and without site."""
    python = str(REPO / ".venv" / "bin" / "python")
    argvs = {
        "python -c pass (venv, site)": [python, "-c", "pass"],
        "python -I -S -c pass": [python, "-I", "-S", "-c", "pass"],
    }
    return {k: statistics.median(timed(v)[0] for _ in range(count)) for k, v in argvs.items()}


def report(title: str, times: dict[tuple[str, str], list[float]], sock: Path, count: int) -> None:
    rows = []
    for command in COMMANDS:
        base = statistics.median(times[(command[0], "ipvsadm")])
        for (cmd, name), samples in times.items():
            if cmd != command[0]:
                continue
            median = statistics.median(samples)
            rows.append(
                [
                    f"{cmd} {name}",
                    f"{median * 1000:.1f}",
                    f"{min(samples) * 1000:.1f}",
                    ratio(median, base),
                ]
            )
        answer = answer_time(sock, command, count)
        rows.append([f"{command[0]} daemon answer", f"{answer * 1000:.1f}", "", ""])
    print_table(title, ["command client", "median ms", "min ms", "x ipvsadm"], rows)


def unmanaged(args: argparse.Namespace, text: str, workdir: Path) -> float:
    with namespace("bench-ctl"):
        daemon = Directord([], TcpTiming(), workdir / "unmanaged")
        try:
            WATCHED[:] = [daemon]
            daemon.start(timeout=120)
            restore, _, err, status = timed([IPVSADM, "-R"], text.encode())
            if status != 0:
                raise SystemExit(f"ipvsadm -R: exit {status}: {err[:300]!r}")
            print(f"ipvsadm -R of the table: {restore:.2f} s", flush=True)
            sock = daemon.workdir / "director.sock"
            for name, seconds in answer_split(args.rounds).items():
                print(f"in this process, {name}: {seconds * 1000:.1f} ms", flush=True)
            times, moved = rounds(clients(daemon.workdir, sock), args.rounds)
            report(
                f"unmanaged table (loaded by ipvsadm -R), {args.rounds} rounds,"
                f" outputs identical ({moved} comparisons skipped: the table changed)",
                times,
                sock,
                args.rounds,
            )
        finally:
            daemon.stop()
            WATCHED.clear()
    return restore


def managed(
    args: argparse.Namespace, text: str, workdir: Path, ipvsadm_restore: float | None
) -> None:
    expected = args.services * args.dests
    with namespace("bench-ctl-m"), server_namespace("bench-ctl-rs", SERVER_PREFIX) as servers:
        with inside(servers):
            sink_socket = listener("0.0.0.0", PORT)
        sink = fork_sink([sink_socket])
        sink_socket.close()
        timing = TcpTiming(interval=args.managed_interval)
        daemon = Directord([], timing, workdir / "managed")
        try:
            WATCHED[:] = [daemon]
            daemon.start(timeout=120)
            sock = daemon.workdir / "director.sock"
            runs = clients(daemon.workdir, sock)
            seconds, out, err, status = timed([*runs["script"], "-R"], text.encode())
            if status != 0 or out or err:
                raise SystemExit(f"directorctl -R: exit {status}: {err[:300]!r}")
            against = (
                f" (ipvsadm -R: {ipvsadm_restore:.2f} s, x{ratio(seconds, ipvsadm_restore)})"
                if ipvsadm_restore is not None
                else ""
            )
            print(f"directorctl -R of the table: {seconds:.2f} s{against}", flush=True)
            started = time.monotonic()
            deadline = started + args.up_timeout
            while destination_count() < expected and time.monotonic() < deadline:
                time.sleep(0.5)
            count = destination_count()
            print(
                f"{count} of {expected} real servers probed up and in the table"
                f" after {time.monotonic() - started:.1f} s",
                flush=True,
            )
            times, moved = rounds(runs, args.rounds)
            for argv in (["status"], ["status", "--json"]):
                samples = []
                for _ in range(args.rounds):
                    seconds, out, err, status = timed([*runs["launcher"], *argv])
                    if status != 0:
                        raise SystemExit(f"directorctl {argv}: exit {status}: {err[:300]!r}")
                    samples.append(seconds)
                print(
                    f"directorctl {' '.join(argv)} (launcher, {args.services * args.dests}"
                    f" real servers): median {statistics.median(samples) * 1000:.0f} ms,"
                    f" min {min(samples) * 1000:.0f} ms, {len(out)} bytes",
                    flush=True,
                )
            report(
                f"managed table (loaded by directorctl -R, {count} destinations up,"
                f" each checked every {timing.interval:g} s), {args.rounds} rounds, outputs identical"
                f" ({moved} comparisons skipped: the table changed)",
                times,
                sock,
                args.rounds,
            )
        finally:
            daemon.stop()
            WATCHED.clear()
            stop_process(sink, signal.SIGKILL)


def restore(args: argparse.Namespace, text: str, workdir: Path) -> None:
    """`ipvsadm -R` and `directorctl -R` of the table, --rounds times each."""
    timing = TcpTiming(interval=args.managed_interval)
    samples: dict[str, list[float]] = {"ipvsadm -R": [], "directorctl -R": [], "daemon answer": []}
    # with a daemon that logs control_restore_timing: where its answer's time went
    with namespace("bench-ctl-r"), server_namespace("bench-ctl-rrs", SERVER_PREFIX) as servers:
        with inside(servers):
            sink_socket = listener("0.0.0.0", PORT)
        sink = fork_sink([sink_socket])
        sink_socket.close()
        try:
            for round_ in range(args.rounds):
                times = {}
                order = (
                    ["ipvsadm", "directorctl"] if round_ % 2 == 0 else ["directorctl", "ipvsadm"]
                )
                for side in order:
                    if side == "ipvsadm":
                        times["ipvsadm -R"] = restore_ipvsadm(text)
                    else:
                        times.update(restore_directorctl(args, text, timing, workdir, round_))
                for name, seconds in times.items():
                    samples.setdefault(name, []).append(seconds)
                print(
                    f"  restore round {round_ + 1}: "
                    + ", ".join(f"{n} {s:.2f} s" for n, s in times.items()),
                    flush=True,
                )
        finally:
            stop_process(sink, signal.SIGKILL)
    base = statistics.median(samples["ipvsadm -R"])
    rows = [
        [name, f"{statistics.median(v):.2f}", f"{min(v):.2f}", ratio(statistics.median(v), base)]
        for name, v in samples.items()
    ]
    print_table(
        f"restore of {text.count(chr(10))} lines, {args.rounds} rounds"
        f" (directorctl: {args.restore_client} client, a fresh directord each round)",
        ["what", "median s", "min s", "x ipvsadm -R"],
        rows,
    )


def restore_ipvsadm(text: str) -> float:
    run_checked([IPVSADM, "-C"])
    seconds, _, err, status = timed([IPVSADM, "-R"], text.encode())
    if status != 0:
        raise SystemExit(f"ipvsadm -R: exit {status}: {err[:300]!r}")
    run_checked([IPVSADM, "-C"])
    return seconds


def restore_directorctl(
    args: argparse.Namespace, text: str, timing: TcpTiming, workdir: Path, round_: int
) -> dict[str, float]:
    # A stop that had to kill the previous daemon may have left its table.
    run_checked([IPVSADM, "-C"])
    daemon = Directord([], timing, workdir / f"restore-{round_}")
    try:
        WATCHED[:] = [daemon]
        daemon.start(timeout=300)
        sock = daemon.workdir / "director.sock"
        client = clients(daemon.workdir, sock)[args.restore_client]
        seconds, out, err, status = timed([*client, "-R"], text.encode())
        if status != 0 or out or err:
            raise SystemExit(f"directorctl -R: exit {status}: {err[:300]!r}")
        if len(ipvs_table()) != args.services:
            raise SystemExit(f"directorctl -R: {len(ipvs_table())} services in the table")
        raw_answer(sock, ["-C"])
        answer, reply = raw_answer(sock, ["-R"], text)
        if reply.get("status") != 0 or len(ipvs_table()) != args.services:
            raise SystemExit(f"raw -R: {str(reply)[:300]}")
        split = {"directorctl -R": seconds, "daemon answer": answer}
        time.sleep(0.5)  # the daemon's log is written by a thread of its own
        # The first -R's (through directorctl), then the raw one's.
        for name, event in zip(
            ("daemon", "raw"), daemon.events("control_restore_timing"), strict=False
        ):
            for part in ("parse", "wait", "changes", "commit"):
                value = event.get(part)
                if isinstance(value, int | float):
                    split[f"{name}: {part}"] = float(value)
        return split
    finally:
        daemon.stop()
        WATCHED.clear()
        run_checked([IPVSADM, "-C"])


def run_checked(argv: Sequence[str]) -> None:
    done = subprocess.run(argv, capture_output=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv}: exit {done.returncode}: {done.stderr[:300]!r}")


def main() -> None:
    global STEP_TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--dests", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--unmanaged", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--managed", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--up-timeout", type=float, default=300.0)
    parser.add_argument(
        "--managed-interval",
        type=float,
        default=60.0,
        help="seconds between two checks of a server in the managed part (its"
        " [control] runtime_check): the VM probes a few hundred servers a second",
    )
    parser.add_argument(
        "--step-timeout",
        type=float,
        default=STEP_TIMEOUT,
        help="seconds one command or raw request may take before the run stops"
        " as a hang, with a report of what is known (the daemon's threads, stacks, log)",
    )
    parser.add_argument("--restore", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--only-restore", action="store_true", help="only the restore part (implies --restore)"
    )
    parser.add_argument(
        "--restore-client",
        choices=("script", "launcher", "file"),
        default="script",
        help="how the restore part starts directorctl (see clients())",
    )
    args = parser.parse_args()
    STEP_TIMEOUT = args.step_timeout
    if os.geteuid() != 0:
        raise SystemExit("run as root where the kernel has ip_vs (tests/vm/run.py)")
    text = table(args.services, args.dests)
    print(
        f"table: {args.services} services x {args.dests} destinations"
        f" ({text.count(chr(10))} lines, {len(text)} bytes)"
    )
    for name, seconds in startup(args.rounds).items():
        print(f"start-up, {name}: {seconds * 1000:.1f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ctl-") as tmp:
        if args.restore or args.only_restore:
            restore(args, text, Path(tmp))
        if args.only_restore:
            return
        ipvsadm_restore = unmanaged(args, text, Path(tmp)) if args.unmanaged else None
        if args.managed:
            managed(args, text, Path(tmp), ipvsadm_restore)


if __name__ == "__main__":
    main()
