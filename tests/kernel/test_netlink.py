"""NetlinkBackend against the real kernel, cross-checked with the real ipvsadm.

Each test runs in a fresh network namespace (the `netns` fixture), so the
backend and ipvsadm see that namespace's own, initially empty, IPVS table.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director.ipvs import ops
from director.ipvs.errors import (
    DaemonError,
    DestinationExists,
    IPVSError,
    NoSuchDestination,
    NoSuchService,
    SchedulerNotFound,
    ServiceExists,
)
from director.ipvs.model import (
    AF_INET,
    AF_INET6,
    Destination,
    DestinationEntry,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceFlags,
    ServiceKey,
    SyncDaemon,
    SyncState,
    Timeouts,
    TunnelFlags,
    TunnelType,
)
from director.ipvs.netlink import NetlinkBackend, NetlinkBatchError

SCHEDULERS = ["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh"]
SCHED_FLAGS = ServiceFlags.SCHED1 | ServiceFlags.SCHED2 | ServiceFlags.SCHED3


def ipvsadm(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["ipvsadm", *args], input=stdin, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def backend(netns: str) -> Iterator[NetlinkBackend]:
    with NetlinkBackend() as b:
        yield b


# --- an independent model of `ipvsadm -Sn` (ipvsadm.c print_service_entry, FMT_RULE)


def addrport(address: IPAddress, port: int) -> str:
    return f"{address}:{port}" if address.version == 4 else f"[{address}]:{port}"


def service_arg(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.family == AF_INET6 else "")
    assert key.protocol is not None and key.address is not None
    option = {Protocol.TCP: "-t", Protocol.UDP: "-u", Protocol.SCTP: "--sctp-service"}
    return f"{option[key.protocol]} {addrport(key.address, key.port)}"


def sched_flag_names(service: Service) -> str:
    flags = service.flags
    if service.scheduler in ("sh", "mh"):
        names = [
            (ServiceFlags.SCHED1, f"{service.scheduler}-fallback"),
            (ServiceFlags.SCHED2, f"{service.scheduler}-port"),
        ]
    else:
        names = [
            (ServiceFlags.SCHED1, "flag-1"),
            (ServiceFlags.SCHED2, "flag-2"),
            (ServiceFlags.SCHED3, "flag-3"),
        ]
    return ",".join(name for flag, name in names if flags & flag)


def service_rule(service: Service) -> str:
    line = f"-A {service_arg(service.key)} -s {service.scheduler}"
    if service.persistent:
        line += f" -p {service.timeout}"
        if service.key.family == AF_INET and service.netmask != 0xFFFFFFFF:
            line += f" -M {IPv4Address(service.netmask)}"
        if service.key.family == AF_INET6 and service.netmask != 128:
            line += f" -M {service.netmask}"
    if service.pe_name:
        line += f" --pe {service.pe_name}"
    if service.flags & ServiceFlags.ONEPACKET:
        line += " -o"
    if service.flags & SCHED_FLAGS:
        line += " -b " + sched_flag_names(service)
    return line


TUN_FLAG_OPTIONS = {
    TunnelFlags.NOCSUM: "--tun-nocsum",
    TunnelFlags.CSUM: "--tun-csum",
    TunnelFlags.REMCSUM: "--tun-remcsum",
}


def destination_rule(key: ServiceKey, dest: Destination) -> str:
    switch = {Forward.MASQ: "-m", Forward.TUNNEL: "-i", Forward.LOCAL: "-g", Forward.ROUTE: "-g"}
    line = f"-a {service_arg(key)} -r {addrport(dest.address, dest.port)} {switch[dest.forward]} -w {dest.weight}"
    if dest.forward == Forward.TUNNEL:
        if dest.tun_type == TunnelType.GRE:
            line += f" --tun-type gre {TUN_FLAG_OPTIONS[dest.tun_flags]}"
        elif dest.tun_type == TunnelType.GUE:
            line += f" --tun-type gue --tun-port {dest.tun_port} {TUN_FLAG_OPTIONS[dest.tun_flags]}"
        else:
            line += " --tun-type ipip"
    return line


def service_order(key: ServiceKey) -> tuple[int, int, int, int, int]:
    address = int(key.address) if key.address is not None else 0
    return (key.fwmark, key.family, int(key.protocol or 0), address, key.port)


def save_rules(table: dict[Service, list[Destination]]) -> str:
    """What `ipvsadm -Sn` prints for `table` (services and destinations sorted
    as ipvsadm sorts them; the generated addresses keep its int-difference
    comparisons from overflowing)."""
    lines = []
    for service in sorted(table, key=lambda s: service_order(s.key)):
        lines.append(service_rule(service))
        for dest in sorted(table[service], key=lambda d: (int(d.address), d.port)):
            lines.append(destination_rule(service.key, dest))
    return "".join(line + "\n" for line in lines)


def restore_rules(table: dict[Service, list[Destination]]) -> str:
    """The same table as `ipvsadm -R` input, thresholds included."""
    lines = []
    for service, dests in table.items():
        lines.append(service_rule(service))
        for dest in dests:
            rule = destination_rule(service.key, dest)
            lines.append(f"{rule} -x {dest.u_threshold} -y {dest.l_threshold}")
    return "".join(line + "\n" for line in lines)


def as_table(entries: list[ServiceEntry]) -> dict[Service, set[Destination]]:
    return {e.service: {d.destination for d in e.destinations} for e in entries}


# --- random tables that both the kernel and ipvsadm accept


def v4_address(n: int) -> IPv4Address:
    return IPv4Address(0x0A000000 + (n // 254) * 256 + n % 254 + 1)


def v6_address(n: int) -> IPv6Address:
    return IPv6Address(0x20010DB8 << 96 | (n + 1))


@st.composite
def services(draw: st.DrawFn, index: int) -> Service:
    family = draw(st.sampled_from([AF_INET, AF_INET6]))
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "fwmark"]))
    if kind == "fwmark":
        key = ServiceKey.mark(index + 1, family)
    else:
        address = v4_address(index) if family == AF_INET else v6_address(index)
        protocol = {"tcp": Protocol.TCP, "udp": Protocol.UDP, "sctp": Protocol.SCTP}[kind]
        key = ServiceKey.inet(protocol, address, draw(st.integers(1, 65535)))
    scheduler = draw(st.sampled_from(SCHEDULERS))
    allowed = [ServiceFlags.SCHED1, ServiceFlags.SCHED2]
    if scheduler not in ("sh", "mh"):
        allowed.append(ServiceFlags.SCHED3)
    flags = ServiceFlags.NONE
    for flag in draw(st.lists(st.sampled_from(allowed), unique=True)):
        flags |= flag
    if (kind in ("udp", "fwmark")) and draw(st.booleans()):
        flags |= ServiceFlags.ONEPACKET
    timeout, netmask, pe_name = 0, -1, ""
    if draw(st.booleans()):
        flags |= ServiceFlags.PERSISTENT
        timeout = draw(st.integers(1, 86400 * 31))
        if family == AF_INET:
            netmask = (0xFFFFFFFF << (32 - draw(st.integers(8, 32)))) & 0xFFFFFFFF
        else:
            netmask = draw(st.integers(1, 128))
        if kind == "udp" and draw(st.booleans()):
            pe_name = "sip"
    return Service(key, scheduler, flags, timeout, netmask, pe_name)


@st.composite
def destinations(draw: st.DrawFn, service: Service, base: int) -> Destination:
    key = service.key
    address = v4_address(base) if key.family == AF_INET else v6_address(base)
    forward = draw(st.sampled_from([Forward.MASQ, Forward.ROUTE, Forward.TUNNEL]))
    port = draw(st.integers(1, 65535))
    if not key.fwmark and forward != Forward.MASQ:
        port = key.port  # ipvsadm forces this for route and tunnel
    tun_type, tun_port, tun_flags = TunnelType.IPIP, 0, TunnelFlags.NOCSUM
    if forward == Forward.TUNNEL:
        tun_type = draw(st.sampled_from(list(TunnelType)))
        if tun_type == TunnelType.GUE:
            tun_port = draw(st.integers(1, 65535))
            tun_flags = draw(st.sampled_from(list(TunnelFlags)))
        elif tun_type == TunnelType.GRE:
            tun_flags = draw(st.sampled_from([TunnelFlags.NOCSUM, TunnelFlags.CSUM]))
    u_threshold = draw(st.integers(0, 2**31 - 1))
    return Destination(
        address,
        port,
        forward,
        draw(st.integers(0, 65535)),
        u_threshold,
        draw(st.integers(0, u_threshold)),  # the kernel refuses lower > upper (ERANGE)
        tun_type,
        tun_port,
        tun_flags,
    )


@st.composite
def tables(draw: st.DrawFn) -> dict[Service, list[Destination]]:
    count = draw(st.integers(1, 6))
    table: dict[Service, list[Destination]] = {}
    for index in range(count):
        service = draw(services(index))
        dests = draw(st.integers(0, 4))
        base = 1000 + index * 10
        table[service] = [draw(destinations(service, base + j)) for j in range(dests)]
    return table


def operations_for(table: dict[Service, list[Destination]]) -> list[ops.Operation]:
    out: list[ops.Operation] = []
    for service, dests in table.items():
        out.append(ops.AddService(service))
        out.extend(ops.AddDestination(service.key, d) for d in dests)
    return out


RANDOM_TABLES = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@RANDOM_TABLES
@given(table=tables())
def test_what_the_backend_writes_ipvsadm_saves_exactly(
    backend: NetlinkBackend, table: dict[Service, list[Destination]]
) -> None:
    backend.apply([ops.Flush(), *operations_for(table)])
    assert ipvsadm("-Sn") == save_rules(table)
    assert as_table(backend.services()) == {s: set(d) for s, d in table.items()}


@RANDOM_TABLES
@given(table=tables())
def test_what_ipvsadm_restores_the_backend_dumps_exactly(
    backend: NetlinkBackend, table: dict[Service, list[Destination]]
) -> None:
    ipvsadm("-C")
    ipvsadm("-R", stdin=restore_rules(table))
    assert as_table(backend.services()) == {s: set(d) for s, d in table.items()}


def without_counters(entries: list[ServiceEntry]) -> list[ServiceEntry]:
    """What a brief read keeps: no stats, destinations without thresholds
    or persistent-connection counts."""
    return [
        ServiceEntry(
            e.service,
            tuple(
                DestinationEntry(
                    dataclasses.replace(d.destination, u_threshold=0, l_threshold=0),
                    d.active_conns,
                    d.inact_conns,
                )
                for d in e.destinations
            ),
        )
        for e in entries
    ]


def test_a_brief_read_is_the_full_one_without_thresholds_and_stats(
    backend: NetlinkBackend,
) -> None:
    plain = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    v6 = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)
    tunnelled = ServiceKey.mark(9)
    mark4, mark6 = ServiceKey.mark(7), ServiceKey.mark(7, AF_INET6)
    table = {
        plain: [
            Destination(ip_address("10.0.1.1"), 8080, Forward.MASQ, 2, 300, 100),
            Destination(ip_address("10.0.1.2"), 80, Forward.ROUTE, 0),
        ],
        v6: [Destination(ip_address("2001:db8::2"), 5353, Forward.MASQ, 65535, 9, 1)],
        tunnelled: [
            Destination(ip_address("10.0.2.1"), 0, Forward.ROUTE, 1, 5, 0),
            Destination(
                ip_address("2001:db8::9"),
                0,
                Forward.TUNNEL,
                3,
                7,
                0,
                TunnelType.GUE,
                6080,
                TunnelFlags.REMCSUM,
            ),
        ],
        mark4: [Destination(ip_address("10.0.3.1"), 0, Forward.ROUTE, 1, 50, 5)],
        mark6: [Destination(ip_address("2001:db8::3"), 0, Forward.ROUTE, 4, 60, 6)],
        ServiceKey.inet(Protocol.SCTP, "10.0.0.2", 9): [],
    }
    operations: list[ops.Operation] = []
    for key, dests in table.items():
        operations.append(ops.AddService(Service(key, "wlc")))
        operations.extend(ops.AddDestination(key, d) for d in dests)
    backend.apply(operations)

    full = backend.services()
    brief = backend.services(brief=True)
    assert without_counters(brief) == without_counters(full)
    # Read from /proc/net/ip_vs: no thresholds. Dumped (a tunnel's type, a
    # mark in both families): exact.
    got = {e.service.key: e for e in brief}
    assert [d.destination.u_threshold for d in got[plain].destinations] == [0, 0]
    assert [d.destination.u_threshold for d in got[v6].destinations] == [0]
    assert got[tunnelled].destinations == {e.service.key: e for e in full}[tunnelled].destinations
    assert [d.destination.u_threshold for d in got[mark4].destinations] == [50]
    assert [d.destination.u_threshold for d in got[mark6].destinations] == [60]
    assert backend.services([plain], brief=True) == [got[plain]]


def test_thresholds_read_back_through_ipvsadm(backend: NetlinkBackend) -> None:
    key = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
    dest = Destination(ip_address("10.0.1.1"), 8080, Forward.MASQ, 2, 300, 100)
    backend.apply([ops.AddService(Service(key, "wlc")), ops.AddDestination(key, dest)])
    listing = ipvsadm("-Ln", "--thresholds").splitlines()
    assert listing[-1].split() == ["->", "10.0.1.1:8080", "300", "100", "0", "0"]


def test_edit_service_and_destination(backend: NetlinkBackend) -> None:
    key = ServiceKey.inet(Protocol.UDP, "10.0.0.1", 53)
    dest = Destination(ip_address("10.0.1.1"), 53, Forward.ROUTE, 1)
    backend.apply([ops.AddService(Service(key, "rr")), ops.AddDestination(key, dest)])
    edited = Service(key, "sh", ServiceFlags.PERSISTENT | ServiceFlags.SCHED2, 60, 0xFFFF0000)
    new_dest = Destination(
        ip_address("10.0.1.1"), 53, Forward.TUNNEL, 7, 0, 0, TunnelType.GRE, 0, TunnelFlags.CSUM
    )
    backend.apply([ops.EditService(edited), ops.EditDestination(key, new_dest)])
    assert ipvsadm("-Sn") == (
        "-A -u 10.0.0.1:53 -s sh -p 60 -M 255.255.0.0 -b sh-port\n"
        "-a -u 10.0.0.1:53 -r 10.0.1.1:53 -i -w 7 --tun-type gre --tun-csum\n"
    )
    backend.apply([ops.DeleteDestination(key, ip_address("10.0.1.1"), 53)])
    assert ipvsadm("-Sn") == "-A -u 10.0.0.1:53 -s sh -p 60 -M 255.255.0.0 -b sh-port\n"
    backend.apply([ops.DeleteService(key)])
    assert ipvsadm("-Sn") == ""


def test_dump_of_only_some_services(backend: NetlinkBackend) -> None:
    ipvsadm("-R", stdin=(
        "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -m\n"
        "-A -t 10.0.0.2:80 -s rr\n-a -t 10.0.0.2:80 -r 10.0.1.2:80 -m -w 3\n"
        "-A -f 7 -s wlc\n-a -f 7 -r 10.0.1.3:0 -g\n"
    ))  # fmt: skip
    wanted = {ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80), ServiceKey.mark(7)}
    some = backend.services(only=wanted)
    assert [e.service.key for e in some] == [
        e.service.key for e in backend.services() if e.service.key in wanted
    ]
    assert {e.service.key: [d.destination.weight for d in e.destinations] for e in some} == {
        ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80): [3],
        ServiceKey.mark(7): [1],
    }
    assert backend.services(only=set()) == []


def test_flush_empties_the_table(backend: NetlinkBackend) -> None:
    ipvsadm("-A", "-t", "10.0.0.1:80")
    ipvsadm("-A", "-f", "3", "-6")
    backend.apply([ops.Flush()])
    assert backend.services() == []
    assert ipvsadm("-Sn") == ""


def test_info_matches_ipvsadm(backend: NetlinkBackend) -> None:
    info = backend.info()
    header = ipvsadm("-Ln").splitlines()[0]
    assert header == f"IP Virtual Server version {info.version_string} (size={info.conn_tab_size})"


V4_KEY = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
V4_DEST = Destination(ip_address("10.0.1.1"), 80, Forward.MASQ)


@pytest.mark.parametrize(
    ("setup", "operation", "error", "message"),
    [
        (
            [ops.AddService(Service(V4_KEY))],
            ops.AddService(Service(V4_KEY)),
            ServiceExists,
            "Service already exists",
        ),
        ([], ops.DeleteService(V4_KEY), NoSuchService, "No such service"),
        ([], ops.EditService(Service(V4_KEY)), NoSuchService, "No such service"),
        ([], ops.AddDestination(V4_KEY, V4_DEST), NoSuchService, "Service not defined"),
        (
            [ops.AddService(Service(V4_KEY)), ops.AddDestination(V4_KEY, V4_DEST)],
            ops.AddDestination(V4_KEY, V4_DEST),
            DestinationExists,
            "Destination already exists",
        ),
        (
            [ops.AddService(Service(V4_KEY))],
            ops.EditDestination(V4_KEY, V4_DEST),
            NoSuchDestination,
            "No such destination",
        ),
        (
            [ops.AddService(Service(V4_KEY))],
            ops.DeleteDestination(V4_KEY, V4_DEST.address, 80),
            NoSuchDestination,
            "No such destination",
        ),
        (
            [],
            ops.AddService(Service(V4_KEY, "nosuch")),
            SchedulerNotFound,
            "Scheduler or persistence engine not found",
        ),
        (
            [],
            ops.AddService(Service(V4_KEY, pe_name="nosuch")),
            SchedulerNotFound,
            "Scheduler or persistence engine not found",
        ),
        ([], ops.Zero(V4_KEY), NoSuchService, "No such service"),
        ([], ops.StopDaemon(SyncState.MASTER), DaemonError, "No daemon is running"),
    ],
)
def test_kernel_errors_are_typed_with_ipvsadms_words(
    backend: NetlinkBackend,
    setup: list[ops.Operation],
    operation: ops.Operation,
    error: type[IPVSError],
    message: str,
) -> None:
    backend.apply(setup)
    with pytest.raises(NetlinkBatchError) as caught:
        backend.apply([operation])
    assert caught.value.index == 0
    assert isinstance(caught.value.error, error)
    assert str(caught.value.error) == message


def keys(backend: NetlinkBackend) -> set[ServiceKey]:
    return {e.service.key for e in backend.services()}


def key(n: int) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, v4_address(n), 80)


def test_batch_failure_names_the_first_failed_operation(backend: NetlinkBackend) -> None:
    batch = [ops.AddService(Service(key(n))) for n in range(5)]
    batch[3] = ops.AddService(Service(key(1)))
    with pytest.raises(NetlinkBatchError) as caught:
        backend.apply(batch)
    assert caught.value.index == 3
    assert caught.value.operation == batch[3]
    assert isinstance(caught.value.error, ServiceExists)
    # One chunk: the kernel carried on after the failure, and says so.
    assert caught.value.attempted == 5
    assert [index for index, _ in caught.value.failures] == [3]
    assert keys(backend) == {key(0), key(1), key(2), key(4)}


def test_batch_stops_after_the_chunk_that_failed(netns: str) -> None:
    with NetlinkBackend(chunk_bytes=400) as backend:
        batch: list[ops.Operation] = [ops.AddService(Service(key(n))) for n in range(40)]
        batch[10] = ops.DeleteService(key(1000))
        batch[12] = ops.AddService(Service(key(0)))
        with pytest.raises(NetlinkBatchError) as caught:
            backend.apply(batch)
        error = caught.value
        assert (error.index, type(error.error)) == (10, NoSuchService)
        assert [index for index, _ in error.failures] == [10, 12]
        assert 12 < error.attempted < 40
        applied = {n for n in range(error.attempted) if n not in (10, 12)}
        assert keys(backend) == {key(n) for n in applied}


def test_large_batch_in_many_chunks(backend: NetlinkBackend) -> None:
    batch: list[ops.Operation] = []
    for n in range(600):
        batch.append(ops.AddService(Service(key(n), "rr")))
        batch.extend(
            ops.AddDestination(key(n), Destination(v4_address(2000 + 3 * n + j), 80, Forward.ROUTE))
            for j in range(3)
        )
    backend.apply(batch)
    entries = backend.services()
    assert len(entries) == 600
    assert sum(len(e.destinations) for e in entries) == 1800
    assert ipvsadm("-Sn").count("\n") == 2400


def test_invalid_operation_changes_nothing(backend: NetlinkBackend) -> None:
    from director.ipvs.genl import InvalidOperation

    batch = [ops.AddService(Service(key(0))), ops.AddService(Service(key(1), "x" * 20))]
    with pytest.raises(InvalidOperation, match=r"operation 1: service .*: scheduler \"xxxx"):
        backend.apply(batch)
    assert backend.services() == []


def timeout_listing() -> str:
    return ipvsadm("-L", "--timeout")


def test_timeouts_set_and_get_match_ipvsadm(backend: NetlinkBackend) -> None:
    backend.apply([ops.SetTimeouts(Timeouts(100, 50, 200))])
    assert backend.timeouts() == Timeouts(100, 50, 200)
    assert timeout_listing() == "Timeout (tcp tcpfin udp): 100 50 200\n"
    backend.apply([ops.SetTimeouts(Timeouts(0, 60, 0))])
    assert backend.timeouts() == Timeouts(100, 60, 200)
    ipvsadm("--set", "30", "0", "40")
    assert backend.timeouts() == Timeouts(30, 60, 40)


def add_dummy(name: str, address: str) -> None:
    subprocess.run(["ip", "link", "add", name, "type", "dummy"], check=True)
    subprocess.run(["ip", "addr", "add", address, "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up", "multicast", "on"], check=True)


def test_sync_daemons_match_ipvsadm(backend: NetlinkBackend) -> None:
    add_dummy("sync0", "10.7.0.1/24")
    master = SyncDaemon(SyncState.MASTER, "sync0", 7, 1400, ip_address("239.1.2.3"), 8850, 2)
    backup = SyncDaemon(SyncState.BACKUP, "sync0", 9)
    backend.apply([ops.StartDaemon(master), ops.StartDaemon(backup)])
    try:
        daemons = {d.state: d for d in backend.daemons()}
        assert daemons[SyncState.MASTER] == master
        assert daemons[SyncState.BACKUP].syncid == 9
        assert daemons[SyncState.BACKUP].mcast_ifn == "sync0"
        listing = ipvsadm("-L", "--daemon").splitlines()
        assert (
            listing[0]
            == "master sync daemon (mcast=sync0, syncid=7, maxlen=1400, group=239.1.2.3, port=8850, ttl=2)"
        )
        assert listing[1].startswith("backup sync daemon (mcast=sync0, syncid=9")
        with pytest.raises(NetlinkBatchError) as caught:
            backend.apply([ops.StartDaemon(master)])
        assert str(caught.value.error) == "Daemon has already run"
        backend.apply([ops.StopDaemon(SyncState.MASTER)])
        assert [d.state for d in backend.daemons()] == [SyncState.BACKUP]
        assert ipvsadm("-L", "--daemon").startswith("backup sync daemon")
    finally:
        backend.apply([ops.StopDaemon(d.state) for d in backend.daemons()])
    assert backend.daemons() == []
    assert ipvsadm("-L", "--daemon") == ""


def test_ipvsadm_started_daemon_is_read_back(backend: NetlinkBackend) -> None:
    add_dummy("sync1", "10.8.0.1/24")
    ipvsadm(
        "--start-daemon",
        "master",
        "--mcast-interface",
        "sync1",
        "--syncid",
        "4",
        "--mcast-port",
        "9000",
    )
    try:
        (daemon,) = backend.daemons()
        assert (daemon.state, daemon.mcast_ifn, daemon.syncid, daemon.mcast_port) == (
            SyncState.MASTER,
            "sync1",
            4,
            9000,
        )
    finally:
        ipvsadm("--stop-daemon", "master")


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """The kernel folds per-CPU counters into the dumped stats from its
    estimator, every couple of seconds: poll until they show."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def udp_service(backend: NetlinkBackend) -> ServiceKey:
    """A UDP VIP whose traffic, sent from this namespace, IPVS schedules to a
    direct-routed destination behind a dummy interface."""
    add_dummy("vip0", "10.9.0.254/24")
    key = ServiceKey.inet(Protocol.UDP, "10.9.0.1", 5000)
    dest = Destination(ip_address("10.9.0.2"), 5000, Forward.ROUTE, 1)
    backend.apply([ops.AddService(Service(key, "rr")), ops.AddDestination(key, dest)])
    return key


