"""directord end to end: the real daemon in the director's namespace, real
servers in namespaces of their own, real traffic from a client namespace
through the VIP (NAT mode). See topology.py for the network.

Deadlines are generous because the VM is slow (and shared); they bound how
long a test may wait, they are not performance claims. The one measured
figure, how long a killed server stays in the table, is printed beside what
the config allows (interval x fall + timeout), not asserted: in a loaded,
emulated VM it measures the host's load (15-25x slower). What is asserted is
the daemon's own account: the server went down at its fall-th failure in a row."""

from __future__ import annotations

import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from ctl_support import ctl
from daemon_runner import Daemon, wait_until
from topology import (
    HTTP_PORT,
    UDP_PORT,
    Network,
    RealServers,
    http_get,
    ipvsadm,
    tally,
    udp_ask,
)

INTERVAL, TIMEOUT, RISE, FALL = 1.0, 1.0, 2, 2
VM_SLACK = 5.0
DEADLINE = 60.0


@dataclass(frozen=True)
class Settings:
    """What a test varies in the daemon's config."""

    web: tuple[str, ...] = ("rs1", "rs2", "rs3")
    udp: tuple[str, ...] = ()
    on_failure: str = "remove"
    overrides: tuple[tuple[str, str], ...] = ()  # (server, TOML inline table of check keys)
    reconcile_interval: float = 30.0
    flush_on_stop: bool = False
    timeouts: str = ""


def config_text(net: Network, workdir: Path, s: Settings) -> str:
    timing = f"interval = {INTERVAL}, timeout = {TIMEOUT}, rise = {RISE}, fall = {FALL}"
    lines = [
        *(["[ipvs]", f"timeouts = {s.timeouts}", ""] if s.timeouts else []),
        "[daemon]",
        f"flush_on_stop = {str(s.flush_on_stop).lower()}",
        f"reconcile_interval = {s.reconcile_interval}",
        f'state_file = "{workdir}/state.json"',
        "",
        "[control]",
        f'socket = "{workdir}/director.sock"',
        "",
        "[[virtual_server]]",
        'protocol = "tcp"',
        f'address = "{net.vip}:{HTTP_PORT}"',
        'scheduler = "rr"',
        f'on_failure = "{s.on_failure}"',
        f'check = {{ type = "http", path = "/healthz", {timing} }}',
    ]
    overrides = dict(s.overrides)
    for name in s.web:
        lines += [
            "",
            "[[virtual_server.real_server]]",
            f'address = "{net.host(name).address}"',
            'forward = "masq"',
            *([f"check = {overrides[name]}"] if name in overrides else []),
        ]
    if s.udp:
        lines += [
            "",
            "[[virtual_server]]",
            'protocol = "udp"',
            f'address = "{net.vip}:{UDP_PORT}"',
            'scheduler = "rr"',
            f'check = {{ type = "udp", payload = "ping", expect = "^u[0-9]+ ping$", {timing} }}',
        ]
        for name in s.udp:
            lines += [
                "",
                "[[virtual_server.real_server]]",
                f'address = "{net.host(name).address}"',
                'forward = "masq"',
            ]
    return "\n".join(lines) + "\n"


# -- reading the director's table -----------------------------------------------------


def table() -> str:
    return ipvsadm("-Sn")


