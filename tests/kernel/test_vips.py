"""VIPs on an interface, through pyroute2, against the real kernel: directord
adds a service's address to its vip_interface while the service has its
quorum, removes it when every real server is gone and adds it back when they
return; a restart leaves it in place (no remove, no add in the log); a
reload that drops vip_interface removes it; an address added by hand on the
same interface is never touched; `directorctl maintenance on` removes it,
`off` restores it, and the setting survives a restart; a missing interface
without create_vip_interface is reported and the daemon keeps running. An
IPv6 service's VIP goes on the same interface as a /128, without duplicate
address detection (nodad).

The network is tests/kernel/topology.py's (the director is the test's own
namespace, the real servers rs1..rs3 behind it, NAT); the VIP here is an
address of its own on director0 (a dummy interface), reached from the client
through its default route via the director.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from ctl_support import ctl
from daemon_runner import Daemon, wait_alive
from topology import HTTP_PORT, Network, RealServers, http_get, ipvsadm

VIP = IPv4Address("192.168.200.10")
VIP6 = "2001:db8:200::10"  # a second service's, its real server rs1 through a tunnel
HAND = "192.168.201.7/32"  # an operator's address on the same interface
DEADLINE = 60.0
TIMING = "interval = 1.0, timeout = 1.0, rise = 1, fall = 1"


def config_text(
    net: Network,
    workdir: Path,
    *,
    interface: str | None = "director0",
    create: bool = False,
    servers: tuple[str, ...] = ("rs1", "rs2"),
    six: bool = False,
) -> str:
    lines = [
        "[daemon]",
        "reconcile_interval = 2.0",
        f'state_file = "{workdir}/state.json"',
        "[control]",
        f'socket = "{workdir}/director.sock"',
        "[[virtual_server]]",
        'protocol = "tcp"',
        f'address = "{VIP}:{HTTP_PORT}"',
        'scheduler = "rr"',
        f'check = {{ type = "tcp", {TIMING} }}',
        *([f'vip_interface = "{interface}"'] if interface else []),
        *(["create_vip_interface = true"] if create else []),
    ]
    for name in servers:
        lines += [
            "[[virtual_server.real_server]]",
            f'address = "{net.host(name).address}"',
            'forward = "masq"',
        ]
    if six:
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "[{VIP6}]:{HTTP_PORT}"',
            f'check = {{ type = "tcp", {TIMING} }}',
            *([f'vip_interface = "{interface}"'] if interface else []),
            "[[virtual_server.real_server]]",
            f'address = "{net.host("rs1").address}:{HTTP_PORT}"',
            'forward = "tunnel"',
        ]
    return "\n".join(lines) + "\n"


def addresses(interface: str = "director0") -> list[str]:
    """`ip -o addr show dev IFACE`'s addresses ("192.168.200.10/32"); [] when
    the interface does not exist."""
    result = subprocess.run(
        ["ip", "-o", "addr", "show", "dev", interface], capture_output=True, text=True
    )
    return re.findall(r"\binet6? (\S+)", result.stdout) if result.returncode == 0 else []


class Harness:
    def __init__(self, net: Network, servers: RealServers, workdir: Path) -> None:
        self.net, self.servers, self.workdir = net, servers, workdir
        self.config = workdir / "director.toml"
        self.daemon: Daemon | None = None
        self.logs: list[str] = []

    def write(
        self, interface: str | None = "director0", create: bool = False, six: bool = False
    ) -> None:
        text = config_text(self.net, self.workdir, interface=interface, create=create, six=six)
        self.config.write_text(text)

    def start(self) -> Daemon:
        self.daemon = Daemon(self.config)
        self.daemon.start()
        return self.daemon

    def stop(self) -> None:
        assert self.daemon is not None
        assert self.daemon.stop() == 0, self.daemon.log_text()
        self.logs.append(self.log())
        self.daemon = None

    def log(self) -> str:
        return self.daemon.log_text() if self.daemon is not None else ""

    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.alive()

    def ctl(self, *args: str) -> str:
        outcome = ctl(self.workdir / "director.sock", args)
        assert outcome.status == 0, (args, outcome, self.log())
        return outcome.stdout

    def wait_vip(
        self, present: bool, interface: str = "director0", want: str = f"{VIP}/32"
    ) -> None:
        """Until `want` is (or is not) on `interface`."""
        wait_alive(
            lambda: (want in addresses(interface)) == present,
            f"{want} {'on' if present else 'not on'} {interface}",
            alive=self.alive,
            log=self.log,
            timeout=DEADLINE,
            context=lambda: f"{addresses(interface)}\n{ipvsadm('-Ln')}\n{self.log()}",
        )

    def vip_ops(self, op: str) -> list[dict[str, object]]:
        assert self.daemon is not None
        return self.daemon.events("vip_op", op=op)

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()


@pytest.fixture
def h(net: Network, servers: RealServers, tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(net, servers, tmp_path)
    try:
        yield harness
    finally:
        harness.close()
        subprocess.run(["ip", "link", "del", "director0"], capture_output=True)


def test_the_vip_follows_the_quorum_survives_a_restart_and_goes_with_the_config(
    h: Harness,
) -> None:
    subprocess.run(["ip", "link", "add", "director0", "type", "dummy"], check=True)
    subprocess.run(["ip", "link", "set", "director0", "up"], check=True)
    subprocess.run(["ip", "addr", "add", HAND, "dev", "director0"], check=True)
    h.write(six=True)
    h.start()
    h.wait_vip(True)
    h.wait_vip(True, want=f"{VIP6}/128")
    assert HAND in addresses()
    nodad = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", "director0"], capture_output=True, text=True
    ).stdout
    assert re.search(rf"{VIP6}/128 .*\bnodad\b", nodad), nodad
    # Traffic to it goes through IPVS to a real server.
    assert http_get(replace(h.net, vip=VIP)) in ("rs1", "rs2")
    status = h.ctl("status")
    assert f"{VIP}/32 dev director0 (tcp:{VIP}:80): present (ours), quorum met" in status

    h.servers.kill("rs1")
    h.servers.kill("rs2")
    h.wait_vip(False)
    h.wait_vip(False, want=f"{VIP6}/128")
    assert HAND in addresses()
    h.servers.start("rs1", "rs2")
    h.wait_vip(True)
    h.wait_vip(True, want=f"{VIP6}/128")

    # A restart: the VIP is adopted from the state file, never removed nor re-added.
    h.stop()
    assert {f"{VIP}/32", f"{VIP6}/128"} <= set(addresses())
    daemon = h.start()
    daemon.wait_event("real_server_up", DEADLINE)
    daemon.wait_event("real_server_up", DEADLINE, rs=f"{h.net.host('rs2').address}:80")
    assert {f"{VIP}/32", f"{VIP6}/128"} <= set(addresses())
    assert h.vip_ops("remove_address") == [] and h.vip_ops("add_address") == []

    # A reload without vip_interface: the VIPs go, the hand-added address stays.
    h.write(interface=None, six=True)
    daemon.reload()
    h.wait_vip(False)
    h.wait_vip(False, want=f"{VIP6}/128")
    assert HAND in addresses()
    # vip_op is logged once the kernel took the operation: after the address
    # is gone, and the test's reader may be behind.
    wait_alive(
        lambda: len(h.vip_ops("remove_address")) >= 2,
        "both removals logged",
        alive=h.alive,
        log=h.log,
        timeout=DEADLINE,
    )
    assert len(h.vip_ops("remove_address")) == 2, h.vip_ops("remove_address")
    assert ipvsadm("-Ln").count("Masq") == 2  # the service itself is untouched


def test_maintenance_removes_and_restores_the_vip_and_survives_a_restart(h: Harness) -> None:
    h.write(create=True)
    daemon = h.start()
    h.wait_vip(True)  # director0 created as a dummy interface
    # Logged once the kernel took it: the address can show before the line.
    daemon.wait_event("vip_op", DEADLINE, op="create_interface", interface="director0")

    assert h.ctl("maintenance", "on") == "maintenance on: 1 VIPs removed\n"
    assert f"{VIP}/32" not in addresses()
    assert h.ctl("status").startswith("maintenance: on")
    assert ipvsadm("-Ln").count("Masq") == 2  # IPVS is not maintenance's business

    h.stop()
    daemon = h.start()
    daemon.wait_event("real_server_up", DEADLINE, rs=f"{h.net.host('rs2').address}:80")
    daemon.wait_event("real_server_up", DEADLINE, rs=f"{h.net.host('rs1').address}:80")
    assert f"{VIP}/32" not in addresses()
    assert h.ctl("maintenance") == "maintenance: on\n"

    assert h.ctl("maintenance", "off") == "maintenance off: 1 VIPs added\n"
    h.wait_vip(True)
    assert "maintenance: on" not in h.ctl("status")


def test_a_missing_interface_is_reported_and_the_daemon_keeps_running(h: Harness) -> None:
    h.write(interface="nosuch0")
    daemon = h.start()
    event = daemon.wait_event("vip_no_interface", DEADLINE)
    assert event["dev"] == "nosuch0" and event["error"] == 'Cannot find device "nosuch0"'
    wait_alive(
        lambda: ipvsadm("-Ln").count("Masq") == 2,
        "both real servers in the table",
        alive=h.alive,
        log=h.log,
        timeout=DEADLINE,
    )
    assert 'missing interface: Cannot find device "nosuch0"' in h.ctl("status")
    assert h.alive()
    # Once it exists, the next pass (reconcile_interval) takes it.
    subprocess.run(["ip", "link", "add", "nosuch0", "type", "dummy"], check=True)
    try:
        h.wait_vip(True, "nosuch0")
    finally:
        subprocess.run(["ip", "link", "del", "nosuch0"], capture_output=True)
