from __future__ import annotations

from ipaddress import ip_address
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from director.desired import DesiredService
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    AF_INET,
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
    TunnelFlags,
    TunnelType,
    full_netmask,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Operation,
)
from director.reconcile import (
    destination_matches,
    owned_after,
    plan,
    service_matches,
    service_sort_key,
)

A = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
B = ServiceKey.inet(Protocol.UDP, "10.0.0.1", 53)
FOREIGN = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 443)  # e.g. kube-proxy's


def d(host: int, weight: int = 1, **kw: Any) -> Destination:
    return Destination(ip_address(f"10.0.1.{host}"), 80, weight=weight, **kw)


def entry(service: Service, *dests: Destination) -> ServiceEntry:
    hashed = Service(
        service.key,
        service.scheduler,
        service.flags | ServiceFlags.HASHED,
        service.timeout,
        service.netmask,
        service.pe_name,
    )
    return ServiceEntry(hashed, tuple(DestinationEntry(x, 3, 1, stats=Stats(9)) for x in dests))


def want(service: Service, *dests: Destination) -> DesiredService:
    return DesiredService(service, dests)


def test_nothing_to_do() -> None:
    assert plan({}, {}, set()) == []
    svc = Service(A, "rr")
    kernel = {A: entry(svc, d(1), d(2, 5))}
    assert plan({A: want(svc, d(1), d(2, 5))}, kernel, {A}) == []


def test_new_service_is_added_before_its_destinations() -> None:
    svc = Service(A, "rr")
    assert plan({A: want(svc, d(2), d(1))}, {}, set()) == [
        AddService(svc),
        AddDestination(A, d(2)),
        AddDestination(A, d(1)),
    ]


def test_only_what_differs_is_touched() -> None:
    svc = Service(A, "rr")
    kernel = {A: entry(svc, d(1), d(2), d(3))}
    ops = plan({A: want(svc, d(1), d(2, 7), d(4))}, kernel, {A})
    assert ops == [
        DeleteDestination(A, ip_address("10.0.1.3"), 80),
        EditDestination(A, d(2, 7)),
        AddDestination(A, d(4)),
    ]


def test_service_settings_are_edited_in_place() -> None:
    old = Service(A, "rr")
    for new in (
        Service(A, "wlc"),
        Service(A, "rr", ServiceFlags.PERSISTENT, timeout=30),
        Service(A, "rr", ServiceFlags.PERSISTENT, timeout=30, netmask=0xFFFFFF00),
        Service(A, "sh", ServiceFlags.SCHED1),
        Service(A, "rr", ServiceFlags.PERSISTENT, timeout=30, pe_name="sip"),
    ):
        kernel = {A: entry(old, d(1))}
        assert plan({A: want(new, d(1))}, kernel, {A}) == [EditService(new)]


def test_services_neither_desired_nor_owned_are_never_touched() -> None:
    foreign = entry(Service(FOREIGN, "rr"), d(9))
    svc = Service(A, "rr")
    kernel = {A: entry(svc, d(1)), FOREIGN: foreign}
    assert plan({A: want(svc)}, kernel, {A}) == [DeleteDestination(A, ip_address("10.0.1.1"), 80)]
    assert plan({}, kernel, set()) == []


def test_owned_services_no_longer_desired_are_deleted() -> None:
    kernel = {A: entry(Service(A, "rr"), d(1)), B: entry(Service(B, "rr"))}
    assert plan({}, kernel, {A, B, FOREIGN}) == [DeleteService(A), DeleteService(B)]


def test_order_across_services() -> None:
    svc_b = Service(B, "rr")
    kernel = {A: entry(Service(A, "rr"), d(1)), B: entry(svc_b, d(1), d(2))}
    new = ServiceKey.mark(5)
    ops = plan({B: want(Service(B, "wlc"), d(2, 3)), new: want(Service(new), d(7))}, kernel, {A, B})
    assert ops == [
        DeleteDestination(B, ip_address("10.0.1.1"), 80),
        DeleteService(A),
        EditService(Service(B, "wlc")),
        AddService(Service(new)),
        EditDestination(B, d(2, 3)),
        AddDestination(new, d(7)),
    ]


def test_compares_only_what_a_writer_sets() -> None:
    assert service_matches(Service(A, "rr"), Service(A, "rr", ServiceFlags.HASHED))
    assert not service_matches(Service(A, "rr"), Service(A, "rr", ServiceFlags.ONEPACKET))
    route = d(1)
    odd_tunnel_fields = d(1, tun_type=TunnelType.GRE, tun_port=7, tun_flags=TunnelFlags.CSUM)
    assert destination_matches(route, odd_tunnel_fields)
    tunnel = d(1, forward=Forward.TUNNEL, tun_type=TunnelType.GUE, tun_port=6080)
    assert not destination_matches(
        tunnel, d(1, forward=Forward.TUNNEL, tun_type=TunnelType.GUE, tun_port=6081)
    )
    assert not destination_matches(route, d(1, forward=Forward.MASQ))
    assert not destination_matches(route, d(1, u_threshold=5))
    assert not destination_matches(route, d(1, l_threshold=5, u_threshold=9))


def test_sort_key_is_total_across_families_and_marks() -> None:
    keys = [
        ServiceKey.inet(Protocol.TCP, "2001:db8::1", 80),
        ServiceKey.mark(9, AF_INET6),
        ServiceKey.mark(2),
        ServiceKey.inet(Protocol.UDP, "10.0.0.2", 80),
        ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80),
        ServiceKey.inet(Protocol.TCP, "10.0.0.1", 81),
    ]
    ordered = sorted(keys, key=service_sort_key)
    assert ordered == [
        ServiceKey.inet(Protocol.TCP, "10.0.0.1", 81),
        ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80),
        ServiceKey.inet(Protocol.UDP, "10.0.0.2", 80),
        ServiceKey.mark(2),
        ServiceKey.inet(Protocol.TCP, "2001:db8::1", 80),
        ServiceKey.mark(9, AF_INET6),
    ]


