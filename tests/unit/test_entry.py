"""director.entry: the signals of directord's first moments are kept and
replayed to the daemon's receiver, and one after the receiver closes is
dropped (operator trial: SIGHUP in the first second killed directord with
no log line; a second SIGTERM during a stop made the exit status -15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import FrameType

import pytest

from director import entry


def replayed() -> list[int]:
    """The signals kept so far, replayed to a recording handler."""
    heard: list[int] = []

    def receiver(signum: int, frame: FrameType | None) -> None:
        heard.append(signum)

    previous = {s: signal.signal(s, receiver) for s in entry.HANDLED_SIGNALS}
    try:
        entry.replay()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return heard


@pytest.fixture
def caught() -> Iterator[None]:
    entry.catch()
    try:
        yield
    finally:
        entry.uncatch()


def test_signals_before_the_daemon_listens_are_kept_in_order_and_replayed(caught: None) -> None:
    for signum in (signal.SIGUSR1, signal.SIGHUP):
        os.kill(os.getpid(), signum)  # delivered to this (the main) thread at once
    assert replayed() == [signal.SIGUSR1, signal.SIGHUP]
    assert replayed() == []  # nothing kept twice
    for signum in (signal.SIGUSR1, signal.SIGTERM):
        os.kill(os.getpid(), signum)
    assert replayed() == [signal.SIGUSR1, signal.SIGTERM]


def test_each_kept_signal_comes_back_with_when_it_came(caught: None) -> None:
    """Trial 36 (L4): a SIGTERM sent during the start was acted on 6 s
    later, after `ready`, and the log did not say it had come before. The
    replay gives each one's time (time.monotonic), for the daemon's
    `signal_kept` line."""
    before = time.monotonic()
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)
    after = time.monotonic()
    previous = {s: signal.signal(s, lambda *_: None) for s in entry.HANDLED_SIGNALS}
    try:
        kept = entry.replay()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert [signum for signum, _ in kept] == [signal.SIGHUP, signal.SIGTERM]
    assert before <= kept[0][1] <= kept[1][1] <= after


def test_a_signal_after_the_receiver_closed_is_dropped(caught: None) -> None:
    """What trio's receiver puts back when it closes is the keeping handler:
    the signals it raises again then (those it had not handed out) and any
    later one end nothing."""
    import trio

    async def stop_then_signal() -> None:
        with trio.open_signal_receiver(*entry.HANDLED_SIGNALS) as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            async for signum in signals:
                assert signum == signal.SIGTERM
                os.kill(os.getpid(), signal.SIGINT)  # a second one, during the stop
                break
        os.kill(os.getpid(), signal.SIGTERM)  # and one after

    trio.run(stop_then_signal)  # alive: neither killed this process nor raised
    assert sorted(replayed()) == sorted([signal.SIGINT, signal.SIGTERM])


def test_uncatch_restores_the_default_actions() -> None:
    entry.catch()
    entry.uncatch()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert all(
        signal.getsignal(s) == signal.SIG_DFL
        for s in entry.HANDLED_SIGNALS[1:]
        if s != signal.SIGINT
    )


def test_directord_check_keeps_the_usual_signals() -> None:
    """--check and --version do not serve: a SIGTERM ends them as usual."""
    code = (
        "import os, signal, sys\n"
        "from director import entry\n"
        "entry.catch()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "sys.argv = ['directord', '--version']\n"
        "from director.daemon import main\n"
        "main()\n"
        "print('not reached')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (-signal.SIGTERM, "")


@pytest.mark.parametrize("ignored", [True, False])
def test_a_signal_as_the_process_exits_does_not_change_its_status(ignored: bool) -> None:
    """Operator trial (host): a SIGTERM landing while directord exited made
    the status -15 (1 run in 20): Python's finalization puts the default
    action back in place of its own handlers. After the run they are
    ignored (`ignored`; without it, the same exit dies of the signal)."""
    code = (
        "import os, signal, sys\n"
        "from director import entry\n"
        "entry.catch()\n"
        f"if {ignored}: entry.ignore()\n"
        "class LateKill:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "late = LateKill()  # deleted as the interpreter finalizes its modules\n"
        "sys.exit(0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == (0 if ignored else -signal.SIGTERM), done.stderr


def test_directord_collects_no_garbage_until_the_daemon_turns_the_collector_on() -> None:
    """entry.main turns the collector off before director.daemon is
    imported (its start: imports, config, the first pass); the daemon turns
    it on at `ready` (a kernel test, test_metrics, sees it count then)."""
    code = (
        "import gc, sys, types\n"
        "daemon = types.ModuleType('director.daemon')\n"
        "daemon.main = lambda: print(gc.isenabled()) or 0\n"
        "sys.modules['director.daemon'] = daemon\n"
        "from director import entry\n"
        "sys.exit(entry.main())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "False\n", "")


def test_a_sighup_kept_with_a_stop_is_not_raised_again(caught: None) -> None:
    """Trial 38 (LOW): a SIGHUP and a SIGTERM during the start gave both a
    'no reload' signal_kept line and a reload_abandoned warning: the SIGHUP
    was raised again, its reload began and the stop abandoned it. It is
    reported (returned) but not raised: no reload is begun."""
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGHUP)
    assert replayed() == [signal.SIGTERM]
    os.kill(os.getpid(), signal.SIGHUP)
    assert replayed() == [signal.SIGHUP]  # alone, it reloads
