"""The pure probe schedule: due times on a grid, the bound on running probes."""

from __future__ import annotations

import math
import random

import pytest

from director.health.schedule import SHORT_HOLD, Schedule, first_start, next_start


@pytest.mark.parametrize(
    ("previous", "now", "expected"),
    [(10.0, 10.3, 12.0), (10.0, 12.0, 12.0), (10.0, 12.15, 12.0), (10.0, 12.5, 14.0), (10.0, 16.0, 16.0), (10.0, 16.1, 16.0), (10.0, 16.25, 18.0)],
)  # fmt: skip
def test_next_start_stays_on_the_grid(previous: float, now: float, expected: float) -> None:
    assert next_start(previous, now, 2.0) == expected


def test_first_start_is_within_one_interval_and_follows_the_generator() -> None:
    starts = [first_start(100.0, 2.0, random.Random(7)) for _ in range(3)]
    assert starts[0] == starts[1] == starts[2] == 100.0 + random.Random(7).uniform(0, 2.0)
    rng = random.Random(8)
    assert all(100.0 <= first_start(100.0, 2.0, rng) <= 102.0 for _ in range(1000))


def test_probes_start_when_due_in_order_of_due_time() -> None:
    schedule: Schedule[str] = Schedule(max_running=10, max_exec=2)
    schedule.add("b", 0.7, 2.0)
    schedule.add("a", 0.2, 2.0)
    schedule.add("c", 1.5, 2.0)
    assert schedule.next_due() == 0.2
    assert schedule.due(0.1) == []
    assert schedule.due(0.9) == [("a", 0.2), ("b", 0.7)]
    assert schedule.next_due() == 1.5
    assert schedule.running == 2


def test_due_hands_out_at_most_its_limit_in_order_and_the_rest_wait() -> None:
    schedule: Schedule[int] = Schedule(max_running=100, max_exec=2)
    for n in range(10):
        schedule.add(n, 0.1 * n, 5.0)
    assert schedule.due(2.0, 4) == [(n, 0.1 * n) for n in range(4)]
    assert schedule.due(2.0, 4) == [(n, 0.1 * n) for n in range(4, 8)]
    # A probe that ends frees its one slot: one waiting probe may start.
    assert schedule.finished(0, 2.0) == [(8, 0.8)]
    assert schedule.due(2.0, 4) == [(9, 0.9)]
    assert schedule.running == 9


def test_a_limit_never_exceeds_the_bound_on_running_probes() -> None:
    schedule: Schedule[int] = Schedule(max_running=3, max_exec=2)
    for n in range(5):
        schedule.add(n, 0.0, 5.0)
    assert [item for item, _ in schedule.due(1.0, 16)] == [0, 1, 2]
    assert schedule.due(1.0, 16) == []
    assert [item for item, _ in schedule.finished(1, 1.5)] == [3]


def test_a_finished_probe_goes_back_on_its_grid() -> None:
    schedule: Schedule[str] = Schedule(max_running=10, max_exec=2)
    schedule.add("a", 0.5, 2.0)
    assert schedule.due(0.5) == [("a", 0.5)]
    assert schedule.next_due() == math.inf  # running: not scheduled
    assert schedule.finished("a", 0.8) == []
    assert schedule.next_due() == 2.5
    assert schedule.due(2.5) == [("a", 2.5)]
    schedule.finished("a", 7.0)  # overran: 4.5 and 6.5 are skipped
    assert schedule.next_due() == 8.5
    assert schedule.running == 0


def test_no_more_than_max_running_and_the_rest_wait_in_order() -> None:
    schedule: Schedule[str] = Schedule(max_running=2, max_exec=2)
    for name, due in [("a", 0.1), ("b", 0.2), ("c", 0.3), ("d", 0.4)]:
        schedule.add(name, due, 1.0)
    assert schedule.due(0.5) == [("a", 0.1), ("b", 0.2)]
    assert schedule.running == 2
    # A slot that frees goes to the one due first; its start is late by 0.8.
    assert schedule.finished("b", 0.9) == [("c", 0.3)]
    assert schedule.finished("a", 1.0) == [("d", 0.4)]
    assert schedule.running == 2
    # "a" and "b" are due again (1.1, 1.2) while the slots are taken.
    assert schedule.due(1.3) == []
    assert schedule.finished("c", 1.4) == [("a", 1.1)]


