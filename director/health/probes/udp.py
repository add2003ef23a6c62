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
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import trio

from director.health.probes import patterns
from director.health.probes.attempt import probe_attempt
from director.health.result import ProbeResult, Reason
from director.health.spec import UdpCheck
from director.ipvs.model import IPAddress, family_of

MAX_DATAGRAM = 65535
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
    replied = False
    with probe_attempt(check.timing.timeout) as attempt:
        raw = _socket_with_recverr(address)
        with trio.socket.from_stdlib_socket(raw) as sock:
            await sock.connect((str(address), port))
            try:
                await sock.send(check.payload)
            except OSError:
                # The kernel's own refusal (EPERM from a firewall, ...) unless
                # the queue holds an ICMP error that arrived before.
                if (icmp := read_icmp_error(raw)) is None:
                    raise
                attempt.fail(*icmp)
                return attempt.result
            try:
                reply = await sock.recv(MAX_DATAGRAM)
            except OSError as error:
                if (icmp := read_icmp_error(raw) or _from_errno(error)) is None:
                    raise
                attempt.fail(*icmp)
                return attempt.result
        replied = True
        try:
            matched = check.expect is None or await patterns.search(
                check.expect, reply.decode("latin-1"), attempt
            )
        except patterns.StillSearching:
            attempt.fail(Reason.TIMEOUT, f"no verdict within {attempt.timeout:g} s")
        else:
            if matched:
                attempt.succeed(detail=f"{len(reply)} byte reply")
            else:
                detail = f"reply {reply[:40]!r} does not match {check.expect!r}"
                attempt.fail(Reason.BAD_REPLY, detail)
    result = attempt.result
    if result.reason is Reason.TIMEOUT and replied:
        # A reply came, and the time ran out matching it against `expect`.
        detail = f"{result.detail}: expect {check.expect!r} still searching the reply"
        return replace(result, detail=detail)
    if result.reason is Reason.TIMEOUT:
        if check.silence_is_up:
            return ProbeResult.success(result.latency, detail="no reply")
        detail = f"no reply within {check.timing.timeout:g} s"
        return ProbeResult.failure(Reason.NO_REPLY, result.latency, detail)
    return result


def _socket_with_recverr(address: IPAddress) -> socket.socket:
    raw = socket.socket(family_of(address), socket.SOCK_DGRAM)
    try:
        if address.version == 4:
            raw.setsockopt(socket.SOL_IP, IP_RECVERR, 1)
        else:
            raw.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
    except BaseException:
        raw.close()
        raise
    return raw


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