def test_owned_after() -> None:
    ops: list[Operation] = [AddService(Service(B)), DeleteService(A)]
    assert owned_after({A, FOREIGN}, ops) == {B, FOREIGN}


def touched(op: Operation) -> ServiceKey:
    if isinstance(op, AddService | EditService):
        return op.service.key
    if isinstance(op, DeleteService):
        return op.key
    if isinstance(op, AddDestination | EditDestination | DeleteDestination):
        return op.service
    raise AssertionError(f"plan() made {op!r}")


# Property: plan() turns any kernel table into any desired table on the keys
# it owns and leaves every other service exactly as it was.

KEY_POOL = [
    A,
    B,
    FOREIGN,
    ServiceKey.inet(Protocol.SCTP, "10.0.0.9", 80),
    ServiceKey.inet(Protocol.TCP, "2001:db8::1", 80),
    ServiceKey.mark(1),
    ServiceKey.mark(1, AF_INET6),
]
keys = st.sampled_from(KEY_POOL)
dest_keys = st.tuples(
    st.sampled_from(["10.0.1.1", "10.0.1.2", "10.0.1.3", "2001:db8::5"]),
    st.sampled_from([80, 8080]),
)


@st.composite
def services(draw: st.DrawFn, key: ServiceKey) -> Service:
    flags = draw(st.sampled_from([ServiceFlags.NONE, ServiceFlags.ONEPACKET, ServiceFlags.SCHED1]))
    persistent = draw(st.booleans())
    if persistent:
        flags |= ServiceFlags.PERSISTENT
    netmask = full_netmask(key.family)
    if persistent and draw(st.booleans()):
        netmask = 0xFFFFFF00 if key.family == AF_INET else 64
    return Service(
        key,
        draw(st.sampled_from(["rr", "wlc", "sh"])),
        flags,
        timeout=draw(st.sampled_from([30, 300])) if persistent else 0,
        netmask=netmask,
        pe_name=draw(st.sampled_from(["", "sip"])) if persistent else "",
    )


@st.composite
def destinations(draw: st.DrawFn) -> tuple[Destination, ...]:
    chosen = draw(st.lists(dest_keys, unique=True, max_size=4))
    result = []
    for host, port in chosen:
        tun_type = draw(st.sampled_from(list(TunnelType)))
        upper = draw(st.sampled_from([0, 100]))
        result.append(
            Destination(
                ip_address(host),
                port,
                draw(st.sampled_from([Forward.ROUTE, Forward.MASQ, Forward.TUNNEL])),
                draw(st.integers(0, 3)),
                u_threshold=upper,
                l_threshold=draw(st.sampled_from([0, upper // 2])),
                tun_type=tun_type,
                tun_port=draw(st.sampled_from([6080, 6081])) if tun_type == TunnelType.GUE else 0,
                tun_flags=draw(st.sampled_from(list(TunnelFlags))),
            )
        )
    return tuple(result)


@st.composite
def tables(draw: st.DrawFn) -> dict[ServiceKey, tuple[Service, tuple[Destination, ...]]]:
    chosen = draw(st.lists(keys, unique=True))
    return {k: (draw(services(k)), draw(destinations())) for k in chosen}


@settings(max_examples=300, deadline=None)
@given(kernel_spec=tables(), desired_spec=tables(), owned=st.sets(keys))
def test_plan_reaches_desired_and_spares_the_rest(
    kernel_spec: dict[ServiceKey, tuple[Service, tuple[Destination, ...]]],
    desired_spec: dict[ServiceKey, tuple[Service, tuple[Destination, ...]]],
    owned: set[ServiceKey],
) -> None:
    kernel = {k: entry(svc, *ds) for k, (svc, ds) in kernel_spec.items()}
    desired = {k: want(svc, *ds) for k, (svc, ds) in desired_spec.items()}
    backend = MemoryBackend(kernel.values())
    before = {e.service.key: e for e in backend.services()}

    ops = plan(desired, before, owned)
    backend.apply(ops)
    after = {e.service.key: e for e in backend.services()}

    managed = owned | desired.keys()
    for key, entry_before in before.items():
        if key not in managed:
            assert after[key] == entry_before
    for key in owned - desired.keys():
        assert key not in after
    for key, goal in desired.items():
        got = after[key]
        assert service_matches(goal.service, got.service)
        have = {e.destination.key: e for e in got.destinations}
        assert have.keys() == {x.key for x in goal.destinations}
        for x in goal.destinations:
            assert destination_matches(x, have[x.key].destination)
            # a destination that needed no change keeps its connections and counters
            old = before.get(key)
            if old is not None and any(
                e.destination == have[x.key].destination for e in old.destinations
            ):
                assert have[x.key].stats == Stats(9)

    assert all(touched(op) in managed for op in ops)

    assert plan(desired, after, owned_after(owned, ops)) == []
    assert len(ops) == len(set(map(repr, ops)))


def test_a_local_destination_reported_as_local_is_not_edited_every_pass() -> None:
    svc = Service(A, "rr")
    kernel = {A: entry(svc, d(1, forward=Forward.LOCAL))}
    assert plan({A: want(svc, d(1, forward=Forward.MASQ))}, kernel, {A}) == []
    assert plan({A: want(svc, d(1, 4, forward=Forward.MASQ))}, kernel, {A}) == [
        EditDestination(A, d(1, 4, forward=Forward.MASQ))
    ]
