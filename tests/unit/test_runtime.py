"""The runtime layer: ipvsadm operations checked like the kernel checks them,
merged over the config file with the layer winning."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director import statefile
from director.config import RealServer, RealServerId, VirtualServer, parse_config
from director.desired import AdminState
from director.health.spec import TcpCheck, Timing, UdpCheck
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
    Zero,
)
from director.runtime import (
    EMPTY,
    LayerBuilder,
    RuntimeLayer,
    apply_operation,
    effective_config,
    is_managed,
    kernel_probe,
    parse_real_server,
    parse_service,
    set_admin,
)

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
NEW = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
CONFIG_TEXT = """
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
CONFIG = parse_config(CONFIG_TEXT)
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


def test_an_added_udp_service_gets_runtime_check_udp() -> None:
    """A TCP connect fails a UDP-only real server for ever (a trial: -A -u
    of a syslog service left its servers out): a UDP service added at
    runtime gets [control] runtime_check_udp, by default a `udp` check
    (down on the ICMP error of a closed port); the others runtime_check."""
    udp = ServiceKey.inet(Protocol.UDP, "10.0.0.9", 514)
    tcp_check = TcpCheck(Timing(interval=30.0))
    for udp_check, config in (
        (UdpCheck(), CONFIG),
        (
            UdpCheck(Timing(interval=5.0), payload=b"x", silence="down"),
            parse_config(
                CONFIG_TEXT
                + "[control]\nruntime_check = { interval = 30 }\n"
                + 'runtime_check_udp = { type = "udp", interval = 5, payload = "x", silence = "down" }\n'
            ),
        ),
    ):
        layer = EMPTY
        for op in (
            AddService(Service(NEW)),
            AddService(Service(udp)),
            AddDestination(udp, dest("10.0.2.1", 514)),
        ):
            layer, error = apply_operation(config, layer, op)
            assert error is None
        for effective in (effective_config(config, layer), LayerBuilder(config, layer)):
            assert effective.virtual_server(udp).check == udp_check
            assert [rs.check for rs in effective.virtual_server(udp).real_servers] == [udp_check]
            assert effective.virtual_server(NEW).check == (
                tcp_check if config is not CONFIG else TcpCheck()
            )


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


ERANGE = "Numerical result out of range"
EINVAL = "Invalid operation.  Possibly wrong module version, address not unicast, ..."
V6 = ServiceKey.inet(Protocol.TCP, "2001:db8::1", 80)


def thresholds(address: str, upper: int, lower: int) -> Destination:
    return replace(dest(address), u_threshold=upper, l_threshold=lower)


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (AddService(Service(VIP)), "Service already exists"),
        # EEXIST comes before the scheduler lookup (ip_vs_genl_set_cmd)
        (AddService(Service(VIP, "nope")), "Service already exists"),
        (AddService(Service(V6, netmask=0)), EINVAL),
        (EditService(Service(NEW)), "No such service"),
        (EditService(Service(NEW, "nope")), "No such service"),
        (EditService(Service(VIP, netmask=129)), None),  # an IPv4 netmask is any mask
        (DeleteService(NEW), "No such service"),
        (AddDestination(NEW, dest("10.0.1.1")), "Service not defined"),
        (AddDestination(NEW, thresholds("10.0.1.1", 5, 10)), "Service not defined"),
        (AddDestination(VIP, dest("10.0.1.1")), "Destination already exists"),
        # the example: thresholds are checked before the lookup
        (AddDestination(VIP, thresholds("10.0.1.1", 5, 10)), ERANGE),
        (AddDestination(VIP, thresholds("10.0.1.9", 0, 10)), ERANGE),
        (AddDestination(VIP, dest("10.0.1.1", weight=-1)), ERANGE),
        (
            AddDestination(VIP, replace(dest("10.0.1.1"), tun_type=TunnelType.GUE)),
            EINVAL,
        ),
        (AddDestination(VIP, dest("2001:db8::5")), EINVAL),  # another family, not tunnelled
        (AddDestination(VIP, dest("224.0.0.5")), EINVAL),
        (AddDestination(VIP, dest("255.255.255.255")), EINVAL),
        (AddDestination(VIP, dest("0.0.0.0")), EINVAL),
        (AddDestination(V6, dest("ff02::1")), "Service not defined"),
        (EditDestination(VIP, dest("10.0.1.2")), "No such destination"),
        (EditDestination(VIP, thresholds("10.0.1.2", 1, 2)), ERANGE),
        (EditDestination(NEW, thresholds("10.0.1.2", 1, 2)), "Service not defined"),
        (DeleteDestination(VIP, ip_address("10.0.1.2"), 80), "No such destination"),
        (DeleteDestination(NEW, ip_address("10.0.1.1"), 80), "Service not defined"),
    ],
)
def test_refusals_carry_ipvsadm_messages_in_the_kernels_order(
    op: Operation, message: str | None
) -> None:
    if message is None:
        assert apply_operation(CONFIG, EMPTY, op)[1] is None
    else:
        assert refusal(EMPTY, op) == message


