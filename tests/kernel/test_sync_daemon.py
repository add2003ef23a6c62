"""[ipvs.sync] against the real kernel: directord starts, changes and stops
the kernel's sync daemons, `directorctl -L --daemon` lists them as `ipvsadm
-L --daemon` does, a refusal leaves the daemon running and reported, and two
directors (master and backup) share their connections, so that an
established TCP connection survives the VIP moving to the backup.

The pair's network, all namespaces of the test's own, on one bridge (br0 in
the test's namespace):

    client .2 ---+                       VIP 10.9.0.100
    d1 .11 ------+-- br0 (10.9.0.0/24)   on d1, then moved to d2 by hand
    d2 .12 ------+                       (VIP ownership is a later part)
    r1 .21, r2 .22 (direct routing: the VIP on lo, arp_ignore)

The real servers' echo listeners are sockets this process opens in their
namespaces and serves from threads; the client is this process too.
"""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ctl_support import ctl
from daemon_runner import Daemon, wait_alive, wait_until
from topology import batch, inside, ipvsadm, run

SUBNET = "10.9.0"
VIP = f"{SUBNET}.100"
PORT = 7000
DEADLINE = 60.0


def config(workdir: Path, sync: str, services: str = "") -> str:
    return (
        "[daemon]\nreconcile_interval = 2.0\n"
        f'state_file = "{workdir}/state.json"\n'
        f'[control]\nsocket = "{workdir}/director.sock"\n'
        f"{sync}\n{services}"
    )


def sync_section(role: str, interface: str, syncid: int = 7, extra: str = "") -> str:
    return f'[ipvs.sync]\nrole = "{role}"\ninterface = "{interface}"\nsyncid = {syncid}\n{extra}\n'


@dataclass
class Node:
    """directord in one namespace ("" for the test's own)."""

    netns: str
    workdir: Path
    daemon: Daemon | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "director.sock"

    @property
    def config(self) -> Path:
        return self.workdir / "director.toml"

    def write(self, text: str) -> None:
        self.config.write_text(text)

    def start(self) -> Daemon:
        self.daemon = Daemon(self.config)
        if self.netns:
            with inside(self.netns):
                self.daemon.launch()
        else:
            self.daemon.launch()
        self.daemon.expect_notification("READY=1", 150.0)
        return self.daemon

    def ctl(self, *args: str) -> str:
        outcome = ctl(self.socket, args)
        assert outcome.status == 0, (args, outcome, self.log())
        return outcome.stdout

    def ipvsadm(self, *args: str) -> str:
        return ipvsadm(*args, netns=self.netns or None)

    def log(self) -> str:
        return self.daemon.log_text() if self.daemon else ""

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def wait_daemons(self, listing: str) -> str:
        """Until `ipvsadm -L --daemon` prints `listing`; then directorctl's
        `-L --daemon` must print the same bytes."""
        wait_alive(
            lambda: self.ipvsadm("-L", "--daemon") == listing,
            f"ipvsadm -L --daemon prints {listing!r}",
            alive=self.alive,
            log=self.log,
            timeout=DEADLINE,
            context=lambda: f"{self.ipvsadm('-L', '--daemon')!r}\n{self.log()}",
        )
        assert self.ctl("-L", "--daemon") == listing
        return listing

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


def stop_all_daemons(netns: str | None = None) -> None:
    for state in ("master", "backup"):
        prefix = ("ip", "netns", "exec", netns) if netns else ()
        subprocess.run([*prefix, "ipvsadm", "--stop-daemon", state], capture_output=True)


def test_reload_starts_changes_and_stops_the_daemon_as_ipvsadm_lists_it(
    netns: str, tmp_path: Path
) -> None:
    batch(["link add sync0 type dummy", "addr add 10.7.0.1/24 dev sync0", "link set sync0 up"])
    # An operator's own backup daemon: the config never names a backup, so
    # director never touches it.
    ipvsadm("--start-daemon", "backup", "--mcast-interface", "sync0", "--syncid", "3")
    theirs = "backup sync daemon (mcast=sync0, syncid=3, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
    node = Node("", tmp_path)
    node.write(config(tmp_path, sync_section("master", "sync0")))
    try:
        node.start()
        node.wait_daemons(
            "master sync daemon (mcast=sync0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
            + theirs
        )
        # Changed settings: the kernel has no edit, director stops and starts it.
        extra = 'group = "239.1.2.7"\nport = 8850\nttl = 2\nmaxlen = 1400'
        node.write(config(tmp_path, sync_section("master", "sync0", 9, extra)))
        node.daemon.reload()  # type: ignore[union-attr]
        node.wait_daemons(
            "master sync daemon (mcast=sync0, syncid=9, maxlen=1400, group=239.1.2.7, port=8850, ttl=2)\n"
            + theirs
        )
        # Without the section: director's master stops, the operator's backup stays.
        node.write(config(tmp_path, ""))
        node.daemon.reload()  # type: ignore[union-attr]
        node.wait_daemons(theirs)
        ipvsadm("--stop-daemon", "backup")

        # Both, with an IPv6 group: a master and a backup of director's own.
        v6 = 'group = "ff02::81"\nport = 8851\nttl = 3'
        node.write(config(tmp_path, sync_section("both", "sync0", 5, v6)))
        node.daemon.reload()  # type: ignore[union-attr]
        listing = node.wait_daemons(
            "master sync daemon (mcast=sync0, syncid=5, maxlen=1452, group=ff02::81, port=8851, ttl=3)\n"
            "backup sync daemon (mcast=sync0, syncid=5, maxlen=1452, group=ff02::81, port=8851, ttl=3)\n"
        )
        # A restart adopts what runs as asked: nothing stopped or started.
        assert node.daemon is not None and node.daemon.stop() == 0
        assert node.ipvsadm("-L", "--daemon") == listing  # left running, as the table is
        node.start()
        assert node.wait_daemons(listing)
        assert node.daemon.operations(op="start_daemon") == []
        assert node.daemon.operations(op="stop_daemon") == []
    finally:
        node.close()
        stop_all_daemons()


