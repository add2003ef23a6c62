"""Issue 7's operator examples on the real kernel: what an operator did, and
what they expect, each a test against a running directord.

    client --- director (VIP, runs directord) ---+--- rs1, rs2, rs3 (HTTP :80)

One network and its real servers for the module (building it costs seconds in
the VM); each test starts a daemon of its own on a config of its own and, at
its end, stops it, clears the kernel table and restarts any real server it
killed. The kernel table is read with the real `ipvsadm -Sn` (and `-Ln`).

Deadlines are generous because the VM is slow and shared: they bound how long
a wait may take, they are not performance claims. The one comparison of
times, failover under listing load, is a loose ratio against the same
measurement without the load (see test_listing_in_a_loop_does_not_delay_failover).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ctl_support import CTL, Listeners, ctl
from daemon_runner import Daemon, wait_alive, wait_until
from tables import Outcome
from topology import (
    HTTP_PORT,
    Network,
    RealServers,
    director_network,
    inside,
    ipvsadm,
)

T = TypeVar("T")
DEADLINE = 60.0  # seconds any one wait may take in the (slow, shared) VM
POLL = 0.1  # seconds between two looks at the table
BROADCAST = "10.1.1.255"  # topology: the director is 10.1.1.1/24 on its link to rs1
# TCP connect checks: cheap in the VM, and a killed server is refused at once.
FAST = "interval = 0.5, timeout = 1.0, rise = 1, fall = 1"


@dataclass
class World:
    net: Network
    servers: RealServers
    tmp: pytest.TempPathFactory


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with director_network("do") as net:
        servers = RealServers(net)
        try:
            servers.start("rs1", "rs2", "rs3")
            yield World(net, servers, tmp_path_factory)
        finally:
            servers.close()


@dataclass
class Rig:
    """One test's daemon, its files and the ways to look at what it did."""

    world: World
    workdir: Path
    daemon: Daemon | None = None
    extra_control: list[str] = field(default_factory=list)

    @property
    def net(self) -> Network:
        return self.world.net

    @property
    def config(self) -> Path:
        return self.workdir / "director.toml"

    @property
    def socket(self) -> Path:
        return self.workdir / "director.sock"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    def rs(self, name: str, port: int = HTTP_PORT) -> str:
        return f"{self.net.host(name).address}:{port}"

    def vs(self, port: int) -> str:
        """The service as drain and status name it."""
        return f"tcp:{self.net.vip}:{port}"

    def config_text(self, services: str, *, daemon: str = "", control: str = "") -> str:
        return (
            "[daemon]\n"
            "reconcile_interval = 3.0\n"
            f'state_file = "{self.state_file}"\n'
            f"{daemon}\n"
            "[control]\n"
            f'socket = "{self.socket}"\n'
            f"{control}\n"
            f"{services}"
        )

    def service(self, port: int, check: str, *servers: str, extra: str = "") -> str:
        """A [[virtual_server]] on VIP:port (rr) with `check`; each of
        `servers` is the body of one real_server table."""
        text = (
            "[[virtual_server]]\n"
            'protocol = "tcp"\n'
            f'address = "{self.net.vip}:{port}"\n'
            'scheduler = "rr"\n'
            f"check = {check}\n{extra}\n"
        )
        for body in servers:
            text += f"[[virtual_server.real_server]]\n{body}\n"
        return text

    def server(self, name: str, *extra: str, port: int = HTTP_PORT) -> str:
        return "\n".join([f'address = "{self.rs(name, port)}"', 'forward = "masq"', *extra]) + "\n"

    def start(self, text: str) -> Daemon:
        self.config.write_text(text)
        self.daemon = Daemon(self.config)
        self.daemon.start()
        return self.daemon

    def running(self) -> Daemon:
        assert self.daemon is not None
        return self.daemon

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def log(self) -> str:
        return self.daemon.log_text() if self.daemon is not None else "(no daemon)"

    def wait(self, condition: Callable[[], T], what: str, timeout: float = DEADLINE) -> T:
        return wait_alive(
            condition,
            what,
            alive=self.alive,
            log=self.log,
            timeout=timeout,
            every=POLL,
            context=lambda: (
                f"table:\n{ipvsadm('-Sn')}\nstatus:\n{self._status_text()}\nlog:\n{self.log()}"
            ),
        )

    def _status_text(self) -> str:
        try:
            answer = self.ctl("status")
        except OSError as exc:
            return f"(no status: {exc!r})"
        return answer.stdout + answer.stderr

    def ctl(self, *args: str, stdin: str | None = None) -> Outcome:
        return ctl(self.socket, args, stdin)

    def status(self) -> dict[str, dict[str, Any]]:
        """`directorctl status --json`: each service by its name."""
        answer = self.ctl("status", "--json")
        assert answer.status == 0, answer
        return {vs["service"]: vs for vs in json.loads(answer.stdout)["services"]}

    def server_status(self, port: int, server: str) -> dict[str, Any]:
        for rs in self.status()[self.vs(port)]["real_servers"]:
            if rs["server"] == server:
                return rs  # type: ignore[no-any-return]
        raise AssertionError(f"{server} not in the status of {self.vs(port)}")

    def weights(self, port: int) -> dict[str, int] | None:
        """Real server -> weight of tcp VIP:port in `ipvsadm -Sn`; None
        without the service."""
        return weights_in(ipvsadm("-Sn"), f"-t {self.net.vip}:{port}")

    def owned(self) -> list[dict[str, object]]:
        owned = json.loads(self.state_file.read_text())["owned_services"]
        assert isinstance(owned, list)
        return owned

    def reload(self, text: str) -> Outcome:
        """Write the config and `directorctl reload` (it waits for the answer)."""
        self.config.write_text(text)
        return self.ctl("reload")


def weights_in(saved: str, service: str) -> dict[str, int] | None:
    lines = saved.splitlines()
    if not any(line.startswith(f"-A {service} ") for line in lines):
        return None
    weights = {}
    for line in lines:
        if line.startswith(f"-a {service} -r "):
            words = line.split()
            weights[words[4]] = int(words[words.index("-w") + 1])
    return weights


@pytest.fixture
def rig(world: World) -> Iterator[Rig]:
    built = Rig(world, world.tmp.mktemp("operator"))
    try:
        yield built
    finally:
        if built.daemon is not None:
            built.daemon.close()
        ipvsadm("-C")
        down = [n for n in ("rs1", "rs2", "rs3") if n not in world.servers.processes]
        if down:
            world.servers.start(*down)


# -- 1. a dynamic weight is held through a failure short of fall -------------------------


def test_dynamic_weight_of_7_is_held_through_one_timed_out_probe(rig: Rig) -> None:
    """An exec check with dynamic_weight reports 7 (configured weight 100);
    one probe times out (fall = 3): the kernel's weight stays 7 from the
    failure to the next success, never the configured 100."""
    flag = rig.workdir / "slow"
    script = rig.workdir / "weight.sh"
    # The flag makes exactly one probe outlast its timeout.
    script.write_text(f"#!/bin/sh\nif [ -e {flag} ]; then rm -f {flag}; sleep 30; fi\necho 7\n")
    # The window between the timed-out probe and the next one: interval - timeout.
    interval = 4.0
    check = (
        f'{{ type = "exec", command = ["/bin/sh", "{script}"], dynamic_weight = true, '
        f"interval = {interval}, timeout = 2.0, rise = 1, fall = 3 }}"
    )
    rs = rig.rs("rs1")
    daemon = rig.start(rig.config_text(rig.service(80, check, rig.server("rs1", "weight = 100"))))
    rig.wait(lambda: rig.weights(80) == {rs: 7}, "rs1 in the table at its dynamic weight 7")

    before = len(daemon.events("probe_failed", rs=rs))
    flag.touch()
    samples: list[int | None] = []
    failed_at: float | None = None
    # Watch the table from the flag to well past the next probe: a reset to
    # 100 would show between the timed-out probe and the next success.
    deadline = time.monotonic() + DEADLINE
    while failed_at is None or time.monotonic() < failed_at + interval:
        samples.append((rig.weights(80) or {}).get(rs))
        if failed_at is None and len(daemon.events("probe_failed", rs=rs)) > before:
            failed_at = time.monotonic()
        assert time.monotonic() < deadline, f"no probe_failed for {rs}:\n{rig.log()}"
        assert rig.alive(), rig.log()
        time.sleep(POLL)

    # The flag's probe timed out; a slow VM may time out another, never fall's 3 in a row.
    failures = daemon.events("probe_failed", rs=rs)
    assert failures[before]["reason"] == "timeout", failures
    assert all(f["failures_in_row"] < 3 for f in failures), failures
    assert set(samples) == {7}, samples
    after = rig.wait(
        lambda: (s := rig.server_status(80, rs))["last_ok"] and s,
        "a probe passed after the timed-out one",
    )
    assert (after["health"], after["current_weight"]) == ("up", 7), after
    assert not daemon.events("real_server_down", rs=rs)
    assert {e["new"] for e in daemon.events("dynamic_weight", rs=rs)} == {7}
    assert rig.weights(80) == {rs: 7}


