"""The parser takes a virtual server of the previous parse when its TOML
table is the same (a reload of a large file parses only what changed), and
never when the table differs in a value's type or holds an exec check."""

from __future__ import annotations

import pytest

from director.config import ConfigError, parse_config
from director.config.parse import unremembered
from director.ipvs.facts import NO_MODULES

SERVICE = """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
check = { type = "tcp", interval = 1.0 }
[[virtual_server.real_server]]
address = "10.0.1.1"
WEIGHT
"""


def parse(text: str) -> object:
    return parse_config(text, modules=NO_MODULES)


def test_an_unchanged_virtual_server_is_the_one_parsed_before() -> None:
    first = parse_config(SERVICE.replace("WEIGHT", "weight = 2"), modules=NO_MODULES)
    second = parse_config(SERVICE.replace("WEIGHT", "weight = 2"), modules=NO_MODULES)
    assert second.virtual_servers[0] is first.virtual_servers[0]
    third = parse_config(SERVICE.replace("WEIGHT", "weight = 3"), modules=NO_MODULES)
    assert third.virtual_servers[0].real_servers[0].weight == 3


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("true", "virtual_server[0].real_server[0].weight: expected an integer"),
        ("1.0", "virtual_server[0].real_server[0].weight: expected an integer"),
    ],
)
def test_a_value_equal_in_python_but_of_another_type_is_parsed_again(
    value: str, error: str
) -> None:
    """1 == True == 1.0 in Python; a weight of true is still an error after
    a parse of weight = 1."""
    parse(SERVICE.replace("WEIGHT", "weight = 1"))
    with pytest.raises(ConfigError) as raised:
        parse(SERVICE.replace("WEIGHT", f"weight = {value}"))
    assert any(e.startswith(error) for e in raised.value.errors), raised.value.errors


def test_a_virtual_server_with_an_exec_check_is_parsed_every_time() -> None:
    """An exec check's user is looked up in the system at each parse."""
    text = SERVICE.replace("WEIGHT", "").replace(
        'check = { type = "tcp", interval = 1.0 }',
        'check = { type = "exec", command = ["/bin/true"] }',
    )
    first = parse_config(text, modules=NO_MODULES)
    second = parse_config(text, modules=NO_MODULES)
    assert second.virtual_servers[0] == first.virtual_servers[0]
    assert second.virtual_servers[0] is not first.virtual_servers[0]


def test_an_invalid_virtual_server_is_never_remembered() -> None:
    bad = SERVICE.replace("WEIGHT", "weight = -1")
    for _ in range(2):
        with pytest.raises(ConfigError) as raised:
            parse(bad)
        assert any("weight" in e for e in raised.value.errors)


def test_unremembered_counts_what_a_parse_would_read_again() -> None:
    """The head is always read; a virtual server only when its text differs
    from the one the last parse remembers at its place; everything when
    the text cannot be cut at its virtual servers."""
    head = '[daemon]\nlog_level = "info"\n'
    one = SERVICE.lstrip("\n").replace("WEIGHT", "weight = 2")
    two = one.replace("10.0.0.1:80", "10.0.0.1:81")
    text = head + one + two
    assert unremembered(text) == len(text)  # (another test's parse is remembered)
    parse(text)
    assert unremembered(text) == len(head)
    changed = two.replace("weight = 2", "weight = 3")
    assert unremembered(head + one + changed) == len(head) + len(changed)
    # Moved: each virtual server is remembered at its place.
    assert unremembered(head + two + one) == len(text)
    # A multi-line string could hold a header: not cut, all of it read.
    quoted = text.replace('"info"', '"""info"""')
    assert unremembered(quoted) == len(quoted)
    # A virtual server with a problem is never remembered, so always read;
    # a good one beside it is.
    bad = one.replace("weight = 2", "weight = true")
    with pytest.raises(ConfigError):
        parse(head + bad + two)
    assert unremembered(head + bad + two) == len(head) + len(bad)


def test_the_cut_unremembered_made_serves_the_parse_of_that_text_and_is_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from director.config import parse as parse_module

    cuts: list[str] = []
    cut = parse_module._cut

    def counted(text: str) -> object:
        cuts.append(text)
        return cut(text)

    monkeypatch.setattr(parse_module, "_cut", counted)
    text = "".join(SERVICE.replace("WEIGHT", "").replace(":80", f":{80 + i}") for i in range(3))
    unremembered(text)
    first = parse(text)
    assert len(cuts) == 1 and parse_module._last_cut is None  # taken, then dropped
    # Another string, equal or not, is cut again.
    assert parse("".join(text)) == first and len(cuts) == 2
