"""[ipvs.sync]: the plan from (desired daemons, kernel's daemons, owned) to
operations, and the engine keeping the kernel's sync daemons over the
in-memory backend in virtual time (start, reload, removal, refusals, the
state file, status). The real kernel's answers are in
tests/kernel/test_sync_daemon.py."""

from __future__ import annotations

import errno
import random
from collections.abc import Sequence
from ipaddress import ip_address
from pathlib import Path

import structlog.testing
import trio
import trio.testing

from director import statefile
from director.config import parse_config
from director.config.model import SyncRole, SyncSettings
from director.engine import Director, restart_needed
from director.health.result import ProbeResult
from director.health.spec import Check
from director.ipvs.errors import KernelError, error_for
from director.ipvs.facts import NO_MODULES
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress, SyncDaemon, SyncState
from director.ipvs.ops import Operation, StartDaemon, StopDaemon
from director.kernel import KernelTable
from director.runtime import EMPTY
from director.status import status_data, status_text
from director.sync import (
    SyncDaemonStatus,
    expected,
    matches,
    owned_after,
    plan_sync,
)

MASTER, BACKUP = SyncState.MASTER, SyncState.BACKUP

SERVICE = """
[daemon]
reconcile_interval = 5.0
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 5
"""


def sync_section(role: str = "master", interface: str = "eth1", extra: str = "") -> str:
    return f'[ipvs.sync]\nrole = "{role}"\ninterface = "{interface}"\nsyncid = 7\n{extra}'


def daemon(state: SyncState = MASTER, ifn: str = "eth1", syncid: int = 7, **kw: int) -> SyncDaemon:
    return SyncDaemon(state, ifn, syncid, **kw)  # type: ignore[arg-type]


# -- the plan ----------------------------------------------------------------------------


def test_a_daemon_the_config_asks_for_is_started_when_none_runs() -> None:
    want = daemon()
    plan = plan_sync({MASTER: want}, [], {})
    assert plan.operations == (StartDaemon(want),)
    assert plan.owned == {MASTER: want}


def test_role_both_starts_a_master_and_a_backup() -> None:
    desired = SyncSettings(SyncRole.BOTH, "eth1", 7).daemons()
    plan = plan_sync(desired, [], {})
    assert plan.operations == (StartDaemon(daemon(MASTER)), StartDaemon(daemon(BACKUP)))


def test_the_kernels_defaults_match_a_daemon_that_left_them_to_it() -> None:
    # What Debian's 6.1 answers for `--start-daemon master --mcast-interface eth1 --syncid 7`.
    running = SyncDaemon(MASTER, "eth1", 7, 1472, ip_address("224.0.0.81"), 8848, 1)
    assert matches(running, daemon())
    assert expected(daemon()) == running
    # An IPv6 group's headers are 20 bytes longer.
    v6 = SyncDaemon(MASTER, "eth1", 7, mcast_group=ip_address("ff02::81"))
    assert expected(v6).sync_maxlen == 1452
    # A backup's default maxlen follows its interface's MTU: not compared.
    assert matches(replace_state(running, BACKUP, maxlen=8972), daemon(BACKUP))


def replace_state(d: SyncDaemon, state: SyncState, maxlen: int) -> SyncDaemon:
    return SyncDaemon(state, d.mcast_ifn, d.syncid, maxlen, d.mcast_group, d.mcast_port, 1)


def test_a_running_daemon_as_asked_is_left_alone_and_owned_from_then_on() -> None:
    running = SyncDaemon(MASTER, "eth1", 7, 1472, ip_address("224.0.0.81"), 8848, 1)
    plan = plan_sync({MASTER: daemon()}, [running], {})
    assert plan.operations == ()
    assert plan.owned == {MASTER: daemon()}


def test_a_changed_setting_is_a_stop_then_a_start() -> None:
    want = daemon(syncid=8)
    plan = plan_sync({MASTER: want}, [daemon()], {MASTER: daemon()})
    assert plan.operations == (StopDaemon(MASTER), StartDaemon(want))
    group = SyncDaemon(MASTER, "eth1", 7, mcast_group=ip_address("239.1.2.3"))
    running = SyncDaemon(MASTER, "eth1", 7, 1472, ip_address("224.0.0.81"), 8848, 1)
    assert plan_sync({MASTER: group}, [running], {}).operations == (
        StopDaemon(MASTER),
        StartDaemon(group),
    )


