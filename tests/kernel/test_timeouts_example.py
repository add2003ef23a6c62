"""The worked example of docs/operations.md, "Connection timeouts": why
ipvsadm's ActiveConn and InActConn stay above what the real servers hold, and
what `[ipvs] timeouts` (ipvsadm --set tcp tcpfin udp) changes, on a real table.

A NAT (masq) virtual service with two real servers in namespaces
(topology.py), and the same with direct routing (the guide's "What differs
in direct routing": the director sees only the client's half, so an ended
connection waits in FIN_WAIT, which `tcpfin` sets, not TIME_WAIT). The client makes SHORT connections (an HTTP/1.0 GET each, the
server closes) and holds IDLE ones open without a request. The test prints
`ipvsadm -Ln`, `ipvsadm -Lnc` and the real servers' established sockets at each
step (the guide quotes that output), and checks the kernel's own expiry: every
entry's `expire` column against the timeout of its state, before and after a
reload that sets `[ipvs] timeouts = { tcp = 5, tcpfin = 10, udp = 300 }`.

The kernel's timeouts by state are `tcp_timeouts` in
net/netfilter/ipvs/ip_vs_proto_tcp.c (ESTABLISHED 900 s, FIN_WAIT and
TIME_WAIT 120 s, CLOSE 10 s ...); `ip_vs_set_timeout` (ip_vs_ctl.c) changes
only ESTABLISHED (tcp), FIN_WAIT (tcpfin) and UDP's. A table change applies to
an entry at its next packet (set_tcp_state), not to its running timer.

Deadlines are generous (the VM is emulated and shared): they bound a wait and
claim nothing about speed; the assertions read the kernel's expire values,
against the timeout of the entry's state less the time measured since its last
packet could have been sent (`left`): a fixed floor (expire > 60 of 120) failed
when a loaded host made the emulated VM 15-25x slower.

Every client connection comes from a port of its own that the test picks
(`client_ports`), below the kernel's ephemeral range. With ports the kernel
picks, a new connection can take the port of an ended one (or of an idle one
the servers reset), and IPVS then carries it on that entry or replaces it
(`is_new_conn_expected` in ip_vs_core.c): the entries by source no longer
count the connections (CI once read 17 new FIN_WAIT entries for 20, three
ports taken again).
"""

from __future__ import annotations

import itertools
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_runner import Daemon, waiter
from topology import (
    HTTP_PORT,
    Network,
    RealServers,
    batch,
    http_get,
    inside,
    ipvsadm,
    network,
)

SHORT = 20
IDLE = 4
KEPT = 2
DEADLINE = 90.0
# Below net.ipv4.ip_local_port_range (32768-60999 by default), so no port the
# kernel picks for another socket can be one of these.
FIRST_CLIENT_PORT = 20000
SHORT_TIMEOUTS = "{ tcp = 5, tcpfin = 10, udp = 300 }"
# Seconds: ipvsadm truncates expire to whole seconds, and the listing is read
# a moment before `left` looks at the clock.
EXPIRE_SLACK = 2


def left(timeout: int, since: float) -> float:
    """The least `expire` an entry can show now whose timer was set to
    `timeout` at a packet sent at `since` (time.monotonic()) or later: the
    kernel's timers and this clock both run on the guest's time."""
    return timeout - (time.monotonic() - since) - EXPIRE_SLACK


@dataclass(frozen=True)
class Entry:
    """One line of `ipvsadm -Lnc`: its state and seconds left (expire mm:ss)."""

    state: str
    expire: int
    source: str


def entries() -> list[Entry]:
    """The connection entries through the VIP, from `ipvsadm -Lnc`."""
    found = []
    for line in ipvsadm("-Lnc").splitlines()[2:]:
        fields = line.split()
        if len(fields) == 6 and fields[0] == "TCP":
            minutes, _, seconds = fields[1].partition(":")
            found.append(Entry(fields[2], int(minutes) * 60 + int(seconds), fields[3]))
    return found


def unmatched(net: Network, ports: list[int], listed: list[Entry]) -> str:
    """For a failed count: the short connections' client ports without an
    entry, and the entries from other ports, so that a rare miss says which
    connection it was."""
    sources = {e.source: e for e in listed}
    mine = {f"{net.client.address}:{port}" for port in ports}
    missing = sorted(port for port in ports if f"{net.client.address}:{port}" not in sources)
    others = sorted(f"{e.source} {e.state} {e.expire}s" for e in listed if e.source not in mine)
    return f"client ports {sorted(ports)}; no entry {missing}; others {others}"


