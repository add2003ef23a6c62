"""DNS check: one query, over UDP (or TCP), and a verdict on the reply.

The query is built with dnspython (`dns.message.make_query`: recursion desired,
no EDNS, as keepalived's DNS_CHECK sends it), once per name and type; each
probe gives it a random id (RFC 5452 section 4.3). The exchange runs over a
socket of our own, under the check's timeout.

What comes back is judged by `judge`, a pure function:

- A datagram that is not a reply to this query (another id, the QR bit clear,
  another opcode or question: RFC 5452 section 9.1, what dnspython's
  `Message.is_response` tells) is ignored over UDP, as a resolver ignores it:
  a stray or forged datagram must neither fail a live server nor pass a dead
  one. If nothing better comes, the probe times out, and its detail says what
  was ignored. Over TCP, where the connection carries nothing but this one
  exchange, such a reply is a `bad reply`.
- A reply that does not parse is a `bad reply`; an rcode other than
  `expect_rcode` is a `bad status`; an answer without `expect_address` or not
  matching `expect_answer` is a `bad reply`.
- A truncated reply (TC) is judged on what it holds: its rcode counts, and an
  expected answer it lacks is a `bad reply` that says to query over TCP.

Over UDP an ICMP error is down (`unreachable`), read as the UDP check reads it
(IP_RECVERR, udp.py). A reply is at most one datagram (64 KiB) over UDP and
one message of at most 65535 bytes over TCP (its 16-bit length prefix, RFC
1035 section 4.2.2), so what a probe buffers is bounded.

Over UDP the exchange is udp.py's `Datagrams`, so the timeout and the latency
are the server's time, as the kernel stamped the reply's arrival, not the
daemon's: the timeout counts from the send, a datagram in the kernel when the
deadline passes is read and judged, and judging (parsing, an `expect_answer`
search) is the daemon's work, which never turns a reply that came in time
into a timeout short of the probe's limit (2x the timeout from its start,
udp.py says why). A reply the kernel timed past the timeout is a timeout,
"answered in 1.3 s, past the 1 s timeout (NOERROR, 1 answer)"; silence, one
timeout after the send, "no reply within 1 s", as udp.py says it. Over TCP the whole exchange
runs under the timeout from the start, the time to the verdict its latency.
An `expect_answer` search (the daemon's work, with `timeout` seconds of its
own: patterns.py) that has not finished then is a timeout, "no verdict
within 1 s: expect_answer '...' still searching the answer".
"""

from __future__ import annotations

import functools
import secrets
import struct
from dataclasses import dataclass, replace
from ipaddress import ip_address

import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import trio

from director.health.probes import patterns
from director.health.probes.attempt import ANSWER, CONNECT, duration, probe_attempt, timed_out
from director.health.probes.stream import Silent, TimedConnection, connect, silence
from director.health.probes.tcp import answered
from director.health.probes.udp import Datagrams, Reply, exchange_datagrams
from director.health.result import ProbeResult, Reason
from director.health.spec import DnsCheck
from director.ipvs.model import IPAddress

MAX_TCP_MESSAGE = 65535  # the 16-bit length prefix (RFC 1035 section 4.2.2)
# RR types a query may ask for: every type dnspython names but the meta-types
# (RFC 6895 section 3.1: OPT, TSIG, AXFR, ...), save ANY. The config checks
# query_type against it.
QUERY_TYPES = tuple(
    t.name
    for t in dns.rdatatype.RdataType
    if not dns.rdatatype.is_metatype(t) or t == dns.rdatatype.ANY
)
# Rcodes a reply to a query without EDNS can carry: the header's 4 bits (RFC
# 6895 section 2.3); the others need EDNS's extended rcode. The config checks
# expect_rcode against it.
REPLY_RCODES = tuple(r.name for r in dns.rcode.Rcode if r < 16)
_LENGTH = struct.Struct("!H")
_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
# What dnspython's parser raises on bytes that are no DNS message: its own
# exceptions, and what a wire reader may let through on a malformed field.
_MALFORMED = (dns.exception.DNSException, ValueError, struct.error, IndexError, UnicodeError)
# Verdicts on a reply, whose latency is the server's time (stream.py's `served`).
_ANSWERED = frozenset({Reason.OK, Reason.BAD_STATUS, Reason.BAD_REPLY})


