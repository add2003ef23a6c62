"""LayerBuilder.effective (a change merged over the effective config it
started from, service by service) against effective_config of the whole
layer, and the real-server index a frozen layer carries (RuntimeLayer.
by_service, shared copy-on-write with the builders made over it) against
one made from scratch: random requests of random operations, each over the
layer the one before froze, as the control socket runs them."""

from __future__ import annotations

import contextlib
from dataclasses import fields, replace
from ipaddress import ip_address

from hypothesis import given, settings
from hypothesis import strategies as st
from test_runtime import CONFIG, CONFIG_TEXT, NEW, VIP, _operations, dest

from director.config import Config, RealServer, RealServerId, parse_config
from director.desired import AdminState
from director.health.spec import TcpCheck
from director.ipvs.model import (
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceKey,
    Timeouts,
    TunnelFlags,
    TunnelType,
)
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    Operation,
    SetTimeouts,
)
from director.runtime import (
    EMPTY,
    LayerBuilder,
    RuntimeLayer,
    _real_server,
    effective_config,
    with_destination_fields,
)

# A second service of the config's (with two real servers) so that one
# request leaves some config services untouched, and a request that only
# drains or sets timeouts.
WIDE = parse_config(
    CONFIG_TEXT
    + """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.3:80"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
[[virtual_server.real_server]]
address = "10.0.1.2:80"
weight = 2
"""
)
OTHER = ServiceKey.inet(Protocol.TCP, "10.0.0.3", 80)
_ADMIN = st.builds(
    lambda k, a, s: (RealServerId(k, ip_address(a), 80), s),
    st.sampled_from((VIP, NEW, OTHER)),
    st.sampled_from(("10.0.1.1", "10.0.1.2")),
    st.sampled_from(list(AdminState)),
)
_steps = st.one_of(
    _operations,
    st.builds(
        lambda a, w: AddDestination(OTHER, dest(a, weight=w)),
        st.sampled_from(("10.0.1.1", "10.0.1.2", "10.0.1.3")),
        st.integers(0, 3),
    ),
    st.just(AddService(WIDE.virtual_server(OTHER).service())),
    st.builds(lambda t: SetTimeouts(Timeouts(tcp=t)), st.integers(0, 50)),
    _ADMIN,
    st.just("freeze"),
)
Step = Operation | tuple[RealServerId, AdminState] | str


def _index(layer: RuntimeLayer) -> dict[ServiceKey, dict[RealServerId, Destination]]:
    index: dict[ServiceKey, dict[RealServerId, Destination]] = {}
    for rid, destination in layer.real_servers.items():
        index.setdefault(rid.service, {})[rid] = destination
    return index


def _same_index(layer: RuntimeLayer) -> bool:
    """by_service holds real_servers, each service's in their order (a
    service left without any may keep an empty entry)."""
    shown = {k: list(v.items()) for k, v in layer.by_service.items() if v}
    return shown == {k: list(v.items()) for k, v in _index(layer).items()}


def _request(builder: LayerBuilder, steps: list[Step]) -> None:
    for step in steps:
        if step == "freeze":
            builder.freeze()  # as a commit does mid-way; the builder goes on
        elif isinstance(step, tuple):
            with contextlib.suppress(LookupError):
                builder.set_admin(*step)
        else:
            assert not isinstance(step, str)
            builder.apply(step)  # refused or not: the layer is what it is


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from((CONFIG, WIDE)),
    st.lists(st.lists(_steps, max_size=8), max_size=6),
)
def test_effective_is_effective_config_of_the_frozen_layer(
    config: Config, requests: list[list[Step]]
) -> None:
    layer = EMPTY
    effective = effective_config(config, layer)
    layers = [layer]
    for steps in requests:
        builder = LayerBuilder(config, layer)
        _request(builder, steps)
        merged = builder.effective(effective)
        layer = builder.freeze()
        expected = effective_config(config, layer)
        assert merged == expected
        assert [vs.key for vs in merged.virtual_servers] == [
            vs.key for vs in expected.virtual_servers
        ]
        assert _same_index(layer)
        effective = merged
        layers.append(layer)
    # No builder changed the index of a layer frozen before it.
    assert all(_same_index(each) for each in layers)


