"""The DNS check against a DNS responder on loopback, written with dnspython.

Tests that expect a reply run on the real clock (the reply comes in
microseconds; the timeout only guards against a hang); tests that expect
silence run on the autojump clock."""

from __future__ import annotations

import re
import struct
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from loop_support import ticking
from test_probe_udp import V4, held_server, lag_before_the_send, search_taken_late, stamped

from director.health.probes import probe, probe_dns
from director.health.probes.dns import Verdict, judge, query_template, with_id
from director.health.result import ProbeResult, Reason
from director.health.spec import DnsCheck, Timing
from director.ipvs.model import IPAddress, family_of

LOOPBACKS = [IPv4Address("127.0.0.1"), IPv6Address("::1")]
SLOW = Timing(timeout=30.0)  # real clock: only a guard against a hang
SOA = ". 300 IN SOA a.root-servers.net. nstld.verisign-grs.com. 2026113000 1800 900 604800 86400"

# What a responder does with a query: the datagrams (or, over TCP, the
# messages) it sends back.
Handler = Callable[[dns.message.Message, bytes], list[bytes]]


@pytest.fixture(params=LOOPBACKS, ids=str)
def address(request: pytest.FixtureRequest) -> IPAddress:
    return request.param  # type: ignore[no-any-return]


def answer(
    query: dns.message.Message, *records: str, rcode: int = dns.rcode.NOERROR
) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for text in records:
        reply.answer.append(dns.rrset.from_text(*text.split(" ", 4)))
    return reply


def authoritative(query: dns.message.Message, _: bytes) -> list[bytes]:
    """Knows the root's SOA, www.example.org. A and AAAA; NXDOMAIN for the rest."""
    question = query.question[0]
    name, rdtype = question.name.to_text(), question.rdtype
    if (name, rdtype) == (".", dns.rdatatype.SOA):
        return [answer(query, SOA).to_wire()]
    if (name, rdtype) == ("www.example.org.", dns.rdatatype.A):
        return [answer(query, "www.example.org. 300 IN A 192.0.2.7").to_wire()]
    if (name, rdtype) == ("www.example.org.", dns.rdatatype.AAAA):
        return [answer(query, "www.example.org. 300 IN AAAA 2001:db8::7").to_wire()]
    return [answer(query, rcode=dns.rcode.NXDOMAIN).to_wire()]


@asynccontextmanager
async def udp_responder(address: IPAddress, handler: Handler) -> AsyncIterator[int]:
    """A UDP DNS server on `address` that answers with `handler`; its port."""
    sock = trio.socket.socket(family_of(address), trio.socket.SOCK_DGRAM)
    await sock.bind((str(address), 0))

    async def serve() -> None:
        while True:
            data, peer = await sock.recvfrom(65535)
            for reply in handler(dns.message.from_wire(data), data):
                await sock.sendto(reply, peer)

    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            yield sock.getsockname()[1]
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def tcp_responder(address: IPAddress, handler: Handler) -> AsyncIterator[int]:
    """A TCP DNS server: each connection gets its handler's messages, each
    with its length prefix, then the connection closes. A handler's b"" sends
    nothing (a close before the reply)."""
    listeners = await trio.open_tcp_listeners(0, host=str(address))

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            received = b""
            while len(received) < 2 or len(received) < 2 + struct.unpack("!H", received[:2])[0]:
                received += await stream.receive_some()
            data = received[2:]
            for reply in handler(dns.message.from_wire(data), data):
                if reply:
                    await stream.send_all(struct.pack("!H", len(reply)) + reply)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def run(address: IPAddress, handler: Handler, check: DnsCheck) -> tuple[bool, Reason, str]:
    responder = tcp_responder if check.transport == "tcp" else udp_responder
    async with responder(address, handler) as port:
        result = await probe_dns(check, address, port)
    return result.ok, result.reason, result.detail


# -- up ----------------------------------------------------------------------------------


async def test_dns_server_answering_the_default_query_is_up(address: IPAddress) -> None:
    # keepalived's DNS_CHECK default: the root's SOA.
    assert await run(address, authoritative, DnsCheck(SLOW)) == (True, Reason.OK, "NOERROR, 1 answer")  # fmt: skip


