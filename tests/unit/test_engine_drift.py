"""Drift repair by digests (issue 8): a drift check reads the whole table
cheaply and in full only the services it cannot vouch for, yet still repairs
whatever changed behind the daemon's back. The engine over the in-memory
backend under trio's autojump clock; the digests of /proc/net/ip_vs as pure
functions."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import pytest
import structlog.testing
import trio
import trio.testing
from engine_support import Network, running

from director.config import parse_config
from director.engine import DRIFT_ROTATION, Director
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceKey,
)
from director.ipvs.netlink import table_digests
from director.ipvs.ops import AddDestination, DeleteDestination, EditDestination
from director.ipvs.servicetable import TableKey, digest_shows
from director.kernel import KernelTable, entry_digest

SERVICES = 24
PER_SERVICE = 3
INTERVAL = 5.0


def key(i: int) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, "10.0.0.1", 8000 + i)


def address(i: int, j: int) -> IPAddress:
    return ip_address(f"10.0.{i + 1}.{j + 1}")


def config_text() -> str:
    lines = ["[daemon]", f"reconcile_interval = {INTERVAL}"]
    for i in range(SERVICES):
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "10.0.0.1:{8000 + i}"',
            'scheduler = "rr"',
            'check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }',
        ]
        for j in range(PER_SERVICE):
            lines += ["[[virtual_server.real_server]]", f'address = "10.0.{i + 1}.{j + 1}"']
    return "\n".join(lines) + "\n"


class Kernel(MemoryBackend):
    """Records the services each full (not brief) read returned, and the
    services of each read of settled digests (none with `settled=False`:
    a backend without them)."""

    def __init__(self, *, settled: bool = True) -> None:
        super().__init__()
        self.full_reads: list[set[ServiceKey]] = []
        self.settled_reads: list[set[ServiceKey]] = []
        if not settled:
            self.settled_digests = None  # type: ignore[assignment]

    def settled_digests(self, keys: Collection[ServiceKey]) -> dict[ServiceKey, bytes]:
        self.settled_reads.append(set(keys))
        return super().settled_digests(keys)

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        entries = super().services(only, brief=brief)
        if not brief:
            self.full_reads.append({e.service.key for e in entries})
        return entries

    def destination(self, service: ServiceKey, address: IPAddress) -> Destination | None:
        for entry in MemoryBackend.services(self, [service]):
            for d in entry.destinations:
                if d.destination.address == address:
                    return d.destination
        return None


def director_for(kernel: Kernel, network: Network) -> Director:
    return Director(
        parse_config(config_text()),
        KernelTable(kernel, threaded=False),
        probe=network.probe,
        rng=random.Random(5),
    )


async def settled(kernel: Kernel, director: Director) -> None:
    """The whole table up, then two drift checks: every service vouched for."""
    while (  # noqa: ASYNC110
        sum(len(e.destinations) for e in MemoryBackend.services(kernel)) < SERVICES * PER_SERVICE
    ):
        await trio.sleep(0.1)
    await trio.sleep(2 * INTERVAL + 0.1)


async def test_a_quiet_drift_check_reads_one_slice_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        reads = len(kernel.full_reads)
        await trio.sleep(INTERVAL)
    slice_size = -(-SERVICES // DRIFT_ROTATION)
    assert [len(r) for r in kernel.full_reads[reads:]] == [slice_size]


async def test_the_first_drift_check_reads_one_slice_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The start's pass reads every service in full and the fill's passes
    change them as they believe: the digests vouch for them at the first
    drift check (at 10,000 servers it read all 100 services in full, and a
    third of them at every check of the fill)."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        reads = len(kernel.full_reads)
        await trio.sleep(INTERVAL + 0.1)
        assert sum(len(e.destinations) for e in MemoryBackend.services(kernel)) == (
            SERVICES * PER_SERVICE
        )
    slice_size = -(-SERVICES // DRIFT_ROTATION)
    assert [len(r) for r in kernel.full_reads[reads:]] == [slice_size]


async def test_a_service_a_drift_check_changed_is_vouched_for_at_the_next(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A drift check that repairs a service leaves it as it believes: the
    next check vouches for it by its digest, without reading it again."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        await past_drift_check(director)
        i = outside_next_slice(director)
        MemoryBackend.apply(kernel, [DeleteDestination(key(i), address(i, 1), 8000 + i)])
        await past_drift_check(director)
        assert kernel.destination(key(i), address(i, 1)) is not None
        assert any(key(i) in read for read in kernel.full_reads[-1:])
        reads = len(kernel.full_reads)
        await trio.sleep(INTERVAL)
    assert [len(r) for r in kernel.full_reads[reads:]] == [-(-SERVICES // DRIFT_ROTATION)]
    assert not any(key(i) in read for read in kernel.full_reads[reads:])


async def test_every_service_is_read_in_full_within_the_first_rotation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        reads = len(kernel.full_reads)
        await trio.sleep(DRIFT_ROTATION * INTERVAL + 0.1)
    seen: set[ServiceKey] = set().union(*kernel.full_reads[reads:])
    assert seen == {key(i) for i in range(SERVICES)}


async def test_a_quiet_table_is_read_in_full_once_then_by_its_settled_digests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After its first read in full, a service nobody changed is skipped by
    the rotation while its settled digest (everything a read in full
    decodes, without stats and connection counts) stays the same: each
    check still reads the settled digests of its slice."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await trio.sleep(DRIFT_ROTATION * INTERVAL + 0.1)
        reads, settled_reads = len(kernel.full_reads), len(kernel.settled_reads)
        await trio.sleep(DRIFT_ROTATION * INTERVAL)
    assert kernel.full_reads[reads:] == []
    seen: set[ServiceKey] = set().union(*kernel.settled_reads[settled_reads:])
    assert seen == {key(i) for i in range(SERVICES)}


async def test_a_backend_without_settled_digests_reads_the_rotation_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    kernel, network = Kernel(settled=False), Network()
    director = director_for(kernel, network)
    async with running(director):
        await trio.sleep(DRIFT_ROTATION * INTERVAL + 0.1)
        reads = len(kernel.full_reads)
        await trio.sleep(DRIFT_ROTATION * INTERVAL)
    seen: set[ServiceKey] = set().union(*kernel.full_reads[reads:])
    assert seen == {key(i) for i in range(SERVICES)}


@pytest.mark.parametrize(
    "change",
    ["delete", "weight"],
)
async def test_a_change_the_listing_shows_is_repaired_at_the_next_drift_check(
    autojump_clock: trio.testing.MockClock, change: str
) -> None:
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    victim = address(7, 1)
    async with running(director):
        await settled(kernel, director)
        if change == "delete":
            MemoryBackend.apply(kernel, [DeleteDestination(key(7), victim, 8007)])
        else:
            dest = Destination(victim, 8007, Forward.ROUTE, 9)
            MemoryBackend.apply(kernel, [EditDestination(key(7), dest)])
        changed = trio.current_time()
        while (d := kernel.destination(key(7), victim)) is None or d.weight != 1:  # noqa: ASYNC110
            await trio.sleep(0.05)
        repaired = trio.current_time() - changed
    assert repaired <= INTERVAL + 0.1


async def test_a_drift_repair_is_a_warning_that_names_the_services(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial report: a hand edit (ipvsadm -e, -a into a managed service) was
    repaired, but the log had only the repair's ipvs_op lines, which a
    health change makes too: nothing said someone had changed the table.
    A drift check that sends operations is a `table_drift_repaired`
    warning naming the services and spelling out the repairs (what was
    found); one that finds nothing logs none, and a health change's pass is
    no drift."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        with structlog.testing.capture_logs() as quiet:
            await past_drift_check(director)
            await past_drift_check(director)
            network.down.add(address(2, 0))  # a health change: not drift
            await trio.sleep(2.0)
            await past_drift_check(director)
        assert not [e for e in quiet if e["event"] == "table_drift_repaired"], quiet
        assert kernel.destination(key(2), address(2, 0)) is None
        edited = Destination(address(7, 1), 8007, Forward.ROUTE, 9)
        extra = Destination(ip_address("10.0.8.200"), 8007, Forward.ROUTE, 1)
        MemoryBackend.apply(
            kernel, [EditDestination(key(7), edited), AddDestination(key(7), extra)]
        )
        with structlog.testing.capture_logs() as logged:
            await past_drift_check(director)
    (warning,) = [e for e in logged if e["event"] == "table_drift_repaired"]
    assert warning == {
        "event": "table_drift_repaired",
        "log_level": "warning",
        "services": ["TCP 10.0.0.1:8007"],
        "operations": 2,
        "repairs": [
            "delete_destination TCP 10.0.0.1:8007 10.0.8.200:8007",
            "edit_destination TCP 10.0.0.1:8007 10.0.8.2:8007 weight=9->1",
        ],
    }


async def test_a_health_change_during_a_drift_checks_read_is_no_drift(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial report (stop 30, an overloaded VM): table_drift_repaired named
    a service nobody had touched. A server went down while the drift check
    read the kernel (slow under load); the check's pass, planned with the
    new health, removed it, and counted that as drift."""
    kernel, network = Kernel(), Network()

    class SlowTable(KernelTable):
        victim: IPAddress | None = None

        async def services(self, *args: Any, **kwargs: Any) -> list[ServiceEntry]:
            if self.victim is not None and not kwargs.get("brief"):
                network.down.add(self.victim)  # it dies as the read begins
                self.victim = None
                await trio.sleep(2.0)  # a read slowed by load
            return await super().services(*args, **kwargs)

    table = SlowTable(kernel, threaded=False)
    director = Director(parse_config(config_text()), table, probe=network.probe, rng=random.Random(5))  # fmt: skip
    async with running(director):
        await settled(kernel, director)
        i = director._rotation % SERVICES  # in the next check's slice, read in full
        table.victim = address(i, 0)
        with structlog.testing.capture_logs() as logs:
            await past_drift_check(director)
            await trio.sleep(2.5)
        assert kernel.destination(key(i), address(i, 0)) is None  # the change was made
    assert [e for e in logs if e["event"] == "table_drift_repaired"] == []