def destinations(service: str) -> dict[str, int]:
    """{real server "addr:port": weight} of `service` ("-t 1.2.3.4:80") in `ipvsadm -Sn`."""
    found = {}
    for line in table().splitlines():
        match = re.fullmatch(rf"-a {re.escape(service)} -r (\S+) -\w -w (\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    return found


def total_conns(service: str, server: str) -> int:
    """The Conns counter of one destination (`ipvsadm -Ln --stats`): it only
    resets when the destination is deleted and added again."""
    for line in ipvsadm("-Ln", "--stats", *service.split()).splitlines():
        fields = line.split()
        if fields[:2] == ["->", server]:
            return int(fields[2])
    raise AssertionError(f"{server} not in {service}")


# -- fixtures ---------------------------------------------------------------------------


class Harness:
    """The network, its servers, and the daemons a test starts (all stopped at teardown)."""

    _seq = itertools.count()

    def __init__(self, net: Network, servers: RealServers, workdir: Path) -> None:
        self.net = net
        self.servers = servers
        self.workdir = workdir
        self.config = workdir / "director.toml"
        self.daemons: list[Daemon] = []
        self.web = f"-t {net.vip}:{HTTP_PORT}"
        self.udp = f"-u {net.vip}:{UDP_PORT}"

    def rs(self, name: str, port: int = HTTP_PORT) -> str:
        return f"{self.net.host(name).address}:{port}"

    def write_config(self, settings: Settings) -> None:
        self.config.write_text(config_text(self.net, self.workdir, settings))

    def start(self, settings: Settings | None = None) -> Daemon:
        if settings is not None:
            self.write_config(settings)
        daemon = Daemon(self.config)
        self.daemons.append(daemon)
        daemon.start()
        return daemon

    def wait_table(
        self, service: str, want: Callable[[dict[str, int]], bool], what: str
    ) -> dict[str, int]:
        def check() -> dict[str, int] | None:
            current = destinations(service)
            return current if want(current) else None

        try:
            return wait_until(check, DEADLINE, what)
        except AssertionError as e:
            logs = "\n".join(d.log_text() for d in self.daemons)
            raise AssertionError(f"{e}\ntable:\n{table()}\ndaemon log:\n{logs}") from None

    def wait_weights(self, service: str, weights: dict[str, int]) -> None:
        self.wait_table(service, lambda d: d == weights, f"{service} has exactly {weights}")

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()


@pytest.fixture
def h(net: Network, servers: RealServers, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(net, servers, tmp_path)
    try:
        yield harness
    finally:
        harness.close()


def all_up(h: Harness, names: tuple[str, ...] = ("rs1", "rs2", "rs3")) -> dict[str, int]:
    return {h.rs(n): 1 for n in names}


# -- the tests ----------------------------------------------------------------------------


def test_requests_through_the_vip_reach_all_three_servers(h: Harness) -> None:
    h.start(Settings())
    h.wait_weights(h.web, all_up(h))
    assert tally(partial(http_get, h.net), 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


def detection_bound() -> float:
    return INTERVAL * FALL + TIMEOUT + VM_SLACK


def kill_and_time(h: Harness, name: str, gone: Callable[[dict[str, int]], bool]) -> float:
    h.servers.kill(name)
    killed = time.monotonic()
    h.wait_table(h.web, gone, f"{name} taken out after being killed")
    return time.monotonic() - killed


def test_a_killed_server_leaves_the_table_and_comes_back_when_restarted(
    h: Harness, record_property: Callable[[str, object], None]
) -> None:
    daemon = h.start(Settings())
    h.wait_weights(h.web, all_up(h))

    took = kill_and_time(h, "rs2", lambda d: h.rs("rs2") not in d)
    record_property("removal_seconds", round(took, 2))
    print(f"rs2 left the table {took:.2f} s after SIGKILL (bound {detection_bound():.1f} s)")
    down = daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("rs2"))
    assert down["vs"] and down["reason"]
    assert down["failures_in_row"] == FALL, down
    assert destinations(h.web) == all_up(h, ("rs1", "rs3"))
    assert tally(partial(http_get, h.net), 20) == {"rs1": 10, "rs3": 10}

    h.servers.start("rs2")
    h.wait_weights(h.web, all_up(h))
    daemon.wait_event("real_server_up", DEADLINE, rs=h.rs("rs2"))
    assert tally(partial(http_get, h.net), 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_with_weight0_a_killed_server_stays_at_weight_zero(
    h: Harness, record_property: Callable[[str, object], None]
) -> None:
    daemon = h.start(Settings(on_failure="weight0"))
    h.wait_weights(h.web, all_up(h))

    took = kill_and_time(h, "rs2", lambda d: d.get(h.rs("rs2")) == 0)
    record_property("weight0_seconds", round(took, 2))
    print(f"rs2 went to weight 0 {took:.2f} s after SIGKILL (bound {detection_bound():.1f} s)")
    down = daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("rs2"))
    assert down["failures_in_row"] == FALL, down
    assert destinations(h.web) == {**all_up(h), h.rs("rs2"): 0}
    assert tally(partial(http_get, h.net), 20) == {"rs1": 10, "rs3": 10}

    h.servers.start("rs2")
    h.wait_weights(h.web, all_up(h))
    assert tally(partial(http_get, h.net), 30) == {"rs1": 10, "rs2": 10, "rs3": 10}


def test_a_real_servers_check_override_is_what_decides_its_health(h: Harness) -> None:
    # rs2 answers the service's check (/healthz) but not its own (/missing: 404);
    # rs3's override checks a port nothing listens on.
    daemon = h.start(
        Settings(
            overrides=(
                ("rs2", '{ path = "/missing" }'),
                ("rs3", '{ type = "tcp", port = 8080 }'),
            )
        )
    )
    daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("rs2"))
    daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("rs3"))
    h.wait_weights(h.web, all_up(h, ("rs1",)))
    assert tally(partial(http_get, h.net), 6) == {"rs1": 6}
    assert not daemon.events("real_server_up", rs=h.rs("rs2"))
    assert not daemon.events("real_server_up", rs=h.rs("rs3"))


