from __future__ import annotations

import errno
import ssl

import httpx
import pytest
import trio
import trio.testing

from director.health.probes.attempt import (
    ANSWER,
    BODY,
    CONNECT,
    HEAD,
    TLS,
    own_shortage,
    probe_attempt,
    timed_out,
    translate,
)
from director.health.result import Reason


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "reason", "detail"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), Reason.REFUSED, "ECONNREFUSED: Connection refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), Reason.UNREACHABLE, "EHOSTUNREACH: No route to host"),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), Reason.UNREACHABLE, "ENETUNREACH: Network is unreachable"),
        # Trial report (stop 30): a blackhole route on the director was "error".
        (OSError(errno.EINVAL, "Invalid argument"), Reason.UNREACHABLE, "EINVAL: Invalid argument"),
        (OSError(errno.EACCES, "Permission denied"), Reason.UNREACHABLE, "EACCES: Permission denied"),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), Reason.TIMEOUT, "ETIMEDOUT: Connection timed out"),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), Reason.ERROR, "ECONNRESET: Connection reset by peer"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/bin/x"), Reason.ERROR, "ENOENT: No such file or directory: /bin/x"),
        (trio.TooSlowError(), Reason.TIMEOUT, "no verdict within 1.5 s"),
        (httpx.ReadTimeout("read"), Reason.TIMEOUT, "no verdict within 1.5 s"),
        (wrapped(OSError(errno.EHOSTUNREACH, "No route to host"), httpx.ConnectError("x")), Reason.UNREACHABLE, "EHOSTUNREACH: No route to host"),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), Reason.BAD_REPLY, "Server disconnected without sending a response."),
        (wrapped(ssl.SSLError(1, "[SSL] wrong version number"), httpx.ConnectError("y")), Reason.ERROR, "tls: [SSL] wrong version number"),
        (trio.BrokenResourceError(), Reason.ERROR, "connection broken"),
    ],
)  # fmt: skip
def test_translate(exc: BaseException, reason: Reason, detail: str) -> None:
    assert translate(exc, 1.5) == (reason, detail)


async def test_attempt_turns_a_network_failure_into_a_result() -> None:
    with probe_attempt(5.0) as attempt:
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
    assert (attempt.result.ok, attempt.result.reason) == (False, Reason.REFUSED)


async def test_attempt_lets_programming_errors_through() -> None:
    with pytest.raises(KeyError), probe_attempt(5.0):
        raise KeyError("bug")


async def test_attempt_bounds_the_body_by_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with probe_attempt(4.0) as attempt:
        await trio.sleep(10)
        attempt.succeed()
    assert (attempt.result.reason, attempt.result.latency) == (Reason.TIMEOUT, 4.0)


async def test_outer_cancellation_is_not_a_probe_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.move_on_after(1.0) as outer:
        with probe_attempt(4.0) as attempt:
            await trio.sleep(10)
    assert outer.cancelled_caught
    with pytest.raises(RuntimeError, match="without a verdict"):
        _ = attempt.result


async def test_attempt_records_latency(autojump_clock: trio.testing.MockClock) -> None:
    with probe_attempt(4.0) as attempt:
        await trio.sleep(1.25)
        attempt.succeed(weight=3, detail="fine")
    assert (attempt.result.ok, attempt.result.latency, attempt.result.weight, attempt.result.detail) == (True, 1.25, 3, "fine")  # fmt: skip


def test_translate_looks_into_trios_connect_error_group() -> None:
    group = ExceptionGroup(
        "all attempts failed", [ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")]
    )
    failure = wrapped(wrapped(group, OSError("all attempts failed")), httpx.ConnectError("z"))
    assert translate(failure, 1.0) == (Reason.REFUSED, "ECONNREFUSED: Connection refused")


async def test_an_attempt_without_deadline_is_bounded_by_its_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """deadline=False: no fail_after (the probe bounds its own waits); its
    failures are translated as ever."""
    with probe_attempt(1.0, deadline=False) as attempt:
        await trio.sleep(3.0)
        attempt.succeed()
    assert (attempt.result.ok, attempt.result.latency) == (True, 3.0)
    with probe_attempt(1.0, deadline=False) as attempt:
        raise trio.TooSlowError
    assert (attempt.result.reason, attempt.result.detail) == (Reason.TIMEOUT, "no verdict within 1 s")  # fmt: skip


@pytest.mark.parametrize(
    ("step", "timeout", "handshake", "status", "detail"),
    [
        (CONNECT, 2.0, 0.0, None, "no connection within 2 s"),
        (TLS, 2.0, 0.0012, None, "connected in 1.2 ms; no TLS handshake within 2 s"),
        (ANSWER, 0.5, 0.0000412, None, "connected in 0.0412 ms; no answer within 0.5 s of the request"),
        (HEAD, 2.0, 0.25, None, "connected in 250 ms; the head incomplete within 2 s of the request"),
        (BODY, 3.0, 1.5, 200, "connected in 1.5 s; status 200, the body incomplete within 3 s of the request"),
        (ANSWER, 2.0, 0.9996, None, "connected in 1 s; no answer within 2 s of the request"),
    ],
)  # fmt: skip
def test_a_timeout_says_what_timed_out(
    step: str, timeout: float, handshake: float, status: int | None, detail: str
) -> None:
    assert timed_out(step, timeout, handshake, status) == detail


async def test_a_timeouts_latency_is_its_timeout_whatever_its_cleanup_took(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 35: an exec check's timeout said 2230.1 ms for a 2 s timeout,
    the time to kill and reap its group counted in."""
    with probe_attempt(1.0) as attempt:
        try:
            await trio.sleep(10)
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.3)  # the cleanup past the deadline
    assert (attempt.result.reason, attempt.result.latency) == (Reason.TIMEOUT, 1.0)
    assert attempt.result.detail == "no verdict within 1 s"


@pytest.mark.parametrize(
    ("exc", "own"),
    [
        (OSError(errno.EMFILE, "Too many open files"), True),
        (OSError(errno.ENFILE, "Too many open files in system"), True),
        (OSError(errno.ENOBUFS, "No buffer space available"), True),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), True),
        (wrapped(OSError(errno.EMFILE, "Too many open files"), httpx.ConnectError("x")), True),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), False),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), False),
        (trio.TooSlowError(), False),
    ],
)  # fmt: skip
async def test_the_daemons_own_shortage_is_marked_own(exc: BaseException, own: bool) -> None:
    """Trial 37 (HIGH): an exec check failed with EMFILE (the daemon's
    open-file limit) took an up server out. Such a failure is `own`, which
    the checker does not count against the server."""
    with probe_attempt(1.5) as attempt:
        raise exc
    assert attempt.result.ok is False and attempt.result.own is own
    assert own_shortage(exc) is own