def test_exists_with_bad_thresholds_answers_out_of_range() -> None:
    """-a of a managed server that exists, with -x 5 -y 10: ipvsadm says
    "Numerical result out of range" (ip_vs_add_dest checks the thresholds
    before it looks the destination up)."""
    assert refusal(EMPTY, AddDestination(VIP, thresholds("10.0.1.1", 5, 10))) == ERANGE


def test_ipv6_unicast_rules() -> None:
    layer = run(AddService(Service(V6)))
    for address in ("::", "ff02::1", "::ffff:10.0.0.1"):
        assert refusal(layer, AddDestination(V6, dest(address))) == EINVAL
    run(AddDestination(V6, dest("2001:db8::7")), AddDestination(V6, dest("::1")), layer=layer)


def test_schedulers_are_the_kernels_to_judge() -> None:
    """-A ... -s none (the kernel accepts it) is taken; with engines=None no
    name is refused from a list of ours: kernel_probe names what asks the
    kernel, before the layer records the change."""
    layer = run(AddService(Service(NEW, "none")), EditService(Service(VIP, "none")))
    effective = effective_config(CONFIG, layer)
    assert effective.virtual_server(NEW).scheduler == "none"
    assert effective.virtual_server(VIP).scheduler == "none"
    for op in (AddService(Service(NEW, "mine", pe_name="xyz")), EditService(Service(VIP, "x"))):
        assert apply_operation(CONFIG, EMPTY, op, engines=None)[1] is None
        assert LayerBuilder(CONFIG, engines=None).apply(op) is None
    add, edit = AddService(Service(NEW, "x")), EditService(Service(VIP, "x"))
    assert kernel_probe(add, frozenset()) == add
    assert kernel_probe(add, {NEW}) == EditService(Service(NEW, "x"))
    assert kernel_probe(edit, {VIP}) == edit
    assert kernel_probe(edit, frozenset()) == AddService(Service(VIP, "x"))
    assert kernel_probe(DeleteService(VIP), {VIP}) is None


NOT_FOUND = "Scheduler or persistence engine not found"


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (AddService(Service(NEW, "nope")), NOT_FOUND),
        (AddService(Service(NEW, pe_name="xyz")), NOT_FOUND),
        (EditService(Service(VIP, "nope")), NOT_FOUND),
        (AddService(Service(VIP, "nope")), "Service already exists"),
        (EditService(Service(NEW, "nope")), "No such service"),
        (AddService(Service(V6, "nope", netmask=0)), NOT_FOUND),  # before the netmask
    ],
)
def test_by_default_names_the_facts_do_not_know_are_not_found(op: Operation, message: str) -> None:
    assert refusal(EMPTY, op) == message


