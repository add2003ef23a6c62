"""A health pass over some of a service's real servers (desired_servers and
plan_destinations, issue 8: a transition costs O(the change)) sends exactly
what a pass over the whole service would: hypothesis draws a service, the
health it was last planned with, the servers whose health changed since, and
compares the two plans."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.config import RealServerId, parse_config
from director.config.model import VirtualServer
from director.desired import (
    AdminState,
    RealServerView,
    desired_servers,
    desired_service,
    independent,
)
from director.health.state import Health
from director.ipvs.model import Destination, DestinationEntry, ServiceEntry
from director.ipvs.ops import AddDestination, DeleteDestination, EditDestination
from director.reconcile import plan, plan_destinations

SERVERS = 6
NOW = 50.0

VIEWS = st.one_of(
    st.just(RealServerView()),  # not checked yet
    st.builds(
        RealServerView,
        st.sampled_from([Health.UP, Health.DOWN]),
        since=st.sampled_from([None, 0.0, 45.0, 49.5, NOW]),
        weight=st.sampled_from([None, 0, 7, 300]),
    ),
)


def virtual_server(extra: str) -> VirtualServer:
    text = f'[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n{extra}\n'
    for i in range(SERVERS):
        text += f'[[virtual_server.real_server]]\naddress = "10.0.0.{10 + i}"\nweight = {i + 2}\n'
    (vs,) = parse_config(text).virtual_servers
    return vs


SETTINGS = [
    "",
    'on_failure = "weight0"',
    "slow_start = 10.0",
    'on_failure = "weight0"\nslow_start = 4',
]


@settings(max_examples=300, deadline=None)
@given(
    extra=st.sampled_from(SETTINGS),
    before=st.lists(VIEWS, min_size=SERVERS, max_size=SERVERS),
    after=st.lists(VIEWS, min_size=SERVERS, max_size=SERVERS),
    changed=st.sets(st.integers(0, SERVERS - 1)),
    admin=st.dictionaries(st.integers(0, SERVERS - 1), st.sampled_from(list(AdminState))),
    kernel_weights=st.dictionaries(st.integers(0, SERVERS - 1), st.integers(0, 50)),
)
def test_a_pass_over_the_changed_servers_plans_what_a_pass_over_the_service_would(
    extra: str,
    before: list[RealServerView],
    after: list[RealServerView],
    changed: set[int],
    admin: dict[int, AdminState],
    kernel_weights: dict[int, int],
) -> None:
    vs = virtual_server(extra)
    assert independent(vs)
    ids = vs.real_server_ids
    admin_of = {ids[i]: state for i, state in admin.items()}
    # What the kernel held before the last pass (for servers not checked yet).
    first = ServiceEntry(
        vs.service(),
        tuple(
            DestinationEntry(vs.real_servers[i].destination(w)) for i, w in kernel_weights.items()
        ),
    )
    last = desired_service(vs, dict(zip(ids, before, strict=True)), first, NOW, admin_of)
    # The kernel as the last pass left it: its desired destinations.
    believed = {d.key: d for d in last.destinations}
    entry = ServiceEntry(vs.service(), tuple(map(DestinationEntry, last.destinations)))
    # Only the changed servers' health moved since.
    health = {rid: (after[i] if i in changed else before[i]) for i, rid in enumerate(ids)}

    whole = plan(
        {vs.key: desired_service(vs, health, entry, NOW, admin_of)}, {vs.key: entry}, {vs.key}
    )
    wanted = desired_servers(vs, [ids[i] for i in changed], health, believed, NOW, admin_of)
    deletes, changes = plan_destinations(vs.key, wanted, believed)

    assert set(wanted) == {(ids[i].address, ids[i].port) for i in changed}
    assert sorted(map(repr, deletes + changes)) == sorted(map(repr, whole))
    # plan's order: deletes before adds and edits.
    assert whole[: len(deletes)] == sorted(deletes, key=whole.index)


def test_an_id_the_virtual_server_does_not_have_is_skipped() -> None:
    vs = virtual_server("")
    stranger = RealServerId(vs.key, ip_address("10.9.9.9"), 80)
    wanted = desired_servers(
        vs, [stranger, vs.real_server_ids[0]], {vs.real_server_ids[0]: RealServerView(Health.UP)},
        {}, NOW, {},
    )  # fmt: skip
    assert wanted == {(vs.real_servers[0].address, 80): vs.real_servers[0].destination()}


@pytest.mark.parametrize(
    "extra", ['sorry_server = { address = "10.0.0.99:80" }\nquorum = 2', "panic = true"]
)
def test_a_sorry_server_or_panic_ties_the_servers_together(extra: str) -> None:
    vs = virtual_server(extra)
    assert not independent(vs)
    with pytest.raises(ValueError, match="ties its servers together"):
        desired_servers(vs, vs.real_server_ids[:1], {}, {}, NOW, {})


def test_plan_destinations_leaves_the_other_destinations_alone() -> None:
    vs = virtual_server("")
    have = {d.key: d for d in (rs.destination() for rs in vs.real_servers)}
    first, second, third = vs.real_servers[:3]
    deletes, changes = plan_destinations(
        vs.key,
        {
            (first.address, first.port): None,
            (second.address, second.port): second.destination(9),
            (third.address, third.port): third.destination(),
            (ip_address("10.9.9.9"), 80): Destination(ip_address("10.9.9.9"), 80),
        },
        have,
    )
    assert deletes == [DeleteDestination(vs.key, first.address, first.port)]
    assert changes == [
        EditDestination(vs.key, second.destination(9)),
        AddDestination(vs.key, Destination(ip_address("10.9.9.9"), 80)),
    ]
