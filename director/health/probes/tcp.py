"""TCP check: the server is up when it accepts a connection.

The probe is the one the checker runs most (10,000 a second is the target on
one core), so it drives a non-blocking stdlib socket itself: `connect_ex`,
a wait for the socket to turn writable under the check's timeout, and
SO_ERROR for the verdict (connect(2), "EINPROGRESS"). No name resolution (the
address is a literal), no exception on the way to a success, and the socket
is closed on every path, cancellation included. Failures carry the reasons
and details of `probe_attempt` (attempt.py); a timeout's detail is "no
connection within T s" (no SYN-ACK came).

A result's latency is the probe's own time, not the daemon's: a success
reports the handshake as the kernel timed it (TCP_INFO: the SYN's round
trip, or, after a retransmitted SYN, from the start to the SYN-ACK's
arrival), however late the watcher read it (a loop held up for seconds, or
the next tick), and a handshake that was slower than the timeout, read
after its deadline, is a timeout all the same ("connected in 1.3 s, past
the 1 s timeout": `answered`); a timeout reports its timeout; a failure
the kernel reports (refused, unreachable) the time to its read, at most
the timeout (were it
later, the deadline would have failed the probe first but for the
daemon's own lag). How late a probe *starts* is the checker's `on_start`
figure, not part of its latency.

`Connects` holds the connecting sockets in one epoll set and their deadlines
in one heap, and its `watch` task delivers each verdict to a callback: a
probe costs one epoll_ctl and no task, no cancel scope and no wake-up of its
own, and one wake-up serves every connect that completed meanwhile. A socket
whose connect completed or failed is disconnected and kept for the next
probe (watch.py's `disconnector`): no socket(2), setsockopt(2) or close(2) a
probe. The checker starts its TCP probes this way (`Connects.start`), with no task per
probe; `probe_tcp` is the same probe for one caller, awaited. Through
`trio.lowlevel.wait_writable` under a cancel scope, each socket cost a failed
EPOLL_CTL_MOD (trio tries MOD, then ADD: an exception each time), a wake-up
and a deadline of its own: more than the rest of the probe.
"""

from __future__ import annotations

import _socket
import errno
import os
import select
import socket
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

import trio

from director.health.probes.attempt import CONNECT, duration, timed_out
from director.health.probes.watch import (
    Probe,
    ProbeDone,
    Watcher,
    awaited,
    network_failure,
    run_watcher,
)
from director.health.result import ProbeResult, Reason
from director.health.spec import Check, TcpCheck, probed_endpoint
from director.ipvs.model import IPAddress

__all__ = [
    "TICK",
    "Connects",
    "Destination",
    "ProbeDone",
    "TcpDestination",
    "answered",
    "arrival",
    "destination",
    "handshake_time",
    "probe_tcp",
]

_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# SO_LINGER on with a zero timeout: close() sends a RST instead of a FIN, so
# the probe leaves no TIME_WAIT socket behind. At 10,000 probes a second a
# FIN close would keep about 600,000 of them (60 s each), past the kernel's
# tcp_max_tw_buckets and into the ephemeral ports; HAProxy closes its health
# check connections the same way. The server sees a connection that was
# accepted and then reset, which is all a TCP check asks of it.
_RST_ON_CLOSE = struct.pack("ii", 1, 0)
_PENDING = (errno.EINPROGRESS, errno.EINTR)
# An event with either of these has an error to ask for (SO_ERROR); one
# without is a connect completed if the socket's state says so (`_handle`).
_FAILED = select.EPOLLERR | select.EPOLLHUP
# struct tcp_info (linux/tcp.h): tcpi_state at 0, tcpi_last_ack_recv (ms
# since the last ACK arrived, here the SYN-ACK) at 56, tcpi_rtt (µs, the
# handshake's sample alone) at 68, tcpi_total_retrans at 100.
_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_INFO = struct.Struct("=B55xI8xI28xI")  # and tcpi_state, first
# tcpi_state (include/net/tcp_states.h): connected, or connected and the
# server has closed its side already; still connecting.
_CONNECTED = frozenset({1, 8})  # TCP_ESTABLISHED, TCP_CLOSE_WAIT
_CONNECTING = frozenset({2, 3})  # TCP_SYN_SENT, TCP_SYN_RECV
# tcpi_last_data_recv (ms since the last data segment arrived) at 52.
_DATA_AGE = struct.Struct("=52xI")


def _kernel_tick() -> float:
    """Seconds a tick of the kernel's clock (a jiffy, 1/HZ: 4 ms at Debian's
    HZ=250), which TCP_INFO's ages count in: the resolution of
    CLOCK_MONOTONIC_COARSE (6 on Linux). A tick that is not a whole number
    of milliseconds (HZ=300) gets one more: the kernel rounds those ages up
    to the millisecond."""
    try:
        tick = time.clock_getres(getattr(time, "CLOCK_MONOTONIC_COARSE", 6))
    except OSError:  # not Linux's clock: the coarsest common HZ (100)
        return 0.01
    ms = tick * 1e3
    return tick if abs(ms - round(ms)) < 1e-6 else tick + 1e-3