def test_a_server_without_a_port_to_probe_is_refused_with_the_reason() -> None:
    """In words, naming the server, its service and where its check is set
    (operator trial, stop 27: it was the target's repr)."""
    message = refusal(EMPTY, AddDestination(VIP, dest("10.0.1.7", port=0)))
    assert message == (
        "cannot health-check real server 10.0.1.7:0 of TCP 10.0.0.1:80: no port to probe "
        "(the server's port is 0; set the check's port); its check is the service's, "
        "in the config file"
    )


# -- deleting what the config defines, and adding it back ----------------------


def test_delete_then_add_of_a_file_service_restores_its_definition() -> None:
    layer = run(DeleteService(VIP))
    assert VIP not in effective_config(CONFIG, layer).service_keys()
    assert refusal(layer, DeleteService(VIP)) == "No such service"
    layer = run(AddService(CONFIG.virtual_server(VIP).service()), layer=layer)
    assert effective_config(CONFIG, layer).virtual_servers == CONFIG.virtual_servers
    assert (dict(layer.services), layer.deleted_services) == ({}, frozenset())


def test_add_back_with_other_fields_keeps_only_the_difference() -> None:
    layer = run(DeleteService(VIP), AddService(Service(VIP, "sh")))
    vs = effective_config(CONFIG, layer).virtual_server(VIP)
    assert vs.scheduler == "sh"
    assert vs.check == CONFIG.virtual_server(VIP).check
    assert vs.real_servers == CONFIG.virtual_server(VIP).real_servers
    assert dict(layer.services) == {VIP: Service(VIP, "sh")}


def test_a_restored_server_may_be_added_once_more() -> None:
    layer = run(Flush(), AddService(Service(VIP, "rr")))
    assert layer.restored == {RS1}
    configured = CONFIG.virtual_server(VIP).real_servers[0].destination()
    layer = run(AddDestination(VIP, configured), layer=layer)
    assert layer == EMPTY  # the config's own fields: nothing is recorded
    assert refusal(layer, AddDestination(VIP, configured)) == "Destination already exists"


def test_a_restored_server_added_with_other_fields_keeps_them() -> None:
    layer = run(Flush(), AddService(Service(VIP, "rr")), AddDestination(VIP, dest("10.0.1.1")))
    vs = effective_config(CONFIG, layer).virtual_server(VIP)
    assert [(rs.weight, rs.forward, rs.check) for rs in vs.real_servers] == [
        (1, Forward.MASQ, CONFIG.virtual_server(VIP).check)
    ]
    assert dict(layer.real_servers) == {RS1: dest("10.0.1.1")}


@pytest.mark.parametrize("delete", [Flush(), DeleteService(VIP)])
def test_the_save_clear_restore_cycle_with_a_server_down(delete: Operation) -> None:
    """`-Sn > rules; -C; -R < rules` while one configured server was down
    (so -S did not list it): the config's servers all come back, checked,
    and nothing is left in the layer or the state file that hides one."""
    config = parse_config(
        """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = { type = "tcp", interval = 2.0 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
forward = "masq"
weight = 5
[[virtual_server.real_server]]
address = "10.0.1.2:80"
forward = "masq"
weight = 5
"""
    )
    vs = config.virtual_server(VIP)
    up = vs.real_servers[0].destination()
    builder = LayerBuilder(config)
    assert builder.apply(delete) is None  # -C
    for op in (AddService(vs.service()), AddDestination(VIP, up)):  # -R of what -S printed
        assert builder.apply(op) is None
    layer = builder.freeze()
    assert effective_config(config, layer).virtual_servers == config.virtual_servers
    saved = statefile.decode(statefile.encode(layer)).layer
    assert effective_config(config, saved) == config  # after a restart
    reloaded = replace(config, control=replace(config.control, group="x"))
    assert effective_config(reloaded, saved).virtual_servers == config.virtual_servers