# -- 2. slow start does not restart on a restart or a timing-only reload -----------------


def test_slow_start_weights_survive_a_restart_and_a_timing_reload(rig: Rig) -> None:
    """slow_start = 5, weights 100 and 50: once ramped, a restart of the
    daemon (same state file) and a reload that only changes the check's
    interval leave the kernel's weights at 100 and 50 (sampled after each,
    once every server was probed again), and no destination is edited."""
    rs1, rs2 = rig.rs("rs1"), rig.rs("rs2")
    full = {rs1: 100, rs2: 50}

    def config(interval: float) -> str:
        check = f'{{ type = "tcp", interval = {interval}, timeout = 1.0, rise = 1, fall = 2 }}'
        servers = (rig.server("rs1", "weight = 100"), rig.server("rs2", "weight = 50"))
        return rig.config_text(rig.service(80, check, *servers, extra="slow_start = 5"))

    first = rig.start(config(0.5))
    rig.wait(lambda: rig.weights(80) == full, "the ramp ended")

    # The ramp was seen (so a restarted ramp would be too): in the daemon's
    # own account of its operations, not in samples of the table (a loaded VM
    # can run a whole 5 s ramp between two looks at it).
    def ramp() -> list[int]:
        ops = first.operations(rs=rs1)
        return [e["weight"] for e in ops if e["op"] in ("add_destination", "edit_destination")]

    rig.wait(lambda: 100 in ramp(), "rs1's last ramp step (weight 100) logged")
    assert min(ramp()) < 100, ramp()

    def watch(daemon: Daemon, probed: Callable[[dict[str, Any]], bool], what: str) -> None:
        """Sample the table until `probed` holds for both servers' status,
        and for 3 s more (a restarted ramp takes 5): always 100 and 50, and
        no destination edited."""
        samples: list[dict[str, int] | None] = []

        def both_probed() -> bool:
            samples.append(rig.weights(80))
            return all(probed(s) for s in rig.status()[rig.vs(80)]["real_servers"])

        rig.wait(both_probed, what)
        for _ in range(12):
            samples.append(rig.weights(80))
            time.sleep(0.25)
        assert all(w == full for w in samples), samples
        edits = daemon.operations(op="edit_destination")
        assert not edits, edits

    # A restart: stop, and start on the same config and state file.
    assert rig.running().stop() == 0, rig.log()
    assert rig.weights(80) == full
    restarted = Daemon(rig.config)
    rig.daemon = restarted
    restarted.start()
    watch(
        restarted,
        lambda s: s["health"] == "up" and s["successes_in_row"] >= 2,
        "both servers passed two probes since the restart",
    )

    # A reload that changes only the check's timing.
    before = {s["server"]: s["successes_in_row"] for s in rig.status()[rig.vs(80)]["real_servers"]}
    outcome = rig.reload(config(0.7))
    assert outcome.status == 0, outcome
    # The answer can come before the test's reader has the log line.
    (reloaded,) = rig.wait(lambda: restarted.events("reloaded"), "the reload was logged")
    # The servers are kept, neither dropped nor added; their check is the
    # service's, whose change the service's line says once (stop 34: each
    # server's line said `check` too).
    assert reloaded["services_changed"] == {
        f"TCP {rig.net.vip}:80": ["check.interval 0.5 -> 0.7"]
    }, reloaded
    assert reloaded["real_servers_changed"] == {}, reloaded
    assert reloaded["real_servers_added"] == reloaded["real_servers_removed"] == {}, reloaded
    watch(
        restarted,
        lambda s: s["health"] == "up" and s["successes_in_row"] >= before[s["server"]] + 2,
        "both servers passed two probes since the reload",
    )


# -- 3. drain --wait without --timeout waits -----------------------------------------------


