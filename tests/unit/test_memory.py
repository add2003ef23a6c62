from __future__ import annotations

import errno
from ipaddress import ip_address

import pytest

from director.ipvs.errors import (
    BatchError,
    DaemonError,
    DestinationExists,
    InvalidOperation,
    IPVSError,
    KernelError,
    NoSuchDestination,
    NoSuchService,
    SchedulerNotFound,
    ServiceExists,
)
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    AF_INET6,
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    Stats,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelType,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Flush,
    Operation,
    SetTimeouts,
    StartDaemon,
    StopDaemon,
    Zero,
)

KEY = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
SVC = Service(KEY, "rr")
D1 = Destination(ip_address("10.0.0.2"), 80, Forward.MASQ, 5)
D2 = Destination(ip_address("10.0.0.3"), 80)


def failure(backend: MemoryBackend, ops: list[Operation]) -> BatchError:
    with pytest.raises(BatchError) as info:
        backend.apply(ops)
    return info.value


def test_a_batch_failure_names_its_operation_in_log_terms() -> None:
    """It read `operation 1 (AddDestination(key=ServiceKey(family=<AddressFamily...`."""
    backend = MemoryBackend()
    error = failure(backend, [AddService(SVC), AddDestination(KEY, D1), AddDestination(KEY, D1)])
    assert str(error) == (
        "operation 2 (add_destination vs=TCP 10.0.0.1:80 rs=10.0.0.2:80 forward=masq weight=5)"
        " failed: Destination already exists"
    )


def test_add_edit_delete_round_trip() -> None:
    backend = MemoryBackend()
    backend.apply([AddService(SVC), AddDestination(KEY, D1), AddDestination(KEY, D2)])
    (entry,) = backend.services()
    assert entry.service.key == KEY
    assert entry.service.flags == ServiceFlags.HASHED  # the kernel's own flag shows in dumps
    assert [e.destination for e in entry.destinations] == [D1, D2]

    edited = Destination(D1.address, 80, Forward.ROUTE, 9)
    backend.apply([EditService(Service(KEY, "wlc")), EditDestination(KEY, edited)])
    (entry,) = backend.services()
    assert entry.service.scheduler == "wlc"
    assert [e.destination for e in entry.destinations] == [edited, D2]

    backend.apply([DeleteDestination(KEY, D2.address, 80)])
    assert [e.destination for e in backend.services()[0].destinations] == [edited]
    backend.apply([DeleteService(KEY)])
    assert backend.services() == []


@pytest.mark.parametrize(
    ("ops", "index", "error", "message"),
    [
        ([AddService(SVC), AddService(SVC)], 1, ServiceExists, "Service already exists"),
        (
            [AddService(Service(KEY, "fastest"))],
            0,
            SchedulerNotFound,
            "Scheduler or persistence engine not found",
        ),
        (
            [AddService(Service(KEY, "rr", pe_name="h323"))],
            0,
            SchedulerNotFound,
            "Scheduler or persistence engine not found",
        ),
        ([EditService(SVC)], 0, NoSuchService, "No such service"),
        (
            [AddService(SVC), EditService(Service(KEY, "nope"))],
            1,
            SchedulerNotFound,
            "Scheduler or persistence engine not found",
        ),
        ([DeleteService(KEY)], 0, NoSuchService, "No such service"),
        ([AddDestination(KEY, D1)], 0, NoSuchService, "Service not defined"),
        (
            [AddService(SVC), AddDestination(KEY, D1), AddDestination(KEY, D1)],
            2,
            DestinationExists,
            "Destination already exists",
        ),
        ([AddService(SVC), EditDestination(KEY, D1)], 1, NoSuchDestination, "No such destination"),
        (
            [AddService(SVC), DeleteDestination(KEY, D1.address, 80)],
            1,
            NoSuchDestination,
            "No such destination",
        ),
        ([DeleteDestination(KEY, D1.address, 80)], 0, NoSuchService, "Service not defined"),
        ([Zero(KEY)], 0, NoSuchService, "No such service"),
        ([StopDaemon(SyncState.MASTER)], 0, DaemonError, "No daemon is running"),
    ],
)
def test_errors_are_the_kernels(
    ops: list[Operation], index: int, error: type[IPVSError], message: str
) -> None:
    batch = failure(MemoryBackend(), ops)
    assert batch.index == index
    assert batch.operation == ops[index]
    assert type(batch.error) is error
    assert batch.error.message == message


