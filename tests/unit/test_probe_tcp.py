from __future__ import annotations

import _socket
import errno
import os
import select
import socket
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
import trio
import trio.testing
from tcp_support import syn_dropping_port

from director.health.probes import probe, probe_tcp, tcp
from director.health.probes.tcp import (
    TICK,
    Connects,
    answered,
    arrival,
    destination,
    handshake_time,
)
from director.health.probes.watch import KEEP_IDLE, KEEP_REVIEW, awaited
from director.health.result import ProbeResult, Reason
from director.health.spec import TcpCheck, Timing
from director.ipvs.model import IPAddress

LOOPBACKS = [IPv4Address("127.0.0.1"), IPv6Address("::1")]


def family(address: IPAddress) -> socket.AddressFamily:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A bound but not listening TCP port on 127.0.0.1 and ::1: connecting is refused."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("address", LOOPBACKS, ids=str)
async def test_accepting_listener_is_up(address: IPAddress) -> None:
    listeners = await trio.open_tcp_listeners(0, host=str(address))
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        result = await probe(TcpCheck(), address, port)
    assert (result.ok, result.reason) == (True, Reason.OK)
    assert result.latency >= 0


@pytest.mark.parametrize("address", LOOPBACKS, ids=str)
async def test_closed_port_is_refused(address: IPAddress, closed_port: int) -> None:
    result = await probe_tcp(TcpCheck(), address, closed_port)
    assert (result.ok, result.reason) == (False, Reason.REFUSED)
    assert result.detail.startswith("ECONNREFUSED: ")


async def test_check_port_and_address_override_the_servers(closed_port: int) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0]:
        redirected = TcpCheck(port=port, address=ip_address("127.0.0.1"))
        assert (await probe_tcp(redirected, ip_address("::1"), closed_port)).ok
        assert not (await probe_tcp(TcpCheck(), ip_address("127.0.0.1"), closed_port)).ok


async def test_listener_that_drops_syns_times_out(autojump_clock: trio.testing.MockClock) -> None:
    with syn_dropping_port() as port:
        result = await probe_tcp(TcpCheck(timing=Timing(timeout=3.0)), ip_address("127.0.0.1"), port)  # fmt: skip
    assert (result.ok, result.reason, result.detail) == (False, Reason.TIMEOUT, "no connection within 3 s")  # fmt: skip
    assert result.latency == 3.0


async def test_a_connect_that_completed_while_the_watcher_was_busy_is_no_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An overloaded daemon delivers verdicts late: more completed connects
    than one batch, and callbacks slow enough that every deadline has passed
    when the last batch is read. Each connect completed in time, in the
    kernel: all are up, none a timeout (a watcher that read one batch and
    then expired the deadlines failed the rest)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(512)  # the handshakes complete in the accept queue
        port = server.getsockname()[1]
        connects = Connects(batch=16)
        results: list[ProbeResult] = []
        all_in = trio.Event()

        def done(result: ProbeResult) -> None:
            autojump_clock.jump(0.1)  # a slow callback: 20 of them pass a 2 s timeout
            results.append(result)
            if len(results) == 100:
                all_in.set()

        target = destination(TcpCheck(timing=Timing(timeout=2.0)), ip_address("127.0.0.1"), port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connects.watch)
            for _ in range(100):
                connects.start(target, done)
            with trio.fail_after(60):
                await all_in.wait()
            nursery.cancel_scope.cancel()
    assert [(r.ok, r.reason) for r in results] == [(True, Reason.OK)] * 100