@pytest.mark.parametrize("rotations", [0, 2])
async def test_a_change_the_listing_hides_is_repaired_within_the_rotation(
    autojump_clock: trio.testing.MockClock, rotations: int
) -> None:
    """A threshold is not in /proc/net/ip_vs: the rotation's full reads
    find it, also once the rotation reads a quiet table by its settled
    digests alone (`rotations` of them before the change)."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    victim = address(3, 0)
    async with running(director):
        await settled(kernel, director)
        await trio.sleep(rotations * DRIFT_ROTATION * INTERVAL)
        dest = Destination(victim, 8003, Forward.ROUTE, 1, u_threshold=50)
        MemoryBackend.apply(kernel, [EditDestination(key(3), dest)])
        changed = trio.current_time()
        while (d := kernel.destination(key(3), victim)) is None or d.u_threshold:  # noqa: ASYNC110
            await trio.sleep(0.05)
        repaired = trio.current_time() - changed
    assert repaired <= DRIFT_ROTATION * INTERVAL + 0.1


async def test_a_service_a_pass_touched_is_not_vouched_for_by_its_old_digest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A server goes down (its pass removes it), then someone puts it back
    by hand, exactly as it was when the last drift check vouched for the
    service: the digest is the old one, yet the next drift check removes it."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        # Just after a drift check, and a service the next one's slice of
        # full reads leaves out.
        await past_drift_check(director)
        i = outside_next_slice(director)
        port = 8000 + i
        # The last of its service in the kernel's order: put back at the
        # end, it is as it was.
        victim = MemoryBackend.services(kernel, [key(i)])[0].destinations[-1].destination.address
        before = await director.kernel.digests()
        network.down.add(victim)
        while kernel.destination(key(i), victim) is not None:  # noqa: ASYNC110
            await trio.sleep(0.01)
        MemoryBackend.apply(
            kernel, [AddDestination(key(i), Destination(victim, port, Forward.ROUTE, 1))]
        )
        restored = await director.kernel.digests()
        assert before is not None and restored is not None
        assert restored[key(i)] == before[key(i)]
        put_back = trio.current_time()
        assert put_back < director._full_due()
        while kernel.destination(key(i), victim) is not None:  # noqa: ASYNC110
            await trio.sleep(0.05)
        removed = trio.current_time() - put_back
    assert removed <= INTERVAL + 0.1


async def past_drift_check(director: Director) -> None:
    """Until just after the next drift check."""
    await trio.sleep(director._full_due() - trio.current_time() + 0.05)


def outside_next_slice(director: Director) -> int:
    """A service the next drift check's slice of full reads leaves out."""
    return (director._rotation + SERVICES // 2) % SERVICES


async def churn(kernel: Kernel, director: Director, network: Network) -> int:
    """Just after a drift check, one server of every service goes down and
    its pass removes it: every service is touched before the next check.
    How many full reads there were by then."""
    await past_drift_check(director)
    network.down |= {address(i, 0) for i in range(SERVICES)}
    while any(  # noqa: ASYNC110
        kernel.destination(key(i), address(i, 0)) is not None for i in range(SERVICES)
    ):
        await trio.sleep(0.01)
    assert trio.current_time() < director._full_due()
    return len(kernel.full_reads)


async def test_under_churn_a_drift_check_reads_one_slice_in_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The digest of a service a pass touched shows what that pass left:
    the drift check vouches for it without reading it back."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        reads = await churn(kernel, director, network)
        await past_drift_check(director)
    slice_size = -(-SERVICES // DRIFT_ROTATION)
    assert [len(r) for r in kernel.full_reads[reads:]] == [slice_size]


async def test_under_churn_a_hand_change_to_a_touched_service_is_repaired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A service a pass touched, then changed by hand where the listing
    shows it: its digest no longer shows the pass's belief, and the next
    drift check reads and repairs it."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        await churn(kernel, director, network)
        i = outside_next_slice(director)
        victim = address(i, 1)
        dest = Destination(victim, 8000 + i, Forward.ROUTE, 9)
        MemoryBackend.apply(kernel, [EditDestination(key(i), dest)])
        changed = trio.current_time()
        while (d := kernel.destination(key(i), victim)) is None or d.weight != 1:  # noqa: ASYNC110
            await trio.sleep(0.05)
        repaired = trio.current_time() - changed
    assert repaired <= INTERVAL + 0.1


async def test_a_drift_check_covers_the_services_a_pass_was_asked_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A pass asked for a service just as the drift check falls due is not
    lost to the check: the check reads that service in full, though its
    digest vouches for it."""
    kernel, network = Kernel(), Network()
    director = director_for(kernel, network)
    async with running(director):
        await settled(kernel, director)
        await past_drift_check(director)
        i = outside_next_slice(director)
        assert key(i) in director._verified
        reads = len(kernel.full_reads)

        async def due_now() -> None:
            director._last_full -= INTERVAL
            director.poke("test", key(i))

        await director.exclusive(due_now)
        await trio.sleep(0.01)
    assert any(key(i) in read for read in kernel.full_reads[reads:])


# --- the digests of /proc/net/ip_vs ------------------------------------------------

HEADER = (
    "IP Virtual Server version 1.2.1 (size=4096)\n"
    "Prot LocalAddress:Port Scheduler Flags\n"
    "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n"
)


def table(weight: int = 1, active: int = 0, inactive: int = 0, scheduler: str = "wrr") -> str:
    """A table as ip_vs_info_seq_show prints it."""
    return (
        HEADER
        + f"TCP  0A010001:0050 {scheduler} \n"
        + f"  -> 0A020001:0050      Masq    {weight:<6d} {active:<10d} {inactive:<10d}\n"
        + f"  -> 0A020002:0050      Route   1      {active:<10d} {inactive:<10d}\n"
        + "UDP  [2001:0db8:0000:0000:0000:0000:0000:0001]:0035 rr persistent 300 FFFFFF00\n"
        + "FWM  00000007 sh \n"
        + "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Tunnel  1      0          0\n"
        + "FWM  00000007 rr \n"
        + "XYZ  0A010001:0050 rr \n"
    )


def test_the_digests_ignore_connection_counts() -> None:
    assert table_digests(table(active=3, inactive=1234567890)) == table_digests(table())


def test_the_digests_change_with_what_the_listing_shows() -> None:
    tcp = ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80)
    base = table_digests(table())
    assert table_digests(table(weight=100000))[tcp] != base[tcp]
    assert table_digests(table(scheduler="rr"))[tcp] != base[tcp]
    assert table_digests(table(weight=100000))[("FWM", 7)] == base[("FWM", 7)]


def test_the_digests_name_each_service_as_the_file_does() -> None:
    digests = table_digests(table())
    udp = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)
    assert set(digests) == {ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80), udp, ("FWM", 7)}
    assert "persistent 300 FFFFFF00" in digests[udp]
    # Both families' services of mark 7 in one digest.
    assert "sh" in digests[("FWM", 7)] and "rr" in digests[("FWM", 7)]


def test_what_is_no_service_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not an IPVS service table"):
        table_digests("hello\n")


def test_a_backend_without_the_file_digests_what_the_listing_shows() -> None:
    service = Service(ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80), "wrr")
    dest = Destination(ip_address("10.2.0.1"), 80, Forward.MASQ, 1)

    async def digests(kernel: MemoryBackend) -> dict[TableKey, str] | None:
        return await KernelTable(kernel, threaded=False).digests()

    one = MemoryBackend([ServiceEntry(service, ())])
    one.apply([AddDestination(service.key, dest)])
    hidden = MemoryBackend([ServiceEntry(service, ())])
    hidden.apply([AddDestination(service.key, Destination(dest.address, 80, Forward.MASQ, 1, 9))])
    shown = MemoryBackend([ServiceEntry(service, ())])
    shown.apply([AddDestination(service.key, Destination(dest.address, 80, Forward.MASQ, 2))])
    a, b, c = (trio.run(digests, k) for k in (one, hidden, shown))
    assert a == b
    assert a != c


# --- what a digest shows --------------------------------------------------------

TCP = ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80)
SHOWN = (
    Destination(ip_address("10.2.0.1"), 80, Forward.MASQ, 1),
    Destination(ip_address("10.2.0.2"), 80, Forward.ROUTE, 1),
)


def test_a_digest_shows_its_destinations_in_any_order() -> None:
    digest = table_digests(table())[TCP]
    assert digest_shows(digest, digest, SHOWN)
    assert digest_shows(digest, digest, SHOWN[::-1])


@pytest.mark.parametrize(
    "destinations",
    [
        SHOWN[:1],
        (*SHOWN, Destination(ip_address("10.2.0.3"), 80, Forward.MASQ, 1)),
        (SHOWN[0], Destination(ip_address("10.2.0.2"), 80, Forward.MASQ, 1)),
        (SHOWN[0], Destination(ip_address("10.2.0.2"), 80, Forward.ROUTE, 2)),
        (SHOWN[0], Destination(ip_address("10.2.0.2"), 81, Forward.ROUTE, 1)),
        (SHOWN[0], SHOWN[0]),
    ],
    ids=["missing", "extra", "forward", "weight", "port", "twice"],
)
def test_a_digest_does_not_show_other_destinations(destinations: tuple[Destination, ...]) -> None:
    digest = table_digests(table())[TCP]
    assert not digest_shows(digest, digest, destinations)


def test_a_digest_with_another_service_line_shows_nothing() -> None:
    earlier = table_digests(table(scheduler="rr"))[TCP]
    assert not digest_shows(table_digests(table())[TCP], earlier, SHOWN)


def test_a_digest_of_a_mark_in_both_families_shows_nothing() -> None:
    one = HEADER + "FWM  00000007 sh \n" + TUNNEL_LINE
    both = one + "FWM  00000007 rr \n"
    digest, merged = table_digests(one)[("FWM", 7)], table_digests(both)[("FWM", 7)]
    tunnel = Destination(ip_address("2001:db8::2"), 0, Forward.TUNNEL, 1)
    assert digest_shows(digest, digest, [tunnel])
    assert not digest_shows(merged, merged, [tunnel])


TUNNEL_LINE = "  -> [2001:0db8:0000:0000:0000:0000:0000:0002]:0000      Tunnel  1      0          0         \n"


def test_a_digest_without_the_file_reads_as_the_files() -> None:
    entry = ServiceEntry(Service(TCP, "wrr"), tuple(map(DestinationEntry, SHOWN)))
    digest = entry_digest(entry)
    assert digest_shows(digest, digest, SHOWN[::-1])
    assert not digest_shows(digest, digest, SHOWN[:1])


def test_a_digest_shows_a_local_destination_whatever_was_asked() -> None:
    """The kernel makes a destination whose address is the director's own
    Local (ip_vs_ctl.c), whatever forwarding method was asked."""
    text = (
        HEADER
        + "TCP  0A010001:0050 wrr \n"
        + "  -> 0A020001:0050      Local   1      0          0         \n"
    )
    digest = table_digests(text)[TCP]
    assert digest_shows(digest, digest, SHOWN[:1])
    assert not digest_shows(digest, digest, [replace(SHOWN[0], weight=2)])
