"""The control socket server over real Unix sockets in a private directory."""

import errno
import grp
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from director.config.model import ControlSettings
from director.control import server
from director.control.messages import Handler, Peer, Request, Response
from director.control.protocol import RequestDecoder
from director.control.server import (
    ACCEPT_PAUSE,
    LOG_INTERVAL,
    ControlSocketError,
    Limits,
    accept_loop,
    serve,
)


class Recorder:
    """A handler that answers with what it was asked, and can be told to fail or wait."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[Request, Peer]] = []
        self.delay = delay
        self.running = 0
        self.most_running = 0

    async def handle(self, request: Request, peer: Peer) -> Response:
        self.calls.append((request, peer))
        if request.command == "explode":
            raise RuntimeError("boom")
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await trio.sleep(self.delay)
        finally:
            self.running -= 1
        said = " ".join(request.argv) if request.argv is not None else request.command
        # Data only for a request with args: a response with data is
        # encoded in a worker thread, and while a thread works the autojump
        # clock may jump past another connection's deadline.
        data = {"args": dict(request.args)} if request.args else None
        return Response(0, f"you said {said}\n", "", data)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # pytest's tmp_path can be longer than a socket path may be
    directory = tempfile.mkdtemp(prefix="ctl", dir="/tmp")
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory)


@asynccontextmanager
async def running(
    path: str, handler: Any, limits: Limits | None = None, **settings: Any
) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=path, **settings),
                handler,
                limits=limits or Limits(),
                task_status=task_status,
            )
        )
        yield path
        nursery.cancel_scope.cancel()


async def exchange(stream: trio.SocketStream, data: bytes) -> dict[str, Any]:
    await stream.send_all(data)
    return await read_response(stream)


async def read_response(stream: trio.SocketStream) -> dict[str, Any]:
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = await stream.receive_some()
        assert chunk, f"connection closed after {buffer!r}"
        buffer += chunk
    assert buffer.count(b"\n") == 1
    response: dict[str, Any] = json.loads(buffer)
    return response


async def assert_closed(stream: trio.SocketStream, *, unread: bool = False) -> None:
    """The server closed the connection: end of stream, or a reset when it
    closed with part of what the client sent still `unread`."""
    try:
        assert await stream.receive_some() == b""
    except trio.BrokenResourceError as e:
        assert unread and isinstance(e.__cause__, ConnectionResetError), e


async def test_answers_requests_in_order_with_the_peers_credentials(sock_dir: str) -> None:
    handler = Recorder()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            first = await exchange(stream, b'{"v":1,"argv":["-L","-n"]}\n')
            second = await exchange(stream, b'{"v":1,"command":"status","args":{"json":true}}\n')
    assert first == {
        "v": 1,
        "status": 0,
        "stdout": "you said -L -n\n",
        "stderr": "",
    }
    assert second["stdout"] == "you said status\n"
    assert second["data"] == {"args": {"json": True}}
    assert [request for request, _ in handler.calls] == [
        Request(argv=("-L", "-n")),
        Request(command="status", args={"json": True}),
    ]
    peer = handler.calls[0][1]
    assert peer == Peer(
        uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), may_change=os.getuid() == 0
    )


async def test_socket_file_mode_group_and_removal(sock_dir: str) -> None:
    path = f"{sock_dir}/sub/dir/d.sock"
    async with running(path, Recorder(), mode=0o640, group="daemon"):
        info = os.lstat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o640
        assert info.st_gid == grp.getgrnam("daemon").gr_gid
        assert os.listdir(f"{sock_dir}/sub/dir") == ["d.sock"]
    assert not await trio.Path(path).exists()


async def test_replaces_a_stale_socket_file(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    async with running(path, Recorder()):
        stream = await trio.open_unix_socket(path)
        async with stream:
            assert (await exchange(stream, b'{"v":1,"argv":["-S"]}\n'))["status"] == 0


async def test_refuses_to_take_over_a_live_socket(sock_dir: str) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder()) as path:
        with pytest.raises(ControlSocketError, match=r"another process is listening on .*/d\.sock"):
            await serve(ControlSettings(socket=path), Recorder())
        stream = await trio.open_unix_socket(path)
        async with stream:
            assert (await exchange(stream, b'{"v":1,"argv":[]}\n'))["status"] == 0


async def test_refuses_to_replace_a_file_that_is_not_a_socket(sock_dir: str) -> None:
    path = f"{sock_dir}/d.sock"
    await trio.Path(path).write_text("keep me")
    with pytest.raises(ControlSocketError, match="exists and is not a socket"):
        await serve(ControlSettings(socket=path), Recorder())
    assert await trio.Path(path).read_text() == "keep me"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"group": "no-such-group-here"},
            r'\[control\] group = "no-such-group-here": no such group',
        ),
        (
            {"admin_group": "nor-this-one"},
            r'\[control\] admin_group = "nor-this-one": no such group',
        ),
    ],
)
async def test_unknown_groups_are_named(
    sock_dir: str, settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ControlSocketError, match=message):
        await serve(ControlSettings(socket=f"{sock_dir}/d.sock", **settings), Recorder())


async def test_too_long_socket_path_is_named() -> None:
    path = "/tmp/" + "x" * 120
    with pytest.raises(ControlSocketError, match="longer than 107 bytes"):
        await serve(ControlSettings(socket=path), Recorder())


async def test_malformed_request_gets_an_error_and_the_connection_goes_on(sock_dir: str) -> None:
    handler = Recorder()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            error = await exchange(stream, b'{"v":1, argv: [}\n')
            wrong = await exchange(stream, b'{"v":1,"argv":"-Ln"}\n')
            good = await exchange(stream, b'{"v":1,"argv":["-Ln"]}\n')
    assert error["status"] == 2
    assert error["error"] == "not-json"
    assert error["stderr"].startswith("directord: request is not JSON: ")
    assert wrong["error"] == "bad-field"
    assert wrong["stderr"] == 'directord: "argv" must be a list of strings, not a string\n'
    assert good["stdout"] == "you said -Ln\n"
    assert len(handler.calls) == 1


async def test_oversized_request_is_refused_and_closed(sock_dir: str) -> None:
    handler = Recorder()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            payload = b'{"v":1,"argv":["' + b"a" * 1_100_000
            async with trio.open_nursery() as nursery:
                # the server stops reading once it has answered, so sending may break
                nursery.start_soon(send_ignoring_breakage, stream, payload)
                error = await read_response(stream)
            assert error["error"] == "too-long"
            assert (
                error["stderr"]
                == "directord: request is longer than 1048576 bytes without a newline\n"
            )
            await assert_closed(stream, unread=True)
        assert handler.calls == []
        await served(path)


async def send_ignoring_breakage(stream: trio.SocketStream, data: bytes) -> None:
    with suppress(trio.BrokenResourceError):
        await stream.send_all(data)


async def served(path: str) -> None:
    stream = await trio.open_unix_socket(path)
    async with stream:
        assert (await exchange(stream, b'{"v":1,"argv":["-v"]}\n'))["stdout"] == "you said -v\n"


async def test_slow_request_times_out_while_others_are_served(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    limits = Limits(request_timeout=10)
    async with running(f"{sock_dir}/d.sock", Recorder(), limits) as path:
        slow = await trio.open_unix_socket(path)
        async with slow:
            await slow.send_all(b'{"v":1,"ar')
            await trio.sleep(9)
            await served(path)
            await slow.send_all(b'gv":')
            started = trio.current_time()
            error = await read_response(slow)
            assert trio.current_time() - started == pytest.approx(1)
            assert error["status"] == 1
            assert error["error"] == "timeout"
            assert error["stderr"] == (
                "directord: request incomplete after 10 s (14 bytes without a newline)\n"
            )
            await assert_closed(slow)


async def test_idle_connection_is_closed_after_the_timeout(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder(), Limits(request_timeout=5)) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            await exchange(stream, b'{"v":1,"argv":["-Ln"]}\n')
            started = trio.current_time()
            error = await read_response(stream)
            assert trio.current_time() - started == pytest.approx(5)
            assert error["stderr"] == "directord: no request within 5 s\n"
            await assert_closed(stream)


async def test_half_closed_connection_is_answered_then_closed(sock_dir: str) -> None:
    handler = Recorder()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            await stream.send_all(b'{"v":1,"argv":["-Sn"]}\n{"v":1,"command":"reload"}')
            await stream.send_eof()
            first = await read_response_line(stream)
            second = await read_response_line(stream)
            await assert_closed(stream)
    assert first["stdout"] == "you said -Sn\n"
    assert second["stdout"] == "you said reload\n"


async def read_response_line(stream: trio.SocketStream) -> dict[str, Any]:
    line = b""
    while not line.endswith(b"\n"):
        byte = await stream.receive_some(1)
        assert byte, f"connection closed after {line!r}"
        line += byte
    response: dict[str, Any] = json.loads(line)
    return response


async def test_handler_failure_is_answered_and_the_server_goes_on(sock_dir: str) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder()) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            failure = await exchange(stream, b'{"v":1,"command":"explode"}\n')
            after = await exchange(stream, b'{"v":1,"argv":["-L"]}\n')
        await served(path)
    assert failure == {
        "v": 1,
        "status": 1,
        "stdout": "",
        "stderr": "directord: internal error: RuntimeError: boom\n",
    }
    assert after["stdout"] == "you said -L\n"


async def test_client_vanishing_mid_request_does_not_disturb_the_server(sock_dir: str) -> None:
    handler = Recorder(delay=1)
    async with running(f"{sock_dir}/d.sock", handler) as path:
        for _ in range(3):
            stream = await trio.open_unix_socket(path)
            await stream.send_all(b'{"v":1,"argv":["-Ln"]}\n')
            await stream.aclose()
        await served(path)


async def test_connections_beyond_the_limit_are_told_to_come_back(sock_dir: str) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder(), Limits(max_connections=2)) as path:
        first = await trio.open_unix_socket(path)
        second = await trio.open_unix_socket(path)
        await exchange(first, b'{"v":1,"argv":[]}\n')
        await exchange(second, b'{"v":1,"argv":[]}\n')
        third = await trio.open_unix_socket(path)
        async with third:
            busy = await read_response(third)
            await assert_closed(third)
        assert busy["error"] == "busy"
        assert busy["stderr"] == "directord: too many control connections (2), try again\n"
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await served(path)
        await second.aclose()


async def test_busy_refusals_and_timeouts_are_logged_once_an_interval(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Trial (stop 31): 300 idle connections logged 215 `control_timeout`
    lines; a client that connects in a loop past the limit logged a
    `control_busy` for each. One line an interval, with the count left out."""
    limits = Limits(max_connections=1, request_timeout=3 * LOG_INTERVAL)
    with structlog.testing.capture_logs() as logs:
        async with running(f"{sock_dir}/d.sock", Recorder(), limits) as path:
            held = await trio.open_unix_socket(path)
            for _ in range(5):
                async with await trio.open_unix_socket(path) as refused:
                    assert (await read_response(refused))["error"] == "busy"
            await trio.sleep(LOG_INTERVAL)
            async with await trio.open_unix_socket(path) as refused:
                assert (await read_response(refused))["error"] == "busy"
            await held.aclose()
        limits = Limits(request_timeout=3 * LOG_INTERVAL)
        async with running(f"{sock_dir}/e.sock", Recorder(), limits) as path:
            idle = [await trio.open_unix_socket(path) for _ in range(4)]
            for stream in idle:  # all four time out at once
                assert (await read_response(stream))["error"] == "timeout"
                await stream.aclose()
            async with await trio.open_unix_socket(path) as late:  # 3 intervals later
                assert (await read_response(late))["error"] == "timeout"
    busy = [e["suppressed"] for e in logs if e["event"] == "control_busy"]
    assert busy == [0, 4]
    timeouts = [e["suppressed"] for e in logs if e["event"] == "control_timeout"]
    assert timeouts == [0, 3]


