"""NetlinkBackend.service_digests against the real kernel's /proc/net/ip_vs
(issue 8's drift check): one digest per service, by the keys the engine
knows them by, that changes with what ipvsadm's listing shows and not with
connection counts. Each test runs in a fresh network namespace."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest
import trio

from director.ipvs.model import AF_INET6, Protocol, ServiceKey
from director.ipvs.netlink import NetlinkBackend
from director.ipvs.servicetable import digest_shows, table_key
from director.kernel import KernelTable, entry_digest


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ipvsadm", *args], input=stdin, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def backend(netns: str) -> Iterator[NetlinkBackend]:
    with NetlinkBackend() as b:
        yield b


RULES = """\
-A -t 10.1.0.1:80 -s wrr
-a -t 10.1.0.1:80 -r 10.2.0.1:80 -m -w 3
-a -t 10.1.0.1:80 -r 10.2.0.2:80 -g -w 1
-A -u [2001:db8::1]:53 -s rr -p 300
-a -u [2001:db8::1]:53 -r [2001:db8::2]:53 -i -w 1
-A -f 7 -s sh
-a -f 7 -r 10.2.0.3:0 -g -w 2
-A -f 7 -6 -s rr
"""
TCP = ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80)
UDP = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)


def test_one_digest_per_service_by_the_engines_keys(backend: NetlinkBackend) -> None:
    ipvsadm("-R", stdin=RULES)
    digests = backend.service_digests()
    assert digests is not None
    keys = {table_key(e.service.key) for e in backend.services()}
    assert set(digests) == keys == {TCP, UDP, ("FWM", 7)}
    assert ServiceKey.mark(7, AF_INET6) in {e.service.key for e in backend.services()}


def test_a_digest_changes_with_the_listing_only(backend: NetlinkBackend) -> None:
    ipvsadm("-R", stdin=RULES)
    before = backend.service_digests()
    assert before is not None
    # A threshold is not in the file: the engine's rotation reads it.
    ipvsadm("-e", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "3", "-x", "50")
    assert backend.service_digests() == before
    ipvsadm("-e", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "4", "-x", "50")
    after = backend.service_digests()
    assert after is not None
    assert after[TCP] != before[TCP]
    assert {k: v for k, v in after.items() if k != TCP} == {
        k: v for k, v in before.items() if k != TCP
    }
    ipvsadm("-d", "-u", "[2001:db8::1]:53", "-r", "[2001:db8::2]:53")
    assert backend.service_digests()[UDP] != after[UDP]  # type: ignore[index]


def test_the_table_digests_through_the_file_not_the_entries(backend: NetlinkBackend) -> None:
    """KernelTable.digests takes the backend's file read; the entries'
    fallback is for backends without the file."""
    ipvsadm("-R", stdin=RULES)

    digests = trio.run(KernelTable(backend, threaded=False).digests)
    assert digests == backend.service_digests()
    assert digests is not None
    tcp = next(e for e in backend.services() if e.service.key == TCP)
    assert digests[TCP] != entry_digest(tcp)


def test_a_digest_shows_the_destinations_the_kernel_dumps(backend: NetlinkBackend) -> None:
    """digest_shows reads the real file's destination lines: each
    service's digest shows exactly the destinations its netlink dump gives
    (both families, every forwarding method), and not after a weight edit.
    The two families of mark 7 share one digest, which shows nothing."""
    ipvsadm("-R", stdin=RULES + "-a -t 10.1.0.1:80 -r 10.2.0.4:8080 -i -w 0\n")
    digests = backend.service_digests()
    assert digests is not None
    entries = {e.service.key: e for e in backend.services()}
    for key in (TCP, UDP):
        shown = [d.destination for d in entries[key].destinations]
        assert digest_shows(digests[key], digests[key], shown)
        assert digest_shows(entry_digest(entries[key]), entry_digest(entries[key]), shown)
    mark = [d.destination for d in entries[ServiceKey.mark(7)].destinations]
    assert not digest_shows(digests[("FWM", 7)], digests[("FWM", 7)], mark)
    ipvsadm("-e", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "4")
    edited = backend.service_digests()
    assert edited is not None
    tcp = [d.destination for d in entries[TCP].destinations]
    assert not digest_shows(edited[TCP], digests[TCP], tcp)


def test_settled_digests_leave_out_traffic_and_show_every_setting(backend: NetlinkBackend) -> None:
    """NetlinkBackend.settled_digests (the drift rotation's): equal while
    only the stats and connection counts move, other for a setting the
    file does not show (a threshold, scheduler flags), for that service
    alone. The traffic: connections through a VIP to a real server
    listening in the namespace itself (forwarding method Local)."""
    ipvsadm("-R", stdin=RULES + "-A -t 10.1.0.9:80 -s rr\n-a -t 10.1.0.9:80 -r 10.2.0.9:80 -m\n")
    for address in ("10.1.0.9/32", "10.2.0.9/32"):
        subprocess.run(["ip", "addr", "add", address, "dev", "lo"], check=True)
    local = ServiceKey.inet(Protocol.TCP, "10.1.0.9", 80)
    keys = [e.service.key for e in backend.services()]
    before = backend.settled_digests(keys)
    assert set(before) == set(keys) and len(keys) == 5
    with socket.create_server(("10.2.0.9", 80)) as server:
        clients = [socket.create_connection(("10.1.0.9", 80), timeout=5) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        [entry] = backend.services([local])
        # (The stats follow within the estimator's 2 s: the counts at once.)
        assert sum(d.active_conns for d in entry.destinations) == 3
        assert backend.settled_digests(keys) == before
        for sock in clients + accepted:
            sock.close()
    ipvsadm("-e", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "3", "-x", "50")
    after = backend.settled_digests(keys)
    assert after[TCP] != before[TCP]
    assert {k: d for k, d in after.items() if k != TCP} == {k: d for k, d in before.items() if k != TCP}  # fmt: skip
    mark = ServiceKey.mark(7)
    ipvsadm("-E", "-f", "7", "-s", "sh", "-b", "sh-port")
    assert backend.settled_digests([mark])[mark] != after[mark]
    assert backend.settled_digests([TCP, UDP]) == {TCP: after[TCP], UDP: after[UDP]}