async def test_connects_begin_only_as_fast_as_their_verdicts_are_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each verdict asks for five more probes (a checker far behind its
    schedule). They begin after the round of verdicts, at most a batch at a
    time: the connects in flight stay near one batch instead of growing
    five-fold each round, so that no verdict waits long unread."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1024)
        port = server.getsockname()[1]
        connects = Connects(batch=8)
        target = destination(TcpCheck(), ip_address("127.0.0.1"), port)
        results: list[ProbeResult] = []
        in_flight: list[int] = []
        asked = 8
        all_in = trio.Event()

        def done(result: ProbeResult) -> None:
            nonlocal asked
            results.append(result)
            in_flight.append(connects.in_flight)
            for _ in range(5):
                if asked < 300:
                    asked += 1
                    connects.start(target, done)
            if len(results) == 300:
                all_in.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connects.watch)
            await trio.lowlevel.checkpoint()
            for _ in range(8):
                connects.start(target, done)
            with trio.fail_after(60):
                await all_in.wait()
            nursery.cancel_scope.cancel()
    assert [r.ok for r in results] == [True] * 300
    assert max(in_flight) <= 8


async def _read_after_a_stall(
    clock: trio.testing.MockClock, check: TcpCheck, port: int, stall: float
) -> ProbeResult:
    """One probe through Connects, begun, then the loop held up for `stall`
    seconds (no task runs: a long synchronous stretch) before the watcher
    gets its turn to read the verdict."""
    connects = Connects()
    results: list[ProbeResult] = []
    read = trio.Event()

    def done(result: ProbeResult) -> None:
        results.append(result)
        read.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(connects.watch)
        await trio.lowlevel.checkpoint()  # the watcher waits for events
        connects.start(destination(check, ip_address("127.0.0.1"), port), done)
        clock.jump(stall)
        with trio.fail_after(stall + 60):
            await read.wait()
        nursery.cancel_scope.cancel()
    (result,) = results
    return result