def test_a_refused_start_leaves_the_daemon_running_reported_and_retrying(
    netns: str, tmp_path: Path
) -> None:
    service = (
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.7.0.1:80"\nscheduler = "rr"\n'
        '[[virtual_server.real_server]]\naddress = "10.7.0.2:80"\n'
        'check = { type = "tcp", interval = 1.0 }\n'
    )
    batch(["link add sync0 type dummy", "addr add 10.7.0.1/24 dev sync0", "link set sync0 up"])
    node = Node("", tmp_path)
    node.write(config(tmp_path, sync_section("master", "nosuch0"), service))
    try:
        daemon = node.start()
        refused = daemon.wait_event("ipvs_refused", DEADLINE, op="start_daemon")
        assert refused["error"] == "No such device"
        # The rest of the config applied: the service is in the table.
        assert "TCP  10.7.0.1:80 rr" in node.ipvsadm("-Ln")
        assert node.ipvsadm("-L", "--daemon") == ""
        status = node.ctl("status")
        assert "sync daemons ([ipvs.sync])\n  master (mcast=nosuch0, syncid=7): " in status
        assert "StartDaemon refused by the kernel: No such device (" in status
        assert daemon.alive()
        # The interface appears: the next retry (at most reconcile_interval) takes it.
        batch(["link add nosuch0 type dummy", "link set nosuch0 up"])
        node.wait_daemons(
            "master sync daemon (mcast=nosuch0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
        )
        # The kernel lists the daemon once it started it; the refusal is
        # cleared when the start's answer is back: status may lag the listing.
        wait_alive(
            lambda: "master (mcast=nosuch0, syncid=7): running" in node.ctl("status"),
            "status says the master sync daemon runs",
            alive=node.alive,
            log=node.log,
            timeout=DEADLINE,
            context=lambda: f"{node.ctl('status')}\n{node.log()}",
        )
    finally:
        node.close()
        stop_all_daemons()


# -- two directors sharing connections --------------------------------------------------


class EchoServers:
    """A TCP listener on 0.0.0.0:PORT in each real server's namespace; each
    connection answers every message with "NAME MESSAGE". One thread per
    listener and per connection (a handful in this test)."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def serve(self, netns: str, name: str) -> None:
        with inside(netns):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", PORT))
        listener.listen(64)
        listener.settimeout(0.2)
        self._sockets.append(listener)
        self._spawn(self._accept, listener, name)

    def _spawn(self, *args: object) -> None:
        thread = threading.Thread(target=args[0], args=args[1:], daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept(self, listener: socket.socket, name: str) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._spawn(self._echo, conn, name)

    def _echo(self, conn: socket.socket, name: str) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                with suppress(OSError):
                    conn.sendall(name.encode() + b" " + data)

    def close(self) -> None:
        self._stop.set()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@dataclass(frozen=True)
class Pair:
    client: str
    d1: str
    d2: str
    real: tuple[str, ...]


@contextmanager
def pair_network(netns: str) -> Iterator[Pair]:
    """The namespaces of the module's docstring around br0 in `netns`."""
    names = {"c": 2, "d1": 11, "d2": 12, "r1": 21, "r2": 22}
    spaces = {name: f"{netns}-{name}" for name in names}
    try:
        batch([f"netns add {ns}" for ns in spaces.values()])
        lines = ["link add br0 type bridge", "link set br0 up"]
        for name, ns in spaces.items():
            lines += [
                f"link add v{name} type veth peer name eth0 netns {ns}",
                f"link set v{name} master br0",
                f"link set v{name} up",
            ]
        batch(lines, netns)
        for name, ns in spaces.items():
            batch(
                [
                    "link set lo up",
                    f"addr add {SUBNET}.{names[name]}/24 dev eth0",
                    "link set eth0 up",
                ],
                ns,
            )
        for name in ("r1", "r2"):
            batch([f"addr add {VIP}/32 dev lo"], spaces[name])
            run(
                "ip", "netns", "exec", spaces[name], "sysctl", "-qw",
                "net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.eth0.arp_ignore=1", "net.ipv4.conf.eth0.arp_announce=2",
            )  # fmt: skip
        batch([f"addr add {VIP}/32 dev eth0"], spaces["d1"])
        yield Pair(spaces["c"], spaces["d1"], spaces["d2"], (spaces["r1"], spaces["r2"]))
    finally:
        batch([f"netns del {ns}" for ns in spaces.values()])
        subprocess.run(["ip", "link", "del", "br0"], capture_output=True)


