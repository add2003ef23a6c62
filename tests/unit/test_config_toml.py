"""How a config error shows a value (`literal`): as TOML writes it, so that
the operator finds it in the file as written; and that it reads back."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest
import tomli

from director.config import ConfigError, load_config, parse_config
from director.config.toml import literal, value
from director.ipvs.facts import NO_MODULES


@pytest.mark.parametrize(
    ("item", "text"),
    [
        ("rr", '"rr"'),
        ("it's", '"it\'s"'),
        ('a "b"', '"a \\"b\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("nul\x00", '"nul\\u0000"'),
        ("tab\t", '"tab\\t"'),
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (-1.5, "-1.5"),
        (math.inf, "inf"),
        (-math.inf, "-inf"),
        (math.nan, "nan"),
        ([1, "a", [True]], '[1, "a", [true]]'),
        ({"address": "10.9.0.1", "as": 65000}, '{ address = "10.9.0.1", as = 65000 }'),
        ({"a b": 1}, '{ "a b" = 1 }'),
        ({}, "{}"),
        (datetime.date(1979, 5, 27), "1979-05-27"),
        (datetime.datetime(1979, 5, 27, 7, 32), "1979-05-27T07:32:00"),
        (datetime.time(7, 32), "07:32:00"),
    ],
)
def test_a_value_is_shown_as_toml_writes_it_and_reads_back(item: object, text: str) -> None:
    assert literal(item) == text
    back = tomli.loads(f"v = {text}")["v"]
    if isinstance(item, float) and math.isnan(item):
        assert math.isnan(back)
    else:
        assert back == item


def test_what_toml_cannot_hold_is_shown_as_python_does() -> None:
    assert literal(None) == "None"
    assert literal(object) == repr(object)


def test_the_converter_still_refuses_what_it_must_not_write() -> None:
    with pytest.raises(ValueError, match="not a finite number"):
        value(math.inf)
    with pytest.raises(TypeError):
        value(datetime.date(1979, 5, 27))


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('log_level = "loud"', 'must be one of debug, info, warning, error: "loud"'),
        ("log_level = true", "expected a string, got a boolean: true"),
        ("log_level = ['info']", 'expected a string, got an array: ["info"]'),
        ("log_level = { a = 'x' }", 'expected a string, got a table: { a = "x" }'),
        ("log_level = inf", "expected a string, got a number: inf"),
        ("log_level = 1979-05-27", "expected a string, got a date: 1979-05-27"),
        ("log_level = 07:32:00", "expected a string, got a time: 07:32:00"),
        (
            "log_level = 1979-05-27T07:32:00Z",
            "expected a string, got a date-time: 1979-05-27T07:32:00+00:00",
        ),
    ],
)
def test_a_config_error_shows_the_value_in_toml(line: str, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[daemon]\n{line}\n", NO_MODULES)
    assert raised.value.errors == [f"daemon.log_level: {shown}"]


def test_a_file_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "director.toml"
    path.write_bytes(b'[daemon]\nlog_level = "\xffinfo"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path, NO_MODULES)
    assert raised.value.errors == ["not UTF-8 (as TOML must be): byte 0xff at line 2, column 14"]


def test_a_file_that_cannot_be_read_says_why_in_words(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "none.toml", NO_MODULES)
    assert raised.value.errors == ["cannot read: No such file or directory"]
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path, NO_MODULES)
    assert raised.value.errors == ["cannot read: Is a directory"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[daemon]\n[daemon]", "Cannot declare daemon twice (at line 2, column 8)"),
        ('["a.b".c]\n["a.b".c]', 'Cannot declare "a.b".c twice (at line 2, column 9)'),
        ("x = {a=1, a=2}", 'Duplicate inline table key "a" (at line 1, column 14)'),
        ('x = "\x00"', 'Illegal character "\\u0000" (at line 1, column 6)'),
        ("x = [1", "Unclosed array (at end of document)"),
    ],
)
def test_a_syntax_error_names_keys_and_characters_as_toml_writes_them(
    text: str, error: str
) -> None:
    """Operator trial (stop 25): tomli's messages hold Python's reprs
    ("Cannot declare ('daemon',) twice")."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert caught.value.errors == [f"TOML syntax error: {error}"]
