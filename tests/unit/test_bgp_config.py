"""[bgp], [[bgp.peer]] and a service's `bgp = true` in the config
(director/config/bgp.py, director/config/parse.py): each error with its
exact message and path, and valid configs parsed to their BgpSettings."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from director.config import ConfigError, parse_config
from director.config.model import BgpPeer, BgpSettings, Config
from director.config.toml import literal
from director.ipvs.facts import NO_MODULES

HEAD = "[bgp]\nlocal_as = 65001\n"
PEER = '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65000\n'
PEER6 = '[[bgp.peer]]\naddress = "2001:db8::1"\nas = 65000\n'


def config(text: str) -> Config:
    return parse_config(text, "t.toml", NO_MODULES)


def bgp(text: str) -> BgpSettings | None:
    return config(text).bgp


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config(text)
    return info.value.errors


def service(address: str = "10.9.1.100:80", extra: str = "bgp = true\n", rs: str = "") -> str:
    server = rs or ("[2001:db8:2::1]:80" if address.startswith("[") else "10.9.2.1:80")
    where = f'address = "{address}"\nprotocol = "tcp"\n' if address else ""
    return (
        f'[[virtual_server]]\n{where}{extra}[[virtual_server.real_server]]\naddress = "{server}"\n'
    )


# -- valid ---------------------------------------------------------------------------


def test_no_bgp_section_means_no_bgp() -> None:
    assert bgp(service(extra="")) is None
    assert config(service(extra="bgp = false\n")).virtual_servers[0].bgp is False


def test_the_required_keys_alone_take_the_defaults() -> None:
    assert bgp(HEAD + PEER) == BgpSettings(
        local_as=65001,
        peers=(BgpPeer(ip_address("10.9.0.1"), 65000),),
        router_id=None,
        next_hop=None,
        hold_time=90,
        med=None,
        local_pref=None,
        bird="bird",
        birdc="birdc",
        runtime_dir="/run/director/bgp",
    )
    peer = BgpPeer(ip_address("10.9.0.1"), 65000)
    assert (peer.port, peer.multihop, peer.password) == (179, None, None)


def test_every_key_set() -> None:
    text = (
        "[bgp]\nlocal_as = 4294967295\n"
        'router_id = "10.9.0.11"\nnext_hop = "2001:db8::11"\nhold_time = 3\n'
        "med = 4294967295\nlocal_pref = 0\n"
        'bird = "/usr/local/sbin/bird2"\nbirdc = "/opt/bird-2.0/birdc_x+y"\n'
        'runtime_dir = "/run/d/bgp"\n'
        '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 1\nport = 1\nmultihop = 255\n'
        'password = "a b#c\'$%{}~!;"\n'
        '[[bgp.peer]]\naddress = "2001:db8::1"\nas = 4294967295\nport = 65535\nmultihop = 1\n'
    )
    assert bgp(text) == BgpSettings(
        local_as=4294967295,
        peers=(
            BgpPeer(ip_address("10.9.0.1"), 1, 1, 255, "a b#c'$%{}~!;"),
            BgpPeer(ip_address("2001:db8::1"), 4294967295, 65535, 1, None),
        ),
        router_id=ip_address("10.9.0.11"),
        next_hop=ip_address("2001:db8::11"),
        hold_time=3,
        med=4294967295,
        local_pref=0,
        bird="/usr/local/sbin/bird2",
        birdc="/opt/bird-2.0/birdc_x+y",
        runtime_dir="/run/d/bgp",
    )


def test_hold_time_0_and_the_top_of_the_ranges() -> None:
    settings = bgp("[bgp]\nlocal_as = 1\nhold_time = 0\n" + PEER)
    assert settings is not None and settings.hold_time == 0
    settings = bgp("[bgp]\nlocal_as = 1\nhold_time = 65535\n" + PEER)
    assert settings is not None and settings.hold_time == 65535


def test_a_password_of_80_characters_is_taken() -> None:
    settings = bgp(HEAD + PEER + f'password = "{"x" * 80}"\n')
    assert settings is not None and settings.peers[0].password == "x" * 80


def test_local_pref_with_an_ibgp_peer_among_others() -> None:
    text = HEAD + "local_pref = 200\n" + PEER + '[[bgp.peer]]\naddress = "10.9.0.2"\nas = 65001\n'
    settings = bgp(text)
    assert settings is not None and settings.local_pref == 200
    assert [p.as_number for p in settings.peers] == [65000, 65001]


def test_families_are_the_peers() -> None:
    settings = bgp(HEAD + PEER + PEER6)
    assert settings is not None and settings.families == {4, 6}
    settings = bgp(HEAD + PEER6)
    assert settings is not None and settings.families == {6}


def test_next_hop_of_a_family_some_peer_has() -> None:
    settings = bgp(HEAD + 'next_hop = "10.9.0.11"\n' + PEER + PEER6)
    assert settings is not None and settings.next_hop == ip_address("10.9.0.11")


def test_bgp_true_services_of_both_families_and_several_on_one_address() -> None:
    text = (
        HEAD
        + PEER
        + PEER6
        + service()
        + service("10.9.1.100:443")
        + service("[2001:db8:1::100]:80")
        + service("10.9.1.101:80", extra="")
    )
    parsed = config(text)
    assert [(str(vs.key.address), vs.key.port, vs.bgp) for vs in parsed.virtual_servers] == [
        ("10.9.1.100", 80, True),
        ("10.9.1.100", 443, True),
        ("2001:db8:1::100", 80, True),
        ("10.9.1.101", 80, False),
    ]


# -- [bgp] errors -----------------------------------------------------------------------


def test_bgp_must_be_a_table() -> None:
    assert errors("bgp = 1\n") == ["bgp: expected a table, got an integer: 1"]


def test_an_empty_bgp_section_names_both_required_keys() -> None:
    assert errors("[bgp]\n") == [
        "bgp.local_as: required: this director's AS number",
        "bgp.peer: required: at least one [[bgp.peer]] (address, as)",
    ]


def test_local_as_missing_with_a_peer() -> None:
    assert errors("[bgp]\n" + PEER) == ["bgp.local_as: required: this director's AS number"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("local_as = 0", "bgp.local_as: must be between 1 and 4294967295: 0"),
        ("local_as = 4294967296", "bgp.local_as: must be between 1 and 4294967295: 4294967296"),
        ('local_as = "65001"', 'bgp.local_as: expected an integer, got a string: "65001"'),
        ("local_as = true", "bgp.local_as: expected an integer, got a boolean: true"),
        ('router_id = "x"', 'bgp.router_id: not an IP address: "x"'),
        ("router_id = 1", "bgp.router_id: expected a string, got an integer: 1"),
        (
            'router_id = "2001:db8::11"',
            'bgp.router_id: must be an IPv4 address (a BGP identifier is 4 octets): "2001:db8::11"',
        ),
        ('next_hop = "10.9.0.256"', 'bgp.next_hop: not an IP address: "10.9.0.256"'),
        ("next_hop = 1", "bgp.next_hop: expected a string, got an integer: 1"),
        (
            'next_hop = "2001:db8::11"',
            'bgp.next_hop: no [[bgp.peer]] is IPv6: "2001:db8::11"',
        ),
        ("hold_time = 1", "bgp.hold_time: must be 0 (no keepalives) or at least 3 seconds: 1"),
        ("hold_time = 2", "bgp.hold_time: must be 0 (no keepalives) or at least 3 seconds: 2"),
        ("hold_time = -1", "bgp.hold_time: must be between 0 and 65535: -1"),
        ("hold_time = 65536", "bgp.hold_time: must be between 0 and 65535: 65536"),
        ("hold_time = 9.5", "bgp.hold_time: expected an integer, got a number: 9.5"),
        ("med = -1", "bgp.med: must be between 0 and 4294967295: -1"),
        ("med = 4294967296", "bgp.med: must be between 0 and 4294967295: 4294967296"),
        ("local_pref = -1", "bgp.local_pref: must be between 0 and 4294967295: -1"),
        (
            "local_pref = 4294967296",
            "bgp.local_pref: must be between 0 and 4294967295: 4294967296",
        ),
        (
            "local_pref = 200",
            "bgp.local_pref: only iBGP peers (as = local_as) receive LOCAL_PREF, and none is: "
            "use med: 200",
        ),
        (
            'bird = "bird -d"',
            'bgp.bird: expected a command name or path (letters, digits, _ . / + -): "bird -d"',
        ),
        (
            'bird = "bird;reboot"',
            'bgp.bird: expected a command name or path (letters, digits, _ . / + -): "bird;reboot"',
        ),
        ('bird = ""', 'bgp.bird: expected a command name or path (letters, digits, _ . / + -): ""'),
        ("bird = 2", "bgp.bird: expected a string, got an integer: 2"),
        (
            'birdc = "$HOME/birdc"',
            "bgp.birdc: expected a command name or path (letters, digits, _ . / + -): "
            '"$HOME/birdc"',
        ),
        ('runtime_dir = "run/bgp"', 'bgp.runtime_dir: must be an absolute path: "run/bgp"'),
        ("runtime_dir = 1", "bgp.runtime_dir: expected a string, got an integer: 1"),
        ("local_ass = 1", "bgp.local_ass: unknown key (did you mean 'local_as'?)"),
        ("holdtime = 9", "bgp.holdtime: unknown key (did you mean 'hold_time'?)"),
        ("xyzzy = 1", "bgp.xyzzy: unknown key"),
    ],
)
def test_bad_bgp_values_are_named(line: str, error: str) -> None:
    head = HEAD if not line.startswith("local_as ") else "[bgp]\n"
    assert errors(head + line + "\n" + PEER) == [error]


def test_a_runtime_dir_too_long_for_the_control_socket() -> None:
    # 107 bytes of sun_path: "/" + 98 "d" + "/bird.ctl" is 108.
    fits, too_long = "/" + "d" * 97, "/" + "d" * 98
    assert len(fits + "/bird.ctl") == 107
    settings = bgp(HEAD + f'runtime_dir = "{fits}"\n' + PEER)
    assert settings is not None and settings.runtime_dir == fits
    assert errors(HEAD + f'runtime_dir = "{too_long}"\n' + PEER) == [
        "bgp.runtime_dir: too long for BIRD's control socket in it (107 bytes of socket path): "
        f"{literal(too_long)}"
    ]


def test_an_empty_runtime_dir_is_an_error_not_the_default() -> None:
    # "" is no absolute path: it must not quietly become /run/director/bgp.
    assert errors(HEAD + 'runtime_dir = ""\n' + PEER) == [
        'bgp.runtime_dir: must be an absolute path: ""'
    ]


def test_every_bad_value_of_bgp_at_once() -> None:
    text = (
        '[bgp]\nlocal_as = 0\nrouter_id = "::1"\nhold_time = 2\nmed = -5\n'
        'bird = "a b"\nruntime_dir = "x"\n' + PEER
    )
    assert errors(text) == [
        "bgp.local_as: must be between 1 and 4294967295: 0",
        'bgp.router_id: must be an IPv4 address (a BGP identifier is 4 octets): "::1"',
        "bgp.hold_time: must be 0 (no keepalives) or at least 3 seconds: 2",
        "bgp.med: must be between 0 and 4294967295: -5",
        'bgp.bird: expected a command name or path (letters, digits, _ . / + -): "a b"',
        'bgp.runtime_dir: must be an absolute path: "x"',
    ]


# -- [[bgp.peer]] errors ---------------------------------------------------------------


def test_peer_must_be_an_array_of_tables() -> None:
    assert errors(HEAD + '[bgp.peer]\naddress = "10.9.0.1"\nas = 65000\n') == [
        'bgp.peer: expected an array of tables, got a table: { address = "10.9.0.1", as = 65000 }'
    ]
    assert errors(HEAD + "peer = [1]\n") == ["bgp.peer[0]: expected a table, got an integer: 1"]


def test_an_empty_peer_names_its_required_keys() -> None:
    assert errors(HEAD + "[[bgp.peer]]\n") == [
        "bgp.peer[0].address: required: the neighbour's IP address",
        "bgp.peer[0].as: required: the neighbour's AS number",
    ]


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        ('address = "router1"\nas = 1', 'bgp.peer[0].address: not an IP address: "router1"'),
        ("address = 1\nas = 1", "bgp.peer[0].address: expected a string, got an integer: 1"),
        (
            'address = "fe80::1"\nas = 1',
            "bgp.peer[0].address: a link-local neighbour needs an interface: not supported: "
            '"fe80::1"',
        ),
        (
            'address = "169.254.0.1"\nas = 1',
            "bgp.peer[0].address: a link-local neighbour needs an interface: not supported: "
            '"169.254.0.1"',
        ),
        ('address = "10.9.0.1"\nas = 0', "bgp.peer[0].as: must be between 1 and 4294967295: 0"),
        (
            'address = "10.9.0.1"\nas = 4294967296',
            "bgp.peer[0].as: must be between 1 and 4294967295: 4294967296",
        ),
        (
            'address = "10.9.0.1"\nas = "65000"',
            'bgp.peer[0].as: expected an integer, got a string: "65000"',
        ),
        (
            'address = "10.9.0.1"\nas = 1\nport = 0',
            "bgp.peer[0].port: must be between 1 and 65535: 0",
        ),
        (
            'address = "10.9.0.1"\nas = 1\nport = 65536',
            "bgp.peer[0].port: must be between 1 and 65535: 65536",
        ),
        (
            'address = "10.9.0.1"\nas = 1\nmultihop = 0',
            "bgp.peer[0].multihop: must be between 1 and 255: 0",
        ),
        (
            'address = "10.9.0.1"\nas = 1\nmultihop = 256',
            "bgp.peer[0].multihop: must be between 1 and 255: 256",
        ),
        (
            'address = "10.9.0.1"\nas = 1\nmultihop = true',
            "bgp.peer[0].multihop: expected an integer, got a boolean: true",
        ),
        (
            'address = "10.9.0.1"\nas = 1\npassword = ""',
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            f'address = "10.9.0.1"\nas = 1\npassword = "{"x" * 81}"',
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            'address = "10.9.0.1"\nas = 1\npassword = "a\\"b"',
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            "address = \"10.9.0.1\"\nas = 1\npassword = 'a\\b'",
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            'address = "10.9.0.1"\nas = 1\npassword = "caf\u00e9"',
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            'address = "10.9.0.1"\nas = 1\npassword = "a\\tb"',
            'bgp.peer[0].password: 1 to 80 printable ASCII characters, without " or \\: "(hidden)"',
        ),
        (
            'address = "10.9.0.1"\nas = 1\npassword = 7',
            "bgp.peer[0].password: expected a string, got an integer: 7",
        ),
        (
            'address = "10.9.0.1"\nas = 1\nasn = 2',
            "bgp.peer[0].asn: unknown key (did you mean 'as'?)",
        ),
    ],
)
def test_bad_peer_values_are_named(lines: str, error: str) -> None:
    # A second, valid peer: the section stands, only the bad key is named.
    assert errors(HEAD + "[[bgp.peer]]\n" + lines + "\n" + PEER6) == [error]


def test_a_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        config(HEAD + PEER + 'password = "s3cr\\"et"\n')
    assert "s3cr" not in str(info.value)


def test_a_second_peer_at_one_address() -> None:
    text = HEAD + PEER + PEER6 + '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65002\n'
    assert errors(text) == [
        "bgp.peer[2].address: a second peer at this address (first at bgp.peer[0])"
    ]


def test_peer_errors_name_the_entry_for_people() -> None:
    with pytest.raises(ConfigError) as info:
        config(HEAD + PEER + "port = 0\n")
    assert info.value.named_errors == [
        "bgp.peer[0].port (10.9.0.1, line 6): must be between 1 and 65535: 0"
    ]


def test_next_hop_and_local_pref_are_not_judged_without_valid_peers() -> None:
    # Only the peer's own error: no "no [[bgp.peer]] is IPv4" on top of it.
    text = HEAD + 'next_hop = "10.9.0.11"\nlocal_pref = 5\n[[bgp.peer]]\naddress = "x"\nas = 1\n'
    assert errors(text) == ['bgp.peer[0].address: not an IP address: "x"']


# -- a service's bgp = true --------------------------------------------------------------


def test_bgp_true_needs_a_bgp_section() -> None:
    assert errors(service()) == [
        "virtual_server[0].bgp: needs a [bgp] section (local_as and at least one [[bgp.peer]]): "
        "true"
    ]


def test_bgp_true_on_a_fwmark_service() -> None:
    text = HEAD + PEER + "[[virtual_server]]\nfwmark = 7\nbgp = true\n"
    text += '[[virtual_server.real_server]]\naddress = "10.9.2.1:80"\n'
    assert errors(text) == [
        "virtual_server[0].bgp: a fwmark service has no address to announce: true"
    ]


def test_bgp_true_needs_a_peer_of_the_address_family() -> None:
    assert errors(HEAD + PEER + service("[2001:db8:1::100]:80")) == [
        "virtual_server[0].bgp: no [[bgp.peer]] is IPv6 to announce 2001:db8:1::100 to: true"
    ]
    assert errors(HEAD + PEER6 + service()) == [
        "virtual_server[0].bgp: no [[bgp.peer]] is IPv4 to announce 10.9.1.100 to: true"
    ]


def test_bgp_must_be_a_boolean() -> None:
    assert errors(HEAD + PEER + service(extra='bgp = "yes"\n')) == [
        'virtual_server[0].bgp: expected a boolean, got a string: "yes"'
    ]


def test_only_the_wrong_service_is_named() -> None:
    text = HEAD + PEER + service() + service("[2001:db8:1::100]:80") + service("10.9.1.101:80")
    assert errors(text) == [
        "virtual_server[1].bgp: no [[bgp.peer]] is IPv6 to announce 2001:db8:1::100 to: true"
    ]


def test_a_wrong_bgp_section_is_not_blamed_on_the_services_too() -> None:
    # [bgp] is there but invalid: its own errors say why; bgp = true is not
    # also called wrong.
    assert errors("[bgp]\nlocal_as = 0\n" + PEER + service()) == [
        "bgp.local_as: must be between 1 and 4294967295: 0"
    ]
    assert errors("bgp = 3\n" + service()) == ["bgp: expected a table, got an integer: 3"]


def test_a_service_error_names_the_entry_for_people() -> None:
    with pytest.raises(ConfigError) as info:
        config(HEAD + PEER6 + service())
    assert info.value.named_errors == [
        "virtual_server[0].bgp (10.9.1.100:80 tcp, line 9): "
        "no [[bgp.peer]] is IPv4 to announce 10.9.1.100 to: true"
    ]


def test_a_peers_remote_as_is_pointed_at_as() -> None:
    # Operator trial: BIRD's `remote as` written as remote_as got "unknown key" alone.
    peer = '[[bgp.peer]]\naddress = "10.9.0.1"\nremote_as = 65000\n'
    assert errors(HEAD + peer) == [
        "bgp.peer[0].as: required: the neighbour's AS number",
        "bgp.peer[0].remote_as: unknown key (did you mean 'as'?)",
    ]
