"""The DNS check end to end: directord in the director's namespace with a UDP
virtual service on port 53, two real servers each running a small DNS
responder (dnspython, in a thread of this test with its socket made inside
the server's namespace), a client asking through the VIP.

A server is in the kernel's table while its responder answers as the check
expects; it leaves when the responder answers SERVFAIL (`bad status`) or
stops (ICMP port unreachable: `unreachable`), and comes back when it answers
again. Deadlines are generous (the VM is slow and shared); they bound the
waits, they are not performance claims."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from daemon_runner import Daemon, wait_until
from topology import Host, Network, inside, ipvsadm, network

DNS_PORT = 53
ANSWER = "192.0.2.53"  # what both responders answer for www.example.test. A
DEADLINE = 60.0


class Responder:
    """A DNS server on UDP port 53 of `host`: answers `www.example.test. A`
    with ANSWER and `. SOA` with a made-up SOA, NXDOMAIN for anything else.
    `servfail = True` makes it answer SERVFAIL to everything; `stop()`
    closes its socket, so that queries meet ICMP port unreachable."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.servfail = False
        self.refuse_a = False  # REFUSED to every A query, the rest as usual
        self.queries = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with inside(self.host.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("0.0.0.0", DNS_PORT))
        sock.settimeout(0.2)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join()
            self._thread = None

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            while not self._stopping.is_set():
                try:
                    data, peer = sock.recvfrom(65535)
                except TimeoutError:
                    continue
                self.queries += 1
                sock.sendto(self.reply(dns.message.from_wire(data)).to_wire(), peer)

    def reply(self, query: dns.message.Message) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.flags |= dns.flags.AA
        question = query.question[0]
        name, rdtype = question.name.to_text(), question.rdtype
        if self.servfail:
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif self.refuse_a and rdtype == dns.rdatatype.A:
            reply.set_rcode(dns.rcode.REFUSED)
        elif (name, rdtype) == ("www.example.test.", dns.rdatatype.A):
            reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", ANSWER))
        elif (name, rdtype) == (".", dns.rdatatype.SOA):
            soa = f"ns.{self.host.name}.test. hostmaster.test. 1 3600 600 86400 60"
            reply.answer.append(dns.rrset.from_text(name, 60, "IN", "SOA", soa))
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply


# A timeout above the interval: with other VMs on the host, the guest
# stalls for a second at times, and a 1 s probe then fails for nothing.
TIMING = "interval = 1.0, timeout = 3.0, rise = 2, fall = 3"


def config_text(net: Network, workdir: Path, u2_check: str = f'type = "dns", {TIMING}') -> str:
    timing = TIMING
    u1, u2 = net.udp
    return f"""
[daemon]
state_file = "{workdir}/state.json"

[control]
socket = "{workdir}/director.sock"

[[virtual_server]]
protocol = "udp"
address = "{net.vip}:{DNS_PORT}"
scheduler = "rr"
check = {{ type = "dns", query_name = "www.example.test", query_type = "A", expect_address = "{ANSWER}", {timing} }}

[[virtual_server.real_server]]
address = "{u1.address}"
forward = "masq"

[[virtual_server.real_server]]
address = "{u2.address}"
forward = "masq"
check = {{ {u2_check} }}
"""


def destinations(service: str) -> set[str]:
    """The real servers ("addr:port") of `service` ("-u 1.2.3.4:53") in ipvsadm -Sn."""
    found = set()
    for line in ipvsadm("-Sn").splitlines():
        match = re.fullmatch(rf"-a {re.escape(service)} -r (\S+) -\w -w \d+", line)
        if match:
            found.add(match[1])
    return found


