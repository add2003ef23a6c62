from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from director.health.result import ProbeResult, Reason
from director.health.spec import Timing
from director.health.state import (
    Health,
    HealthState,
    Transition,
    advance,
    failure_worth_logging,
)

UP, DOWN, UNKNOWN = Health.UP, Health.DOWN, Health.UNKNOWN
OK = ProbeResult.success(0.01)
REFUSED = ProbeResult.failure(Reason.REFUSED, 0.002)
TIMEOUT = ProbeResult.failure(Reason.TIMEOUT, 1.0, "after 1 s")


def run(
    results: list[ProbeResult], timing: Timing, state: HealthState | None = None
) -> tuple[HealthState, list[Transition]]:
    state = state or HealthState()
    transitions = []
    for t, result in enumerate(results, start=1):
        state, transition = advance(state, result, float(t), timing)
        if transition:
            transitions.append(transition)
    return state, transitions


def test_initial_state_is_unknown_with_no_counts() -> None:
    state = HealthState()
    assert (state.status, state.successes_in_row, state.failures_in_row, state.last) == (
        UNKNOWN, 0, 0, None,
    )  # fmt: skip


@pytest.mark.parametrize(("result", "status"), [(OK, UP), (REFUSED, DOWN)])
def test_first_result_decides_at_once_whatever_rise_and_fall(
    result: ProbeResult, status: Health
) -> None:
    state, transition = advance(HealthState(since=0.0), result, 5.0, Timing(rise=9, fall=9))
    assert state.status is status
    assert state.since == 5.0
    assert state.last is result
    assert transition == Transition(
        old=UNKNOWN,
        new=status,
        at=5.0,
        was_since=0.0,
        reason=result.reason,
        detail=result.detail,
        successes_in_row=1 if result.ok else 0,
        failures_in_row=0 if result.ok else 1,
    )


def test_an_adopted_server_takes_fall_failures_to_go_down_and_one_success_to_go_up() -> None:
    timing = Timing(rise=3, fall=3)
    adopted = HealthState(adopted=True)
    state, transitions = run([REFUSED, TIMEOUT], timing, adopted)
    assert (state.status, transitions) == (UNKNOWN, [])
    state, transitions = run([REFUSED, TIMEOUT, REFUSED], timing, adopted)
    assert state.status is DOWN
    assert [(t.old, t.new, t.failures_in_row) for t in transitions] == [(UNKNOWN, DOWN, 3)]
    state, transitions = run([REFUSED, OK], timing, adopted)
    assert state.status is UP
    assert [(t.old, t.new) for t in transitions] == [(UNKNOWN, UP)]


def test_up_goes_down_after_exactly_fall_failures_in_row() -> None:
    timing = Timing(rise=2, fall=3)
    state, _ = run([OK], timing)
    state, transitions = run([REFUSED, REFUSED], timing, state)
    assert (state.status, state.failures_in_row, transitions) == (UP, 2, [])
    state, transition = advance(state, TIMEOUT, 10.0, timing)
    assert state.status is DOWN
    assert transition is not None
    assert (transition.old, transition.new, transition.reason, transition.detail) == (
        UP, DOWN, Reason.TIMEOUT, "after 1 s",
    )  # fmt: skip
    assert (transition.failures_in_row, transition.at, transition.was_since) == (3, 10.0, 1.0)


def test_a_success_resets_the_failure_count() -> None:
    timing = Timing(rise=2, fall=3)
    state, transitions = run([OK, REFUSED, REFUSED, OK, REFUSED, REFUSED], timing)
    assert state.status is UP
    assert [t.new for t in transitions] == [UP]
    assert (state.successes_in_row, state.failures_in_row) == (0, 2)


def test_down_comes_up_after_exactly_rise_successes_in_row() -> None:
    timing = Timing(rise=3, fall=1)
    state, _ = run([REFUSED], timing)
    state, transitions = run([OK, OK, REFUSED, OK, OK], timing, state)
    assert (state.status, state.successes_in_row, transitions) == (DOWN, 2, [])
    state, transition = advance(state, OK, 20.0, timing)
    assert state.status is UP
    assert transition is not None
    assert (transition.old, transition.new, transition.successes_in_row) == (DOWN, UP, 3)
    assert state.since == 20.0


