"""Refused operations: held back with a doubling backoff up to the cap, never
holding back anything else, forgotten when no longer planned."""

from __future__ import annotations

import errno
from ipaddress import ip_address

import pytest

from director.ipvs.model import Destination, Protocol, Service, ServiceKey, Timeouts
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    EditDestination,
    Operation,
    SetTimeouts,
)
from director.refusals import Refusal, backoff, hold_back, next_retry, record, retry_now, subject

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
OTHER = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
MULTICAST = Destination(ip_address("224.0.0.5"), 80, weight=1)
GOOD = Destination(ip_address("10.0.1.1"), 80, weight=1)
ADD_BAD = AddDestination(VIP, MULTICAST)
ADD_GOOD = AddDestination(VIP, GOOD)
EINVAL = ("Invalid operation.  Possibly wrong module version, address not unicast, ...", 22)
NO_SCHEDULER = ("Scheduler or persistence engine not found", errno.ENOENT)


def test_backoff_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff(n, 1.0, 5.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert backoff(10_000, 1.0, 30.0) == 30.0


def test_a_refused_destination_is_held_back_and_the_rest_still_goes() -> None:
    """Operators' report: one real server with a multicast address made every
    pass fail and retry at once (15,000 passes in 3 s)."""
    planned: list[Operation] = [ADD_BAD, ADD_GOOD]
    refusals = record({}, planned, planned, [EINVAL, None], 10.0, base=1.0, cap=5.0)
    assert list(refusals) == [subject(ADD_BAD)]
    assert refusals[subject(ADD_BAD)].retry_at == 11.0
    split = hold_back([ADD_BAD, EditDestination(VIP, GOOD)], refusals, 10.5)
    assert split.held == (ADD_BAD,)
    assert split.send == (EditDestination(VIP, GOOD),)
    assert hold_back([ADD_BAD], refusals, 11.0).send == (ADD_BAD,)


def test_retries_come_at_growing_intervals_up_to_the_cap() -> None:
    refusals: dict[tuple[object, ...], Refusal] = {}
    now, tries = 0.0, []
    while now < 60.0:
        split = hold_back([ADD_BAD], refusals, now)
        if split.send:
            tries.append(now)
            refusals = record(refusals, [ADD_BAD], split.send, [EINVAL], now, base=1.0, cap=5.0)
        now = next_retry(refusals) or now + 1.0
    assert tries[:6] == [0.0, 1.0, 3.0, 7.0, 12.0, 17.0]
    assert len(tries) == 14
    assert refusals[subject(ADD_BAD)].attempts == 14


def test_a_changed_operation_is_tried_at_once() -> None:
    refusals = record({}, [ADD_BAD], [ADD_BAD], [EINVAL], 0.0, base=1.0, cap=5.0)
    other = AddDestination(VIP, Destination(ip_address("224.0.0.5"), 80, weight=9))
    assert hold_back([other], refusals, 0.1).send == (other,)


def test_a_refusal_no_longer_planned_is_forgotten_and_a_success_clears_it() -> None:
    refusals = record({}, [ADD_BAD], [ADD_BAD], [EINVAL], 0.0, base=1.0, cap=5.0)
    assert record(refusals, [], [], [], 1.0, base=1.0, cap=5.0) == {}
    assert record(refusals, [ADD_BAD], [ADD_BAD], [None], 1.0, base=1.0, cap=5.0) == {}


def test_operations_on_a_service_whose_add_is_refused_are_not_refusals_of_their_own() -> None:
    add = AddService(Service(VIP, "nosuch"))
    planned: list[Operation] = [add, ADD_GOOD, AddService(Service(OTHER, "rr"))]
    errors = [NO_SCHEDULER, ("Service not defined", errno.ESRCH), None]
    refusals = record({}, planned, planned, errors, 0.0, base=1.0, cap=5.0)
    assert list(refusals) == [subject(add)]
    split = hold_back(planned, refusals, 0.5)
    assert split.held == (add,)
    assert split.skipped == (ADD_GOOD,)
    assert split.send == (AddService(Service(OTHER, "rr")),)


def test_a_held_refusal_never_asks_for_a_pass_in_the_past() -> None:
    add = AddService(Service(VIP, "nosuch"))
    refusals = record(
        {}, [add, ADD_BAD], [add, ADD_BAD], [NO_SCHEDULER, EINVAL], 0.0, base=1, cap=5
    )
    # The destination's refusal is about a service that was not added.
    assert list(refusals) == [subject(add)]
    stale = {**refusals, subject(ADD_BAD): Refusal(ADD_BAD, "x", 22, 0.0, 1, 0.5)}
    later = record(stale, [add, ADD_BAD], [], [], 3.0, base=1.0, cap=5.0)
    assert all(r.retry_at > 3.0 for r in later.values())


def test_retry_now_lets_every_held_operation_go_at_the_next_pass() -> None:
    refusals = record({}, [ADD_BAD], [ADD_BAD], [EINVAL], 0.0, base=4.0, cap=5.0)
    assert hold_back([ADD_BAD], retry_now(refusals, 1.0), 1.0).send == (ADD_BAD,)


@pytest.mark.parametrize(
    ("op", "key"),
    [
        (AddService(Service(VIP, "rr")), ("service", VIP)),
        (DeleteDestination(VIP, GOOD.address, 80), ("destination", VIP, GOOD.address, 80)),
        (SetTimeouts(Timeouts(1, 2, 3)), ("timeouts",)),
    ],
)
def test_subjects_name_what_an_operation_acts_on(op: Operation, key: tuple[object, ...]) -> None:
    assert subject(op) == key