def test_drain_wait_without_timeout_waits_for_the_connections_to_end(rig: Rig) -> None:
    """`directorctl drain VS RS --wait`, no --timeout, with a client's
    connection open through the VIP: it commits the drain (weight 0) and
    does not return while the connection lives; once the client resets it
    and the kernel forgets it, drain exits 0."""
    rs = rig.rs("rs1")
    rig.start(rig.config_text(rig.service(80, f'{{ type = "tcp", {FAST} }}', rig.server("rs1"))))
    rig.wait(lambda: rig.weights(80) == {rs: 1}, "rs1 in the table")

    with inside(rig.net.client.netns):
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with client:
        client.settimeout(DEADLINE)
        client.connect((str(rig.net.vip), HTTP_PORT))
        drain = subprocess.Popen(
            [str(CTL), "--socket", str(rig.socket), "drain", rig.vs(80), rs, "--wait"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            rig.wait(lambda: rig.weights(80) == {rs: 0}, "the drain was committed (weight 0)")
            # Several of the daemon's looks at the count (one a second).
            time.sleep(3.0)
            assert drain.poll() is None, drain.communicate()
            assert connections(rig, 80, rs) == (1, 0), ipvsadm("-Ln")
            # A reset: the kernel's entry goes to CLOSE (10 s), not TIME_WAIT (2 min).
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except BaseException:
            drain.kill()
            drain.communicate()
            raise
    out, err = drain.communicate(timeout=DEADLINE + 15.0)
    assert (drain.returncode, err) == (0, ""), (drain.returncode, out, err, rig.log())
    assert "drained: no connections left" in out, out
    assert rig.alive()


def test_draining_a_server_that_is_down_leaves_it_out_of_the_table(rig: Rig) -> None:
    """Trial report: on a persistent service, `drain` of a real server that
    was down put it back in the table at weight 0; the kernel revived its
    persistence templates with it, and their clients were sent to the dead
    server. A drained server that is down stays out, the drain's answer
    says so, and `enable` leaves it out too (it is down)."""
    rs1, rs2 = rig.rs("rs1"), rig.rs("rs2")
    check = f'{{ type = "tcp", {FAST} }}'
    refused = "check = { port = 1 }"  # nothing listens there: rs2 is down
    service = rig.service(
        80, check, rig.server("rs1"), rig.server("rs2", refused), extra="persistent = 300"
    )
    rig.start(rig.config_text(service))
    rig.wait(lambda: rig.weights(80) == {rs1: 1}, "rs1 in the table")
    rig.wait(lambda: rig.server_status(80, rs2)["health"] == "down", "rs2 probed down")

    answer = rig.ctl("drain", rig.vs(80), rs2, "--wait", "--timeout", "5")
    expected = f"{rs2} in {rig.vs(80)}: drain\ndrained: {rs2} is not in the table\n"
    assert answer == Outcome(expected, "", 0), (answer, rig.log())
    # The drain's pass ran before the answer: the table is as it left it.
    assert rig.weights(80) == {rs1: 1}, ipvsadm("-Sn")
    status = rig.server_status(80, rs2)
    assert (status["admin"], status["health"]) == ("drain", "down"), status
    assert status["decision"] == "down, and drained by admin, removed", status
    assert not rig.running().operations(rs=rs2), rig.log()

    assert rig.ctl("enable", rig.vs(80), rs2).status == 0
    assert rig.weights(80) == {rs1: 1}, ipvsadm("-Sn")
    assert rig.alive()


def test_a_reload_that_drops_a_drained_server_forgets_its_drain(rig: Rig) -> None:
    """Trial report: a drained server a reload removed kept its drain, and
    the reload that put a server at its address again brought it in at
    weight 0, saying only "+ real server". Now the reload that drops it
    forgets the drain (its answer and the log say so), and the server a
    later reload adds is in at its weight."""
    rs1, rs2 = rig.rs("rs1"), rig.rs("rs2")
    check = f'{{ type = "tcp", {FAST} }}'
    both = rig.config_text(rig.service(80, check, rig.server("rs1"), rig.server("rs2")))
    one = rig.config_text(rig.service(80, check, rig.server("rs1")))
    daemon = rig.start(both)
    rig.wait(lambda: rig.weights(80) == {rs1: 1, rs2: 1}, "rs1 and rs2 in the table")
    assert rig.ctl("drain", rig.vs(80), rs2).status == 0
    rig.wait(lambda: rig.weights(80) == {rs1: 1, rs2: 0}, "rs2 drained")

    dropped = rig.reload(one)
    assert dropped.status == 0, dropped
    forget = f"> admin forget drain vs=TCP {rig.net.vip}:80 rs={rs2}"
    assert forget in dropped.stdout.splitlines(), dropped
    assert daemon.events("admin_state_forgotten", rs=rs2, state="drain"), rig.log()
    assert json.loads(rig.state_file.read_text())["admin"] == [], rig.state_file.read_text()
    assert rig.weights(80) == {rs1: 1}

    added = rig.reload(both)
    assert added.status == 0 and "admin" not in added.stdout, added
    rig.wait(lambda: rig.weights(80) == {rs1: 1, rs2: 1}, "rs2 back at its weight")
    assert rig.server_status(80, rs2)["admin"] == "enabled"
    assert rig.alive()


def connections(rig: Rig, port: int, server: str) -> tuple[int, int]:
    """ActiveConn and InActConn of `server` under tcp VIP:port in `ipvsadm -Ln`."""
    lines = ipvsadm("-Ln").splitlines()
    start = next(i for i, line in enumerate(lines) if f"{rig.net.vip}:{port}" in line)
    for line in lines[start + 1 :]:
        words = line.split()
        if words[:1] != ["->"]:
            break
        if words[1] == server:
            return int(words[4]), int(words[5])
    raise AssertionError(f"{server} not under {rig.net.vip}:{port}:\n" + "\n".join(lines))


# -- 4. a dropped service is deleted even when the batch has a refusal ---------------------


def test_reload_dropping_a_service_deletes_it_while_the_kernel_refuses_another_op(
    rig: Rig,
) -> None:
    """VIP:80 has a real server at the broadcast address of the director's
    link to rs1 (up by its check, refused by the kernel: EINVAL); a reload
    drops VIP:82. VIP:82 leaves the kernel and the state file's owned
    services while the add stays refused, and `directorctl status` still
    names the refusal. (The batch form of the example, a refused operation
    before the delete in one apply, is test_engine's
    test_a_service_dropped_by_a_reload_is_deleted_although_an_earlier_operation_failed.)"""
    check = f'{{ type = "tcp", {FAST} }}'
    broadcast = "\n".join(
        [
            f'address = "{BROADCAST}:80"',
            'forward = "masq"',
            f'check = {{ address = "{rig.net.host("rs1").address}" }}',
        ]
    )
    web = rig.service(80, check, rig.server("rs1"), broadcast)
    dropped = rig.service(82, check, rig.server("rs2"))
    daemon = rig.start(rig.config_text(web + dropped))
    rig.wait(lambda: rig.weights(82) == {rig.rs("rs2"): 1}, "VIP:82 with rs2 in the table")

    def refusal() -> str | None:
        return rig.server_status(80, f"{BROADCAST}:80")["refused"]  # type: ignore[no-any-return]

    rig.wait(refusal, "status names the broadcast server's refusal")
    assert {o["port"] for o in rig.owned()} == {80, 82}

    seen = len(daemon.events("reloaded"))
    outcome = rig.reload(rig.config_text(web))
    assert outcome.status == 0, outcome
    rig.wait(lambda: rig.weights(82) is None, "the dropped VIP:82 left the kernel")
    # ipvs_op is logged once the kernel took the operation, the reload's
    # summary after the pass: the table can show the delete before the test's
    # reader has those lines, and the state file is written after the pass.
    rig.wait(lambda: daemon.events("reloaded")[seen:], "the reload was logged")
    (deleted,) = rig.wait(lambda: daemon.operations(op="delete_service"), "the delete was logged")
    assert deleted["vs"].endswith(f"{rig.net.vip}:82"), deleted
    # A reload passes over the services it changed only (VIP:82): the
    # refused add of VIP:80 is retried on its own backoff, never in the way.
    (apply,) = [e for e in daemon.events("ipvs_apply") if e.get("why") == "reload"]
    assert apply["count"] == 1, apply
    assert rig.weights(80) == {rig.rs("rs1"): 1}
    text = refusal()
    assert text is not None and "AddDestination" in text and "Invalid" in text, text
    assert rig.vs(82) not in rig.status()
    rig.wait(lambda: {o["port"] for o in rig.owned()} == {80}, "the state file owns VIP:80 alone")
    assert rig.alive()


# -- 5. settings only a restart applies ---------------------------------------------------


def test_reload_changing_control_or_state_file_is_rejected_and_the_old_config_runs(
    rig: Rig,
) -> None:
    """Each of [control] socket, group, mode and [daemon] state_file changed
    (in a file that also drops VIP:82): `directorctl reload` exits 1 saying
    a restart is needed, VIP:82 stays, and the old config is still checked:
    a killed real server leaves the table."""
    check = f'{{ type = "tcp", {FAST} }}'
    services = rig.service(80, check, rig.server("rs1"), rig.server("rs2")) + rig.service(
        82, check, rig.server("rs3")
    )
    daemon = rig.start(rig.config_text(services))
    rig.wait(
        lambda: (
            rig.weights(80) == {rig.rs("rs1"): 1, rig.rs("rs2"): 1}
            and rig.weights(82) == {rig.rs("rs3"): 1}
        ),
        "both services converged",
    )
    without_82 = rig.service(80, check, rig.server("rs1"), rig.server("rs2"))
    socket_line = f'socket = "{rig.socket}"\n'
    changes = {
        "[control] socket": rig.config_text(without_82).replace(
            socket_line, f'socket = "{rig.workdir}/other.sock"\n'
        ),
        "[control] group": rig.config_text(without_82, control='group = "root"'),
        "[control] mode": rig.config_text(without_82, control='mode = "0600"'),
        "[daemon] state_file": rig.config_text(without_82).replace(
            str(rig.state_file), str(rig.workdir / "other.json")
        ),
    }
    for setting, text in changes.items():
        outcome = rig.reload(text)
        assert outcome.status == 1, (setting, outcome)
        assert setting in outcome.stderr and "needs a restart" in outcome.stderr, outcome
        assert rig.weights(82) == {rig.rs("rs3"): 1}, setting
    rig.wait(
        lambda: len(daemon.events("reload_rejected")) >= len(changes), "every rejection logged"
    )
    assert len(daemon.events("reload_rejected")) == len(changes)
    assert not daemon.events("reloaded")
    assert not (rig.workdir / "other.sock").exists()
    assert rig.socket.exists()

    rig.world.servers.kill("rs2")
    rig.wait(lambda: rig.weights(80) == {rig.rs("rs1"): 1}, "killed rs2 left the table")
    rig.world.servers.start("rs2")
    rig.wait(lambda: rig.rs("rs2") in (rig.weights(80) or {}), "restarted rs2 came back")
    assert rig.weights(82) == {rig.rs("rs3"): 1}
    assert rig.alive()


# -- 6. a long outage logs probe_failed at 1, 10, 100 ------------------------------------


def test_probe_failed_is_logged_at_the_1st_10th_and_100th_failure_in_a_row(rig: Rig) -> None:
    """A real server whose check port has no listener, probed every 0.05 s:
    after more than 100 refused probes in a row, the log has probe_failed
    at the 1st, 10th and 100th and at no other."""
    rs = rig.rs("rs1")
    # Nothing listens on 81: every probe is refused at once.
    check = '{ type = "tcp", port = 81, interval = 0.05, timeout = 2.0, rise = 1, fall = 1 }'
    daemon = rig.start(rig.config_text(rig.service(80, check, rig.server("rs1"))))
    state = rig.wait(
        lambda: (s := rig.server_status(80, rs))["failures_in_row"] >= 110 and s,
        "110 failures in a row",
    )
    # By the 110th failure the 100th's line was written; the test's reader
    # may still be behind.
    rig.wait(
        lambda: daemon.events("probe_failed", rs=rs, failures_in_row=100),
        "the 100th failure logged",
    )
    failures = daemon.events("probe_failed", rs=rs)
    assert [e["failures_in_row"] for e in failures] == [1, 10, 100], failures
    assert {e["reason"] for e in failures} == {"refused"}, failures
    assert state["health"] == "down" and rig.weights(80) == {}, state
    assert rig.alive()


# -- 7. listings do not delay failover --------------------------------------------------

LISTERS = 4  # clients listing at once, each in a loop
FOREIGN = 300  # another tool's services, so that each listing has work to do


class Listers:
    """Threads that each send `-Ln` on the control socket in a loop."""

    def __init__(self, path: Path, count: int) -> None:
        self.path = path
        self.done = [0] * count
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def _loop(self, index: int) -> None:
        request = b'{"v": 1, "argv": ["-Ln"]}\n'
        while not self._stop.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(DEADLINE)
                    sock.connect(str(self.path))
                    sock.sendall(request)
                    answer = b""
                    while not answer.endswith(b"\n"):
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            break
                        answer += chunk
                response = json.loads(answer)
                if response.get("status") != 0:
                    self.errors.append(repr(response)[:200])
            except (OSError, ValueError) as e:
                self.errors.append(repr(e))
            self.done[index] += 1

    def running(self) -> bool:
        return all(thread.is_alive() for thread in self._threads)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=DEADLINE)


def test_listing_in_a_loop_does_not_delay_failover(rig: Rig) -> None:
    """With LISTERS clients listing a table of FOREIGN + 1 services in a
    loop, a killed real server leaves the table while they still list, no
    listing fails, and the removal is the daemon's own pass for that server's
    down transition (listings are read through their own netlink socket and
    never queue behind it, nor it behind them). The failover's time with and
    without listers is printed, not asserted: wall-clock bounds in the VM
    measure the host's load."""
    foreign = "".join(
        f"-A -t 10.80.{i // 250}.{i % 250 + 1}:80 -s rr\n"
        f"-a -t 10.80.{i // 250}.{i % 250 + 1}:80 -r 10.200.0.1:80 -g -w 1\n"
        for i in range(FOREIGN)
    )
    done = subprocess.run(["ipvsadm", "-R"], input=foreign, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    check = f'{{ type = "tcp", {FAST} }}'
    names = ("rs1", "rs2", "rs3")
    servers = [rig.server(n) for n in names]
    rig.start(rig.config_text(rig.service(80, check, *servers)))
    everyone = {rig.rs(n): 1 for n in names}
    rig.wait(lambda: rig.weights(80) == everyone, "rs1, rs2, rs3 in the table")

    def failover(name: str) -> float:
        killed = time.monotonic()
        rig.world.servers.kill(name)
        rig.wait(lambda: rig.rs(name) not in (rig.weights(80) or {}), f"killed {name} left")
        return time.monotonic() - killed

    baseline = failover("rs2")
    rig.world.servers.start("rs2")
    rig.wait(lambda: rig.weights(80) == everyone, "rs2 came back")

    listers = Listers(rig.socket, LISTERS)
    try:
        rig.wait(lambda: min(listers.done) >= 1, "every lister got a listing")
        before = list(listers.done)
        loaded = failover("rs3")
        still_running = listers.running()
        during = [after - b for after, b in zip(listers.done, before, strict=True)]
    finally:
        listers.stop()
    print(
        f"\nfailover {baseline:.2f} s alone, {loaded:.2f} s under {LISTERS} listers "
        f"({sum(during)} listings of {FOREIGN + 1} services during it)"
    )
    assert still_running and not listers.errors, listers.errors[:5]
    # The daemon logs ipvs_op once the kernel took it: after the table shows it.
    rig.wait(
        lambda: rig.running().operations(op="delete_destination", rs=rig.rs("rs3")),
        "rs3 left the table by the daemon's own delete (its ipvs_op)",
    )
    assert rig.alive()


# -- 8. -Sn, -C, -R leaves a hand-made service alone ------------------------------------


def test_save_clear_restore_leaves_a_hand_made_service_unmanaged(rig: Rig) -> None:
    """A service made with the real `ipvsadm -A` (its real server has no
    listener, so a probe would take it out), then `directorctl -Sn`, `-C`,
    `-R` of the saved table: the hand-made service comes back as it was and
    stays unmanaged: not in the state file's owned services, not in
    `directorctl status`, never probed (its server stays in the table)."""
    hand_made = f"-t {rig.net.vip}:8080"
    stray = rig.rs("rs3", 81)  # nothing listens there
    ipvsadm("-A", *hand_made.split(), "-s", "wrr")
    ipvsadm("-a", *hand_made.split(), "-r", stray, "-m", "-w", "3")
    check = f'{{ type = "tcp", {FAST} }}'
    runtime_check = f'runtime_check = {{ type = "tcp", {FAST} }}'
    managed = {rig.rs("rs1"): 1, rig.rs("rs2"): 1}
    daemon = rig.start(
        rig.config_text(
            rig.service(80, check, rig.server("rs1"), rig.server("rs2")), control=runtime_check
        )
    )
    rig.wait(lambda: rig.weights(80) == managed, "rs1 and rs2 in the table")
    before = [line for line in ipvsadm("-Sn").splitlines() if hand_made in line]
    assert len(before) == 2, before

    rules = rig.ctl("-Sn")
    assert rules.status == 0 and hand_made in rules.stdout, rules
    assert rig.ctl("-C") == Outcome("", "", 0)
    assert ipvsadm("-Sn") == ""
    assert rig.ctl("-R", stdin=rules.stdout) == Outcome("", "", 0)
    rig.wait(lambda: rig.weights(80) == managed, "rs1 and rs2 back in the table")

    # Ten runtime-check intervals: a probe of the stray server would fail
    # (refused) and, fall = 1, take it out of the table.
    for _ in range(10):
        assert [line for line in ipvsadm("-Sn").splitlines() if hand_made in line] == before
        time.sleep(0.5)
    assert f"{rig.net.vip}:8080" not in json.dumps(rig.owned())
    assert {o["port"] for o in rig.owned()} == {80}
    assert list(rig.status()) == [rig.vs(80)]
    for event in ("probe_failed", "real_server_down", "real_server_up"):
        assert not daemon.events(event, rs=stray), daemon.events(event, rs=stray)
    assert rig.alive()


# -- 9. signals that mean nothing to directord do not end it ------------------------------


def test_usr1_usr2_and_other_stray_signals_are_logged_not_fatal(rig: Rig) -> None:
    """An operator used to keepalived sends SIGUSR1 and SIGUSR2 (its data and
    stats dumps), and stray SIGALRM, SIGIO, SIGPROF, SIGVTALRM or SIGPWR can
    come from anywhere: each killed directord silently (their default action)
    and stopped every check. Each is logged with the status line, and the
    daemon goes on checking and answering."""
    rs = rig.rs("rs1")
    check = f'{{ type = "tcp", {FAST} }}'
    daemon = rig.start(rig.config_text(rig.service(80, check, rig.server("rs1"))))
    rig.wait(lambda: rig.weights(80) == {rs: 1}, "rs1 in the table")
    names = ["SIGUSR1", "SIGUSR2", "SIGALRM", "SIGIO", "SIGPROF", "SIGVTALRM", "SIGPWR"]
    for name in names:
        os.kill(daemon.pid, getattr(signal, name))
        rig.wait(partial(daemon.events, "signal_ignored", signal=name), f"{name} logged")
        assert rig.alive(), rig.log()
    logged = daemon.events("signal_ignored")
    assert [e["signal"] for e in logged] == names
    assert all("1 real servers: 1 up" in e["status"] for e in logged), logged
    assert not daemon.events("stopping")
    # Still checking: a killed server leaves the table, and the socket answers.
    rig.world.servers.kill("rs1")
    rig.wait(lambda: rig.weights(80) == {}, "rs1 out of the table after the signals")
    assert rig.ctl("status").status == 0


# -- 10. stop 27's operator trial: reloads of a service's own shape ----------------------


def test_reload_renaming_a_fwmark_service_keeps_its_server_in_the_table(rig: Rig) -> None:
    """fwmark 2 -> 12 in one reload: the new service has rs1 as soon as the
    reload is answered, with no new probe's verdict (the trial saw it empty
    for a probe interval: the server unknown again). The check's interval is
    long, so a fresh probe would leave that gap wide open."""
    rs = rig.rs("rs1")

    def config(mark: int) -> str:
        return rig.config_text(
            "[[virtual_server]]\n"
            f"fwmark = {mark}\n"
            'scheduler = "rr"\n'
            'check = { type = "tcp", interval = 30.0, timeout = 1.0, rise = 1, fall = 1 }\n'
            f"[[virtual_server.real_server]]\n{rig.server('rs1')}"
        )

    daemon = rig.start(config(2))
    rig.wait(lambda: weights_in(ipvsadm("-Sn"), "-f 2") == {rs: 1}, "rs1 in FWM 2")
    ups = len(daemon.events("real_server_up", rs=rs))

    answer = rig.reload(config(12))
    assert answer.status == 0, answer
    assert "+ service fwm:12\n" in answer.stdout and "- service fwm:2\n" in answer.stdout, answer
    assert weights_in(ipvsadm("-Sn"), "-f 12") == {rs: 1}
    assert weights_in(ipvsadm("-Sn"), "-f 2") is None
    assert len(daemon.events("real_server_up", rs=rs)) == ups  # no new verdict was needed
    assert rig.alive()


def test_reload_changing_a_services_own_settings_says_what_changed(rig: Rig) -> None:
    """Scheduler rr -> wrr and persistence 300 -> 600 s in one reload: the
    kernel has them, and `directorctl reload` and the `reloaded` event say
    so (the trial's reload printed only real servers)."""
    check = f'{{ type = "tcp", {FAST} }}'
    rs = rig.rs("rs1")
    before = rig.service(80, check, rig.server("rs1"), extra="persistent = 300")
    daemon = rig.start(rig.config_text(before))
    rig.wait(lambda: rig.weights(80) == {rs: 1}, "rs1 in the table")

    after = before.replace('scheduler = "rr"', 'scheduler = "wrr"').replace(
        "persistent = 300", "persistent = 600"
    )
    answer = rig.reload(rig.config_text(after))
    assert answer.status == 0, answer
    what = 'scheduler "rr" -> "wrr", persistent 300 -> 600'
    assert f"~ service {rig.vs(80)}: {what}\n" in answer.stdout, answer
    (reloaded,) = daemon.events("reloaded")
    assert reloaded["services_changed"] == {
        f"TCP {rig.net.vip}:80": ['scheduler "rr" -> "wrr"', "persistent 300 -> 600"]
    }
    (line,) = [x for x in ipvsadm("-Sn").splitlines() if x.startswith(f"-A -t {rig.net.vip}:80 ")]
    assert line == f"-A -t {rig.net.vip}:80 -s wrr -p 600", line
    assert rig.weights(80) == {rs: 1}


def test_reloads_and_status_name_the_file_values_runtime_changes_keep_out(rig: Rig) -> None:
    """Stop 33's trial (M1): after `directorctl -e ... -w 9`, an edit of
    that server's weight in the file and a reload printed nothing of it,
    and status showed the 9 as if configured. Stop 34's trial: a second
    reload said nothing again (M2), and a server of the file deleted with
    `-d` was in no status at all (M1). Every reload names each value of
    the file a runtime change keeps out, status shows them, and an `-e`
    back to the file's values lets the file's weight in."""
    check = f'{{ type = "tcp", {FAST} }}'
    rs1, rs2, rs3 = rig.rs("rs1"), rig.rs("rs2"), rig.rs("rs3")
    text = rig.service(
        80, check, rig.server("rs1", "weight = 3"), rig.server("rs2"), rig.server("rs3")
    )
    daemon = rig.start(rig.config_text(text))
    rig.wait(lambda: rig.weights(80) == {rs1: 3, rs2: 1, rs3: 1}, "rs1-3 in the table")
    vip = f"{rig.net.vip}:80"
    assert rig.ctl("-e", "-t", vip, "-r", rs1, "-m", "-w", "9") == Outcome("", "", 0)
    assert rig.ctl("-d", "-t", vip, "-r", rs3) == Outcome("", "", 0)
    rig.wait(lambda: rig.weights(80) == {rs1: 9, rs2: 1}, "rs1 at weight 9, rs3 out")
    assert (rig.server_status(80, rs1)["runtime"], rig.server_status(80, rs2)["runtime"]) == (
        True,
        False,
    )
    status = rig.ctl("status")
    assert status.status == 0, status
    [line] = [x for x in status.stdout.splitlines() if f"{rs1} " in x]
    assert "(set at runtime; weight 9 -> 3 in the file, not applied)" in line, status.stdout
    hidden = (
        f"  in the file, deleted at runtime: {rs3}"
        " (directorctl -a brings it back with the file's settings)\n"
    )
    assert hidden in status.stdout, status.stdout
    summary = rig.ctl("status", "--summary")
    assert "1 real server of the file deleted at runtime" in summary.stdout, summary

    answer = rig.reload(rig.config_text(text.replace("weight = 3", "weight = 4")))
    assert answer.status == 0, answer
    kept = [
        f"real server {rig.vs(80)} {rs1}: weight 9 -> 4 in the file, not applied:"
        " edited at runtime (directorctl -e back to the file's values drops that)",
        f"real server {rig.vs(80)} {rs3}: in the file, not applied:"
        " deleted at runtime (directorctl -a brings it back with the file's settings)",
    ]
    assert [x[2:] for x in answer.stdout.splitlines() if x[:2] == "! "] == kept, answer
    assert daemon.events("reloaded")[-1]["kept_by_runtime"] == kept
    again = rig.ctl("reload")
    assert [x[2:] for x in again.stdout.splitlines() if x[:2] == "! "] == kept, again
    assert rig.weights(80) == {rs1: 9, rs2: 1}

    assert rig.ctl("-e", "-t", vip, "-r", rs1, "-m", "-w", "4") == Outcome("", "", 0)
    assert rig.ctl("-a", "-t", vip, "-r", rs3, "-m", "-w", "1") == Outcome("", "", 0)
    rig.wait(lambda: rig.weights(80) == {rs1: 4, rs2: 1, rs3: 1}, "the file's weights")
    assert rig.server_status(80, rs1)["runtime"] is False
    answer = rig.reload(rig.config_text(text.replace("weight = 3", "weight = 5")))
    assert answer.status == 0, answer
    assert "! " not in answer.stdout, answer
    assert f"~ real server {rig.vs(80)} {rs1}: weight 4 -> 5\n" in answer.stdout, answer
    rig.wait(lambda: rig.weights(80) == {rs1: 5, rs2: 1, rs3: 1}, "rs1 at the file's weight 5")


def test_runtime_timeouts_keep_the_files_out_and_every_reload_says_so(rig: Rig) -> None:
    """The trials' kind of fault, for timeouts (stop 34): after `directorctl
    --set`, a reload of an edit of `[ipvs] timeouts` printed `~ [ipvs]
    timeouts: ...` as if applied while the kernel kept the runtime values.
    It is a `!` line, and a --set back to the file's values drops it."""
    check = f'{{ type = "tcp", {FAST} }}'
    services = rig.service(80, check, rig.server("rs1"))

    def text(tcp: int) -> str:
        ipvs = f"[ipvs]\ntimeouts = {{ tcp = {tcp}, tcpfin = 120, udp = 300 }}\n"
        return ipvs + rig.config_text(services)

    rig.start(text(900))
    rig.wait(lambda: rig.weights(80) == {rig.rs("rs1"): 1}, "rs1 in the table")
    rig.wait(lambda: "900 120 300" in ipvsadm("-L", "--timeout"), "the file's timeouts")
    assert rig.ctl("--set", "60", "0", "0") == Outcome("", "", 0)
    assert "60 120 300" in ipvsadm("-L", "--timeout")
    answer = rig.reload(text(800))
    assert answer.status == 0, answer
    assert answer.stdout == (
        "! [ipvs] timeouts: { tcp = 60, tcpfin = 120, udp = 300 } ->"
        " { tcp = 800, tcpfin = 120, udp = 300 } in the file, not applied: set at runtime"
        " (directorctl --set back to the file's values drops that)\n"
        "reloaded: 0 table operations\n"
    ), answer
    assert "60 120 300" in ipvsadm("-L", "--timeout")
    assert rig.ctl("--set", "800", "0", "0") == Outcome("", "", 0)
    answer = rig.reload(text(700))
    assert answer.status == 0, answer
    assert "! " not in answer.stdout, answer
    assert "~ [ipvs] timeouts: { tcp = 800, tcpfin = 120, udp = 300 } ->" in answer.stdout, answer
    rig.wait(lambda: "700 120 300" in ipvsadm("-L", "--timeout"), "the file's new timeouts")


def test_runtime_add_of_a_server_its_check_cannot_probe_says_why(rig: Rig) -> None:
    """`-a` of a direct-routing server to a port-0 service made at runtime
    (ipvsadm takes it, with port 0): the runtime check has no port to probe.
    Refused in words naming the server, its service and the setting, not a
    repr of the daemon's target (the trial's rc 255 and RealServerId(...))."""
    check = f'{{ type = "tcp", {FAST} }}'
    daemon = rig.start(rig.config_text(rig.service(80, check, rig.server("rs1"))))
    rig.wait(lambda: rig.weights(80) == {rig.rs("rs1"): 1}, "rs1 in the table")
    vip = f"{rig.net.vip}:0"
    assert rig.ctl("-A", "-t", vip, "-s", "rr", "-p", "60") == Outcome("", "", 0)
    answer = rig.ctl("-a", "-t", vip, "-r", rig.rs("rs2"), "-g")
    assert answer.status != 0, answer
    rs2 = rig.net.host("rs2").address
    assert answer.stderr.startswith(
        f"cannot health-check real server {rs2}:0 of TCP {vip}: no port to probe"
    ), answer
    assert "its check is [control] runtime_check" in answer.stderr, answer
    assert "RealServerId" not in answer.stderr, answer
    assert weights_in(ipvsadm("-Sn"), f"-t {vip}") == {}
    assert rig.alive(), daemon.log_text()


# -- 11. stop 28: route servers written with another port --------------------------------


def test_route_servers_take_the_services_port_and_survive_save_clear_restore(rig: Rig) -> None:
    """A direct-routing server written as rs1:80 behind VIP:8080, and one
    written as rs2 behind a port-0 service with its check on port 80: the
    table has each with the service's port (8080, 0), as `ipvsadm -a -g`
    sets it, and the checks probe port 80. Before, rs1 went in as rs1:80,
    and `directorctl -Sn`, `-C`, `-R` (or ipvsadm's own, whose -a gives a
    route server the service's port) added it again as rs1:8080 (stop 27's
    trial)."""
    check = f'{{ type = "tcp", {FAST} }}'
    vip = rig.net.vip
    rs1, rs2 = rig.net.host("rs1").address, rig.net.host("rs2").address
    services = rig.service(8080, check, f'address = "{rs1}:{HTTP_PORT}"') + (
        "[[virtual_server]]\n"
        'protocol = "tcp"\n'
        f'address = "{vip}:0"\n'
        'scheduler = "rr"\n'
        "persistent = 60\n"
        f'check = {{ type = "tcp", port = {HTTP_PORT}, {FAST} }}\n'
        f'[[virtual_server.real_server]]\naddress = "{rs2}"\n'
    )
    daemon = rig.start(rig.config_text(services))
    want = {f"-t {vip}:8080": {f"{rs1}:8080": 1}, f"-t {vip}:0": {f"{rs2}:0": 1}}

    def table() -> dict[str, dict[str, int] | None]:
        saved = ipvsadm("-Sn")
        return {service: weights_in(saved, service) for service in want}

    rig.wait(lambda: table() == want, "rs1 and rs2 in the table with the services' ports")
    saved = ipvsadm("-Sn")
    assert f"-a -t {vip}:8080 -r {rs1}:8080 -g -w 1" in saved.splitlines(), saved
    assert f"-a -t {vip}:0 -r {rs2}:0 -g -w 1" in saved.splitlines(), saved
    assert rig.server_status(8080, f"{rs1}:8080")["health"] == "up"

    rules = rig.ctl("-Sn")
    assert rules.status == 0 and rules.stdout == saved, (rules, saved)
    assert rig.ctl("-C") == Outcome("", "", 0)
    assert rig.ctl("-R", stdin=rules.stdout) == Outcome("", "", 0)
    rig.wait(lambda: table() == want, "the same table after -Sn, -C, -R")
    assert ipvsadm("-Sn") == saved

    # The checks probe port 80, where the servers listen: rs1 killed leaves.
    rig.world.servers.kill("rs1")
    rig.wait(lambda: table()[f"-t {vip}:8080"] == {}, "rs1 out of the table")
    (down,) = daemon.events("real_server_down", rs=f"{rs1}:8080")
    assert down["reason"] == "refused", down
    assert table()[f"-t {vip}:0"] == {f"{rs2}:0": 1}
    assert rig.alive()


def test_save_clear_restore_with_the_sorry_server_in_leaves_it_the_sorry_server(rig: Rig) -> None:
    """rs1's check fails (nothing listens on 81), so the sorry server, rs2,
    stands in; `-Sn` saves it as a destination, and after `-C` and `-R` it
    was a runtime real server: probed, counted in the quorum, in the table
    beside rs1 once rs1 was up, for good (stop 28's trial). Now it is still
    the sorry server: out of the table as soon as rs1 is up."""
    check = f'{{ type = "tcp", {FAST} }}'
    sorry = rig.rs("rs2")
    extra = f'sorry_server = {{ address = "{sorry}", forward = "masq" }}'

    def config(port: int) -> str:
        return rig.config_text(rig.service(80, check, rig.server("rs1", port=port), extra=extra))

    rig.start(config(81))
    rig.wait(lambda: rig.weights(80) == {sorry: 1}, "the sorry server in")
    rules = rig.ctl("-Sn")
    assert rules.status == 0 and f"-r {sorry} -m -w 1" in rules.stdout, rules
    assert rig.ctl("-C") == Outcome("", "", 0)
    assert rig.ctl("-R", stdin=rules.stdout) == Outcome("", "", 0)
    rig.wait(lambda: rig.weights(80) == {sorry: 1}, "the sorry server back in")
    (service,) = rig.status().values()
    assert [rs["server"] for rs in service["real_servers"]] == [rig.rs("rs1", 81)]
    assert service["sorry"] == sorry
    assert json.loads(rig.state_file.read_text())["real_servers"] == []  # no runtime server

    answer = rig.reload(config(HTTP_PORT))
    assert answer.status == 0, answer
    rig.wait(lambda: rig.weights(80) == {rig.rs("rs1"): 1}, "rs1 up and the sorry server out")
    assert rig.alive()


# -- 12. stop 35's trial: a long probe, and a stop during the start -----------------------


def test_an_exec_probe_still_running_shows_in_status(rig: Rig) -> None:
    """An exec check's command that takes 3 s: while it runs, the status
    row said only "not checked yet" (trial 35, L7). It now shows the probe
    running, first before any verdict, then beside the last one; the data
    has probe_running_for from the first moment."""
    script = rig.workdir / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 3\nexit 0\n")
    check = (
        f'{{ type = "exec", command = ["/bin/sh", "{script}"], interval = 4.0, timeout = 6.0, '
        "rise = 1, fall = 2 }"
    )
    rs = rig.rs("rs1")
    rig.start(rig.config_text(rig.service(80, check, rig.server("rs1"))))

    def running(first: bool) -> dict[str, Any] | None:
        row = rig.server_status(80, rs)
        seconds = row["probe_running_for"]
        if seconds is None or seconds < 1.2 or (row["last_ok"] is None) != first:
            return None
        return row

    row = rig.wait(lambda: running(first=True), "the first probe running for over a second")
    assert row["health"] == "unknown" and row["current_weight"] is None, row
    text = rig.ctl("status")
    assert text.status == 0, text
    line = next(line for line in text.stdout.splitlines() if line.strip().startswith(rs))
    assert "first probe running for " in line, text.stdout

    row = rig.wait(lambda: running(first=False), "a later probe running for over a second")
    assert row["health"] == "up" and row["last_ok"] is True, row
    text = rig.ctl("status")
    line = next(line for line in text.stdout.splitlines() if line.strip().startswith(rs))
    assert "ok " in line and "; probe running for " in line, text.stdout
    assert rig.alive()


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler for `signum` (proc(5): SigCgt)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_a_stop_during_the_start_logs_listening_before_stopping(rig: Rig) -> None:
    """SIGTERM sent as soon as the daemon catches it (director.entry, its
    first moments: the imports and the first pass are still to come): `control_listening` came after `stopping` in trial 35 (L4), and
    `metrics_listening` in trial 36, which also found no word of when the
    signal had come. Both listen lines come before `stopping` now, and a
    `signal_kept` line says the SIGTERM came during the start, and how long
    ago; the stop is clean (status 0) and the socket file is gone."""
    check = f'{{ type = "tcp", {FAST} }}'
    daemon = Daemon(rig.config)
    metrics = '[metrics]\nlisten = "127.0.0.1:9598"\n'
    rig.config.write_text(rig.config_text(metrics + rig.service(80, check, rig.server("rs1"))))
    daemon.launch()
    try:
        wait_until(
            lambda: catches(daemon.pid, signal.SIGTERM),
            DEADLINE,
            "directord catches SIGTERM",
            every=0.005,
        )
        status = daemon.stop(signal.SIGTERM)
        events = [e["event"] for e in daemon.logged()]
        (kept,) = daemon.events("signal_kept")
    finally:
        daemon.close()
    assert status == 0, daemon.log_text()
    assert "stopping" in events, events
    assert events.index("control_listening") < events.index("stopping"), events
    assert events.index("metrics_listening") < events.index("stopping"), events
    assert events.index("ready") < events.index("signal_kept") < events.index("stopping"), events
    assert kept["signal"] == "SIGTERM" and kept["seconds_ago"] >= 0.0, kept
    assert not rig.socket.exists()


# -- 13. stop 36's trial: exec command slots, and a summary of servers not checked yet ----


def test_exec_checks_past_the_command_slots_say_they_wait(rig: Rig) -> None:
    """Trial 36 (M1): 24 exec checks of `sleep 6` every 3 s, 16 commands
    at most at once (not in the docs): status said 'short of CPU' with the
    daemon at 14.5 % of a core, and a waiting probe's row said nothing.
    Here 3 servers, [daemon] max_exec_checks = 1, commands of 3 s: the
    rows waiting say so, the data counts them, the checks behind name the
    limit, and a reload to 3 runs all three at once."""
    script = rig.workdir / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 3\nexit 0\n")
    check = (
        f'{{ type = "exec", command = ["/bin/sh", "{script}"], interval = 1.0, timeout = 6.0, '
        "rise = 1, fall = 2 }"
    )
    servers = [rig.server(name) for name in ("rs1", "rs2", "rs3")]

    def config(slots: int) -> str:
        return rig.config_text(
            rig.service(80, check, *servers), daemon=f"max_exec_checks = {slots}"
        )

    rig.start(config(1))

    def waiting() -> dict[str, Any] | None:
        answer = rig.ctl("status", "--json")
        data = json.loads(answer.stdout)
        rows = data["services"][0]["real_servers"]
        if sum(1 for rs in rows if rs["slot"] == "exec" and rs["slot_wait"] >= 1.2) < 2:
            return None
        return dict(data)

    data = rig.wait(waiting, "two exec probes waiting over a second for the one slot")
    assert data["slots"]["exec"] == {"max": 1, "waiting": 2, "running": 1}, data["slots"]
    running = [rs for rs in data["services"][0]["real_servers"] if rs["probe_running_for"]]
    assert len(running) <= 1, running
    text = rig.ctl("status").stdout
    assert text.count("waiting ") >= 2 and "for an exec slot" in text, text
    if text.startswith("checks behind"):
        assert "exec checks wait for a command slot" in text.splitlines()[0], text

    answer = rig.reload(config(3))
    assert answer.status == 0 and "[daemon] max_exec_checks: 1 -> 3" in answer.stdout, answer

    def all_running() -> bool:
        rows = rig.status()[rig.vs(80)]["real_servers"]
        return all(rs["probe_running_for"] is not None for rs in rows)

    rig.wait(all_running, "the three commands running at once")
    assert rig.alive()


def test_a_summary_with_servers_not_checked_yet_does_not_say_all_are_up(rig: Rig) -> None:
    """Trial 36 (M2): after a start of 8,000 servers with initial = "up",
    `status --summary` counted 7,952 unknown and ended with "every real
    server is up". Two servers in service from the start (initial = "up")
    whose first exec probe takes 4 s: the summary's last line says how
    many are not checked yet; once checked, that every one is up."""
    script = rig.workdir / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 4\nexit 0\n")
    check = (
        f'{{ type = "exec", command = ["/bin/sh", "{script}"], interval = 10.0, timeout = 8.0, '
        'rise = 1, fall = 1, initial = "up" }'
    )
    rs1, rs2 = rig.rs("rs1"), rig.rs("rs2")
    rig.start(rig.config_text(rig.service(80, check, rig.server("rs1"), rig.server("rs2"))))
    assert rig.weights(80) == {rs1: 1, rs2: 1}  # in service before any probe
    summary = rig.ctl("status", "--summary").stdout.splitlines()
    assert summary[0].startswith("2 real servers in 1 services: 0 up, 0 down, 2 unknown;"), summary
    assert summary[-1] == (
        "every real server checked is up, enabled and in the kernel table;"
        " 2 not checked yet (counted, not listed)"
    ), summary

    rig.wait(
        lambda: all(rs["health"] == "up" for rs in rig.status()[rig.vs(80)]["real_servers"]),
        "both checked up",
    )
    summary = rig.ctl("status", "--summary").stdout.splitlines()
    assert summary[-1] == "every real server is up, enabled and in the kernel table", summary


def test_probes_past_max_probes_say_they_wait_for_a_probe_slot(rig: Rig) -> None:
    """The other member of trial 36's M1: [daemon] max_probes = 16 and 24
    real servers on rs1's link that no host has (no ARP answer: each probe
    holds its slot for its 4 s timeout). Probes wait for a probe slot, the
    rows and the data say so, not the CPU; a reload to 64 lets them all
    run at once."""
    check = '{ type = "tcp", interval = 1.0, timeout = 4.0, rise = 1, fall = 1 }'
    subnet = str(rig.net.host("rs1").gateway).rsplit(".", 1)[0]
    servers = [f'address = "{subnet}.{100 + i}:80"\nforward = "masq"\n' for i in range(24)]

    def config(slots: int) -> str:
        return rig.config_text(rig.service(80, check, *servers), daemon=f"max_probes = {slots}")

    rig.start(config(16))

    def waiting() -> dict[str, Any] | None:
        data = json.loads(rig.ctl("status", "--json").stdout)
        rows = data["services"][0]["real_servers"]
        late = [rs for rs in rows if rs["slot"] == "probe" and rs["slot_wait"] >= 1.2]
        return dict(data) if late else None

    data = rig.wait(waiting, "a probe waiting over a second for a probe slot")
    assert data["slots"]["probe"]["max"] == 16 and data["slots"]["probe"]["waiting"] >= 1, data
    rows = data["services"][0]["real_servers"]
    assert sum(1 for rs in rows if rs["probe_running_for"] is not None) <= 16, rows
    assert "for a probe slot" in rig.ctl("status").stdout

    answer = rig.reload(config(64))
    assert answer.status == 0 and "[daemon] max_probes: 16 -> 64" in answer.stdout, answer

    def all_running() -> bool:
        rows = rig.status()[rig.vs(80)]["real_servers"]
        return (
            all(rs["slot"] is None for rs in rows)
            and sum(1 for rs in rows if rs["probe_running_for"] is not None) > 16
        )

    rig.wait(all_running, "more than 16 probes running, none waiting")
    assert rig.alive()


# -- 14. stop 36's second trial: the daemon's own shortage is no verdict ---------------------


def start_short_of_files(rig: Rig, nofile: int) -> tuple[Daemon, dict[str, Any]]:
    """The rig's config run under an open-file limit of `nofile`, until a
    probe finds it short of files: the daemon and its first
    `probe_short_of_resources` line (EMFILE or ENFILE)."""
    rig.daemon = daemon = Daemon(rig.config, nofile=nofile)
    daemon.start()
    rig.wait(lambda: daemon.events("probe_short_of_resources"), "a probe short of files")
    (short, *_) = daemon.events("probe_short_of_resources")
    assert "EMFILE" in short["detail"] or "ENFILE" in short["detail"], short
    return daemon, short


def test_a_daemon_out_of_file_descriptors_takes_no_server_out(rig: Rig) -> None:
    """Trial 37 (HIGH): under an open-file limit of 80, exec checks failed
    with EMFILE and an up server left the table (fall = 1). Here the limit
    is 48 and 20 exec checks of 2 s may run 16 at once, each holding its
    pipes: some cannot start. Such a probe gives no verdict
    (`probe_short_of_resources`), no server goes down, and every one is up
    once its command runs."""
    script = rig.workdir / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 2\nexit 0\n")
    check = (
        f'{{ type = "exec", command = ["/bin/sh", "{script}"], interval = 1.0, timeout = 5.0, '
        "rise = 1, fall = 1 }"
    )
    subnet = str(rig.net.host("rs1").gateway).rsplit(".", 1)[0]
    servers = [f'address = "{subnet}.{100 + i}:80"\nforward = "masq"\n' for i in range(20)]
    rig.config.write_text(
        rig.config_text(rig.service(80, check, *servers), daemon="max_exec_checks = 16")
    )
    daemon, short = start_short_of_files(rig, 48)
    # The others wait their turn behind those that ran beside it (CI at stop
    # 36: without that, one server's every start found no file for 60 s).
    assert 1 <= short["run_at_once"] < 16, short
    rig.wait(lambda: len(rig.weights(80) or {}) == 20, "all 20 servers up")
    assert not daemon.events("real_server_down"), daemon.events("real_server_down")
    assert rig.alive()


def full_listeners(netns: str, ports: range) -> list[socket.socket]:
    """Listening sockets in `netns` whose accept queue (backlog 0) one
    connection of their own fills: a SYN that comes after is dropped
    (tcp_conn_request: sk_acceptq_is_full), so a connect to them waits out
    its timeout, holding its socket all along. The caller closes them."""
    held: list[socket.socket] = []
    with inside(netns):
        for port in ports:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(listener)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("0.0.0.0", port))
            listener.listen(0)
            held.append(socket.create_connection(("127.0.0.1", port), timeout=DEADLINE))
    return held


def test_tcp_probes_short_of_files_take_no_server_out_and_judge_every_one(rig: Rig) -> None:
    """The socket member of the out-of-files kind (CI at stop 36, trial 37's
    HIGH): under an open-file limit of 24 the daemon may run 16 probes at
    once (max_probes' floor) beside some 12 files of its own. 16 servers
    that never answer hold a socket each for their 1 s timeout, and 14 that
    answer are checked beside them every second (fall = 1): probes meet
    EMFILE. None of the 14 goes down for it, and every one is judged up."""
    rs1 = rig.net.host("rs1")
    listeners = Listeners(rs1.netns)
    held = full_listeners(rs1.netns, range(9100, 9116))
    try:
        answering = [f"{rs1.address}:{9000 + n}" for n in range(14)]
        for n in range(14):
            listeners.listen("0.0.0.0", 9000 + n)
        silent = [f"{rs1.address}:{9100 + n}" for n in range(16)]
        check = '{ type = "tcp", interval = 1.0, timeout = 1.0, rise = 1, fall = 1 }'
        servers = [f'address = "{a}"\nforward = "masq"\n' for a in answering + silent]
        rig.config.write_text(rig.config_text(rig.service(80, check, *servers)))
        daemon, _ = start_short_of_files(rig, 24)
        rig.wait(lambda: set(rig.weights(80) or {}) == set(answering), "the 14 answering up")
        time.sleep(5)  # (more probes short of files meanwhile)
        downs = [e for e in daemon.events("real_server_down") if e["rs"] in answering]
        assert downs == [], downs
        assert set(rig.weights(80) or {}) == set(answering)
        assert rig.alive()
    finally:
        listeners.close()
        for sock in held:
            sock.close()


def test_a_sighup_kept_with_a_sigterm_during_the_start_says_it_makes_no_reload(rig: Rig) -> None:
    """Trial 37 (L5): a SIGHUP and a SIGTERM sent during the start: the
    SIGHUP's `signal_kept` said "acted on once ready", and nothing followed
    it. Its line now says no reload comes; the stop is clean."""
    check = f'{{ type = "tcp", {FAST} }}'
    rig.config.write_text(rig.config_text(rig.service(80, check, rig.server("rs1"))))
    daemon = Daemon(rig.config)
    daemon.launch()
    try:
        wait_until(lambda: catches(daemon.pid, signal.SIGTERM), DEADLINE, "it catches", every=0.005)
        os.kill(daemon.pid, signal.SIGHUP)
        status = daemon.stop(signal.SIGTERM)
        kept = {e["signal"]: e for e in daemon.events("signal_kept")}
        reloaded = daemon.events("reloaded")
        abandoned = daemon.events("reload_abandoned")
    finally:
        daemon.close()
    assert status == 0, daemon.log_text()
    assert kept["SIGHUP"]["why"] == "came during the start: no reload, a stop came too", kept
    assert kept["SIGTERM"]["why"] == "came during the start: acted on once ready", kept
    assert reloaded == []
    assert abandoned == []  # trial 38: no reload begun, so none abandoned either


def test_clients_that_come_during_a_stop_are_answered_or_refused_never_reset(rig: Rig) -> None:
    """Trial 37 (M3): with flush_on_stop at 2,000 servers, 39 of the
    clients that connected during the stop's last second were reset
    without a word. Here 300 services are flushed while a client connects
    every 20 ms from the SIGTERM on: each gets an answer (the stopping
    message included) or finds no socket to connect to, never a reset or
    an empty close."""
    check = '{ type = "tcp", interval = 60.0, timeout = 1.0 }'
    services = "".join(rig.service(1000 + i, check, rig.server("rs1")) for i in range(300))
    rig.start(rig.config_text(services, daemon="flush_on_stop = true"))
    daemon = rig.running()
    request = json.dumps({"v": 1, "command": "status", "args": {"summary": True}}).encode() + b"\n"
    outcomes: list[str] = []
    daemon.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    sent = time.monotonic()
    while daemon.alive() and len(outcomes) < 500:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(DEADLINE)
        try:
            sock.connect(str(rig.socket))
        except (FileNotFoundError, ConnectionRefusedError):
            outcomes.append("no socket")
            sock.close()
            time.sleep(0.02)
            continue
        with sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)  # (failing, an answer may wait all the same)
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = sock.recv(1 << 20)
                    if not chunk:
                        break
                    data += chunk
            except ConnectionResetError:
                outcomes.append(f"reset after {len(data)} bytes at {time.monotonic() - sent:.3f}")
                continue
        outcomes.append("answered" if data.endswith(b"\n") else f"closed after {len(data)} bytes")
        time.sleep(0.02)
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()[-3000:]  # (exited already: reaped)
    assert outcomes, "no client got to try"
    bad = [o for o in outcomes if o not in ("answered", "no socket")]
    assert bad == [], (bad, outcomes, daemon.log_text()[-1500:])
    assert ipvsadm("-Sn").strip() == "", "the stop flushed the daemon's services"


