"""Rise/fall hysteresis: when a series of probe results turns a server up or down.

Pure: the caller supplies the time and the results, and logs the transitions.
The first result after start decides at once, so that a restarted daemon
neither keeps a dead server in service nor holds back a live one for `rise`
intervals; except that a server adopted in service from the kernel's table,
or one whose check has `initial = "up"` (in service before its first probe),
needs `fall` failures in a row to be decided down. After that, an up server
goes down after `fall` failures in a row and a down server comes up after
`rise` successes in a row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from director.health.result import ProbeResult, Reason
from director.health.spec import Timing


class Health(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class HealthState:
    """One real server's health as its probe results made it (`advance`): the
    status, the runs of successes and failures, and what the weight ramp and a
    dynamic weight hang on. Times are seconds on the caller's clock."""

    status: Health = Health.UNKNOWN
    successes_in_row: int = 0
    failures_in_row: int = 0
    since: float = 0.0  # when `status` was entered, on the caller's clock
    last: ProbeResult | None = None
    # Found in service when the daemon started: while UNKNOWN, it takes `fall`
    # failures in a row, not one, to decide DOWN (one slow probe during a
    # restart must not pull a live server).
    adopted: bool = False
    # When the weight ramp (slow start) of the current UP period began: the
    # time of the transition to UP, or for an adopted server the time its
    # ramp would have begun to reach the weight found in the kernel, so that a
    # restart does not ramp a server again from weight 1.
    ramp_start: float | None = None
    # The last weight a successful dynamic-weight probe reported; it stays
    # through failed probes (fewer than `fall` do not make a server down).
    weight: int | None = None
    probed_at: float | None = None  # when `last` came, on the caller's clock
    # The reasons of the current run of failures, one bit each (REASON_BITS):
    # a dead server whose reason alternates (unreachable, timeout, as ICMP
    # rate limiting makes it) logs each reason once, not every other probe.
    failure_reasons: int = 0


# One bit for each Reason, for HealthState.failure_reasons.
REASON_BITS = {reason: 1 << i for i, reason in enumerate(Reason)}


@dataclass(frozen=True)
class Transition:
    """A change of one server's health (`advance`): the probe result that made it
    and the runs at that moment; `log_fields` for the event that reports it."""

    old: Health
    new: Health
    at: float
    was_since: float  # when `old` was entered
    reason: Reason
    detail: str
    successes_in_row: int
    failures_in_row: int

    def log_fields(self) -> dict[str, object]:
        return {
            "old": str(self.old),
            "new": str(self.new),
            "reason": str(self.reason),
            "detail": self.detail,
            "successes_in_row": self.successes_in_row,
            "failures_in_row": self.failures_in_row,
            "after": round(self.at - self.was_since, 3),
        }


def advance(
    state: HealthState, result: ProbeResult, now: float, timing: Timing
) -> tuple[HealthState, Transition | None]:
    if result.ok:
        successes, failures, reasons = state.successes_in_row + 1, 0, 0
    else:
        successes, failures = 0, state.failures_in_row + 1
        reasons = state.failure_reasons | REASON_BITS[result.reason]
    new_status = _next_status(state, result.ok, successes, failures, timing)
    weight = result.weight if result.ok and result.weight is not None else state.weight
    if new_status is state.status:
        # The constructor, not replace(): this runs for every probe.
        counted = HealthState(
            state.status, successes, failures, state.since, result, state.adopted,
            state.ramp_start, weight, now, reasons,
        )  # fmt: skip
        return counted, None
    transition = Transition(
        old=state.status,
        new=new_status,
        at=now,
        was_since=state.since,
        reason=result.reason,
        detail=result.detail,
        successes_in_row=successes,
        failures_in_row=failures,
    )
    ramp_start = None
    if new_status is Health.UP:
        adopted = state.adopted and state.status is Health.UNKNOWN
        ramp_start = state.ramp_start if adopted and state.ramp_start is not None else now
    after = HealthState(
        new_status, successes, failures, now, result, state.adopted, ramp_start, weight, now,
        reasons,
    )  # fmt: skip
    return after, transition


def failure_worth_logging(before: HealthState, after: HealthState) -> bool:
    """Whether a failed probe deserves a log line: the first of a series,
    the first of the series with its reason (two reasons that alternate log
    once each), and the 10th, 100th, 1000th... in a row. 500 servers down at
    a 1 s interval then make a few lines each, not 500 a second for
    journald to drop."""
    last = after.last
    if last is None or last.ok:
        return False
    count = after.failures_in_row
    if count == 1 or not before.failure_reasons & REASON_BITS[last.reason]:
        return True
    while count % 10 == 0:
        count //= 10
    return count == 1


def _next_status(
    state: HealthState, ok: bool, successes: int, failures: int, timing: Timing
) -> Health:
    status = state.status
    if status is Health.UNKNOWN:
        if ok:
            return Health.UP
        held = state.adopted or timing.initial == "up"  # in service unchecked
        return Health.DOWN if not held or failures >= timing.fall else Health.UNKNOWN
    if status is Health.UP and failures >= timing.fall:
        return Health.DOWN
    if status is Health.DOWN and successes >= timing.rise:
        return Health.UP
    return status