@dataclass(frozen=True)
class Verdict:
    """What one received message says: `reason` OK (up) or a failure (down),
    or None when the message is no reply to the query and is ignored."""

    reason: Reason | None
    detail: str

    @property
    def ignored(self) -> bool:
        return self.reason is None


@dataclass
class Ignored:
    """Datagrams ignored in one probe: how many, and why the first was (a
    count, not a list: a flood of them must not grow memory)."""

    count: int = 0
    first: str = ""

    def add(self, why: str) -> None:
        if not self.count:
            self.first = why
        self.count += 1


@functools.lru_cache(maxsize=1024)
def query_template(name: str, rdtype: str) -> tuple[dns.message.Message, bytes]:
    """The query for `name` and `rdtype` (a valid name and a type mnemonic, as
    the config checks them) and its wire form; the id is the caller's.
    Raises dns.exception.DNSException for a name or type dnspython refuses."""
    query = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), id=0)
    return query, query.to_wire()


def name_problem(name: str) -> str | None:
    """Why dnspython refuses `name` as a query name, or None when it takes it."""
    try:
        query_template(name, DnsCheck.query_type)
    except dns.exception.DNSException as e:
        return str(e)
    return None


def with_id(wire: bytes, query_id: int) -> bytes:
    return query_id.to_bytes(2, "big") + wire[2:]


@dataclass(frozen=True)
class _Sent:
    """One probe's query, as both transports send and judge it: the check,
    dnspython's message, the id this probe gave it and the wire form with it."""

    check: DnsCheck
    query: dns.message.Message
    query_id: int
    wire: bytes

    def judge(self, data: bytes, search_time: float | None = None) -> Verdict:
        return judge(self.check, self.query, self.query_id, data, search_time)

    async def judge_off_loop(self, data: bytes) -> Verdict:
        """judge(data), its expect_answer search as patterns.in_time runs
        it (it holds up the event loop a millisecond at most)."""
        if self.check.expect_answer is None:
            return self.judge(data)
        timeout = self.check.timing.timeout
        verdict = await patterns.in_time(functools.partial(self.judge, data), timeout)
        return verdict if verdict is not None else still_searching(self.check, timeout)


def judge(
    check: DnsCheck,
    query: dns.message.Message,
    query_id: int,
    data: bytes,
    search_time: float | None = None,
) -> Verdict:
    """The verdict on `data`, received in answer to `query` sent with id
    `query_id` (`query` itself may carry another id). An `expect_answer`
    search gives up after `search_time` seconds (the check's timeout when
    None) with patterns.StillSearching; nothing else raises."""
    if len(data) < 2:
        return Verdict(Reason.BAD_REPLY, f"malformed reply: {len(data)} bytes")
    reply_id = int.from_bytes(data[:2], "big")
    if reply_id != query_id:
        return Verdict(None, f"id {reply_id:#06x} instead of {query_id:#06x}")
    truncated = False
    try:
        reply = dns.message.from_wire(data, raise_on_truncation=True)
    except dns.message.Truncated as e:
        reply, truncated = e.message(), True  # type: ignore[no-untyped-call]
    except _MALFORMED as e:
        return Verdict(Reason.BAD_REPLY, f"malformed reply: {_describe(e)}")
    # is_response compares ids too; ours was checked above on the wire.
    reply.id = query.id
    if not query.is_response(reply):
        return Verdict(None, f"not a reply to this query ({_summary(reply)})")
    rcode = reply.rcode()
    expected = dns.rcode.from_text(check.expect_rcode)
    if rcode != expected:
        return Verdict(
            Reason.BAD_STATUS, f"rcode {dns.rcode.to_text(rcode)}, expected {check.expect_rcode}"
        )
    problem = _answer_problem(check, reply, search_time)
    count = sum(len(rrset) for rrset in reply.answer)
    summary = f"{dns.rcode.to_text(rcode)}, {count} answer{'s' if count != 1 else ''}"
    if problem is not None:
        if truncated:
            problem += ' (reply truncated: query with transport = "tcp")'
        return Verdict(Reason.BAD_REPLY, f"{summary}: {problem}")
    return Verdict(Reason.OK, summary + (", truncated" if truncated else ""))


