"""Apply benchmark: the netlink backend against `ipvsadm -R`.

Builds one table (1,000 TCP services x 4 masquerading destinations = 5,000
operations), then for each round applies it in a fresh network namespace
through NetlinkBackend.apply() and, in another fresh namespace, through
`ipvsadm -R` fed the same table as text on stdin. Each result is dumped and
checked to be the expected table. Prints each time and the ratio
backend / ipvsadm (below 1.0: the backend is faster).

    python tests/vm/run.py python bench/apply.py [--services N] [--dests N] [--rounds N]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ipaddress import IPv4Address

from director.ipvs import ops
from director.ipvs.model import Destination, Forward, Protocol, Service, ServiceKey
from director.ipvs.netlink import NetlinkBackend

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def fresh_netns(name: str) -> Iterator[None]:
    """Run the block in a new, empty network namespace (this thread only)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        # Without lo up the namespace has no local routing table, and the
        # kernel takes every destination address for a broadcast one.
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        _libc.setns(original, CLONE_NEWNET)
        os.close(target)
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], check=False)


def table(services: int, dests: int) -> list[ops.Operation]:
    out: list[ops.Operation] = []
    for i in range(services):
        key = ServiceKey.inet(Protocol.TCP, IPv4Address(0x0A010000 + i), 80)
        out.append(ops.AddService(Service(key, "rr")))
        for j in range(dests):
            address = IPv4Address(0x0A800000 + i * dests + j)
            out.append(ops.AddDestination(key, Destination(address, 8080, Forward.MASQ, 1)))
    return out


def as_ipvsadm_rules(operations: list[ops.Operation]) -> str:
    lines = []
    for op in operations:
        if isinstance(op, ops.AddService):
            key = op.service.key
            lines.append(f"-A -t {key.address}:{key.port} -s {op.service.scheduler}")
        elif isinstance(op, ops.AddDestination):
            key, d = op.service, op.destination
            lines.append(f"-a -t {key.address}:{key.port} -r {d.address}:{d.port} -m -w {d.weight}")
    return "\n".join(lines) + "\n"


def check(expected: list[ops.Operation]) -> None:
    with NetlinkBackend() as backend:
        entries = backend.services()
    got = {(e.service, frozenset(d.destination for d in e.destinations)) for e in entries}
    want: dict[ServiceKey, tuple[Service, set[Destination]]] = {}
    for op in expected:
        if isinstance(op, ops.AddService):
            want[op.service.key] = (op.service, set())
        elif isinstance(op, ops.AddDestination):
            want[op.service][1].add(op.destination)
    if got != {(s, frozenset(d)) for s, d in want.values()}:
        raise SystemExit(f"table mismatch: {len(entries)} services dumped, {len(want)} expected")


def time_backend(operations: list[ops.Operation]) -> float:
    start = time.perf_counter()
    with NetlinkBackend() as backend:
        backend.apply(operations)
    return time.perf_counter() - start


def time_ipvsadm(rules: str) -> float:
    start = time.perf_counter()
    subprocess.run(["ipvsadm", "-R"], input=rules, text=True, check=True)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--dests", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    operations = table(args.services, args.dests)
    rules = as_ipvsadm_rules(operations)
    print(
        f"table: {args.services} services x {args.dests} destinations = {len(operations)} operations"
    )
    backend_times, ipvsadm_times = [], []
    for round_ in range(args.rounds):
        with fresh_netns(f"bench-nl-{os.getpid()}-{round_}"):
            backend_times.append(time_backend(operations))
            check(operations)
        with fresh_netns(f"bench-adm-{os.getpid()}-{round_}"):
            ipvsadm_times.append(time_ipvsadm(rules))
            check(operations)
        print(
            f"round {round_ + 1}: backend {backend_times[-1]:.3f} s, "
            f"ipvsadm -R {ipvsadm_times[-1]:.3f} s, "
            f"ratio {backend_times[-1] / ipvsadm_times[-1]:.3f}"
        )
    backend_median = statistics.median(backend_times)
    ipvsadm_median = statistics.median(ipvsadm_times)
    print(
        f"median: backend {backend_median:.3f} s ({len(operations) / backend_median:,.0f} ops/s), "
        f"ipvsadm -R {ipvsadm_median:.3f} s ({len(operations) / ipvsadm_median:,.0f} ops/s), "
        f"ratio backend/ipvsadm {backend_median / ipvsadm_median:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