def send_datagrams(count: int, source_port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("10.9.0.254", source_port))
        for _ in range(count):
            sock.sendto(b"x" * 100, ("10.9.0.1", 5000))


def test_stats_count_real_traffic_and_zero_clears_them(
    backend: NetlinkBackend, udp_service: ServiceKey
) -> None:
    send_datagrams(3, 40000)

    def counted() -> bool:
        (entry,) = backend.services()
        return entry.stats.inpkts >= 3

    wait_for(counted, "3 packets in the service's stats")
    (entry,) = backend.services()
    (dest,) = entry.destinations
    assert entry.stats.conns == 1 and dest.stats.conns == 1
    assert entry.stats.inpkts == 3 and dest.stats.inpkts == 3
    assert entry.stats.inbytes == dest.stats.inbytes >= 3 * 128
    stats_line = ipvsadm("-Ln", "--stats", "--exact").splitlines()[3].split()
    assert stats_line[:4] == ["UDP", "10.9.0.1:5000", "1", "3"]
    assert dest.inact_conns + dest.active_conns == 1

    backend.apply([ops.Zero(udp_service)])
    (entry,) = backend.services()
    assert (entry.stats.conns, entry.stats.inpkts, entry.stats.inbytes) == (0, 0, 0)
    assert entry.destinations[0].stats.conns == 0
    send_datagrams(2, 40001)
    wait_for(lambda: backend.services()[0].stats.inpkts >= 2, "2 new packets")
    backend.apply([ops.Zero()])
    assert backend.services()[0].stats.inpkts == 0


