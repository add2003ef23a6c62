"""Operations the kernel refuses, and when to try each again.

Pure. A reconcile pass plans its operations, holds back those whose last try
was refused and whose backoff has not run out, sends the rest, and records
each outcome here. A refusal is about one thing in the table (a service, a
destination, the timeouts): the other operations of the pass still go out, so
one real server with a multicast address, or one service whose scheduler the
kernel lacks, never keeps anything else from converging.

Backoff: the first retry after `base` seconds, doubling with every refusal in a
row, never more than `cap` (the daemon's reconcile_interval). An operation
that differs from the one refused (the config changed it) is tried at once.
An operation whose service is being added by a held-back or refused AddService
is skipped too (the kernel would answer "Service not defined"); it is not a
refusal of its own.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from director.ipvs.model import IPAddress, ServiceKey
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Operation,
    SetTimeouts,
)

Subject = tuple[object, ...]
"""What an operation acts on: ("service", key), ("destination", key, address,
port) or ("timeouts",); other operations are their own subject."""


def subject(op: Operation) -> Subject:
    match op:
        case AddService(service) | EditService(service):
            return ("service", service.key)
        case DeleteService(key):
            return ("service", key)
        case AddDestination(key, d) | EditDestination(key, d):
            return ("destination", key, d.address, d.port)
        case DeleteDestination(key, address, port):
            return ("destination", key, address, port)
        case SetTimeouts():
            return ("timeouts",)
    return ("other", op)


def service_of(op: Operation) -> ServiceKey | None:
    match op:
        case AddService(service) | EditService(service):
            return service.key
        case DeleteService(key) | AddDestination(key) | EditDestination(key):
            return key
        case DeleteDestination(key):
            return key
    return None


def table_moved(op: Operation, err: int | None) -> bool:
    """Whether the kernel's answer only says its table was not as the pass
    read it (an add of what exists, an edit or delete of what does not):
    another tool changed it, or the dump skipped or repeated an entry (an
    IPVS dump is no consistent snapshot: ip_vs_genl_dump_services resumes by
    position and never sets NLM_F_DUMP_INTR). Not a refusal: read again.
    Errnos as ip_vs_genl_set_cmd answers them."""
    match op:
        case AddService():
            return err == errno.EEXIST
        case EditService() | DeleteService():
            return err == errno.ESRCH
        case AddDestination():
            return err in (errno.EEXIST, errno.ESRCH)
        case EditDestination() | DeleteDestination():
            return err in (errno.ENOENT, errno.ESRCH)
    return False


@dataclass(frozen=True)
class Refusal:
    """The kernel's refusal of an operation: its answer, how many times in a row,
    and when the operation may be sent again (`retry_at`, seconds on the
    caller's clock). One per subject (`record`)."""

    operation: Operation
    error: str  # the kernel's answer, in ipvsadm's words
    errno: int | None
    first: float  # when it was first refused (the caller's clock, seconds)
    attempts: int  # refusals in a row
    retry_at: float


Refusals = Mapping[Subject, Refusal]


@dataclass(frozen=True)
class Held:
    """A pass's operations as `hold_back` splits them: those to send now, those
    held while their refusal's backoff runs, and those skipped because their
    service's AddService is held."""

    send: tuple[Operation, ...]
    held: tuple[Operation, ...]  # refused before, backoff still running
    skipped: tuple[Operation, ...]  # their service's AddService is held


def hold_back(operations: Sequence[Operation], refusals: Refusals, now: float) -> Held:
    """Split a pass's operations into those to send now and those to hold."""
    if not refusals:
        return Held(tuple(operations), (), ())
    send: list[Operation] = []
    held: list[Operation] = []
    skipped: list[Operation] = []
    unadded: set[ServiceKey] = set()
    for op in operations:
        service = service_of(op)
        if not isinstance(op, AddService) and service in unadded:
            skipped.append(op)
            continue
        refusal = refusals.get(subject(op))
        if refusal is not None and refusal.operation == op and refusal.retry_at > now:
            held.append(op)
            if isinstance(op, AddService):
                unadded.add(op.service.key)
            continue
        send.append(op)
    return Held(tuple(send), tuple(held), tuple(skipped))


def record(
    refusals: Refusals,
    planned: Iterable[Operation],
    sent: Sequence[Operation],
    errors: Sequence[tuple[str, int | None] | None],
    now: float,
    *,
    base: float,
    cap: float,
) -> dict[Subject, Refusal]:
    """The refusals after a pass: `errors[i]` is None when `sent[i]` was
    applied, else (message, errno). Refusals of subjects the pass did not
    plan any more are forgotten (the config or the table moved on); those of
    operations held back are kept as they are. Operations whose service's
    AddService was refused in the same pass are not refusals of their own."""
    # (Subjects are made only where a refusal is or may be: a start's
    # 10,000 operations, all taken, need none.)
    still = {subject(op) for op in planned} if refusals else set()
    result = {s: r for s, r in refusals.items() if s in still}
    failed_adds = {
        op.service.key
        for op, error in zip(sent, errors, strict=True)
        if error is not None and isinstance(op, AddService)
    }
    for op, error in zip(sent, errors, strict=True):
        if error is None:
            if result:
                result.pop(subject(op), None)
            continue
        key = subject(op)
        if not isinstance(op, AddService) and service_of(op) in failed_adds:
            continue
        message, err = error
        previous = result.get(key)
        attempts = 1
        first = now
        if previous is not None and previous.operation == op:
            attempts, first = previous.attempts + 1, previous.first
        result[key] = Refusal(op, message, err, first, attempts, now + backoff(attempts, base, cap))
    # A refusal whose operation was not sent (its service's AddService is
    # held) must not ask for a pass at once, again and again.
    return {
        s: r if r.retry_at > now else replace(r, retry_at=now + base) for s, r in result.items()
    }


def backoff(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after `attempts` refusals in a row: base, 2*base,
    4*base, ... never more than cap."""
    return min(cap, base * float(2 ** min(attempts - 1, 32)))


def logged_at(count: int) -> bool:
    """Whether the `count`th refusal or failure in a row is logged: the 1st,
    10th, 100th... (a long outage logs a few lines, not one a pass)."""
    while count and count % 10 == 0:
        count //= 10
    return count == 1


@dataclass(frozen=True, slots=True)
class Failed:
    """A pass that failed, the `count`th in a row: tried again after
    `delay` seconds (`backoff`), at `retry_at` (the caller's clock)."""

    count: int
    delay: float
    retry_at: float

    @property
    def logged(self) -> bool:
        """At the 1st, 10th, 100th... failure in a row."""
        return logged_at(self.count)

    def fields(self) -> dict[str, object]:
        """The log event's fields for it: failures_in_row, retry_in."""
        return {"failures_in_row": self.count, "retry_in": self.delay}


def failed(before: int, now: float, *, base: float, cap: float) -> Failed:
    """A pass failed after `before` failures in a row (0 after a success)."""
    count = before + 1
    delay = backoff(count, base, cap)
    return Failed(count, delay, now + delay)


class Attempts(Protocol):
    @property
    def attempts(self) -> int: ...
    @property
    def error(self) -> str: ...


K = TypeVar("K")
A = TypeVar("A", bound=Attempts)


def to_log(before: Mapping[K, A], after: Mapping[K, A]) -> list[A]:
    """The refusals of `after` to log: each at its 1st, 10th, 100th...
    attempt, and when the kernel's answer changes; none refused again
    since `before`."""
    logged: list[A] = []
    for key, refusal in after.items():
        previous = before.get(key)
        if previous is not None and previous.attempts == refusal.attempts:
            continue
        if logged_at(refusal.attempts) or previous is None or previous.error != refusal.error:
            logged.append(refusal)
    return logged


def next_retry(refusals: Refusals) -> float | None:
    """The earliest time a held operation may be tried again."""
    return min((r.retry_at for r in refusals.values()), default=None)


def retry_now(refusals: Refusals, now: float) -> dict[Subject, Refusal]:
    """Every held operation may go at the next pass (a reload or an
    operator's change: what was refused may be accepted now)."""
    return {s: replace(r, retry_at=min(r.retry_at, now)) for s, r in refusals.items()}


def describe_subject(key: Subject) -> tuple[ServiceKey | None, IPAddress | None, int | None]:
    """(service, address, port) of a subject, for status and logs."""
    if key and key[0] == "service":
        return key[1], None, None  # type: ignore[return-value]
    if key and key[0] == "destination":
        return key[1], key[2], key[3]  # type: ignore[return-value]
    return None, None, None