def test_a_setting_the_kernel_does_not_report_changes_through_the_record() -> None:
    # A backup's maxlen back to its default: the kernel's 1400 cannot say
    # whether that is the default, the state file's record can.
    asked = daemon(BACKUP, sync_maxlen=1400)
    running = SyncDaemon(BACKUP, "eth1", 7, 1400, ip_address("224.0.0.81"), 8848, 1)
    want = daemon(BACKUP)
    assert matches(running, want)
    plan = plan_sync({BACKUP: want}, [running], {BACKUP: asked})
    assert plan.operations == (StopDaemon(BACKUP), StartDaemon(want))


def test_an_owned_daemon_the_config_dropped_is_stopped_and_then_forgotten() -> None:
    plan = plan_sync({}, [daemon()], {MASTER: daemon()})
    assert plan.operations == (StopDaemon(MASTER),)
    assert plan.owned == {MASTER: daemon()}
    assert owned_after(plan.owned, {}, plan.operations, [None]) == {}
    # "No daemon is running": someone stopped it first; it is gone all the same.
    gone = [("No daemon is running", errno.ESRCH)]
    assert owned_after(plan.owned, {}, plan.operations, gone) == {}
    refused = [("Operation not permitted", errno.EPERM)]
    assert owned_after(plan.owned, {}, plan.operations, refused) == {MASTER: daemon()}


def test_an_owned_daemon_no_longer_running_is_forgotten_without_a_stop() -> None:
    plan = plan_sync({}, [], {BACKUP: daemon(BACKUP)})
    assert plan.operations == () and plan.owned == {}


def test_a_daemon_the_config_never_named_is_never_touched() -> None:
    # An operator's own backup, next to the config's master.
    theirs = daemon(BACKUP, "eth9", 3)
    assert plan_sync({}, [theirs], {}).operations == ()
    plan = plan_sync({MASTER: daemon()}, [theirs], {})
    assert plan.operations == (StartDaemon(daemon()),)
    assert BACKUP not in plan.owned


# -- the engine --------------------------------------------------------------------------