@pytest.mark.parametrize("delete", [Flush(), DeleteService(VIP)])
def test_the_save_clear_restore_cycle_with_the_sorry_server_in(delete: Operation) -> None:
    """`-Sn > rules; -C; -R < rules` while the sorry server stood in (every
    real server down): -S lists it as a destination, and its -a made it a
    runtime real server, probed and counted in the quorum, for good (stop
    28's trial). It records nothing now; any other -a of it is refused in
    words, the daemon's to put in and take out."""
    config = parse_config(
        """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
check = { type = "tcp", interval = 2.0 }
sorry_server = { address = "10.0.9.9:80" }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
"""
    )
    vs = config.virtual_server(VIP)
    assert vs.sorry_server is not None
    sorry = vs.sorry_server.destination()
    builder = LayerBuilder(config)
    message = (
        "10.0.9.9:80 is the sorry server of TCP 10.0.0.1:80: the daemon puts it in"
        " while the quorum is lost; to make it a real server, change the config"
    )
    error = builder.apply(AddDestination(VIP, sorry))  # not after a restore
    assert isinstance(error, IPVSError) and error.message == message
    assert builder.apply(delete) is None  # -C
    for op in (AddService(vs.service()), AddDestination(VIP, sorry)):  # -R of -S's lines
        assert builder.apply(op) is None, op
    layer = builder.freeze()
    assert effective_config(config, layer).virtual_servers == config.virtual_servers
    assert not layer.real_servers
    for again in (sorry, replace(sorry, weight=3)):
        error = builder.apply(AddDestination(VIP, again))
        assert isinstance(error, IPVSError) and error.message == message
    saved = statefile.decode(statefile.encode(builder.freeze())).layer
    assert effective_config(config, saved).virtual_servers == config.virtual_servers


def test_delete_then_add_of_a_file_server_restores_its_check() -> None:
    layer = run(DeleteDestination(VIP, RS1.address, 80))
    assert servers(layer) == {}
    configured = CONFIG.virtual_server(VIP).real_servers[0]
    layer = run(AddDestination(VIP, configured.destination()), layer=layer)
    assert layer == EMPTY
    layer = run(
        DeleteDestination(VIP, RS1.address, 80), AddDestination(VIP, dest("10.0.1.1", weight=2))
    )
    rs = effective_config(CONFIG, layer).virtual_server(VIP).real_servers[0]
    assert (rs.weight, rs.check) == (2, configured.check)


def test_edits_back_to_the_config_drop_the_override() -> None:
    configured = CONFIG.virtual_server(VIP)
    layer = run(
        EditService(Service(VIP, "sh")),
        EditDestination(VIP, dest("10.0.1.1", weight=9)),
        EditService(configured.service()),
        EditDestination(VIP, configured.real_servers[0].destination()),
    )
    assert layer == EMPTY


def test_deleting_what_only_the_layer_has_records_no_deletion() -> None:
    """A later config that defines the same service or server is not hidden."""
    layer = run(
        AddService(Service(NEW)),
        AddDestination(NEW, dest("10.0.2.1")),
        AddDestination(VIP, dest("10.0.1.9")),
        DeleteDestination(VIP, ip_address("10.0.1.9"), 80),
        DeleteService(NEW),
    )
    assert layer == EMPTY


def test_delete_forgets_the_services_admin_states() -> None:
    layer = set_admin(CONFIG, EMPTY, RS1, AdminState.DRAIN)
    layer = run(DeleteService(VIP), AddService(Service(VIP, "rr")), layer=layer)
    assert dict(layer.admin) == {}
    assert servers(layer) == {"10.0.1.1:80": 5}


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


def test_set_timeouts_keeps_the_rest_of_the_ipvs_section() -> None:
    """An operator's --set changes the timeouts only: the config's
    [ipvs.sync] stays in the effective config."""
    config = parse_config(
        """
[ipvs]
timeouts = { tcp = 900, tcpfin = 120, udp = 300 }
[ipvs.sync]
role = "master"
interface = "eth0"
syncid = 7
"""
    )
    assert config.ipvs.sync is not None
    layer = run(SetTimeouts(Timeouts(5, 0, 0)))
    effective = effective_config(config, layer)
    assert effective.ipvs.timeouts == Timeouts(5, 120, 300)
    assert effective.ipvs.sync == config.ipvs.sync


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


