"""The floor: the least a CPython TCP checker can do, as a yardstick for
directord's checker in `scale.py` (`--only floor`).

One process, one epoll set, one heap of due times, and for each probe only
what any TCP check must do: a non-blocking socket (SO_LINGER 0, so that its
close sends a RST and leaves no TIME_WAIT, as directord's), connect, a wait
for it to turn writable, SO_ERROR, close. No health state, no rise and
fall, no log, no table, no control socket: the verdicts are only counted.
With `--reuse` a socket is disconnected and kept for the next probe, as
directord's checker does (connect(2) with AF_UNSPEC), instead of closed.
With `--http` each probe is an HTTP GET / once connected: the request
made and the response's head parsed by h11 (a connection object a probe,
as directord's `http` check, which must use h11), a 2xx the only good
verdict, and the socket closed; `--http-raw` sends the same bytes made
once and reads the status code from the reply's first line by hand (no
h11). Those two, beside keepalived's HTTP_GET in `http_vm.py`, say how much
of directord's HTTP gap is CPython's own and how much h11's.

It reads its targets ("address port" lines) from a file, places each
first probe at random within the interval, keeps each target's starts on
its grid (skipping those missed by a whole interval, under overload),
begins at most 64 probes between two reads of the verdicts, and writes
"ready" on its standard output once every target is scheduled. Its CPU per probe, beside keepalived's in one VM boot, says how
much of directord's gap to keepalived is Python's own and how much is
directord's.

    python bench/floor.py TARGETS [--interval 1] [--timeout 1] [--reuse | --http | --http-raw]
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import errno
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

_LINGER = struct.pack("ii", 1, 0)
_PENDING = (errno.EINPROGRESS, errno.EINTR)
_FLAGS = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# Probes begun between two reads of the verdicts: under overload probes
# start only as fast as their verdicts are read (as directord's), not all
# at once while none is read.
_BEGIN = 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=1.0)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--reuse", action="store_true")
    kind.add_argument("--http", action="store_true")
    kind.add_argument("--http-raw", action="store_true")
    args = parser.parse_args(argv)
    with open(args.targets) as lines:
        targets = [(a, int(p)) for a, p in (line.split() for line in lines if line.strip())]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.http or args.http_raw:
        return http_floor(targets, args.interval, args.timeout, parse=args.http)
    interval, timeout = args.interval, args.timeout
    unspec = ctypes.create_string_buffer(16)
    libc_connect = ctypes.CDLL(None).connect
    poller = select.epoll()
    now = time.monotonic()
    due = [(now + random.random() * interval, i) for i in range(len(targets))]
    heapq.heapify(due)
    deadlines: list[tuple[float, int]] = []
    running: dict[int, tuple[socket.socket, int, float]] = {}  # fd: (socket, target, deadline)
    spare: list[socket.socket] = []
    ok = failed = 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        begun = _starts(due, now, interval)
        for i in begun:
            sock = spare.pop() if spare else None
            if sock is None:
                sock = socket.socket(socket.AF_INET, _FLAGS)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER)
                fresh = True
            else:
                fresh = False
            code = sock.connect_ex(targets[i])
            if code in _PENDING:
                fd = sock.fileno()
                flags = select.EPOLLOUT | select.EPOLLONESHOT
                if fresh:
                    poller.register(fd, flags)
                else:
                    poller.modify(fd, flags)
                running[fd] = (sock, i, now + timeout)
                heapq.heappush(deadlines, (now + timeout, fd))
            else:
                ok, failed = (ok + 1, failed) if code == 0 else (ok, failed + 1)
                if not fresh:
                    poller.unregister(sock.fileno())
                sock.close()
        wait = 0.0 if len(begun) == _BEGIN else (due[0][0] if due else now + 1.0) - now
        if deadlines:
            wait = min(wait, deadlines[0][0] - now)
        for fd, flags in poller.poll(max(wait, 0.0)):
            sock, _, _ = running.pop(fd)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if flags & (select.EPOLLERR | select.EPOLLHUP) else 0  # fmt: skip
            ok, failed = (ok + 1, failed) if code == 0 else (ok, failed + 1)
            if args.reuse and libc_connect(fd, unspec, 16) == 0:
                spare.append(sock)
            else:
                poller.unregister(fd)
                sock.close()
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            _, fd = heapq.heappop(deadlines)
            entry = running.get(fd)
            if entry is not None and entry[2] <= now:
                del running[fd]
                failed += 1
                poller.unregister(fd)
                entry[0].close()


def _starts(due: list[tuple[float, int]], now: float, interval: float) -> list[int]:
    """The targets due by `now`, _BEGIN at most, each put back on its grid:
    a start missed by a whole interval is skipped, as directord's checker
    skips it (its next start is on its grid, after now)."""
    begun = []
    while due and due[0][0] <= now and len(begun) < _BEGIN:
        at, i = heapq.heappop(due)
        heapq.heappush(due, (at + interval * (1 + int((now - at) // interval)), i))
        begun.append(i)
    return begun


def http_floor(
    targets: list[tuple[str, int]], interval: float, timeout: float, *, parse: bool
) -> int:
    """The least an HTTP status check does, a socket a probe: connect, send
    GET /, read the reply's head, judge its status, close. `parse`: with
    h11, as directord must (a Connection a probe, the request made by it
    and the head parsed by it); else the request's bytes made once and the
    status read from the first line by hand."""
    import h11

    poller = select.epoll()
    now = time.monotonic()
    due = [(now + random.random() * interval, i) for i in range(len(targets))]
    heapq.heapify(due)
    deadlines: list[tuple[float, int]] = []
    # fd: (socket, target, deadline, h11 connection or None, whether it was sent)
    running: dict[int, tuple[socket.socket, int, float, h11.Connection | None, bool]] = {}
    hosts = [f"{a}:{p}".encode() for a, p in targets]
    raw = [b"GET / HTTP/1.1\r\nHost: " + h + b"\r\nConnection: close\r\n\r\n" for h in hosts]
    ok = failed = 0
    print("ready", flush=True)
    # Its verdicts on standard error at the end, to tell a fast failure
    # (cheap) from a probe that did its work.
    atexit.register(lambda: print(f"http floor: {ok} ok, {failed} failed", file=sys.stderr))

    def end(fd: int, good: bool) -> None:
        nonlocal ok, failed
        sock = running.pop(fd)[0]
        ok, failed = (ok + 1, failed) if good else (ok, failed + 1)
        poller.unregister(fd)
        sock.close()

    while True:
        now = time.monotonic()
        begun = _starts(due, now, interval)
        for i in begun:
            sock = socket.socket(socket.AF_INET, _FLAGS)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER)
            code = sock.connect_ex(targets[i])
            if code not in _PENDING:
                failed += 1
                sock.close()
                continue
            fd = sock.fileno()
            poller.register(fd, select.EPOLLOUT | select.EPOLLONESHOT)
            running[fd] = (sock, i, now + timeout, None, False)
            heapq.heappush(deadlines, (now + timeout, fd))
        wait = 0.0 if len(begun) == _BEGIN else (due[0][0] if due else now + 1.0) - now
        if deadlines:
            wait = min(wait, deadlines[0][0] - now)
        for fd, flags in poller.poll(max(wait, 0.0)):
            sock, i, deadline, conn, sent = running[fd]
            if not sent:
                if flags & (select.EPOLLERR | select.EPOLLHUP):
                    end(fd, False)
                    continue
                if parse:
                    conn = h11.Connection(h11.CLIENT)
                    request = h11.Request(
                        method="GET",
                        target="/",
                        headers=[("Host", hosts[i]), ("Connection", "close")],
                    )
                    payload = conn.send(request) + (conn.send(h11.EndOfMessage()) or b"")
                else:
                    payload = raw[i]
                try:
                    sock.send(payload)
                except OSError:
                    end(fd, False)
                    continue
                running[fd] = (sock, i, deadline, conn, True)
                poller.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                continue
            try:
                data = sock.recv(4096)
            except OSError:
                end(fd, False)
                continue
            if conn is None:
                good = data[:7] == b"HTTP/1." and data[9:10] == b"2"
            else:
                conn.receive_data(data)
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    event = None
                if event is h11.NEED_DATA and data:
                    poller.modify(fd, select.EPOLLIN | select.EPOLLONESHOT)
                    continue
                good = isinstance(event, h11.Response) and 200 <= event.status_code < 300
            end(fd, good)
        now = time.monotonic()
        while deadlines and deadlines[0][0] <= now:
            _, fd = heapq.heappop(deadlines)
            entry = running.get(fd)
            if entry is not None and entry[2] <= now:
                end(fd, False)


if __name__ == "__main__":
    sys.exit(main())
