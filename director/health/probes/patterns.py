"""The config's regular expressions (http `expect_body`, udp `expect`, dns
`expect_answer`) matched against what a server sent, without holding up the
event loop for more than a millisecond.

A pattern can backtrack for minutes on a hostile or unlucky reply (`(a|aa)+$`
against 40 a's and a b). Python's `re` holds the GIL while it matches, so
even in a worker thread it freezes the loop (measured: 14.7 s). The `regex`
module takes the same syntax, releases the GIL (`concurrent=True`) and gives
up after a timeout. A search first runs on the loop for ON_LOOP s (nearly
all end there, in microseconds); one that does not runs in one of
SEARCH_THREADS worker threads per trio run (`in_time`); a probe cancelled
meanwhile abandons its thread, which runs on until `regex` gives up.

A search is the daemon's work on a reply that came in time, not the
server's: it gets the check's timeout of its own, from when it starts,
whatever the server took and however late a busy or paused daemon comes to
it (a search cut by the time the server left, or by the probe's wall-clock
limit, failed a healthy server whenever the daemon paused for a second:
an operator's SIGSTOP of 1.5 s, "still searching the reply" for a 5-byte
reply).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import regex  # type: ignore[import-untyped]  # no stubs in the venv; the calls below are few
import trio

SEARCH_THREADS = 2  # searches at once, per trio run

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("pattern_search")


# A search's result is waited for at most this many times its own time: the
# regex module gives up up to 3x after its timeout (measured); past that,
# the probe moves on and the thread runs until it gives up.
RESULT_WAIT = 4.0


class StillSearching(TimeoutError):
    """The search had not finished when its time ran out."""


# A search first runs on the loop's thread, for at most this long (seconds of
# CPU): nearly all are done in microseconds. Only one that is not goes to a
# worker thread, with its whole time: in a busy VM the round trip to a worker
# took 0.5-1.3 s (the GIL handed over and back, a queue for SEARCH_THREADS),
# and after a pause a burst of them outlasted RESULT_WAIT ("still searching"
# a 9-byte reply).
ON_LOOP = 0.001


async def in_time(search: Callable[[float], T], seconds: float) -> T | None:
    """`search(seconds)`, a search that gives up with StillSearching after
    `seconds` (search_now's): first on the loop for ON_LOOP s, then, if it
    gave up, off the loop (`off_loop`), its own time counted from then.
    None when it gave up, or its result did not come within RESULT_WAIT x
    `seconds`. Raises what `search` raises otherwise (regex.error for a bad
    pattern)."""
    await trio.lowlevel.checkpoint()
    if ON_LOOP > 0:
        try:
            return search(min(ON_LOOP, seconds))
        except StillSearching:
            pass
    with trio.move_on_after(RESULT_WAIT * seconds):
        try:
            return await off_loop(search, seconds)
        except StillSearching:
            return None
    return None


async def off_loop(function: Callable[[*Ts], T], *args: *Ts) -> T:
    """`function(*args)`, a pure function that searches with search_now, run
    in one of the SEARCH_THREADS worker threads; cancelling abandons it."""
    try:
        limiter = _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(SEARCH_THREADS)
        _LIMITER.set(limiter)
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True, limiter=limiter)


# regex's timeout counts the process's CPU time (clock(3): every thread's),
# so a search that waits for the GIL while the loop's thread works (catching
# up after a pause: "still searching" for a 9-byte reply, in the VM) used it
# up without searching. A search's budget is its own thread's CPU time: one
# that regex stopped before it had spent that is run again, at most ATTEMPTS
# times in all.
ATTEMPTS = 4


def search_now(pattern: str, text: str, timeout: float) -> bool:
    """Whether `pattern` is found in `text`; raises StillSearching when the
    search has spent `timeout` seconds of its thread's CPU time (or regex
    gave up ATTEMPTS times), regex.error for a bad pattern."""
    spent = 0.0
    for attempt in range(1, ATTEMPTS + 1):
        began = time.thread_time()
        try:
            left = timeout - spent
            return regex.search(pattern, text, concurrent=True, timeout=left) is not None
        except TimeoutError as e:
            spent += time.thread_time() - began
            if spent >= timeout or attempt == ATTEMPTS:
                raise StillSearching(str(e)) from e
    raise AssertionError("unreachable")
