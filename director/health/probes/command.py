"""Exec check: run a command; exit status 0 is up.

The command runs in a process group of its own. When the probe ends, by the
command's exit or by the timeout, the whole group is killed: a shell and what
it started, including a child that would hold the output pipes open. A
process that left the group (setsid(1), a daemon that detaches itself) is not
tracked: it is the command's to end. Its output is read as it comes, at most
MAX_OUTPUT bytes of standard output and standard error together: a command
that writes more is killed at once (its group, as at the timeout) and the
probe fails, `output over 64 KiB: stopped`, so that one flooding its output
costs the daemon a few reads, not a CPU for the whole timeout. Of what is
read, the tails are kept (MAX_STDOUT, MAX_STDERR). With dynamic_weight, the
last line of its standard output sets the weight.

A killed command is waited for KILL_WAIT seconds at most: one stuck in the
kernel (state D, an NFS server gone) outlives SIGKILL until the kernel lets
it go. The probe then fails, saying so, and the process is left to a reaper
task that waits for it (no zombie is left once it exits); it is logged as
`exec_check_unkillable` at the 1st, 10th, 100th... such process.

It runs with the daemon's environment less the variables systemd gives the
daemon alone (the notify socket, the watchdog, socket activation), as the
daemon's user unless `user` names another one: then with that user's uid,
primary group and supplementary groups, and its HOME, USER and LOGNAME.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import select
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from director import log
from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import ExecCheck
from director.ipvs.facts import MAX_WEIGHT
from director.ipvs.model import IPAddress

# Bytes of output (standard output and standard error together) one probe
# reads; a command that writes more is stopped. A weight line is 6 bytes and a
# failure's message a line: this is far above both, and is a pipe's default
# capacity on Linux (pipe(7)), so a command within it never waits on the
# daemon to write. A command that floods its output (`yes`) then costs the
# daemon a few reads, not a CPU for its whole timeout.
MAX_OUTPUT = 64 << 10
MAX_STDOUT = 64 << 10  # bytes of standard output kept: the end, with the weight line
MAX_STDERR = 4 << 10  # bytes of standard error kept: the end, for the failure's detail
READ_SIZE = 64 << 10
KILL_WAIT = 3.0  # seconds a killed command may take to exit before it is left to the reaper
# sd_notify(3), sd_watchdog_enabled(3), sd_listen_fds(3): meant for the daemon only.
SYSTEMD_ONLY = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
_DIGITS = re.compile(r"[0-9]+")
OVER_LIMIT = f"output over {MAX_OUTPUT >> 10} KiB: stopped"


class UnknownUser(LookupError):
    pass


@dataclass(frozen=True)
class Identity:
    """Who a command runs as: arguments for subprocess.Popen and the login
    variables of its environment."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    name: str

    @classmethod
    def of(cls, user: str) -> Identity:
        """The user's uid, primary group and supplementary groups (from
        getpwnam(3) and getgrouplist(3)); raises UnknownUser."""
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            raise UnknownUser(f"no user {user!r}") from None
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
        return cls(entry.pw_uid, entry.pw_gid, tuple(groups), entry.pw_dir, entry.pw_name)

    def popen_options(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def environment(self) -> dict[str, str]:
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name}


def command_environment(
    base: dict[str, str] | os._Environ[str], identity: Identity | None
) -> dict[str, str]:
    """The environment a command gets: `base` without SYSTEMD_ONLY, with the
    identity's login variables."""
    env = {k: v for k, v in base.items() if k not in SYSTEMD_ONLY}
    if identity is not None:
        env.update(identity.environment())
    return env