def test_late_starts_are_skipped_not_piled_up() -> None:
    """One slot, three probes every second, each taking a second: each probe
    waits once per round, and never runs twice in a row to catch up."""
    schedule: Schedule[str] = Schedule(max_running=1, max_exec=1)
    for name, due in [("a", 0.0), ("b", 0.1), ("c", 0.2)]:
        schedule.add(name, due, 1.0)
    starts: list[tuple[str, float, float]] = []  # (name, due, started)
    running = schedule.due(0.3)
    now = 0.3
    for _ in range(30):
        [(name, due)] = running
        starts.append((name, due, now))
        now += 1.0
        running = schedule.finished(name, now)
    assert [s[0] for s in starts] == ["a", "b", "c"] * 10
    lateness = [started - due for _, due, started in starts]
    assert max(lateness) < 3.0  # at most one round behind, whatever the run length
    # Steady, not growing (once c, ending 0.1 s past a start, makes it late).
    assert lateness[-3:] == pytest.approx(lateness[-6:-3])


def test_exec_probes_waiting_for_their_bound_hold_no_socket_slot() -> None:
    schedule: Schedule[str] = Schedule(max_running=3, max_exec=1)
    schedule.add("exec1", 0.1, 1.0, is_exec=True)
    schedule.add("exec2", 0.2, 1.0, is_exec=True)
    schedule.add("tcp1", 0.3, 1.0)
    schedule.add("tcp2", 0.4, 1.0)
    assert schedule.due(0.5) == [("exec1", 0.1), ("tcp1", 0.3), ("tcp2", 0.4)]
    assert (schedule.running, schedule.running_exec) == (3, 1)
    assert schedule.finished("tcp1", 0.6) == []  # exec2 waits for exec1, not for a socket slot
    assert schedule.finished("exec1", 0.7) == [("exec2", 0.2)]


def test_a_removed_probe_never_starts_again() -> None:
    schedule: Schedule[str] = Schedule(max_running=1, max_exec=1)
    schedule.add("a", 0.1, 1.0)
    schedule.add("b", 0.2, 1.0)
    schedule.add("c", 0.3, 1.0)
    assert schedule.due(0.5) == [("a", 0.1)]  # b and c wait
    schedule.remove("b")  # waiting
    schedule.remove("a")  # running: keeps its slot until it ends
    assert "a" not in schedule and "b" not in schedule and len(schedule) == 1
    assert schedule.due(0.6) == []
    assert schedule.finished("a", 0.7) == [("c", 0.3)]
    assert schedule.finished("c", 0.8) == []
    assert schedule.due(100.0) == [("c", 1.3)]  # late: due on its grid, not when asked
    schedule.remove("c")
    schedule.remove("unknown")
    assert schedule.next_due() == math.inf


def test_a_removed_probe_can_come_back_under_a_new_schedule() -> None:
    schedule: Schedule[str] = Schedule(max_running=5, max_exec=1)
    schedule.add("a", 0.1, 1.0)
    schedule.remove("a")
    schedule.add("a", 0.5, 1.0)
    assert schedule.next_due() == 0.5
    assert schedule.due(2.0) == [("a", 0.5)]  # once, not for the removed entry too


def test_misuse_is_refused() -> None:
    schedule: Schedule[str] = Schedule(max_running=1, max_exec=1)
    schedule.add("a", 0.1, 1.0)
    with pytest.raises(ValueError, match="'a' is already scheduled"):
        schedule.add("a", 0.2, 1.0)
    with pytest.raises(ValueError, match="'a' is not running"):
        schedule.finished("a", 1.0)
    schedule.due(0.1)
    schedule.remove("a")
    with pytest.raises(ValueError, match="'a' is already scheduled"):
        schedule.add("a", 0.2, 1.0)  # still running under its old schedule
    with pytest.raises(ValueError, match="max_running and max_exec must be >= 1"):
        Schedule(max_running=0, max_exec=1)


