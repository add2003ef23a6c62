"""patterns.search_now: a search's time is its own thread's CPU time. regex
counts its timeout in the process's CPU time (clock(3)), so a search that
waited for the GIL while other threads worked was stopped without having
searched: operator trial, "still searching" for a 9-byte reply just after
the daemon was paused and caught up."""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest

from director.health.probes import patterns
from director.health.probes.patterns import ATTEMPTS, StillSearching, search_now


class RegexStoppedEarly:
    """regex.search that gives up `times` times at once (the process's
    clock having run out on other threads' work), then searches."""

    def __init__(self, times: int) -> None:
        self.times = times
        self.timeouts: list[float] = []

    def search(self, pattern: str, text: str, *, concurrent: bool, timeout: float) -> Any:
        self.timeouts.append(timeout)
        if len(self.timeouts) <= self.times:
            raise TimeoutError("regex timed out")
        return patterns.regex.compile(pattern).search(text)


@pytest.mark.parametrize("times", range(ATTEMPTS))
def test_a_search_stopped_before_it_spent_its_time_is_run_again(
    monkeypatch: pytest.MonkeyPatch, times: int
) -> None:
    fake = RegexStoppedEarly(times)
    monkeypatch.setattr(patterns.regex, "search", fake.search)
    assert search_now("^pong ping$", "pong ping", 1.0) is True
    assert search_now("^pang$", "pong ping", 1.0) is False
    assert len(fake.timeouts) == times + 2
    # Each run gets what its thread has not spent yet (next to nothing here).
    assert all(0.9 < t <= 1.0 for t in fake.timeouts)


def test_a_search_stopped_attempts_times_is_still_searching(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = RegexStoppedEarly(ATTEMPTS)
    monkeypatch.setattr(patterns.regex, "search", fake.search)
    with pytest.raises(StillSearching):
        search_now("^pong ping$", "pong ping", 1.0)
    assert len(fake.timeouts) == ATTEMPTS


def test_a_catastrophic_search_is_still_searching_once_its_thread_spent_its_time() -> None:
    # `(a|aa)+$` against 40 a's and a b backtracks for far longer than 50 ms
    # of this thread's CPU: regex stops it, and the time it spent ends it.
    with pytest.raises(StillSearching):
        search_now("(a|aa)+$", "a" * 40 + "b", 0.05)


async def test_a_quick_search_is_done_on_the_loop_without_a_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """VM, busy daemon: a worker's round trip took 0.5-1.3 s for a 9-byte
    reply, and after a pause a burst of them outlasted RESULT_WAIT."""

    async def no_thread(*args: object) -> object:
        raise AssertionError("a quick search went to a worker thread")

    monkeypatch.setattr(patterns, "off_loop", no_thread)
    assert await patterns.in_time(partial(search_now, "^pong ping$", "pong ping"), 1.0) is True
    assert await patterns.in_time(partial(search_now, "^pang$", "pong ping"), 1.0) is False


async def test_a_search_the_loop_cannot_finish_at_once_goes_to_a_thread_with_its_whole_time() -> (
    None
):
    asked: list[float] = []

    def slow(seconds: float) -> bool:
        asked.append(seconds)
        if len(asked) == 1:
            raise StillSearching("not within the loop's try")
        return True

    assert await patterns.in_time(slow, 1.0) is True
    assert asked == [patterns.ON_LOOP, 1.0]


async def test_a_catastrophic_search_is_still_searching_through_in_time() -> None:
    search = partial(search_now, "(a|aa)+$", "a" * 40 + "b")
    assert await patterns.in_time(search, 0.05) is None