def test_status_clients_in_flight_when_a_stop_comes_get_an_answer(rig: Rig) -> None:
    """Trial 38: during a flush_on_stop stop of 300 services, 4 of 81
    `directorctl status --summary` clients that had asked before the
    SIGTERM were closed on without an answer, 14-18 s later: the stopping
    line met a keepalive space still going out, and was dropped. Here
    clients ask from before the SIGTERM to the end of the stop, many at
    once: each gets its summary, the stopping message, or no socket to
    connect to; never a close without (or in the middle of) an answer."""
    check = '{ type = "tcp", interval = 60.0, timeout = 1.0 }'
    services = "".join(rig.service(1000 + i, check, rig.server("rs1")) for i in range(300))
    rig.start(rig.config_text(services, daemon="flush_on_stop = true"))
    daemon = rig.running()
    argv = [str(CTL), "--socket", str(rig.socket), "status", "--summary"]
    clients: list[subprocess.Popen[str]] = []

    def ask() -> None:
        clients.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))  # fmt: skip
        time.sleep(0.05)

    for _ in range(20):
        ask()
    daemon.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    while daemon.alive() and len(clients) < 80:
        ask()
    outputs = [client.communicate(timeout=DEADLINE)[0] for client in clients]
    assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()[-3000:]  # (exited already: reaped)
    said = {
        "summary": "real servers in 300 services",
        "stopping": "directord is stopping",
        "no socket": "cannot connect to",
    }
    kinds = [next((k for k, text in said.items() if text in out), out) for out in outputs]
    assert [k for k in kinds if k not in said] == [], kinds
    assert "stopping" in kinds or "summary" in kinds, kinds


