"""The floor: the least a CPython TCP checker can do, as a yardstick for
directord's checker in `scale.py` (`--only floor`).

One process, one epoll set, one heap of due times, and for each probe only
what any TCP check must do: a non-blocking socket (SO_LINGER 0, so that its
close sends a RST and leaves no TIME_WAIT, as directord's), connect, a wait
for it to turn writable, SO_ERROR, close. No health state, no rise and
fall, no log, no table, no control socket: the verdicts are only counted.
With `--reuse` a socket is disconnected and kept for the next probe, as
directord's checker does (connect(2) with AF_UNSPEC), instead of closed.

It reads its targets ("address port" lines) from a file, places each
first probe at random within the interval, keeps each target's starts on
its grid (skipping those missed by a whole interval, under overload),
begins at most 64 probes between two reads of the verdicts, and writes
"ready" on its standard output once every target is scheduled. Its CPU per probe, beside keepalived's in one VM boot, says how
much of directord's gap to keepalived is Python's own and how much is
directord's.

    python bench/floor.py TARGETS [--interval 1] [--timeout 1] [--reuse]
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args(argv)
    with open(args.targets) as lines:
        targets = [(a, int(p)) for a, p in (line.split() for line in lines if line.strip())]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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
        begun = 0
        while due and due[0][0] <= now and begun < _BEGIN:
            at, i = heapq.heappop(due)
            begun += 1
            # A start missed by a whole interval is skipped, as directord's
            # checker skips it: its next start is on its grid, after now.
            late = now - at
            heapq.heappush(due, (at + interval * (1 + int(late // interval)), i))
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
        wait = 0.0 if begun == _BEGIN else (due[0][0] if due else now + 1.0) - now
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


if __name__ == "__main__":
    sys.exit(main())
