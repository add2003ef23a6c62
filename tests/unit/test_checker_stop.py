"""A checker stopped while probes fall due ends as it was asked to: with
trio.Cancelled, which its nursery absorbs, never with an error of its own.

Stopping a checker cancels its nursery: the TCP watcher's task ends (its
sockets closed) and the scheduler's and workers' tasks end at their next
checkpoint. Trio runs the tasks woken at one instant in either order (at
random, to shake out such races), so a task woken with a value in the same
instant as the cancellation (the scheduler whose nap reached its deadline; a
worker whose probe ended and hands out the probes that waited for its slot)
may still run after the watcher has ended. It must hand nothing to it.

Each case stops many checkers, one trio run each, so that every order of
the tasks woken together comes up; before the fix, a stop in directord's CI
exited 1 with `ClosedResourceError: the TCP probes' watcher has ended`.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from ipaddress import ip_address

import trio
import trio.testing
from tcp_support import syn_dropping_port

from director.health.checker import Checker, Target
from director.health.spec import TcpCheck, Timing, UdpCheck

HERE = ip_address("127.0.0.1")
# A stop lands between the tasks woken with it in about one run in ten.
RUNS = 128


@contextmanager
def silent_udp_port() -> Iterator[int]:
    """A UDP port on 127.0.0.1 bound and never answered: a probe waits there
    for its whole timeout (no ICMP error)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def stop_many(run: Callable[[int], Awaitable[None]]) -> None:
    """`run(seed)` in RUNS fresh trio runs under an autojump clock; what one
    raises fails the test."""
    for seed in range(RUNS):
        trio.run(run, seed, clock=trio.testing.MockClock(autojump_threshold=0))


class NoJitter(random.Random):
    """Every first start at once: the instants below are exact."""

    def uniform(self, a: float, b: float) -> float:
        return a


def test_a_checker_stopped_as_its_tcp_probes_fall_due_raises_nothing() -> None:
    """At one instant, a TCP probe's deadline, the scheduler's wake-up for
    another probe's start, and the stop (SIGTERM, in the daemon). The
    watcher ends at its next checkpoint, and the scheduler, woken with a
    value by its own deadline, hands out the probe now due."""

    async def run(seed: int) -> None:
        with syn_dropping_port() as port:
            # At 0 both start; at 1.0, "slow" times out, "next" is due, and
            # the checker is stopped.
            slow = TcpCheck(timing=Timing(interval=1.0, timeout=1.0))
            due = TcpCheck(timing=Timing(interval=1.0, timeout=0.5))
            checker: Checker[str] = Checker(rng=NoJitter(seed))
            checker.set_targets({"slow": (slow, HERE, port), "next": (due, HERE, port)})
            async with trio.open_nursery() as nursery:
                await nursery.start(checker.run)
                await trio.sleep_until(1.0)
                nursery.cancel_scope.cancel()
            assert trio.current_time() == 1.0

    stop_many(run)


def test_a_checker_stopped_while_tcp_probes_wait_for_a_workers_slot_raises_nothing() -> None:
    """A worker's probe (UDP) is cancelled by the stop, and its slot goes to
    the TCP probes that waited for it (max_probes = 1), as the watcher ends."""

    async def run(seed: int) -> None:
        with syn_dropping_port() as tcp_port, silent_udp_port() as udp_port:
            udp = UdpCheck(timing=Timing(interval=1.0, timeout=30.0))
            tcp = TcpCheck(timing=Timing(interval=1.0, timeout=1.0))
            targets: dict[str, Target] = {
                "udp": (udp, HERE, udp_port),
                "tcp": (tcp, HERE, tcp_port),
            }
            checker: Checker[str] = Checker(rng=random.Random(seed), max_probes=1)
            checker.set_targets(targets)
            async with trio.open_nursery() as nursery:
                await nursery.start(checker.run)
                await trio.sleep(5.0)  # the UDP probe holds the slot by now
                nursery.cancel_scope.cancel()
            assert checker.state("udp").last is None  # cancelled, as the stop came

    stop_many(run)