def test_fall_one_and_rise_one_flip_on_every_change() -> None:
    _, transitions = run([OK, REFUSED, REFUSED, OK, OK, REFUSED], Timing(rise=1, fall=1))
    assert [(t.old, t.new, t.at) for t in transitions] == [
        (UNKNOWN, UP, 1.0), (UP, DOWN, 2.0), (DOWN, UP, 4.0), (UP, DOWN, 6.0),
    ]  # fmt: skip


def test_no_transition_keeps_since_and_records_the_last_result() -> None:
    timing = Timing(rise=2, fall=2)
    state, _ = advance(HealthState(), OK, 1.0, timing)
    state, transition = advance(state, TIMEOUT, 7.0, timing)
    assert transition is None
    assert (state.status, state.since, state.last) == (UP, 1.0, TIMEOUT)


def test_transition_log_fields() -> None:
    _, transition = advance(HealthState(since=2.0), TIMEOUT, 4.5, Timing())
    assert transition is not None
    assert transition.log_fields() == {
        "old": "unknown",
        "new": "down",
        "reason": "timeout",
        "detail": "after 1 s",
        "successes_in_row": 0,
        "failures_in_row": 1,
        "after": 2.5,
    }


def test_failure_result_refuses_ok_reason() -> None:
    with pytest.raises(ValueError, match="failure reason"):
        ProbeResult.failure(Reason.OK, 0.0)


def trailing_run(oks: list[bool]) -> int:
    last = oks[-1]
    n = 0
    for ok in reversed(oks):
        if ok != last:
            break
        n += 1
    return n


@given(
    oks=st.lists(st.booleans(), min_size=1, max_size=60),
    rise=st.integers(1, 6),
    fall=st.integers(1, 6),
)
def test_any_result_sequence_obeys_the_invariants(oks: list[bool], rise: int, fall: int) -> None:
    timing = Timing(rise=rise, fall=fall)
    state = HealthState()
    transitions: list[Transition] = []
    for i, ok in enumerate(oks):
        now = float(i)
        result = OK if ok else REFUSED
        before = state
        state, transition = advance(before, result, now, timing)
        seen = oks[: i + 1]
        run_length = trailing_run(seen)

        assert state.status is not UNKNOWN
        assert state.last is result
        assert (state.successes_in_row, state.failures_in_row) == (
            (run_length, 0) if ok else (0, run_length)
        )
        if transition is None:
            assert state.status is before.status
            assert state.since == before.since
        else:
            transitions.append(transition)
            assert transition.old is before.status
            assert transition.new is state.status is (UP if ok else DOWN)
            assert state.since == transition.at == now
            assert transition.was_since == before.since
            if before.status is UP:
                assert state.failures_in_row == fall
            if before.status is DOWN:
                assert state.successes_in_row == rise
        # Hysteresis: a run of `fall` failures (or of `rise` successes) always
        # wins; a shorter run never overturns the other status.
        if not ok and run_length >= fall:
            assert state.status is DOWN
        if ok and run_length >= rise:
            assert state.status is UP
        if state.status is UP and not ok:
            assert run_length < fall
        if state.status is DOWN and ok:
            assert run_length < rise

    assert transitions[0].old is UNKNOWN
    assert transitions[0].new is (UP if oks[0] else DOWN)
    assert all(t.old is not UNKNOWN for t in transitions[1:])
    assert all(a.new is b.old for a, b in itertools.pairwise(transitions))


def weighed(weight: int) -> ProbeResult:
    return ProbeResult.success(0.01, weight=weight)


def test_the_last_reported_weight_stays_through_failures_short_of_fall() -> None:
    """Operators' report: a dynamic-weight check said 7, one probe timed
    out, and the weight jumped to the configured 100 until the next success."""
    timing = Timing(rise=1, fall=3)
    state, _ = run([weighed(7), TIMEOUT], timing)
    assert (state.status, state.weight) == (UP, 7)
    state, _ = run([weighed(7), TIMEOUT, TIMEOUT, OK], timing)
    assert (state.status, state.weight) == (UP, 7)  # a success without a weight keeps it
    state, _ = run([weighed(7), TIMEOUT, weighed(12)], timing)
    assert state.weight == 12


