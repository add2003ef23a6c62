"""TCP check: the server is up when it accepts a connection.

The probe is the one the checker runs most (10,000 a second is the target on
one core), so it drives a non-blocking stdlib socket itself: `connect_ex`,
a wait for the socket to turn writable under the check's timeout, and
SO_ERROR for the verdict (connect(2), "EINPROGRESS"). No name resolution (the
address is a literal), no exception on the way to a success, and the socket
is closed on every path, cancellation included. Failures carry the reasons
and details of `probe_attempt` (attempt.py).

The wait goes through one epoll set of this module's for all the probes of
a trio run (`_Connects`), watched by one system task that also keeps their
deadlines: a socket costs one epoll_ctl, and one wake-up serves every
connect that completed meanwhile. Through `trio.lowlevel.wait_writable`
under a cancel scope, each socket cost a failed EPOLL_CTL_MOD (trio tries
MOD, then ADD: an exception each time), a wake-up and a deadline of its
own: more than the rest of the probe.
"""

from __future__ import annotations

import errno
import heapq
import math
import os
import select
import socket
import struct
from dataclasses import dataclass
from ipaddress import IPv4Address

import outcome
import trio

from director.health.probes.attempt import translate
from director.health.result import ProbeResult
from director.health.spec import TcpCheck
from director.ipvs.model import IPAddress

_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# SO_LINGER on with a zero timeout: close() sends a RST instead of a FIN, so
# the probe leaves no TIME_WAIT socket behind. At 10,000 probes a second a
# FIN close would keep about 600,000 of them (60 s each), past the kernel's
# tcp_max_tw_buckets and into the ephemeral ports; HAProxy closes its health
# check connections the same way. The server sees a connection that was
# accepted and then reset, which is all a TCP check asks of it.
_RST_ON_CLOSE = struct.pack("ii", 1, 0)
_PENDING = (errno.EINPROGRESS, errno.EINTR)


async def probe_tcp(check: TcpCheck, address: IPAddress, port: int) -> ProbeResult:
    address = check.address or address
    port = check.port if check.port is not None else port
    timeout = check.timing.timeout
    started = trio.current_time()
    try:
        sock = socket.socket(
            socket.AF_INET if isinstance(address, IPv4Address) else socket.AF_INET6, _FLAGS
        )
    except OSError as exc:
        reason, detail = translate(exc, timeout)
        return ProbeResult.failure(reason, trio.current_time() - started, detail)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
        code = sock.connect_ex((str(address), port))
        if code in _PENDING and await _connects().wait(sock.fileno(), started + timeout):
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            return ProbeResult.success(trio.current_time() - started)
        failure = trio.TooSlowError() if code in _PENDING else OSError(code, os.strerror(code))
        reason, detail = translate(failure, timeout)
        return ProbeResult.failure(reason, trio.current_time() - started, detail)
    finally:
        sock.close()


@dataclass(eq=False, slots=True)
class _Wait:
    fd: int
    task: trio.lowlevel.Task


class _Connects:
    """Connecting sockets in one epoll set, their deadlines in one heap, and
    one task that wakes the probes: with True when a connect completed or
    failed (then see SO_ERROR), with False at its deadline. A probe costs no
    cancel scope of its own (one each cost about as much as the rest of the
    probe's Python) and no wake-up of its own.

    A socket is registered EPOLLOUT | EPOLLONESHOT: it reports once (when
    the connect completes, or fails: EPOLLERR and EPOLLHUP always report),
    then stays disarmed until close(2) takes it out of the set. A wait that
    ends without its event (deadline, cancel) takes its socket out at once:
    were the file kept open by a fork for a moment after our close, its
    entry could later wake whichever socket had reused the number."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, _Wait] = {}
        self._deadlines: list[tuple[float, int, _Wait]] = []
        self._sequence = 0
        self._sleep: trio.CancelScope | None = None
        self._watched = False

    async def wait(self, fd: int, deadline: float) -> bool:
        """Whether `fd`'s connect completed or failed before `deadline`
        (trio time). Cancellation passes through; `fd` is then out of the set."""
        self._epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
        wait = self._waiting[fd] = _Wait(fd, trio.lowlevel.current_task())
        self._sequence += 1
        heapq.heappush(self._deadlines, (deadline, self._sequence, wait))
        if not self._watched:
            trio.lowlevel.spawn_system_task(self._watch)
            self._watched = True
        elif self._sleep is not None and deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

        def abort(_: object) -> trio.lowlevel.Abort:
            self._forget(wait)
            return trio.lowlevel.Abort.SUCCEEDED

        completed: bool = await trio.lowlevel.wait_task_rescheduled(abort)
        return completed

    def _forget(self, wait: _Wait) -> None:
        del self._waiting[wait.fd]
        self._epoll.unregister(wait.fd)

    async def _watch(self) -> None:
        waiting, epoll, deadlines = self._waiting, self._epoll, self._deadlines
        try:
            while True:
                while deadlines and waiting.get(deadlines[0][2].fd) is not deadlines[0][2]:
                    heapq.heappop(deadlines)  # that wait is over
                with trio.move_on_at(deadlines[0][0] if deadlines else math.inf) as self._sleep:
                    await trio.lowlevel.wait_readable(epoll)
                self._sleep = None
                for fd, _ in epoll.poll(0):
                    wait = waiting.pop(fd, None)
                    if wait is not None:
                        trio.lowlevel.reschedule(wait.task, outcome.Value(True))
                now = trio.current_time()
                while deadlines and deadlines[0][0] <= now:
                    wait = heapq.heappop(deadlines)[2]
                    if waiting.get(wait.fd) is wait:
                        self._forget(wait)
                        trio.lowlevel.reschedule(wait.task, outcome.Value(False))
        finally:
            epoll.close()


_CONNECTS: trio.lowlevel.RunVar[_Connects] = trio.lowlevel.RunVar("director_tcp_connects")


def _connects() -> _Connects:
    try:
        return _CONNECTS.get()
    except LookupError:
        connects = _Connects()
        _CONNECTS.set(connects)
        return connects