def test_waits_for_a_slot_are_noted_by_kind_and_a_batchs_leftovers_are_not() -> None:
    """What a status blames once nothing waits any more (trial 37: for 5 s
    after a reload raised the limits, checks behind said 'short of CPU')."""
    schedule: Schedule[str] = Schedule(max_running=3, max_exec=1)
    schedule.add("a", due=0.0, interval=10.0, is_exec=True)
    schedule.add("c", due=0.5, interval=10.0)
    schedule.add("d", due=0.6, interval=10.0)
    assert [item for item, _ in schedule.due(1.0, limit=1)] == ["a"]  # a batch of one
    assert schedule.waited == {}  # c and d wait for the next batch, not a slot
    schedule.add("b", due=1.5, interval=10.0, is_exec=True)
    assert [item for item, _ in schedule.due(2.0)] == ["c", "d"]
    # b waits: one command at most runs (a), and three probes in all.
    assert schedule.waited == {"exec": 2.0, "probe": 2.0}
    assert schedule.waiting(2.0) == [("b", 1.5, "exec")]


def test_a_probe_short_of_files_holds_the_bound_to_those_beside_it() -> None:
    """CI at stop 36: under an open-file limit of 48, 20 exec checks of 2 s
    ran as many at once as started, each start that found no file failed,
    and one server lost that draw for a minute, never judged. Now a short
    probe holds the bound, for SHORT_HOLD seconds, to those that ran beside
    it: the others wait in due order and each gets its turn."""
    schedule: Schedule[str] = Schedule(max_running=8, max_exec=8)
    for n, item in enumerate("abcdef"):
        schedule.add(item, due=n * 0.1, interval=1.0, is_exec=True)
    assert [item for item, _ in schedule.due(1.0)] == list("abcdef")
    schedule.add("g", due=1.05, interval=1.0, is_exec=True)
    # f found the daemon out of files: five ran beside it.
    assert schedule.finished("f", 1.1, short=True) == []
    assert schedule.held(1.1) == 5
    assert schedule.due(1.2) == []  # g waits: five run already
    assert schedule.waiting(1.2) == [("g", 1.05, "short")]
    assert schedule.waited == {"short": 1.2}
    # f's next start (1.5) comes after g's: each waits its turn, in due order.
    assert schedule.finished("a", 1.6) == [("g", 1.05)]
    assert schedule.finished("b", 1.7) == [("f", 1.5)]
    assert schedule.running == 5
    # A second shortage, of a probe started since the bound was lowered,
    # lowers it again, to those beside that one ...
    assert schedule.finished("g", 1.8, short=True) == []
    assert schedule.held(1.8) == 4
    # ... and one started before (with those whose failures lowered it) does not.
    assert schedule.finished("c", 1.9, short=True) == []
    assert schedule.held(1.9) == 4
    # Lifted SHORT_HOLD seconds after the last shortage.
    assert schedule.held(1.9 + SHORT_HOLD - 0.01) == 4
    assert schedule.held(1.9 + SHORT_HOLD) is None
    # Then those that waited (late, still due) all start beside the three
    # running, as max_running allows.
    assert [item for item, _ in schedule.due(1.9 + SHORT_HOLD)] == ["a", "g", "b", "c"]
    assert schedule.running == 7


def test_a_lone_probe_short_of_files_still_runs_one_at_a_time() -> None:
    """With nothing beside it, a short probe leaves a bound of one, never
    none: the checks go on, one at a time, until SHORT_HOLD passes."""
    schedule: Schedule[str] = Schedule(max_running=4, max_exec=4)
    schedule.add("a", due=0.0, interval=1.0)
    schedule.add("b", due=0.5, interval=1.0)
    assert schedule.due(0.0) == [("a", 0.0)]
    assert schedule.finished("a", 0.1, short=True) == []
    assert schedule.held(0.1) == 1
    assert schedule.due(0.5) == [("b", 0.5)]
    assert schedule.due(1.0) == []  # a waits for b: one at a time
    assert schedule.waiting(1.0) == [("a", 1.0, "short")]
    assert schedule.finished("b", 1.2) == [("a", 1.0)]


