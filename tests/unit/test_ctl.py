"""directorctl against a real control server (with a recording handler) on a Unix socket."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from director import ctl
from director.config.model import ControlSettings
from director.control.messages import Peer, Request, Response
from director.control.protocol import decode_request
from director.control.server import serve
from director.ipvsadm.cli import parse
from director.ipvsadm.commands import Restore
from director.ipvsadm.errors import ParseError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Scripted:
    """Answers each request with the next scripted response, recording the requests."""

    def __init__(self, *responses: Response) -> None:
        self.responses = list(responses)
        self.requests: list[Request] = []

    async def handle(self, request: Request, peer: Peer) -> Response:
        self.requests.append(request)
        return self.responses.pop(0) if self.responses else Response(0)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="ctl", dir="/tmp")
    yield directory
    shutil.rmtree(directory)


@asynccontextmanager
async def daemon(path: str, handler: Scripted) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=path), handler, task_status=task_status
            )
        )
        yield
        nursery.cancel_scope.cancel()


async def directorctl(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "director.ctl", *args],
        stdin=stdin,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


async def test_ipvsadm_argv_goes_through_and_output_comes_back_verbatim(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    handler = Scripted(Response(255, "partial line without newline", "No such service\n"))
    async with daemon(path, handler):
        result = await directorctl("--socket", path, "-d", "-t", "10.0.0.1:80", "-r", "10.0.1.1")
    assert handler.requests == [Request(argv=("-d", "-t", "10.0.0.1:80", "-r", "10.0.1.1"))]
    assert result.stdout == b"partial line without newline"
    assert result.stderr == b"No such service\n"
    assert result.returncode == 255


async def test_a_word_like_no_command_of_directors_goes_to_the_daemon(sock_dir: str) -> None:
    """ipvsadm answers `ipvsadm foo` with its "Try `ipvsadm -h'": the daemon
    does the same (the golden outputs); only a near miss of one of
    director's own commands is refused here."""
    path = f"{sock_dir}/d.sock"
    handler = Scripted(
        Response(255, "", "Try `ipvsadm -h' or 'ipvsadm --help' for more information.\n")
    )
    async with daemon(path, handler):
        result = await directorctl("--socket", path, "foo")
    assert handler.requests == [Request(argv=("foo",))]
    assert result.returncode == 255


async def test_socket_from_the_environment(sock_dir: str) -> None:
    path = f"{sock_dir}/env.sock"
    handler = Scripted(Response(0, "IP Virtual Server version 1.2.1 (size=4096)\n"))
    async with daemon(path, handler):
        result = await directorctl("-Ln", env={"DIRECTOR_SOCKET": path})
        other = await directorctl(f"--socket={path}", "--version", env={"DIRECTOR_SOCKET": "/nope"})
    assert result.stdout == b"IP Virtual Server version 1.2.1 (size=4096)\n"
    assert result.returncode == 0
    assert other.returncode == 0
    assert [r.argv for r in handler.requests] == [("-Ln",), ("--version",)]


