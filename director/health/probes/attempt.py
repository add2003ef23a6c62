"""The one seam where foreign exceptions become probe results.

A probe runs its I/O inside `probe_attempt(timeout)`: the attempt bounds it by
the check's timeout, times it, and turns whatever the network, TLS, httpx or
trio raise into a failed `ProbeResult`. Anything else (a bug) propagates, to
the `Prober`, which contains it (contain.py). A probe that bounds its own
waits (http.py: the timeout is the server's time, not the daemon's) enters
it with `deadline=False`.

A timeout's detail says what did not come within the timeout, in the words
`timed_out` gives: "no connection within 2 s" (no SYN-ACK), "connected in
1.2 ms; no answer within 2 s of the request", ... A probe that cannot say
(udp, dns, exec) keeps "no verdict within 2 s".

httpx is not imported here: its exceptions are looked for only once something
has imported it (an exception of a module never loaded cannot exist), so a
daemon that checks TCP alone never loads it.
"""

from __future__ import annotations

import errno
import ssl
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from director.health.result import ProbeResult, Reason

_NETWORK_FAILURES: tuple[type[BaseException], ...] = (
    OSError,
    trio.TooSlowError,
    trio.BrokenResourceError,
)

_REASON_FOR_ERRNO = {
    errno.ECONNREFUSED: Reason.REFUSED,
    errno.EHOSTUNREACH: Reason.UNREACHABLE,
    errno.ENETUNREACH: Reason.UNREACHABLE,
    errno.EHOSTDOWN: Reason.UNREACHABLE,
    # A route of type blackhole (EINVAL) or prohibit (EACCES) on the director
    # itself answers connect(2) and sendto(2) so (ip-route(8)): unreachable,
    # as a route of type unreachable is (EHOSTUNREACH).
    errno.EINVAL: Reason.UNREACHABLE,
    errno.EACCES: Reason.UNREACHABLE,
    errno.ETIMEDOUT: Reason.TIMEOUT,
}


class Attempt:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.started = trio.current_time()
        self._result: ProbeResult | None = None

    def elapsed(self) -> float:
        return trio.current_time() - self.started

    def succeed(self, *, weight: int | None = None, detail: str = "") -> None:
        self._result = ProbeResult.success(self.elapsed(), weight=weight, detail=detail)

    def fail(
        self, reason: Reason, detail: str = "", *, latency: float | None = None, own: bool = False
    ) -> None:
        """`latency` (seconds): the time since the start by default; `own`:
        the daemon's shortage, not the server (ProbeResult.own)."""
        elapsed = self.elapsed() if latency is None else latency
        self._result = ProbeResult.failure(reason, elapsed, detail, own=own)

    @property
    def result(self) -> ProbeResult:
        if self._result is None:
            raise RuntimeError("probe attempt finished without a verdict")
        return self._result


@contextmanager
def probe_attempt(timeout: float, *, deadline: bool = True) -> Iterator[Attempt]:
    """The attempt, bounded by `timeout` (trio.fail_after) unless `deadline`
    is False: then the probe bounds its own waits."""
    attempt = Attempt(timeout)
    try:
        if deadline:
            with trio.fail_after(timeout):
                yield attempt
        else:
            yield attempt
    except _network_failures() as exc:
        reason, detail = translate(exc, timeout)
        # A timeout's latency is its timeout, not the time to its end: the
        # cleanup past the deadline (an exec check's group killed and
        # reaped) is the daemon's.
        attempt.fail(
            reason,
            detail,
            latency=timeout if reason is Reason.TIMEOUT else None,
            own=own_shortage(exc),
        )


# What a probe waited for when its time ran out (`timed_out`'s `step`).
CONNECT = "connect"  # the SYN-ACK
TLS = "tls"  # the end of the TLS handshake
ANSWER = "answer"  # the first bytes of an answer to the request
HEAD = "head"  # the rest of the answer's head (some of it came)
BODY = "body"  # the rest of the body (expect_body)


