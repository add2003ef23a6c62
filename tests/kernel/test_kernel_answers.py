"""Every kernel answer handled, on the real kernel: apply_each contains a
refused operation, the kernel (not the encoder) decides timeouts, and a
dump read while the table changes gives a table or DumpInterrupted, never
anything else.

Each test runs in a fresh network namespace (the `netns` fixture).
"""

from __future__ import annotations

import errno
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address

import pytest

from director.ipvs import ops
from director.ipvs.errors import (
    DumpInterrupted,
    IPVSError,
    KernelError,
    NoSuchDestination,
    SchedulerNotFound,
)
from director.ipvs.model import Destination, Forward, Protocol, Service, ServiceKey, Timeouts
from director.ipvs.netlink import NetlinkBackend


def ipvsadm(*args: str) -> str:
    return subprocess.run(["ipvsadm", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def backend(netns: str) -> Iterator[NetlinkBackend]:
    with NetlinkBackend() as b:
        yield b


def key(n: int) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, IPv4Address(0x0A000000 + n), 80)


def dest(n: int, weight: int = 1) -> Destination:
    return Destination(IPv4Address(0x0A100000 + n), 80, Forward.ROUTE, weight)


def test_a_multicast_destination_among_good_ones_refuses_only_itself(
    backend: NetlinkBackend,
) -> None:
    backend.apply([ops.AddService(Service(key(1), "rr"))])
    operations: list[ops.Operation] = [
        ops.AddDestination(key(1), dest(1)),
        ops.AddDestination(key(1), Destination(IPv4Address("224.0.0.7"), 80)),
        ops.AddDestination(key(1), dest(2)),
        ops.AddDestination(key(1), Destination(IPv4Address("0.0.0.0"), 80)),
        ops.AddDestination(key(1), dest(3)),
    ]
    outcomes = backend.apply_each(operations)
    assert [o is None for o in outcomes] == [True, False, True, False, True]
    for refused in (outcomes[1], outcomes[3]):
        assert isinstance(refused, IPVSError) and refused.errno == errno.EINVAL
        assert refused.message.startswith("Invalid operation.  Possibly wrong module version")
    (entry,) = backend.services()
    assert {d.destination for d in entry.destinations} == {dest(1), dest(2), dest(3)}
    assert ipvsadm("-Sn").count("-a ") == 3


def test_an_unknown_scheduler_refuses_only_its_service(backend: NetlinkBackend) -> None:
    operations: list[ops.Operation] = []
    for n in range(1, 6):
        operations.append(ops.AddService(Service(key(n), "nope" if n == 3 else "wlc")))
        operations.append(ops.AddDestination(key(n), dest(n)))
    outcomes = backend.apply_each(operations)
    refused = {i: o for i, o in enumerate(outcomes) if o is not None}
    assert set(refused) == {4, 5}
    assert isinstance(refused[4], SchedulerNotFound) and refused[4].errno == errno.ENOENT
    assert refused[4].message == "Scheduler or persistence engine not found"
    assert isinstance(refused[5], IPVSError) and refused[5].errno == errno.ESRCH
    assert {e.service.key for e in backend.services()} == {key(n) for n in (1, 2, 4, 5)}


def test_apply_each_after_a_destination_was_deleted_behind_its_back(
    backend: NetlinkBackend,
) -> None:
    backend.apply(
        [ops.AddService(Service(key(1), "wrr"))]
        + [ops.AddDestination(key(1), dest(n)) for n in range(1, 4)]
    )
    ipvsadm("-d", "-t", "10.0.0.1:80", "-r", str(dest(2).address))
    outcomes = backend.apply_each(
        [
            ops.EditDestination(key(1), dest(1, weight=5)),
            ops.EditDestination(key(1), dest(2, weight=5)),
            ops.DeleteDestination(key(1), dest(2).address, 80),
            ops.EditDestination(key(1), dest(3, weight=7)),
        ]
    )
    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], NoSuchDestination)
    assert isinstance(outcomes[2], NoSuchDestination)
    assert outcomes[1].message == "No such destination"
    weights = {
        d.destination.address: d.destination.weight for d in backend.services()[0].destinations
    }
    assert weights == {dest(1).address: 5, dest(3).address: 7}


def timeout_listing() -> str:
    return ipvsadm("-L", "--timeout")


def test_set_2500000_120_300_reads_back_as_ipvsadm_shows_it(backend: NetlinkBackend) -> None:
    ipvsadm("--set", "2500000", "120", "300")
    shown = timeout_listing()
    assert shown == "Timeout (tcp tcpfin udp): 2500000 120 300\n"
    ipvsadm("--set", "900", "120", "300")
    backend.apply([ops.SetTimeouts(Timeouts(2500000, 120, 300))])
    assert timeout_listing() == shown
    assert backend.timeouts() == Timeouts(2500000, 120, 300)


def test_a_timeout_beyond_int_max_over_hz_is_the_kernels_einval(backend: NetlinkBackend) -> None:
    before = backend.timeouts()
    (outcome,) = backend.apply_each([ops.SetTimeouts(Timeouts(2**32 - 1, 0, 0))])
    assert isinstance(outcome, IPVSError) and outcome.errno == errno.EINVAL
    assert backend.timeouts() == before


def test_a_dump_while_the_table_changes_gives_a_table_or_dump_interrupted(
    backend: NetlinkBackend, record_property: Callable[[str, object], None]
) -> None:
    """Whether the kernel marks an IPVS dump NLM_F_DUMP_INTR at all is what
    this measures (recorded as the `dump_interrupted` property); whatever
    it does, a read gives a list or DumpInterrupted, nothing else."""
    backend.apply([ops.AddService(Service(key(n), "rr")) for n in range(1, 2001)])
    stop = threading.Event()
    changes = [0]
    with NetlinkBackend() as writer:

        def churn() -> None:
            n = 0
            while not stop.is_set():
                k = key(5000 + n % 50)
                writer.apply_each([ops.AddService(Service(k, "rr")), ops.DeleteService(k)])
                changes[0] += 2
                n += 1

        thread = threading.Thread(target=churn)
        thread.start()
        reads, interrupted, other = 0, 0, []
        deadline = time.monotonic() + 8
        try:
            while time.monotonic() < deadline:
                try:
                    entries = backend.services(brief=True)
                    assert len(entries) >= 2000
                    reads += 1
                except DumpInterrupted:
                    interrupted += 1
                except KernelError as error:
                    other.append(error)
        finally:
            stop.set()
            thread.join()
    print(f"dumps: {reads} whole, {interrupted} interrupted; {changes[0]} changes meanwhile")
    record_property("dump_interrupted", interrupted)
    assert other == []
    assert reads + interrupted > 0 and changes[0] > 0