def test_destination_values_the_kernel_refuses() -> None:
    backend = MemoryBackend([ServiceEntry(SVC)])
    cases = [
        (Destination(D1.address, 80, weight=2**31), "ERANGE"),  # a negative int to the kernel
        (Destination(D1.address, 80, u_threshold=5, l_threshold=6), "ERANGE"),
        (Destination(D1.address, 80, l_threshold=1), "ERANGE"),
        (Destination(D1.address, 80, Forward.TUNNEL, tun_type=TunnelType.GUE), "EINVAL"),
    ]
    for dest, name in cases:
        for op in (AddDestination(KEY, dest), EditDestination(KEY, dest)):
            batch = failure(backend, [op])
            assert isinstance(batch.error, IPVSError)
            assert batch.error.errno == getattr(errno, name), (dest, op)
    assert backend.services()[0].destinations == ()


def test_ipv6_netmask_must_be_a_prefix_length() -> None:
    key = ServiceKey.inet(Protocol.TCP, "2001:db8::1", 80)
    assert key.family == AF_INET6
    for netmask in (0, 129):
        batch = failure(MemoryBackend(), [AddService(Service(key, "rr", netmask=netmask))])
        assert isinstance(batch.error, IPVSError) and batch.error.errno == errno.EINVAL
    MemoryBackend().apply([AddService(Service(key, "rr"))])  # default: 128


def test_failure_keeps_the_operations_before_it() -> None:
    backend = MemoryBackend()
    batch = failure(
        backend, [AddService(SVC), AddDestination(KEY, D1), DeleteService(ServiceKey.mark(1))]
    )
    assert batch.index == 2
    assert [e.destination for e in backend.services()[0].destinations] == [D1]
    assert backend.applied == [AddService(SVC), AddDestination(KEY, D1)]


def test_timeouts_zero_keeps_current() -> None:
    backend = MemoryBackend()
    assert backend.timeouts() == Timeouts(900, 120, 300)
    backend.apply([SetTimeouts(Timeouts(5, 10, 0))])
    assert backend.timeouts() == Timeouts(5, 10, 300)
    backend.apply([SetTimeouts(Timeouts(0, 0, 60))])
    assert backend.timeouts() == Timeouts(5, 10, 60)


def test_flush_and_zero() -> None:
    busy = Stats(conns=5, inpkts=9)
    other = ServiceKey.mark(4)
    backend = MemoryBackend(
        [
            ServiceEntry(SVC, (DestinationEntry(D1, active_conns=2, stats=busy),), busy),
            ServiceEntry(Service(other), (), busy),
        ]
    )
    backend.apply([Zero(KEY)])
    zeroed, untouched = backend.services()
    assert zeroed.stats == Stats()
    assert zeroed.destinations[0].stats == Stats()
    assert zeroed.destinations[0].active_conns == 2  # connections are not counters
    assert untouched.stats == busy
    backend.apply([Zero()])
    assert backend.services()[1].stats == Stats()
    backend.apply([Flush()])
    assert backend.services() == []


def test_sync_daemons() -> None:
    backend = MemoryBackend()
    master = SyncDaemon(SyncState.MASTER, "eth0", syncid=3)
    backend.apply([StartDaemon(master)])
    assert backend.daemons() == [master]
    assert failure(backend, [StartDaemon(master)]).error.message == "Daemon has already run"
    backend.apply([StartDaemon(SyncDaemon(SyncState.BACKUP, "eth1"))])
    backend.apply([StopDaemon(SyncState.MASTER)])
    assert [d.state for d in backend.daemons()] == [SyncState.BACKUP]
    assert failure(backend, [StopDaemon(SyncState.MASTER)]).error.message == "No daemon is running"


