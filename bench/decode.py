"""What reading the IPVS table costs in Python: decoding GET_DEST replies.

The drift check and every scoped pass read whole services (director/engine.py:
`drift_check`, `reconcile`): one destination dump per service, each reply
decoded by director.ipvs.genl.parse_destination. This measures, in CPU time
of this thread:

- decode: parse_destination of one reply as the kernel writes it (Linux 6.1,
  x86-64: ip_vs_genl_fill_dest's attributes, then the STATS and STATS64
  nests), with the counters and without them (what a pass reads), and of the
  same reply with its attributes in another order (the generic walk);
- read: NetlinkBackend.services(only=...) of `--read` services of a table of
  `--services` x `--dests`, over a scripted socket that answers each dump with
  the kernel's replies packed into datagrams as the kernel packs them (the
  socket's own cost left out): the drift check's read at 10,000 real servers
  is --services 100 --dests 100 --read 9 (100 / DRIFT_ROTATION, rounded up).

    .venv/bin/python bench/decode.py [--services 100] [--dests 100] [--read 9]
        [--rounds 7] [--profile]

With --kernel (as root where the kernel has ip_vs: inside tests/vm/run.py),
the read is of a real table in a network namespace of its own, built with
the same shape, and the socket's cost is in it.

Figures are the median of --rounds (each round long enough to time); "per
destination" divides a read by the destinations it returned.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import itertools
import random
import statistics
import struct
import sys
import time
from collections.abc import Callable, Collection
from ipaddress import IPv4Address
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from director.ipvs import genl, ops
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    Service,
    ServiceKey,
    Stats,
)
from director.ipvs.netlink import NetlinkBackend

FAMILY = 0x20
DUMP_DATAGRAM = 16 * 1024  # what one recv() of a dump returns at most, roughly
SEQ = struct.Struct("=I")
SEQ_OFFSET = 8  # of nlmsg_seq in the netlink header


def table(services: int, dests: int) -> dict[ServiceKey, list[DestinationEntry]]:
    """`services` TCP services of `dests` routed real servers each, with
    live-looking counters."""
    rng = random.Random(8)
    out: dict[ServiceKey, list[DestinationEntry]] = {}
    for s in range(services):
        key = ServiceKey.inet(Protocol.TCP, IPv4Address(0x0A000001 + s), 80)
        out[key] = [
            DestinationEntry(
                Destination(IPv4Address(0x0A800000 + s * 256 + d), 8080, Forward.ROUTE, 1),
                active_conns=rng.randrange(100),
                inact_conns=rng.randrange(1000),
                stats=Stats(*(rng.randrange(1 << 40) for _ in range(10))),
            )
            for d in range(dests)
        ]
    return out


def dest_message(entry: DestinationEntry, *, shuffled: bool = False) -> genl.Message:
    nest = genl.destination_reply_nest(entry)
    if shuffled:
        inner = list(genl.parse_attrs(genl.parse_attrs(nest)[genl.CMD_ATTR_DEST]).items())
        random.Random(1).shuffle(inner)
        nest = genl.attr(genl.CMD_ATTR_DEST, b"".join(genl.attr(k, v) for k, v in inner))
    return genl.Message(FAMILY, genl.NLM_F_MULTI, 1, genl.genl_body(genl.CMD_NEW_DEST, nest))


def per_call(function: Callable[[], object], rounds: int, minimum: float = 0.2) -> float:
    """Median CPU seconds of one call of `function` over `rounds` rounds."""
    calls = 1
    while True:
        start = time.thread_time()
        for _ in range(calls):
            function()
        if time.thread_time() - start >= minimum / 4:
            break
        calls *= 2
    samples = []
    for _ in range(rounds):
        start = time.thread_time()
        for _ in range(calls):
            function()
        samples.append((time.thread_time() - start) / calls)
    return statistics.median(samples)


# --- a scripted socket: the kernel's replies without the kernel -------------------


class ReplaySocket:
    """Answers GET_SERVICE and GET_DEST dumps of `entries` as the kernel does:
    each reply a netlink message, packed into datagrams of up to
    DUMP_DATAGRAM bytes, then NLMSG_DONE. The datagrams are made once; a
    request only stamps its sequence number into their messages."""

    def __init__(self, entries: dict[ServiceKey, list[DestinationEntry]]) -> None:
        self.queue: list[bytes] = []
        services = [
            genl.genl_body(genl.CMD_NEW_SERVICE, genl.service_nest(Service(key, "wlc")))
            for key in entries
        ]
        self.dumps = {
            genl.genl_body(genl.CMD_GET_SERVICE): self._datagrams(services),
            **{
                genl.get_dests_body(key): self._datagrams(
                    [
                        genl.genl_body(genl.CMD_NEW_DEST, genl.destination_reply_nest(e))
                        for e in dests
                    ]
                )
                for key, dests in entries.items()
            },
        }

    @staticmethod
    def _datagrams(bodies: list[bytes]) -> list[tuple[bytearray, list[int]]]:
        """Each datagram with the offsets of its messages."""
        out: list[tuple[bytearray, list[int]]] = []
        datagram, offsets = bytearray(), []
        for body in [*bodies, None]:
            if body is None:
                message = genl.frame(genl.NLMSG_DONE, genl.NLM_F_MULTI, 0, bytes(4))
            else:
                message = genl.frame(FAMILY, genl.NLM_F_MULTI, 0, body)
            if len(datagram) + len(message) > DUMP_DATAGRAM:
                out.append((datagram, offsets))
                datagram, offsets = bytearray(), []
            offsets.append(len(datagram))
            datagram += message
        out.append((datagram, offsets))
        return out

    def send(self, data: bytes) -> int:
        for message in genl.messages(bytes(data)):
            for datagram, offsets in self.dumps[message.payload]:
                for offset in offsets:
                    SEQ.pack_into(datagram, offset + SEQ_OFFSET, message.seq)
                self.queue.append(bytes(datagram))
        return len(data)

    def recv(self, size: int) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def replayed(entries: dict[ServiceKey, list[DestinationEntry]]) -> NetlinkBackend:
    """A NetlinkBackend over a ReplaySocket (its constructor would open a
    netlink socket and look the IPVS family up)."""
    return NetlinkBackend.over(ReplaySocket(entries), FAMILY)  # type: ignore[arg-type]


def kernel_backend(entries: dict[ServiceKey, list[DestinationEntry]]) -> NetlinkBackend:
    """The real table, in the namespace this thread is in, made `entries`."""
    backend = NetlinkBackend()
    backend.apply([ops.Flush()])
    operations: list[ops.Operation] = []
    for key, dests in entries.items():
        operations.append(ops.AddService(Service(key, "wlc")))
        operations += [ops.AddDestination(key, e.destination) for e in dests]
    backend.apply(operations)
    return backend


# --- the figures --------------------------------------------------------------------


def report_decode(rounds: int) -> None:
    entry = next(iter(table(1, 1).values()))[0]
    kernel, walked = dest_message(entry), dest_message(entry, shuffled=True)
    for name, message in (("kernel's layout", kernel), ("another order", walked)):
        for counters in (True, False):
            decode = functools.partial(genl.parse_destination, message, 2, counters=counters)
            seconds = per_call(decode, rounds)
            what = "with counters" if counters else "no counters"
            print(f"decode, {name:<15} {what:<14} {seconds * 1e6:7.2f} us per destination")


def report_read(
    backend: NetlinkBackend, keys: Collection[ServiceKey], rounds: int, profile: bool
) -> None:
    for counters in (True, False):
        returned = sum(len(e.destinations) for e in backend.services(keys, counters=counters))
        seconds = per_call(functools.partial(backend.services, keys, counters=counters), rounds)
        what = "with counters" if counters else "no counters"
        print(
            f"read of {len(keys)} services ({returned} destinations), {what:<14}"
            f" {seconds * 1e3:8.2f} ms, {seconds / max(1, returned) * 1e6:6.2f} us per destination"
        )
    if profile:
        cProfile.runctx(
            "for _ in range(20): backend.services(keys, counters=False)",
            globals(),
            {"backend": backend, "keys": keys},
            sort="tottime",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--dests", type=int, default=100)
    parser.add_argument("--read", type=int, default=9, help="services per read")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernel", action="store_true", help="read a real table (root, ip_vs)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    entries = table(args.services, args.dests)
    keys = set(itertools.islice(entries, args.read))
    report_decode(args.rounds)
    if not args.kernel:
        report_read(replayed(entries), keys, args.rounds, args.profile)
        return
    from common import namespace

    with namespace("bench-decode"), kernel_backend(entries) as backend:
        report_read(backend, keys, args.rounds, args.profile)


if __name__ == "__main__":
    main()
