"""TCP check: the server is up when it accepts a connection.

The probe is the one the checker runs most (10,000 a second is the target on
one core), so it drives a non-blocking stdlib socket itself: `connect_ex`,
a wait for the socket to turn writable under the check's timeout, and
SO_ERROR for the verdict (connect(2), "EINPROGRESS"). No name resolution (the
address is a literal), no exception on the way to a success, and the socket
is closed on every path, cancellation included. Failures carry the reasons
and details of `probe_attempt` (attempt.py).

The wait goes through one epoll set of this module's for all the probes of
a trio run (`_Connects`), watched by one system task: a socket costs one
epoll_ctl, and one wake-up serves every connect that completed meanwhile.
Through `trio.lowlevel.wait_writable` each socket cost a failed
EPOLL_CTL_MOD (trio tries MOD, then ADD: an exception each time) and a
wake-up of its own, about 30 µs of the 100 µs a probe may cost.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from ipaddress import IPv4Address

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
        if code in _PENDING:
            with trio.move_on_at(started + timeout):
                await _connects().wait(sock.fileno())
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            return ProbeResult.success(trio.current_time() - started)
        failure = trio.TooSlowError() if code in _PENDING else OSError(code, os.strerror(code))
        reason, detail = translate(failure, timeout)
        return ProbeResult.failure(reason, trio.current_time() - started, detail)
    finally:
        sock.close()


class _Connects:
    """Connecting sockets in one epoll set, and the task waiting for each.

    A socket is registered EPOLLOUT | EPOLLONESHOT: it reports once (when
    the connect completes, or fails: EPOLLERR and EPOLLHUP always report),
    then stays disarmed until close(2) takes it out of the set. A wait that
    ends without its event (timeout, cancel) takes its socket out at once:
    were the file kept open by a fork for a moment after our close, its
    entry could later wake whichever socket had reused the number."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._waiting: dict[int, trio.lowlevel.Task] = {}
        self._watched = False

    async def wait(self, fd: int) -> None:
        """Until `fd`'s connect completes or fails (then see SO_ERROR)."""
        self._epoll.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
        self._waiting[fd] = trio.lowlevel.current_task()
        if not self._watched:
            trio.lowlevel.spawn_system_task(self._watch)
            self._watched = True

        def abort(_: object) -> trio.lowlevel.Abort:
            del self._waiting[fd]
            self._epoll.unregister(fd)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _watch(self) -> None:
        waiting, epoll = self._waiting, self._epoll
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0):
                    task = waiting.pop(fd, None)
                    if task is not None:
                        trio.lowlevel.reschedule(task)
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
