"""When each probe starts: due times on a steady grid, and a bound on how many run.

Pure: no trio, no clock. The caller (the checker) passes the time in and
starts the probes it is handed. Rules kept here:

- A probe's starts lie on its grid `first + n * interval`: one that overran
  its interval (or waited for a slot) makes the start it missed last at
  once, late, if that was at most OWED_SHARE of an interval ago (a timeout
  as long as the interval ends just past the next start), and skips the
  others rather than shifting every later one (`next_start`).
- At most `max_running` probes run at once, and of those at most `max_exec`
  are commands. A command waiting for a command slot holds no other slot, so
  that slow commands never starve the socket probes.
- Probes that are due wait in order of due time (equal times: in the order
  they were added), and start as slots free up.
- A probe that failed for want of the daemon's own resources (out of file
  descriptors) holds the bound, for SHORT_HOLD seconds, to the probes that
  ran beside it: the others wait their turn in due order. Without it, each
  probe that starts while the resource is out fails in its turn, and one
  server can lose that draw for minutes (its checks all fail, it is never
  judged). Only a probe started since the bound was last lowered lowers
  it again: those started together fail together, and each counting the
  others that were failing as "beside" it brought the bound down to one
  (trial 39). Meanwhile the bound grows by one for every round of probes
  that end well (as many as it allows), so that one lowered by a burst of
  starts (a command's start holds more files than its run) comes back.
- A removed probe never starts again; if it is running, its slot is held
  until `finished` is called for it.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


# The share of an interval by which a probe may end past its next start
# and still make it (late) rather than skip it.
OWED_SHARE = 0.1
# Seconds the bound stays lowered after a probe found the daemon short of
# its own resources (`finished(short=True)`); each such probe restarts it.
SHORT_HOLD = 30.0


def next_start(previous: float, now: float, interval: float) -> float:
    """The next probe start on the grid `previous + n * interval` (n >= 1)
    for a probe that ended at `now`: the first not in the past, or the last
    missed when it was at most OWED_SHARE of an interval ago (to be made at
    once, late). A probe whose timeout is its interval ends just past its
    next start, and skipping that start doubled the time between a dead
    server's failures. Any other missed start is skipped rather than
    shifting every later one, so an overloaded checker sheds starts.
    Seconds."""
    upcoming = previous + interval
    if upcoming >= now:
        return upcoming
    missed = upcoming + math.floor((now - upcoming) / interval) * interval
    return missed if now - missed <= OWED_SHARE * interval else missed + interval


def first_start(now: float, interval: float, rng: random.Random) -> float:
    """A new probe's first start: at random within one interval from `now`,
    so that thousands of checks added at once do not fire together."""
    return now + rng.uniform(0, interval)


@dataclass(eq=False, slots=True)
class _Entry(Generic[T]):
    """One probe in the Schedule: its grid (next start `due`, then every `interval`
    seconds), whether it is a command (counted against max_exec), and whether
    it runs or was removed (then dropped wherever it is met)."""

    item: T
    interval: float
    is_exec: bool
    due: float
    running: bool = False
    removed: bool = False
    cut: int = 0  # the Schedule's `cuts` when it last started


class Schedule(Generic[T]):
    """Probes by due time, with the bound on how many run at once.

    `add` a probe with its first due time; `due(now)` hands back the probes to
    start now, each with the time it was due; `finished(item, now)` frees its
    slot, puts it back on its grid and hands back the waiting probes that may
    start now. `next_due` is when to call `due` again.
    """

    def __init__(self, max_running: int, max_exec: int) -> None:
        if max_running < 1 or max_exec < 1:
            raise ValueError(
                f"max_running and max_exec must be >= 1, got {max_running}, {max_exec}"
            )
        self.max_running = max_running
        self.max_exec = max_exec
        self.running = 0
        self.running_exec = 0
        # When a due probe last waited for a slot, by kind ("exec": max_exec
        # commands ran, "probe": max_running probes did): what a status
        # blames for checks behind once nothing waits any more.
        self.waited: dict[str, float] = {}
        # After a shortage (`finished(short=True)`): how many probes may run
        # at once until `held_until` (the caller's clock), None: max_running.
        self.ceiling: int | None = None
        self.held_until = -math.inf
        self.cuts = 0  # how many times a shortage lowered the bound
        self._credit = 0  # probes that ended well since the bound last grew
        self._entries: dict[T, _Entry[T]] = {}
        self._leaving: dict[T, _Entry[T]] = {}  # removed while running
        self._heap: list[tuple[float, int, _Entry[T]]] = []
        self._sequence = 0
        self._waiting: deque[_Entry[T]] = deque()
        self._waiting_exec: deque[_Entry[T]] = deque()

    def __contains__(self, item: object) -> bool:
        return item in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, item: T, due: float, interval: float, *, is_exec: bool = False) -> None:
        """Start `item` at `due`, then every `interval` seconds."""
        if item in self._entries or item in self._leaving:
            raise ValueError(f"{item!r} is already scheduled")
        entry = _Entry(item, interval, is_exec, due)
        self._entries[item] = entry
        self._push(entry)

    def remove(self, item: T) -> None:
        """Never start `item` again (a no-op for an unknown item). A running
        item keeps its slot until `finished`."""
        entry = self._entries.pop(item, None)
        if entry is not None:
            entry.removed = True
            if entry.running:
                self._leaving[item] = entry

    def waiting(self, now: float) -> list[tuple[T, float, str]]:
        """The probes due and waiting for a slot at `now`, each with its due
        time and the slot it waits for: "exec" (a command, max_exec run),
        "short" (the bound held lowered after a shortage: `held`), else
        "probe" (max_running run). Not those due that a bound does not hold
        back: they wait for the caller's next hand-out, or for the CPU
        (trial 42: 85 of them, with 4,096 slots for 4,000 servers, were
        said to wait for one of max_probes' slots)."""
        held = self.held(now)
        full = self.running >= (self.max_running if held is None else held)
        kind = "short" if held is not None else "probe"
        waits = [(e.item, e.due, kind) for e in self._waiting if not e.removed] if full else []
        if self.running_exec >= self.max_exec:
            waits += [(e.item, e.due, "exec") for e in self._waiting_exec if not e.removed]
        elif full:
            waits += [(e.item, e.due, kind) for e in self._waiting_exec if not e.removed]
        return waits

    def held(self, now: float) -> int | None:
        """How many probes may run at once at `now` while a shortage holds
        the bound below max_running (`finished(short=True)`); None when it
        does not."""
        ceiling = self.ceiling
        if ceiling is None:
            return None
        if now >= self.held_until:
            self.ceiling = None
            return None
        return ceiling if ceiling < self.max_running else None

    @property
    def leaving(self) -> int:
        """Probes still running that were removed (their slots held until
        they end, within their timeout)."""
        return len(self._leaving)

    def is_running(self, item: T) -> bool:
        """Whether `item` was started (by `due` or `finished`) and has not
        finished yet; a removed item still running counts."""
        entry = self._entries.get(item) or self._leaving.get(item)
        return entry is not None and entry.running

    def next_due(self) -> float:
        """When the earliest scheduled probe is due (inf when none is), or
        the bound a shortage holds lapses with probes waiting for it, if
        that is sooner (trial 39: they waited for the next due, shown as
        waiting for one of max_running's slots)."""
        heap = self._heap
        while heap and heap[0][2].removed:
            heapq.heappop(heap)
        due = heap[0][0] if heap else math.inf
        if self.ceiling is not None and (self._waiting or self._waiting_exec):
            return min(due, self.held_until)
        return due

    def due(self, now: float, limit: int | None = None) -> list[tuple[T, float]]:
        """The probes to start now (at most `limit`), with the time each was
        due; they count as running until `finished`."""
        self._collect(now)
        started = self._admit(now, limit)
        if self._waiting or self._waiting_exec:
            self._note_wait(now)
        return started

    def finished(self, item: T, now: float, *, short: bool = False) -> list[tuple[T, float]]:
        """`item`, started by `due` or `finished`, ended at `now`: its next
        start is the next point of its grid not in the past, or the one it
        just missed, due at once (`next_start`; none if it was removed).
        `short`: it failed for want of the daemon's own resources: no more
        probes run at once than ran beside it (at least one; unless it
        started before the bound was last lowered), one more for every
        round that ends well, until SHORT_HOLD seconds after the last
        shortage (`held`). Returns the waiting probes that may start now.
        Raises ValueError for an item that is not running."""
        entry = self._entries.get(item) or self._leaving.pop(item, None)
        if entry is None or not entry.running:
            raise ValueError(f"{item!r} is not running")
        grew = False
        if short:
            held = self.held(now)
            if held is None or entry.cut == self.cuts:  # (else it started before the last cut)
                beside = self.running - 1
                self.ceiling = max(1, beside if held is None else min(held, beside))
                self.cuts += 1
                self._credit = 0
            self.held_until = now + SHORT_HOLD
        elif self.ceiling is not None:
            self._credit += 1
            if self._credit >= self.ceiling:  # a round of them: one more may run
                self._credit = 0
                self.ceiling += 1  # (at max_running `held` reports none; gone at held_until)
                grew = True
        # Once a verdict, 10,000 times a second: the release, next_start and
        # _push written out, and nothing collected or admitted for nothing.
        entry.running = False
        self.running -= 1
        if entry.is_exec:
            self.running_exec -= 1
        heap = self._heap
        if not entry.removed:
            due = entry.due + entry.interval
            entry.due = due if due >= now else next_start(entry.due, now, entry.interval)
            self._sequence += 1
            heapq.heappush(heap, (entry.due, self._sequence, entry))
        if heap and heap[0][0] <= now:
            self._collect(now)
        if not (self._waiting or self._waiting_exec):
            return []
        # Its slot (and the one the bound grew by): the caller of `due` hands out the others.
        started = self._admit(now, 2 if grew else 1)
        self._note_wait(now)
        return started

    def _note_wait(self, now: float) -> None:
        """Note the kinds of slot due probes wait for at `now` (a probe left
        waiting only by a hand-out's batch is none)."""
        if self._waiting_exec and self.running_exec >= self.max_exec:
            self.waited["exec"] = now
        if (self._waiting or self._waiting_exec) and self.running >= self.max_running:
            self.waited["probe"] = now
        elif (
            (held := self.held(now)) is not None
            and self.running >= held
            and (self._waiting or (self._waiting_exec and self.running_exec < self.max_exec))
        ):
            self.waited["short"] = now

    def _collect(self, now: float) -> None:
        """Move what is due by `now` from the heap to the waiting queues."""
        heap, pop, waiting = self._heap, heapq.heappop, self._waiting
        while heap and heap[0][0] <= now:
            entry = pop(heap)[2]
            if not entry.removed:
                (self._waiting_exec if entry.is_exec else waiting).append(entry)

    def _push(self, entry: _Entry[T]) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (entry.due, self._sequence, entry))

    def _admit(self, now: float, limit: int | None = None) -> list[tuple[T, float]]:
        started: list[tuple[T, float]] = []
        waiting, waiting_exec = self._waiting, self._waiting_exec
        room = self.max_running if self.ceiling is None else (self.held(now) or self.max_running)
        if limit is not None:
            room = min(room, self.running + limit)
        cut = self.cuts
        if not waiting_exec:  # no command waits (almost always): the same, shorter
            running = self.running
            while running < room and waiting:
                entry = waiting.popleft()
                if not entry.removed:
                    entry.running = True
                    entry.cut = cut
                    running += 1
                    started.append((entry.item, entry.due))
            self.running = running
            return started
        while self.running < room:
            while waiting and waiting[0].removed:
                waiting.popleft()
            while waiting_exec and waiting_exec[0].removed:
                waiting_exec.popleft()
            exec_may_run = bool(waiting_exec) and self.running_exec < self.max_exec
            if waiting and not (exec_may_run and waiting_exec[0].due < waiting[0].due):
                entry = waiting.popleft()
            elif exec_may_run:
                entry = waiting_exec.popleft()
                self.running_exec += 1
            else:
                break
            entry.running = True
            entry.cut = cut
            self.running += 1
            started.append((entry.item, entry.due))
        return started
