"""A small network of namespaces for end-to-end tests of an IPVS director.

    client --- director (VIP, ip_forward) ---+--- rs1, rs2, rs3  (HTTP on :80)
                                            +--- u1, u2         (UDP echo on :9000)

The director is the test's own namespace (the `netns` fixture); every other
host is a namespace of its own, joined to the director by a veth pair on a
/24 of its own, with its default route via the director, as NAT (masq) mode
needs. Namespace names derive from the director's, so they are unique per
test; `network()` deletes them all even when building or the test fails.

Traffic helpers open their socket inside the client's namespace (a socket
keeps the namespace it was created in), so the test process itself is the
client: no subprocess per request.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

CLONE_NEWNET = 0x40000000
SERVERS = Path(__file__).with_name("servers.py")
CLIENT_NET = "192.168.100"
VIP = IPv4Address(f"{CLIENT_NET}.10")
HTTP_PORT = 80
UDP_PORT = 9000
START_TIMEOUT = 30.0
_libc = ctypes.CDLL(None, use_errno=True)


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def ipvsadm(*args: str, netns: str | None = None) -> str:
    prefix = ("ip", "netns", "exec", netns) if netns else ()
    return run(*prefix, "ipvsadm", *args)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(netns: str) -> Iterator[None]:
    """Run the calling thread in `netns` for the block."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(original)
    finally:
        os.close(target)
        os.close(original)


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: IPv4Address
    gateway: IPv4Address


@dataclass(frozen=True)
class Network:
    director: str
    vip: IPv4Address
    client: Host
    web: tuple[Host, ...]
    udp: tuple[Host, ...]

    def host(self, name: str) -> Host:
        for host in (self.client, *self.web, *self.udp):
            if host.name == name:
                return host
        raise KeyError(f"no host {name!r} in the network")


def batch(lines: list[str], netns: str | None = None) -> None:
    """Run `ip` commands in one process (each exec is slow in the VM)."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    result = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}\n" + "\n".join(lines))


def _link(director: str, name: str, subnet: str, netns: str) -> tuple[Host, list[str], list[str]]:
    """A namespace `netns` linked to the director: director side named `name`
    with subnet.1, host side eth0 with subnet.2, default route via the director.
    The host, and the `ip` commands to run in the director and in `netns`."""
    gateway, address = f"{subnet}.1", f"{subnet}.2"
    on_director = [
        f"link add {name} type veth peer name eth0 netns {netns}",
        f"addr add {gateway}/24 dev {name}",
        f"link set {name} up",
    ]
    on_host = [
        "link set lo up",
        f"addr add {address}/24 dev eth0",
        "link set eth0 up",
        f"route add default via {gateway}",
    ]
    return Host(name, netns, IPv4Address(address), IPv4Address(gateway)), on_director, on_host


@contextmanager
def director_network(prefix: str, web: int = 3, udp: int = 0) -> Iterator[Network]:
    """A director namespace of the test's own (`prefix` + pid), with this
    thread inside it and its loopback up, and `network` built around it;
    all of it deleted afterwards."""
    director = f"{prefix}{os.getpid()}"
    run("ip", "netns", "add", director)
    try:
        with inside(director):
            run("ip", "link", "set", "lo", "up")
            with network(director, web=web, udp=udp) as net:
                yield net
    finally:
        subprocess.run(["ip", "netns", "del", director], check=False)


@contextmanager
def network(director: str, web: int = 3, udp: int = 2) -> Iterator[Network]:
    """Build the network around the namespace `director`; delete it afterwards."""
    names = [
        "client",
        *(f"rs{i}" for i in range(1, web + 1)),
        *(f"u{i}" for i in range(1, udp + 1)),
    ]
    subnets = [CLIENT_NET, *(f"10.1.{i}" for i in range(1, web + 1))]
    subnets += [f"10.2.{i}" for i in range(1, udp + 1)]
    namespaces = [f"{director}-{name}" for name in names]
    links = [_link(director, *args) for args in zip(names, subnets, namespaces, strict=True)]
    try:
        batch([f"netns add {netns}" for netns in namespaces])
        batch([line for _, on_director, _ in links for line in on_director], director)
        batch([f"addr add {VIP}/32 dev client"], director)
        for host, _, on_host in links:
            batch(on_host, host.netns)
        run("ip", "netns", "exec", director, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        hosts = [host for host, _, _ in links]
        yield Network(
            director=director,
            vip=VIP,
            client=hosts[0],
            web=tuple(hosts[1 : web + 1]),
            udp=tuple(hosts[web + 1 :]),
        )
    finally:
        existing = set(os.listdir("/run/netns"))
        leftovers = [f"netns del {netns}" for netns in namespaces if netns in existing]
        if leftovers:
            batch(leftovers)


class RealServers:
    """The real-server processes of a network: started, killed (SIGKILL) and
    restarted by host; `close()` kills whatever is still running."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.processes: dict[str, subprocess.Popen[str]] = {}

    def start(self, *names: str) -> None:
        """Start servers (all at once: each start is slow in the VM) and
        wait until every one of them is listening."""
        for name in names:
            host = self.net.host(name)
            kind, port = ("udp", UDP_PORT) if host in self.net.udp else ("http", HTTP_PORT)
            argv = ["ip", "netns", "exec", host.netns, sys.executable, str(SERVERS), kind]
            self.processes[name] = subprocess.Popen(
                [*argv, "--port", str(port), "--name", name],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name in names:
            process = self.processes[name]
            assert process.stdout is not None
            line = process.stdout.readline()  # "ready", or "" when it died first
            if line.strip() != "ready":
                err = self.kill(name)
                raise RuntimeError(f"real server {name} did not start: {err.strip()}")

    def start_all(self) -> None:
        self.start(*(host.name for host in (*self.net.web, *self.net.udp)))

    def kill(self, name: str) -> str:
        """SIGKILL the server; what it wrote on stderr."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        return process.communicate(timeout=START_TIMEOUT)[1]

    def close(self) -> None:
        for name in list(self.processes):
            self.kill(name)


def http_get(
    net: Network, path: str = "/", timeout: float = 5.0, source_port: int | None = None
) -> str:
    """GET http://VIP{path} from the client; the body (stripped) of a 200 reply.
    From `source_port` when given (else a port the kernel picks, which may be
    one an earlier, ended connection had). Raises OSError when the connection
    fails, RuntimeError on another status."""
    with inside(net.client.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        if source_port is not None:
            sock.bind(("", source_port))
        sock.connect((str(net.vip), HTTP_PORT))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {net.vip}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    if status.split(" ")[1:2] != ["200"]:
        raise RuntimeError(f"GET {path} through {net.vip}: {status!r}")
    return body.decode().strip()


def udp_ask(net: Network, payload: bytes = b"hello", timeout: float = 5.0) -> tuple[str, bytes]:
    """Send a datagram from a fresh client socket to VIP:UDP_PORT; the replying
    server's name and the payload it echoed."""
    with inside(net.client.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((str(net.vip), UDP_PORT))
        sock.send(payload)
        reply = sock.recv(65535)
    name, _, echoed = reply.partition(b" ")
    return name.decode(), echoed


def tally(request: Callable[[], str], count: int) -> Counter[str]:
    return Counter(request() for _ in range(count))
