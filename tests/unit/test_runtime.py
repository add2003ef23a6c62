"""The runtime layer: ipvsadm operations checked like the kernel checks them,
merged over the config file with the layer winning."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.config import RealServerId, parse_config
from director.desired import AdminState
from director.health.spec import TcpCheck, Timing
from director.ipvs.errors import IPVSError
from director.ipvs.model import (
    AF_INET6,
    Destination,
    Forward,
    Protocol,
    Service,
    ServiceFlags,
    ServiceKey,
    Timeouts,
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
    Zero,
)
from director.runtime import (
    EMPTY,
    LayerBuilder,
    RuntimeLayer,
    apply_operation,
    effective_config,
    is_managed,
    parse_real_server,
    parse_service,
    set_admin,
)

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
NEW = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
CONFIG = parse_config(
    """
[ipvs]
timeouts = { tcp = 100, tcpfin = 10, udp = 0 }
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = { type = "tcp", interval = 2.0, rise = 3 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 5
"""
)
RS1 = RealServerId(VIP, ip_address("10.0.1.1"), 80)


def dest(address: str, port: int = 80, weight: int = 1) -> Destination:
    return Destination(ip_address(address), port, Forward.MASQ, weight)


def run(*operations: Operation, layer: RuntimeLayer = EMPTY) -> RuntimeLayer:
    """Each operation on one builder kept across them (as one request does)
    and on a fresh builder over the frozen layer (as one request per
    operation does): the same layer either way, and its view is the merge."""
    builder = LayerBuilder(CONFIG, layer)
    for op in operations:
        alone, error = apply_operation(CONFIG, layer, op)
        assert error is None, f"{op}: {error}"
        assert builder.apply(op) is None
        layer = builder.freeze()
        assert layer == alone
        assert_view_is_effective(builder, layer)
    return layer


def assert_view_is_effective(builder: LayerBuilder, layer: RuntimeLayer) -> None:
    effective = effective_config(CONFIG, layer)
    assert set(builder.service_keys()) == effective.service_keys()
    for vs in effective.virtual_servers:
        assert builder.virtual_server(vs.key) == vs
        for rs in vs.real_servers:
            assert builder.has_real_server(vs.real_server_id(rs))


def refusal(layer: RuntimeLayer, op: Operation) -> str:
    after, error = apply_operation(CONFIG, layer, op)
    assert after == layer
    assert isinstance(error, IPVSError)
    return error.message


def servers(layer: RuntimeLayer, key: ServiceKey = VIP) -> dict[str, int]:
    vs = effective_config(CONFIG, layer).virtual_server(key)
    return {f"{rs.address}:{rs.port}": rs.weight for rs in vs.real_servers}


def test_empty_layer_is_the_config_itself() -> None:
    assert effective_config(CONFIG, EMPTY) is CONFIG


def test_added_service_gets_the_default_check_and_its_servers_the_service_check() -> None:
    layer = run(
        AddService(Service(NEW, "wlc", ServiceFlags.PERSISTENT, 300)),
        AddDestination(NEW, dest("10.0.2.1", 8080, 3)),
        AddDestination(VIP, dest("10.0.1.9")),
    )
    effective = effective_config(CONFIG, layer)
    new = effective.virtual_server(NEW)
    assert new.service() == Service(NEW, "wlc", ServiceFlags.PERSISTENT, 300)
    assert new.check == TcpCheck()
    assert [(str(rs.address), rs.port, rs.weight) for rs in new.real_servers] == [
        ("10.0.2.1", 8080, 3)
    ]
    added = effective.virtual_server(VIP).real_servers[-1]
    assert added.check == TcpCheck(Timing(interval=2.0, rise=3))
    assert added.destination() == dest("10.0.1.9")


def test_added_service_gets_the_configured_runtime_check() -> None:
    check = TcpCheck(Timing(interval=30.0, timeout=2.0, rise=1, fall=3))
    config = replace(CONFIG, control=replace(CONFIG.control, runtime_check=check))
    layer = run(AddService(Service(NEW)), AddDestination(NEW, dest("10.0.2.1", 8080, 3)))
    for effective in (effective_config(config, layer), LayerBuilder(config, layer)):
        new = effective.virtual_server(NEW)
        assert new.check == check
        assert [rs.check for rs in new.real_servers] == [check]


def test_runtime_edit_wins_over_the_file_and_keeps_the_file_check() -> None:
    layer = run(
        EditService(Service(VIP, "wrr")),
        EditDestination(VIP, dest("10.0.1.1", weight=9)),
    )
    vs = effective_config(CONFIG, layer).virtual_server(VIP)
    assert vs.scheduler == "wrr"
    assert vs.check == CONFIG.virtual_server(VIP).check
    assert vs.real_servers[0].weight == 9
    assert vs.real_servers[0].forward is Forward.MASQ
    assert vs.real_servers[0].check == CONFIG.virtual_server(VIP).real_servers[0].check


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (AddService(Service(VIP)), "Service already exists"),
        (AddService(Service(NEW, "nope")), "Scheduler or persistence engine not found"),
        (AddService(Service(NEW, pe_name="xyz")), "Scheduler or persistence engine not found"),
        (EditService(Service(NEW)), "No such service"),
        (EditService(Service(VIP, "nope")), "Scheduler or persistence engine not found"),
        (DeleteService(NEW), "No such service"),
        (AddDestination(NEW, dest("10.0.1.1")), "Service not defined"),
        (AddDestination(VIP, dest("10.0.1.1")), "Destination already exists"),
        (EditDestination(VIP, dest("10.0.1.2")), "No such destination"),
        (DeleteDestination(VIP, ip_address("10.0.1.2"), 80), "No such destination"),
        (DeleteDestination(NEW, ip_address("10.0.1.1"), 80), "Service not defined"),
    ],
)
def test_refusals_carry_ipvsadm_messages(op: Operation, message: str) -> None:
    assert refusal(EMPTY, op) == message


def test_a_server_without_a_port_to_probe_is_refused_with_the_reason() -> None:
    message = refusal(EMPTY, AddDestination(VIP, dest("10.0.1.7", port=0)))
    assert "no port to probe" in message


def test_delete_then_add_of_a_file_service_starts_it_empty() -> None:
    layer = run(DeleteService(VIP))
    assert VIP not in effective_config(CONFIG, layer).service_keys()
    assert refusal(layer, DeleteService(VIP)) == "No such service"
    layer = run(AddService(Service(VIP, "sh")), layer=layer)
    vs = effective_config(CONFIG, layer).virtual_server(VIP)
    assert (vs.scheduler, vs.real_servers) == ("sh", ())
    layer = run(AddDestination(VIP, dest("10.0.1.1", weight=4)), layer=layer)
    assert servers(layer) == {"10.0.1.1:80": 4}


def test_deleted_server_and_its_admin_state_go_and_can_come_back() -> None:
    layer = set_admin(CONFIG, EMPTY, RS1, AdminState.DRAIN)
    layer = run(DeleteDestination(VIP, RS1.address, 80), layer=layer)
    assert servers(layer) == {}
    assert dict(layer.admin) == {}
    layer = run(AddDestination(VIP, dest("10.0.1.1", weight=2)), layer=layer)
    assert servers(layer) == {"10.0.1.1:80": 2}


def test_flush_deletes_every_managed_service() -> None:
    layer = run(AddService(Service(NEW)), Flush())
    assert effective_config(CONFIG, layer).virtual_servers == ()


def test_set_timeouts_merges_zeroes_as_keep() -> None:
    layer = run(SetTimeouts(Timeouts(0, 0, 60)), SetTimeouts(Timeouts(7, 0, 0)))
    assert effective_config(CONFIG, layer).ipvs.timeouts == Timeouts(7, 10, 60)


def test_reload_keeps_runtime_changes_and_runtime_wins() -> None:
    layer = run(
        AddService(Service(NEW)),
        AddDestination(NEW, dest("10.0.2.1")),
        EditDestination(VIP, dest("10.0.1.1", weight=9)),
    )
    reloaded = parse_config(
        """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 50
[[virtual_server.real_server]]
address = "10.0.1.3:80"
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.2:80"
scheduler = "sh"
check = { type = "tcp", port = 9000 }
[[virtual_server.real_server]]
address = "10.0.2.2:80"
"""
    )
    effective = effective_config(reloaded, layer)
    vip = effective.virtual_server(VIP)
    assert [(str(rs.address), rs.weight) for rs in vip.real_servers] == [
        ("10.0.1.1", 9),
        ("10.0.1.3", 1),
    ]
    new = effective.virtual_server(NEW)
    assert new.scheduler == "wlc"  # the runtime -A's fields win
    assert new.check == TcpCheck(port=9000)  # the file's check applies to runtime servers
    assert [str(rs.address) for rs in new.real_servers] == ["10.0.2.2", "10.0.2.1"]
    assert new.real_servers[1].check == TcpCheck(port=9000)


def test_admin_states_name_known_servers_only() -> None:
    layer = set_admin(CONFIG, EMPTY, RS1, AdminState.DISABLED)
    assert dict(layer.admin) == {RS1: AdminState.DISABLED}
    assert set_admin(CONFIG, layer, RS1, AdminState.ENABLED) == EMPTY
    with pytest.raises(LookupError, match=r"no real server 10.0.1.2:80 in tcp:10.0.0.1:80"):
        set_admin(CONFIG, EMPTY, replace(RS1, address=ip_address("10.0.1.2")), AdminState.DRAIN)
    with pytest.raises(LookupError, match=r"no virtual service tcp:10.0.0.2:80"):
        set_admin(CONFIG, EMPTY, replace(RS1, service=NEW), AdminState.DRAIN)


def test_routing_between_desired_state_and_kernel() -> None:
    unmanaged = ServiceKey.inet(Protocol.TCP, "10.9.9.9", 80)
    kernel = {VIP, unmanaged}

    def managed(op: Operation, owned: frozenset[ServiceKey] = frozenset()) -> bool:
        return is_managed(op, CONFIG, kernel, owned)

    assert managed(AddService(Service(NEW)))
    assert not managed(AddService(Service(unmanaged)))
    assert managed(AddService(Service(unmanaged)), frozenset({unmanaged}))
    assert managed(AddDestination(VIP, dest("10.0.1.5")))
    assert not managed(AddDestination(unmanaged, dest("10.0.1.5")))
    assert not managed(DeleteService(unmanaged))
    assert not managed(AddDestination(NEW, dest("10.0.1.5")))  # the kernel says "not defined"
    assert not managed(Zero())
    assert managed(Flush())
    assert not managed(StartDaemon.__new__(StartDaemon))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("tcp:10.0.0.1:80", VIP),
        ("TCP 10.0.0.1:80", VIP),
        ("udp:[2001:db8::1]:53", ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)),
        ("fwm:7", ServiceKey.mark(7)),
        ("FWM 7 IPv6", ServiceKey.mark(7, AF_INET6)),
        ("fwm:7:ipv6", ServiceKey.mark(7, AF_INET6)),
    ],
)
def test_service_names(text: str, key: ServiceKey) -> None:
    assert parse_service(text) == key


@pytest.mark.parametrize("text", ["", "tcp:10.0.0.1", "icmp:1.2.3.4:1", "fwm:x", "fwm:0"])
def test_bad_service_names_are_named_in_the_error(text: str) -> None:
    with pytest.raises(ValueError, match="virtual service"):
        parse_service(text)


def test_real_server_names() -> None:
    assert parse_real_server(VIP, "10.0.1.1") == RS1
    assert parse_real_server(VIP, "10.0.1.1:80") == RS1
    with pytest.raises(ValueError, match="real server 'x'"):
        parse_real_server(VIP, "x")
    with pytest.raises(ValueError, match="needs a port"):
        parse_real_server(ServiceKey.mark(3), "10.0.1.1")


_KEYS = (VIP, NEW)
_ADDRESSES = ("10.0.1.1", "10.0.1.2", "10.0.1.3")
_operations = st.one_of(
    st.builds(lambda k, s: AddService(Service(k, s)), st.sampled_from(_KEYS), st.just("rr")),
    st.builds(lambda k: EditService(Service(k, "sh")), st.sampled_from(_KEYS)),
    st.builds(DeleteService, st.sampled_from(_KEYS)),
    st.builds(
        lambda k, a, w: AddDestination(k, dest(a, weight=w)),
        st.sampled_from(_KEYS),
        st.sampled_from(_ADDRESSES),
        st.integers(0, 3),
    ),
    st.builds(
        lambda k, a, w: EditDestination(k, dest(a, weight=w)),
        st.sampled_from(_KEYS),
        st.sampled_from(_ADDRESSES),
        st.integers(0, 3),
    ),
    st.builds(
        lambda k, a: DeleteDestination(k, ip_address(a), 80),
        st.sampled_from(_KEYS),
        st.sampled_from(_ADDRESSES),
    ),
    st.just(Flush()),
)

Table = dict[ServiceKey, tuple[str, dict[str, int]]]


def _kernel_would(table: Table, op: Operation) -> str | None:
    """What a kernel holding `table` (scheduler, weight by address) does with
    `op`: changes `table`, or names the error. The oracle for the layer."""
    match op:
        case AddService(service):
            if service.key in table:
                return "Service already exists"
            table[service.key] = (service.scheduler, {})
        case EditService(service):
            if service.key not in table:
                return "No such service"
            table[service.key] = (service.scheduler, table[service.key][1])
        case DeleteService(key):
            if key not in table:
                return "No such service"
            del table[key]
        case AddDestination(key, d) | EditDestination(key, d):
            if key not in table:
                return "Service not defined"
            servers = table[key][1]
            if isinstance(op, AddDestination) and str(d.address) in servers:
                return "Destination already exists"
            if isinstance(op, EditDestination) and str(d.address) not in servers:
                return "No such destination"
            servers[str(d.address)] = d.weight
        case DeleteDestination(key, address, _):
            if key not in table:
                return "Service not defined"
            if str(address) not in table[key][1]:
                return "No such destination"
            del table[key][1][str(address)]
        case Flush():
            table.clear()
    return None


def _table(layer: RuntimeLayer) -> Table:
    return {
        vs.key: (vs.scheduler, {str(rs.address): rs.weight for rs in vs.real_servers})
        for vs in effective_config(CONFIG, layer).virtual_servers
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(_operations, max_size=25))
def test_one_builder_for_many_lines_is_many_requests_and_what_the_kernel_does(
    operations: list[Operation],
) -> None:
    """A long -R runs on one LayerBuilder: every line gets the error the
    kernel would give on the table the lines before it made, the effective
    state is that table, and it equals one request per line."""
    builder = LayerBuilder(CONFIG)
    layer = EMPTY
    table = _table(EMPTY)
    for op in operations:
        expected = _kernel_would(table, op)
        error = builder.apply(op)
        assert (error.message if error else None) == expected, op
        alone, alone_error = apply_operation(CONFIG, layer, op)
        assert (alone_error.message if alone_error else None) == expected
        layer = builder.freeze()
        assert layer == alone
        assert _table(layer) == table
        assert_view_is_effective(builder, layer)