def test_a_weight_ramp_starts_at_the_transition_to_up() -> None:
    state, _ = run([REFUSED, OK, OK], Timing(rise=2, fall=1))
    assert (state.status, state.ramp_start) == (UP, 3.0)
    state, _ = run([REFUSED], Timing(fall=1), state)
    assert (state.status, state.ramp_start) == (DOWN, None)


def test_an_adopted_server_keeps_the_ramp_start_it_was_adopted_with() -> None:
    """Operators' report: with slow_start, a restart ramped every server
    from weight 1 again at its first probe."""
    adopted = HealthState(adopted=True, ramp_start=-30.0)
    state, _ = run([OK], Timing(), adopted)
    assert (state.status, state.since, state.ramp_start) == (UP, 1.0, -30.0)
    state, _ = run([REFUSED, REFUSED, OK], Timing(rise=1, fall=2), adopted)
    assert (state.status, state.ramp_start) == (UP, 3.0)  # it went down: a new ramp


@pytest.mark.parametrize(
    ("results", "logged"),
    [
        ([REFUSED], [True]),
        ([OK, REFUSED, REFUSED], [False, True, False]),
        # A reason is logged the first time the series has it (operator
        # trial, stop 25: alternating reasons logged every other probe).
        ([REFUSED, TIMEOUT, TIMEOUT, REFUSED], [True, True, False, False]),
        ([REFUSED, TIMEOUT, OK, TIMEOUT, REFUSED], [True, True, False, True, True]),
        ([REFUSED] * 12, [n in (1, 10) for n in range(1, 13)]),
    ],
)
def test_a_failure_is_logged_when_a_series_starts_its_reason_is_new_or_at_1_10_100(
    results: list[ProbeResult], logged: list[bool]
) -> None:
    state, seen = HealthState(), []
    for t, result in enumerate(results, start=1):
        after, _ = advance(state, result, float(t), Timing(fall=1000))
        seen.append(failure_worth_logging(state, after))
        state = after
    assert seen == logged


def test_failures_logged_in_a_long_outage_grow_logarithmically() -> None:
    state, count = HealthState(), 0
    for t in range(1, 100_001):
        after, _ = advance(state, REFUSED, float(t), Timing(fall=2))
        count += failure_worth_logging(state, after)
        state = after
    assert count == 6  # 1, 10, 100, 1000, 10000, 100000


def test_a_dead_server_whose_reason_alternates_logs_each_reason_once() -> None:
    """ICMP rate limiting makes a dead host's probes alternate between
    unreachable and timeout: 156-193 lines in 10 minutes in the trial."""
    unreachable = ProbeResult.failure(Reason.UNREACHABLE, 0.0)
    state, logged = HealthState(), []
    for t in range(1, 1001):
        after, _ = advance(state, unreachable if t % 2 else TIMEOUT, float(t), Timing(fall=2))
        if failure_worth_logging(state, after):
            logged.append((t, str(after.last.reason) if after.last else None))
        state = after
    assert logged == [
        (1, "unreachable"),
        (2, "timeout"),
        (10, "timeout"),
        (100, "timeout"),
        (1000, "timeout"),
    ]


def test_initial_up_takes_fall_failures_to_go_down_and_one_success_to_go_up() -> None:
    timing = Timing(rise=3, fall=3, initial="up")
    state, transitions = run([REFUSED, TIMEOUT], timing)
    assert (state.status, state.failures_in_row, transitions) == (UNKNOWN, 2, [])
    state, transitions = run([REFUSED, TIMEOUT, REFUSED], timing)
    assert state.status is DOWN
    assert [(t.old, t.new, t.failures_in_row) for t in transitions] == [(UNKNOWN, DOWN, 3)]
    state, transitions = run([REFUSED, OK], timing)
    assert (state.status, state.ramp_start) == (UP, 2.0)  # a ramp starts at the first pass
    assert [(t.old, t.new) for t in transitions] == [(UNKNOWN, UP)]
    # once decided, `initial` plays no part: down takes `rise` successes
    state, transitions = run([REFUSED, REFUSED, REFUSED, OK, OK], timing)
    assert (state.status, len(transitions)) == (DOWN, 1)