def test_a_daemon_restart_leaves_the_table_and_traffic_alone(h: Harness) -> None:
    first = h.start(Settings())
    h.wait_weights(h.web, all_up(h))
    before = table()

    results: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                results.append(http_get(h.net))
            except (OSError, RuntimeError) as e:
                failures.append(repr(e))

    def requests_since(count: int, more: int) -> Callable[[], bool]:
        return lambda: len(results) + len(failures) >= count + more

    loop = threading.Thread(target=client, daemon=True)
    loop.start()
    try:
        wait_until(requests_since(0, 10), DEADLINE, "the client loop got going")
        assert first.stop() == 0
        assert first.events("stopping")
        assert table() == before
        wait_until(
            requests_since(len(results) + len(failures), 20), DEADLINE, "requests while down"
        )
        assert table() == before

        second = h.start()
        wait_until(requests_since(len(results) + len(failures), 20), DEADLINE, "requests after")
        assert table() == before, f"table changed after the restart; log:\n{second.log_text()}"
    finally:
        stop.set()
        loop.join(timeout=DEADLINE)
    assert failures == []
    assert set(results) == {"rs1", "rs2", "rs3"}
    # The second daemon adopted the table as it found it: nothing deleted or re-added.
    assert [e for e in second.operations() if e.get("op") != "set_timeouts"] == []


def test_a_broken_reload_is_rejected_and_a_valid_one_applies_only_the_diff(h: Harness) -> None:
    daemon = h.start(Settings(web=("rs1", "rs2")))
    h.wait_weights(h.web, all_up(h, ("rs1", "rs2")))
    answered = tally(partial(http_get, h.net), 10)
    assert set(answered) == {"rs1", "rs2"}, answered
    before = table()
    conns = total_conns(h.web, h.rs("rs1"))

    good = h.config.read_text()
    h.config.write_text(good + "\n[[virtual_server\n")  # not TOML
    daemon.reload()
    rejected = daemon.wait_event("reload_rejected", DEADLINE)
    assert any("TOML" in e for e in rejected["errors"]), rejected
    assert table() == before

    h.config.write_text(good.replace('scheduler = "rr"', 'scheduler = "fastest"'))
    daemon.reload()
    wait_until(lambda: len(daemon.events("reload_rejected")) == 2, DEADLINE, "second rejection")
    errors = daemon.events("reload_rejected")[1]["errors"]
    assert any("virtual_server[0].scheduler" in e and "fastest" in e for e in errors), errors
    assert table() == before
    assert not daemon.events("reloaded")

    ops_before = len(daemon.operations())
    h.write_config(Settings(web=("rs1", "rs3")))
    daemon.reload()
    reloaded = daemon.wait_event("reloaded", DEADLINE)
    web = f"TCP {h.net.vip}:{HTTP_PORT}"
    assert reloaded["real_servers_added"] == {web: [h.rs("rs3")]}
    assert reloaded["real_servers_removed"] == {web: [h.rs("rs2")]}
    h.wait_weights(h.web, all_up(h, ("rs1", "rs3")))
    # The kernel has them before the log does: each ipvs_op line is written
    # after its operation, by the log's writer thread (CI, a loaded host).
    wait_until(lambda: len(daemon.operations()) >= ops_before + 2, DEADLINE, "both ipvs_op lines")
    ops = daemon.operations()[ops_before:]
    touched = sorted((op["op"], op.get("rs")) for op in ops)
    assert touched == [("add_destination", h.rs("rs3")), ("delete_destination", h.rs("rs2"))]
    # rs1 was never deleted and re-added (its counters would have reset), nor
    # re-checked from scratch (it would have come up a second time).
    assert total_conns(h.web, h.rs("rs1")) >= conns
    assert len(daemon.events("real_server_up", rs=h.rs("rs1"))) == 1


