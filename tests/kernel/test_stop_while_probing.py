"""SIGTERM while hundreds of probes are in flight: directord exits 0, every
time, and leaves the table in place. Signals in directord's first moments
and during its stop end nothing but what they ask for.

The stop cancels the checker's tasks. A task woken with a value in the same
instant (the scheduler by its own deadline, a worker whose UDP probe the stop
cancelled) may run after the TCP watcher has ended; in CI, one such stop made
directord exit 1 with `ClosedResourceError: the TCP probes' watcher has
ended` (tests/unit/test_checker_stop.py has the mechanism). Here the real
daemon is stopped many times at seeded moments while its probes fall due on
every tick: TCP checks whose timeout is their interval (a probe's deadline
is its next start) against real servers that answer, refuse, or never
complete the handshake, and UDP checks that wait on silent ports (workers
busy at the stop).

Everything lives in the test's own network namespace: the real servers are
sockets this process opens on a dummy interface's addresses.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from daemon_runner import Daemon, wait_until
from topology import ipvsadm, run

SEED = int(os.environ.get("DIRECTOR_STOP_SEED", "20261202"))
STOPS = int(os.environ.get("DIRECTOR_STOP_TRIALS", "12"))
SERVER_NET = "10.82.0"
SERVERS_PER_KIND = 40
VIPS = 4


@contextlib.contextmanager
def real_servers() -> Iterator[dict[str, list[tuple[str, int]]]]:
    """Real servers on 10.82.0.1 of a dummy link: `open` (accept queue
    room), `dropping` (accept queue full: SYNs are dropped, the connect
    never completes), `closed` (bound, not listening: refused), `silent`
    (UDP, never answered)."""
    run("ip", "link", "add", "rs0", "type", "dummy")
    run("ip", "addr", "add", f"{SERVER_NET}.1/24", "dev", "rs0")
    run("ip", "link", "set", "rs0", "up")
    held: list[socket.socket] = []
    kinds: dict[str, list[tuple[str, int]]] = {
        "open": [],
        "dropping": [],
        "closed": [],
        "silent": [],
    }
    address = f"{SERVER_NET}.1"
    try:
        for _ in range(SERVERS_PER_KIND):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(listener)
            listener.bind((address, 0))
            listener.listen(4096)
            kinds["open"].append((address, listener.getsockname()[1]))

            full = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(full)
            full.bind((address, 0))
            full.listen(0)
            port = full.getsockname()[1]
            for _ in range(2):
                filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect((address, port))
            kinds["dropping"].append((address, port))

            # Bound, never listening: refused, and its port not given to
            # another socket of this test (a port closed here was, once: a
            # duplicate real server in the config).
            closed = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(closed)
            closed.bind((address, 0))
            kinds["closed"].append((address, closed.getsockname()[1]))

            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(silent)
            silent.bind((address, 0))
            kinds["silent"].append((address, silent.getsockname()[1]))
        yield kinds
    finally:
        for sock in held:
            sock.close()
        run("ip", "link", "del", "rs0")


def config_text(workdir: Path, kinds: dict[str, list[tuple[str, int]]]) -> str:
    lines = [
        "[daemon]",
        "reconcile_interval = 5.0",
        f'state_file = "{workdir}/state.json"',
        "[control]",
        f'socket = "{workdir}/director.sock"',
    ]
    tcp = 'check = { type = "tcp", interval = 0.2, timeout = 0.2, rise = 1, fall = 1 }'
    udp = 'check = { type = "udp", silence = "up", interval = 0.3, timeout = 5.0, rise = 1, fall = 1 }'  # fmt: skip
    for n in range(VIPS):
        protocol = "udp" if n == VIPS - 1 else "tcp"
        servers = (
            kinds["silent"]
            if protocol == "udp"
            else [*kinds["open"], *kinds["dropping"], *kinds["closed"]][n :: VIPS - 1]
        )
        lines += [
            "[[virtual_server]]",
            f'protocol = "{protocol}"',
            f'address = "10.83.0.{n + 1}:80"',
            'scheduler = "wlc"',
            udp if protocol == "udp" else tcp,
        ]
        for address, port in servers:
            lines += [
                "[[virtual_server.real_server]]",
                f'address = "{address}:{port}"',
                'forward = "masq"',
            ]
    return "\n".join(lines) + "\n"


def test_sigterm_while_probes_fall_due_exits_0_every_time(netns: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    with real_servers() as kinds:
        config = tmp_path / "director.toml"
        config.write_text(config_text(tmp_path, kinds))
        for trial in range(STOPS):
            daemon = Daemon(config)
            try:
                daemon.start()
                # Every probe has started by now (jitter: one interval), and
                # the open servers are coming in; then a moment of the tick.
                daemon.wait_event("real_server_up", 30.0)
                time.sleep(rng.uniform(0.0, 0.5))
                status = daemon.stop()
                log = daemon.log_text()
            finally:
                daemon.close()
            where = f"stop {trial + 1} of {STOPS} (seed {SEED})"
            assert status == 0, f"{where}: exited {status}\n{log}"
            assert "Traceback" not in log, f"{where}:\n{log}"
            assert daemon.events("stopping", signal="SIGTERM"), f"{where}:\n{log}"
            assert daemon.events("table_left_in_place", services=VIPS), f"{where}:\n{log}"
        # What the stops left: the four services, and only servers that
        # answer (those up by the last stop).
        saved = ipvsadm("-Sn")
        for n in range(VIPS):
            assert f"-A -{'u' if n == VIPS - 1 else 't'} 10.83.0.{n + 1}:80" in saved, saved
        for address, port in kinds["dropping"] + kinds["closed"]:
            assert f"{address}:{port} " not in saved, saved
        # A last daemon brings every answering server in; its stop leaves
        # the table as it was. The silent UDP servers come in last, at their
        # first probe's timeout (silence is up): until then the table is
        # still filling, and a snapshot taken earlier (once, in CI) differs
        # from the table at the stop by the daemon's own work, not the stop's.
        settled = kinds["open"] + kinds["silent"]
        daemon = Daemon(config)
        try:
            daemon.start()
            wait_until(
                lambda: all(f"{a}:{p} " in ipvsadm("-Sn") for a, p in settled),
                60.0,
                "every open TCP and silent UDP real server in the table",
            )
            before = ipvsadm("-Sn")
            assert daemon.stop() == 0, daemon.log_text()
            log = daemon.log_text()
        finally:
            daemon.close()
        after = ipvsadm("-Sn")
        changed = set(before.splitlines()) ^ set(after.splitlines())
        assert after == before, f"changed: {sorted(changed)}\n{log}"
        ipvsadm("-C")


def caught(pid: int, signum: int) -> bool:
    """Whether the process catches `signum` (its SigCgt mask, proc(5))."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def launched_and_caught(daemon: Daemon) -> None:
    """Launch directord; return as soon as its `directord` command catches
    SIGHUP (director.entry, before the daemon's imports), and check that it
    has logged nothing yet: the daemon is not listening for signals."""
    daemon.launch()
    wait_until(lambda: caught(daemon.pid, signal.SIGHUP), 30.0, "directord catches SIGHUP", 0.002)
    assert daemon.log_text() == "", "the daemon was already running: too late for this test"