def test_connection_table_matches_ipvsadm(backend: NetlinkBackend, udp_service: ServiceKey) -> None:
    send_datagrams(1, 40002)
    send_datagrams(1, 40003)
    read = time.monotonic()
    connections = sorted(backend.connections(), key=lambda c: c.client_port)
    assert [(c.protocol, str(c.client), c.client_port) for c in connections] == [
        ("UDP", "10.9.0.254", 40002),
        ("UDP", "10.9.0.254", 40003),
    ]
    for conn in connections:
        assert (conn.virtual, conn.virtual_port) == (IPv4Address("10.9.0.1"), 5000)
        assert (conn.destination, conn.destination_port) == (IPv4Address("10.9.0.2"), 5000)
        assert conn.state == "UDP" and 0 < conn.expires <= 300
    rows = ipvsadm("-Lnc").splitlines()[2:]
    # The timers ran on between the two reads: by at most this (an ipvsadm
    # run takes seconds in a loaded VM), plus a second's rounding either way.
    between = time.monotonic() - read
    listed = sorted(row.split() for row in rows)
    assert [[r[0], r[2], r[3], r[4], r[5]] for r in listed] == [
        ["UDP", "UDP", f"10.9.0.254:{c.client_port}", "10.9.0.1:5000", "10.9.0.2:5000"]
        for c in connections
    ]
    for row, conn in zip(listed, connections, strict=True):
        minutes, seconds = map(int, row[1].split(":"))
        assert -2 <= conn.expires - (minutes * 60 + seconds) <= between + 2, (row, conn, between)


def test_ipv6_and_fwmark_services_dump(backend: NetlinkBackend) -> None:
    ipvsadm(
        "-A", "-u", "[2001:db8::1]:5060", "-s", "rr", "-p", "120", "-M", "64", "--pe", "sip", "-o"
    )
    ipvsadm("-a", "-u", "[2001:db8::1]:5060", "-r", "[2001:db8::2]:5060", "-m", "-w", "4")
    ipvsadm("-A", "-f", "42", "-s", "mh", "-b", "mh-fallback,mh-port")
    table = as_table(backend.services())
    v6 = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 5060)
    sip = Service(v6, "rr", ServiceFlags.PERSISTENT | ServiceFlags.ONEPACKET, 120, 64, "sip")
    mark = Service(ServiceKey.mark(42), "mh", ServiceFlags.SCHED1 | ServiceFlags.SCHED2)
    assert table == {
        sip: {Destination(IPv6Address("2001:db8::2"), 5060, Forward.MASQ, 4)},
        mark: set(),
    }
    assert re.fullmatch(r"\d+\.\d+\.\d+", backend.info().version_string)