SERVICE = f"""
[[virtual_server]]
protocol = "tcp"
address = "{VIP}:{PORT}"
scheduler = "rr"
check = {{ type = "tcp", interval = 1.0, timeout = 1.0, rise = 1 }}
[[virtual_server.real_server]]
address = "{SUBNET}.21:{PORT}"
forward = "route"
[[virtual_server.real_server]]
address = "{SUBNET}.22:{PORT}"
forward = "route"
"""


def ask(sock: socket.socket, message: str) -> str:
    sock.sendall(message.encode())
    return sock.recv(4096).decode()


def connection_line(node: Node, client_port: int) -> str:
    """This client connection's line in the node's `ipvsadm -Lnc`, or ""."""
    for line in node.ipvsadm("-Lnc").splitlines():
        if f"{SUBNET}.2:{client_port} " in line:
            return line
    return ""


def in_packets(node: Node) -> int:
    """InPkts of the VIP's service in the node's table (the kernel folds its
    per-CPU counters in every 2 s: poll)."""
    for line in node.ipvsadm("-Ln", "--stats", "-t", f"{VIP}:{PORT}").splitlines():
        if line.startswith("TCP "):
            return int(line.split()[3])
    raise AssertionError(f"no service {VIP}:{PORT} in {node.netns}")


def test_connections_through_the_master_live_on_through_the_backup(
    netns: str, tmp_path: Path
) -> None:
    echo = EchoServers()
    with pair_network(netns) as pair:
        nodes = []
        try:
            echo.serve(pair.real[0], "r1")
            echo.serve(pair.real[1], "r2")
            for name, ns, role in (("d1", pair.d1, "master"), ("d2", pair.d2, "backup")):
                workdir = tmp_path / name
                workdir.mkdir()
                node = Node(ns, workdir)
                node.write(config(workdir, sync_section(role, "eth0", 9), SERVICE))
                nodes.append(node)
            master, backup = nodes
            for node in nodes:
                node.start()
            for node in nodes:
                wait_until(
                    lambda node=node: node.ipvsadm("-Ln").count(" Route ") == 2,  # type: ignore[misc]
                    DEADLINE,
                    f"both real servers in {node.netns}'s table",
                )
            assert master.ctl("-L", "--daemon").startswith(
                "master sync daemon (mcast=eth0, syncid=9"
            )
            assert backup.ctl("-L", "--daemon").startswith(
                "backup sync daemon (mcast=eth0, syncid=9"
            )

            with inside(pair.client):
                conns = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(4)]
            served: dict[int, str] = {}
            for i, sock in enumerate(conns):
                sock.settimeout(DEADLINE)  # a reply, not a figure: the VM may be loaded
                sock.connect((VIP, PORT))
                # A few packets each: the master syncs a connection from its
                # third packet (sync_threshold) and flushes every 2 s or so.
                for j in range(4):
                    name, _, echoed = ask(sock, f"hello {i}.{j}").partition(" ")
                    assert echoed == f"hello {i}.{j}"
                served[sock.getsockname()[1]] = name
            assert sorted(served.values()) == ["r1", "r1", "r2", "r2"]

            # Every one of them appears in the backup's connection table,
            # to the real server that the master scheduled it to.
            for port, name in served.items():
                line = wait_until(
                    lambda port=port: connection_line(backup, port),  # type: ignore[misc]
                    DEADLINE,
                    f"connection from port {port} in the backup's -Lnc",
                )
                assert line.split()[0] == "TCP" and line.split()[2] == "ESTABLISHED", line
                server = {"r1": f"{SUBNET}.21:{PORT}", "r2": f"{SUBNET}.22:{PORT}"}[name]
                assert line.split()[5] == server, line
                assert connection_line(master, port).split()[5] == server

            # The VIP moves to the backup (by hand: VIP ownership is a later part).
            batch([f"addr del {VIP}/32 dev eth0"], pair.d1)
            batch([f"addr add {VIP}/32 dev eth0"], pair.d2)
            batch(["neigh flush dev eth0"], pair.client)
            assert in_packets(backup) == 0  # nothing went through the backup yet
            for i, sock in enumerate(conns):
                port = sock.getsockname()[1]
                name, _, echoed = ask(sock, f"after {i}").partition(" ")
                assert (name, echoed) == (served[port], f"after {i}")
            # The backup carried them, by the entries the master synced.
            wait_until(lambda: in_packets(backup) >= len(conns), DEADLINE, "packets via d2")
            for sock in conns:
                sock.close()
            assert master.alive() and backup.alive()
        finally:
            for node in nodes:
                node.close()
            echo.close()
            for ns in (pair.d1, pair.d2):
                stop_all_daemons(ns)