def _kernel_would(table: Table, restored: set[tuple[ServiceKey, str]], op: Operation) -> str | None:
    """What a kernel holding `table` (scheduler, weight by address) does with
    `op`, changing `table`, or the error it names: the oracle for the layer.
    One difference, by design: -A of a service the config defines brings
    back the config's real servers (`restored`), and -a of each may run once
    more without "Destination already exists"."""
    match op:
        case AddService(service):
            if service.key in table:
                return "Service already exists"
            configured = {}
            if service.key in CONFIG.service_keys():
                for rs in CONFIG.virtual_server(service.key).real_servers:
                    configured[str(rs.address)] = rs.weight
                    restored.add((service.key, str(rs.address)))
            table[service.key] = (service.scheduler, configured)
        case EditService(service):
            if service.key not in table:
                return "No such service"
            table[service.key] = (service.scheduler, table[service.key][1])
        case DeleteService(key):
            if key not in table:
                return "No such service"
            del table[key]
            restored.difference_update({r for r in restored if r[0] == key})
        case AddDestination(key, d) | EditDestination(key, d):
            if key not in table:
                return "Service not defined"
            servers = table[key][1]
            again = (key, str(d.address)) in restored
            if isinstance(op, AddDestination) and str(d.address) in servers and not again:
                return "Destination already exists"
            if isinstance(op, EditDestination) and str(d.address) not in servers:
                return "No such destination"
            servers[str(d.address)] = d.weight
            restored.discard((key, str(d.address)))
        case DeleteDestination(key, address, _):
            if key not in table:
                return "Service not defined"
            if str(address) not in table[key][1]:
                return "No such destination"
            del table[key][1][str(address)]
            restored.discard((key, str(address)))
        case Flush():
            table.clear()
            restored.clear()
    return None


def _table(layer: RuntimeLayer) -> Table:
    """The weights the kernel gets: a drained server's is 0 (an -a or -e of
    weight 0 drains a server that had a weight, test_runtime_drain)."""

    def kernel_weight(vs: VirtualServer, rs: RealServer) -> int:
        return 0 if layer.admin.get(vs.real_server_id(rs)) is AdminState.DRAIN else rs.weight

    return {
        vs.key: (vs.scheduler, {str(rs.address): kernel_weight(vs, rs) for rs in vs.real_servers})
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
    restored: set[tuple[ServiceKey, str]] = set()
    for op in operations:
        expected = _kernel_would(table, restored, op)
        error = builder.apply(op)
        assert (error.message if error else None) == expected, op
        alone, alone_error = apply_operation(CONFIG, layer, op)
        assert (alone_error.message if alone_error else None) == expected
        layer = builder.freeze()
        assert layer == alone
        assert _table(layer) == table
        assert_view_is_effective(builder, layer)


def test_re_adding_a_saved_line_keeps_the_config_thresholds() -> None:
    """ipvsadm -S never saves -x/-y: a config server re-added from a save
    (no thresholds) keeps the config's; thresholds the line gives win."""
    config = parse_config(
        """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
[[virtual_server.real_server]]
address = "10.0.1.1:80"
thresholds = { upper = 100, lower = 10 }
"""
    )
    saved_line = AddDestination(VIP, Destination(RS1.address, 80))
    builder = LayerBuilder(config)
    for op in (Flush(), AddService(config.virtual_server(VIP).service()), saved_line):
        assert builder.apply(op) is None
    assert builder.freeze() == EMPTY
    assert effective_config(config, builder.freeze()) == config
    assert builder.apply(DeleteDestination(VIP, RS1.address, 80)) is None
    assert builder.apply(AddDestination(VIP, thresholds("10.0.1.1", 7, 3))) is None
    rs = effective_config(config, builder.freeze()).virtual_server(VIP).real_servers[0]
    assert (rs.u_threshold, rs.l_threshold) == (7, 3)