def test_a_server_deleted_behind_the_daemons_back_comes_back(h: Harness) -> None:
    daemon = h.start(Settings(reconcile_interval=1.0))
    h.wait_weights(h.web, all_up(h))
    # ipvsadm fails the test if the delete fails. No look at the table
    # between the delete and the repair: a drift pass (every 1 s here) may
    # restore it before one; the second add below is the proof of the repair.
    ipvsadm("-d", *h.web.split(), "-r", h.rs("rs2"))
    h.wait_weights(h.web, all_up(h))
    # The kernel has the repair before the log does (ipvs_op is written after
    # its operation), and the test's reader may be behind.
    repairs = partial(daemon.operations, op="add_destination", rs=h.rs("rs2"))
    wait_until(lambda: len(repairs()) >= 2, DEADLINE, "the repair's ipvs_op line")
    assert len(repairs()) == 2, repairs()  # the first one at start, the repair
    assert daemon.events("ipvs_apply", why="drift check")
    # ... and a warning that someone changed the table (operator trial).
    drifted = daemon.wait_event("table_drift_repaired", DEADLINE)
    assert drifted["level"] == "warning", drifted
    assert drifted["services"] == [f"TCP {h.net.vip}:{HTTP_PORT}"], drifted
    # ... which says what was found: the deleted server missing.
    added = f"add_destination TCP {h.net.vip}:{HTTP_PORT} {h.rs('rs2')} "
    assert [r[: len(added)] for r in drifted["repairs"]] == [added], drifted
    assert len(daemon.events("table_drift_repaired")) == 1, daemon.log_text()


def test_a_weight_edited_behind_the_daemons_back_is_put_back_and_named(h: Harness) -> None:
    """Trial (stop 31): the warning gave the weight put back, not the one
    found; an operator could not tell what had been changed."""
    daemon = h.start(Settings(reconcile_interval=1.0))
    h.wait_weights(h.web, all_up(h))
    ipvsadm("-e", *h.web.split(), "-r", h.rs("rs1"), "-m", "-w", "77")
    drifted = daemon.wait_event("table_drift_repaired", DEADLINE)
    edit = f"edit_destination TCP {h.net.vip}:{HTTP_PORT} {h.rs('rs1')} weight=77->1"
    assert drifted["repairs"] == [edit], drifted
    h.wait_weights(h.web, all_up(h))