class Network:
    async def probe(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(0.01)
        return ProbeResult.success(0.01)


class RefusingKernel(MemoryBackend):
    """The in-memory table, whose sync daemons the kernel refuses on an
    interface in `missing` (ENODEV, as start_sync_thread answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.missing = {"nosuch0"}
        self.sent: list[Operation] = []

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        outcomes: list[KernelError | None] = []
        for op in operations:
            self.sent.append(op)
            if isinstance(op, StartDaemon) and op.daemon.mcast_ifn in self.missing:
                outcomes.append(error_for(errno.ENODEV, "StartDaemon"))
            else:
                outcomes.extend(super().apply_each([op]))
        return outcomes

    def daemon_ops(self) -> list[Operation]:
        return [op for op in self.sent if isinstance(op, StartDaemon | StopDaemon)]


def director_for(
    backend: MemoryBackend,
    text: str,
    state: Path | None = None,
    owned: dict[SyncState, SyncDaemon] | None = None,
) -> Director:
    return Director(
        parse_config(text, "t.toml", NO_MODULES),
        KernelTable(backend, threaded=False),
        probe=Network().probe,
        rng=random.Random(1),
        state_path=state,
        sync_owned=owned,
    )


async def reload(director: Director, text: str) -> list[Operation]:
    config = parse_config(text, "t.toml", NO_MODULES)
    summary = await director.exclusive(lambda: director.reload(config))
    return list(summary.operations)


def running(backend: MemoryBackend) -> dict[SyncState, SyncDaemon]:
    return {d.state: d for d in backend.daemons()}


async def test_start_starts_the_sync_daemon_and_the_state_file_records_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = RefusingKernel()
    path = tmp_path / "state.json"
    director = director_for(backend, SERVICE + sync_section("both"), path)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        assert running(backend) == {MASTER: daemon(MASTER), BACKUP: daemon(BACKUP)}
        assert statefile.load(path).sync == {MASTER: daemon(MASTER), BACKUP: daemon(BACKUP)}
        # A daemon stopped behind director's back is started again at the next check.
        backend.apply([StopDaemon(BACKUP)])
        await trio.sleep(5.1)
        assert running(backend) == {MASTER: daemon(MASTER), BACKUP: daemon(BACKUP)}
        nursery.cancel_scope.cancel()


async def test_a_reload_changes_the_daemon_and_one_without_the_section_stops_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = RefusingKernel()
    path = tmp_path / "state.json"
    director = director_for(backend, SERVICE + sync_section(), path)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        assert running(backend) == {MASTER: daemon()}
        backend.sent.clear()

        changed = 'group = "239.1.2.7"\nport = 8850\nttl = 2\nmaxlen = 1400'
        await reload(director, SERVICE + sync_section("master", "eth1", changed))
        new = SyncDaemon(MASTER, "eth1", 7, 1400, ip_address("239.1.2.7"), 8850, 2)
        assert backend.daemon_ops() == [StopDaemon(MASTER), StartDaemon(new)]
        assert running(backend) == {MASTER: new}
        assert statefile.load(path).sync == {MASTER: new}

        backend.sent.clear()
        await reload(director, SERVICE)
        assert backend.daemon_ops() == [StopDaemon(MASTER)]
        assert running(backend) == {}
        assert statefile.load(path).sync == {}
        # Nothing to keep any more: no reads of the kernel's daemons.
        assert director.sync.due_at() == float("inf")
        nursery.cancel_scope.cancel()


async def test_a_reload_that_only_changes_the_sync_section_touches_no_service(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = RefusingKernel()
    old = parse_config(SERVICE + sync_section(), "t.toml", NO_MODULES)
    new_text = SERVICE + sync_section("backup", "eth2")
    new = parse_config(new_text, "t.toml", NO_MODULES)
    assert restart_needed(old, new) == []
    director = director_for(backend, SERVICE + sync_section())
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        backend.sent.clear()
        operations = await reload(director, new_text)
        assert operations == []
        assert backend.sent == [StopDaemon(MASTER), StartDaemon(daemon(BACKUP, "eth2"))]
        nursery.cancel_scope.cancel()


async def test_a_refused_start_is_retried_logged_and_reported_while_services_converge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = RefusingKernel()
    director = director_for(backend, SERVICE + sync_section("master", "nosuch0"))
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(director.run)
            started = trio.current_time()
            await trio.sleep(1.1)
            # The service converged all the same.
            (entry,) = backend.services()
            assert [d.destination.weight for d in entry.destinations] == [5]
            await trio.sleep(20 - 1.1)
            attempts = [op for op in backend.daemon_ops() if isinstance(op, StartDaemon)]
            # Tries at 0, 1, 3, 7 (backoff 1, 2, 4), then every 5 s (reconcile_interval).
            assert len(attempts) == 6, trio.current_time() - started
            (line,) = director.sync.report(trio.current_time())
            assert line.refused is not None
            assert line.refused.startswith("StartDaemon refused by the kernel: No such device (6")
            text = status_text((), director.sync.report(trio.current_time()))
            assert "sync daemons ([ipvs.sync])\n  master (mcast=nosuch0, syncid=7): " in text
            assert "No such device" in text

            backend.missing.clear()  # the interface appears: the next retry takes it
            await trio.sleep(5.1)
            assert running(backend) == {MASTER: daemon(MASTER, "nosuch0")}
            (line,) = director.sync.report(trio.current_time())
            assert line.refused is None
            assert "master (mcast=nosuch0, syncid=7): running" in status_text((), (line,))
            nursery.cancel_scope.cancel()
    refused = [e for e in logs if e["event"] == "ipvs_refused"]
    assert refused[0]["error"] == "No such device" and refused[0]["op"] == "start_daemon"
    # Logged at the 1st try (and the 10th, 100th...), not at every one.
    assert len(refused) == 1


async def test_a_reload_retries_a_refused_start_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = RefusingKernel()
    director = director_for(backend, SERVICE + sync_section("master", "nosuch0"))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(0.5)
        backend.missing.clear()
        await reload(director, SERVICE + sync_section("master", "nosuch0"))
        assert running(backend) == {MASTER: daemon(MASTER, "nosuch0")}
        nursery.cancel_scope.cancel()


async def test_a_restart_without_the_section_stops_what_the_state_file_owns(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = RefusingKernel()
    backend.apply([StartDaemon(daemon()), StartDaemon(daemon(BACKUP, "eth9", 3))])
    path = tmp_path / "state.json"
    statefile.save(path, EMPTY, frozenset(), {MASTER: daemon()})
    loaded = statefile.load(path)
    director = director_for(backend, SERVICE, path, dict(loaded.sync))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        # The owned master is stopped; the operator's backup is not director's.
        assert running(backend) == {BACKUP: daemon(BACKUP, "eth9", 3)}
        assert statefile.load(path).sync == {}
        nursery.cancel_scope.cancel()


async def test_without_the_section_hand_started_daemons_are_never_read_or_touched(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Counting(RefusingKernel):
        reads = 0

        def daemons(self) -> list[SyncDaemon]:
            self.reads += 1
            return super().daemons()

    backend = Counting()
    backend.apply([StartDaemon(daemon(BACKUP, "eth9", 3))])
    director = director_for(backend, SERVICE)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert backend.reads == 0 and backend.daemon_ops() == []
    assert running(backend) == {BACKUP: daemon(BACKUP, "eth9", 3)}
    assert director.sync.report(0.0) == ()


async def test_a_failed_read_of_the_daemons_is_reported_and_tried_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Unreadable(RefusingKernel):
        failing = 2

        def daemons(self) -> list[SyncDaemon]:
            if self.failing:
                self.failing -= 1
                raise error_for(errno.ENOMEM, "GetDaemon")
            return super().daemons()

    backend = Unreadable()
    director = director_for(backend, SERVICE + sync_section())
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        (line,) = director.sync.report(trio.current_time())
        assert line.error == "Memory allocation problem"
        assert "kernel not readable: Memory allocation problem" in status_text((), (line,))
        await trio.sleep(3.1)  # retries after 1 s, then 2 s
        assert running(backend) == {MASTER: daemon()}
        assert director.sync.report(trio.current_time())[0].error is None
        nursery.cancel_scope.cancel()


# -- status and the state file -------------------------------------------------------------


def test_status_data_has_the_sync_daemons_only_when_there_are_any() -> None:
    assert status_data(()) == {"services": []}
    line = SyncDaemonStatus("backup", "mcast=eth1, syncid=7", True)
    data = status_data((), (line,))
    assert data["sync_daemons"] == [
        {
            "state": "backup",
            "settings": "mcast=eth1, syncid=7",
            "wanted": True,
            "refused": None,
            "error": None,
        }
    ]
    assert status_text(()) == "no virtual services\n"


def test_the_state_file_keeps_the_owned_daemons_and_reads_a_file_without_them() -> None:
    owned = {
        MASTER: SyncDaemon(MASTER, "eth1", 7, 1400, ip_address("ff02::81"), 8850, 2),
        BACKUP: daemon(BACKUP),
    }
    assert statefile.decode(statefile.encode(EMPTY, frozenset(), owned)).sync == owned
    older = statefile.encode(EMPTY).replace('"sync_daemons": [],\n', "")
    assert '"version": 2' in older and "sync_daemons" not in older
    assert statefile.decode(older).sync == {}


def test_a_bad_sync_record_in_the_state_file_is_named() -> None:
    text = statefile.encode(EMPTY, frozenset(), {MASTER: daemon()})
    try:
        statefile.decode(text.replace('"syncid": 7', '"syncid": 300'))
    except statefile.StateFileError as error:
        assert str(error) == "state.sync_daemons[0].syncid: 300 is not in 0..255"
    else:
        raise AssertionError("a syncid of 300 was taken")