def _answer_problem(
    check: DnsCheck, reply: dns.message.Message, search_time: float | None
) -> str | None:
    """What the reply lacks of the expected answer, or None. Raises
    patterns.StillSearching when an expect_answer search gives up."""
    if check.expect_address is not None:
        addresses = {
            ip_address(rdata.address)
            for rrset in reply.answer
            if rrset.rdtype in _ADDRESS_TYPES
            for rdata in rrset
        }
        if check.expect_address not in addresses:
            return f"no address {check.expect_address}"
    if check.expect_answer is not None:
        text = "\n".join(rrset.to_text() for rrset in reply.answer)
        seconds = check.timing.timeout if search_time is None else search_time
        if not patterns.search_now(check.expect_answer, text, seconds):
            return f"answer does not match {check.expect_answer!r}"
    return None


def _summary(message: dns.message.Message) -> str:
    kind = "response" if message.flags & dns.flags.QR else "query"
    opcode = dns.opcode.to_text(message.opcode())
    if not message.question:
        return f"{kind} {opcode} without question"
    first = message.question[0]
    more = f" and {len(message.question) - 1} more" if len(message.question) > 1 else ""
    question = f"{first.name.to_text()[:100]} {dns.rdatatype.to_text(first.rdtype)}"
    return f"{kind} {opcode} {question}{more}"