@pytest.mark.parametrize(
    ("args", "command", "expected"),
    [
        (["status"], "status", {"json": False, "data": False}),
        (["status", "--json"], "status", {"json": True}),
        (
            ["drain", "tcp:10.0.0.1:80", "10.0.1.1:80"],
            "drain",
            {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1:80", "wait": False, "timeout": None},
        ),
        (
            ["drain", "fwmark:7", "10.0.1.1", "--wait", "--timeout", "2.5"],
            "drain",
            {"service": "fwmark:7", "server": "10.0.1.1", "wait": True, "timeout": 2.5},
        ),
        (
            ["disable", "10.0.0.1:80", "10.0.1.1:80"],
            "disable",
            {"service": "10.0.0.1:80", "server": "10.0.1.1:80"},
        ),
        (
            ["enable", "10.0.0.1:80", "10.0.1.1:80"],
            "enable",
            {"service": "10.0.0.1:80", "server": "10.0.1.1:80"},
        ),
        (["reload"], "reload", {}),
    ],
)
async def test_director_commands(
    sock_dir: str, args: list[str], command: str, expected: dict[str, object]
) -> None:
    path = f"{sock_dir}/d.sock"
    handler = Scripted(Response(3, '{"x": 1}\n', "", {"x": 1}))
    async with daemon(path, handler):
        result = await directorctl("--socket", path, *args)
    [request] = handler.requests
    assert (request.argv, request.command, dict(request.args)) == (None, command, expected)
    assert result.stdout == b'{"x": 1}\n'
    assert result.returncode == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["drain", "10.0.0.1:80"], "drain: expected a virtual service and a real server"),
        (
            ["drain", "a", "b", "--timeout", "0", "--wait"],
            "--timeout needs a positive number of seconds, not '0'",
        ),
        (["drain", "a", "b", "--timeout", "5"], "--timeout only makes sense with --wait"),
        (["drain", "a", "b", "--now"], "drain: unknown option '--now'"),
        (["status", "--yaml"], "status: unexpected argument '--yaml'"),
        (["disable", "a"], "disable: expected a virtual service and a real server"),
        (["reload", "now"], "reload: unexpected argument 'now'"),
        (["--socket"], "--socket needs a path"),
        (["check-config"], "check-config: expected one configuration file"),
        (["stauts"], "unknown command 'stauts'; did you mean 'status'?"),
        (["dran", "a", "b"], "unknown command 'dran'; did you mean 'drain'?"),
        (["import-keepalive", "k.conf"], "did you mean 'import-keepalived'?"),
    ],
)
async def test_usage_errors_exit_2_without_contacting_the_daemon(
    args: list[str], message: str
) -> None:
    result = await directorctl(*args, env={"DIRECTOR_SOCKET": "/nonexistent/d.sock"})
    assert result.returncode == 2
    assert result.stdout == b""
    first, _, usage = result.stderr.decode().partition("\n")
    assert first.startswith("directorctl: ")
    assert message in first
    assert usage.startswith(
        "usage: directorctl [--socket PATH] [--answer-timeout SECONDS] IPVSADM-ARGS...\n"
    )


async def test_daemon_not_running(sock_dir: str) -> None:
    result = await directorctl("--socket", f"{sock_dir}/d.sock", "-Ln")
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode() == (
        f"directorctl: cannot connect to {sock_dir}/d.sock: No such file or directory"
        " (is directord running?)\n"
    )


