from __future__ import annotations

import os
import pwd
import re
import select
import signal
import time
from ipaddress import ip_address
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

import director.health.probes.command as command_module
from director.health.probes import probe, probe_exec
from director.health.probes.command import (
    MAX_OUTPUT,
    MAX_STDERR,
    MAX_STDOUT,
    OVER_LIMIT,
    SYSTEMD_ONLY,
    Identity,
    Tail,
    command_environment,
    weight_from_output,
)
from director.health.result import ProbeResult, Reason
from director.health.spec import ExecCheck, Timing

HERE = ip_address("127.0.0.1")


async def run(*command: str, within: float = 30.0, dynamic_weight: bool = False) -> ProbeResult:
    check = ExecCheck(command, Timing(timeout=within), dynamic_weight=dynamic_weight)
    return await probe_exec(check, HERE, 80)


async def test_exit_zero_is_up() -> None:
    result = await probe(ExecCheck(("true",)), HERE, 80)
    assert (result.ok, result.reason, result.weight, result.detail) == (True, Reason.OK, None, "exit 0")  # fmt: skip


async def test_nonzero_exit_is_down_with_the_status() -> None:
    result = await run("false")
    assert (result.ok, result.reason, result.detail) == (False, Reason.EXIT_STATUS, "exit 1")


async def test_failure_detail_carries_the_last_stderr_line() -> None:
    result = await run("sh", "-c", "echo first >&2; echo 'disk full' >&2; exit 3")
    assert (result.reason, result.detail) == (Reason.EXIT_STATUS, "exit 3: disk full")


async def test_death_by_signal_is_named() -> None:
    result = await run("sh", "-c", "kill -TERM $$")
    assert (result.reason, result.detail) == (Reason.EXIT_STATUS, "killed by SIGTERM")


async def test_missing_command_is_an_error() -> None:
    result = await run("/nonexistent/check-script")
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("ENOENT: ")
    assert result.detail.endswith("/nonexistent/check-script")


async def test_dynamic_weight_from_the_last_output_line() -> None:
    result = await run("sh", "-c", "echo starting; echo 7", dynamic_weight=True)
    assert (result.ok, result.weight, result.detail) == (True, 7, "weight 7")


async def test_dynamic_weight_that_is_not_a_number_leaves_the_weight_alone() -> None:
    result = await run("sh", "-c", "echo heavy", dynamic_weight=True)
    assert (result.ok, result.weight, result.detail) == (True, None, "last output line 'heavy' is not a weight")  # fmt: skip


async def test_output_is_ignored_without_dynamic_weight() -> None:
    result = await run("sh", "-c", "echo 7")
    assert (result.ok, result.weight) == (True, None)


async def test_a_failing_command_sets_no_weight() -> None:
    result = await run("sh", "-c", "echo 7; exit 2", dynamic_weight=True)
    assert (result.ok, result.weight, result.detail) == (False, None, "exit 2")


@pytest.mark.parametrize(
    ("stdout", "weight", "detail"),
    [
        (b"0\n", 0, "weight 0"),
        (b"65535", 65535, "weight 65535"),
        (b"log line\n  42  \n\n", 42, "weight 42"),
        (b"65536\n", None, "weight 65536 is out of range 0..65535"),
        (b"-1\n", None, "last output line '-1' is not a weight"),
        (b"1_000\n", None, "last output line '1_000' is not a weight"),
        (b"+5\n", None, "last output line '+5' is not a weight"),
        (b"7.5\n", None, "last output line '7.5' is not a weight"),
        (b"", None, "no output to read a weight from"),
        (b"\n \n", None, "no output to read a weight from"),
    ],
)
def test_weight_from_output(stdout: bytes, weight: int | None, detail: str) -> None:
    assert weight_from_output(stdout) == (weight, detail)


async def test_slow_command_times_out(autojump_clock: trio.testing.MockClock) -> None:
    result = await run("sleep", "3600", within=2.0)
    assert (result.ok, result.reason, result.detail, result.latency) == (False, Reason.TIMEOUT, "no verdict within 2 s", 2.0)  # fmt: skip