def test_unmanaged_services_are_left_alone_even_by_flush_on_stop(h: Harness) -> None:
    vip = h.net.vip
    ipvsadm("-A", "-t", f"{vip}:8080", "-s", "wrr", "-p", "120")
    ipvsadm("-a", "-t", f"{vip}:8080", "-r", h.rs("rs1", 8080), "-m", "-w", "3")
    ipvsadm("-A", "-u", f"{vip}:{UDP_PORT}", "-s", "sh")
    ipvsadm("-a", "-u", f"{vip}:{UDP_PORT}", "-r", h.rs("u1", UDP_PORT), "-m", "-w", "7")
    daemon = h.start(Settings(reconcile_interval=1.0, flush_on_stop=True))
    ipvsadm("-A", "-t", f"{vip}:8081", "-s", "lc")
    ipvsadm("-a", "-t", f"{vip}:8081", "-r", h.rs("rs2", 8081), "-m", "-w", "5")
    h.wait_weights(h.web, all_up(h))

    def unmanaged() -> str:
        return "".join(
            line + "\n"
            for line in table().splitlines()
            if f"{vip}:8080" in line or f"{vip}:8081" in line or f"{vip}:{UDP_PORT}" in line
        )

    expected = unmanaged()
    assert expected.count("\n") == 6
    # Make sure drift passes ran since the last one was added: one repairs rs2.
    ipvsadm("-d", *h.web.split(), "-r", h.rs("rs2"))
    h.wait_weights(h.web, all_up(h))
    assert unmanaged() == expected

    assert daemon.stop() == 0
    assert daemon.events("flush_own_services")
    assert table() == expected


def test_ipvs_timeouts_from_the_config_are_set(h: Harness) -> None:
    h.start(Settings(timeouts="{ tcp = 901, tcpfin = 31, udp = 301 }"))
    assert "Timeout (tcp tcpfin udp): 901 31 301" in ipvsadm("-L", "--timeout")


def test_a_udp_service_added_with_directorctl_is_checked_over_udp(h: Harness) -> None:
    """A trial (stop 32): `directorctl -A -u` and `-a` of real servers that
    listen on UDP alone gave them [control] runtime_check's TCP connect,
    refused: never in the table. A UDP service added at runtime gets
    runtime_check_udp (by default a `udp` check: an empty datagram, down on
    a closed port's ICMP error): its servers enter, answer through the VIP,
    and a killed one leaves."""
    daemon = h.start(Settings(web=("rs1",)))
    h.wait_weights(h.web, {h.rs("rs1"): 1})
    sock = h.workdir / "director.sock"
    service = f"{h.net.vip}:{UDP_PORT}"
    assert ctl(sock, ["-A", "-u", service, "-s", "rr"]).status == 0
    for name in ("u1", "u2"):
        assert ctl(sock, ["-a", "-u", service, "-r", h.rs(name, UDP_PORT), "-m"]).status == 0
    h.wait_weights(h.udp, {h.rs("u1", UDP_PORT): 1, h.rs("u2", UDP_PORT): 1})
    status = ctl(sock, ["status"]).stdout
    # (added with directorctl: status marks its settings as the runtime layer's)
    assert f"udp:{service} rr (udp check, set at runtime)" in status, status
    assert sorted(udp_ask(h.net)[0] for _ in range(4)) == ["u1", "u1", "u2", "u2"]

    h.servers.kill("u1")
    h.wait_weights(h.udp, {h.rs("u2", UDP_PORT): 1})
    down = daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("u1", UDP_PORT))
    assert down["reason"] == "unreachable", down


def test_udp_servers_get_traffic_and_a_killed_one_leaves(h: Harness) -> None:
    daemon = h.start(Settings(web=("rs1",), udp=("u1", "u2")))
    both = {h.rs("u1", UDP_PORT): 1, h.rs("u2", UDP_PORT): 1}
    h.wait_weights(h.udp, both)
    replies = [udp_ask(h.net, f"hello {i}".encode()) for i in range(10)]
    assert sorted(name for name, _ in replies) == ["u1"] * 5 + ["u2"] * 5
    assert [echoed for _, echoed in replies] == [f"hello {i}".encode() for i in range(10)]

    h.servers.kill("u1")
    h.wait_weights(h.udp, {h.rs("u2", UDP_PORT): 1})
    daemon.wait_event("real_server_down", DEADLINE, rs=h.rs("u1", UDP_PORT))
    assert {udp_ask(h.net)[0] for _ in range(6)} == {"u2"}
