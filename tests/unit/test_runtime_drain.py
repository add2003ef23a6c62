"""Weight 0 from an ipvsadm line is a drain (operator trial: `-Sn` while a
server was drained, `-C`, `-R` of that save restored a hidden runtime weight
0 that `enable` did not clear while `status` said enabled)."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from pathlib import Path

import pytest
import trio.testing
from test_handler import rig, until
from test_runtime import CONFIG, RS1, VIP, dest, run

from director import statefile
from director.config import RealServerId, parse_config
from director.desired import AdminState
from director.ipvs.model import Service
from director.ipvs.ops import AddDestination, AddService, EditDestination, Flush, Operation
from director.runtime import EMPTY, LayerBuilder, effective_config, parse_real_server, set_admin

# -Sn of the config server drained: its fields with weight 0 (config weight 5)
SAVED_DRAINED = replace(CONFIG.virtual_server(VIP).real_servers[0].destination(), weight=0)


def weight(layer: object, rid: RealServerId = RS1) -> int:
    assert isinstance(layer, type(EMPTY))
    vs = effective_config(CONFIG, layer).virtual_server(rid.service)
    (rs,) = [rs for rs in vs.real_servers if vs.real_server_id(rs) == rid]
    return rs.weight


def test_restoring_a_drained_servers_saved_line_drains_it() -> None:
    layer = set_admin(CONFIG, EMPTY, RS1, AdminState.DRAIN)
    layer = run(Flush(), AddService(Service(VIP, "rr")), AddDestination(VIP, SAVED_DRAINED))
    assert dict(layer.admin) == {RS1: AdminState.DRAIN}
    assert dict(layer.real_servers) == {}  # the config's weight, 5, is kept
    assert weight(layer) == 5
    enabled = set_admin(CONFIG, layer, RS1, AdminState.ENABLED)
    assert enabled == EMPTY  # nothing hidden is left after enable


@pytest.mark.parametrize(
    ("ops", "admin", "kept"),
    [
        ((EditDestination(VIP, SAVED_DRAINED),), AdminState.DRAIN, 5),
        ((AddDestination(VIP, dest("10.0.1.2", weight=3)),), None, 3),
        (
            (
                AddDestination(VIP, dest("10.0.1.2", weight=3)),
                EditDestination(VIP, dest("10.0.1.2", weight=0)),
            ),
            AdminState.DRAIN,
            3,
        ),
        ((AddDestination(VIP, dest("10.0.1.2", weight=0)),), None, 0),  # no weight to keep
    ],
    ids=["-e -w 0 of a config server", "-a -w 3", "-e -w 0 after -a -w 3", "-a -w 0 of a new one"],
)
def test_weight_0_drains_a_server_that_had_a_weight(
    ops: tuple[Operation, ...], admin: AdminState | None, kept: int
) -> None:
    layer = run(*ops)
    last = ops[-1]
    assert isinstance(last, AddDestination | EditDestination)
    rid = RealServerId(VIP, last.destination.address, 80)
    assert layer.admin.get(rid) == admin
    assert weight(layer, rid) == kept


def test_a_weight_ends_a_drain_and_disabled_stays_disabled() -> None:
    drained = run(EditDestination(VIP, SAVED_DRAINED))
    again = run(EditDestination(VIP, dest("10.0.1.1", weight=7)), layer=drained)
    assert dict(again.admin) == {} and weight(again) == 7
    disabled = set_admin(CONFIG, EMPTY, RS1, AdminState.DISABLED)
    for op in (
        EditDestination(VIP, SAVED_DRAINED),
        EditDestination(VIP, dest("10.0.1.1", weight=0)),
    ):
        layer = run(op, layer=disabled)
        assert dict(layer.admin) == {RS1: AdminState.DISABLED} and weight(layer) == 5


async def test_drain_save_clear_restore_then_enable_and_status(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The trial's sequence through the controller: after the -R, status
    says drain with the configured weight 5 and the kernel's 0; enable puts
    5 back in the kernel, and the state file keeps no weight 0."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        assert (await r.command("drain", service="tcp:10.0.0.1:80", server="10.0.1.1")).status == 0
        await until(lambda: r.weights() == {"10.0.1.1:80": 0})
        saved = (await r.ipvsadm("-Sn")).stdout
        assert "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -g -w 0\n" in saved
        assert (await r.ipvsadm("-C")).status == 0
        assert (await r.ipvsadm("-R", stdin=saved)).status == 0
        await until(lambda: r.weights() == {"10.0.1.1:80": 0})
        response = await r.command("status", json=True)
        assert isinstance(response.data, dict)
        (rs,) = response.data["services"][0]["real_servers"]
        assert (rs["admin"], rs["configured_weight"], rs["current_weight"]) == ("drain", 5, 0)
        assert (await r.ipvsadm("-Sn")).stdout == saved

        assert (await r.command("enable", service="tcp:10.0.0.1:80", server="10.0.1.1")).status == 0
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        response = await r.command("status", json=True)
        assert isinstance(response.data, dict)
        (rs,) = response.data["services"][0]["real_servers"]
        assert (rs["admin"], rs["configured_weight"], rs["current_weight"]) == ("enabled", 5, 5)
    assert statefile.load(tmp_path / "state.json").layer == EMPTY


def test_drain_takes_the_port_a_route_server_is_written_and_probed_with() -> None:
    """A runbook copied from the config: `drain tcp:10.0.0.1:80
    10.0.1.7:8080` of the route server written so (10.0.1.7:80 in the
    table, probed on 8080) was "no real server" (stop 28's trial)."""
    config = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.7:8080"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.8:80"\n'
    )
    table = RealServerId(VIP, ip_address("10.0.1.7"), 80)
    for written in ("10.0.1.7:8080", "10.0.1.7:80", "10.0.1.7"):
        builder = LayerBuilder(config)
        assert builder.set_admin(parse_real_server(VIP, written), AdminState.DRAIN) == table
        assert dict(builder.freeze().admin) == {table: AdminState.DRAIN}
    with pytest.raises(LookupError) as refused:
        LayerBuilder(config).set_admin(parse_real_server(VIP, "10.0.1.7:9999"), AdminState.DRAIN)
    assert refused.value.args == (
        "no real server 10.0.1.7:9999 in tcp:10.0.0.1:80 (it has 10.0.1.7:80)",
    )
    with pytest.raises(LookupError) as refused:
        LayerBuilder(config).set_admin(parse_real_server(VIP, "10.0.1.9"), AdminState.DRAIN)
    assert refused.value.args == ("no real server 10.0.1.9:80 in tcp:10.0.0.1:80",)