def timed_out(step: str, timeout: float, handshake: float = 0.0, status: int | None = None) -> str:
    """A timeout's detail: what did not come within `timeout` (seconds),
    after a TCP handshake of `handshake` seconds once connected."""
    within = f"{timeout:g} s"
    if step == CONNECT:
        return f"no connection within {within}"
    if step == TLS:
        what = f"no TLS handshake within {within}"
    elif step == ANSWER:
        what = f"no answer within {within} of the request"
    elif step == HEAD:
        what = f"the head incomplete within {within} of the request"
    else:
        what = f"status {status}, the body incomplete within {within} of the request"
    return f"connected in {duration(handshake)}; {what}"


def duration(seconds: float) -> str:
    """Seconds as an operator reads them: "1.2 ms", "0.041 ms", "1.5 s"."""
    ms = seconds * 1e3
    return f"{ms:.3g} ms" if ms < 999.5 else f"{seconds:.3g} s"


def translate(exc: BaseException, timeout: float) -> tuple[Reason, str]:
    """Reason and detail for a network failure, looking through wrapped causes."""
    chain = list(_causes(exc))
    httpx = sys.modules.get("httpx")
    timeouts = trio.TooSlowError if httpx is None else (trio.TooSlowError, httpx.TimeoutException)
    if any(isinstance(e, timeouts) for e in chain):
        return Reason.TIMEOUT, f"no verdict within {timeout:g} s"
    # Like httpx's: an SSLError exists only once something imported ssl (the
    # daemon's ssl is a stand-in until an HTTPS check uses it).
    tls = sys.modules.get("ssl")
    if tls is not None:
        for e in chain:
            if isinstance(e, tls.SSLError):
                return Reason.ERROR, f"tls: {_describe_tls_error(e)}"
    for e in chain:
        if isinstance(e, OSError) and e.errno is not None:
            return _REASON_FOR_ERRNO.get(e.errno, Reason.ERROR), _describe_os_error(e)
    if httpx is not None and isinstance(exc, httpx.ProtocolError):
        return Reason.BAD_REPLY, str(exc) or type(exc).__name__
    if any(isinstance(e, trio.BrokenResourceError) for e in chain):
        return Reason.ERROR, "connection broken"
    return Reason.ERROR, str(exc) or type(exc).__name__


# What the daemon itself ran short of, not the server: out of file
# descriptors (its own, or the system's), of buffer space, of memory.
OWN_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def own_shortage(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) is the daemon's own shortage
    (OWN_ERRNOS): a probe it fails gives no verdict on the server."""
    return any(isinstance(e, OSError) and e.errno in OWN_ERRNOS for e in _causes(exc))


def _network_failures() -> tuple[type[BaseException], ...]:
    """What probe_attempt turns into a failed result: httpx's transport errors
    too once httpx is loaded (evaluated only when an exception is raised)."""
    httpx = sys.modules.get("httpx")
    return _NETWORK_FAILURES if httpx is None else (*_NETWORK_FAILURES, httpx.TransportError)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, what it wraps, and the members of any group (trio's
    happy-eyeballs connect raises a group of the per-address errors)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        wrapped = current.__cause__ or current.__context__
        if wrapped is not None:
            pending.append(wrapped)


def _describe_tls_error(exc: ssl.SSLError) -> str:
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        # Python's own text: "TLS/SSL connection has been closed (EOF)
        # (_ssl.c:992)".
        return "the server closed the connection before the TLS handshake ended (no TLS on this port?)"  # fmt: skip
    for attribute in ("verify_message", "reason", "strerror"):
        text = getattr(exc, attribute, None)
        if text:
            if attribute == "reason" and text == "WRONG_VERSION_NUMBER":
                # OpenSSL's reason when the first bytes are no TLS record
                # (an HTTP server's "HTTP/1.1 400" among them).
                return f"{text} (the server's first bytes are not TLS: plain HTTP on this port?)"
            return str(text)
    return str(exc)


def _describe_os_error(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    text = f"{name}: {exc.strerror}" if exc.strerror else name
    return f"{text}: {exc.filename}" if exc.filename else text