TICK = _kernel_tick()


class TcpDestination(Protocol):
    """Where a TCP check connects, in the socket module's terms: computed
    once per target, not once per probe (formatting an address costs more
    than the rest of the probe's Python). The checker's probe of a target is
    one itself (no object of its own a target: 80 bytes each at 10,000);
    `destination` makes one alone."""

    @property
    def check(self) -> Check: ...
    @property
    def address(self) -> IPAddress: ...  # the check's own, else the server's
    @property
    def port(self) -> int: ...  # the check's own, else the server's
    @property
    def family(self) -> int: ...
    @property
    def sockaddr(self) -> tuple[str, int]: ...


@dataclass(frozen=True, slots=True)
class Destination:
    """A TcpDestination alone."""

    check: TcpCheck
    address: IPAddress
    port: int
    family: int
    sockaddr: tuple[str, int]


def destination(check: TcpCheck, address: IPAddress, port: int) -> Destination:
    """The check's own address and port where it has them, else the server's."""
    where = probed_endpoint(check, address, port)
    assert where is not None  # (an exec check's alone is None)
    return Destination(check, *where, *socket_address(*where))


def socket_address(address: IPAddress, port: int) -> tuple[int, tuple[str, int]]:
    """The family and the socket module's address for `address`:`port`.
    (inet_ntoa: half the cost of str() of an IPv4Address, which a start
    pays for each of 10,000 targets.)"""
    if isinstance(address, IPv4Address):
        return socket.AF_INET, (socket.inet_ntoa(address.packed), port)
    return socket.AF_INET6, (str(address), port)


async def probe_tcp(check: TcpCheck, address: IPAddress, port: int) -> ProbeResult:
    """One TCP probe, awaited. Cancellation passes through (the socket is
    closed). Network failures are failed results; see `Connects.start`."""
    watcher: Connects = run_watcher(_CONNECTS, Connects)
    return await awaited(watcher, destination(check, address, port))


_Connect = Probe[TcpDestination]


class Connects(Watcher[TcpDestination, _Connect]):
    """Connecting sockets in one epoll set, their deadlines in one heap, and
    `watch`, which delivers each probe's verdict to its callback: a success
    when the connect completed, a failure with its reason when it failed
    (SO_ERROR) or its deadline passed (watch.py's `Watcher`).

    A socket is registered EPOLLOUT | EPOLLONESHOT: it reports once (when
    the connect completes, or fails: EPOLLERR and EPOLLHUP always report),
    then stays disarmed. It is then disconnected and kept, in the set, for
    a later probe of the same family, which re-arms it (EPOLL_CTL_MOD), or
    closed, which takes it out of the set (watch.py's `Watcher._done_with`).
    A probe that ends without its event (deadline, cancel) takes its socket
    out at once and closes it:
    were the file kept open by a fork for a moment after our close, its
    entry could later wake whichever socket had reused the number."""

    _what = "TCP probes'"
    _keeps_sockets = True

    def __init__(self, batch: int = 512, tick: float = 0.0) -> None:
        """`batch`: verdicts delivered between two checkpoints of `watch`.
        `tick` > 0 (seconds): `watch` makes at most READS_A_TICK rounds at
        once between two multiples of it, and waits for the next multiple
        past those (watch.py's `Watcher._wait`): a verdict is read at once
        at a low rate, at most one tick late under load (its latency
        includes that wait)."""
        super().__init__(batch, tick)

    def _new(self, target: TcpDestination, done: ProbeDone) -> _Connect:
        # Probe itself, not the alias: calling a generic alias costs a
        # typing call and an attribute set on every probe.
        return Probe(target, 0.0, done)

    def _open(self, probe: _Connect) -> int | ProbeResult:
        target = probe.target
        sock = probe.sock = self._kept_socket(target.family)
        if sock is None:
            # The C type itself: socket.socket's Python __init__ and close()
            # cost about 3 µs a probe on the host.
            sock = probe.sock = _socket.socket(target.family, _FLAGS)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
        code = sock.connect_ex(target.sockaddr)
        if code in _PENDING:
            return select.EPOLLOUT | select.EPOLLONESHOT
        return _verdict(code, 0.0, target.check.timing.timeout)

    def _silence(self, probe: _Connect, timeout: float) -> str:
        return timed_out(CONNECT, timeout)

    def _handle(self, probe: _Connect, flags: int, now: float) -> None:
        sock = probe.sock
        assert sock is not None
        # The clock read now, not the round's `now`: TCP_INFO's ages are the
        # kernel's as of this read, and a round's work (or a pause of the
        # daemon) since `now` would count twice, taken off the server's time.
        elapsed = self._now() - probe.started
        timeout = probe.target.check.timing.timeout
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if flags & _FAILED else 0
        if code:
            self._finish(probe, _verdict(code, min(elapsed, timeout), timeout))
            return
        # An event is a cue, not a verdict: only the socket's own state says
        # it connected. A socket closed while an exec check's fork held it
        # open stays in the epoll set, armed, and reports under its number,
        # which a later probe's socket has taken (epoll(7): a registration
        # is the file's, not the number's): under load, the window between
        # a fork and its exec, that passed dead servers with a latency of 0.
        state, *info = _tcp_info(sock)
        if state in _CONNECTED:
            result = answered(handshake_time(sock, elapsed, info), timeout, what="connected")
        elif state in _CONNECTING:
            self._arm(sock.fileno(), select.EPOLLOUT | select.EPOLLONESHOT)
            return  # not its event: its own is still to come
        elif code := sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            result = _verdict(code, min(elapsed, timeout), timeout)  # (a cue without EPOLLERR)
        else:  # closed with its error taken, or no TCP_INFO
            result = network_failure(OSError(errno.ECONNABORTED, "the connect ended with no connection and no error"), min(elapsed, timeout), timeout)  # fmt: skip
        self._finish(probe, result)


