"""The `directord` command's first moments: the signals directord handles
are caught before anything else is imported, kept, and handed to the daemon
once it listens for them.

Python's start and directord's imports take a fraction of a second on a
host and several seconds on a slow machine. A signal in that time had its
default action: SIGHUP or SIGTERM killed the process without a line of log
(systemd counts death by SIGHUP as a clean exit, so `Restart=on-failure`
did not restart it), and SIGINT printed a KeyboardInterrupt traceback from
an import. Kept here, a signal is raised again (`replay`) when the daemon's
receiver is in place. The handler also stays as what trio's receiver puts
back when it closes: a signal after the stop is then dropped, not the
default action (a second SIGTERM during a stop made the exit status -15).

Caught, not blocked: a blocked signal stays blocked in the threads started
meanwhile and in the commands they start (exec checks, BIRD), which could
then not be stopped with SIGTERM. This module imports nothing heavy.
"""

from __future__ import annotations

import gc
import signal
import sys
import time
from types import FrameType

# Signals whose default action ends the process and that mean nothing to
# directord: logged (with the status line) and otherwise ignored. An
# operator used to keepalived sends USR1 and USR2 for its data and stats
# dumps; a daemon that dies of them stops checking (signal(7)).
IGNORED_SIGNALS = (
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGIO,
    signal.SIGPROF,
    signal.SIGVTALRM,
    signal.SIGPWR,
)
HANDLED_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, *IGNORED_SIGNALS)

_kept: list[tuple[int, float]] = []  # (signal, when: time.monotonic())


def _keep(signum: int, frame: FrameType | None) -> None:
    _kept.append((signum, time.monotonic()))


def catch() -> None:
    """Keep HANDLED_SIGNALS from now on, instead of their default actions.
    Call from the main thread."""
    for signum in HANDLED_SIGNALS:
        if signal.getsignal(signum) is not _keep:
            signal.signal(signum, _keep)


def replay() -> list[tuple[int, float]]:
    """Raise again, in order, the signals kept so far (for the handlers now
    in place: the daemon's receiver), but a SIGHUP kept with a SIGTERM or
    SIGINT (the stop would abandon its reload: trial 38); return them all,
    each with when it came (time.monotonic())."""
    kept = _kept[:]
    _kept.clear()
    stop = asks_stop(kept)
    for signum, _ in kept:
        if not (stop and signum == signal.SIGHUP):
            signal.raise_signal(signum)
    return kept


def asks_stop(kept: list[tuple[int, float]]) -> bool:
    """Whether the signals `kept` (replay's) ask the daemon to stop."""
    return any(signum in (signal.SIGTERM, signal.SIGINT) for signum, _ in kept)


def ignore() -> None:
    """Ignore HANDLED_SIGNALS from now on: for the process's exit, once the
    daemon ran (at its end Python puts the default action back in place of
    a handler of its own, so a SIGTERM then made the exit status -15; an
    ignored signal stays ignored)."""
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def uncatch() -> None:
    """Back to the default actions (and KeyboardInterrupt), then the kept
    signals: for the runs that do not serve (--check, --version)."""
    for signum in HANDLED_SIGNALS:
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, default)
    replay()


def main() -> int:
    """The `directord` command: director.daemon.main, its signals caught
    from here on, and no garbage collection until the daemon is ready
    (director.daemon's serve enables it again)."""
    catch()
    # The start (imports, the config, the first pass) makes objects that
    # live as long as the daemon, and almost no garbage in cycles: each
    # collection meanwhile walked them all for nothing. At 10,000 real
    # servers, 3 full collections took a fifth of the start's CPU. The
    # start's work is bounded (one pass); at its end they are frozen.
    gc.disable()
    from director.daemon import main as daemon_main

    return daemon_main()


if __name__ == "__main__":
    # `python -m director.entry`: the module's own copy, the one the daemon
    # imports, keeps the signals (this __main__ is another).
    from director.entry import main as entry_main

    sys.exit(entry_main())
