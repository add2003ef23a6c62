"""BIRD 2 as directord's BGP speaker (director.bgp.Speaker): a child
process, its config file and its control socket in [bgp] runtime_dir.

BIRD must not outlive directord: a VIP announced with nothing checking it
draws traffic to dead servers. It is started through util-linux's
`setpriv --pdeathsig TERM`, from the daemon's main thread (the kernel
sends the signal when the *thread* that forked it exits, prctl(2)
PR_SET_PDEATHSIG; trio's own open_process forks from a worker thread that
exits when idle). However directord dies, kill -9 included, BIRD gets
SIGTERM and closes its sessions with a Cease NOTIFICATION, and the peers
drop its routes at once. A BIRD left by a directord that died while
starting it is found by its pid file and stopped before a new one starts.

`birdc` (BIRD's own client) gives BIRD each new config (`configure`) and
reads the sessions' states (`show protocols`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

import trio

from director import log
from director.bgp import STOP_GRACE, SpeakerError
from director.config.bgp import CONTROL_SOCKET
from director.config.model import BgpSettings
from director.oserror import strerror

SETPRIV = "setpriv"
CONFIG_FILE = "bird.conf"
PID_FILE = "bird.pid"
START_TIMEOUT = 10.0  # seconds for BIRD to answer on its control socket
BIRDC_TIMEOUT = 10.0
TAIL = 20  # last lines of BIRD's stderr kept for the log of its exit
POLL = 0.05  # seconds between looks at a starting BIRD


def paths(settings: BgpSettings) -> tuple[Path, Path, Path]:
    """The config file, the control socket and the pid file."""
    runtime = Path(settings.runtime_dir)
    return runtime / CONFIG_FILE, runtime / CONTROL_SOCKET, runtime / PID_FILE


def write_config(path: Path, text: str) -> None:
    """Atomically, mode 0600 (a peer's password may be in it); blocking."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a leftover file keeps its mode through O_CREAT
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare(settings: BgpSettings, config: str) -> None:
    """The runtime directory (0700), no stale BIRD of ours, the config
    written. Blocking; raises OSError."""
    conf, _, pidfile = paths(settings)
    conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    stop_stale(pidfile, conf)
    write_config(conf, config)


def stop_stale(pidfile: Path, conf: Path) -> None:
    """SIGTERM (then SIGKILL) a BIRD still running from an earlier
    directord: the pid in `pidfile`, if its command line names `conf`."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return
    if os.fsencode(conf) not in cmdline:
        return
    log.get("bgp").warning("bgp_stale_speaker", pid=pid, action="stopped (SIGTERM)")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if not Path(f"/proc/{pid}").exists():
                return
            time.sleep(POLL)


class Bird:
    """director.bgp.Speaker through BIRD 2 and birdc."""

    def __init__(self) -> None:
        self.log = log.get("bgp")

    async def run(
        self,
        settings: BgpSettings,
        config: str,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> tuple[int, str]:
        conf, sock, pidfile = paths(settings)
        try:
            await trio.to_thread.run_sync(prepare, settings, config)
        except OSError as error:
            raise SpeakerError(f"{settings.runtime_dir}: {strerror(error)}") from error
        argv = [SETPRIV, "--pdeathsig", "TERM", settings.bird, "-f"]
        argv += ["-c", str(conf), "-s", str(sock), "-P", str(pidfile)]
        try:
            # Here, in the main thread: see the module's docstring.
            process = subprocess.Popen(  # noqa: ASYNC220
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as error:
            raise SpeakerError(f"cannot run {SETPRIV}: {strerror(error)}") from error
        assert process.stderr is not None
        stderr = trio.lowlevel.FdStream(os.dup(process.stderr.fileno()))
        process.stderr.close()
        pidfd = os.pidfd_open(process.pid)
        tail: deque[str] = deque(maxlen=TAIL)
        said_all = trio.Event()
        # BIRD's last words (why it would not start, its shutdown) are read
        # even when this task is cancelled: until its stderr ends, or a
        # second after it exited.
        listening = trio.CancelScope(shield=True)

        async def listen() -> None:
            with listening:
                await self._pump(stderr, tail, said_all)

        problem: str | None = "cancelled"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                try:
                    problem = await self._until_ready(process, sock)
                    if problem is None:
                        task_status.started(process.pid)
                        await trio.lowlevel.wait_readable(pidfd)
                finally:
                    with trio.CancelScope(shield=True):
                        await _end(process, pidfd)
                        with trio.move_on_after(1.0):
                            await said_all.wait()
                    listening.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await stderr.aclose()
                os.close(pidfd)
        words = "; ".join(tail)
        if problem is not None:
            raise SpeakerError(f"{problem}{': ' + words if words else ''}")
        return process.returncode, words

    async def _until_ready(self, process: subprocess.Popen[bytes], sock: Path) -> str | None:
        """None once BIRD answers on its control socket; else why not."""
        deadline = trio.current_time() + START_TIMEOUT
        while trio.current_time() < deadline:
            if process.poll() is not None:
                return f"BIRD exited at start (status {process.returncode})"
            try:
                stream = await trio.open_unix_socket(str(sock))
            except OSError:
                await trio.sleep(POLL)
                continue
            async with stream:
                with trio.move_on_after(1.0):
                    banner = await stream.receive_some(256)
                    if banner.startswith(b"0001 "):
                        return None
            await trio.sleep(POLL)
        return f"BIRD did not answer on {sock} within {START_TIMEOUT:g} s"

    async def _pump(
        self, stderr: trio.lowlevel.FdStream, tail: deque[str], said_all: trio.Event
    ) -> None:
        """BIRD's log lines (stderr) into directord's log, until its end."""
        pending = b""
        while True:
            try:
                data = await stderr.receive_some(65536)
            except (trio.ClosedResourceError, OSError):
                return
            if not data:
                if pending:
                    self._line(pending, tail)
                said_all.set()
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._line(line, tail)

    def _line(self, raw: bytes, tail: deque[str]) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        tail.append(text)
        level, message = bird_log_level(text)
        getattr(self.log, level)("bird", message=message)

    async def configure(self, settings: BgpSettings, config: str) -> None:
        conf, _, _ = paths(settings)
        try:
            await trio.to_thread.run_sync(write_config, conf, config)
        except OSError as error:
            raise SpeakerError(f"{conf}: {strerror(error)}") from error
        await self._birdc(settings, "configure")

    async def protocols(self, settings: BgpSettings) -> str:
        return await self._birdc(settings, "show", "protocols")

    async def _birdc(self, settings: BgpSettings, *args: str) -> str:
        _, sock, _ = paths(settings)
        argv = [settings.birdc, "-s", str(sock), *args]
        result = None
        with trio.move_on_after(BIRDC_TIMEOUT):
            try:
                result = await trio.run_process(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            except OSError as error:
                raise SpeakerError(f"cannot run {settings.birdc}: {error.strerror}") from error
        if result is None:
            raise SpeakerError(f"{' '.join(argv)}: no answer within {BIRDC_TIMEOUT:g} s")
        out = result.stdout.decode("utf-8", "replace")
        if result.returncode != 0:
            words = (out + result.stderr.decode("utf-8", "replace")).strip().splitlines()
            said = "; ".join(line for line in words if not line.startswith("BIRD "))
            raise SpeakerError(f"birdc {' '.join(args)}: {said or f'status {result.returncode}'}")
        return out


_LEVELS = {
    "TRACE": "debug",
    "DBG": "debug",
    "INFO": "info",
    "RMT": "warning",
    "WARN": "warning",
    "ERR": "error",
    "AUTH": "error",
    "FATAL": "error",
    "BUG": "error",
}


def bird_log_level(line: str) -> tuple[str, str]:
    """A stderr line of BIRD's log ('2026-12-01 02:02:27.203 <INFO> Started')
    as (our log level, its message)."""
    start = line.find("<")
    end = line.find("> ", start)
    if start < 0 or end < 0:
        return "info", line
    message = line[end + 2 :]
    if "State changed" in message:  # a session up or down (debug { states })
        return "info", message
    if message == "Shutdown completed":  # logged as FATAL at every clean stop
        return "info", message
    return _LEVELS.get(line[start + 1 : end], "info"), message


async def _end(process: subprocess.Popen[bytes], pidfd: int) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    with trio.move_on_after(STOP_GRACE):
        await trio.lowlevel.wait_readable(pidfd)
    if process.poll() is None:
        process.kill()
        await trio.lowlevel.wait_readable(pidfd)
    process.wait()
