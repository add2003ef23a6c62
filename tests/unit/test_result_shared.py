"""ProbeResult's details: equal details of separate probes are one string."""

from __future__ import annotations

from director.health.result import ProbeResult, Reason


def formatted(code: int) -> str:
    return f"ECONNREFUSED: Connection refused ({code})"  # a new string each call


def test_equal_failure_details_are_one_string() -> None:
    first = ProbeResult.failure(Reason.REFUSED, 0.001, formatted(111))
    second = ProbeResult.failure(Reason.REFUSED, 0.002, formatted(111))
    assert formatted(111) is not formatted(111)
    assert first.detail == "ECONNREFUSED: Connection refused (111)"
    assert first.detail is second.detail


def test_equal_success_details_are_one_string() -> None:
    first = ProbeResult.success(0.001, detail=f"status {200}")
    second = ProbeResult.success(0.002, detail=f"status {200}")
    assert first.detail == "status 200"
    assert first.detail is second.detail


def test_a_str_subclass_is_kept_as_given() -> None:
    result = ProbeResult.failure(Reason.ERROR, 0.0, Reason.TIMEOUT)
    assert result.detail is Reason.TIMEOUT
