"""directord as a child process of a test: started in the test's namespace
with a NOTIFY_SOCKET the test listens on (so "ready" means the daemon said
READY=1, no polling), its JSON log lines collected as they come, stopped with
SIGTERM (or killed at teardown whatever happens)."""

from __future__ import annotations

import itertools
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# The unit's TimeoutStartSec; the VM is emulated (no KVM) and can stall for
# long when the host is busy, so the first READY=1 gets more, and like systemd
# each EXTEND_TIMEOUT_USEC the daemon sends while it starts moves the deadline.
START_TIMEOUT = 150.0
STOP_TIMEOUT = 60.0
_starts = itertools.count()


def wait_until(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy; that value. Fails
    with `what` and the last value seen when `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:.0f} s still not: {what} (last: {value!r})")
        time.sleep(every)


def wait_alive(
    condition: Callable[[], T],
    what: str,
    *,
    alive: Callable[[], bool],
    log: Callable[[], str],
    timeout: float,
    every: float = 0.1,
    context: Callable[[], str] | None = None,
) -> T:
    """wait_until for a test that needs a daemon alive: poll `condition`
    every `every` seconds until it returns something truthy; that value.
    Fails at once, with `log()`, when `alive()` turns false, and after
    `timeout` seconds with `context()` (the log when not given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if not alive():
            raise AssertionError(f"directord exited while waiting for: {what}\n{log()}")
        if time.monotonic() > deadline:
            shown = context() if context is not None else log()
            raise AssertionError(f"after {timeout:.0f} s still not: {what}\n{shown}")
        time.sleep(every)


def waiter(
    daemon: Daemon, timeout: float, table: Callable[[], str], every: float = 0.2
) -> Callable[[Callable[[], T], str], T]:
    """`wait(condition, what)`: wait_alive on `daemon`, with `table()` (an
    ipvsadm listing) and the daemon's log when it times out."""

    def wait(condition: Callable[[], T], what: str) -> T:
        return wait_alive(
            condition,
            what,
            alive=daemon.alive,
            log=daemon.log_text,
            timeout=timeout,
            every=every,
            context=lambda: f"table:\n{table()}\ndirectord's log:\n{daemon.log_text()}",
        )

    return wait


class Daemon:
    def __init__(self, config: Path, nofile: int | None = None) -> None:
        """`nofile`: the daemon's open-file limit, soft and hard (none: the test's)."""
        self.config = config
        self.nofile = nofile
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None
        self._notify: socket.socket | None = None
        self._notify_path = ""

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start directord and wait for its READY=1."""
        self.launch()
        self.expect_notification("READY=1", START_TIMEOUT)

    def launch(self) -> None:
        """Start directord; return at once (expect_notification waits)."""
        assert self.process is None, "already running"
        # A short path of its own: AF_UNIX addresses are limited to 107 bytes.
        address = os.path.join(tempfile.gettempdir(), f"dn-{os.getpid()}-{next(_starts)}")
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(address)
        self._notify_path = address
        argv = [sys.executable, "-m", "director.entry", "--config", str(self.config)]
        self.process = subprocess.Popen(
            [*argv, "--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NOTIFY_SOCKET": address},
            preexec_fn=None if self.nofile is None else partial(_limit_files, self.nofile),
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._running().pid

    def cpu_seconds(self) -> float:
        """utime + stime of every thread of the daemon so far, in seconds
        (proc(5), /proc/PID/stat fields 14 and 15)."""
        return cpu_seconds(self.pid)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Signal the daemon and wait for it to exit; its exit status."""
        process = self._running()
        process.send_signal(sig)
        try:
            status = process.wait(timeout=STOP_TIMEOUT)
        finally:
            self._reap()
        return status

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self._reap()

    def _reap(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)
        if self._notify is not None:
            self._notify.close()
            os.unlink(self._notify_path)
        self.process = self._reader = self._notify = None

    def alive(self) -> bool:
        """Whether the daemon was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def _running(self) -> subprocess.Popen[str]:
        assert self.process is not None, "directord is not running"
        return self.process

    def reload(self) -> None:
        """SIGHUP; returns once the daemon said RELOADING=1 then READY=1."""
        self._running().send_signal(signal.SIGHUP)
        self.expect_notification("RELOADING=1", START_TIMEOUT)
        self.expect_notification("READY=1", START_TIMEOUT)

    # -- sd_notify ----------------------------------------------------------

    def expect_notification(self, field: str, timeout: float) -> None:
        """Wait for `field` (READY=1, ...) as systemd would: at most `timeout`
        seconds, or as long as the daemon's EXTEND_TIMEOUT_USEC asks."""
        assert self._notify is not None
        deadline = time.monotonic() + timeout
        while True:
            process = self._running()
            if process.poll() is not None:
                raise AssertionError(
                    f"directord exited ({process.returncode}) before {field}:\n{self.log_text()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no {field} from directord in {timeout:.0f} s:\n{self.log_text()}"
                )
            self._notify.settimeout(min(left, 1.0))
            try:
                message = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            fields = message.split("\n")
            if field in fields:
                return
            for extend in fields:
                if extend.startswith("EXTEND_TIMEOUT_USEC="):
                    asked = int(extend.partition("=")[2]) / 1_000_000
                    deadline = max(deadline, time.monotonic() + asked)

    # -- logs ---------------------------------------------------------------

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        with process.stderr:
            for line in process.stderr:
                with self._lock:
                    self.lines.append(line.rstrip("\n"))

    def log_text(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-60:])

    def logged(self) -> list[dict[str, Any]]:
        """Every event logged so far (the lines that are JSON objects)."""
        with self._lock:
            lines = list(self.lines)
        found = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                found.append(event)
        return found

    def events(self, name: str, **fields: object) -> list[dict[str, Any]]:
        """Logged events called `name` whose fields include `fields`."""
        return [e for e in self.logged() if e.get("event") == name and _has(e, fields)]

    def operations(self, **fields: object) -> list[dict[str, Any]]:
        """The kernel operations the daemon logged, one dict each, whose fields
        include `fields`: its `ipvs_op` lines, and each real server of an
        `ipvs_ops` line (a run of like operations, director.ipvs.oplog) as
        an `ipvs_op` of its own."""
        found = []
        for e in self.logged():
            if e.get("event") == "ipvs_op":
                found.append(e)
            elif e.get("event") == "ipvs_ops":
                rest = {k: v for k, v in e.items() if k != "count"}
                found += [rest | {"event": "ipvs_op", "rs": rs} for rs in e["rs"]]
        return [e for e in found if _has(e, fields)]

    def wait_event(self, name: str, timeout: float, **fields: object) -> dict[str, Any]:
        try:
            found = wait_until(
                lambda: self.events(name, **fields), timeout, f"directord logged {name} {fields}"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\ndirectord's log:\n{self.log_text()}") from None
        return found[0]


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` (proc(5): fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _has(event: Mapping[str, object], fields: Mapping[str, object]) -> bool:
    return all(event.get(key) == value for key, value in fields.items())
