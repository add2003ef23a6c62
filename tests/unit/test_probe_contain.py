"""A probe can only fail: whatever a probe raises becomes a failed result,
and the bug is logged once in a while (director/health/probes/contain.py)."""

from __future__ import annotations

from ipaddress import ip_address

import httpx
import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

import director.health.probes as probes
from director.health.probes import Prober
from director.health.probes.contain import BUG_LOG_INTERVAL, BugLog, check_type, describe
from director.health.result import Reason
from director.health.spec import Check, ExecCheck, HttpCheck, TcpCheck, UdpCheck

HERE = ip_address("127.0.0.1")


def raising(exc: BaseException):  # type: ignore[no-untyped-def]
    async def probe(*_: object) -> None:
        await trio.lowlevel.checkpoint()
        raise exc

    return probe


@pytest.mark.parametrize(
    ("exc", "detail"),
    [
        (httpx.DecodingError("Error -3 while decompressing data"), "DecodingError: Error -3 while decompressing data"),
        (UnicodeError("encoding with 'idna' codec failed"), "UnicodeError: encoding with 'idna' codec failed"),
        (ValueError("bad"), "ValueError: bad"),
        (KeyError("k"), "KeyError: 'k'"),
        (ExceptionGroup("x", [RuntimeError("y")]), "ExceptionGroup: x (1 sub-exception)"),
        (AssertionError(), "AssertionError"),
    ],
)  # fmt: skip
async def test_whatever_a_probe_raises_is_a_failed_result(
    monkeypatch: pytest.MonkeyPatch, exc: Exception, detail: str
) -> None:
    monkeypatch.setattr(probes, "probe_http", raising(exc))
    with capture_logs() as logs:
        result = await Prober()(HttpCheck(), HERE, 80)
    assert (result.ok, result.reason, result.detail) == (False, Reason.ERROR, detail)
    [event] = logs
    assert event["event"] == "probe_error"
    assert (event["log_level"], event["check"], event["error"], event["unlogged"]) == ("error", "http", detail, 0)  # fmt: skip
    assert event["exc_info"] is exc  # rendered as its traceback by the log's format_exc_info


@pytest.mark.parametrize(
    ("name", "check"),
    [("probe_tcp", TcpCheck()), ("probe_udp", UdpCheck()), ("probe_exec", ExecCheck(("true",))), ("probe_http", HttpCheck(tls=True))],
)  # fmt: skip
async def test_every_probe_type_is_contained(
    monkeypatch: pytest.MonkeyPatch, name: str, check: Check
) -> None:
    monkeypatch.setattr(probes, name, raising(RuntimeError("bug")))
    with capture_logs() as logs:
        result = await Prober()(check, HERE, 80)
    assert (result.reason, result.detail) == (Reason.ERROR, "RuntimeError: bug")
    assert [e["check"] for e in logs] == [check_type(check)]


async def test_cancellation_is_not_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "probe_tcp", raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        await Prober()(TcpCheck(), HERE, 80)
    with trio.CancelScope() as scope:
        scope.cancel()
        await Prober()(TcpCheck(), HERE, 80)
    assert scope.cancelled_caught


async def test_the_latency_of_a_contained_failure(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    async def slow_bug(*_: object) -> None:
        await trio.sleep(1.5)
        raise ValueError("late")

    monkeypatch.setattr(probes, "probe_tcp", slow_bug)
    with capture_logs():
        result = await Prober()(TcpCheck(), HERE, 80)
    assert (result.reason, result.latency) == (Reason.ERROR, 1.5)


async def test_a_bug_is_logged_once_per_interval_per_check_and_exception_type(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(probes, "probe_http", raising(ValueError("v")))
    monkeypatch.setattr(probes, "probe_tcp", raising(ValueError("v")))
    prober = Prober()
    with capture_logs() as logs:
        for _ in range(100):
            await prober(HttpCheck(), HERE, 80)
            await prober(TcpCheck(), HERE, 80)
            await trio.sleep(1)
        monkeypatch.setattr(probes, "probe_http", raising(TypeError("t")))
        await prober(HttpCheck(), HERE, 80)
        await trio.sleep(BUG_LOG_INTERVAL)
        monkeypatch.setattr(probes, "probe_http", raising(ValueError("v")))
        await prober(HttpCheck(), HERE, 80)
    seen = [(e["check"], e["error"], e["unlogged"]) for e in logs]
    assert seen == [
        ("http", "ValueError: v", 0),
        ("tcp", "ValueError: v", 0),
        ("http", "TypeError: t", 0),
        ("http", "ValueError: v", 99),
    ]


def test_bug_log_admits_once_per_interval() -> None:
    bugs = BugLog(interval=10.0)
    key = ("http", "ValueError")
    assert [bugs.admit(key, t) for t in (0.0, 1.0, 9.9, 10.0, 15.0, 25.0)] == [0, None, None, 2, None, 1]  # fmt: skip
    assert bugs.admit(("tcp", "ValueError"), 15.0) == 0


def test_describe_bounds_the_message() -> None:
    assert describe(ValueError("x" * 1000)) == "ValueError: " + "x" * 200 + "..."
    assert describe(trio.TooSlowError()) == "TooSlowError"


async def test_the_log_event_renders_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probes, "probe_udp", raising(ValueError("boom")))
    with capture_logs() as logs:
        await Prober()(UdpCheck(), HERE, 53)
    [event] = logs
    assert (event["check"], event["address"], event["port"]) == ("udp", "127.0.0.1", 53)
    # The processor director.log configures turns exc_info into the text.
    rendered = structlog.processors.format_exc_info(None, "error", dict(event))
    assert "Traceback" in rendered["exception"]
    assert "ValueError: boom" in rendered["exception"]


async def test_a_url_httpx_refuses_is_contained() -> None:
    # Not monkeypatched: a check built in code with a path --check refuses.
    with capture_logs() as logs:
        result = await Prober()(HttpCheck(path="/\r\nX-Injected: 1"), HERE, 80)
    assert (result.ok, result.reason) == (False, Reason.ERROR)
    assert result.detail.startswith("InvalidURL: Invalid non-printable ASCII character in URL")
    assert [e["event"] for e in logs] == ["probe_error"]
