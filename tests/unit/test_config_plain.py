"""The plain real servers' path of the config parse (an address, at most a
weight and a forwarding method: parse._plain_real_servers) makes exactly
what the general path makes, and gives way to it for anything else, which
then reports every problem: hypothesis holds the two parses equal, errors
included."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import director.config.parse as config_parse
from director.config import Config, ConfigError, parse_config
from director.ipvs.facts import NO_MODULES

ADDRESSES = st.sampled_from(
    [
        '"10.0.1.1"',
        '"10.0.1.1:8080"',
        '"10.0.1.2:80"',
        '"10.0.1.1:0"',
        '"10.0.1.x"',
        '"127.0.0.1"',
        '"224.0.0.1"',
        '"[2001:db8::1]:80"',
        '"2001:db8::2"',
        "7",
    ]
)
WEIGHTS = st.sampled_from(["", "weight = 0", "weight = 65535", "weight = 65536", "weight = -1",
                           "weight = true", "weight = 1.5", 'weight = "3"'])  # fmt: skip
FORWARDS = st.sampled_from(['', 'forward = "masq"', 'forward = "tunnel"', 'forward = "nat"',
                            "forward = 1", 'forward = "route"'])  # fmt: skip
OTHERS = st.sampled_from(["", 'name = "a"', "thresholds = { upper = 5 }", "wieght = 3"])
SERVICES = st.sampled_from(
    [
        'protocol = "tcp"\naddress = "10.0.0.1:80"',
        'protocol = "tcp"\naddress = "[2001:db8::9]:80"',
        "fwmark = 7",
        'protocol = "tcp"',
    ]
)


@st.composite
def config_text(draw: st.DrawFn) -> str:
    text = ""
    for _ in range(draw(st.integers(1, 3))):
        text += f"[[virtual_server]]\n{draw(SERVICES)}\n"
        for _ in range(draw(st.integers(0, 4))):
            keys = [f"address = {draw(ADDRESSES)}", draw(WEIGHTS), draw(FORWARDS), draw(OTHERS)]
            text += "[[virtual_server.real_server]]\n" + "".join(f"{k}\n" for k in keys if k)
    return text


def outcome(text: str) -> Config | tuple[str, ...]:
    try:
        return parse_config(text, modules=NO_MODULES)
    except ConfigError as error:
        return tuple(error.named_errors)


@settings(max_examples=500, deadline=None)
@given(text=config_text())
def test_the_plain_path_reads_as_the_general_one(text: str) -> None:
    patch = pytest.MonkeyPatch()
    try:
        patch.setattr(config_parse, "_REMEMBERED", config_parse._Remembered())
        fast = outcome(text)
        patch.setattr(config_parse, "_plain_real_servers", lambda *args: None)
        patch.setattr(config_parse, "_REMEMBERED", config_parse._Remembered())
        assert fast == outcome(text)
    finally:
        patch.undo()


def test_plain_real_servers_take_the_plain_path(monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[object] = []
    plain = config_parse._plain_real_servers

    def counted(*args: object) -> object:
        result = plain(*args)  # type: ignore[arg-type]
        taken.append(result)
        return result

    monkeypatch.setattr(config_parse, "_plain_real_servers", counted)
    config = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.1"\nweight = 3\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.2:81"\nforward = "masq"\n',
        modules=NO_MODULES,
    )
    assert len(taken) == 1 and taken[0] == config.virtual_servers[0].real_servers
    assert [(str(rs.address), rs.port, rs.weight) for rs in config.virtual_servers[0].real_servers] == [
        ("10.0.1.1", 80, 3), ("10.0.1.2", 81, 1)
    ]  # fmt: skip