def test_probes_that_started_together_and_fail_together_lower_the_bound_once() -> None:
    """Trial 39: at a start under a low open-file limit, the 16 commands
    handed out together each found no file, and each counted the others,
    failing too, as running beside it: the bound fell to one, and 19 servers
    waited for one command at a time. Only a probe started since the bound
    was last lowered lowers it again."""
    schedule: Schedule[int] = Schedule(max_running=64, max_exec=16)
    for n in range(20):
        schedule.add(n, due=0.0, interval=1.0, is_exec=True)
    assert len(schedule.due(0.0)) == 16
    started = []
    for n in range(6):  # six of the sixteen found no file
        started += [item for item, _ in schedule.finished(n, 0.1, short=True)]
    assert schedule.held(0.1) == 15  # the first's 15 beside it; the others' cut was made
    # Each end let one waiting command start, the last four waiting.
    assert started == [16, 17, 18, 19]
    assert schedule.running == 14
    # One of those started since lowers it again, to those beside it.
    schedule.finished(16, 0.3, short=True)
    assert schedule.held(0.3) == 13  # 14 ran, 13 beside it
    schedule.finished(17, 0.3, short=True)  # started with 16: its cut was made
    assert schedule.held(0.3) == 13


def test_a_lowered_bound_grows_by_one_a_round_of_probes_that_end_well() -> None:
    """Trial 39: a bound lowered by a burst of starts stayed there for as
    long as probes kept finding no file, although fewer at once fit well.
    Each round of probes that end well (as many as the bound) lets one
    more run, up to max_running, where the bound is forgotten."""
    schedule: Schedule[int] = Schedule(max_running=4, max_exec=4)
    for n in range(8):
        schedule.add(n, due=0.0, interval=1.0)
    assert len(schedule.due(0.0)) == 4
    schedule.finished(0, 0.1, short=True)
    assert schedule.held(0.1) == 3
    for n in (1, 2):
        schedule.finished(n, 0.2)
    assert schedule.held(0.2) == 3  # two of a round of three
    schedule.finished(3, 0.4)
    assert schedule.held(0.4) is None  # a round ended well: 4, max_running, forgotten


def test_a_lapsing_hold_with_probes_waiting_is_a_time_to_come_back() -> None:
    """Trial 39: once the bound a shortage held lapsed, the probes waiting
    for it stayed queued until the next probe fell due, and a status then
    showed them waiting for one of max_running's slots (19 waiting, 1 of
    24 running). The lapse is when the scheduler comes back."""
    schedule: Schedule[str] = Schedule(max_running=4, max_exec=4)
    schedule.add("a", due=0.0, interval=100.0)
    schedule.add("b", due=0.0, interval=100.0)
    schedule.add("c", due=0.0, interval=100.0)
    assert len(schedule.due(0.0)) == 3
    schedule.finished("a", 0.1, short=True)  # bound: 2 (b, c)
    schedule.add("d", due=0.2, interval=100.0)
    schedule.add("e", due=0.2, interval=100.0)
    assert schedule.due(0.3) == []  # d and e wait: two run
    assert schedule.next_due() == schedule.held_until == 0.1 + SHORT_HOLD
    assert [item for item, _ in schedule.due(schedule.held_until)] == ["d", "e"]
    assert schedule.next_due() == 100.0  # a's next start


def test_probes_left_only_by_a_hand_outs_batch_wait_for_no_slot() -> None:
    """Trial 42: with 4,096 slots for 4,000 servers, probes due but not
    handed out yet (the caller starts them in batches, and a busy daemon
    late) were said to wait for one of max_probes' slots, and probes_late
    told operators to raise it. Only a bound that is reached holds them."""
    dues = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5}
    schedule: Schedule[str] = Schedule(max_running=10, max_exec=1)
    for name, due in dues.items():
        schedule.add(name, due, 1.0)
    schedule.add("x1", 0.15, 1.0, is_exec=True)
    assert schedule.due(1.0, limit=2) == [("a", 0.1), ("x1", 0.15)]
    assert schedule.waiting(1.0) == []  # 8 slots free: the next hand-out's
    assert schedule.waited == {}
    full: Schedule[str] = Schedule(max_running=2, max_exec=1)
    for name, due in dues.items():
        full.add(name, due, 1.0)
    full.add("x1", 0.15, 1.0, is_exec=True)
    full.add("x2", 0.25, 1.0, is_exec=True)
    assert full.due(1.0) == [("a", 0.1), ("x1", 0.15)]
    assert full.waiting(1.0) == [
        ("b", 0.2, "probe"), ("c", 0.3, "probe"), ("d", 0.4, "probe"), ("e", 0.5, "probe"),
        ("x2", 0.25, "exec"),
    ]  # fmt: skip
