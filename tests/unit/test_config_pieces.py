"""A config cut at its `[[virtual_server]]` headers (parse._cut, parse._load)
reads as the whole text does: the same Config, or the same errors with the
same line numbers; a reload where one virtual server's text changed reads
that piece alone (issue 8: a reload of 10,000 real servers with one changed
under 100 ms of CPU). hypothesis writes the texts, with the shapes that
must not be cut (another table after a virtual server, a multi-line
string, a header written with spaces or quotes) among them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from director.config import ConfigError, parse_config
from director.config import parse as config_parse
from director.config.model import Config
from director.ipvs.facts import NO_MODULES

HEADERS = [
    "[[virtual_server]]",
    "[[virtual_server]]  # a comment",
    "[[virtual_server]]\t",
    "[[ virtual_server ]]",  # not cut there: the piece before holds two
    '[["virtual_server"]]',
]


@st.composite
def virtual_server(draw: st.DrawFn, i: int) -> str:
    header = draw(st.sampled_from(HEADERS[:3]) if i == 0 else st.sampled_from(HEADERS))
    port = draw(st.sampled_from([80 + i, 80]))  # 80 again: a duplicate service
    lines = [header, 'protocol = "tcp"', f'address = "10.0.0.1:{port}"']
    lines += draw(
        st.sampled_from(
            [
                [],
                ['check = { type = "tcp", interval = 2.0 }'],
                ["[virtual_server.check]", 'type = "tcp"', "timeout = 0.5"],
                ["  [ virtual_server.check ]", 'type = "tcp"'],
                ['scheduler = "wrong scheduler"'],
                ["weight = 3"],  # an unknown key
                ['description = """two', 'lines"""'],  # a multi-line string: no cut
                ["[daemon]", 'log_level = "debug"'],  # another table after: no cut
                ["ports = [", "  [1, 2],", "]"],  # an array's element on its own line
                ["bad = = 1"],  # TOML syntax error
            ]
        )
    )
    for j in range(draw(st.integers(0, 3))):
        lines += [
            draw(
                st.sampled_from(
                    ["[[virtual_server.real_server]]", "[[ virtual_server.real_server ]]"]
                )
            ),
            f'address = "10.0.{i + 1}.{j + 1}"',
            draw(st.sampled_from(["", "weight = 2", "weight = -1", "weight = true"])),
        ]
    return "\n".join(lines)


@st.composite
def config_text(draw: st.DrawFn) -> str:
    head = draw(
        st.sampled_from(
            [
                "",
                "# directord\n",
                '[daemon]\nlog_level = "info"\n',
                '[daemon]\nlog_level = "info"\n[control]\nsocket = "/run/x.sock"\n',
                "virtual_server = []\n",
                "[virtual_server.check]\n",
            ]
        )
    )
    count = draw(st.integers(0, 4))
    body = "\n".join(draw(virtual_server(i)) for i in range(count))
    return head + body + draw(st.sampled_from(["", "\n", "\n\n# end\n"]))


def outcome(text: str) -> Config | tuple[str, ...]:
    try:
        return parse_config(text, modules=NO_MODULES)
    except ConfigError as error:
        return tuple(error.named_errors)


def whole(text: str, monkeypatch: pytest.MonkeyPatch) -> Config | tuple[str, ...]:
    """What the whole text's own parse makes of it (nothing cut, nothing
    remembered)."""
    with monkeypatch.context() as patch:
        patch.setattr(config_parse, "_cut", lambda text: None)
        patch.setattr(config_parse, "_REMEMBERED", config_parse._Remembered())
        return outcome(text)


@settings(max_examples=400, deadline=None)
@given(first=config_text(), second=config_text())
def test_a_cut_text_reads_as_the_whole_text(first: str, second: str) -> None:
    patch = pytest.MonkeyPatch()
    try:
        # The second after the first: what the first left remembered must
        # not change what the second says.
        assert outcome(first) == whole(first, patch)
        assert outcome(second) == whole(second, patch)
    finally:
        patch.undo()


def lines(count: int, changed: int | None = None) -> str:
    text = '[daemon]\nlog_level = "info"\n'
    for i in range(count):
        weight = 7 if i == changed else 1
        text += (
            f'[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:{80 + i}"\n'
            f'[[virtual_server.real_server]]\naddress = "10.0.1.{i + 1}"\nweight = {weight}\n'
        )
    return text


def test_a_reload_reads_only_the_changed_virtual_server(monkeypatch: pytest.MonkeyPatch) -> None:
    first = parse_config(lines(5), modules=NO_MODULES)
    read: list[str] = []
    loads = config_parse.tomli.loads

    def counted(text: str) -> dict[str, object]:
        read.append(text)
        return loads(text)

    monkeypatch.setattr(config_parse.tomli, "loads", counted)
    second = parse_config(lines(5, changed=3), modules=NO_MODULES)
    assert second.virtual_servers[3].real_servers[0].weight == 7
    assert [vs is old for vs, old in zip(second.virtual_servers, first.virtual_servers, strict=True)] == [
        True, True, True, False, True
    ]  # fmt: skip
    assert len(read) == 2  # the text before the virtual servers, and the changed one
    assert read[1].startswith("[[virtual_server]]") and "weight = 7" in read[1]
    assert second == whole(lines(5, changed=3), monkeypatch)


def test_a_remembered_virtual_server_still_names_its_entry_in_errors() -> None:
    """The second service is remembered from the first parse; the first
    changes to its address, so the duplicate is reported at the remembered
    one, named as the whole parse names it."""
    text = lines(2)
    parse_config(text.replace("10.0.0.1:80", "10.0.0.1:79"), modules=NO_MODULES)
    with pytest.raises(ConfigError) as raised:
        parse_config(text.replace("10.0.0.1:80", "10.0.0.1:81", 1), modules=NO_MODULES)
    assert raised.value.named_errors == [
        "virtual_server[1] (10.0.0.1:81 tcp, line 9): duplicate virtual service TCP 10.0.0.1:81 "
        "(first at virtual_server[0], line 3)"
    ]


def test_a_syntax_error_in_a_piece_has_the_whole_texts_line_number() -> None:
    text = lines(3).replace('address = "10.0.1.2"', "address = = 1")
    with pytest.raises(ConfigError) as raised:
        parse_config(text, modules=NO_MODULES)
    (error,) = raised.value.errors
    assert "at line 13," in error, error  # 2 lines before, 6 a virtual server


@pytest.mark.parametrize("escaped", ["\\n", "\\t", "\\u001b"])
def test_a_real_server_name_with_a_control_character_is_refused(escaped: str) -> None:
    """A multi-line name split the status table's row (operator trial)."""
    named = 'address = "10.0.1.1"\nname = "web{}three"'
    text = lines(1).replace('address = "10.0.1.1"', named.format(escaped))
    with pytest.raises(ConfigError) as raised:
        parse_config(text, modules=NO_MODULES)
    assert [e.split(":", 2)[:2] for e in raised.value.errors] == [
        ["virtual_server[0].real_server[0].name", " must be printable (no newline, tab or other control character)"]
    ]  # fmt: skip
    fine = lines(1).replace('address = "10.0.1.1"', named.format(" "))
    assert (
        parse_config(fine, modules=NO_MODULES).virtual_servers[0].real_servers[0].name
        == "web three"
    )
