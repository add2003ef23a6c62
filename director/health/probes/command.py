"""Exec check: run a command; exit status 0 is up.

The command runs in its own process group so that on timeout the whole group
(a shell and what it started) is killed, not just its leader. With
dynamic_weight, the last line of its standard output sets the weight.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess

import trio

from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import ExecCheck
from director.ipvs.model import IPAddress

MAX_WEIGHT = 65535
_DIGITS = re.compile(r"[0-9]+")


async def probe_exec(check: ExecCheck, address: IPAddress, port: int) -> ProbeResult:
    with probe_attempt(check.timing.timeout) as attempt:
        done = await trio.run_process(
            check.command,
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            start_new_session=True,
            deliver_cancel=_kill_process_group,
        )
        if done.returncode != 0:
            attempt.fail(Reason.EXIT_STATUS, _describe_failure(done.returncode, done.stderr))
        elif check.dynamic_weight:
            weight, detail = weight_from_output(done.stdout)
            attempt.succeed(weight=weight, detail=detail)
        else:
            attempt.succeed(detail="exit 0")
    return attempt.result


def weight_from_output(stdout: bytes) -> tuple[int | None, str]:
    """The weight on the last line of a command's output, or None and why not."""
    lines = stdout.decode("utf-8", "replace").strip().splitlines()
    if not lines:
        return None, "no output to read a weight from"
    last = lines[-1].strip()
    if not _DIGITS.fullmatch(last):
        return None, f"last output line {last[:40]!r} is not a weight"
    weight = int(last)
    if weight > MAX_WEIGHT:
        return None, f"weight {weight} is out of range 0..{MAX_WEIGHT}"
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


async def _kill_process_group(process: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