def _describe(exc: BaseException) -> str:
    text = str(exc)[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def probe_dns(check: DnsCheck, address: IPAddress, port: int) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    query, template = query_template(check.query_name, check.query_type)
    query_id = secrets.randbits(16)
    sent = _Sent(check, query, query_id, with_id(template, query_id))
    if check.transport == "tcp":
        return await _probe_tcp(sent, address, port)
    return await exchange_datagrams(
        address, port, check.timing, functools.partial(_exchange_udp, sent)
    )


async def _exchange_udp(sent: _Sent, datagrams: Datagrams) -> ProbeResult:
    """Send the query from a connected socket and read datagrams until one is
    a reply to it (the others are ignored: counted in a timeout's detail), an
    ICMP error comes, or the deadline passes."""
    timeout = datagrams.timeout
    ignored = Ignored()
    got: Reply | tuple[Reason, str] | None = await datagrams.send(sent.wire)
    while got is None:
        got = await datagrams.receive()
        if got is None:
            detail = datagrams.silence("no reply")
            if ignored.count:
                more = f" and {ignored.count - 1} more" if ignored.count > 1 else ""
                detail = f"{detail}; ignored {ignored.first}{more}"
            return ProbeResult.failure(Reason.TIMEOUT, timeout, detail)
        if not isinstance(got, Reply):
            break
        verdict = await _judge(sent, got, datagrams)
        if verdict.ignored:
            ignored.add(verdict.detail)
            got = None
            await trio.lowlevel.checkpoint()  # (a flood of them must not hold the loop)
            continue
        late = got.served > timeout
        if verdict.reason is Reason.OK or (late and verdict.reason is Reason.TIMEOUT):
            # A success, or a timeout, when the kernel timed it past the timeout.
            return answered(got.served, timeout, verdict.detail if verdict.reason is Reason.OK else "", slack=0.0)  # fmt: skip
        assert verdict.reason is not None
        latency = timeout if verdict.reason is Reason.TIMEOUT else got.served
        return ProbeResult.failure(verdict.reason, latency, verdict.detail)
    assert not isinstance(got, Reply)
    return ProbeResult.failure(got[0], datagrams.failed_after(), got[1])


async def _judge(sent: _Sent, reply: Reply, datagrams: Datagrams) -> Verdict:
    """The verdict on a reply; the daemon's work, not the server's: an
    expect_answer search runs in a worker thread with a time of its own
    (patterns.py)."""
    timeout = datagrams.timeout
    if sent.check.expect_answer is None:
        return sent.judge(reply.data)
    verdict = await patterns.in_time(functools.partial(sent.judge, reply.data), timeout)
    return verdict if verdict is not None else still_searching(sent.check, timeout)


def still_searching(check: DnsCheck, timeout: float) -> Verdict:
    """The verdict when the expect_answer search gave up (patterns.in_time)."""
    detail = f"expect_answer {check.expect_answer!r} still searching the answer"
    return Verdict(Reason.TIMEOUT, f"no verdict within {timeout:g} s: {detail}")


async def _probe_tcp(sent: _Sent, address: IPAddress, port: int) -> ProbeResult:
    """The exchange over TCP, on a connection that keeps the server's time
    (stream.py, as HTTPS probes do): the latency and the timeout are the
    handshake and the wait from the query's send to the reply's arrival in
    the kernel, not the daemon's lag."""
    timeout = sent.check.timing.timeout
    connection: TimedConnection | None = None
    served: float | None = None
    try:
        with probe_attempt(timeout, deadline=False) as attempt:  # the waits have theirs
            try:
                connection = await connect(address, port, attempt)
                verdict = await _exchange_tcp(sent, connection)
            except Silent as silent:
                attempt.fail(Reason.TIMEOUT, silence(silent, _waited_for(connection, timeout), timeout))  # fmt: skip
            else:
                if verdict.reason is Reason.OK:
                    attempt.succeed(detail=verdict.detail)
                else:
                    assert verdict.reason is not None  # (_exchange_tcp ignores nothing)
                    attempt.fail(verdict.reason, verdict.detail)
        served = connection.served() if connection is not None else None
    finally:
        if connection is not None:
            connection.close()
    result: ProbeResult = attempt.result
    if served is not None and result.ok:
        return answered(served, timeout, result.detail)
    if served is not None and result.reason in _ANSWERED:
        return replace(result, latency=served)
    if result.latency > timeout or result.reason is Reason.TIMEOUT:
        # A timeout's latency is its timeout; a failure read late: the rest was the daemon's.
        return replace(result, latency=timeout)
    return result


def _waited_for(connection: TimedConnection | None, timeout: float) -> str:
    """What did not come in the server's time: the connection, the reply,
    or the rest of a reply begun."""
    if connection is None:
        return timed_out(CONNECT, timeout)
    if connection.served() is None:
        return timed_out(ANSWER, timeout, connection.handshake)
    within = f"{timeout:g} s of the query"
    return f"connected in {duration(connection.handshake)}; the reply incomplete within {within}"


async def _exchange_tcp(sent: _Sent, stream: TimedConnection) -> Verdict:
    """Send the query, length-prefixed, and read one message back (RFC 1035
    section 4.2.2). Raises Silent (stream.py) for what did not come in the
    server's time, OSError for a broken connection."""
    await stream.send_all(_LENGTH.pack(len(sent.wire)) + sent.wire)
    header = await _receive_exactly(stream, _LENGTH.size)
    if header is None:
        return Verdict(Reason.BAD_REPLY, "connection closed before a reply")
    (length,) = _LENGTH.unpack(header)
    data = await _receive_exactly(stream, length)
    if data is None:
        return Verdict(Reason.BAD_REPLY, f"connection closed inside a {length} byte reply")
    verdict = await sent.judge_off_loop(data)
    if verdict.ignored:
        return Verdict(Reason.BAD_REPLY, f"reply to another query: {verdict.detail}")
    return verdict


async def _receive_exactly(stream: TimedConnection, size: int) -> bytes | None:
    """`size` bytes (at most MAX_TCP_MESSAGE), or None if the peer closes first."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(min(size - len(buffer), MAX_TCP_MESSAGE))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)