def established_on_real_servers(net: Network) -> int:
    """Sockets the real servers hold ESTABLISHED with the client (NAT keeps
    the client's address): what they see, as `ss` counts it."""
    total = 0
    for host in net.web:
        ss = ["ss", "-Htn", "state", "established", "dst", str(net.client.address)]
        out = subprocess.run(
            ["ip", "netns", "exec", host.netns, *ss],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        total += len(out.splitlines())
    return total


def show(title: str, net: Network) -> list[Entry]:
    """Print the listings the guide quotes; the -Lnc entries."""
    listed = entries()
    states = Counter(e.state for e in listed)
    print(f"\n### {title}")
    print("$ ipvsadm -L --timeout")
    print(ipvsadm("-L", "--timeout").rstrip())
    print("$ ipvsadm -Ln")
    print(ipvsadm("-Ln").rstrip())
    print("$ ipvsadm -Lnc | (by state, with the shortest and longest expire)")
    for state, count in sorted(states.items()):
        left = [e.expire for e in listed if e.state == state]
        print(f"  {state:<12} {count:>3} entries, expire {min(left)} .. {max(left)} s")
    print(f"real servers' ESTABLISHED sockets with the client: {established_on_real_servers(net)}")
    return listed


def conns(column: str) -> int:
    """ActiveConn (column 5) or InActConn (6) summed over the real servers."""
    index = {"active": 4, "inactive": 5}[column]
    return sum(
        int(line.split()[index])
        for line in ipvsadm("-Ln").splitlines()
        if line.strip().startswith("->") and line.split()[1][0].isdigit()
    )


def config_text(net: Network, workdir: Path, timeouts: str | None, forward: str = "masq") -> str:
    lines = [
        "[daemon]",
        f'state_file = "{workdir}/state.json"',
        "",
        "[control]",
        f'socket = "{workdir}/director.sock"',
        "",
    ]
    if timeouts is not None:
        lines += ["[ipvs]", f"timeouts = {timeouts}", ""]
    lines += [
        "[[virtual_server]]",
        'protocol = "tcp"',
        f'address = "{net.vip}:{HTTP_PORT}"',
        'scheduler = "rr"',
        'check = { type = "tcp", interval = 2.0, timeout = 1.0, rise = 1, fall = 2 }',
    ]
    for host in net.web:
        lines += ["", "[[virtual_server.real_server]]", f'address = "{host.address}"']
        lines += [f'forward = "{forward}"']
    return "\n".join(lines) + "\n"


@pytest.fixture
def net(netns: str) -> Iterator[Network]:
    """Two web servers, no UDP ones; conftest's `servers` runs them."""
    with network(netns, web=2, udp=0) as built:
        yield built


def client_ports() -> Iterator[int]:
    """The client's ports for one test, each used once."""
    return itertools.count(FIRST_CLIENT_PORT)


def open_idle(net: Network, number: int, ports: Iterator[int]) -> list[socket.socket]:
    """`number` connections through the VIP, from the next of `ports`, that
    send nothing (as a client's keep-alive connections between requests)."""
    opened = []
    for _ in range(number):
        with inside(net.client.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.bind(("", next(ports)))
        sock.connect((str(net.vip), HTTP_PORT))
        opened.append(sock)
    return opened


def drop_silently(net: Network) -> None:
    """The real servers drop their connections with the client without the
    director seeing it (as it never sees a real server's FIN or RST in
    direct routing, or when a client vanishes): `ss -K` aborts each socket,
    and the RST that sends is dropped at the server's own interface."""
    subprocess.run(["modprobe", "-q", "-a", "sch_ingress", "cls_flower", "act_gact"], check=False)
    for host in net.web:
        tc = ["ip", "netns", "exec", host.netns, "tc"]
        subprocess.run([*tc, "qdisc", "add", "dev", "eth0", "clsact"], check=True)
        for flag in ("0x1/0x1", "0x4/0x4"):  # FIN, RST
            filter_ = ["filter", "add", "dev", "eth0", "egress", "protocol", "ip", "flower"]
            match = ["ip_proto", "tcp", "tcp_flags", flag, "action", "drop"]
            subprocess.run([*tc, *filter_, *match], check=True)
        ss = ["ss", "-K", "-tn", "state", "established", "dst", str(net.client.address)]
        subprocess.run(["ip", "netns", "exec", host.netns, *ss], check=True, capture_output=True)
        subprocess.run([*tc, "qdisc", "del", "dev", "eth0", "clsact"], check=True)


def test_timeouts_worked_example(net: Network, servers: RealServers, tmp_path: Path) -> None:
    config = tmp_path / "director.toml"
    config.write_text(config_text(net, tmp_path, None))
    daemon = Daemon(config)
    idle: list[socket.socket] = []
    ports = client_ports()
    try:
        daemon.start()

        wait = waiter(daemon, DEADLINE, lambda: ipvsadm("-Ln"), every=0.5)

        wait(lambda: ipvsadm("-Ln").count("Masq") == 2, "both real servers in the table")
        assert "900 120 300" in ipvsadm("-L", "--timeout")  # the kernel's defaults

        # 1. The kernel's defaults: IDLE connections held open, SHORT ones done.
        idle_since = time.monotonic()
        idle += open_idle(net, IDLE, ports)
        short_since = time.monotonic()
        short = [next(ports) for _ in range(SHORT)]
        answered = Counter(http_get(net, source_port=port) for port in short)
        assert set(answered) == {"rs1", "rs2"}
        before = show(f"defaults: {IDLE} idle connections open, {SHORT} short ones ended", net)
        by_state = Counter(e.state for e in before)
        assert by_state["ESTABLISHED"] == IDLE
        assert by_state["TIME_WAIT"] == SHORT, (by_state, unmatched(net, short, before))
        assert conns("active") == IDLE and conns("inactive") == SHORT
        # Each ended connection is still an entry, for TIME_WAIT's 120 s;
        # each idle one for ESTABLISHED's 900 s (15 min) since its last packet.
        floor = left(120, short_since)
        assert all(floor <= e.expire <= 120 for e in before if e.state == "TIME_WAIT"), floor
        floor = left(900, idle_since)
        assert all(floor <= e.expire <= 900 for e in before if e.state == "ESTABLISHED"), floor
        assert established_on_real_servers(net) == IDLE

        # The servers drop the idle ones without the director seeing it:
        # ActiveConn stays, for the rest of the 900 s.
        drop_silently(net)
        gone = show("the real servers dropped the idle connections unseen", net)
        assert established_on_real_servers(net) == 0
        assert conns("active") == IDLE
        floor = left(900, idle_since)
        assert all(floor <= e.expire for e in gone if e.state == "ESTABLISHED"), floor
        old = {e.source for e in gone}

        # 2. [ipvs] timeouts through a reload (SIGHUP), as ipvsadm --set 5 10 300.
        config.write_text(config_text(net, tmp_path, SHORT_TIMEOUTS))
        daemon.reload()
        wait(lambda: "5 10 300" in ipvsadm("-L", "--timeout"), "the kernel's timeouts at 5 10 300")

        # 3. The same again: entries made from now on take the new timeouts.
        fresh_idle = open_idle(net, IDLE, ports)
        idle += fresh_idle
        short_since = time.monotonic()
        for _ in range(SHORT):
            http_get(net, source_port=next(ports))
        drop_silently(net)
        kept_idle = open_idle(net, KEPT, ports)  # these the servers keep
        idle += kept_idle
        after = show("after --set 5 10 300: the same again, and 2 idle ones kept", net)
        fresh = [e for e in after if e.source not in old]
        by_state = Counter(e.state for e in fresh)
        assert by_state["TIME_WAIT"] == SHORT  # TIME_WAIT is none of the three timeouts
        floor = left(120, short_since)
        assert all(floor <= e.expire <= 120 for e in fresh if e.state == "TIME_WAIT"), floor
        assert all(e.expire <= 10 for e in fresh if e.state == "FIN_WAIT")
        assert all(e.expire <= 5 for e in fresh if e.state == "ESTABLISHED")
        # The old entries keep the timers they had: a table change applies
        # to an entry at its next packet.
        floor = left(900, idle_since)
        assert all(
            floor <= e.expire for e in after if e.source in old and e.state == "ESTABLISHED"
        ), floor

        # 4. 5 s later the kernel has expired every new ESTABLISHED entry:
        # the dropped ones, and also the two idle ones the servers still hold.
        wait(lambda: conns("active") == IDLE, "the new idle entries expired (tcp = 5)")
        later = show("5 s after the last packet of the new idle connections", net)
        assert {e.source for e in later if e.state == "ESTABLISHED"} <= old
        assert established_on_real_servers(net) == KEPT
        try:
            kept_idle[0].sendall(b"GET / HTTP/1.0\r\n\r\n")
            reply = kept_idle[0].recv(100)
            print(f"the next packet on a kept idle connection: answered {reply!r}")
        except OSError as error:
            print(f"the next packet on a kept idle connection: {error!r}")
    finally:
        for sock in idle:
            sock.close()
        daemon.close()


def direct_routing(net: Network) -> None:
    """Make `net`'s web servers direct-routing real servers: each accepts
    the VIP (on its loopback) and answers the client from it over a link of
    its own to the client (a veth pair, a /32 route to the client's
    address), never through the director's namespace, as on a LAN where
    replies go straight to the router. (Replies routed back through the
    director's namespace are seen by IPVS, which then tracks both halves as
    in NAT: a first run here found every ended connection in TIME_WAIT.)"""
    client = net.client
    for i, host in enumerate(net.web, start=1):
        batch(
            [
                f"addr add {net.vip}/32 dev lo",
                f"link add back type veth peer name back{i} netns {client.netns}",
                "link set back up",
                f"route add {client.address}/32 dev back src {net.vip}",
            ],
            host.netns,
        )
        batch([f"link set back{i} up"], client.netns)
    sysctl = ["ip", "netns", "exec", client.netns, "sysctl", "-qw"]
    for iface in ("all", "default", *(f"back{i}" for i in range(1, len(net.web) + 1))):
        subprocess.run([*sysctl, f"net.ipv4.conf.{iface}.rp_filter=0"], check=True)


def test_timeouts_worked_example_direct_routing(
    net: Network, servers: RealServers, tmp_path: Path
) -> None:
    """The guide's direct-routing case: the director sees the client's
    packets only. A connection the client ends (its FIN) waits in FIN_WAIT
    for `tcpfin` (120 s by default, --set's second value), not TIME_WAIT; a
    real server's reset never reaches IPVS, so its entry stays ESTABLISHED
    for `tcp` without any trick to hide it."""
    direct_routing(net)
    config = tmp_path / "director.toml"
    config.write_text(config_text(net, tmp_path, None, forward="route"))
    daemon = Daemon(config)
    idle: list[socket.socket] = []
    ports = client_ports()
    try:
        daemon.start()

        wait = waiter(daemon, DEADLINE, lambda: ipvsadm("-Ln"), every=0.5)

        wait(lambda: ipvsadm("-Ln").count("Route") == 2, "both real servers in the table")

        # 1. The kernel's defaults.
        idle_since = time.monotonic()
        idle += open_idle(net, IDLE, ports)
        short_since = time.monotonic()
        short = [next(ports) for _ in range(SHORT)]
        answered = Counter(http_get(net, source_port=port) for port in short)
        assert set(answered) == {"rs1", "rs2"}
        before = show(f"DR, defaults: {IDLE} idle connections open, {SHORT} short ones ended", net)
        by_state = Counter(e.state for e in before)
        assert by_state["ESTABLISHED"] == IDLE
        # Not TIME_WAIT: the client's FIN only.
        assert by_state["FIN_WAIT"] == SHORT, (by_state, unmatched(net, short, before))
        floor = left(120, short_since)
        assert all(floor <= e.expire <= 120 for e in before if e.state == "FIN_WAIT"), floor
        assert conns("active") == IDLE and conns("inactive") == SHORT

        # The servers reset the idle connections: their RSTs go straight to
        # the client, and IPVS never sees them.
        for host in net.web:
            ss = ["ss", "-K", "-tn", "state", "established", "dst", str(net.client.address)]
            subprocess.run(
                ["ip", "netns", "exec", host.netns, *ss], check=True, capture_output=True
            )
        gone = show("DR: the real servers reset the idle connections", net)
        assert established_on_real_servers(net) == 0
        assert conns("active") == IDLE
        floor = left(900, idle_since)
        assert all(floor <= e.expire for e in gone if e.state == "ESTABLISHED"), floor
        old = {e.source for e in gone}

        # 2. [ipvs] timeouts through a reload.
        config.write_text(config_text(net, tmp_path, SHORT_TIMEOUTS, forward="route"))
        daemon.reload()
        wait(lambda: "5 10 300" in ipvsadm("-L", "--timeout"), "the kernel's timeouts at 5 10 300")
        ended = []
        short = [next(ports) for _ in range(SHORT)]
        for port in short:
            http_get(net, source_port=port)
            ended.append(time.monotonic())
        read_at = time.monotonic()
        after = show("DR, after --set 5 10 300: 20 more short connections", net)
        fresh = [e for e in after if e.source not in old]
        # tcpfin is 10 s now: in a slow VM the first of the 20 may have
        # expired before the listing (CI once read 18). Every one that ended
        # within the last 10 s (less the slack) must be there, in FIN_WAIT.
        must = sum(1 for t in ended if read_at - t < 10 - EXPIRE_SLACK)
        fin_wait = Counter(e.state for e in fresh)["FIN_WAIT"]
        assert must >= 1 and must <= fin_wait <= SHORT, (
            must,
            fin_wait,
            unmatched(net, short, after),
        )
        assert all(e.expire <= 10 for e in fresh if e.state == "FIN_WAIT")

        # 3. Within tcpfin (10 s) the new ended connections leave InActConn;
        # the old ones keep the 120 s timers they had.
        wait(
            lambda: all(e.source in old for e in entries()),
            "the new FIN_WAIT entries expired (tcpfin = 10)",
        )
        later = show("DR, 10 s after the last short connection", net)
        assert {e.source for e in later} <= old
    finally:
        for sock in idle:
            sock.close()
        daemon.close()
