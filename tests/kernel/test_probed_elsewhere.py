"""A route server written with another port than its service's, on the real
kernel: `address = "10.84.0.2:8080"` behind `10.85.0.1:80` goes into the
table as 10.84.0.2:80 (ipvsadm's -a: a -g or -i server takes the service's
port) and its check probes 8080, the port written.

    director (the test's namespace: directord, ipvsadm, VIP 10.85.0.1 on a dummy)
      rs0 10.84.0.1/24 --- veth --- eth0 10.84.0.2/24 (namespace `{netns}-rs`)

The real server is a namespace of its own behind a veth pair, not an
address of the director's: the kernel keeps a destination local to the
director as "Local" whatever forwarding it was asked for, and these tests
read the forwarding method back (-g, -m). Its one listener, on 8080, is a
socket this process opens in that namespace and accepts on in a thread;
nothing ever listens on :80, so only the 8080 probe can put the server in.

Each test asserts:
- status and logs: `directorctl status` (text and JSON) and the
  real_server_up, probe_failed and real_server_down lines give the port
  probed (`probed`), and closing 8080 takes the server out of the table;
- drain, disable and enable name the server by the port written (the
  table's entry is the one changed), a server the service lacks is
  answered with the servers at that address, and `drain --wait` by the
  port written waits for the table entry's connections;
- a reload from route to masq on the probed port (and back) keeps the
  probe and its health: the reload's own operations move the entry, and
  no new `real_server_up` is needed.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
from daemon_runner import Daemon, waiter
from topology import batch, inside, ipvsadm

T = TypeVar("T")
CTL = Path(sys.executable).with_name("directorctl")
DEADLINE = 90.0  # the longest one wait may take (the VM is emulated, and shared)
POLL = 0.1
SERVER_NET = "10.84.0"
RS = f"{SERVER_NET}.2"
PROBED_PORT = 8080
WRITTEN = f"{RS}:{PROBED_PORT}"  # the config's address: where the check probes
TABLE = f"{RS}:80"  # a route server's entry in the table: the service's port
VIP = "10.85.0.1"
VS = f"tcp:{VIP}:80"  # the service as directorctl names it
LABEL = f"TCP {VIP}:80"  # ... and as the log does
SAVED = f"-t {VIP}:80"  # ... and as ipvsadm -S does
# fall = 2: one probe timed out in a stalled VM takes nothing out; a refused
# one (the listener closed) is answered at once, so two take a second.
CHECK = '{ type = "tcp", interval = 1.0, timeout = 2.0, rise = 1, fall = 2 }'


@dataclass(frozen=True)
class Outcome:
    stdout: str
    stderr: str
    status: int


class Listener:
    """A TCP listener on address:port in `netns`, accepting (and closing)
    every connection in a thread of its own until `close()`."""

    def __init__(self, netns: str, address: str, port: int) -> None:
        with inside(netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        """Stop accepting and close: a connect is refused from now on."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=10)
            self.sock.close()


@contextlib.contextmanager
def real_server_host(director: str) -> Iterator[str]:
    """The namespace `{director}-rs` with RS on a veth from the director
    (director side rs0, 10.84.0.1/24), its default route back through it;
    the VIP on a dummy link of the director, as a direct-routing director
    has it. Yields the namespace's name."""
    netns = f"{director}-rs"
    batch([f"netns add {netns}"])
    try:
        batch(
            [
                f"link add rs0 type veth peer name eth0 netns {netns}",
                f"addr add {SERVER_NET}.1/24 dev rs0",
                "link set rs0 up",
                "link add vip0 type dummy",
                f"addr add {VIP}/32 dev vip0",
                "link set vip0 up",
            ],
            director,
        )
        batch(
            [
                "link set lo up",
                f"addr add {RS}/24 dev eth0",
                "link set eth0 up",
                f"route add default via {SERVER_NET}.1",
            ],
            netns,
        )
        yield netns
    finally:
        batch([f"netns del {netns}"])


