"""A TCP connection to a real server that keeps the server's time: the
handshake as the kernel timed it, then each round of an exchange from its
first send to the arrival in the kernel of the last data read for it
(tcp.py's `arrival`), not the daemon's lag before a send or a read, nor its
work between them. Each wait is bounded by that time: a server gets its
whole timeout whatever the daemon's lag, and no more; and every wait by
LIMIT x timeout from the probe's start, so that a daemon late by more than
a whole timeout fails the probe ("the rest was the daemon's lag") rather
than hold it without end. A reply already in the kernel when a deadline
passes is read before anything is judged.

The stream under the HTTPS and expect_body probes (http.py) and DNS over
TCP (dns.py).
"""

from __future__ import annotations

import errno
import os
import select
import socket
from time import perf_counter

import trio

from director.health.probes.attempt import Attempt
from director.health.probes.http_head import READ_SIZE
from director.health.probes.tcp import arrival, handshake_time
from director.health.probes.watch import ready_events
from director.ipvs.model import IPAddress

# A probe's wall time at most, in timeouts (the module's docstring says why).
LIMIT = 2.0

__all__ = ["LIMIT", "Silent", "TimedConnection", "connect", "silence"]


async def connect(address: IPAddress, port: int, attempt: Attempt) -> TimedConnection:
    """A TCP connection to a literal address: one non-blocking connect, no
    name resolution, no happy-eyeballs nursery, within the attempt's timeout
    from its start (trio's clock; a connect that completed by then is taken,
    however late the daemon looks); its handshake as the kernel timed it,
    at most the time since the start. Raises OSError, or Silent for no
    connection."""
    started, timeout = attempt.started, attempt.timeout
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        error = sock.connect_ex((str(address), port))
        if error == errno.EINPROGRESS:
            with trio.CancelScope(deadline=started + timeout) as waited:
                await trio.lowlevel.wait_writable(sock)
            if waited.cancelled_caught and not ready_events(sock) & select.POLLOUT:
                raise Silent()
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        handshake = handshake_time(sock, trio.current_time() - started)
        if handshake >= timeout:  # (the SYN-ACK came after the deadline)
            raise Silent()
    except BaseException:
        sock.close()
        raise
    return TimedConnection(sock, handshake, timeout, started + LIMIT * timeout)


def silence(silent: Silent, detail: str, timeout: float) -> str:
    """A timeout's detail: `detail` (attempt.py's `timed_out`: what did not
    come in the server's time), or, when the probe's wall-clock limit came
    first, how much of its time the server had by then."""
    if silent.served is None:
        return detail
    connected = detail.partition(";")[0]
    return (
        f"{connected}; no verdict within {LIMIT * timeout:g} s of the start: the server"
        f" had {silent.served:.2g} s of it, the rest was the daemon's lag"
    )


class Silent(trio.TooSlowError):
    """The server did not answer within its time (`served` None), or the
    probe reached its wall-clock limit first (`served`: the server's time
    by then)."""

    def __init__(self, served: float | None = None) -> None:
        super().__init__()
        self.served = served


class TimedConnection(trio.abc.Stream):
    """A connected non-blocking socket as the least of a trio Stream that a
    probe (and `trio.SSLStream` over it) needs: no conflict detection (one
    task uses it), Nagle left on for plain HTTP (one write per request;
    HTTPS turns it off, in `_Exchange.run`), OSError as is (attempt.py
    names it). A third of the Python calls of `trio.SocketStream` over
    `trio.socket`, per probe.

    It also keeps the server's time (`served`): the handshake, then each
    round (from the first send after the last answer to the arrival in the
    kernel of the last data read before the next send: tcp.py's `arrival`),
    not the daemon's lag before a send or a read, nor its own work between
    them (a TLS handshake's computations, a body's search). And it bounds
    its waits by that time: each wait of a round ends at the round's
    deadline, its first send (trio's clock) + `timeout` - the server's time
    before the round, or at `limit` (the probe's wall-clock bound) when that
    comes first; a wait that ends so raises Silent unless the kernel has
    what it waited for. One cancel scope a wait (a scope for the whole
    exchange, cancelled once its deadline passed, would stay so, and fail
    a reply that had come)."""

    def __init__(self, sock: socket.socket, handshake: float, timeout: float, limit: float) -> None:
        self.socket = sock
        self.handshake = handshake  # the TCP handshake, as the kernel timed it
        self._served = handshake  # the handshake and the rounds answered
        self._sent: float | None = None  # the open round's first send (perf_counter)
        self._sent_at = 0.0  # the same, on trio's clock (the deadlines')
        self._arrived: float | None = None  # the last data it read in
        self._timeout, self._limit = timeout, limit
        self._deadline = limit  # the open round's (trio's clock)

    def served(self) -> float | None:
        """The server's time up to the last data read, or None when no
        data came since the last send."""
        if self._arrived is None or self._sent is None:
            return None
        return self._served + (self._arrived - self._sent)

    def next_round(self) -> None:
        """What is sent next opens a round of its own (a request after the
        TLS handshake): the time since the open round's last answer (or
        since its first send, when nothing answered it: a TLS 1.3 client's
        Finished) is the daemon's, not the server's."""
        if self._arrived is not None:
            assert self._sent is not None
            self._served += self._arrived - self._sent
        self._sent = self._arrived = None

    def _open_round(self) -> None:
        if self._arrived is not None:  # the answer came: a new round
            assert self._sent is not None
            self._served += self._arrived - self._sent
            self._sent = self._arrived = None
        if self._sent is None:
            self._sent = perf_counter()
            self._sent_at = now = trio.current_time()
            deadline = now + self._timeout - self._served
            self._deadline = deadline if deadline < self._limit else self._limit

    def _silent(self) -> Silent:
        if self._deadline < self._limit:
            return Silent()
        # The limit came first: how long the server has had, unless that is
        # its whole timeout after all (a loop held up past the limit).
        served = self._served + (trio.current_time() - self._sent_at)
        return Silent() if served >= self._timeout else Silent(served)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sent is None or self._arrived is not None:
            self._open_round()
        view = memoryview(data)
        while view:
            try:
                view = view[self.socket.send(view) :]
            except BlockingIOError:
                with trio.CancelScope(deadline=self._deadline) as waited:
                    await trio.lowlevel.wait_writable(self.socket)
                if waited.cancelled_caught and not ready_events(self.socket) & select.POLLOUT:
                    raise self._silent() from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.socket)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._sent is None:  # (a read before any send: the server's time from now)
            self._open_round()
        while True:
            with trio.CancelScope(deadline=self._deadline) as waited:
                await trio.lowlevel.wait_readable(self.socket)
            try:
                data = self.socket.recv(max_bytes or READ_SIZE)
                break
            except BlockingIOError:
                if waited.cancelled_caught:
                    raise self._silent() from None
        if data and self._sent is not None:
            self._arrived = max(arrival(self.socket, perf_counter()), self._sent)
        return data

    def close(self) -> None:
        if self.socket.fileno() != -1:
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()