class Tail:
    """The last `limit` bytes of a stream."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self._data = bytearray()

    def add(self, chunk: bytes | bytearray) -> None:
        self.seen += len(chunk)
        self._data += chunk[-self.limit :]
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]

    def __bytes__(self) -> bytes:
        return bytes(self._data)


@dataclass
class _Run:
    """What one run of a command leaves: the tails of its output, whether it
    wrote more than MAX_OUTPUT (then it was stopped), and the pid of a
    process that outlived SIGKILL by KILL_WAIT (left to the reaper)."""

    stdout: Tail
    stderr: Tail
    left_to_reaper: int | None = None
    over_limit: bool = False

    @property
    def read(self) -> int:
        """Bytes read of both streams."""
        return self.stdout.seen + self.stderr.seen


async def probe_exec(check: ExecCheck, address: IPAddress, port: int) -> ProbeResult:
    run = _Run(Tail(MAX_STDOUT), Tail(MAX_STDERR))
    with probe_attempt(check.timing.timeout) as attempt:
        try:
            identity = Identity.of(check.user) if check.user is not None else None
        except UnknownUser as e:
            attempt.fail(Reason.ERROR, str(e))
            return attempt.result
        returncode = await _run(check.command, identity, run)
        if run.over_limit:
            attempt.fail(Reason.BAD_REPLY, OVER_LIMIT)
        elif returncode != 0:
            attempt.fail(Reason.EXIT_STATUS, _describe_failure(returncode, bytes(run.stderr)))
        elif check.dynamic_weight:
            weight, detail = weight_from_output(bytes(run.stdout))
            attempt.succeed(weight=weight, detail=detail)
        else:
            attempt.succeed(detail="exit 0")
    result = attempt.result
    if run.left_to_reaper is not None:
        detail = (
            f"{result.detail}; pid {run.left_to_reaper} still running {KILL_WAIT:g} s"
            " after SIGKILL (stuck in the kernel?), left to a reaper"
        )
        return ProbeResult.failure(result.reason, result.latency, detail)
    return result


async def _run(command: tuple[str, ...], identity: Identity | None, run: _Run) -> int:
    """Run `command` to its exit, keeping the tails of its output in `run`;
    the exit status (negative: killed by that signal). On cancellation the
    group is killed first; once more than MAX_OUTPUT bytes came, at once
    (`run.over_limit`)."""
    # Opened outside the nursery: a command that cannot start (ENOENT, EACCES)
    # raises its OSError as such, for probe_attempt, not in an exception group.
    process = await trio.lowlevel.open_process(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env=command_environment(os.environ, identity),
        **(identity.popen_options() if identity is not None else {}),
    )
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None

            def stop() -> None:
                # Before its pipes close: it dies by SIGKILL, not by a
                # SIGPIPE some command would catch.
                _kill_group(process.pid)
                nursery.cancel_scope.cancel()

            nursery.start_soon(_keep_tail, process.stdout, run.stdout, run, stop)
            nursery.start_soon(_keep_tail, process.stderr, run.stderr, run, stop)
            await process.wait()
            # What the command left behind must not keep the pipes open.
            _kill_group(process.pid)
    finally:
        with trio.CancelScope(shield=True):
            _kill_group(process.pid)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
            # In real time, in a worker thread: how long the kernel takes
            # to end a process has nothing to do with trio's clock.
            if process.poll() is None and not await trio.to_thread.run_sync(
                _exits_within, process.pid, KILL_WAIT
            ):
                run.left_to_reaper = process.pid
                REAPER.take(process, command)
            else:
                await process.wait()
    assert process.returncode is not None
    return process.returncode


class Reaper:
    """Waits, in trio system tasks, for commands that outlived SIGKILL, so
    that each is reaped whenever the kernel lets it exit; counts them and
    logs the 1st, 10th, 100th... The daemon has one (REAPER)."""

    def __init__(self) -> None:
        self.taken = 0  # processes handed over since start
        self.waiting = 0  # of which not exited yet

    def take(self, process: trio.Process, command: tuple[str, ...]) -> None:
        self.taken += 1
        self.waiting += 1
        if _is_power_of_ten(self.taken):
            log.get("probe").warning(
                "exec_check_unkillable",
                pid=process.pid,
                command=" ".join(command)[:200],
                state=_process_state(process.pid),
                kill_wait=KILL_WAIT,
                taken=self.taken,
                waiting=self.waiting,
            )
        trio.lowlevel.spawn_system_task(self._reap, process, name=f"reap pid {process.pid}")

    async def _reap(self, process: trio.Process) -> None:
        try:
            await process.wait()
        except Exception as exc:  # a system task must not raise: it would end the run
            log.get("probe").error("exec_reap_failed", pid=process.pid, error=repr(exc))
        finally:
            self.waiting -= 1


REAPER = Reaper()


def _exits_within(pid: int, seconds: float) -> bool:
    """Whether our child `pid` exits within `seconds` (it stays a zombie, for
    Process.wait to reap). Blocks: for a worker thread."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        # poll, not select: the daemon's descriptors go past FD_SETSIZE (1024).
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once it exits: pidfd_open(2)
        return bool(poller.poll(seconds * 1000))
    finally:
        os.close(pidfd)


def _is_power_of_ten(n: int) -> bool:
    while n % 10 == 0:
        n //= 10
    return n == 1


def _process_state(pid: int) -> str:
    """The state letter of proc(5)'s /proc/PID/stat (D: uninterruptible sleep)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


async def _keep_tail(
    stream: trio.abc.ReceiveStream, tail: Tail, run: _Run, stop: Callable[[], None]
) -> None:
    """Read `stream` to its end into `tail`; once more than MAX_OUTPUT bytes
    of both streams came, mark `run` over the limit and `stop` the command.
    Each read asks for no more than the one byte past the limit that tells,
    so that at most MAX_OUTPUT + 1 bytes are read, plus what the other
    stream's read in flight brings."""
    async with stream:
        while chunk := await stream.receive_some(min(READ_SIZE, MAX_OUTPUT + 1 - run.read)):
            tail.add(chunk)
            if run.read > MAX_OUTPUT:
                run.over_limit = True
                stop()
                return


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def weight_from_output(stdout: bytes) -> tuple[int | None, str]:
    """The weight on the last line of a command's output, or None and why not."""
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines:
        return None, "no output to read a weight from"
    last = lines[-1].strip()
    if not _DIGITS.fullmatch(last):
        return None, f"last output line {last[:40]!r} is not a weight"
    # A bound on the digits first: int() refuses more than 4300 of them.
    if len(last.lstrip("0")) > len(str(MAX_WEIGHT)) or int(last) > MAX_WEIGHT:
        return None, f"weight {last[:40]} is out of range 0..{MAX_WEIGHT}"
    weight = int(last)
    return weight, f"weight {weight}"


def _describe_failure(returncode: int, stderr: bytes) -> str:
    if returncode < 0:
        try:
            status = f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            status = f"killed by signal {-returncode}"
    else:
        status = f"exit {returncode}"
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    return f"{status}: {lines[-1][:200]}" if lines else status