async def test_dns_expected_address_in_the_answer_is_up(address: IPAddress) -> None:
    check = DnsCheck(SLOW, query_name="www.example.org", query_type="A", expect_address=ip_address("192.0.2.7"))  # fmt: skip
    assert await run(address, authoritative, check) == (True, Reason.OK, "NOERROR, 1 answer")


async def test_dns_expected_ipv6_address_is_up(address: IPAddress) -> None:
    check = DnsCheck(SLOW, query_name="www.example.org.", query_type="AAAA", expect_address=ip_address("2001:db8::7"))  # fmt: skip
    assert (await run(address, authoritative, check))[0] is True


async def test_dns_expected_answer_regex_is_up(address: IPAddress) -> None:
    check = DnsCheck(SLOW, expect_answer=r"IN SOA a\.root-servers\.net\.")
    assert (await run(address, authoritative, check))[:2] == (True, Reason.OK)


async def test_dns_expected_nxdomain_is_up(address: IPAddress) -> None:
    check = DnsCheck(SLOW, query_name="nowhere.example.org", query_type="A", expect_rcode="NXDOMAIN")  # fmt: skip
    assert await run(address, authoritative, check) == (True, Reason.OK, "NXDOMAIN, 0 answers")


async def test_dns_through_the_prober(address: IPAddress) -> None:
    async with udp_responder(address, authoritative) as port:
        result = await probe(DnsCheck(SLOW), address, port)
    assert (result.ok, result.reason) == (True, Reason.OK)


async def test_dns_check_port_and_address_override_the_server(address: IPAddress) -> None:
    async with udp_responder(address, authoritative) as port:
        check = DnsCheck(SLOW, port=port, address=address)
        result = await probe_dns(check, ip_address("192.0.2.1"), 9)
    assert result.ok


async def test_dns_large_reply_is_read_whole(address: IPAddress) -> None:
    records = [f"big.example. 300 IN TXT {'x' * 200}-{i}" for i in range(200)]

    def big(query: dns.message.Message, _: bytes) -> list[bytes]:
        return [answer(query, *records).to_wire()]

    check = DnsCheck(SLOW, query_name="big.example", query_type="TXT", expect_answer="-199")
    ok, reason, detail = await run(address, big, check)
    assert (ok, reason, detail) == (True, Reason.OK, "NOERROR, 200 answers")


# -- down --------------------------------------------------------------------------------


async def test_dns_wrong_rcode_is_a_bad_status(address: IPAddress) -> None:
    def servfail(query: dns.message.Message, _: bytes) -> list[bytes]:
        return [answer(query, rcode=dns.rcode.SERVFAIL).to_wire()]

    assert await run(address, servfail, DnsCheck(SLOW)) == (False, Reason.BAD_STATUS, "rcode SERVFAIL, expected NOERROR")  # fmt: skip


async def test_dns_servfail_without_question_is_still_a_reply(address: IPAddress) -> None:
    # Servers may leave the question out of an error (RFC 1035 does not
    # require it); is_response takes it for FORMERR, SERVFAIL, NOTIMP, REFUSED.
    def refused(query: dns.message.Message, wire: bytes) -> list[bytes]:
        flags = dns.flags.QR | dns.flags.RD | dns.flags.RA
        return [wire[:2] + struct.pack("!HHHHH", flags | dns.rcode.REFUSED, 0, 0, 0, 0)]

    assert await run(address, refused, DnsCheck(SLOW)) == (False, Reason.BAD_STATUS, "rcode REFUSED, expected NOERROR")  # fmt: skip


async def test_dns_wrong_address_is_a_bad_reply(address: IPAddress) -> None:
    check = DnsCheck(SLOW, query_name="www.example.org", query_type="A", expect_address=ip_address("192.0.2.8"))  # fmt: skip
    assert await run(address, authoritative, check) == (False, Reason.BAD_REPLY, "NOERROR, 1 answer: no address 192.0.2.8")  # fmt: skip