async def test_fifty_concurrent_clients_are_all_served(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    handler = Recorder(delay=1)
    answers: dict[int, dict[str, Any]] = {}

    async def client(number: int) -> None:
        stream = await trio.open_unix_socket(path)
        async with stream:
            request = {"v": 1, "argv": ["-L", str(number)]}
            answers[number] = await exchange(stream, json.dumps(request).encode() + b"\n")

    async with running(f"{sock_dir}/d.sock", handler) as path:
        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            for number in range(50):
                nursery.start_soon(client, number)
        assert trio.current_time() - started == pytest.approx(1)
    assert {n: a["stdout"] for n, a in answers.items()} == {
        n: f"you said -L {n}\n" for n in range(50)
    }
    assert handler.most_running == 50


CHILD = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__)
    sys.exit(0)
s.sendall(b'{"v":1,"argv":["-Ln"]}\\n')
print(s.makefile("rb").readline().decode(), end="")
"""


@pytest.mark.parametrize(
    ("extra_groups", "may_change"),
    [(["daemon", "bin"], True), (["daemon"], False), (["bin"], None)],
)
async def test_other_users_connect_by_group_and_change_by_admin_group(
    sock_dir: str, extra_groups: list[str], may_change: bool | None
) -> None:
    handler = Recorder()
    async with running(f"{sock_dir}/d.sock", handler, group="daemon", admin_group="bin") as path:
        result = await trio.run_process(
            ["/usr/bin/python3", "-I", "-S", "-c", CHILD, path],
            user=65534,
            group=65534,
            extra_groups=extra_groups,
            capture_stdout=True,
        )
    output = result.stdout.decode()
    if may_change is None:
        assert output == "PermissionError\n"
        assert handler.calls == []
        return
    assert json.loads(output)["stdout"] == "you said -Ln\n"
    [(_, peer)] = handler.calls
    assert (peer.uid, peer.gid, peer.may_change) == (65534, 65534, may_change)
    assert peer.pid != os.getpid()


# -- the server survives its own limits and its own bugs ----------------------


class FlakyListener(trio.abc.Listener[trio.SocketStream]):
    """A real listener whose next accept() calls raise `errors` first, in order."""

    def __init__(self, inner: trio.SocketListener, errors: list[OSError]) -> None:
        self.inner = inner
        self.errors = list(errors)
        self.calls = 0

    async def accept(self) -> trio.SocketStream:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.accept()

    async def aclose(self) -> None:
        await self.inner.aclose()


@asynccontextmanager
async def flaky(sock_dir: str, errors: list[OSError]) -> AsyncIterator[tuple[str, FlakyListener]]:
    path = f"{sock_dir}/flaky.sock"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(16)
    listener = FlakyListener(trio.SocketListener(sock), errors)
    async with listener, trio.open_nursery() as nursery:
        nursery.start_soon(
            accept_loop, listener, Recorder(), Limits(), None, structlog.get_logger("control")
        )
        yield path, listener
        nursery.cancel_scope.cancel()


def os_error(number: int) -> OSError:
    return OSError(number, os.strerror(number))


@pytest.mark.parametrize("name", ["EMFILE", "ENFILE", "ENOMEM", "ENOBUFS"])
async def test_accept_out_of_resources_is_logged_paused_and_retried(
    sock_dir: str, autojump_clock: trio.testing.MockClock, name: str
) -> None:
    number = getattr(errno, name)
    with structlog.testing.capture_logs() as logs:
        started = trio.current_time()
        async with flaky(sock_dir, [os_error(number)] * 3) as (path, listener):
            await served(path)
            waited = trio.current_time() - started
    assert listener.calls >= 4
    assert waited == pytest.approx(3 * ACCEPT_PAUSE)
    failures = [e for e in logs if e["event"] == "control_accept_failed"]
    assert failures == [
        {
            "event": "control_accept_failed",
            "log_level": "warning",
            "error": name,
            "message": os.strerror(number),
            "retry_after": ACCEPT_PAUSE,
            "suppressed": 0,
            "hint": "the daemon is short of file descriptors or memory: clients wait in the"
            " socket's queue; raise LimitNOFILE",
        }
    ]


@pytest.mark.parametrize("name", ["ECONNABORTED", "EPROTO", "EPERM", "ECONNRESET", "ETIMEDOUT"])
async def test_accept_errors_of_one_connection_are_retried_at_once(
    sock_dir: str, autojump_clock: trio.testing.MockClock, name: str
) -> None:
    with structlog.testing.capture_logs() as logs:
        started = trio.current_time()
        async with flaky(sock_dir, [os_error(getattr(errno, name))] * 5) as (path, listener):
            await served(path)
            assert trio.current_time() == started
    assert listener.calls >= 6
    assert [e for e in logs if e["event"] == "control_accept_failed"] == []


async def test_a_broken_listening_socket_is_raised(sock_dir: str) -> None:
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, check=lambda e: e.errno == errno.EBADF), flatten_subgroups=True
    ):
        async with flaky(sock_dir, [os_error(errno.EBADF)]):
            await trio.sleep_forever()


async def test_a_descriptor_shortage_is_logged_once_per_interval(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with flaky(sock_dir, [os_error(errno.EMFILE)] * 150) as (path, _):
            await served(path)
    failures = [e for e in logs if e["event"] == "control_accept_failed"]
    # 150 failures 0.1 s apart: 15 s, one line at the first and one 10 s later
    assert len(failures) == 2
    assert failures[0]["suppressed"] == 0
    assert failures[1]["suppressed"] in (99, 100)


class Unserializable(Recorder):
    async def handle(self, request: Request, peer: Peer) -> Response:
        return Response(0, "fine\n", "", {"object": object()})


def failing_peer(sock: Any, admin_gid: int | None) -> Peer:
    raise RuntimeError("peer bug")


class FailingDecoder(RequestDecoder):
    def feed(self, data: bytes) -> None:
        raise ValueError("decoder bug")


async def failing_send(stream: trio.SocketStream, data: bytes) -> bool:
    raise RuntimeError("send bug")


@pytest.mark.parametrize(
    ("attribute", "replacement"),
    [("peer_of", failing_peer), ("RequestDecoder", FailingDecoder), ("_send", failing_send)],
)
async def test_a_bug_in_one_connection_ends_only_that_connection(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch, attribute: str, replacement: object
) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder()) as path:
        with structlog.testing.capture_logs() as logs:
            monkeypatch.setattr(server, attribute, replacement)
            for _ in range(3):
                stream = await trio.open_unix_socket(path)
                async with stream:
                    await send_ignoring_breakage(stream, b'{"v":1,"argv":["-Ln"]}\n')
                    await assert_closed(stream, unread=True)
            monkeypatch.undo()
        await served(path)
    failures = [e for e in logs if e["event"] == "control_connection_failed"]
    assert len(failures) == 1  # rate-limited: three failures within 10 s
    assert failures[0]["suppressed"] == 0
    assert "bug" in failures[0]["error"]


async def test_a_response_that_cannot_be_encoded_is_an_internal_error(sock_dir: str) -> None:
    async with running(f"{sock_dir}/d.sock", Unserializable()) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            failure = await exchange(stream, b'{"v":1,"argv":["-Ln"]}\n')
    assert failure["status"] == 1
    assert failure["stderr"].startswith("directord: internal error: TypeError: ")


async def test_a_busy_refusal_that_cannot_be_sent_still_closes(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(f"{sock_dir}/d.sock", Recorder(), Limits(max_connections=1)) as path:
        first = await trio.open_unix_socket(path)
        await exchange(first, b'{"v":1,"argv":[]}\n')
        monkeypatch.setattr(server, "_send", failing_send)
        second = await trio.open_unix_socket(path)
        async with second:
            await assert_closed(second)
        monkeypatch.undo()
        await first.aclose()
        await trio.testing.wait_all_tasks_blocked()
        await served(path)


async def test_a_bound_socket_answers_only_once_the_daemon_accepts(
    sock_dir: str, autojump_clock: trio.testing.MockClock
) -> None:
    """directord binds its socket before its engine's first pass (a second
    instance must fail there, before it touches the table), and answers once
    the engine runs: a client that connects in between waits in the backlog."""
    path = f"{sock_dir}/gate.sock"
    handler = Recorder()
    accepting = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=path), handler, accepting=accepting, task_status=task_status
            )
        )
        with pytest.raises(ControlSocketError, match="another process is listening"):
            await serve(ControlSettings(socket=path), Recorder())
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b'{"v": 1, "argv": ["-Ln"]}\n')
        with trio.move_on_after(0.5):
            await stream.receive_some()
            raise AssertionError("answered before the daemon accepted")
        assert handler.calls == []
        accepting.set()
        response = await read_response(stream)
        assert response["stdout"] == "you said -Ln\n"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_listening_is_logged_before_the_start_returns(sock_dir: str) -> None:
    """Trial 35 (L4): a SIGTERM during the daemon's start logged `stopping`
    before `control_listening`, which the server task logged only once the
    daemon let it accept. It is logged once the socket is bound, before
    nursery.start returns: whatever the daemon logs next comes after it."""
    path = f"{sock_dir}/order.sock"
    accepting = trio.Event()
    async with trio.open_nursery() as nursery:
        with structlog.testing.capture_logs() as logs:
            await nursery.start(
                lambda task_status: serve(
                    ControlSettings(socket=path),
                    Recorder(),
                    accepting=accepting,
                    task_status=task_status,
                )
            )
            structlog.get_logger("directord").info("stopping")
        assert [entry["event"] for entry in logs] == ["control_listening", "stopping"]
        assert logs[0]["socket"] == path
        assert logs[0]["answering"] == "once the engine runs"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("keepalive", [False, True])
async def test_a_request_the_stop_cuts_off_is_told_so(sock_dir: str, keepalive: bool) -> None:
    """Trial 36 (L3): a `directorctl -Ln` queued during the start, then a
    SIGTERM: the listing was cancelled with the server and the client said
    'closed without answering', as of a crash. The client is told the
    daemon is stopping (status 1), with or without keepalive spaces."""
    waiting = trio.Event()

    class Listing:
        async def handle(self, request: Request, peer: Peer) -> Response:
            waiting.set()
            await trio.sleep_forever()  # a listing in a worker thread, say
            raise AssertionError("not reached")

    stream: trio.SocketStream | None = None
    async with trio.open_nursery() as nursery:
        path = await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=f"{sock_dir}/c.sock"), Listing(), task_status=task_status
            )
        )
        stream = await trio.open_unix_socket(path)
        args = ',"args":{"keepalive":0.1}' if keepalive else ""
        await stream.send_all(b'{"v":1,"argv":["-Ln"]' + args.encode() + b"}\n")
        await waiting.wait()
        if keepalive:
            await trio.sleep(0.25)  # (spaces went out)
        nursery.cancel_scope.cancel()
    assert stream is not None
    async with stream:
        assert await read_response(stream) == {
            "v": 1,
            "status": 1,
            "stdout": "",
            "stderr": f"{server.CUT_OFF}\n",
        }
        await assert_closed(stream)


async def test_connections_the_stop_finds_unread_are_told_so(sock_dir: str) -> None:
    """Trial 37 (M3): a client that connected during a stop was reset with
    no word (`Connection reset by peer`): one still in the backlog (the
    daemon not accepting yet), one accepted with half a request, and one
    that sent nothing are each answered CUT_OFF before the socket closes."""
    accepting = trio.Event()
    async with trio.open_nursery() as nursery:
        path = await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=f"{sock_dir}/b.sock"),
                Recorder(),
                accepting=accepting,
                task_status=task_status,
            )
        )
        queued = await trio.open_unix_socket(path)  # in the backlog: never accepted
        await queued.send_all(b'{"v":1,"argv":["-Ln"]}\n')
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    async with queued:
        assert (await read_response(queued))["stderr"] == f"{server.CUT_OFF}\n"

    async with trio.open_nursery() as nursery:
        path = await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=f"{sock_dir}/c.sock"), Recorder(), task_status=task_status
            )
        )
        half = await trio.open_unix_socket(path)
        await half.send_all(b'{"v":1,"argv":')
        silent = await trio.open_unix_socket(path)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    for stream in (half, silent):
        async with stream:
            response = await read_response(stream)
            assert (response["status"], response["stderr"]) == (1, f"{server.CUT_OFF}\n")


async def test_an_answer_made_as_the_daemon_stops_is_still_sent(sock_dir: str) -> None:
    """Operator trial: `directorctl drain` racing SIGTERM printed 'closed
    without answering' although the drain was made. The engine answered
    the request as the stop began, and the stop cancelled the server before
    the answer went out: an answer made is now sent (within STOP_SEND s)."""
    release, waiting = trio.Event(), trio.Event()

    class Held:
        async def handle(self, request: Request, peer: Peer) -> Response:
            waiting.set()
            await release.wait()
            return Response(0, "drained\n", "")

    stream: trio.SocketStream | None = None
    async with trio.open_nursery() as nursery:
        path = await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=f"{sock_dir}/d.sock"), Held(), task_status=task_status
            )
        )
        stream = await trio.open_unix_socket(path)
        await stream.send_all(b'{"v":1,"command":"drain"}\n')
        await waiting.wait()
        release.set()  # the answer is made in the handler's next step ...
        nursery.cancel_scope.cancel()  # ... which comes after the stop
    assert stream is not None
    async with stream:
        assert await read_response(stream) == {
            "v": 1,
            "status": 0,
            "stdout": "drained\n",
            "stderr": "",
        }
        await assert_closed(stream)


async def test_a_stop_while_a_keepalive_space_goes_out_still_answers(
    sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 38: during a stop, 4 of 81 `directorctl status` clients were
    closed on with no answer. The stop came while a keepalive space was
    going out, the CUT_OFF line then found the stream busy, and was dropped.
    Here the spaces are a blob the client does not read yet, sent shielded
    (the stop's cancel reaches the task that sends them after the one that
    answers), so that it is still going out when the answer would: the
    line follows it."""
    blob = b" " * (4 << 20)  # more than the socket pair's buffers take

    async def keep_alive(stream: trio.SocketStream, interval: float) -> None:
        with trio.CancelScope(shield=True):
            await stream.send_all(blob)
        await trio.sleep_forever()

    monkeypatch.setattr(server, "_keep_alive", keep_alive)
    waiting = trio.Event()

    class Listing:
        async def handle(self, request: Request, peer: Peer) -> Response:
            waiting.set()
            await trio.sleep_forever()
            raise AssertionError("not reached")

    request = b'{"v":1,"command":"status","args":{"keepalive":0.1}}\n'
    received = await read_through_a_stop(f"{sock_dir}/k.sock", Listing(), request, waiting)
    line = received.lstrip(b" ")
    assert len(received) - len(line) == len(blob)
    assert json.loads(line) == {"v": 1, "status": 1, "stdout": "", "stderr": f"{server.CUT_OFF}\n"}