def _tcp_info(sock: _socket.socket) -> tuple[int, int, int, int]:
    """TCP_INFO's state, tcpi_last_ack_recv, tcpi_rtt, tcpi_total_retrans;
    state 0 (no TCP state) where it cannot be read."""
    try:
        state, ack_age_ms, rtt_us, retransmitted = _INFO.unpack(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO.size))  # fmt: skip
    except (OSError, struct.error):
        return 0, 0, 0, 0
    return state, ack_age_ms, rtt_us, retransmitted


def handshake_time(sock: _socket.socket, elapsed: float, info: list[int] | None = None) -> float:
    """Seconds from a connected socket's SYN to its SYN-ACK, as the kernel
    timed them, `elapsed` (the start to this call, read just before it) at
    most: the round trip of the SYN when it was sent once, else the time
    from the start to the SYN-ACK's arrival (to the millisecond: `elapsed`
    less the kernel's age of that ACK, read here, so `elapsed` must be as
    fresh). The watcher's read may come long after (a tick, a loop held
    up): that is the daemon's time, not the probe's. `info`: the rest of
    `_tcp_info(sock)` (after the state), read by the caller just now."""
    if info is None:
        state, *info = _tcp_info(sock)
        if not state:  # no TCP_INFO: the read's time
            return elapsed
    ack_age_ms, rtt_us, retransmitted = info
    own = rtt_us / 1e6 if rtt_us and not retransmitted else elapsed - ack_age_ms / 1e3
    return own if 0.0 <= own < elapsed else (elapsed if own > 0.0 else 0.0)


def arrival(sock: _socket.socket, now: float) -> float:
    """The latest time the data just read from a TCP socket can have arrived
    in the kernel, on the clock of `now` (read after the read): `now` less
    the time the kernel counts since the last data segment came
    (tcpi_last_data_recv, in ticks of its clock, TICK, given in ms) less one
    tick, as that count may be a tick more than the wait it stands for. So
    a reply that waited in the socket while the daemon was busy counts to
    within two ticks of its arrival, never before it; one read within its
    tick counts as `now`. Without TCP_INFO, `now`."""
    try:
        (age_ms,) = _DATA_AGE.unpack(sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _DATA_AGE.size))  # fmt: skip
    except (OSError, struct.error):
        return now
    waited = age_ms / 1e3 - TICK
    return now - waited if waited > 0.0 else now


def answered(
    latency: float,
    timeout: float,
    detail: str = "",
    *,
    what: str = "answered",
    slack: float = 2 * TICK,
) -> ProbeResult:
    """The verdict on an answer that took the server `latency` seconds as
    the kernel timed it (`handshake_time`, `arrival`): a success, or a
    timeout when that is surely over `timeout`, by more than `slack` (the
    two ticks `arrival` may add; 0 for an exact figure). A watcher reads
    what the kernel holds before it judges a deadline, so that the daemon's
    lag fails no server; an answer read so that came after the deadline is
    as late as one read in time: "connected in 1.3 s, past the 1 s
    timeout", "answered in 1.3 s, past the 1 s timeout (status 200)". A
    timeout's latency is its timeout."""
    if latency <= timeout + slack:
        return ProbeResult.success(latency, detail=detail)
    late = f"{what} in {duration(latency)}, past the {timeout:g} s timeout"
    return ProbeResult.failure(Reason.TIMEOUT, timeout, f"{late} ({detail})" if detail else late)


def _verdict(code: int, latency: float, timeout: float) -> ProbeResult:
    """The result for a connect's outcome: 0, an errno, or EINPROGRESS for
    one still connecting at its deadline."""
    if code == 0:
        return ProbeResult.success(latency)
    exc = trio.TooSlowError() if code in _PENDING else OSError(code, os.strerror(code))
    return network_failure(exc, latency, timeout)


_CONNECTS: trio.lowlevel.RunVar[Connects] = trio.lowlevel.RunVar("director_tcp_connects")