@dataclass
class Rig:
    """One test's real server, daemon and files, and the ways to look at them."""

    workdir: Path
    backend: str
    listener: Listener
    daemon: Daemon | None = None

    @property
    def config(self) -> Path:
        return self.workdir / "director.toml"

    @property
    def socket(self) -> Path:
        return self.workdir / "director.sock"

    def config_text(self, forward: str, name: str | None = None) -> str:
        return (
            "[daemon]\n"
            "reconcile_interval = 3.0\n"
            f'state_file = "{self.workdir}/state.json"\n'
            "[control]\n"
            f'socket = "{self.socket}"\n'
            "[[virtual_server]]\n"
            'protocol = "tcp"\n'
            f'address = "{VIP}:80"\n'
            'scheduler = "rr"\n'
            f"check = {CHECK}\n"
            "[[virtual_server.real_server]]\n"
            f'address = "{WRITTEN}"\n'
            f'forward = "{forward}"\n' + (f'name = "{name}"\n' if name else "")
        )

    def start(self, forward: str, name: str | None = None) -> Daemon:
        self.config.write_text(self.config_text(forward, name))
        self.daemon = Daemon(self.config)
        self.daemon.start()
        return self.daemon

    def running(self) -> Daemon:
        assert self.daemon is not None, "no daemon started"
        return self.daemon

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def log(self) -> str:
        return self.daemon.log_text() if self.daemon is not None else "(no daemon)"

    def wait(self, condition: Callable[[], T], what: str) -> T:
        return waiter(self.running(), DEADLINE, partial(ipvsadm, "-Ln"), POLL)(condition, what)

    def ctl(self, *args: str) -> Outcome:
        done = subprocess.run(
            [str(CTL), "--socket", str(self.socket), *args], capture_output=True, text=True
        )
        return Outcome(done.stdout, done.stderr, done.returncode)

    def status(self) -> dict[str, Any]:
        """The service's entry of `directorctl status --json`."""
        answer = self.ctl("status", "--json")
        assert answer.status == 0, answer
        (service,) = json.loads(answer.stdout)["services"]
        assert service["service"] == VS, service
        return service  # type: ignore[no-any-return]

    def server_status(self, server: str) -> dict[str, Any]:
        servers = self.status()["real_servers"]
        for rs in servers:
            if rs["server"] == server:
                return rs  # type: ignore[no-any-return]
        raise AssertionError(f"{server} not in the status of {VS}: {servers}")

    def admin_saved(self) -> list[tuple[str, int, str]]:
        """The state file's admin entries: (address, port, state)."""
        saved = json.loads((self.workdir / "state.json").read_text())
        return [(a["address"], a["port"], a["state"]) for a in saved["admin"]]

    def reload(self, forward: str) -> Outcome:
        """Write the config and `directorctl reload` (it answers once the
        reload is applied); the log has its `reloaded` line on return."""
        daemon = self.running()
        before = len(daemon.events("reloaded"))
        self.config.write_text(self.config_text(forward))
        answer = self.ctl("reload")
        assert answer.status == 0, (answer, self.log())
        self.wait(lambda: len(daemon.events("reloaded")) > before, "the reloaded line")
        return answer


@pytest.fixture
def rig(netns: str, tmp_path: Path) -> Iterator[Rig]:
    with real_server_host(netns) as backend:
        built = Rig(tmp_path, backend, Listener(backend, RS, PROBED_PORT))
        try:
            yield built
        finally:
            if built.daemon is not None:
                built.daemon.close()
            built.listener.close()
            ipvsadm("-C")


def saved_servers() -> dict[str, str]:
    """{host:port: "-g -w 1"} of the service in `ipvsadm -Sn`."""
    found = {}
    for line in ipvsadm("-Sn").splitlines():
        match = re.fullmatch(rf"-a {re.escape(SAVED)} -r (\S+) (-\w -w \d+)", line)
        if match:
            found[match[1]] = match[2]
    return found


