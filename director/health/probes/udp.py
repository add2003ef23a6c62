"""UDP check: send a payload from a connected socket and wait for the reply.

With `expect`, a reply matching it is up; anything else is down. Without, any
reply is up, and so is silence (no reply and no ICMP error until the timeout)
unless the check says `silence = "down"`: many UDP services never answer a
payload they do not understand, so silence alone cannot tell a live one from
a dead one.

An ICMP error is down (reason `unreachable`). A connected UDP socket reports
only port and protocol unreachable by itself; IP_RECVERR (ip(7)) makes it
report host and network unreachable too, which is what a switched-off host
on the local link gives once neighbour resolution fails (after about 3 s
with Linux's defaults, net.ipv4.neigh.*.mcast_solicit x retrans_time_ms) or
what a router gives for a destination it cannot reach. The ICMP type, code
and sender are read from the socket's error queue (struct sock_extended_err,
include/uapi/linux/errqueue.h).

The timeout and the latency are the server's time, not the daemon's: the
kernel stamps each datagram as it arrives (SO_TIMESTAMPNS, CLOCK_REALTIME),
and a reply's time is that stamp less the clock read right before the send
(`Datagrams.send` says why not after), bounded to [0, the time from there to
the read] (trio's clock), however late a busy daemon reads it. The timeout
counts from the send, on trio's clock: the daemon's lag before the send is
not the server's, and a datagram already in the kernel when the deadline
passes is read before anything is judged. A reply that came in time is
judged on its merits however late (matching `expect` is the daemon's work,
in a worker thread, with a time of its own: patterns.py). One the kernel
stamped past the timeout is silence, as a daemon that read in time saw it:
"no reply (one came in 1.3 s)", up with `silence = "up"`, else "no reply
within 1 s (one came in 1.3 s)" (the stamp is exact: no slack, where TCP's
ages are counted in ticks of the kernel's clock). Silence times out one
timeout after the send ("no reply within 1 s"; up with `silence = "up"`),
with the timeout as its latency. An ICMP error's latency is the time to
its read, at most the timeout.

The wait for the reply is bounded all the same, at LIMIT (2) x timeout from
the probe's start: the server's timeout, and as much again for the daemon's
lag before the send, as http.py bounds its own. A daemon late by more than
that fails the probe rather than hold it, and the next, without end: "no
reply within 2 s of the start: the server had 0.5 s of it, the rest was
the daemon's lag". A search of `expect` not finished in its own time is
"no verdict within 1 s: expect '...' still searching the reply".

The kernel stamps arriving packets only while some socket asks for stamps
(net_enable_timestamp: a static key, switched on by a deferred work item
when the first such socket appears and off when the last goes). A probe's
own socket alone would switch it on and off around every probe of a lone
check, a costly code patch each time, and its reply could come before the
switch and be stamped only when read. So the first probe opens one socket
that asks for stamps and keeps it for the process's life (`_KEEPER`): the
key stays on, and every probe's socket only counts one more.

`Datagrams` is the exchange both this check and DNS over UDP (dns.py) run.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial
from ipaddress import IPv4Address, IPv6Address

import trio

from director.health.probes import patterns
from director.health.probes.attempt import duration, probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import Timing, UdpCheck
from director.ipvs.model import IPAddress, family_of

MAX_DATAGRAM = 65535
# A probe's wall time at most, in timeouts (the module's docstring says why).
LIMIT = 2.0
_FLAGS = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # include/uapi/asm-generic/socket.h
_TIMESPEC = struct.Struct("=qq")  # struct timespec (64-bit time_t)
_TIMESPEC32 = struct.Struct("=ii")  # the same where time_t is 32 bits
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
_KEEPER: socket.socket | None = None  # keeps the kernel stamping (the module's docstring)
IP_RECVERR = 11  # include/uapi/linux/in.h
IPV6_RECVERR = 25  # include/uapi/linux/in6.h
SO_EE_ORIGIN_LOCAL, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6 = 1, 2, 3
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, origin, type, code, pad, info, data

ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED = 3, 11
ICMP6_DST_UNREACH, ICMP6_TIME_EXCEEDED = 1, 3
_ICMP_NAMES = {  # RFC 792, RFC 1812 section 5.2.7.1
    (ICMP_DEST_UNREACH, 0): "network unreachable",
    (ICMP_DEST_UNREACH, 1): "host unreachable",
    (ICMP_DEST_UNREACH, 2): "protocol unreachable",
    (ICMP_DEST_UNREACH, 3): "port unreachable",
    (ICMP_DEST_UNREACH, 4): "fragmentation needed",
    (ICMP_DEST_UNREACH, 5): "source route failed",
    (ICMP_DEST_UNREACH, 6): "network unknown",
    (ICMP_DEST_UNREACH, 7): "host unknown",
    (ICMP_DEST_UNREACH, 8): "source host isolated",
    (ICMP_DEST_UNREACH, 9): "network administratively prohibited",
    (ICMP_DEST_UNREACH, 10): "host administratively prohibited",
    (ICMP_DEST_UNREACH, 11): "network unreachable for TOS",
    (ICMP_DEST_UNREACH, 12): "host unreachable for TOS",
    (ICMP_DEST_UNREACH, 13): "communication administratively prohibited",
    (ICMP_DEST_UNREACH, 14): "host precedence violation",
    (ICMP_DEST_UNREACH, 15): "precedence cutoff in effect",
    (ICMP_TIME_EXCEEDED, 0): "time to live exceeded",
    (ICMP_TIME_EXCEEDED, 1): "fragment reassembly time exceeded",
}
_ICMP6_NAMES = {  # RFC 4443 section 3
    (ICMP6_DST_UNREACH, 0): "no route to destination",
    (ICMP6_DST_UNREACH, 1): "communication administratively prohibited",
    (ICMP6_DST_UNREACH, 2): "beyond scope of source address",
    (ICMP6_DST_UNREACH, 3): "address unreachable",
    (ICMP6_DST_UNREACH, 4): "port unreachable",
    (ICMP6_DST_UNREACH, 5): "source address failed ingress/egress policy",
    (ICMP6_DST_UNREACH, 6): "reject route to destination",
    (ICMP6_TIME_EXCEEDED, 0): "hop limit exceeded",
    (ICMP6_TIME_EXCEEDED, 1): "fragment reassembly time exceeded",
}
# What the kernel reports on a connected socket for an ICMP error
# (net/ipv4/icmp.c icmp_err_convert, net/ipv6/icmp.c icmpv6_err_convert), when
# the error queue holds nothing better.
_ICMP_ERRNOS = {
    errno.ECONNREFUSED: "ICMP port unreachable",
    errno.EHOSTUNREACH: "ICMP host unreachable",
    errno.ENETUNREACH: "ICMP network unreachable",
    errno.EHOSTDOWN: "ICMP host unknown",
    errno.ENOPROTOOPT: "ICMP protocol unreachable",
    errno.EACCES: "ICMP administratively prohibited",
}


async def probe_udp(check: UdpCheck, address: IPAddress, port: int) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    return await exchange_datagrams(address, port, check.timing, partial(_exchange, check))


async def exchange_datagrams(
    address: IPAddress,
    port: int,
    timing: Timing,
    exchange: Callable[[Datagrams], Awaitable[ProbeResult]],
) -> ProbeResult:
    """`exchange`'s result over a probe's `Datagrams` to `address`:`port`,
    or for a network failure it raises, attempt.py's result for it (its
    latency the time to it, at most the timeout)."""
    timeout = timing.timeout
    result: ProbeResult | None = None
    # (Datagrams bounds its waits)
    with probe_attempt(timeout, deadline=False) as attempt, Datagrams(address, port, timeout) as datagrams:  # fmt: skip
        result = await exchange(datagrams)
    if result is None:
        failed = attempt.result
        return replace(failed, latency=min(failed.latency, timeout))
    return result


async def _exchange(check: UdpCheck, datagrams: Datagrams) -> ProbeResult:
    timeout = datagrams.timeout
    icmp = await datagrams.send(check.payload)
    got = await datagrams.receive() if icmp is None else icmp
    late = ""
    if isinstance(got, Reply) and got.served > timeout:
        # Silence, as a daemon that read in time saw it, whatever came since.
        late, got = f" (one came in {duration(got.served)})", None
    if got is None:
        if check.silence_is_up:
            return ProbeResult.success(timeout, detail=f"no reply{late}")
        return ProbeResult.failure(Reason.NO_REPLY, timeout, datagrams.silence("no reply") + late)
    if not isinstance(got, Reply):  # an ICMP error
        return ProbeResult.failure(got[0], datagrams.failed_after(), got[1])
    reply, served = got.data, got.served
    if check.expect is None:
        return ProbeResult.success(served, detail=f"{len(reply)} byte reply")
    search = partial(patterns.search_now, check.expect, reply.decode("latin-1"))
    matched = await patterns.in_time(search, timeout)  # (the daemon's work: patterns.py)
    if matched is None:
        detail = f"expect {check.expect!r} still searching the reply"
        return ProbeResult.failure(Reason.TIMEOUT, timeout, f"no verdict within {timeout:g} s: {detail}")  # fmt: skip
    if matched:
        return ProbeResult.success(served, detail=f"{len(reply)} byte reply")
    detail = f"reply {reply[:40]!r} does not match {check.expect!r}"
    return ProbeResult.failure(Reason.BAD_REPLY, served, detail)


@dataclass(frozen=True, slots=True)
class Reply:
    """A datagram and the server's time to it: seconds from the send to its
    arrival in the kernel."""

    data: bytes
    served: float


class Datagrams:
    """One probe's connected UDP socket (IP_RECVERR, SO_TIMESTAMPNS,
    non-blocking): its send and its replies, each with the server's time as
    the kernel stamped its arrival (the module's docstring). Closed on exit."""

    def __init__(self, address: IPAddress, port: int, timeout: float) -> None:
        self.timeout = timeout
        self.started = trio.current_time()
        self.limit = self.started + LIMIT * timeout  # the probe's wall-clock bound
        self.sent_at = self.started  # the send, on trio's clock (the deadlines')
        self.deadline = self.limit  # the server's: the send + timeout, at most the limit
        self._sent_ns = 0  # the send, on the clock of the kernel's stamps
        self._sockaddr = (str(address), port)
        self.sock = _socket_with_recverr(address)

    def __enter__(self) -> Datagrams:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()

    async def send(self, payload: bytes) -> tuple[Reason, str] | None:
        """Send `payload` to the server; the ICMP error the socket holds when
        the kernel refuses it (an ICMP error come before), else None. Raises
        OSError for the kernel's own refusal (EPERM from a firewall, ...)."""
        sock = self.sock
        try:
            sock.connect(self._sockaddr)
            while True:
                # The clocks are read before the send, not after: a reply can
                # arrive before send(2) returns (on loopback the server may
                # run and answer within it: stamps 14-67 us before the
                # return were measured on the host), and a time read after
                # would make such a server's time 0.
                self._sent_ns = time.time_ns()
                self.sent_at = now = trio.current_time()
                try:
                    sock.send(payload)
                    break
                except BlockingIOError:  # (a full send buffer: hardly ever)
                    with trio.CancelScope(deadline=self.limit) as waited:
                        await trio.lowlevel.wait_writable(sock)
                    if waited.cancelled_caught:
                        raise trio.TooSlowError() from None
        except OSError:
            if (icmp := read_icmp_error(sock)) is None:
                raise
            return icmp
        self.deadline = min(now + self.timeout, self.limit)
        return None

    async def receive(self) -> Reply | tuple[Reason, str] | None:
        """The next datagram (`Reply`), an ICMP error (reason and detail), or None when nothing came by the deadline. What the kernel
        holds when the deadline passes is read (a zero-timeout read) before
        that is judged. Raises OSError for an error that is no ICMP error."""
        sock = self.sock
        cut = False
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
                break
            except BlockingIOError:
                if cut:
                    return None
            except OSError as error:
                if (icmp := read_icmp_error(sock) or _from_errno(error)) is None:
                    raise
                return icmp
            with trio.CancelScope(deadline=self.deadline) as waited:
                await trio.lowlevel.wait_readable(sock)
            cut = waited.cancelled_caught
        elapsed = trio.current_time() - self.sent_at
        served = arrival(ancillary, self._sent_ns)
        if served is None or served > elapsed:  # no stamp, or a clock stepped meanwhile
            return Reply(data, elapsed)
        return Reply(data, served if served > 0.0 else 0.0)

    def silence(self, what: str) -> str:
        """A silent server's detail: `what` within its timeout, or, when the
        probe's limit came first (the daemon was late before the send), what
        of it the server had."""
        if self.sent_at + self.timeout <= self.limit:
            return f"{what} within {self.timeout:g} s"
        return (
            f"{what} within {LIMIT * self.timeout:g} s of the start: the server had"
            f" {max(self.limit - self.sent_at, 0.0):.2g} s of it, the rest was the daemon's lag"
        )

    def failed_after(self) -> float:
        """A failure's latency (an ICMP error's): the time to its read, at
        most the timeout."""
        return min(trio.current_time() - self.started, self.timeout)


def arrival(ancillary: list[tuple[int, int, bytes]], sent_ns: int) -> float | None:
    """Seconds from the send (`sent_ns`: time.time_ns() right before it) to a
    datagram's arrival in the kernel, by its SO_TIMESTAMPNS stamp in
    recvmsg's `ancillary` data (CLOCK_REALTIME), or None without one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = (_TIMESPEC if len(data) >= _TIMESPEC.size else _TIMESPEC32).unpack_from(data)  # fmt: skip
            return float(seconds * 1_000_000_000 + nanoseconds - sent_ns) / 1e9
    return None


def _socket_with_recverr(address: IPAddress) -> socket.socket:
    """A non-blocking UDP socket that reports ICMP errors (IP_RECVERR) and
    stamps what it receives (SO_TIMESTAMPNS)."""
    _keep_stamping()
    raw = socket.socket(family_of(address), _FLAGS)
    try:
        if address.version == 4:
            raw.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        else:
            raw.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except BaseException:
        raw.close()
        raise
    return raw


def _keep_stamping() -> None:
    """Open the socket that keeps the kernel stamping packets (the module's
    docstring), once per process."""
    global _KEEPER
    if _KEEPER is None:
        for family in (socket.AF_INET, socket.AF_INET6):  # (a kernel may lack either)
            try:
                keeper = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            except OSError:
                continue
            try:
                keeper.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:  # no stamps: every reply's time is then its read's
                keeper.close()
                return
            _KEEPER = keeper
            return


def _from_errno(error: OSError) -> tuple[Reason, str] | None:
    text = _ICMP_ERRNOS.get(error.errno or 0)
    return (Reason.UNREACHABLE, text) if text is not None else None


def read_icmp_error(sock: socket.socket) -> tuple[Reason, str] | None:
    """The oldest error in the socket's error queue, with its reason and a
    text like "ICMP host unreachable from 192.0.2.1", or None when the queue
    is empty. Does not block."""
    try:
        _, ancillary, _, _ = sock.recvmsg(
            0, socket.CMSG_SPACE(512), socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
        )
    except OSError:
        return None
    for level, kind, data in ancillary:
        if (level, kind) in {(socket.SOL_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}:
            return describe_extended_error(data)
    return None


def describe_extended_error(data: bytes) -> tuple[Reason, str] | None:
    """A struct sock_extended_err followed by the offender's sockaddr
    (SO_EE_OFFENDER) as a reason and a text; None if too short to be one.
    ICMP errors are `unreachable`; an error of local origin (a message too
    big for the path, ...) is `error` unless it names an unreachable host or
    network."""
    if len(data) < _SOCK_EXTENDED_ERR.size:
        return None
    ee_errno, origin, icmp_type, code, _, _, _ = _SOCK_EXTENDED_ERR.unpack_from(data)
    sender = _offender(data[_SOCK_EXTENDED_ERR.size :])
    suffix = f" from {sender}" if sender is not None else ""
    if origin == SO_EE_ORIGIN_ICMP:
        name = _ICMP_NAMES.get((icmp_type, code), f"type {icmp_type} code {code}")
        return Reason.UNREACHABLE, f"ICMP {name}{suffix}"
    if origin == SO_EE_ORIGIN_ICMP6:
        name = _ICMP6_NAMES.get((icmp_type, code), f"type {icmp_type} code {code}")
        return Reason.UNREACHABLE, f"ICMPv6 {name}{suffix}"
    name = errno.errorcode.get(ee_errno, str(ee_errno))
    unreachable = ee_errno in {errno.EHOSTUNREACH, errno.ENETUNREACH}
    return (Reason.UNREACHABLE if unreachable else Reason.ERROR), f"local error {name}{suffix}"


def _offender(sockaddr: bytes) -> IPv4Address | IPv6Address | None:
    if len(sockaddr) < 2:
        return None
    (family,) = struct.unpack_from("=H", sockaddr)  # sa_family_t, host order
    if family == socket.AF_INET and len(sockaddr) >= 8:
        return IPv4Address(sockaddr[4:8])
    if family == socket.AF_INET6 and len(sockaddr) >= 24:
        return IPv6Address(sockaddr[8:24])
    return None
