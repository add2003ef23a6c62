"""directorctl's global option --socket in either position, for every command
(operator trial: `directorctl status --socket X` was refused)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_ctl import Scripted, daemon, directorctl

from director.control.messages import Response

COMMANDS = [
    (["status"], "status", {"json": False, "data": False}),
    (["status", "--json"], "status", {"json": True}),
    (
        ["drain", "tcp:10.0.0.1:80", "10.0.1.1:80"],
        "drain",
        {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1:80", "wait": False, "timeout": None},
    ),
    (
        ["drain", "tcp:10.0.0.1:80", "10.0.1.1:80", "--wait", "--timeout", "5"],
        "drain",
        {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1:80", "wait": True, "timeout": 5.0},
    ),
    (
        ["disable", "fwm:7:ipv6", "[2001:db8::2]:80"],
        "disable",
        {"service": "fwm:7:ipv6", "server": "[2001:db8::2]:80"},
    ),
    (
        ["enable", "tcp:10.0.0.1:80", "10.0.1.1"],
        "enable",
        {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"},
    ),
    (["reload"], "reload", {}),
    (["-Ln"], None, None),
    (["-A", "-t", "10.0.0.1:80", "-s", "rr"], None, None),
    (["-L", "-n", "--stats", "-t", "[2001:db8::1]:80"], None, None),
]


@pytest.fixture
def sock_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="ctl", dir="/tmp")
    yield directory
    shutil.rmtree(directory)


def placements(words: list[str], path: str) -> list[list[str]]:
    """--socket PATH and --socket=PATH first, right after the command word,
    and last."""
    out = []
    for option in (["--socket", path], [f"--socket={path}"]):
        out.append([*option, *words])
        out.append([*words[:1], *option, *words[1:]])
        out.append([*words, *option])
    return out


@pytest.mark.parametrize(("words", "command", "args"), COMMANDS, ids=lambda v: str(v))
async def test_socket_option_in_any_position_reaches_that_socket(
    sock_dir: str, words: list[str], command: str | None, args: dict[str, object] | None
) -> None:
    path = f"{sock_dir}/d.sock"
    handler = Scripted()
    env = {"DIRECTOR_SOCKET": "/nonexistent/d.sock"}
    async with daemon(path, handler):
        for argv in placements(words, path):
            result = await directorctl(*argv, env=env)
            assert result.returncode == 0, (argv, result.stderr)
    assert len(handler.requests) == 6
    for request in handler.requests:
        assert request.command == command
        if command is None:
            assert list(request.argv or ()) == words
        else:
            assert dict(request.args) == args


@pytest.mark.parametrize("where", ["first", "last"])
async def test_the_local_commands_take_the_socket_option_too(tmp_path: Path, where: str) -> None:
    config = tmp_path / "director.toml"
    config.write_text('[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n')
    keepalived = tmp_path / "keepalived.conf"
    keepalived.write_text("virtual_server 10.0.0.1 80 {\n  lb_algo rr\n  protocol TCP\n}\n")
    for words in (["check-config", str(config)], ["import-keepalived", str(keepalived)]):
        option = ["--socket", "/nonexistent/d.sock"]
        argv = [*option, *words] if where == "first" else [*words, *option]
        result = await directorctl(*argv)
        assert result.returncode == 0, (argv, result.stderr)
        assert result.stdout


async def test_the_last_socket_option_wins_and_an_empty_one_is_refused(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    handler = Scripted(Response(0, "ok\n"))
    async with daemon(path, handler):
        result = await directorctl("--socket", "/nonexistent/d.sock", "status", "--socket", path)
    assert (result.returncode, result.stdout) == (0, b"ok\n")
    for argv in (["status", "--socket"], ["-Ln", "--socket="]):
        result = await directorctl(*argv, env={"DIRECTOR_SOCKET": "/nonexistent/d.sock"})
        assert result.returncode == 2
        assert result.stderr.decode().startswith("directorctl: --socket needs a path\n")
