"""Rise/fall hysteresis: when a series of probe results turns a server up or down.

Pure: the caller supplies the time and the results, and logs the transitions.
The first result after start decides at once, so that a restarted daemon
neither keeps a dead server in service nor holds back a live one for `rise`
intervals; except that a server adopted in service from the kernel's table
needs `fall` failures in a row to be decided down. After that, an up server
goes down after `fall` failures in a row and a down server comes up after
`rise` successes in a row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from director.health.result import ProbeResult, Reason
from director.health.spec import Timing


class Health(enum.StrEnum):
    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class HealthState:
    status: Health = Health.UNKNOWN
    successes_in_row: int = 0
    failures_in_row: int = 0
    since: float = 0.0  # when `status` was entered, on the caller's clock
    last: ProbeResult | None = None
    # Found in service when the daemon started: while UNKNOWN, it takes `fall`
    # failures in a row, not one, to decide DOWN (one slow probe during a
    # restart must not pull a live server).
    adopted: bool = False


@dataclass(frozen=True)
class Transition:
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
        successes, failures = state.successes_in_row + 1, 0
    else:
        successes, failures = 0, state.failures_in_row + 1
    new_status = _next_status(state, result.ok, successes, failures, timing)
    counted = replace(state, successes_in_row=successes, failures_in_row=failures, last=result)
    if new_status is state.status:
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
    return replace(counted, status=new_status, since=now), transition


def _next_status(
    state: HealthState, ok: bool, successes: int, failures: int, timing: Timing
) -> Health:
    status = state.status
    if status is Health.UNKNOWN:
        if ok:
            return Health.UP
        return Health.DOWN if not state.adopted or failures >= timing.fall else Health.UNKNOWN
    if status is Health.UP and failures >= timing.fall:
        return Health.DOWN
    if status is Health.DOWN and successes >= timing.rise:
        return Health.UP
    return status