def ask_vip(net: Network, name: str = "www.example.test") -> dns.message.Message:
    """A query from the client namespace to the VIP; the reply."""
    with inside(net.client.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(5.0)
        sock.connect((str(net.vip), DNS_PORT))
        query = dns.message.make_query(name, "A")
        sock.send(query.to_wire())
        reply = dns.message.from_wire(sock.recv(65535))
    assert query.is_response(reply)
    return reply


class Rig:
    def __init__(self, net: Network, workdir: Path, text: str | None = None) -> None:
        self.net = net
        self.service = f"-u {net.vip}:{DNS_PORT}"
        self.responders = {host.name: Responder(host) for host in net.udp}
        self.config = workdir / "director.toml"
        self.config.write_text(text if text is not None else config_text(net, workdir))
        self.daemon = Daemon(self.config)

    def rs(self, name: str) -> str:
        return f"{self.net.host(name).address}:{DNS_PORT}"

    def wait_table(self, want: Callable[[set[str]], bool], what: str) -> set[str]:
        def check() -> set[str] | None:
            assert self.daemon.process is not None
            if self.daemon.process.poll() is not None:
                raise AssertionError(f"directord exited:\n{self.daemon.log_text()}")
            current = destinations(self.service)
            return current if want(current) else None

        try:
            return wait_until(check, DEADLINE, what)
        except AssertionError as e:
            log = self.daemon.log_text()
            raise AssertionError(f"{e}\ntable:\n{ipvsadm('-Sn')}\ndaemon log:\n{log}") from None

    def close(self) -> None:
        self.daemon.close()
        for responder in self.responders.values():
            responder.stop()


@pytest.fixture
def rig(netns: str, tmp_path: Path) -> Iterator[Rig]:
    with network(netns, web=0, udp=2) as net:
        built = Rig(net, tmp_path)
        try:
            yield built
        finally:
            built.close()


def test_dns_check_follows_the_responder(rig: Rig) -> None:
    u1, u2 = rig.rs("u1"), rig.rs("u2")
    for responder in rig.responders.values():
        responder.start()
    rig.daemon.start()
    rig.wait_table(lambda d: d == {u1, u2}, "both DNS servers in the table")
    assert ask_vip(rig.net).answer[0].to_text() == f"www.example.test. 60 IN A {ANSWER}"

    # SERVFAIL: u1 leaves, u2 (whose check asks for the root's SOA) stays.
    rig.responders["u1"].servfail = True
    rig.wait_table(lambda d: d == {u2}, "u1 out after answering SERVFAIL")
    # (Logged at the first failure of a series and when the reason changes.)
    failed = rig.daemon.wait_event("probe_failed", DEADLINE, rs=u1, reason="bad status")
    assert failed["detail"] == "rcode SERVFAIL, expected NOERROR"
    assert ask_vip(rig.net).rcode() == dns.rcode.NOERROR  # only u2 answers now

    rig.responders["u1"].servfail = False
    rig.wait_table(lambda d: d == {u1, u2}, "u1 back after answering again")
    assert rig.daemon.events("real_server_up", rs=u1)

    # Stopped: the kernel answers ICMP port unreachable for it.
    rig.responders["u2"].stop()
    rig.wait_table(lambda d: d == {u1}, "u2 out after its responder stopped")
    failed = rig.daemon.wait_event("probe_failed", DEADLINE, rs=u2, reason="unreachable")
    assert failed["detail"] == f"ICMP port unreachable from {rig.net.host('u2').address}"

    rig.responders["u2"].start()
    rig.wait_table(lambda d: d == {u1, u2}, "u2 back after its responder restarted")

    assert rig.daemon.process is not None and rig.daemon.process.poll() is None
    assert not rig.daemon.events("probe_error")
    timeouts = [e for e in rig.daemon.events("probe_failed") if e["reason"] == "timeout"]
    print(
        f"{len(timeouts)} probe timeouts logged: {[(e['rs'], e['failures_in_row']) for e in timeouts]}"
    )
    assert rig.daemon.stop() == 0


def test_a_servers_own_query_drops_the_services_expected_address(
    netns: str, tmp_path: Path
) -> None:
    """Trial 35 (M1): a real server whose check asks another query type than
    its service's (`query_type = "SOA"` under a service expecting an A
    answer, `expect_address`) was refused at start, the error named at the
    service's check. The inherited expect_address now gives way: u2 is
    judged on its own SOA query, in the table while it refuses A queries,
    out when it answers SERVFAIL."""
    u2_check = f'query_name = ".", query_type = "SOA", {TIMING}'
    with network(netns, web=0, udp=2) as net:
        rig = Rig(net, tmp_path, config_text(net, tmp_path, u2_check))
        try:
            u1, u2 = rig.rs("u1"), rig.rs("u2")
            for responder in rig.responders.values():
                responder.start()
            rig.responders["u2"].refuse_a = True  # the service's own check would fail it
            rig.daemon.start()
            rig.wait_table(lambda d: d == {u1, u2}, "u1 and u2 (by its SOA check) in the table")
            rig.responders["u2"].servfail = True
            rig.wait_table(lambda d: d == {u1}, "u2 out after answering SERVFAIL")
            failed = rig.daemon.wait_event("probe_failed", DEADLINE, rs=u2, reason="bad status")
            assert failed["detail"] == "rcode SERVFAIL, expected NOERROR"
            assert not rig.daemon.events("probe_failed", rs=u1)
            assert rig.daemon.stop() == 0
        finally:
            rig.close()