def listed() -> dict[str, tuple[str, int, int]]:
    """{host:port: (forward, weight, ActiveConn + InActConn)} of the service
    in `ipvsadm -Ln` (the only service of the namespace)."""
    found = {}
    for line in ipvsadm("-Ln").splitlines():
        words = line.split()
        if words[:1] == ["->"] and words[1] != "RemoteAddress:Port":
            found[words[1]] = (words[2], int(words[3]), int(words[4]) + int(words[5]))
    return found


def listed_is(table: dict[str, tuple[str, int, int]]) -> bool:
    return listed() == table


def probed_since(rig: Rig, server: str, successes: int) -> bool:
    """Whether `server` has more successes in a row than `successes`."""
    return bool(rig.server_status(server)["successes_in_row"] > successes)


def refused(address: str, port: int) -> bool:
    """Whether a TCP connect from the director to address:port is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(5.0)
        try:
            sock.connect((address, port))
        except ConnectionRefusedError:
            return True
    return False


def since_last(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    """The events logged since the last `event` line (that line first)."""
    logged = daemon.logged()
    starts = [i for i, e in enumerate(logged) if e.get("event") == event]
    assert starts, f"no {event} line:\n{daemon.log_text()}"
    return logged[starts[-1] :]


def reload_operations(daemon: Daemon) -> list[tuple[object, ...]]:
    """The table operations of the last reload, from its log lines (between
    `reload` and `reloaded`: the reload is one job, no other pass runs in
    it), each (op, rs, forward, weight), sorted; an `ipvs_ops` line is one
    per real server."""
    window = since_last(daemon, "reload")
    ends = [i for i, e in enumerate(window) if e.get("event") == "reloaded"]
    assert ends, f"no reloaded line after the reload:\n{daemon.log_text()}"
    found: list[tuple[object, ...]] = []
    for e in window[: ends[0]]:
        if e.get("event") == "ipvs_op":
            found.append((e["op"], e.get("rs"), e.get("forward"), e.get("weight")))
        elif e.get("event") == "ipvs_ops":
            found += [(e["op"], rs, e.get("forward"), e.get("weight")) for rs in e["rs"]]
    return sorted(found, key=repr)


@contextlib.contextmanager
def connection_to_the_vip() -> Iterator[None]:
    """A connection the director's IPVS schedules: a connect from the
    director's own namespace to VIP:80 (IPVS takes local clients' packets
    at LOCAL_OUT) is sent by direct routing to RS, whose namespace has no
    VIP and drops it; the client keeps sending its SYN, so the entry (SYN_RECV,
    counted in InActConn) lives for the block."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect((VIP, 80))
        yield
    finally:
        sock.close()


