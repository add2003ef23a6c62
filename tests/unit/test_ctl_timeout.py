"""directorctl never waits for ever on a daemon that stopped answering
(--answer-timeout), and a daemon at work tells it so with spaces before its
answer (the request's "keepalive"), so that a long job is not cut off."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import trio
import trio.testing
from test_control_server import running, sock_dir  # noqa: F401 (a fixture)
from test_ctl import directorctl

from director import ctl
from director.control.messages import Peer, Request, Response
from director.control.server import KEEPALIVE_MAX, KEEPALIVE_MIN, keepalive_interval


async def raw_answer(path: str, line: bytes) -> bytes:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(line)
        received = b""
        while not received.endswith(b"\n"):
            chunk = await stream.receive_some()
            assert chunk, received
            received += chunk
    return received


class Slow:
    """Answers after 10 s, without data (a response with data is encoded in
    a worker thread, while which the autojump clock would run on)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []

    async def handle(self, request: Request, peer: Peer) -> Response:
        self.requests.append(request)
        await trio.sleep(10.0)
        return Response(0, "done\n")


async def test_a_working_daemon_sends_a_space_every_keepalive_seconds(
    sock_dir: str,  # noqa: F811
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = Slow()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        line = b'{"v":1,"argv":["-R"],"args":{"stdin":"","keepalive":1}}\n'
        received = await raw_answer(path, line)
    spaces = len(received) - len(received.lstrip(b" "))
    assert 9 <= spaces <= 10  # at 1, 2, ... 9 s (and 10 s, as the answer comes)
    assert json.loads(received)["stdout"] == "done\n"
    # "keepalive" is the server's: the handler sees the request without it
    assert handler.requests == [Request(argv=("-R",), args={"stdin": ""})]


async def test_no_space_unless_the_request_asks(
    sock_dir: str,  # noqa: F811
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(f"{sock_dir}/d.sock", Slow()) as path:
        received = await raw_answer(path, b'{"v":1,"argv":["-Ln"]}\n')
    assert received.startswith(b"{")


@pytest.mark.parametrize(
    ("value", "interval"),
    [(1, 1.0), (2.5, 2.5), (0.001, KEEPALIVE_MIN), (1e9, KEEPALIVE_MAX), (0, None), (-1, None)],
)
def test_keepalive_interval_is_clamped(value: object, interval: float | None) -> None:
    assert keepalive_interval(Request(argv=("-Ln",), args={"keepalive": value})) == interval


@pytest.mark.parametrize("value", [True, "1", None, [1]])
def test_keepalive_that_is_not_a_number_is_ignored(value: object) -> None:
    assert keepalive_interval(Request(command="status", args={"keepalive": value})) is None


class FakeSocket:
    """What _receive reads: chunks, or an exception to raise."""

    def __init__(self, *chunks: bytes | BaseException) -> None:
        self.chunks = list(chunks)

    def recv(self, size: int) -> bytes:
        chunk = self.chunks.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


def test_spaces_before_the_answer_are_read_as_json_whitespace() -> None:
    sock: Any = FakeSocket(b" ", b"  ", b' {"v":1,"status":0,"stdout":"x\\n","stderr":""}\n')
    assert ctl._receive(sock, "/d.sock", 5.0) == {
        "v": 1,
        "status": 0,
        "stdout": "x\n",
        "stderr": "",
    }


def test_silence_after_spaces_is_a_timeout_not_a_hang() -> None:
    sock: Any = FakeSocket(b" ", b" ", TimeoutError())
    with pytest.raises(ctl.ConnectError, match=r"sent nothing on /d.sock for 5 s"):
        ctl._receive(sock, "/d.sock", 5.0)


@pytest.mark.parametrize(("timeout", "interval"), [(60.0, 5.0), (10.0, 1.0), (0.5, 0.1), (0, None)])
def test_the_keepalive_asked_is_a_tenth_of_the_timeout(
    timeout: float, interval: float | None
) -> None:
    assert ctl.keepalive(timeout) == interval


def test_answer_timeout_anywhere_on_the_line() -> None:
    assert ctl._global_options(["--answer-timeout", "7", "-Ln", "--socket=/x"]) == (
        "/x",
        7.0,
        ["-Ln"],
    )
    assert ctl._global_options(["status", "--answer-timeout=0"])[1:] == (0.0, ["status"])
    assert ctl._global_options(["-Ln"])[1] == ctl.ANSWER_TIMEOUT


@pytest.mark.parametrize("value", ["-1", "soon", "inf", "nan"])
async def test_a_bad_answer_timeout_is_a_usage_error(value: str) -> None:
    result = await directorctl("--answer-timeout", value, "-Ln")
    assert result.returncode == 2
    assert b"--answer-timeout needs a number of seconds" in result.stderr


async def test_directorctl_gives_up_on_a_daemon_that_never_answers(
    sock_dir: str,  # noqa: F811
) -> None:
    """A listener that takes the request and says nothing (a stuck loop):
    directorctl exits 1 with what it knows, it does not wait for ever."""
    path = f"{sock_dir}/mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    with listener:
        async with trio.open_nursery() as nursery:
            requests: list[bytes] = []

            async def take() -> None:
                conn, _ = await trio.to_thread.run_sync(listener.accept)
                with conn:
                    requests.append(await trio.to_thread.run_sync(conn.recv, 65536))
                    await trio.sleep_forever()

            nursery.start_soon(take)
            result = await directorctl("--socket", path, "--answer-timeout", "0.2", "-Ln")
            nursery.cancel_scope.cancel()
    assert result.returncode == 1
    assert b"directord sent nothing on " in result.stderr
    assert b"for 0.2 s" in result.stderr
    (request,) = requests
    assert json.loads(request) == {"v": 1, "argv": ["-Ln"], "args": {"keepalive": 0.1}}
