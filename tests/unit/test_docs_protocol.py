"""docs/control-protocol.md against the control socket's code: a section
with an example for every command of the daemon's command table (read from
director/control/handler.py, test_docs_commands.py), every directorctl
command in its table, and every example request line one the daemon's
decoder accepts (and every response line one a client decodes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_docs_commands import control_commands, directorctl_commands

from director.control.messages import Request
from director.control.protocol import decode_request, decode_response

DOC = Path(__file__).resolve().parents[2] / "docs" / "control-protocol.md"


def sections() -> dict[str, str]:
    """'#### `name`' sections: name -> text up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    found = re.findall(r"^#### `([^`]+)`\n(.*?)(?=^#{1,4} )", text, re.MULTILINE | re.DOTALL)
    return dict(found)


def json_lines(text: str) -> list[str]:
    blocks = re.findall(r"```json\n(.*?)```", text, re.DOTALL)
    # ('{...}' marks the response schema's illustration, not an example)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    return [line for line in lines if "{...}" not in line]


def test_every_control_command_has_a_section_with_an_example() -> None:
    documented = sections()
    for command in control_commands():
        assert command in documented, f"{DOC.name}: no section for {command}"
        requests = [
            decode_request(line.encode())
            for line in json_lines(documented[command])
            if "status" not in json.loads(line)
        ]
        assert any(isinstance(r, Request) and r.command == command for r in requests), command


def test_no_section_for_a_command_the_daemon_lacks() -> None:
    extra = set(sections()) - set(control_commands()) - {"argv"}
    assert not extra, extra


def test_the_command_table_lists_every_control_command() -> None:
    text = DOC.read_text(encoding="utf-8")
    table = re.search(r"\| command\s+\| args \|\n(.*?)\n\n", text, re.DOTALL)
    assert table
    listed = re.findall(r"^\| `([^`]+)`", table[1], re.MULTILINE)
    assert sorted(listed) == sorted(control_commands())


def test_every_directorctl_command_has_a_row() -> None:
    text = DOC.read_text(encoding="utf-8")
    for command in directorctl_commands():
        assert f"| `directorctl {command}" in text, command


def test_every_example_line_decodes() -> None:
    lines = json_lines(DOC.read_text(encoding="utf-8"))
    assert len(lines) >= 16
    for line in lines:
        message = json.loads(line)
        if "status" in message:
            response = decode_response(line.encode())
            assert response.status == message["status"], line
        else:
            assert isinstance(decode_request(line.encode()), Request), line
