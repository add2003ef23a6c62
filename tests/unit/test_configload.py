"""configload: what the last parse remembers is parsed in the loop's own
thread, more than INLINE_PARSE characters of new text in a worker thread;
files are read in a worker thread either way."""

from __future__ import annotations

from pathlib import Path

import pytest

from director import configload
from director.config import ConfigError

TEXT = """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:PORT"
check = { type = "tcp" }
[[virtual_server.real_server]]
address = "10.0.1.1"
"""


async def test_new_text_past_the_bound_is_parsed_in_a_worker_then_inline(
    parse_threads: list[bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = TEXT.replace("PORT", "81") + TEXT.replace("PORT", "82")
    monkeypatch.setattr(configload, "INLINE_PARSE", len(text) * 3 // 4)
    path = tmp_path / "director.toml"
    path.write_text(text)
    first, _ = await configload.load(path)
    second, cpu = await configload.parse(text, "<text>")
    assert parse_threads == [False, True]
    assert second.virtual_servers == first.virtual_servers and len(first.virtual_servers) == 2
    assert cpu >= 0.0
    # One service changed: half the text, within the bound; all of it is not.
    changed = text.replace('"10.0.1.1"', '"10.0.1.2"', 1)
    third, _ = await configload.parse(changed, "<text>")
    assert parse_threads == [False, True, True]
    assert (
        third.virtual_servers[0].real_servers[0].address
        != first.virtual_servers[0].real_servers[0].address
    )


async def test_errors_are_raised_wherever_it_parses(
    parse_threads: list[bool], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as raised:
        await configload.load(tmp_path / "nope.toml")
    assert raised.value.errors[0].startswith("cannot read")
    with pytest.raises(ConfigError):
        await configload.parse(TEXT.replace("PORT", "x"), "<text>")
    assert parse_threads == [True]
