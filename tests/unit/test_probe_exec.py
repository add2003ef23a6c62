from __future__ import annotations

import os
import select
from ipaddress import ip_address
from pathlib import Path

import pytest
import trio
import trio.testing

from director.health.probes import probe, probe_exec
from director.health.probes.command import weight_from_output
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
