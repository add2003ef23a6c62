"""The engine warns when the daemon is short of CPU for its load (issue 8:
at 10,000 real servers in a loaded VM, drift checks took longer than
reconcile_interval and most probes started late, and nothing said so):
a pass that takes more than half of reconcile_interval, and probes that
start a second or more late, each at most once a minute."""

from __future__ import annotations

import math
import random
from collections.abc import Collection

import structlog
import trio
import trio.testing
from engine_support import Network, running

from director.config import parse_config
from director.engine import OVERLOAD_WARNING_EVERY, Director, _late_cause, check_targets
from director.health.checker import Checker, Target
from director.health.result import ProbeResult
from director.health.schedule import Schedule
from director.health.spec import Check
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress, ServiceEntry, ServiceKey
from director.kernel import KernelTable

INTERVAL = 5.0
CONFIG = f"""
[daemon]
reconcile_interval = {INTERVAL}
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
check = {{ type = "tcp", interval = 1.0, timeout = 0.5 }}
[[virtual_server.real_server]]
address = "10.0.1.1"
"""


class SlowKernel(KernelTable):
    """A kernel whose full reads take `delay` seconds."""

    def __init__(self) -> None:
        super().__init__(MemoryBackend(), threaded=False)
        self.delay = 0.0

    async def services(
        self,
        only: Collection[ServiceKey] | None = None,
        *,
        counters: bool = True,
        brief: bool = False,
    ) -> list[ServiceEntry]:
        await trio.sleep(self.delay)
        return await super().services(only, counters=counters, brief=brief)


def warnings(logs: list[dict[str, object]], event: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == event and e["log_level"] == "warning"]


async def test_a_pass_over_half_the_interval_is_warned_of_once_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel = SlowKernel()
    director = Director(parse_config(CONFIG), kernel, probe=Network().probe, rng=random.Random(1))
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(3 * INTERVAL)
            assert warnings(logs, "pass_slow") == []
            kernel.delay = 0.6 * INTERVAL
            await trio.sleep(OVERLOAD_WARNING_EVERY + 3 * INTERVAL)
            kernel.delay = 0.1 * INTERVAL  # (a drift check reads twice)
            await trio.sleep(2 * OVERLOAD_WARNING_EVERY)
    slow = warnings(logs, "pass_slow")
    assert len(slow) == 2
    assert isinstance(seconds := slow[0]["seconds"], float) and seconds >= 0.6 * INTERVAL
    assert slow[0]["held_back"] == 0 and slow[0]["reconcile_interval"] == INTERVAL
    assert isinstance(slow[1]["held_back"], int) and slow[1]["held_back"] >= 3