def test_status_and_logs_give_the_port_probed(rig: Rig) -> None:
    """The route server is in the table as 10.84.0.2:80 (nothing ever
    listens there) because its probe of 8080 passed; status, its JSON and
    the up, probe_failed and down lines say `probed` 10.84.0.2:8080; and
    closing 8080 takes it out."""
    assert refused(RS, 80), "something listens on :80 of the real server"
    daemon = rig.start("route", name="web-8080")
    rig.wait(lambda: saved_servers() == {TABLE: "-g -w 1"}, f"{TABLE} in the table, routed")
    (up,) = rig.wait(lambda: daemon.events("real_server_up", rs=TABLE), f"{TABLE} up")
    assert (up["vs"], up["probed"], up["old"], up["new"]) == (LABEL, WRITTEN, "unknown", "up"), up

    text = rig.ctl("status")
    assert (text.stderr, text.status) == ("", 0), text
    rows = [line.strip() for line in text.stdout.splitlines() if line.strip().startswith(RS)]
    assert len(rows) == 1, text.stdout
    head = f"{TABLE} (web-8080, probed at {WRITTEN})"
    assert re.match(rf"{re.escape(head)}\s+up\s", rows[0]), text.stdout

    rs = rig.server_status(TABLE)
    assert (rs["probed"], rs["name"], rs["health"]) == (WRITTEN, "web-8080", "up"), rs
    assert (rs["current_weight"], rs["configured_weight"]) == (1, 1), rs
    assert [s["server"] for s in rig.status()["real_servers"]] == [TABLE]

    # 8080 stops answering: the 8080 probe fails and takes the server out.
    failures_before = len(daemon.events("probe_failed", rs=TABLE))
    rig.listener.close()
    rig.wait(lambda: saved_servers() == {}, f"{TABLE} out of the table")
    failed = daemon.events("probe_failed", rs=TABLE)[failures_before:]
    assert failed, daemon.log_text()
    assert failed[0]["reason"] == "refused", failed
    assert all((f["vs"], f["probed"]) == (LABEL, WRITTEN) for f in failed), failed
    (down,) = daemon.events("real_server_down", rs=TABLE)
    assert (down["vs"], down["probed"], down["reason"]) == (LABEL, WRITTEN, "refused"), down
    assert (down["old"], down["new"]) == ("up", "down"), down
    # No line names 8080 as the table's entry.
    assert not [e for e in daemon.logged() if e.get("rs") == WRITTEN], daemon.log_text()

    rs = rig.server_status(TABLE)
    assert (rs["probed"], rs["health"], rs["current_weight"]) == (WRITTEN, "down", None), rs
    assert refused(RS, 80), "something listened on :80 of the real server"
    assert daemon.stop() == 0, daemon.log_text()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()


def test_drain_disable_and_enable_take_the_port_written(rig: Rig) -> None:
    """`drain VS 10.84.0.2:8080` (the config's words) drains the table's
    10.84.0.2:80, `disable` takes it out, `enable` restores it; a port the
    service has no server at is answered with the servers at that address;
    and `drain --wait` by the port written waits for the table entry's
    connections, as it does named by the table's entry."""
    daemon = rig.start("route")
    rig.wait(lambda: listed() == {TABLE: ("Route", 1, 0)}, f"{TABLE} in the table at weight 1")

    steps: tuple[tuple[str, str, dict[str, tuple[str, int, int]], list[Any]], ...] = (
        ("drain", "drain", {TABLE: ("Route", 0, 0)}, [(RS, 80, "drain")]),
        ("enable", "enabled", {TABLE: ("Route", 1, 0)}, []),
        ("disable", "disabled", {}, [(RS, 80, "disabled")]),
        ("enable", "enabled", {TABLE: ("Route", 1, 0)}, []),
    )
    for command, state, table, admin in steps:
        answer = rig.ctl(command, VS, WRITTEN)
        assert answer == Outcome(f"{TABLE} in {VS}: {state}\n", "", 0), (answer, rig.log())
        rig.wait(partial(listed_is, table), f"after {command}: {table}")
        assert rig.server_status(TABLE)["admin"] == state
        assert rig.admin_saved() == admin
        assert daemon.events("control_change", command=command, server=TABLE), rig.log()
    assert not daemon.events("control_change", server=WRITTEN), rig.log()
    assert rig.server_status(TABLE)["health"] == "up"  # admin, not health, changed

    # A port the service has no server at, nor probes: refused, with what
    # it has at that address; nothing changes.
    for command in ("drain", "disable", "enable"):
        missing = rig.ctl(command, VS, f"{RS}:9090")
        assert missing.status != 0, missing
        assert missing.stdout == "", missing
        assert missing.stderr == (
            f"director: no real server {RS}:9090 in {VS} (it has {TABLE})\n"
        ), missing
    assert listed() == {TABLE: ("Route", 1, 0)}
    assert rig.admin_saved() == []

    # drain --wait: the daemon polls the kernel's connection count of the
    # server drained until it is 0. Named by the table's entry it sees the
    # connection; named by the port written it must wait on the same entry.
    with connection_to_the_vip():
        rig.wait(
            lambda: listed().get(TABLE, ("", 0, 0))[2] > 0,
            f"a connection on {TABLE} (from the director to {VIP}:80)",
        )
        by_table = rig.ctl("drain", VS, TABLE, "--wait", "--timeout", "2")
        # The drain stays, and the answer quotes the enable that ends it,
        # naming the table's entry however the server was named.
        held = (
            r"director: drain: still \d+ connections? after 2s; the server stays drained"
            rf" \(weight 0\): 'directorctl enable {re.escape(VS)} {re.escape(TABLE)}' puts it back\n"
        )
        assert by_table.status == 1 and re.fullmatch(held, by_table.stderr), by_table
        assert by_table.stdout == f"{TABLE} in {VS}: drain\n", by_table
        assert rig.ctl("enable", VS, TABLE).status == 0
        rig.wait(lambda: listed().get(TABLE, ("", 0, 0))[1] == 1, f"{TABLE} at weight 1 again")

        by_written = rig.ctl("drain", VS, WRITTEN, "--wait", "--timeout", "2")
        connections = listed()
        assert connections[TABLE][2] > 0, connections  # still there: not drained
        assert (by_written.stdout, by_written.status) == (f"{TABLE} in {VS}: drain\n", 1), (
            f"drain --wait by the port written, {WRITTEN}, with {connections[TABLE][2]} "
            f"connection(s) on {TABLE}: {by_written}"
        )
        assert re.fullmatch(held, by_written.stderr), by_written
    assert rig.alive()


