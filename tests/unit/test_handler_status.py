"""`directorctl status` at scale (issue 8): built off the event loop, its
data without deep copies, its text without the data the client never reads."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Collection
from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing
from test_handler import CONFIG, VIP, add_a_third_server, rig, until

from director import ctl, status
from director.config import parse_config
from director.health.result import ProbeResult, Reason
from director.health.state import Health, HealthState
from director.ipvs.facts import NO_MODULES
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    ServiceEntry,
    ServiceKey,
)
from director.ipvs.ops import AddDestination, AddService
from director.kernel import KernelTable
from director.runtime import describe_endpoint

T = TypeVar("T")


class RecordingTable(KernelTable):
    """Inline, as the rig's tables are, but it records what ran through run_sync."""

    def __init__(self, backend: MemoryBackend) -> None:
        super().__init__(backend, threaded=False)
        self.ran: list[str] = []
        self.inside = False

    async def run_sync(self, function: Callable[[], T]) -> T:
        self.inside = True
        try:
            result = await super().run_sync(function)
        finally:
            self.inside = False
        self.ran.append(getattr(function, "__name__", "?"))
        return result


async def test_status_is_built_in_the_reads_worker_not_on_the_loop(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        table = RecordingTable(r.backend)
        r.controller.reads = table
        built_inside: list[bool] = []
        report = status.status_report

        def recording_report(*args: object, **kwargs: object) -> tuple[status.ServiceStatus, ...]:
            built_inside.append(table.inside)
            return report(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr("director.control.handler.status_report", recording_report)
        for args in ({"json": True}, {"json": False}, {"json": False, "data": False}):
            response = await r.command("status", **args)
            assert response.status == 0
        assert built_inside == [True, True, True]


async def test_text_status_without_data_when_the_client_says_so(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        plain = await r.command("status", json=False)
        text_only = await r.command("status", json=False, data=False)
        as_json = await r.command("status", json=True)
        # A client that does not say (the protocol's v1 answer) still gets the data.
        assert isinstance(plain.data, dict) and plain.data == as_json.data
        assert text_only.data is None
        assert text_only.stdout == plain.stdout and "10.0.1.1:80" in plain.stdout
        assert as_json.stdout == ""


def test_directorctl_asks_text_status_without_data() -> None:
    assert ctl._requests(["status"]) == [
        {"v": 1, "command": "status", "args": {"json": False, "data": False}}
    ]
    assert ctl._requests(["status", "--json"]) == [
        {"v": 1, "command": "status", "args": {"json": True}}
    ]


def _report() -> tuple[status.ServiceStatus, ...]:
    server = status.RealServerStatus(
        server="10.0.1.1:80",
        name="web-1",
        health="up",
        admin="enabled",
        in_state_for=12.5,
        successes_in_row=3,
        failures_in_row=0,
        last_ok=True,
        last_reason="ok",
        last_latency=0.0003,
        last_detail=None,
        configured_weight=5,
        current_weight=5,
        decision="up",
    )
    return (
        status.ServiceStatus("tcp:10.0.0.1:80", "rr", "tcp", True, (server, server), None),
        status.ServiceStatus("tcp:10.0.0.2:80", "wlc", "http", False, (), "refused"),
    )


def test_status_data_is_asdicts_without_deep_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    report = _report()
    expected = [dataclasses.asdict(s) for s in report]

    def no_deepcopy(*args: object, **kwargs: object) -> object:
        raise AssertionError("status_data deep-copied a value")

    monkeypatch.setattr(copy, "deepcopy", no_deepcopy)
    data = status.status_data(report)
    assert data == {"services": expected}
    # the same key order as asdict's: the JSON text is unchanged
    assert [list(s) for s in data["services"]] == [list(s) for s in expected]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("address", "port"),
    [("10.0.1.1", 80), ("0.0.0.0", 0), ("255.255.255.255", 65535), ("2001:db8::1", 443)],
)
def test_status_endpoint_is_describe_endpoint(address: str, port: int) -> None:
    ip = ip_address(address)
    assert status._endpoint(ip, port) == describe_endpoint(ip, port)


@pytest.mark.parametrize(
    "data",
    [
        {"services": [{"a": 1, "b": None, "c": True, "d": 0.0003, "e": 'é\n"x"', "f": []}]},
        {"maintenance": False, "n": -7, "big": 2**70, "f": 1e-7},
        [],
    ],
)
def test_json_status_is_printed_as_the_python_encoder_wrote_it(data: object) -> None:
    assert ctl.encode_data(data) == ctl.encode(data)


def test_json_status_with_a_value_json_lacks_still_says_why() -> None:
    with pytest.raises(TypeError, match="cannot send set as JSON"):
        ctl.encode_data({"x": {1}})


async def test_summary_has_the_totals_and_only_what_is_not_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await add_a_third_server(r)
        full = (await r.command("status", json=False, data=False)).stdout
        summary = (await r.command("status", json=False, data=False, summary=True)).stdout
    lines = summary.splitlines()
    assert lines[0] == (
        "2 real servers in 1 services: 1 up, 1 down, 0 unknown;"
        " 1 in the kernel table; 0 disabled, 0 drain"
    )
    assert lines[1] == "tcp:10.0.0.1:80 rr (tcp check): 1 of 2 up"
    assert lines[2].split() == [
        "SERVER",
        "HEALTH",
        "FOR",
        "ADMIN",
        "WEIGHT",
        "LAST",
        "PROBE",
        "OK/FAIL",
        "TABLE",
    ]
    # (added with -a: its fields are the runtime layer's, not the file's)
    assert lines[3].split()[:5] == ["10.0.1.3:80", "(set", "at", "runtime)", "down"]
    assert len(lines) == 4  # the server that is up has no row
    assert "10.0.1.1:80" in full and "10.0.1.1:80" not in summary


async def test_status_marks_what_a_runtime_change_set(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A trial's report: after `directorctl -e` of a server's weight, status
    showed WEIGHT 9/9, the runtime weight as if configured, and nothing in
    the text or the data said a runtime change held it (a reload of an edit
    of that weight then did nothing)."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        data = (await r.command("status")).data
        assert isinstance(data, dict)
        [service] = data["services"]
        assert service["runtime"] is False
        assert [rs["runtime"] for rs in service["real_servers"]] == [False]
        await r.ipvsadm("-e", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80", "-w", "9")
        await r.ipvsadm("-E", "-t", "10.0.0.1:80", "-s", "wlc")
        await until(lambda: r.weights() == {"10.0.1.1:80": 9})
        status = await r.command("status")
        assert isinstance(status.data, dict)
        [service] = status.data["services"]
        assert service["runtime"] is True
        assert [
            (rs["runtime"], rs["configured_weight"], rs["not_applied"])
            for rs in service["real_servers"]
        ] == [(True, 9, ("weight 9 -> 5",))]
        assert service["not_applied"] == ('scheduler "wlc" -> "rr"',)
        # Stop 34's trial: the file's value was nowhere in status.
        assert (
            'tcp:10.0.0.1:80 wlc (tcp check, set at runtime; scheduler "wlc" -> "rr" in the'
            " file, not applied)\n"
        ) in status.stdout
        assert (
            "10.0.1.1:80 (set at runtime; weight 9 -> 5 in the file, not applied)" in status.stdout
        )
        # An -e back to the file's values drops the change, and the mark.
        await r.ipvsadm("-e", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80", "-w", "5")
        status = await r.command("status")
        assert "10.0.1.1:80 (set at runtime" not in status.stdout
        assert "10.0.1.1:80 " in status.stdout


async def test_status_shows_what_a_runtime_delete_hides_of_the_file(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Stop 34's trial: after `directorctl -d` of a server of the file, it
    was in no status (text, JSON, --summary: "every real server is up"),
    through reloads and restarts, while the file still had it."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        await r.ipvsadm("-d", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80")
        status = await r.command("status")
        hidden = (
            "  in the file, deleted at runtime: 10.0.1.1:80"
            " (directorctl -a brings it back with the file's settings)\n"
        )
        assert hidden in status.stdout
        assert isinstance(status.data, dict)
        [service] = status.data["services"]
        assert service["deleted_at_runtime"] == ("10.0.1.1:80",)
        assert service["real_servers"] == ()
        summary = (await r.command("status", summary=True, data=False)).stdout
        assert summary.splitlines()[0].endswith("; 1 real server of the file deleted at runtime")
        assert hidden in summary
        assert "every real server is up" not in summary
        # The service deleted too: one line for it, no rows.
        await r.ipvsadm("-D", "-t", "10.0.0.1:80")
        status = await r.command("status")
        assert status.stdout == (
            "tcp:10.0.0.1:80 (in the file, deleted at runtime: directorctl -A brings it back"
            " with the file's settings)\n"
        )
        assert isinstance(status.data, dict)
        [service] = status.data["services"]
        assert service["deleted"] is True
        summary = (await r.command("status", summary=True, data=False)).stdout
        assert summary.splitlines()[0].startswith("0 real servers in 0 services: ")
        assert summary.splitlines()[0].endswith("; 1 service of the file deleted at runtime")


def test_summary_of_a_healthy_table_says_so() -> None:
    (service, _) = _report()
    assert status.summary_text((service,)) == (
        "2 real servers in 1 services: 2 up, 0 down, 0 unknown;"
        " 2 in the kernel table; 0 disabled, 0 drain\n"
        "every real server is up, enabled and in the kernel table\n"
    )


def test_summary_counts_servers_not_checked_yet_without_listing_them() -> None:
    """After a restart of 10,000 servers the summary listed thousands of
    unknown ones (operator trial): they are counted; one drained is listed."""
    (service, _) = _report()
    first, second = service.real_servers
    unknown = replace(first, health="unknown", last_ok=None, current_weight=None)
    drained = replace(second, health="unknown", admin="drain")
    text = status.summary_text((replace(service, real_servers=(unknown, drained)),))
    lines = text.splitlines()
    assert lines[0].startswith("2 real servers in 1 services: 0 up, 0 down, 2 unknown;")
    assert [line.split()[0] for line in lines[3:]] == [drained.server]


def test_summary_with_servers_not_checked_yet_does_not_say_every_one_is_up() -> None:
    """Trial 36 (M2): after a start of 8,000 servers with initial = "up",
    the summary counted 7,952 unknown and then said "every real server is
    up". With nothing to list, its last line says what was checked and
    how many were not checked yet."""
    (service, _) = _report()
    first, second = service.real_servers
    in_unchecked = replace(first, health="unknown", last_ok=None)  # initial = "up": in the table
    text = status.summary_text((replace(service, real_servers=(in_unchecked, second)),))
    assert text.splitlines() == [
        "2 real servers in 1 services: 1 up, 0 down, 1 unknown; 2 in the kernel table;"
        " 0 disabled, 0 drain",
        "every real server checked is up, enabled and in the kernel table;"
        " 1 not checked yet (counted, not listed)",
    ]


def test_summary_names_a_service_missing_from_the_kernel() -> None:
    (_, missing) = _report()
    assert status.summary_text((missing,)).splitlines()[1:] == [
        "tcp:10.0.0.2:80 wlc (http check, not in the kernel table): 0 of 0 up",
        "  refused",
    ]


def test_directorctl_status_summary() -> None:
    assert ctl._requests(["status", "--summary"]) == [
        {"v": 1, "command": "status", "args": {"json": False, "data": False, "summary": True}}
    ]
    with pytest.raises(ctl.UsageError, match="--summary is for the text"):
        ctl._requests(["status", "--json", "--summary"])


class BriefRecorder(MemoryBackend):
    def __init__(self) -> None:
        super().__init__()
        self.reads: list[bool] = []

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        self.reads.append(brief)
        return super().services(only, brief=brief)


async def test_status_reads_the_kernel_briefly(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Weights and presence are all it shows of the kernel: no stats, no
    thresholds (the netlink backend's brief read, as -Ln's)."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        recorder = BriefRecorder()
        recorder.apply(
            [AddService(e.service) for e in r.backend.services()]
            + [
                AddDestination(e.service.key, d.destination)
                for e in r.backend.services()
                for d in e.destinations
            ]
        )
        r.controller.reads = KernelTable(recorder, threaded=False)
        response = await r.command("status", json=True)
    assert recorder.reads == [True]
    assert isinstance(response.data, dict)
    (service,) = response.data["services"]
    assert service["real_servers"][0]["current_weight"] == 5


def test_a_sorry_server_has_its_line_with_why() -> None:
    """docs/operations.md promises the sorry server's "quorum lost (...)"
    in status; the operator trial found no trace of it."""
    config = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\nquorum = 2\n'
        'sorry_server = { address = "10.0.9.99:80" }\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.1:80"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\n',
        modules=NO_MODULES,
    )
    vs = config.virtual_servers[0]
    down = HealthState(Health.DOWN, since=0.0)
    states = {vs.real_server_id(rs): down for rs in vs.real_servers}
    sorry = Destination(ip_address("10.0.9.99"), 80, Forward.ROUTE, 1)
    kernel = {vs.key: ServiceEntry(vs.service(), (DestinationEntry(sorry),))}
    (service,) = status.status_report(config, states, {}, kernel, now=10.0)
    assert service.sorry == "10.0.9.99:80" and service.sorry_weight == 1
    line = "  sorry server 10.0.9.99:80 (weight 1): quorum lost (0 up of quorum 2)"
    assert line in status.status_text((service,)).splitlines()
    assert line in status.summary_text((service,)).splitlines()
    (none,) = status.status_report(config, states, {}, {}, now=10.0)
    assert "sorry server 10.0.9.99:80 (not in the table)" in status.status_text((none,))


def test_checks_behind_are_said_at_the_top() -> None:
    """A daemon short of CPU started its probes minutes late, and status
    looked healthy (operator trial): the last probe's lateness is shown
    from LATE_AFTER on, and always in the data."""
    report = _report()
    assert "checks behind" not in status.status_text(report, lateness=0.2)
    text = status.status_text(report, lateness=119.34)
    assert text.startswith("checks behind: the last probe started 119.3s after its time")
    assert status.summary_text(report) in status.status_text(report, summary=True, lateness=5.0)
    assert status.status_data(report, lateness=119.3456)["probe_lateness"] == 119.346


def test_servers_probed_longer_ago_than_their_check_allows_say_the_checks_are_behind() -> None:
    """A busy checker skips the starts it missed: those are late by nothing,
    and the last start's lateness looked small (2.1 s) while a server
    checked every 0.5 s had not been probed for 19.1 s (operator trial).
    A server whose last verdict is older than its check's interval and
    timeout allow (by LATE_AFTER more: `overdue_after`) counts."""
    (base, refused) = _report()
    fresh = base.real_servers[0]
    old = dataclasses.replace(fresh, server="10.0.1.2:80", last_age=19.1)
    older = dataclasses.replace(fresh, server="10.0.1.3:80", last_age=25.04)
    edge = dataclasses.replace(fresh, server="10.0.1.4:80", last_age=2.5)  # 0.5 + 1 + 1: not over
    checked = dataclasses.replace(
        base, real_servers=(dataclasses.replace(fresh, last_age=0.3), old, older, edge),
        overdue_after=2.5,
    )  # fmt: skip
    unchecked = dataclasses.replace(base, service="tcp:10.0.0.3:80", real_servers=(old,))
    report = (checked, refused, unchecked)
    assert status.overdue(report) == (2, "tcp:10.0.0.1:80 10.0.1.3:80", 25.04)
    text = status.status_text(report, lateness=2.125)
    assert text.startswith(
        "checks behind: the last probe started 2.1s after its time; 2 real servers not probed"
        " for longer than their interval and timeout allow, the longest 25.0s"
        " (tcp:10.0.0.1:80 10.0.1.3:80) (short of CPU"
    )
    alone = status.status_text(report, lateness=0.1)
    assert alone.startswith("checks behind: 2 real servers not probed for longer")
    assert status.status_data(report, lateness=0.1)["probes_overdue"] == {
        "servers": 2,
        "longest": "tcp:10.0.0.1:80 10.0.1.3:80",
        "longest_age": 25.04,
    }
    assert "checks behind" not in status.status_text((refused,), lateness=0.1)


def test_a_stopping_status_says_which_checks_were_behind_when_the_stop_began() -> None:
    """Trial 42: the stopping line took the place of `checks behind`, and
    hid that a server's last probe was 9 s old when the stop began (1 s
    interval). Ages are counted at the stop's start: the stop's own
    seconds make no server overdue."""
    (base, refused) = _report()
    fresh = base.real_servers[0]
    stale = dataclasses.replace(fresh, server="10.0.1.2:80", last_age=11.1)
    young = dataclasses.replace(fresh, server="10.0.1.3:80", last_age=2.4)  # 0.5 s before the stop
    checked = dataclasses.replace(base, real_servers=(stale, young), overdue_after=2.5)
    text = status.status_text((checked, refused), lateness=3.0, stopping=1.9)
    assert text.startswith(
        "stopping: directord began to stop 1.9s ago; its checks ended then, and HEALTH and"
        " LAST PROBE are as they were\n"
        "checks were behind when the stop began: 1 real server not probed for longer than its"
        " interval and timeout allow, the longest 9.2s (tcp:10.0.0.1:80 10.0.1.2:80)"
        " (HEALTH may be that old)\n"
    )
    assert "checks behind" not in text
    on_time = dataclasses.replace(checked, real_servers=(young,))
    assert "were behind" not in status.status_text((on_time,), stopping=1.9)


async def test_the_daemons_status_says_when_its_checks_are_behind(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await trio.sleep(2)
        on_time = await r.command("status", json=False)
        target = next(
            iter(r.director._targets[ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)].values())
        )
        r.director._on_start(target, 42.0)
        behind = await r.command("status", json=False)
    assert "checks behind" not in on_time.stdout
    assert on_time.data is not None and on_time.data["probe_lateness"] < 1.0
    assert on_time.data["probes_overdue"] == {"servers": 0, "longest": None, "longest_age": None}
    assert behind.stdout.startswith("checks behind: the last probe started 42.0s")
    assert behind.data is not None and behind.data["probe_lateness"] == 42.0


async def test_a_stopping_daemons_status_says_its_checks_ended_not_that_they_are_behind(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The checks end when the stop begins (trial 40: they went on logging
    servers up and down through a flush). A status asked during a long
    stop then found every server overdue and blamed the CPU."""
    async with rig(tmp_path) as r:
        await trio.sleep(2)
        await r.director.stop()
        await trio.sleep(10)
        stopping = await r.command("status", json=False)
    assert stopping.stdout.startswith(
        "stopping: directord began to stop 10.0s ago; its checks ended then, and HEALTH and"
        " LAST PROBE are as they were\n"
    )
    assert "checks behind" not in stopping.stdout
    assert stopping.data is not None and stopping.data["stopping"] == 10.0
    (row,) = stopping.data["services"][0]["real_servers"]
    assert row["health"] == "up" and row["last_age"] >= 10.0
    # the probes are overdue all the same, and the data says so
    assert stopping.data["probes_overdue"]["servers"] == 1


async def test_each_row_says_how_old_its_last_probe_is(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await trio.sleep(0.1)
        before = await r.command("status", json=False)
        await trio.sleep(2.3)
        response = await r.command("status", json=False)
    assert before.data is not None
    assert before.data["services"][0]["real_servers"][0]["last_age"] is None  # not probed yet
    assert response.data is not None
    (row,) = response.data["services"][0]["real_servers"]
    # A 1 s interval: the last verdict came within the last second.
    assert 0.0 <= row["last_age"] < 1.0, row
    assert f"ok 10.0ms, {row['last_age']:.1f}s ago" in response.stdout


async def test_a_probe_that_runs_long_shows_in_its_row(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trial 35 (L7): a server whose exec check's command was still running
    showed only "not checked yet" (and `-`) until its verdict. A probe that
    has run for a second or more is in its row (and always in the data):
    the first one, and a later one after the last verdict."""
    async with rig(tmp_path, delay=30.0) as r:
        await trio.sleep(0.5)
        short = await r.command("status", json=False)
        await trio.sleep(4.5)
        first = await r.command("status", json=False)
        await trio.sleep(30)  # the first verdicts came at 30-31 s, and the next probes began
        later = await r.command("status", json=False)
    rows = []
    for response in (short, first, later):
        assert response.data is not None
        rows.append(response.data["services"][0]["real_servers"][0])
    if rows[0]["probe_running_for"] is not None:  # (its start was drawn in the first 0.5 s)
        assert rows[0]["probe_running_for"] < 0.5
    assert "running for" not in short.stdout  # under a second: not in the text
    assert rows[1]["last_ok"] is None and 4.0 <= rows[1]["probe_running_for"] <= 5.0, rows[1]
    assert f"first probe running for {rows[1]['probe_running_for']:.1f}s" in first.stdout
    assert rows[2]["last_ok"] is True and 3.0 <= rows[2]["probe_running_for"] <= 5.0, rows[2]
    assert f"; probe running for {rows[2]['probe_running_for']:.1f}s" in later.stdout


EXEC_CONFIG = """
[daemon]
reconcile_interval = 5.0
max_exec_checks = 1
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = { type = "exec", command = ["/bin/true"], interval = 1.0, timeout = 60.0, rise = 1, fall = 1 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
[[virtual_server.real_server]]
address = "10.0.1.2:80"
"""


async def test_exec_probes_waiting_for_a_slot_are_said_so(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trial 36 (M1): with more exec checks running long than the limit
    (16, not in the docs), status said "short of CPU" and a waiting
    probe's row said nothing. Now the row says it waits for an exec slot,
    the checks behind name [daemon] max_exec_checks, the data has
    slots; and a reload that raises the limit starts it."""
    async with rig(tmp_path, config=EXEC_CONFIG, delay=30.0) as r:
        await trio.sleep(5)
        r.director._on_start(next(iter(r.director._targets[VIP].values())), 4.0)  # late
        waiting = await r.command("status", json=False)
        (tmp_path / "director.toml").write_text(
            EXEC_CONFIG.replace("max_exec_checks = 1", "max_exec_checks = 2")
        )
        reloaded = await r.command("reload")
        await trio.sleep(1)
        both = await r.command("status", json=False)
    assert waiting.data is not None
    assert waiting.data["slots"] == {
        "probe": {"max": 4096, "waiting": 0, "running": 1, "removed": 0},
        "exec": {"max": 1, "waiting": 1, "running": 1},
    }
    rows = {rs["server"]: rs for rs in waiting.data["services"][0]["real_servers"]}
    (queued,) = [rs for rs in rows.values() if rs["slot_wait"] is not None]
    assert queued["slot"] == "exec" and queued["probe_running_for"] is None
    assert 3.0 <= queued["slot_wait"] <= 5.0
    assert f"first probe waiting {queued['slot_wait']:.1f}s for an exec slot" in waiting.stdout
    assert waiting.stdout.startswith("checks behind: the last probe started 4.0s after its time")
    assert (
        "(exec checks wait for a command slot: 1 waiting, 1 run at once ([daemon] max_exec_checks)"
        in waiting.stdout
    )
    assert "[daemon] max_exec_checks: 1 -> 2" in reloaded.stdout, reloaded
    assert both.data is not None and both.data["slots"]["exec"] == {
        "max": 2,
        "waiting": 0,
        "running": 2,
    }
    assert all(
        rs["probe_running_for"] is not None for rs in both.data["services"][0]["real_servers"]
    )


def test_checks_behind_name_both_limits_when_both_hold_probes_back() -> None:
    """Trial 37 (M2): with exec commands and other probes both waiting,
    the line named only max_exec_checks, TCP servers' waits included."""
    (service, _) = _report()
    first, second = service.real_servers
    rows = (
        replace(first, slot_wait=2.0, slot="exec"),
        replace(second, slot_wait=2.0, slot="probe"),
    )
    text = status.status_text(
        (replace(service, real_servers=rows),), lateness=2.0, slots=status.Slots(40, 4)
    )
    head = text.splitlines()[0]
    assert "exec checks wait for a command slot: 1 waiting, 4 run at once" in head, head
    assert "probes wait for a slot: 1 waiting, 40 run at once ([daemon] max_probes" in head, head
    assert "short of CPU" not in head


def test_checks_behind_name_a_slot_wait_of_the_last_minute_once_none_waits() -> None:
    """Trial 37 (M4): for 5 s after a reload raised the limits, the servers
    left behind by the waits were put down to the CPU. A wait for a slot
    within RECENT_SLOT_WAIT seconds is named; an older one is not."""
    (service, _) = _report()
    report = (service,)
    recent = status.status_text(
        report, lateness=2.0, slots=status.Slots(64, 12), slot_waited={"exec": 4.1}
    )
    assert (
        "(exec checks waited for a command slot until 4.1s ago ([daemon] max_exec_checks)" in recent
    )
    old = status.status_text(
        report, lateness=2.0, slots=status.Slots(64, 12), slot_waited={"probe": 61.0}
    )
    assert "(short of CPU for this many checks" in old


def test_a_stale_probe_shows_its_age() -> None:
    config = parse_config(CONFIG)
    (vs,) = config.virtual_servers
    rid = vs.real_server_id(vs.real_servers[0])
    state = HealthState(
        Health.UP, 3, 0, since=10.0, last=ProbeResult.success(0.0004), probed_at=100.0
    )
    (service,) = status.status_report(config, {rid: state}, {}, {}, now=412.5)
    (server,) = service.real_servers
    assert server.last_age == 312.5
    assert "ok 0.4ms, 5m12s ago" in status.status_text((service,))


def test_table_says_what_the_kernel_does_not_have_yet() -> None:
    """Operator trial: TABLE read `up` with WEIGHT `-/5` for a moment (the
    verdict before the pass that applies it). The row now says so, as does
    the data ("pending"), for each way the kernel can lag the decision."""
    config = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
        + "".join(
            f'[[virtual_server.real_server]]\naddress = "10.0.1.{i}:80"\nweight = 5\n'
            for i in (1, 2, 3, 4)
        ),
        modules=NO_MODULES,
    )
    (vs,) = config.virtual_servers
    up = HealthState(Health.UP, 1, 0, since=0.0, last=ProbeResult.success(0.001))
    down = HealthState(Health.DOWN, 0, 1, since=0.0, last=ProbeResult.failure(Reason.REFUSED, 0.001))  # fmt: skip
    rids = [vs.real_server_id(rs) for rs in vs.real_servers]
    states = {rids[0]: up, rids[1]: down, rids[2]: up, rids[3]: up}
    in_kernel = {"10.0.1.2": 5, "10.0.1.3": 2, "10.0.1.4": 5}  # .1 missing, .2 down
    kernel = {
        vs.key: ServiceEntry(
            vs.service(),
            tuple(
                DestinationEntry(Destination(ip_address(a), 80, Forward.ROUTE, w))
                for a, w in in_kernel.items()
            ),
        )
    }
    (service,) = status.status_report(config, states, {}, kernel, now=10.0)
    pending = [rs.pending for rs in service.real_servers]
    assert pending == [
        "not in the kernel yet",
        "still in the kernel",
        "weight 5 not in the kernel yet",
        None,
    ]
    rows = status.status_text((service,)).splitlines()
    assert rows[2].endswith("up; pending: not in the kernel yet")
    assert rows[3].endswith("down, removed; pending: still in the kernel")
    assert rows[4].endswith("up; pending: weight 5 not in the kernel yet")
    assert rows[5].endswith("up")
    data = status.status_data((service,))
    assert [rs["pending"] for rs in data["services"][0]["real_servers"]] == pending  # type: ignore[index]


def test_a_server_probed_elsewhere_says_where() -> None:
    """A route server written as 10.0.1.1:8080 behind :80 is 10.0.1.1:80 in
    the table and probed on 8080: status said only :80, and an operator
    who found :80 open could not tell why it was down (stop 28's trial)."""
    config = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.1:8080"\nname = "web1"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.3:80"\ncheck = { type = "tcp", port = 81 }\n',
        modules=NO_MODULES,
    )
    (vs,) = config.virtual_servers
    down = HealthState(Health.DOWN, 0, 1, since=0.0, last=ProbeResult.failure(Reason.REFUSED, 0.001))  # fmt: skip
    states = {vs.real_server_id(rs): down for rs in vs.real_servers}
    (service,) = status.status_report(config, states, {}, {}, now=10.0)
    assert [(rs.server, rs.probed) for rs in service.real_servers] == [
        ("10.0.1.1:80", "10.0.1.1:8080"),
        ("10.0.1.2:80", None),
        ("10.0.1.3:80", "10.0.1.3:81"),
    ]
    rows = [
        line.split("  ")[1]
        for line in status.status_text((service,)).splitlines()
        if "  10.0.1." in line
    ]
    assert rows == [
        "10.0.1.1:80 (web1, probed at 10.0.1.1:8080)",
        "10.0.1.2:80",
        "10.0.1.3:80 (probed at 10.0.1.3:81)",
    ]
    assert (
        status.status_data((service,))["services"][0]["real_servers"][0]["probed"]
        == "10.0.1.1:8080"
    )  # type: ignore[index]


def test_checks_behind_count_the_slots_probes_of_removed_servers_hold() -> None:
    """Trial 37 (L6): for up to a timeout after a reload removed servers,
    their probes still running held slots that no row showed, and the
    probes waiting for one were unexplained."""
    (service, _) = _report()
    first, second = service.real_servers
    rows = (replace(first, slot_wait=2.0, slot="probe"), second)
    slots = status.Slots(16, 4, running=16, removed=12)
    text = status.status_text((replace(service, real_servers=rows),), lateness=2.0, slots=slots)
    head = text.splitlines()[0]
    assert "probes wait for a slot: 1 waiting, 16 run at once" in head, head
    assert "12 of those running probe servers a reload removed, each until its timeout" in head
    data = status.status_data((replace(service, real_servers=rows),), slots=slots)
    assert data["slots"] == {
        "probe": {"max": 16, "waiting": 1, "running": 16, "removed": 12},
        "exec": {"max": 4, "waiting": 0, "running": 0},
    }