# -- 15. stop 38's trial: a drained server through a kill -9 and a restart ------------------


def test_a_drained_server_stays_until_fall_failures_after_a_kill_and_restart(rig: Rig) -> None:
    """Trial 41: rs1 drained (weight 0, finishing its connections), the
    daemon killed with SIGKILL, rs1 stopped answering, the daemon started
    again on the same state file: rs1 left the table at its first failed
    probe, where rs2 (enabled, killed too) waited for fall = 3. Both are
    adopted from the table now, and each leaves at its third failure."""
    rs1, rs2 = rig.rs("rs1"), rig.rs("rs2")
    check = '{ type = "tcp", interval = 0.5, timeout = 1.0, rise = 1, fall = 3 }'
    servers = (rig.server("rs1", "weight = 5"), rig.server("rs2", "weight = 3"))
    first = rig.start(rig.config_text(rig.service(80, check, *servers)))
    rig.wait(lambda: rig.weights(80) == {rs1: 5, rs2: 3}, "both servers in the table")
    drained = rig.ctl("drain", rig.vs(80), rs1)
    assert drained.status == 0, drained
    rig.wait(lambda: rig.weights(80) == {rs1: 0, rs2: 3}, "rs1 drained to weight 0")

    first.stop(signal.SIGKILL)
    rig.world.servers.kill("rs1")
    rig.world.servers.kill("rs2")
    restarted = Daemon(rig.config)
    rig.daemon = restarted
    restarted.start()
    assert rig.weights(80) == {rs1: 0, rs2: 3}  # adopted as they were
    rig.wait(lambda: rig.weights(80) == {}, "both servers out of the table")
    for rs in (rs1, rs2):
        # (The table can change before the test's reader has the log line.)
        (down,) = rig.wait(lambda: restarted.events("real_server_down", rs=rs), f"{rs} down")  # noqa: B023
        assert (down["old"], down["failures_in_row"]) == ("unknown", 3), down
        assert [e["failures_in_row"] for e in restarted.events("probe_failed", rs=rs)][:1] == [1]
    assert rig.server_status(80, rs1)["admin"] == "drain"