def test_info_connections_close() -> None:
    backend = MemoryBackend()
    assert backend.info().version_string == "1.2.1"
    assert backend.connections() == []
    assert not backend.closed
    backend.close()
    assert backend.closed


def test_dump_of_only_some_services() -> None:
    a = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    b = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
    backend = MemoryBackend()
    backend.apply([AddService(Service(a)), AddService(Service(b))])
    assert [e.service.key for e in backend.services(only={b})] == [b]
    assert backend.services(only=()) == []
    assert [e.service.key for e in backend.services()] == [a, b]


def test_what_the_encoder_refuses_is_refused_before_anything_is_applied() -> None:
    backend = MemoryBackend([ServiceEntry(SVC)])
    bad = AddDestination(KEY, Destination(D1.address, 80, weight=-1))
    with pytest.raises(InvalidOperation, match=r"operation 1: .*weight -1 is out of range"):
        backend.apply([AddDestination(KEY, D2), bad])
    assert backend.services()[0].destinations == ()


def test_apply_each_goes_on_past_every_failure() -> None:
    backend = MemoryBackend([ServiceEntry(SVC)])
    other = ServiceKey.inet(Protocol.TCP, "10.0.0.9", 80)
    multicast = Destination(ip_address("224.0.0.7"), 80)
    operations: list[Operation] = [
        AddDestination(KEY, D1),
        AddDestination(KEY, multicast),
        AddService(Service(other, "nope")),
        AddDestination(KEY, Destination(D2.address, 80, weight=-1)),
        AddDestination(KEY, D1),
        AddDestination(KEY, D2),
    ]
    outcomes = backend.apply_each(operations)
    assert outcomes[0] is None and outcomes[5] is None
    assert isinstance(outcomes[1], IPVSError) and outcomes[1].errno == errno.EINVAL
    assert isinstance(outcomes[2], SchedulerNotFound)
    assert isinstance(outcomes[3], InvalidOperation)
    assert isinstance(outcomes[4], DestinationExists)
    assert all(isinstance(o, KernelError) for o in outcomes[1:5])
    assert [e.destination for e in backend.services()[0].destinations] == [D1, D2]
    assert backend.applied == [operations[0], operations[5]]


@pytest.mark.parametrize(
    "address", ["224.0.0.7", "0.0.0.0", "255.255.255.255", "ff02::1", "::", "fe80::1"]
)
def test_a_destination_that_is_not_unicast_is_einval(address: str) -> None:
    key = KEY if ip_address(address).version == 4 else ServiceKey.inet(Protocol.TCP, "::1", 80)
    backend = MemoryBackend([ServiceEntry(Service(key, "rr"))])
    (outcome,) = backend.apply_each([AddDestination(key, Destination(ip_address(address), 80))])
    assert isinstance(outcome, IPVSError) and outcome.errno == errno.EINVAL
    assert "address not unicast" in outcome.message


def test_timeouts_above_int_max_over_hz_are_einval() -> None:
    backend = MemoryBackend()  # HZ 250, as Debian's kernel
    backend.apply([SetTimeouts(Timeouts(2500000, 120, 300))])
    assert backend.timeouts() == Timeouts(2500000, 120, 300)
    (outcome,) = backend.apply_each([SetTimeouts(Timeouts(2**31 // 250 + 1, 0, 0))])
    assert isinstance(outcome, IPVSError) and outcome.errno == errno.EINVAL
    (outcome,) = MemoryBackend(hz=1000).apply_each([SetTimeouts(Timeouts(2500000, 120, 300))])
    assert isinstance(outcome, IPVSError) and outcome.errno == errno.EINVAL