async def test_dns_answer_not_matching_is_a_bad_reply(address: IPAddress) -> None:
    check = DnsCheck(SLOW, expect_answer="example\\.com")
    assert await run(address, authoritative, check) == (False, Reason.BAD_REPLY, "NOERROR, 1 answer: answer does not match 'example\\\\.com'")  # fmt: skip


async def test_dns_no_reply_is_a_timeout(
    address: IPAddress, autojump_clock: trio.testing.MockClock
) -> None:
    check = DnsCheck(Timing(timeout=2.5))
    async with udp_responder(address, lambda query, wire: []) as port:
        result = await probe_dns(check, address, port)
    assert (result.ok, result.reason, result.latency, result.detail) == (False, Reason.TIMEOUT, 2.5, "no reply within 2.5 s")  # fmt: skip


async def test_dns_closed_port_is_unreachable(address: IPAddress) -> None:
    sock = trio.socket.socket(family_of(address), trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind((str(address), 0))
        port = sock.getsockname()[1]
    result = await probe_dns(DnsCheck(SLOW), address, port)
    icmp = "ICMP port unreachable" if address.version == 4 else "ICMPv6 port unreachable"
    assert (result.ok, result.reason, result.detail) == (False, Reason.UNREACHABLE, f"{icmp} from {address}")  # fmt: skip


@pytest.mark.parametrize(
    ("garbage", "detail"),
    [
        (b"\xff\xff\x81", "malformed reply: ShortHeader"),
        (
            struct.pack("!HHHHHH", 0, 0x8180, 1, 0, 0, 0) + b"\x05ab",
            "malformed reply: FormError: DNS message is malformed.",
        ),
        (struct.pack("!HHHHHH", 0, 0x8180, 0, 0, 0, 0) + b"junk", "malformed reply: TrailingJunk"),
    ],
    ids=["short header", "cut question", "trailing junk"],
)
async def test_dns_malformed_reply_is_a_bad_reply(
    address: IPAddress, garbage: bytes, detail: str
) -> None:
    def malformed(query: dns.message.Message, wire: bytes) -> list[bytes]:
        return [wire[:2] + garbage[2:]]  # the right id, then garbage

    ok, reason, text = await run(address, malformed, DnsCheck(SLOW))
    assert (ok, reason) == (False, Reason.BAD_REPLY)
    assert text.startswith(detail), text


async def test_dns_empty_datagram_is_a_bad_reply(address: IPAddress) -> None:
    assert await run(address, lambda query, wire: [b""], DnsCheck(SLOW)) == (False, Reason.BAD_REPLY, "malformed reply: 0 bytes")  # fmt: skip


# -- replies to something else: ignored over UDP -------------------------------------------


def other_id(wire: bytes) -> bytes:
    return bytes([wire[0] ^ 0xFF]) + wire[1:]


async def test_dns_reply_with_another_id_is_ignored(address: IPAddress) -> None:
    def stale_then_right(query: dns.message.Message, wire: bytes) -> list[bytes]:
        (right,) = authoritative(query, wire)
        return [other_id(answer(query, rcode=dns.rcode.SERVFAIL).to_wire()), right]

    assert await run(address, stale_then_right, DnsCheck(SLOW)) == (True, Reason.OK, "NOERROR, 1 answer")  # fmt: skip


async def test_dns_only_replies_with_another_id_is_a_timeout_that_says_so(
    address: IPAddress, autojump_clock: trio.testing.MockClock
) -> None:
    def wrong_ids(query: dns.message.Message, wire: bytes) -> list[bytes]:
        (right,) = authoritative(query, wire)
        return [other_id(right), other_id(right)]

    ok, reason, detail = await run(address, wrong_ids, DnsCheck(Timing(timeout=2.0)))
    assert (ok, reason) == (False, Reason.TIMEOUT)
    assert detail.startswith("no reply within 2 s; ignored id 0x"), detail
    assert detail.endswith(" and 1 more"), detail


async def test_dns_a_flood_of_stray_replies_is_counted_not_kept(
    address: IPAddress, autojump_clock: trio.testing.MockClock
) -> None:
    def flood(query: dns.message.Message, wire: bytes) -> list[bytes]:
        return [other_id(authoritative(query, wire)[0])] * 100

    ok, reason, detail = await run(address, flood, DnsCheck(Timing(timeout=2.0)))
    assert (ok, reason) == (False, Reason.TIMEOUT)
    # Loopback may drop a few when the socket's buffer fills.
    assert re.fullmatch(
        r"no reply within 2 s; ignored id 0x[0-9a-f]{4} instead of 0x[0-9a-f]{4} and \d+ more",
        detail,
    ), detail


async def test_dns_reply_to_another_question_is_ignored(
    address: IPAddress, autojump_clock: trio.testing.MockClock
) -> None:
    def other_question(query: dns.message.Message, wire: bytes) -> list[bytes]:
        other = dns.message.make_query("example.net", "A", id=query.id)
        return [answer(other, "example.net. 1 IN A 192.0.2.9").to_wire()]

    ok, reason, detail = await run(address, other_question, DnsCheck(Timing(timeout=2.0)))
    assert (ok, reason) == (False, Reason.TIMEOUT)
    assert detail == "no reply within 2 s; ignored not a reply to this query (response QUERY example.net. A)"  # fmt: skip


async def test_dns_query_sent_back_is_ignored(
    address: IPAddress, autojump_clock: trio.testing.MockClock
) -> None:
    ok, reason, detail = await run(address, lambda q, wire: [wire], DnsCheck(Timing(timeout=2.0)))
    assert (ok, reason) == (False, Reason.TIMEOUT)
    assert detail == "no reply within 2 s; ignored not a reply to this query (query QUERY . SOA)"


# -- truncated ---------------------------------------------------------------------------


def truncated(query: dns.message.Message, wire: bytes) -> list[bytes]:
    """What BIND sends when the answer does not fit: header and question, TC set."""
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.TC
    return [reply.to_wire()]


async def test_dns_truncated_reply_is_judged_on_its_rcode(address: IPAddress) -> None:
    assert await run(address, truncated, DnsCheck(SLOW)) == (True, Reason.OK, "NOERROR, 0 answers, truncated")  # fmt: skip


async def test_dns_truncated_reply_without_the_expected_answer_says_to_use_tcp(
    address: IPAddress,
) -> None:
    check = DnsCheck(SLOW, query_name="www.example.org", query_type="A", expect_address=ip_address("192.0.2.7"))  # fmt: skip
    assert await run(address, truncated, check) == (False, Reason.BAD_REPLY, 'NOERROR, 0 answers: no address 192.0.2.7 (reply truncated: query with transport = "tcp")')  # fmt: skip


async def test_dns_reply_cut_inside_a_record_with_tc_is_truncated(address: IPAddress) -> None:
    def cut(query: dns.message.Message, wire: bytes) -> list[bytes]:
        reply = answer(query, SOA, SOA.replace("2026113000", "2026113001"))
        reply.flags |= dns.flags.TC
        return [reply.to_wire()[:-10]]

    assert await run(address, cut, DnsCheck(SLOW)) == (True, Reason.OK, "NOERROR, 1 answer, truncated")  # fmt: skip


# -- TCP ---------------------------------------------------------------------------------


async def test_dns_over_tcp_is_up(address: IPAddress) -> None:
    check = DnsCheck(SLOW, query_name="www.example.org", query_type="A", expect_address=ip_address("192.0.2.7"), transport="tcp")  # fmt: skip
    assert await run(address, authoritative, check) == (True, Reason.OK, "NOERROR, 1 answer")


async def test_dns_over_tcp_wrong_rcode_is_a_bad_status(address: IPAddress) -> None:
    def servfail(query: dns.message.Message, _: bytes) -> list[bytes]:
        return [answer(query, rcode=dns.rcode.SERVFAIL).to_wire()]

    assert (await run(address, servfail, DnsCheck(SLOW, transport="tcp")))[1] is Reason.BAD_STATUS


async def test_dns_over_tcp_reply_with_another_id_is_a_bad_reply(address: IPAddress) -> None:
    def wrong_id(query: dns.message.Message, wire: bytes) -> list[bytes]:
        return [other_id(authoritative(query, wire)[0])]

    ok, reason, detail = await run(address, wrong_id, DnsCheck(SLOW, transport="tcp"))
    assert (ok, reason) == (False, Reason.BAD_REPLY)
    assert detail.startswith("reply to another query: id 0x"), detail


async def test_dns_over_tcp_close_before_the_reply_is_a_bad_reply(address: IPAddress) -> None:
    assert await run(address, lambda q, w: [b""], DnsCheck(SLOW, transport="tcp")) == (False, Reason.BAD_REPLY, "connection closed before a reply")  # fmt: skip


async def test_dns_over_tcp_refused(address: IPAddress) -> None:
    listeners = await trio.open_tcp_listeners(0, host=str(address))
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    result = await probe_dns(DnsCheck(SLOW, transport="tcp"), address, port)
    assert (result.ok, result.reason) == (False, Reason.REFUSED)


async def test_dns_each_probe_sends_a_new_random_id(address: IPAddress) -> None:
    ids: list[int] = []

    def record(query: dns.message.Message, wire: bytes) -> list[bytes]:
        ids.append(query.id)
        return authoritative(query, wire)

    async with udp_responder(address, record) as port:
        for _ in range(5):
            assert (await probe_dns(DnsCheck(SLOW), address, port)).ok
    assert len(ids) == 5
    assert len(set(ids)) > 1


# -- judge, the pure part ----------------------------------------------------------------


def test_query_wire_has_the_probe_id_recursion_desired_and_no_edns() -> None:
    _, template = query_template(".", "SOA")
    wire = with_id(template, 0xBEEF)
    sent = dns.message.from_wire(wire)
    assert (sent.id, sent.flags & dns.flags.RD, sent.question[0].rdtype, sent.edns) == (0xBEEF, dns.flags.RD, dns.rdatatype.SOA, -1)  # fmt: skip


@given(st.binary(max_size=600))
def test_judge_never_raises(data: bytes) -> None:
    query, _ = query_template("www.example.org", "A")
    check = DnsCheck(expect_address=ip_address("192.0.2.7"), expect_answer="x")
    verdict = judge(check, query, 0x1234, b"\x12\x34" + data)
    assert isinstance(verdict, Verdict)
    assert verdict.reason is not Reason.OK or verdict.detail.startswith("NOERROR")


# -- a catastrophic expect_answer never holds up the event loop ----------------------------


async def test_dns_catastrophic_expect_answer_fails_its_probe_and_the_loop_goes_on() -> None:
    # `(a|aa)+$` against 40 a's and a b backtracks for longer than anyone
    # waits: matched on the event loop it froze the daemon for 5 s at 35 a's
    # (an operator trial). A real clock: the search is real work.
    def unlucky(query: dns.message.Message, _: bytes) -> list[bytes]:
        return [answer(query, f"txt.example. 300 IN TXT {'a' * 40}b").to_wire()]

    check = DnsCheck(
        Timing(timeout=0.5), query_name="txt.example", query_type="TXT", expect_answer="(a|aa)+$"
    )
    async with udp_responder(IPv4Address("127.0.0.1"), unlucky) as port, ticking() as ticks:
        result = await probe_dns(check, IPv4Address("127.0.0.1"), port)
    assert not result.ok
    # Whether the regex module gave up first or the probe's limit (1 s) cut it.
    detail = "no verdict within 0.5 s: expect_answer '(a|aa)+$' still searching the answer"
    assert (result.reason, result.detail, result.latency) == (Reason.TIMEOUT, detail, 0.5)
    assert ticks.count >= 10  # the loop kept running while the search did


# -- over UDP, the timeout and the latency are the server's time, not the daemon's lag -----
# As in test_probe_udp.py: the daemon's lag is a jump of the autojump clock
# while the probe cannot run, and `udp.arrival` the kernel's stamp.


async def held_responder(
    handler: Handler,
    clock: trio.testing.MockClock,
    hold: float = 0.0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """A UDP DNS server that sends its handler's datagrams, then holds the
    loop `hold` seconds (test_probe_udp's `held_server`)."""

    def answer(data: bytes) -> Iterable[bytes]:
        return handler(dns.message.from_wire(data), data)

    await held_server(answer, clock, hold, task_status=task_status)


async def run_held(
    check: DnsCheck,
    clock: trio.testing.MockClock,
    hold: float = 0.0,
    handler: Handler = authoritative,
) -> tuple[ProbeResult, float]:
    """The probe's result and how long it took, on trio's clock."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(held_responder, handler, clock, hold)
        start = trio.current_time()
        result = await probe_dns(check, V4, port)
        took = trio.current_time() - start
        nursery.cancel_scope.cancel()
    return result, took


async def test_dns_lag_before_the_send_does_not_fail_a_server_that_answers_at_once(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    lag_before_the_send(monkeypatch, autojump_clock, 1.5)
    result, took = await run_held(DnsCheck(Timing(timeout=1.0)), autojump_clock)
    # (before: 'no verdict within 1 s', the lag counted against the server)
    assert (result.ok, result.detail, result.latency, took) == (True, "NOERROR, 1 answer", 0.0, 1.5)


async def test_dns_reply_in_the_kernel_when_the_deadline_passes_is_read(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    stamped(monkeypatch, 0.002)
    result, _ = await run_held(DnsCheck(Timing(timeout=1.0)), autojump_clock, 1.5)
    # (before: up, with the 1.5 s the daemon was held as its latency)
    assert (result.ok, result.detail, result.latency) == (True, "NOERROR, 1 answer", 0.002)


async def test_dns_reply_the_kernel_timed_after_the_timeout_is_a_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    stamped(monkeypatch, 1.3)
    result, _ = await run_held(DnsCheck(Timing(timeout=1.0)), autojump_clock, 1.5)
    detail = "answered in 1.3 s, past the 1 s timeout (NOERROR, 1 answer)"
    assert (result.ok, result.reason, result.detail, result.latency) == (False, Reason.TIMEOUT, detail, 1.0)  # fmt: skip


async def test_dns_ignored_datagram_then_silence_times_out_one_timeout_after_the_send(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    def wrong_id(query: dns.message.Message, wire: bytes) -> list[bytes]:
        return [other_id(authoritative(query, wire)[0])]

    lag_before_the_send(monkeypatch, autojump_clock, 0.5)
    result, took = await run_held(DnsCheck(Timing(timeout=1.0)), autojump_clock, handler=wrong_id)
    assert (result.ok, result.reason, result.latency, took) == (False, Reason.TIMEOUT, 1.0, 1.5)
    assert re.fullmatch(
        r"no reply within 1 s; ignored id 0x[0-9a-f]{4} instead of 0x[0-9a-f]{4}", result.detail
    ), result.detail


async def test_dns_a_probe_ends_at_twice_its_timeout_whatever_the_lag(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    lag_before_the_send(monkeypatch, autojump_clock, 1.5)
    result, took = await run_held(
        DnsCheck(Timing(timeout=1.0)), autojump_clock, handler=lambda query, wire: []
    )
    detail = "no reply within 2 s of the start: the server had 0.5 s of it, the rest was the daemon's lag"  # fmt: skip
    assert (result.ok, result.reason, result.detail, result.latency, took) == (False, Reason.TIMEOUT, detail, 1.0, 2.0)  # fmt: skip


@pytest.mark.parametrize("lag", [1.5, 2.5])
async def test_dns_an_expect_answer_result_taken_late_is_a_match(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock, lag: float
) -> None:
    # Judging is the daemon's work, with a time of its own: a loop too busy
    # to take the search's result for 1.5 s, or 2.5 s (past the probe's
    # limit of 2 s), does not fail a reply that came in time.
    search_taken_late(monkeypatch, autojump_clock, lag)
    check = DnsCheck(Timing(timeout=1.0), expect_answer="nstld")
    result, took = await run_held(check, autojump_clock)
    # (before: 'no verdict within 1 s')
    assert (result.ok, result.detail, result.latency, took) == (True, "NOERROR, 1 answer", 0.0, lag)