def test_a_reload_between_route_and_masq_on_the_probed_port_keeps_its_health(
    rig: Rig,
) -> None:
    """route 10.84.0.2:8080 -> masq 10.84.0.2:8080 probes the same endpoint:
    the reload moves the table's entry at once (delete :80 -g, add :8080
    -m) on the health it had, with no new probe and no real_server_up; and
    the same back from masq to route."""
    daemon = rig.start("route")
    rig.wait(lambda: saved_servers() == {TABLE: "-g -w 1"}, f"{TABLE} in the table, routed")
    rig.wait(lambda: daemon.events("real_server_up", rs=TABLE, probed=WRITTEN), f"{TABLE} up")

    moves = (
        ("masq", WRITTEN, TABLE, "-m", None),
        ("route", TABLE, WRITTEN, "-g", WRITTEN),
    )
    for forward, entry, gone, flag, probed in moves:
        answer = rig.reload(forward)
        # Right after the reload (directorctl answers once it is applied).
        table = saved_servers()
        rs = rig.server_status(entry)
        assert table == {entry: f"{flag} -w 1"}, (forward, table, rig.log())
        assert (rs["health"], rs["probed"]) == ("up", probed), (forward, rs)
        assert rs["successes_in_row"] >= 1, (forward, rs)

        # The reload's own operations moved it: its new entry came in on
        # the health the probe of 8080 had, not after a probe of its own.
        assert reload_operations(daemon) == [
            ("add_destination", entry, forward, 1),
            ("delete_destination", gone, None, None),
        ], (forward, rig.log())
        reloaded = since_last(daemon, "reloaded")[0]
        assert reloaded["operations"] == 2, reloaded
        lines = answer.stdout.splitlines()
        assert f"+ real server {VS} {entry}" in lines, answer
        assert f"- real server {VS} {gone}" in lines, answer
        assert lines[-1] == "reloaded: 2 table operations", answer

        # The probe carries on (a success after the reload) with no transition.
        after = rs["successes_in_row"]
        rig.wait(
            partial(probed_since, rig, entry, after),
            f"a probe of {WRITTEN} passed after the reload to {forward}",
        )
        since = since_last(daemon, "reload")
        transitions = [e for e in since if e.get("event") in ("real_server_up", "real_server_down")]
        assert transitions == [], (forward, transitions)
        assert saved_servers() == {entry: f"{flag} -w 1"}, forward

    assert len(daemon.events("real_server_up")) == 1, rig.log()
    assert not daemon.events("real_server_down"), rig.log()
    assert daemon.stop() == 0, rig.log()
    assert "Traceback" not in daemon.log_text(), daemon.log_text()
