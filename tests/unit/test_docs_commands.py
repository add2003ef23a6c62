"""The command lists the docs are checked against, read from the code itself.

- directorctl's own commands: the words director/ctl.py compares the first
  word of its command line with (`command == "status"`, `command in
  ("disable", "enable")`, `words[:1] == ["check-config"]`); anything else is
  an ipvsadm command line. Read from ctl.py's syntax tree, so that a command
  added there is one the docs (directorctl(8), the completion) must name.
- The control socket's commands: the keys of the `handlers` table in
  director.control.handler.Controller._command.

The tests here check that these readings are what the CLI and the socket
really do, so the other docs tests (test_docs_man.py, test_docs_completion.py,
test_docs_protocol.py) can rely on them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from director import ctl
from director.control import handler

ROOT = Path(__file__).resolve().parents[2]


def _strings(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for item in node.elts for s in _strings(item)]
    return []


def _is_first_word(node: ast.expr) -> bool:
    """`command` (ctl._requests' first word) or `words[:1]` (ctl.main's)."""
    if isinstance(node, ast.Name):
        return node.id == "command"
    return (
        isinstance(node, ast.Subscript)
        and isinstance(node.value, ast.Name)
        and node.value.id == "words"
        and isinstance(node.slice, ast.Slice)
    )


def directorctl_commands() -> list[str]:
    """directorctl's own commands, in the order ctl.py tests for them."""
    tree = ast.parse(Path(ctl.__file__).read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and _is_first_word(node.left):
            for comparator in node.comparators:
                found += [s for s in _strings(comparator) if s not in found]
    return found


def control_commands() -> list[str]:
    """The keys of Controller._command's `handlers` table."""
    tree = ast.parse(Path(handler.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "_command":
            for inner in ast.walk(node):
                if (
                    isinstance(inner, ast.AnnAssign | ast.Assign)
                    and isinstance(inner.value, ast.Dict)
                    and "handlers" in ast.unparse(inner)
                ):
                    return [k for key in inner.value.keys if key for k in _strings(key)]
    raise AssertionError("no handlers table in Controller._command")


def test_directorctl_commands_are_read_from_ctl() -> None:
    commands = directorctl_commands()
    assert set(commands) >= {"status", "drain", "disable", "enable", "reload", "check-config"}
    assert len(commands) == len(set(commands))


@pytest.mark.parametrize("command", sorted(set(directorctl_commands()) - {"import-keepalived"}))
def test_each_command_is_directorctls_own_not_an_ipvsadm_line(command: str) -> None:
    """Its words never travel as an ipvsadm argv: it is a director request,
    a usage error, or handled without the socket."""
    if command == "check-config":
        assert ctl.main(["check-config"]) == 2  # needs FILE; never sent
        return
    try:
        requests = ctl._requests([command, "tcp:10.0.0.1:80", "10.0.1.1:80"])
    except ctl.UsageError:
        requests = ctl._requests([command])
    assert [r.get("command") for r in requests] == [command]
    assert all("argv" not in r for r in requests)


def test_import_keepalived_is_dispatched_before_the_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = tmp_path / "keepalived.conf"
    conf.write_text("virtual_server 10.0.0.1 80 {\n  protocol TCP\n}\n")
    assert ctl.main(["--socket", str(tmp_path / "none.sock"), "import-keepalived", str(conf)]) in (
        0,
        1,
    )
    assert "cannot connect" not in capsys.readouterr().err


def test_other_words_are_ipvsadm_command_lines() -> None:
    assert ctl._requests(["-Ln"]) == [{"v": 1, "argv": ["-Ln"]}]
    assert ctl._requests(["foo"]) == [{"v": 1, "argv": ["foo"]}]
    with pytest.raises(ctl.UsageError, match="did you mean 'status'"):
        ctl._requests(["statuses"])  # a near miss of a command is a typo of it


def test_control_commands_are_read_from_the_handler() -> None:
    commands = control_commands()
    assert set(commands) >= {"status", "drain", "disable", "enable", "reload", "check-config"}
    assert set(commands) >= handler.READ_ONLY_COMMANDS
