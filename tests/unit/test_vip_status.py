"""An address on the VIP's interface that the daemon did not add is "there
already" in status whatever the service's verdict (operator trial: in
maintenance, or with the quorum lost, status said "absent" while the host
still had the address and answered ARP for it)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from director.config import parse_config
from director.ipvs.facts import NO_MODULES
from director.vips import Present, Vip, plan_vips, vip_report

CONFIG = parse_config(
    '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.80:80"\nvip_interface = "br0"\n',
    "t.toml",
    NO_MODULES,
)
VIP = Vip("br0", ip_address("10.0.0.80"))
BY_HAND = Present(frozenset({"br0"}), {VIP.address: frozenset({"br0"})})


@pytest.mark.parametrize(
    ("verdict", "maintenance", "reason"),
    [
        (True, False, "quorum met"),
        (False, False, "quorum not met"),
        (None, False, "quorum not known yet: kept as it is"),
        (False, True, "maintenance"),
    ],
)
def test_an_address_added_by_hand_is_there_already_whatever_the_verdict(
    verdict: bool | None, maintenance: bool, reason: str
) -> None:
    plan = plan_vips({VIP: verdict}, frozenset(), BY_HAND)
    assert plan.operations == ()
    (status,) = vip_report(
        CONFIG.virtual_servers,
        {VIP: verdict},
        frozenset(),
        plan,
        {},
        None,
        0.0,
        maintenance=maintenance,
    )
    assert status.state == "there already on br0, not ours: left alone"
    assert status.reason == reason and not status.owned


def test_an_address_nobody_has_is_absent() -> None:
    present = Present(frozenset({"br0"}), {})
    plan = plan_vips({VIP: False}, frozenset(), present)
    (status,) = vip_report(CONFIG.virtual_servers, {VIP: False}, frozenset(), plan, {}, None, 0.0)
    assert status.state == "absent"