async def test_restore_sends_stdin_in_request_sized_pieces(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    lines = "".join(
        f"-a -t 10.0.0.1:80 -r 10.{i // 65536}.{i // 256 % 256}.{i % 256}:80 -m -w 1\n"
        for i in range(20000)
    )
    assert len(lines) > 3 * ctl.RESTORE_CHUNK
    handler = Scripted(Response(0, "", "one\n"), Response(0, "", "two\n"))
    async with daemon(path, handler):
        result = await directorctl("--socket", path, "-R", stdin=lines.encode())
    assert len(handler.requests) >= 4
    assert all(r.argv == ("-R",) for r in handler.requests)
    assert "".join(str(r.args["stdin"]) for r in handler.requests) == lines
    assert all(str(r.args["stdin"]).endswith("\n") for r in handler.requests)
    assert result.stderr == b"one\ntwo\n"
    assert result.returncode == 0


async def test_restore_stops_when_the_daemon_says_so(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    lines = "-A -t 10.0.0.1:80\n" * 10_000
    handler = Scripted(Response(2, "", "fatal\n", {"restore_stopped": True}))
    async with daemon(path, handler):
        result = await directorctl("--socket", path, "--restore", stdin=lines.encode())
    assert len(handler.requests) == 1
    assert (result.returncode, result.stderr) == (2, b"fatal\n")


async def test_bad_restore_command_line_does_not_read_stdin(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    handler = Scripted(Response(2, "", "Illegal 'numeric' option with the 'restore' command\n"))
    async with daemon(path, handler):
        result = await directorctl("--socket", path, "-R", "-n", stdin=b"-C\n")
    assert handler.requests == [Request(argv=("-R", "-n"))]
    assert result.returncode == 2


async def test_check_config_runs_locally(sock_dir: str) -> None:
    good = f"{REPO}/conf/director.toml"
    result = await directorctl("check-config", good, env={"DIRECTOR_SOCKET": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().startswith(f"{good}: OK, ")
    bad = f"{sock_dir}/bad.toml"
    await trio.Path(bad).write_text(
        '[[virtual_server]]\naddress = "10.0.0.1:80"\nprotocol = "sctpx"\n'
    )
    result = await directorctl("check-config", bad)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.decode().startswith(f"{bad}: ")


async def test_check_config_help_is_help_not_a_file() -> None:
    """Operator trial: `check-config --help` read a file named --help."""
    for flag in ("--help", "-h"):
        result = await directorctl("check-config", flag)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().startswith("usage: directorctl check-config FILE\n")
        assert result.stderr == b""


async def directord_check(path: str) -> subprocess.CompletedProcess[bytes]:
    """`directord --config PATH --check`, run as a process."""
    return await trio.run_process(
        [sys.executable, "-m", "director.daemon", "--config", path, "--check"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
    )


async def test_check_config_says_what_directord_check_says() -> None:
    good = f"{REPO}/conf/director.toml"
    ctl = await directorctl("check-config", good)
    daemon = await directord_check(good)
    assert (ctl.returncode, daemon.returncode) == (0, 0), (ctl.stderr, daemon.stderr)
    assert ctl.stdout == daemon.stdout
    assert re.fullmatch(
        rf"{re.escape(good)}: OK, \d+ virtual services?, \d+ real servers?\n", ctl.stdout.decode()
    )


async def test_check_config_prints_errors_as_directord_check_does(sock_dir: str) -> None:
    """Operator trial: `directorctl check-config broken2.toml` printed
    `broken2.toml: 4 errors:` and the errors indented, without the file's
    name that `directord --check` (and docs/config.md) give each line."""
    bad = f"{sock_dir}/broken2.toml"
    await trio.Path(bad).write_text(
        '[daemon]\nlog_level = "loud"\n'
        '[[virtual_server]]\naddress = "10.0.0.1:80"\nprotocol = "sctpx"\n'
        '[[virtual_server.real_server]]\naddress = "10.0.1.1:80"\nweight = 70000\n'
        "[[virtual_server]]\nscheduler = 3\n"
    )
    ctl = await directorctl("check-config", bad)
    daemon = await directord_check(bad)
    assert (ctl.returncode, daemon.returncode) == (1, 1)
    assert ctl.stdout == daemon.stdout == b""
    lines = daemon.stderr.decode().splitlines()
    assert len(lines) > 3 and all(line.startswith(f"{bad}: ") for line in lines), lines
    assert ctl.stderr.decode() == f"{bad}: {len(lines)} errors:\n" + daemon.stderr.decode()


def test_importing_ctl_loads_nothing_heavy() -> None:
    """As a `python -I -S` launcher starts it (bench/ctl.py)."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
        "import director.ctl; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    run = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, check=True)
    out = run.stdout.decode().split()
    assert set(out) <= {"director", "director.ctl", "_json", "_socket"}, out


arguments = st.lists(
    st.sampled_from(
        [
            "-R",
            "--restore",
            "-Rn",
            "-nR",
            "-n",
            "--sort",
            "--nosort",
            "-t",
            "10.0.0.1:80",
            "--",
            "R",
            "-pR",
            "-p",
            "-6",
        ]
    ),
    max_size=4,
)


@given(arguments)
def test_reads_stdin_exactly_when_ipvsadm_would_restore(argv: list[str]) -> None:
    try:
        restores = isinstance(parse(argv), Restore)
    except ParseError:
        restores = False
    assert ctl.needs_stdin(argv) == restores


@given(st.text(alphabet="-atr10.:\n ", max_size=200_000))
def test_restore_chunks_cut_at_line_ends(text: str) -> None:
    chunks = ctl.restore_chunks(text)
    assert "".join(chunks) == text
    for chunk in chunks[:-1]:
        assert chunk.endswith("\n")
        assert len(chunk) <= ctl.RESTORE_CHUNK or "\n" not in chunk[:-1]


# What a request can carry: text without lone surrogates (no UTF-8 encoder
# can write them), and argv words without NUL (no command line holds one).
request_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
argv_words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | request_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(request_text, inner, max_size=3),
    max_leaves=10,
)


@given(st.lists(argv_words), st.dictionaries(request_text, json_values, max_size=3))
def test_encoded_requests_decode_to_the_same_request(argv: list[str], args: dict[str, Any]) -> None:
    line = ctl.encode({"v": 1, "argv": argv, "args": args})
    assert json.loads(line) == {"v": 1, "argv": argv, "args": args}
    request = decode_request(line.encode("ascii").rstrip(b"\n"))
    assert isinstance(request, Request)
    assert request.argv == tuple(argv)
    assert dict(request.args) == args


@pytest.mark.parametrize("flag", ["-h", "--help", "-hn"])
async def test_help_is_printed_without_a_daemon(flag: str) -> None:
    result = await directorctl(flag, env={"DIRECTOR_SOCKET": "/nonexistent/d.sock"})
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    text = result.stdout.decode()
    assert text.startswith("ipvsadm v1.31 ")
    assert "  directorctl -A|E virtual-service [-s scheduler]" in text
    assert text.endswith(ctl.USAGE)


@pytest.mark.parametrize("argv", [["-L", "-h"], ["-t", "host:80"], ["--hel"]])
def test_only_what_ipvsadm_answers_with_usage_counts_as_help(argv: list[str]) -> None:
    assert not ctl.asks_help(argv)


def test_a_plain_restore_does_not_import_the_parser() -> None:
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); import director.ctl as c; "
        "assert c.needs_stdin(['-R']) and c.needs_stdin(['--restore']); "
        "print('director.ipvsadm' in sys.modules)"
    )
    run = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, check=True)
    assert run.stdout == b"False\n"


def test_an_answer_sent_before_the_daemon_closed_is_read_though_the_send_failed() -> None:
    """Trial 37 (M3): a daemon that stops answers a client it had not read
    (CUT_OFF) and closes; the client's request then fails to go (EPIPE),
    and it said only 'lost the connection'. It reads the answer first."""
    client, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        daemon.sendall(b'{"v":1,"status":1,"stdout":"","stderr":"directord is stopping\\n"}\n')
        daemon.close()
        ctl._send(client, b'{"v":1,"argv":["-Ln"]}\n' * 1000, "/run/x.sock", 5.0)
        assert ctl._receive(client, "/run/x.sock")["stderr"] == "directord is stopping\n"


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (b"", "closed /run/x.sock without answering"),
        (b"   ", "closed /run/x.sock without answering"),  # keepalive spaces only
        (b'  {"v":1,"status":0,"std', "in the middle of its answer (22 bytes of it)"),
    ],
)
def test_a_close_before_the_answer_says_how_far_it_came(sent: bytes, said: str) -> None:
    """Trial 38: 'closed without answering' was said of a close after part
    of an answer too, which made a cut line look like no answer at all."""
    client, daemon = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with client:
        daemon.sendall(sent)
        daemon.close()
        with pytest.raises(ctl.ConnectError, match=re.escape(said)):
            ctl._receive(client, "/run/x.sock")
