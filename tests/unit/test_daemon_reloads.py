"""SIGHUP's reloads run in a task of their own (daemon.Reloads), so that the
signal loop reads a SIGTERM during one; SIGHUPs during a reload ask for one
more, and no READY=1 follows a stop."""

from __future__ import annotations

from pathlib import Path

import structlog
import trio
import trio.testing

from director.daemon import Reloads
from director.engine import Stopping


class FakeDirector:
    """reload_file waits for `release`; stop_asked as the test sets it."""

    def __init__(self) -> None:
        self.reloads = 0
        self.release = trio.Event()
        self.stop_asked = False
        self.refuse = False

    async def reload_file(self, path: Path, **origin: object) -> None:
        if self.refuse:
            raise Stopping("directord is stopping: nothing was changed")
        self.reloads += 1
        await self.release.wait()
        self.release = trio.Event()

    def status_line(self) -> str:
        return "ok"


class FakeNotifier:
    def __init__(self) -> None:
        self.said: list[str] = []

    def reloading(self) -> None:
        self.said.append("RELOADING=1")

    def ready(self, status: str = "") -> None:
        self.said.append("READY=1")


async def reloading(nursery: trio.Nursery) -> tuple[FakeDirector, FakeNotifier, Reloads]:
    """A first SIGHUP's reload, reading its file."""
    director, notifier = FakeDirector(), FakeNotifier()
    reloads = Reloads(director, notifier, Path("/etc/director/director.toml"))  # type: ignore[arg-type]
    reloads.ask(nursery)
    await trio.testing.wait_all_tasks_blocked()
    return director, notifier, reloads


async def test_sighups_during_a_reload_make_one_more_after_it(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    director, notifier, reloads = await reloading(nursery)
    for _ in range(3):  # while the first reads its file
        reloads.ask(nursery)
    assert director.reloads == 1
    director.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert director.reloads == 2
    director.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert (director.reloads, reloads.running) == (2, False)
    assert notifier.said == ["RELOADING=1", "READY=1"] * 2


async def test_no_ready_after_a_stop_and_no_reload_once_the_engine_refuses(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    director, notifier, reloads = await reloading(nursery)
    reloads.ask(nursery)  # one more asked
    director.stop_asked = True  # the stop comes; the engine abandons the reload
    director.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert (director.reloads, reloads.running, notifier.said) == (1, False, ["RELOADING=1"])
    director.refuse = True
    reloads.ask(nursery)
    await trio.testing.wait_all_tasks_blocked()
    assert (director.reloads, reloads.running) == (1, False)


async def test_a_reload_the_stop_cuts_off_before_its_turn_is_said_abandoned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 37 (L5): a SIGHUP and a SIGTERM kept during the start: the
    stop came before the reload's turn, the reload's task was cancelled (or
    the engine refused it), and no line said so. Both ways now log
    `reload_abandoned`."""
    with structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            director, _, _ = await reloading(nursery)  # waiting for its turn
            nursery.cancel_scope.cancel()  # the stop
        refused = FakeDirector()
        refused.refuse = True
        async with trio.open_nursery() as nursery:
            Reloads(refused, FakeNotifier(), Path("/x.toml")).ask(nursery)  # type: ignore[arg-type]
    abandoned = [e for e in logs if e["event"] == "reload_abandoned"]
    assert [(e["signal"], e["log_level"]) for e in abandoned] == [("SIGHUP", "warning")] * 2
    assert director.reloads == 1 and refused.reloads == 0