async def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    pid_file = tmp_path / "child.pid"
    command = ("sh", "-c", f"sleep 3600 & echo $! > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; wait")  # fmt: skip

    async def hold_the_clock_until_the_child_runs() -> None:
        # Spinning keeps trio busy, so the autojump clock cannot fire the
        # timeout before the grandchild exists.
        while not pid_file.exists():
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_clock_until_the_child_runs)
        result = await run(*command, within=5.0)
    assert (result.reason, result.latency) == (Reason.TIMEOUT, 5.0)
    grandchild = int(pid_file.read_text())
    try:
        pidfd = os.pidfd_open(grandchild)
    except ProcessLookupError:
        return  # already dead and reaped
    try:
        # Becomes readable when the process has exited; the wait is only a guard.
        readable, _, _ = await trio.to_thread.run_sync(select.select, [pidfd], [], [], 10.0)
        assert readable == [pidfd], "the backgrounded sleep survived the timeout"
    finally:
        os.close(pidfd)


# -- hostile commands, environment, identity -------------------------------------------


def _live_members(pgid: int) -> list[int]:
    """Processes of group `pgid` that have not exited (zombies have)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in {"Z", "X"}:
            members.append(int(entry))
    return members


async def group_dies(pgid: int) -> bool:
    """Whether process group `pgid` has no live process within 10 s of real
    time (SIGKILL is not instantaneous). Polls in a thread: the autojump clock
    may be running."""

    def wait() -> bool:
        for _ in range(1000):
            if not _live_members(pgid):
                return True
            time.sleep(0.01)
        return False

    return await trio.to_thread.run_sync(wait)


async def test_exec_printing_forever_is_killed_at_the_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # A marker with the group's id, then a trickle of output for ever, under
    # MAX_OUTPUT until the timeout. Until the marker exists, spinning keeps the
    # autojump clock from firing the timeout; after it, the command still prints.
    marker = tmp_path / "pgid"
    script = (
        f"echo $$ > {marker}.tmp; mv {marker}.tmp {marker}; "
        "while :; do echo 0123456789; echo err >&2; sleep 0.01; done"
    )

    async def hold_the_clock_until_the_command_runs() -> None:
        while not marker.exists():
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_the_clock_until_the_command_runs)
        result = await run("sh", "-c", script, within=5.0, dynamic_weight=True)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 5.0)
    assert await group_dies(int(marker.read_text())), "the group survived the timeout"


# Output past MAX_OUTPUT stops the command (the operator trial's `yes`). The
# real clock runs these: `within` is only a guard, reached by the old reading
# of a flood to the timeout; a flood is stopped long before it.
FLOOD_GUARD = 10.0
FILL = "head -c {} /dev/zero | tr '\\0' x"  # {} bytes of x on standard output


async def test_a_command_flooding_its_output_is_stopped(tmp_path: Path) -> None:
    marker = tmp_path / "pgid"
    result = await run("sh", "-c", f"echo $$ > {marker}; exec yes", within=FLOOD_GUARD, dynamic_weight=True)  # fmt: skip
    assert (result.ok, result.reason, result.weight, result.detail) == (False, Reason.BAD_REPLY, None, "output over 64 KiB: stopped")  # fmt: skip
    assert result.detail == OVER_LIMIT
    assert await group_dies(int(marker.read_text())), "the flooding command survived"


@pytest.mark.parametrize(
    "command",
    [
        ("yes",),  # standard output
        ("sh", "-c", "exec yes >&2"),  # standard error
        ("sh", "-c", "yes & exec yes >&2"),  # both
    ],
)
async def test_a_flood_is_read_no_further_than_the_limit(command: tuple[str, ...]) -> None:
    # What the daemon reads of a flood: one byte past the limit tells, and at
    # most one read of the other stream was in flight.
    output = command_module._Run(Tail(MAX_STDOUT), Tail(MAX_STDERR))
    with trio.fail_after(FLOOD_GUARD):
        returncode = await command_module._run(command, None, output)
    assert output.over_limit
    assert MAX_OUTPUT < output.read <= 2 * (MAX_OUTPUT + 1), output.read
    assert returncode == -signal.SIGKILL


# Exactly the limit, weight line included, on standard output; over both streams.
AT_LIMIT = f"{FILL.format(65532)}; printf '\\n42\\n'"
AT_LIMIT_BOTH = (
    f"{FILL.format(65000)}; {FILL.format(524)} >&2; printf '\\nlast words\\n' >&2; exit 3"
)
# One byte more, then exit 0; each stream under the limit, both together over
# it; the operator trial's script, 40 MB then exit 0.
OVER_BY_ONE = f"{FILL.format(65533)}; printf '\\n42\\n'"
OVER_BOTH = f"{FILL.format(40000)}; {FILL.format(40000)} >&2; echo 42"
OVER_40_MB = f"{FILL.format(40_000_000)}; echo 42; exit 0"


@pytest.mark.parametrize(
    ("script", "ok", "reason", "detail"),
    [
        (AT_LIMIT, True, Reason.OK, "weight 42"),  # judged as ever
        (AT_LIMIT_BOTH, False, Reason.EXIT_STATUS, "exit 3: last words"),
        (OVER_BY_ONE, False, Reason.BAD_REPLY, OVER_LIMIT),  # stopped
        (OVER_BOTH, False, Reason.BAD_REPLY, OVER_LIMIT),
        (OVER_40_MB, False, Reason.BAD_REPLY, OVER_LIMIT),
    ],
)
async def test_output_up_to_the_limit_is_judged_and_past_it_stopped(
    script: str, ok: bool, reason: Reason, detail: str
) -> None:
    result = await run("sh", "-c", script, within=FLOOD_GUARD, dynamic_weight=True)
    assert (result.ok, result.reason, result.detail) == (ok, reason, detail)
    assert result.weight == (42 if ok else None)


async def test_only_the_tail_of_the_output_is_kept() -> None:
    script = f"{FILL.format(60000)}; echo; echo 42; {FILL.format(4000)} >&2"
    result = await run("sh", "-c", script, dynamic_weight=True)
    assert (result.ok, result.weight, result.detail) == (True, 42, "weight 42")
    result = await run("sh", "-c", f"{FILL.format(60000)} >&2; echo >&2; echo >&2 last words; exit 4")  # fmt: skip
    assert (result.reason, result.detail) == (Reason.EXIT_STATUS, "exit 4: last words")


def test_tail_keeps_the_last_bytes() -> None:
    tail = Tail(5)
    for chunk in (b"abc", b"defgh", b"", b"ij", b"0123456789"):
        tail.add(chunk)
    assert (bytes(tail), tail.seen) == (b"56789", 20)
    tail.add(b"!")
    assert bytes(tail) == b"6789!"
    assert (MAX_OUTPUT, MAX_STDOUT, MAX_STDERR) == (64 << 10, 64 << 10, 4 << 10)


async def test_a_child_holding_the_output_open_does_not_delay_the_verdict(tmp_path: Path) -> None:
    # The command exits at once, but a background child keeps its stdout: the
    # verdict is the command's, and the child dies with the probe.
    pid_file = tmp_path / "child"
    result = await run(
        "sh", "-c", f"sleep 3600 & echo $$ > {pid_file}; echo 9", dynamic_weight=True
    )
    assert (result.ok, result.weight) == (True, 9)
    assert await group_dies(int(pid_file.read_text())), "the child survived"


async def test_a_weight_line_of_many_digits_is_out_of_range() -> None:
    result = await run("sh", "-c", "printf '%05000d\\n' 1; printf '9%.0s' $(seq 5000)", dynamic_weight=True)  # fmt: skip
    assert (result.ok, result.weight) == (True, None)
    assert result.detail.startswith("weight 9999") and result.detail.endswith(
        "is out of range 0..65535"
    )


async def test_exec_environment_has_no_systemd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SYSTEMD_ONLY:
        monkeypatch.setenv(name, "/run/systemd/notify" if name == "NOTIFY_SOCKET" else "1")
    monkeypatch.setenv("DIRECTOR_TEST_KEPT", "yes")
    names = " ".join(sorted(SYSTEMD_ONLY))
    script = f'for v in {names}; do eval "[ -z \\"\\${{$v+set}}\\" ]" || exit 3; done; [ "$DIRECTOR_TEST_KEPT" = yes ]'  # fmt: skip
    result = await run("sh", "-c", script)
    assert (result.ok, result.detail) == (True, "exit 0")
    expected = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"}
    assert expected | {"LISTEN_FDNAMES"} == SYSTEMD_ONLY


def test_command_environment() -> None:
    base = {"PATH": "/bin", "NOTIFY_SOCKET": "x", "LISTEN_FDS": "3", "HOME": "/root"}
    assert command_environment(base, None) == {"PATH": "/bin", "HOME": "/root"}
    nobody = Identity(65534, 65534, (65534,), "/nonexistent", "nobody")
    assert command_environment(base, nobody) == {"PATH": "/bin", "HOME": "/nonexistent", "USER": "nobody", "LOGNAME": "nobody"}  # fmt: skip


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="running as another user needs root")


@needs_root
async def test_exec_as_a_user() -> None:
    nobody = pwd.getpwnam("nobody")
    check = ExecCheck(("id", "-u"), Timing(timeout=30.0), dynamic_weight=True, user="nobody")
    result = await probe_exec(check, HERE, 80)
    assert (result.ok, result.weight) == (True, nobody.pw_uid)


@needs_root
async def test_exec_as_a_user_gets_its_groups_and_login_variables() -> None:
    nobody = pwd.getpwnam("nobody")
    groups = " ".join(map(str, os.getgrouplist("nobody", nobody.pw_gid)))
    script = 'test "$(id -g)" = "$1" && test "$(id -G)" = "$2" && test "$HOME" = "$3" && test "$USER $LOGNAME" = "nobody nobody"'  # fmt: skip
    command = ("sh", "-c", script, "sh", str(nobody.pw_gid), groups, nobody.pw_dir)
    result = await probe_exec(ExecCheck(command, Timing(timeout=30.0), user="nobody"), HERE, 80)
    assert (result.ok, result.detail) == (True, "exit 0")
    result = await probe_exec(ExecCheck(command, Timing(timeout=30.0)), HERE, 80)
    assert (result.ok, result.reason) == (False, Reason.EXIT_STATUS)  # as root, it is not nobody


async def test_exec_as_a_user_that_no_longer_exists_is_an_error() -> None:
    check = ExecCheck(("true",), Timing(timeout=30.0), user="no-such-user-here")
    result = await probe(check, HERE, 80)
    assert (result.ok, result.reason, result.detail) == (False, Reason.ERROR, "no user 'no-such-user-here'")  # fmt: skip


# -- a command that outlives SIGKILL (issue 7 leftover) -------------------------------------


async def test_a_command_that_outlives_sigkill_is_left_to_the_reaper(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # A process in uninterruptible sleep (state D) ignores SIGKILL until the
    # kernel lets it go; a kill that does nothing stands in for one here.
    monkeypatch.setattr(command_module, "_kill_group", lambda pgid: None)
    monkeypatch.setattr(command_module, "KILL_WAIT", 0.05)  # real seconds
    reaper = command_module.Reaper()
    monkeypatch.setattr(command_module, "REAPER", reaper)
    with capture_logs() as logs:
        first = await run("sleep", "3600", within=2.0)
        second = await run("sleep", "3600", within=2.0)
    pids = []
    for result in (first, second):
        assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 2.0)
        match = re.fullmatch(
            r"no verdict within 2 s; pid (\d+) still running 0.05 s after SIGKILL"
            r" \(stuck in the kernel\?\), left to a reaper",
            result.detail,
        )
        assert match, result.detail
        pids.append(int(match[1]))
    # Logged once, at the first.
    assert [(e["event"], e["pid"], e["taken"]) for e in logs] == [("exec_check_unkillable", pids[0], 1)]  # fmt: skip
    assert (reaper.taken, reaper.waiting) == (2, 2)

    # When the kernel lets them go, the reaper reaps them: no zombie is left.
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while reaper.waiting and time.monotonic() < deadline:
        await trio.lowlevel.checkpoint()
    assert reaper.waiting == 0
    assert not [pid for pid in pids if _in_proc(pid)]


def _in_proc(pid: int) -> bool:
    """Whether `pid` exists, even as a zombie (one left unreaped)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.mark.parametrize(("n", "power"), [(1, True), (10, True), (1000, True), (2, False), (20, False), (11, False)])  # fmt: skip
def test_reaper_logs_at_powers_of_ten(n: int, power: bool) -> None:
    assert command_module._is_power_of_ten(n) is power
