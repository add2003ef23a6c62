"""The config's regular expressions (http `expect_body`, udp `expect`, dns
`expect_answer`) matched against what a server sent, without ever holding up
the event loop.

A pattern can backtrack for minutes on a hostile or unlucky reply (`(a|aa)+$`
against 40 a's and a b). Python's `re` holds the GIL while it matches, so
even in a worker thread it freezes the loop (measured: 14.7 s). The `regex`
module takes the same syntax, releases the GIL (`concurrent=True`) and gives
up after a timeout. A search runs in one of SEARCH_THREADS worker threads per
trio run, with the time the server left of the probe's timeout as its own
(a search is the daemon's work: a reply that came in time is not failed for
it short of the probe's limit); a probe cancelled meanwhile abandons its
thread, which runs on until `regex` gives up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple

import regex  # type: ignore[import-untyped]  # no stubs in the venv; the calls below are few
import trio

SEARCH_THREADS = 2  # searches at once, per trio run

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

_LIMITER: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("pattern_search")


class StillSearching(TimeoutError):
    """The search had not finished when the probe's time ran out."""


async def off_loop(function: Callable[[*Ts], T], *args: *Ts) -> T:
    """`function(*args)`, a pure function that searches with search_now, run
    in one of the SEARCH_THREADS worker threads; cancelling abandons it."""
    try:
        limiter = _LIMITER.get()
    except LookupError:
        limiter = trio.CapacityLimiter(SEARCH_THREADS)
        _LIMITER.set(limiter)
    return await trio.to_thread.run_sync(function, *args, abandon_on_cancel=True, limiter=limiter)


def search_now(pattern: str, text: str, timeout: float) -> bool:
    """Whether `pattern` is found in `text`; raises StillSearching when
    `regex` gives up after `timeout` seconds, regex.error for a bad pattern."""
    try:
        return regex.search(pattern, text, concurrent=True, timeout=timeout) is not None
    except TimeoutError as e:
        raise StillSearching(str(e)) from e
