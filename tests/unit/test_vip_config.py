"""One address is one VIP: the config refuses it on two interfaces (an
operator trial put 10.10.9.75 on dA for :80 and on dB for :81, and each copy
followed only its own service's quorum)."""

from __future__ import annotations

import pytest

from director.config import ConfigError, parse_config
from director.ipvs.facts import NO_MODULES


def service(port: int, interface: str) -> str:
    return (
        f'[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.75:{port}"\n'
        f'vip_interface = "{interface}"\n'
    )


def test_one_address_on_two_vip_interfaces_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(service(80, "dA") + service(81, "dB"), "t.toml", NO_MODULES)
    assert info.value.errors == [
        'virtual_server[1].vip_interface: 10.0.0.75 is already the VIP on "dA" '
        '(at virtual_server[0]): one address, one vip_interface: "dB"'
    ]


def test_services_on_one_address_and_one_interface_share_it() -> None:
    config = parse_config(service(80, "dA") + service(443, "dA"), "t.toml", NO_MODULES)
    assert [vs.vip_interface for vs in config.virtual_servers] == ["dA", "dA"]


def test_a_service_without_vip_interface_on_the_same_address_is_not_a_conflict() -> None:
    text = service(80, "dA") + '[[virtual_server]]\nprotocol = "udp"\naddress = "10.0.0.75:53"\n'
    assert len(parse_config(text, "t.toml", NO_MODULES).virtual_servers) == 2