async def test_a_success_read_late_reports_the_handshake_not_the_daemons_lag(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The operator's "ok 78958 ms" for a 1 s timeout: the connect completed
    at once, the daemon read it 80 s later. The latency is the kernel's
    round trip of the handshake (loopback: microseconds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        result = await _read_after_a_stall(autojump_clock, TcpCheck(), port, 80.0)
    assert (result.ok, result.reason) == (True, Reason.OK)
    assert 0 <= result.latency < 0.01


@pytest.mark.parametrize(
    ("handshake", "expect"),
    [
        (0.7, (True, Reason.OK, 0.7, "")),
        (1.0 + 2 * TICK, (True, Reason.OK, 1.0 + 2 * TICK, "")),
        (1.3, (False, Reason.TIMEOUT, 1.0, "connected in 1.3 s, past the 1 s timeout")),
    ],
    ids=["in-time", "within-two-ticks", "late"],
)
async def test_a_handshake_slower_than_the_timeout_is_a_timeout_however_late_it_is_read(
    autojump_clock: trio.testing.MockClock,
    monkeypatch: pytest.MonkeyPatch,
    handshake: float,
    expect: tuple[bool, Reason, float, str],
) -> None:
    """The daemon reads the connect 2 s after it began, past its 1 s
    deadline (a watcher reads what the kernel holds before it judges the
    deadlines). A SYN-ACK the kernel timed within the timeout is up; one it
    timed after it is a timeout, as it would be to a daemon that read in
    time (it was read as up before). Within two ticks of the kernel's
    clock over, the kernel's figure cannot tell: up."""
    monkeypatch.setattr(tcp, "handshake_time", lambda sock, elapsed, info=None: handshake)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        check = TcpCheck(timing=Timing(timeout=1.0))
        result = await _read_after_a_stall(autojump_clock, check, server.getsockname()[1], 2.0)
    assert (result.ok, result.reason, result.latency, result.detail) == expect


async def test_the_handshake_is_timed_on_the_clock_of_its_read_not_the_rounds(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher reads a round's events with the time it took before the
    round (`now`); the kernel's age of the SYN-ACK is read later, when the
    socket is handled. Were `now` the handshake's reference, the round's
    work before it (or a pause of the daemon: an operator's SIGSTOP of 1.5 s
    showed `ok 0.0ms` for a server 1.3 s away) would come off the server's
    time. The elapsed time handed to `handshake_time` is the clock's at the
    read: 2 s, not the round's 0.5."""
    seen: list[float] = []

    def timed(sock: socket.socket, elapsed: float, info: object = None) -> float:
        seen.append(elapsed)
        return 0.001

    monkeypatch.setattr(tcp, "handshake_time", timed)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        connects = Connects()
        results: list[ProbeResult] = []
        target = destination(TcpCheck(), ip_address("127.0.0.1"), server.getsockname()[1])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connects.watch)
            await trio.lowlevel.checkpoint()
            start = trio.current_time()
            connects.start(target, results.append)
            (probe,) = connects._pending.values()
            autojump_clock.jump(2.0)
            connects._handle(probe, select.EPOLLOUT, start + 0.5)
            nursery.cancel_scope.cancel()
    assert seen == [2.0]
    assert [(r.ok, r.latency) for r in results] == [(True, 0.001)]


class _BlindSet:
    """A watcher's epoll set whose reads report nothing, as a round does
    that read just before a connect completed; its waits are on an empty
    set (the deadline ends them)."""

    def __init__(self, real: select.epoll) -> None:
        self.real, self.empty = real, select.epoll()

    def register(self, fd: int, events: int) -> None:
        self.real.register(fd, events)

    def unregister(self, fd: int) -> None:
        self.real.unregister(fd)

    def poll(self, timeout: float = -1, maxevents: int = -1) -> list[tuple[int, int]]:
        return []

    def fileno(self) -> int:
        return self.empty.fileno()

    def close(self) -> None:
        self.real.close()
        self.empty.close()


async def test_a_connect_the_rounds_read_missed_is_read_at_its_deadline_not_timed_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connect that completes after a round's read and before its
    deadline is judged in that round (the deadline's pass comes after the
    read, and under load after a round's work): the kernel has it, so it is
    read and judged by its kernel times, not timed out (a busy VM showed
    healthy servers 'no connection within 1 s')."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        connects = Connects()
        connects._epoll = _BlindSet(connects._epoll)  # type: ignore[assignment]
        results: list[ProbeResult] = []
        read = trio.Event()

        def done(result: ProbeResult) -> None:
            results.append(result)
            read.set()

        check = TcpCheck(timing=Timing(timeout=1.0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connects.watch)
            await trio.lowlevel.checkpoint()
            start = trio.current_time()
            connects.start(destination(check, ip_address("127.0.0.1"), server.getsockname()[1]), done)  # fmt: skip
            with trio.fail_after(60):
                await read.wait()
            read_at = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert read_at >= 1.0  # the deadline's pass read it
    assert [(r.ok, r.reason) for r in results] == [(True, Reason.OK)]
    assert results[0].latency < 0.01  # loopback's handshake, as the kernel timed it


def test_an_answer_past_the_timeout_says_how_late_it_came() -> None:
    assert answered(1.5, 1.0, "status 200") == ProbeResult.failure(
        Reason.TIMEOUT, 1.0, "answered in 1.5 s, past the 1 s timeout (status 200)"
    )
    assert answered(2.25, 2.0, what="connected") == ProbeResult.failure(
        Reason.TIMEOUT, 2.0, "connected in 2.25 s, past the 2 s timeout"
    )
    assert answered(0.0012, 1.0, "status 200") == ProbeResult.success(0.0012, detail="status 200")
    assert answered(1.0, 1.0) == ProbeResult.success(1.0)


async def test_a_timeout_read_late_reports_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with syn_dropping_port() as port:
        check = TcpCheck(timing=Timing(timeout=3.0))
        result = await _read_after_a_stall(autojump_clock, check, port, 80.0)
    assert (result.ok, result.reason, result.latency) == (False, Reason.TIMEOUT, 3.0)


async def test_a_refusal_read_late_reports_at_most_its_timeout(
    autojump_clock: trio.testing.MockClock, closed_port: int
) -> None:
    """The kernel does not time a refusal: its read's time, bounded by the
    timeout (a later one would have been failed at the deadline but for the
    daemon's lag)."""
    result = await _read_after_a_stall(autojump_clock, TcpCheck(), closed_port, 80.0)
    assert (result.ok, result.reason) == (False, Reason.REFUSED)
    assert result.latency == 1.0


def test_handshake_time_is_the_kernels_round_trip_at_most_the_elapsed_time() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        with socket.create_connection(server.getsockname()) as client:
            assert 0 < handshake_time(client, 5.0) < 0.01
            assert handshake_time(client, 0.0) == 0.0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # no TCP_INFO
        assert handshake_time(udp, 2.5) == 2.5


def test_arrival_is_the_datas_not_the_reads_and_never_before_it() -> None:
    """Data that waited HOLD seconds in the socket before its read: its
    arrival is the kernel's (to within two ticks of its clock: HOLD is
    more), never before it was sent."""
    hold = max(0.05, 5 * TICK)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        with socket.create_connection(server.getsockname()) as client:
            peer, _ = server.accept()
            with peer:
                sent = time.perf_counter()
                peer.sendall(b"reply")
                assert select.select([client], [], [], 10.0)[0]  # on loopback: at once
                time.sleep(hold)  # the daemon busy elsewhere
                assert client.recv(16) == b"reply"
                now = time.perf_counter()
                came = arrival(client, now)
    assert sent <= came < sent + hold < now


def test_arrival_without_tcp_info_is_the_read() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert arrival(udp, 2.5) == 2.5


@pytest.mark.parametrize("here", LOOPBACKS, ids=str)
async def test_a_kept_socket_gives_each_probe_its_own_verdict(
    autojump_clock: trio.testing.MockClock, here: IPAddress, closed_port: int
) -> None:
    """One socket, disconnected and connected again for each probe: a
    refusal leaves no error for the next connect, a success no connection,
    and each success is a new connection the server accepts."""
    listeners = await trio.open_tcp_listeners(0, host=str(here))
    open_port = listeners[0].socket.getsockname()[1]
    accepted: list[tuple[str, int]] = []

    async def accept() -> None:
        while True:
            conn, peer = await listeners[0].socket.accept()
            accepted.append(peer[:2])
            conn.close()

    async with listeners[0], trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        connects = Connects()
        nursery.start_soon(connects.watch)
        verdicts = []
        for port in (open_port, closed_port, open_port, open_port, closed_port, closed_port, open_port):  # fmt: skip
            result = await awaited(connects, destination(TcpCheck(), here, port))
            verdicts.append(result.reason)
            assert connects.kept == 1
            await trio.sleep(0.1)
        assert verdicts == [Reason.OK, Reason.REFUSED, Reason.OK, Reason.OK, Reason.REFUSED, Reason.REFUSED, Reason.OK]  # fmt: skip
        assert len(accepted) == 4
        assert len(set(accepted)) == 4  # a new local port for each connection
        nursery.cancel_scope.cancel()


async def test_a_round_of_many_verdicts_keeps_every_socket_and_a_smaller_load_gives_them_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An overloaded checker ends hundreds of probes in one round and
    starts as many: each socket is kept for the next, past KEEP_IDLE (were
    the rest closed, each probe after them would pay socket(2),
    setsockopt(2), close(2) and an epoll ADD). Once the load is smaller,
    a review closes the kept sockets past what was in flight at once."""
    many = KEEP_IDLE + 300
    here = ip_address("127.0.0.1")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2 * many)
        open_port = server.getsockname()[1]
        async with trio.open_nursery() as nursery:
            connects = Connects()
            nursery.start_soon(connects.watch)
            target = destination(TcpCheck(), here, open_port)
            verdicts: list[ProbeResult] = []
            for wave in range(2):
                for _ in range(many):
                    connects.start(target, verdicts.append)
                await trio.sleep(0.05)
                assert len(verdicts) == (wave + 1) * many
                assert all(v.ok for v in verdicts)
                assert connects.kept == many
                for _ in range(many):  # the backlog drained by hand
                    server.accept()[0].close()
            assert connects.in_flight == 0
            for _ in range(3):  # one probe at a time, over two reviews
                assert (await awaited(connects, target)).ok
                server.accept()[0].close()
                await trio.sleep(KEEP_REVIEW)
            assert (await awaited(connects, target)).ok
            assert connects.kept == KEEP_IDLE
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("stale", ["writable", "closed"])
async def test_an_event_of_another_file_under_the_probes_number_is_no_verdict(
    autojump_clock: trio.testing.MockClock, stale: str
) -> None:
    """Trial report (stop 30): under load, dead servers (SYNs dropped, an
    address gone) passed TCP checks with a latency of 0.0 ms. A socket
    closed while an exec check's fork held it open stays in the epoll set,
    armed, and reports under its number, which a later probe's socket has
    taken. Made here as the kernel makes it (dup2 under the number while
    registering): the event is a cue, the probe's own socket is still
    connecting, and the probe ends as its server makes it: a timeout."""
    here = ip_address("127.0.0.1")
    with syn_dropping_port() as dropping, socket.socket() as server, socket.socket() as other:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        async with trio.open_nursery() as nursery:
            connects = Connects()
            nursery.start_soon(connects.watch)
            verdicts: list[ProbeResult] = []
            probe = connects.start(
                destination(TcpCheck(timing=Timing(timeout=2.0)), here, dropping), verdicts.append
            )
            await trio.lowlevel.checkpoint()
            assert probe.sock is not None
            number = probe.sock.fileno()
            if stale == "writable":
                other.connect(server.getsockname())  # writable: EPOLLOUT
            # else: never connected: EPOLLOUT | EPOLLHUP, SO_ERROR 0
            own = os.dup(number)
            try:
                os.dup2(other.fileno(), number)
                # The other file's registration, one-shot as ours are.
                connects._epoll.register(number, select.EPOLLOUT | select.EPOLLONESHOT)
                os.dup2(own, number)
            finally:
                os.close(own)
            await trio.sleep(1.0)
            assert verdicts == []
            await trio.sleep(1.5)
            assert [(v.reason, v.detail) for v in verdicts] == [(Reason.TIMEOUT, "no connection within 2 s")]  # fmt: skip
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("taken", [True, False], ids=["error-taken", "error-pending"])
async def test_a_connect_that_ended_with_no_connection_fails_with_its_error(
    autojump_clock: trio.testing.MockClock, taken: bool
) -> None:
    """A socket closed, reported by an event without EPOLLERR (another
    file's, see above), gives no success: its error if it has one, else
    that it has none (taken by another read)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]  # bound, not listening: refused
        verdicts: list[ProbeResult] = []
        async with trio.open_nursery() as nursery:
            connects = Connects()
            nursery.start_soon(connects.watch)
            target = destination(TcpCheck(timing=Timing(timeout=1.0)), ip_address("127.0.0.1"), port)  # fmt: skip
            probe = connects._new(target, verdicts.append)
            sock = probe.sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)  # fmt: skip
            sock.connect_ex(("127.0.0.1", port))
            select.select([], [sock], [], 5.0)
            if taken:
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED
            connects._pending[sock.fileno()] = probe
            connects._handle(probe, select.EPOLLOUT, 0.0)
            nursery.cancel_scope.cancel()
    sock.close()
    if taken:
        assert [(v.reason, v.detail) for v in verdicts] == [(Reason.ERROR, "ECONNABORTED: the connect ended with no connection and no error")]  # fmt: skip
    else:
        assert [(v.reason, v.detail) for v in verdicts] == [(Reason.REFUSED, "ECONNREFUSED: Connection refused")]  # fmt: skip
