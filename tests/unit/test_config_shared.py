"""Within one parse, equal addresses and ports are one object each (issue 8's
RSS: an object a real server for the same port or address cost bytes a
server), and RealServerId keeps its hash to one digit of an int."""

from __future__ import annotations

import sys

from director.config import parse_config
from director.config.parse import parse_endpoint

CONFIG = """
[[virtual_server]]
protocol = "tcp"
address = "10.1.0.1:20000"
[[virtual_server.real_server]]
address = "10.2.0.1:8080"
forward = "masq"
[[virtual_server.real_server]]
address = "10.2.0.2:8080"
forward = "masq"

[[virtual_server]]
protocol = "tcp"
address = "10.1.0.1:20001"
[[virtual_server.real_server]]
address = "10.2.0.1:8080"
forward = "masq"
[[virtual_server.real_server]]
address = "[2001:db8::1]:8080"
forward = "tunnel"
"""


def test_equal_addresses_and_ports_are_one_object() -> None:
    first, second = parse_config(CONFIG, modules=None).virtual_servers
    a1, a2 = first.real_servers
    b1, b2 = second.real_servers
    assert a1.address is b1.address
    assert a1.port is a2.port is b1.port
    assert b2.port is second.key.port  # a tunnel's port is the service's
    assert first.key.address is second.key.address
    assert a1.address != a2.address


def test_parse_endpoint_alone_shares_nothing() -> None:
    parse_config(CONFIG)  # what it shared is not kept after it
    one, two = parse_endpoint("10.2.0.1:8080"), parse_endpoint("10.2.0.1:8080")
    assert one is not None and two is not None
    assert one == two and one[0] is not two[0] and one[1] is not two[1]


def test_a_real_server_ids_hash_is_one_digit() -> None:
    vs = parse_config(CONFIG).virtual_servers[1]
    for rid in vs.real_server_ids:
        assert hash(rid) == hash(type(rid)(rid.service, rid.address, rid.port))
        assert sys.getsizeof(hash(rid)) <= sys.getsizeof(2**30 - 1)
