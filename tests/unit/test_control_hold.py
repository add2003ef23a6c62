"""A -R's answer goes out before the collector comes back on (issue 8): the
server answers and sends each request inside the handler's `holding`
context (Controller.holding: for a request with input, the collector held),
so the collection of what the -R kept runs after the client has its answer."""

from __future__ import annotations

import gc
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from test_control_server import Recorder, read_response, running, sock_dir

from director.control.handler import Controller, _collector_held
from director.control.messages import Request

__all__ = ["sock_dir"]  # the fixture


class Holding(Recorder):
    """Records, as each hold ends, whether the client's socket already had
    the answer waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.client: socket.socket | None = None
        self.answered_before_release: list[bool] = []
        self.released = trio.Event()

    @contextmanager
    def holding(self, request: Request) -> Iterator[None]:
        yield
        assert self.client is not None
        try:
            waiting = self.client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            waiting = b""
        self.answered_before_release.append(bool(waiting))
        self.released.set()


async def test_the_answer_is_sent_before_the_hold_ends(sock_dir: str) -> None:
    handler = Holding()
    async with running(f"{sock_dir}/d.sock", handler) as path:
        stream = await trio.open_unix_socket(path)
        async with stream:
            handler.client = stream.socket._sock  # type: ignore[attr-defined]
            # The answer is read only once the hold has ended, so that the
            # hold's end finds it waiting if it was sent before.
            await stream.send_all(b'{"v":1,"argv":["-R"],"args":{"stdin":""}}\n')
            with trio.fail_after(30):
                await handler.released.wait()
            answer = await read_response(stream)
    assert answer["status"] == 0
    assert handler.answered_before_release == [True]


def test_a_restore_holds_the_collector_and_other_requests_do_not() -> None:
    controller = Controller.__new__(Controller)  # holding needs no daemon
    assert gc.isenabled()
    with controller.holding(Request(argv=("-R",), args={"stdin": "-C\n"})):
        assert not gc.isenabled()
        with _collector_held():  # the handler's own hold, nested
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with controller.holding(Request(argv=("-L", "-n"))):
        assert gc.isenabled()
    with controller.holding(Request(command="status")):
        assert gc.isenabled()