def test_signals_in_the_first_moments_and_during_the_stop(netns: str, tmp_path: Path) -> None:
    """Operator trial: a SIGHUP during directord's imports killed it with no
    log line (exit -1), SIGINT printed a traceback, and a second signal
    during a stop made the exit status that signal's. Now an early SIGHUP is
    a reload once the daemon runs, an early SIGTERM a clean stop, and a
    signal during the stop ends nothing more."""
    with real_servers() as kinds:
        config = tmp_path / "director.toml"
        config.write_text(config_text(tmp_path, kinds))

        daemon = Daemon(config)
        try:
            launched_and_caught(daemon)
            os.kill(daemon.pid, signal.SIGHUP)
            daemon.expect_notification("READY=1", 120.0)
            daemon.wait_event("reload", 60.0, signal="SIGHUP")
            assert daemon.alive()
            daemon.wait_event("real_server_up", 30.0)
            process = daemon.process
            assert process is not None
            process.send_signal(signal.SIGTERM)
            time.sleep(0.05)
            process.send_signal(signal.SIGINT)  # during the stop
            status = daemon.stop(signal.SIGTERM)  # and a third
            log = daemon.log_text()
        finally:
            daemon.close()
        assert status == 0, log
        assert "Traceback" not in log, log
        assert len(daemon.events("stopping")) == 1, log

        for early in (signal.SIGTERM, signal.SIGINT):
            daemon = Daemon(config)
            try:
                launched_and_caught(daemon)
                status = daemon.stop(early)
                log = daemon.log_text()
            finally:
                daemon.close()
            assert status == 0, f"{early.name}: {status}\n{log}"
            assert "Traceback" not in log, log
            assert daemon.events("stopping", signal=early.name), log
        ipvsadm("-C")