def test_no_probe_is_logged_once_a_stop_begins_behind_a_restore(rig: Rig) -> None:
    """Trials 40-42: checks went on through a stop, logging servers up and
    down after `stopping` (through a flush, and while the stop waited for a
    change under way). Every probe logged (debug), two servers checked every
    0.1 s, a SIGTERM while a 2,000-service `directorctl -R` is applied: the
    -R finishes and is answered, and no probe line follows `stopping`."""
    check = '{ type = "tcp", interval = 0.1, timeout = 1.0, rise = 1, fall = 1 }'
    servers = (rig.server("rs1"), rig.server("rs2"))
    text = rig.config_text(rig.service(80, check, *servers), daemon='log_level = "debug"')
    daemon = rig.start(text)
    rig.wait(lambda: len(daemon.events("probe_result")) >= 20, "20 probes logged")
    lines = "".join(f"-A -t 10.200.{i // 250}.{i % 250 + 1}:80 -s rr\n" for i in range(2000))
    argv = [str(CTL), "--socket", str(rig.socket), "-R"]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as restore:  # fmt: skip
        assert restore.stdin is not None and restore.stderr is not None
        restore.stdin.write(lines)
        restore.stdin.close()
        rig.wait(lambda: daemon.events("control_kernel_ops"), "the -R being applied")
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log_text()
        assert restore.wait(timeout=DEADLINE) == 0, restore.stderr.read()
    events = [e["event"] for e in daemon.logged()]
    after = events[events.index("stopping") :]
    assert [e for e in after if e.startswith(("probe_", "real_server_"))] == [], after
    assert "table_left_in_place" in after, after
