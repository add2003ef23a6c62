"""The controller over a threaded kernel table, as in the daemon: a -R's
lines run in a worker thread, one hop for each run of changes, with the
listings between them answered in order. Real time, no autojump clock (a
worker thread and a virtual clock do not mix); nothing here waits on time."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
import trio

from director.config import parse_config
from director.control.handler import Controller
from director.control.messages import Peer, Request, Response
from director.engine import Director
from director.health.result import ProbeResult
from director.health.spec import Check
from director.ipvs.errors import KernelError
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress, Protocol, ServiceKey
from director.ipvs.ops import Operation
from director.kernel import KernelTable

ROOT = Peer(uid=0, gid=0, pid=4242, may_change=True)
CONFIG = """
[daemon]
reconcile_interval = 60.0
[control]
runtime_check = { type = "tcp", interval = 60.0, timeout = 1.0, rise = 1, fall = 1 }
"""


class Threads(MemoryBackend):
    """Records the thread of every apply and apply_each, and their sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []
        self.sizes: list[int] = []

    def apply(self, operations: Sequence[Operation]) -> None:
        self.threads.append(threading.get_ident())
        self.sizes.append(len(operations))
        super().apply(operations)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        self.threads.append(threading.get_ident())
        self.sizes.append(len(operations))
        return super().apply_each(operations)


async def never(check: Check, address: IPAddress, port: int) -> ProbeResult:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def restore(backend: MemoryBackend, text: str) -> Response:
    director = Director(
        parse_config(CONFIG), KernelTable(backend), probe=never, rng=random.Random(1)
    )
    controller = Controller(director, reads=KernelTable(backend))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        response = await controller.handle(Request(argv=("-R",), args={"stdin": text}), ROOT)
        nursery.cancel_scope.cancel()
    return response


async def test_restore_lines_run_in_one_worker_thread_off_the_event_loop() -> None:
    backend = Threads()
    text = "".join(
        f"-A -t 10.0.0.{i}:80 -s wrr\n-a -t 10.0.0.{i}:80 -r 10.0.1.{i}:80 -m -w 2\n"
        for i in range(1, 21)
    )
    text += "-A -t 10.0.0.1:80 -s wrr\n"
    response = await restore(backend, text)
    assert response == Response(255, "", "Service already exists\n")
    assert {e.service.key for e in backend.services()} == {
        ServiceKey.inet(Protocol.TCP, f"10.0.0.{i}", 80) for i in range(1, 21)
    }
    # The -A lines' kernel probes in one send, then the commit's pass.
    assert backend.sizes[0] == 20
    assert backend.threads[0] != threading.get_ident()


async def test_a_listing_inside_a_restore_answers_between_the_lines_around_it() -> None:
    text = (
        "-A -t 10.0.0.1:80 -s rr\n-A -u 10.0.0.9:53 -s rr\n-S -n\n-A -t 10.0.0.2:80 -s rr\n-S -n\n"
    )
    response = await restore(Threads(), text)
    first = "-A -t 10.0.0.1:80 -s rr\n-A -u 10.0.0.9:53 -s rr\n"
    second = "-A -t 10.0.0.1:80 -s rr\n-A -t 10.0.0.2:80 -s rr\n-A -u 10.0.0.9:53 -s rr\n"
    assert response == Response(0, first + second, "")


@pytest.mark.parametrize(("initial", "expected"), [("unknown", set()), ("up", {"10.0.1.1"})])
async def test_a_server_added_with_a_runs_its_runtime_checks_initial(
    initial: str, expected: set[str]
) -> None:
    """`-a` of a server not probed yet: with runtime_check's initial = "up"
    it is in the table at once, as `ipvsadm -a` puts it; by default it
    waits for its first probe (never, here)."""
    backend = MemoryBackend()
    config = CONFIG.replace("fall = 1 }", f'fall = 1, initial = "{initial}" }}')
    director = Director(parse_config(config), KernelTable(backend), probe=never, rng=random.Random(1))  # fmt: skip
    controller = Controller(director, reads=KernelTable(backend))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        for argv in (("-A", "-t", "10.0.0.1:80"), ("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80")):
            assert (await controller.handle(Request(argv=argv), ROOT)).status == 0
        nursery.cancel_scope.cancel()
    (entry,) = backend.services()
    assert {str(d.destination.address) for d in entry.destinations} == expected