async def read_through_a_stop(
    path: str, handler: Handler, request: bytes, asked: trio.Event | None = None
) -> bytes:
    """Serve `handler` on `path`, send `request`, stop the server once its
    tasks block (after `asked` is set, when given) with what it sends
    unread, then read all it sends until it closes (the stop waits for its
    answers to go out)."""
    received = bytearray()
    async with trio.open_nursery() as nursery:
        where = await nursery.start(
            lambda task_status: serve(
                ControlSettings(socket=path), handler, task_status=task_status
            )
        )
        stream = await trio.open_unix_socket(where)
        await stream.send_all(request)
        if asked is not None:
            await asked.wait()
        await trio.testing.wait_all_tasks_blocked()  # what it sends fills the buffers
        nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            while chunk := await stream.receive_some():
                received += chunk
    await stream.aclose()
    return bytes(received)


async def test_an_answer_going_out_as_the_stop_comes_goes_out_whole(sock_dir: str) -> None:
    """The other member of trial 38's kind: a long answer (a status of
    thousands of servers) to a client that reads slowly, the stop coming
    mid-send. It was cut where the stop found it, a line the client could
    not read; it goes out whole, within STOP_SEND s."""
    big = "x" * (4 << 20)

    class Large:
        async def handle(self, request: Request, peer: Peer) -> Response:
            return Response(0, big, "")

    received = await read_through_a_stop(f"{sock_dir}/l.sock", Large(), b'{"v":1,"argv":["-Ln"]}\n')
    assert json.loads(received) == {"v": 1, "status": 0, "stdout": big, "stderr": ""}