async def test_late_probes_are_warned_of_after_the_next_full_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The checker tells the engine of each start's lateness (its own
    tests check the figure); the engine sums the late ones up."""
    director = Director(
        parse_config(CONFIG),
        KernelTable(MemoryBackend(), threaded=False),
        probe=Network().probe,
        rng=random.Random(1),
    )
    target: Target = next(iter(check_targets(director.config).values()))
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(INTERVAL)
            director._on_start(target, 0.5)
            await trio.sleep(INTERVAL)
            assert warnings(logs, "probes_late") == []
            for lateness in (1.5, 3.0, 1.0):
                director._on_start(target, lateness)
            await trio.sleep(INTERVAL)
            director._on_start(target, 2.0)
            await trio.sleep(INTERVAL)
    late = warnings(logs, "probes_late")
    assert [(e["probes"], e["latest_s"]) for e in late] == [(3, 3.0)]


async def test_late_probes_behind_the_exec_limit_are_said_to_be(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 36 (M1): commands waiting for one of [daemon] max_exec_checks'
    slots made probes_late blame the CPU (the daemon at 14.5 % of a core).
    With exec probes waiting at the warning, it names the limit."""
    config = (
        CONFIG.replace("[daemon]\n", "[daemon]\nmax_exec_checks = 1\n").replace(
            '{ type = "tcp", interval = 1.0, timeout = 0.5 }',
            '{ type = "exec", command = ["/bin/true"], interval = 1.0, timeout = 60.0 }',
        )
        + '[[virtual_server.real_server]]\naddress = "10.0.1.2"\n'
    )

    async def slow(check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(30)
        return ProbeResult.success(0.01)

    director = Director(
        parse_config(config),
        KernelTable(MemoryBackend(), threaded=False),
        probe=slow,
        rng=random.Random(1),
    )
    target: Target = next(iter(check_targets(director.config).values()))
    with structlog.testing.capture_logs() as logs:
        async with running(director):
            await trio.sleep(2)
            director._on_start(target, 1.5)
            await trio.sleep(INTERVAL)
    (late,) = warnings(logs, "probes_late")
    assert late["exec_waiting"] == 1
    assert isinstance(hint := late["hint"], str)
    assert "exec checks wait for a command slot (1 run at once)" in hint
    assert "[daemon] max_exec_checks" in hint


def test_late_probes_behind_max_probes_name_that_limit() -> None:
    """The other member of trial 36's M1: probes waiting for one of
    [daemon] max_probes' slots (a rack of servers that time out holds
    them), not the CPU; the exec commands' limit first when both wait."""
    checker: Checker[int] = Checker(max_probes=300, max_exec=4)
    probes = _late_cause({"probe": 7}, checker, 0.0)
    assert probes["slot_waiting"] == 7
    assert "probes wait for a slot (300 run at once): raise [daemon] max_probes" in str(
        probes["hint"]
    )
    both = _late_cause({"exec": 2, "probe": 7}, checker, 0.0)
    assert (both["exec_waiting"], both["slot_waiting"]) == (2, 7)  # trial 37: both, not one
    assert "[daemon] max_exec_checks" in str(both["hint"])
    assert "[daemon] max_probes" in str(both["hint"])
    assert "short of CPU" in str(_late_cause({}, checker, 0.0)["hint"])


def test_late_probes_name_a_slot_wait_since_the_last_warning() -> None:
    """Trial 37 (M4): probes left late by waits that ended before the
    warning (a reload raised the limit) are not put down to the CPU."""
    checker: Checker[int] = Checker(max_probes=300, max_exec=4)
    checker._schedule = Schedule(300, 4)  # (as the run makes it)
    checker._schedule.waited["exec"] = 50.0  # commands last waited at 50 s
    assert "exec checks waited for a command slot until 7.0s ago: raise [daemon]" in str(
        _late_cause({}, checker, 57.0, since=40.0)["hint"]
    )  # trial 38: not "wait ... (4 run at once)", of limits a reload may have raised since
    assert "short of CPU" in str(_late_cause({}, checker, 57.0, since=60.0)["hint"])


def test_late_probes_name_no_kind_that_never_waited() -> None:
    """Trial 39: the first probes_late (no warning before it: since is
    -inf) named every kind, those that never waited too, "until infs
    ago", and sent operators to raise limits for nothing."""
    checker: Checker[int] = Checker(max_probes=300, max_exec=4)
    checker._schedule = Schedule(300, 4)
    cause = _late_cause({}, checker, 57.0, since=-math.inf)
    assert cause == {
        "hint": "probes start late: short of CPU for this many checks at their intervals"
    }
    checker._schedule.waited["exec"] = 50.0
    cause = _late_cause({}, checker, 57.0, since=-math.inf)
    assert set(cause) == {"exec_waiting", "hint"}
    assert "inf" not in str(cause["hint"]) and "until 7.0s ago" in str(cause["hint"])
    present = _late_cause({"short": 3}, checker, 57.0, since=40.0)
    hint = str(present["hint"])
    assert "probes wait while fewer run after the daemon ran short of file descriptors" in hint
    # Trial 40: the exec checks waited too, but more of them at once would
    # want more files: no "raise [daemon] max_exec_checks" then.
    assert "exec checks waited for a command slot until 7.0s ago" in hint
    assert "raise [daemon] max_exec_checks" not in hint, hint
    assert "not a limit to raise while the daemon runs short of file descriptors" in hint