def test_an_untouched_service_is_kept_as_it_was() -> None:
    """One -a into one service of two: the other's virtual server is the
    very object the effective config had (no merge for it)."""
    builder = LayerBuilder(WIDE)
    before = effective_config(WIDE, EMPTY)
    assert builder.apply(AddDestination(VIP, dest("10.0.1.9"))) is None
    merged = builder.effective(before)
    assert merged == effective_config(WIDE, builder.freeze())
    assert merged.virtual_server(OTHER) is before.virtual_server(OTHER)
    assert merged.virtual_server(VIP) is not before.virtual_server(VIP)


def test_an_empty_layer_is_the_config_itself() -> None:
    builder = LayerBuilder(WIDE)
    assert builder.effective(WIDE) is WIDE
    assert builder.apply(AddDestination(VIP, dest("10.0.1.9"))) is None
    layer = builder.freeze()
    undo = LayerBuilder(WIDE, layer)
    assert undo.apply(DeleteDestination(VIP, ip_address("10.0.1.9"), 80)) is None
    assert undo.effective(effective_config(WIDE, layer)) is WIDE
    assert undo.freeze() == EMPTY


def test_a_builder_does_not_change_the_layer_it_started_from() -> None:
    first = LayerBuilder(WIDE)
    assert first.apply(AddDestination(VIP, dest("10.0.1.8"))) is None
    layer = first.freeze()
    index = {k: dict(v) for k, v in layer.by_service.items()}
    second = LayerBuilder(WIDE, layer)
    assert second.apply(AddDestination(VIP, dest("10.0.1.9"))) is None
    # and the first goes on after its freeze: its next change is its own
    assert first.apply(AddDestination(VIP, dest("10.0.1.7"))) is None
    assert {k: dict(v) for k, v in layer.by_service.items()} == index
    assert _same_index(second.freeze()) and _same_index(first.freeze())


def test_with_destination_fields_is_replace_of_the_destinations_fields() -> None:
    """Made field by field: every field of RealServer is either one of the
    destination's or kept from the real server (a new field of RealServer
    fails here until with_destination_fields keeps it)."""
    kernel_fields = {
        "forward",
        "weight",
        "u_threshold",
        "l_threshold",
        "tun_type",
        "tun_port",
        "tun_flags",
    }
    kept = {"address", "port", "check", "name"}
    assert {f.name for f in fields(RealServer)} == kernel_fields | kept
    rs = RealServer(
        ip_address("10.0.1.1"),
        80,
        Forward.TUNNEL,
        4,
        10,
        2,
        TunnelType.GUE,
        6080,
        TunnelFlags.CSUM,
        TcpCheck(port=81),
        "web-1",
    )
    destination = Destination(ip_address("10.0.1.1"), 80, Forward.MASQ, 9, 5, 1)
    expected = replace(rs, **{name: getattr(destination, name) for name in kernel_fields})
    assert with_destination_fields(rs, destination) == expected
    rid = RealServerId(VIP, rs.address, rs.port)
    added = RealServer(rs.address, rs.port, check=rs.check)
    assert _real_server(rid, destination, rs.check) == with_destination_fields(added, destination)


def test_a_runtime_services_ids_are_those_it_would_make() -> None:
    """virtual_server_for hands its real servers' ids to the virtual
    server's cached real_server_ids: the same ids, in the same order."""
    builder = LayerBuilder(WIDE)
    new = ServiceKey.inet(Protocol.TCP, "10.0.0.9", 80)
    assert builder.apply(AddService(Service(new, "rr"))) is None
    for address in ("10.0.1.3", "10.0.1.1", "10.0.1.2"):
        assert builder.apply(AddDestination(new, dest(address))) is None
    vs = builder.effective(WIDE).virtual_server(new)
    made = tuple(RealServerId(new, rs.address, rs.port) for rs in vs.real_servers)
    assert vs.real_server_ids == made
    assert [str(rid.address) for rid in vs.real_server_ids] == ["10.0.1.3", "10.0.1.1", "10.0.1.2"]
    assert effective_config(WIDE, builder.freeze()).virtual_server(new).real_server_ids == made
