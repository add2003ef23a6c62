"""The network of the BGP tests (test_bgp.py): an upstream router running
BIRD 2, two directors peering with it, each with real servers of its own,
and a client behind the router. Every namespace is the test's own; the
directors, the real servers and the router meet on one bridge (br0 in the
test's namespace):

    client c .2 ---- eth1 .1  router rt (BIRD 2, AS 65000, forwarding)
    (10.9.2.0/24)    eth0 10.9.0.1 ----+
    d1 10.9.0.11 (AS 65001) ------------+-- br0 (10.9.0.0/24, fd00:9::/64)
    d2 10.9.0.12 (AS 65001) ------------+
    r1 .21, r2 .22 (d1's real servers), r3 .23, r4 .24 (d2's)

The VIP (10.9.1.100, fd00:9:1::100) is on every director's and real
server's lo: a director takes packets to it into IPVS, which forwards them
by direct routing; a real server (arp_ignore) answers the client straight
through the router, its default route. The router learns the VIP's host
route over BGP and installs it with `merge paths yes`, so two directors
announcing it make one multipath route; its multipath hash takes the ports
(fib_multipath_hash_policy 1), so the client's connections spread over both.

The real servers' echo listeners are sockets this process opens in their
namespaces, served by one thread; the client is this process too.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from ctl_support import ctl
from daemon_runner import Daemon, wait_alive
from topology import batch, inside, ipvsadm

SUBNET, SUBNET6 = "10.9.0", "fd00:9::"
CLIENT_NET, CLIENT_NET6 = "10.9.2", "fd00:9:2::"
VIP, VIP6 = "10.9.1.100", "fd00:9:1::100"
PORT = 7000
ROUTER_AS, DIRECTOR_AS = 65000, 65001
HOLD_TIME = 3  # seconds, on both ends of every session (BGP takes the smaller)
HOSTS = {"d1": 11, "d2": 12, "r1": 21, "r2": 22, "r3": 23, "r4": 24}
REAL = {"d1": ("r1", "r2"), "d2": ("r3", "r4")}
SERVER_OF = {server: director for director, servers in REAL.items() for server in servers}
DEADLINE = 60.0  # for anything the test waits on; never a figure asserted
CHECK = 'check = { type = "tcp", interval = 0.5, timeout = 0.5, rise = 1, fall = 1 }'


@dataclass(frozen=True)
class Net:
    """The namespaces around `base` (the test's own): `ns("d1")` and so on."""

    base: str

    def ns(self, name: str) -> str:
        return f"{self.base}-{name}"

    @staticmethod
    def address(name: str, six: bool = False) -> str:
        """A host's address on the bridge."""
        return f"{SUBNET6}{HOSTS[name]}" if six else f"{SUBNET}.{HOSTS[name]}"


def _sysctls(netns: str, settings: dict[str, str]) -> None:
    """Write /proc/sys/net settings from this thread inside `netns` (the
    files show the namespace of whoever opens them; no process per host)."""
    with inside(netns):
        for key, value in settings.items():
            Path("/proc/sys/net", key.replace(".", "/")).write_text(value)


@contextmanager
def bgp_network(base: str) -> Iterator[Net]:
    """The module docstring's network around br0 in `base`; deleted afterwards."""
    net = Net(base)
    names = ["rt", "c", *HOSTS]
    try:
        batch([f"netns add {net.ns(name)}" for name in names])
        for name in names:
            # Before any link exists: no duplicate address detection on the
            # links made below (an IPv6 address would be tentative for a while).
            settings = {"ipv6.conf.default.accept_dad": "0", "ipv6.conf.all.accept_dad": "0"}
            if name in HOSTS:
                settings |= {"ipv4.conf.all.arp_ignore": "1", "ipv4.conf.all.arp_announce": "2"}
            if name == "rt":
                settings |= {
                    "ipv4.ip_forward": "1",
                    "ipv6.conf.all.forwarding": "1",
                    "ipv4.fib_multipath_hash_policy": "1",
                    "ipv6.fib_multipath_hash_policy": "1",
                }
            _sysctls(net.ns(name), settings)
        lines = ["link add br0 type bridge", "link set br0 up"]
        for name in ("rt", *HOSTS):
            lines += [
                f"link add v{name} type veth peer name eth0 netns {net.ns(name)}",
                f"link set v{name} master br0",
                f"link set v{name} up",
            ]
        batch(lines, base)
        batch(
            [
                "link set lo up",
                f"link add eth1 type veth peer name eth0 netns {net.ns('c')}",
                f"addr add {SUBNET}.1/24 dev eth0",
                f"addr add {SUBNET6}1/64 dev eth0 nodad",
                f"addr add {CLIENT_NET}.1/24 dev eth1",
                f"addr add {CLIENT_NET6}1/64 dev eth1 nodad",
                "link set eth0 up",
                "link set eth1 up",
            ],
            net.ns("rt"),
        )
        batch(
            [
                "link set lo up",
                f"addr add {CLIENT_NET}.2/24 dev eth0",
                f"addr add {CLIENT_NET6}2/64 dev eth0 nodad",
                "link set eth0 up",
                f"route add default via {CLIENT_NET}.1",
                f"route add ::/0 via {CLIENT_NET6}1",
            ],
            net.ns("c"),
        )
        for name in HOSTS:
            batch(
                [
                    "link set lo up",
                    f"addr add {VIP}/32 dev lo",
                    f"addr add {VIP6}/128 dev lo",
                    f"addr add {net.address(name)}/24 dev eth0",
                    f"addr add {net.address(name, True)}/64 dev eth0 nodad",
                    "link set eth0 up",
                    f"route add default via {SUBNET}.1",
                    f"route add ::/0 via {SUBNET6}1",
                ],
                net.ns(name),
            )
        yield net
    finally:
        existing = set(os.listdir("/run/netns"))
        leftovers = [f"netns del {net.ns(name)}" for name in names if net.ns(name) in existing]
        if leftovers:
            batch(leftovers)
        subprocess.run(["ip", "-n", base, "link", "del", "br0"], capture_output=True)


# -- BIRD -------------------------------------------------------------------------------


@dataclass
class Bird:
    """A BIRD 2 of the test's own in one namespace (the router, or a plain
    speaker standing in for a director), its files in `rundir`, its log
    lines (stderr) in rundir/bird.log."""

    netns: str
    rundir: Path
    conf: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.rundir / "bird.ctl"

    def start(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "bird.conf").write_text(self.conf)
        conf = self.rundir / "bird.conf"
        with (self.rundir / "bird.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.netns,
                    "bird",
                    "-f",
                    "-c",
                    str(conf),
                    "-s",
                    str(self.socket),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wait_alive(
            self.socket.exists,
            f"BIRD's control socket {self.socket}",
            alive=lambda: self.process is not None and self.process.poll() is None,
            log=self.log,
            timeout=DEADLINE,
        )

    def birdc(self, *command: str) -> str:
        return birdc(self.socket, *command)

    def log(self) -> str:
        path = self.rundir / "bird.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def send(self, sig: signal.Signals) -> None:
        """Send `sig` to BIRD; return at once."""
        assert self.process is not None, "BIRD is not running"
        self.process.send_signal(sig)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout=DEADLINE)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
            self.process = None


def birdc(sock: Path, *command: str) -> str:
    """What birdc answers on the control socket `sock` (any BIRD's)."""
    result = subprocess.run(["birdc", "-s", str(sock), *command], capture_output=True, text=True)
    return result.stdout + result.stderr


def router_conf(peers: tuple[str, ...], six_peers: tuple[str, ...] = ()) -> str:
    """The upstream router: a BGP session to each director (import all),
    a kernel protocol per family that merges equal paths into one multipath
    route. Short timers on its side too, so that a session that ended comes
    back quickly."""
    lines = [
        "log stderr all;",
        f"router id {SUBNET}.1;",
        "protocol device { scan time 1; }",
        "protocol kernel k4 { ipv4 { import none; export all; }; merge paths yes; }",
        "protocol kernel k6 { ipv6 { import none; export all; }; merge paths yes; }",
        "template bgp director {",
        f"  local as {ROUTER_AS};",
        f"  hold time {HOLD_TIME};",
        "  keepalive time 1;",
        "  connect delay time 1;",
        "  connect retry time 1;",
        "  error wait time 1, 2;",
        "}",
    ]
    for name in peers:
        lines += [
            f"protocol bgp {name} from director {{",
            f"  neighbor {Net.address(name)} as {DIRECTOR_AS};",
            "  ipv4 { import all; export none; };",
            "}",
        ]
    for name in six_peers:
        lines += [
            f"protocol bgp {name}_6 from director {{",
            f"  neighbor {Net.address(name, True)} as {DIRECTOR_AS};",
            "  ipv6 { import all; export none; next hop prefer global; };",
            "}",
        ]
    return "\n".join(lines) + "\n"


def speaker_conf(name: str, med: int | None = None) -> str:
    """A plain BIRD standing in for director `name`: the VIP as a static
    unreachable host route, exported to the router with next hop self."""
    set_med = f"bgp_med = {med}; " if med is not None else ""
    return (
        "log stderr all;\n"
        f"router id {Net.address(name)};\n"
        "protocol device {}\n"
        f"protocol static vips {{ ipv4; route {VIP}/32 unreachable; }}\n"
        "protocol bgp up {\n"
        f"  local as {DIRECTOR_AS};\n"
        f"  neighbor {SUBNET}.1 as {ROUTER_AS};\n"
        f"  hold time {HOLD_TIME};\n"
        "  connect delay time 1;\n"
        f"  ipv4 {{ import none; export filter {{ {set_med}accept; }}; next hop self; }};\n"
        "}\n"
    )


def route(net: Net, six: bool = False) -> str:
    """`ip route show VIP` in the router."""
    family = ["-6"] if six else []
    vip = VIP6 if six else VIP
    return subprocess.run(
        ["ip", "-n", net.ns("rt"), *family, "route", "show", vip],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def next_hops(text: str) -> tuple[str, ...]:
    """The gateways of an `ip route show` listing, sorted."""
    return tuple(sorted(re.findall(r"\bvia (?:inet6 )?(\S+)", text)))


def hops(*names: str, six: bool = False) -> tuple[str, ...]:
    """The next hops that directors `names` make."""
    return tuple(sorted(Net.address(name, six) for name in names))


def wait_hops(
    net: Net,
    want: tuple[str, ...],
    *,
    six: bool = False,
    since: float | None = None,
    context: Callable[[], str] = lambda: "",
) -> float:
    """Until the router's route to the VIP has exactly the next hops `want`
    (none: no route); the seconds since `since` (monotonic) when it did."""
    started = time.monotonic() if since is None else since
    deadline = time.monotonic() + DEADLINE
    while True:
        text = route(net, six)
        if next_hops(text) == want:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {DEADLINE:.0f} s the router's route to the VIP is still {text!r},"
                f" not via {want}\n{context()}"
            )
        time.sleep(0.05)


# -- real servers and the client -----------------------------------------------------


class EchoServers:
    """TCP listeners on 0.0.0.0:PORT and [::]:PORT in real servers'
    namespaces, served by one thread: a connection gets every message back
    as "NAME MESSAGE". `stop` closes a server's listeners and connections
    (its checks are refused from then on), `start` opens them again."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self._lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._owned: dict[str, list[socket.socket]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def start(self, *names: str) -> None:
        for name in names:
            sockets = []
            for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with inside(self.net.ns(name)):
                    sock = socket.socket(family, socket.SOCK_STREAM)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address, PORT))
                sock.listen(128)
                sock.setblocking(False)
                sockets.append(sock)
            with self._lock:
                assert name not in self._owned, f"{name} already serving"
                self._owned[name] = sockets
                for sock in sockets:
                    self._selector.register(sock, selectors.EVENT_READ, (name, True))
        self._wake_w.send(b"x")

    def stop(self, *names: str) -> None:
        with self._lock:
            for name in names:
                for sock in self._owned.pop(name):
                    self._selector.unregister(sock)
                    sock.close()

    def _serve(self) -> None:
        while True:
            events = self._selector.select(0.5)
            with self._lock:
                if self._closed:
                    return
                for key, _ in events:
                    if key.data is None:
                        with suppress(BlockingIOError):
                            self._wake_r.recv(4096)
                    elif self._selector.get_map().get(key.fd) is key:
                        self._handle(key.fileobj, *key.data)  # type: ignore[arg-type]

    def _handle(self, sock: socket.socket, name: str, listening: bool) -> None:
        if listening:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ, (name, False))
            self._owned[name].append(conn)
            return
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            with suppress(OSError):
                sock.send(name.encode() + b" " + data)
            return
        self._selector.unregister(sock)
        self._owned[name].remove(sock)
        sock.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for sockets in self._owned.values():
                for sock in sockets:
                    sock.close()
            self._owned.clear()
        self._wake_w.send(b"x")
        self._thread.join(timeout=10)
        self._wake_r.close()
        self._wake_w.close()


def ask(net: Net, message: str, six: bool = False, timeout: float = 5.0) -> str:
    """One connection from the client to the VIP, one message: the name of
    the real server that echoed it. OSError when no answer comes."""
    family = socket.AF_INET6 if six else socket.AF_INET
    with inside(net.ns("c")):
        sock = socket.socket(family, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((VIP6 if six else VIP, PORT))
        return echo(sock, message)


def echo(sock: socket.socket, message: str) -> str:
    """Send `message` on a connected client socket; the name of the real
    server that echoed it. OSError (ConnectionError) when none comes."""
    sock.sendall(message.encode())
    reply = b""
    while not reply.endswith(b" " + message.encode()):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed after {reply!r}")
        reply += chunk
    return reply.decode().partition(" ")[0]


def tally(net: Net, count: int, six: bool = False) -> Counter[str]:
    """`count` connections from the client: how many each director carried
    (by the real server that answered: each director has its own)."""
    return Counter(SERVER_OF[ask(net, f"hello {i}", six)] for i in range(count))


def until_both(net: Net, most: int = 64) -> Counter[str]:
    """Connections until both directors have carried one (at most `most`:
    with the router hashing the ports, 64 connections all going one way
    would happen once in 2**63)."""
    seen: Counter[str] = Counter()
    for i in range(most):
        seen[SERVER_OF[ask(net, f"spread {i}")]] += 1
        if len(seen) == 2:
            break
    return seen


# -- directord --------------------------------------------------------------------------


@dataclass
class Director:
    """directord in director `name`'s namespace: its config and control
    socket in `workdir`, BIRD's runtime_dir in `rundir` (short, not on 9p)."""

    net: Net
    name: str
    workdir: Path
    rundir: Path
    daemon: Daemon | None = None
    logs: list[str] = field(default_factory=list)

    @property
    def netns(self) -> str:
        return self.net.ns(self.name)

    @property
    def socket(self) -> Path:
        return self.workdir / "director.sock"

    def write(self, text: str) -> None:
        (self.workdir / "director.toml").write_text(text)

    def launch(self) -> Daemon:
        self.daemon = Daemon(self.workdir / "director.toml")
        with inside(self.netns):
            self.daemon.launch()
        return self.daemon

    def ready(self) -> None:
        assert self.daemon is not None
        self.daemon.expect_notification("READY=1", 150.0)

    def ctl(self, *args: str) -> str:
        outcome = ctl(self.socket, args)
        assert outcome.status == 0, (args, outcome, self.log())
        return outcome.stdout

    def ipvsadm(self, *args: str) -> str:
        return ipvsadm(*args, netns=self.netns)

    def log(self) -> str:
        return self.daemon.log_text() if self.daemon is not None else "\n".join(self.logs)

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.daemon is not None
        status = self.daemon.stop(sig)
        self.logs.append(self.daemon.log_text())
        return status

    def birds(self) -> list[int]:
        """Pids of BIRD processes running on this director's runtime_dir."""
        return bird_pids(self.rundir)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


def bird_pids(rundir: Path) -> list[int]:
    """Processes running BIRD (by the name of one of their first arguments:
    `setpriv ... bird`, then `bird` itself) whose command line names a file
    in `rundir`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = any(os.path.basename(arg) == b"bird" for arg in argv[:4])
        if named and any(arg.startswith(os.fsencode(rundir) + b"/") for arg in argv):
            found.append(int(entry))
    return found


def director_config(
    director: Director,
    *,
    med: int | None = None,
    bird: str | None = None,
    six: bool = False,
    four: bool = True,
    servers: tuple[str, ...] | None = None,
) -> str:
    """The director's config: [bgp] peering with the router (IPv4, and IPv6
    with `six`), the VIP's service (`four`) and the IPv6 VIP's (`six`), each
    with bgp = true, its real servers (`servers`, REAL[name] when not given)
    by direct routing, quick checks."""
    workdir, name = director.workdir, director.name
    servers = REAL[name] if servers is None else servers
    lines = [
        "[daemon]",
        "reconcile_interval = 2.0",
        f'state_file = "{workdir}/state.json"',
        "[control]",
        f'socket = "{director.socket}"',
        "[bgp]",
        f"local_as = {DIRECTOR_AS}",
        f'router_id = "{Net.address(name)}"',
        f"hold_time = {HOLD_TIME}",
        f'runtime_dir = "{director.rundir}"',
        *([f"med = {med}"] if med is not None else []),
        *([f'bird = "{bird}"'] if bird is not None else []),
    ]
    if four:
        lines += ["[[bgp.peer]]", f'address = "{SUBNET}.1"', f"as = {ROUTER_AS}"]
    if six:
        lines += ["[[bgp.peer]]", f'address = "{SUBNET6}1"', f"as = {ROUTER_AS}"]
    for family, vip in ((four, VIP), (six, f"[{VIP6}]")):
        if not family:
            continue
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "{vip}:{PORT}"',
            'scheduler = "rr"',
            "bgp = true",
            CHECK,
        ]
        for server in servers:
            address = f"[{Net.address(server, True)}]" if vip != VIP else Net.address(server)
            lines += ["[[virtual_server.real_server]]", f'address = "{address}:{PORT}"']
            lines += ['forward = "route"']
    return "\n".join(lines) + "\n"


@contextmanager
def rundirs() -> Iterator[Path]:
    """A short directory under /run for BIRD runtime dirs (the control
    socket's path must fit 107 bytes; never the 9p checkout)."""
    path = Path(tempfile.mkdtemp(prefix="bgp-", dir="/run"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
