"""What one probe found: up or down, why, how long it took.

Every probe type answers in this one small vocabulary, so that the state
machine, the logs and `directorctl status` never need to know about sockets,
HTTP or processes. Figures that explain a reason ("status 503", "exit 3") go in
`detail`.
"""

from __future__ import annotations

import enum
import sys
from dataclasses import dataclass


class Reason(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"  # an ICMP error came back
    NO_REPLY = "no reply"
    BAD_STATUS = "bad status"
    BAD_BODY = "bad body"
    BAD_REPLY = "bad reply"
    EXIT_STATUS = "exit status"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict, in the vocabulary every probe type shares: up (`ok`) or
    down, the Reason, the server's latency in seconds, and in `detail` the
    figures behind the reason ("status 503")."""

    ok: bool
    reason: Reason
    # Seconds the real server took: a TCP or HTTP(S) verdict on an answer
    # counts the kernel's times (probes/tcp.py, probes/http.py), not the
    # daemon's lag in reading it; other verdicts, the time to them, at most
    # the timeout.
    latency: float
    weight: int | None = None  # asked for by a dynamic-weight exec check
    detail: str = ""
    # The daemon's own shortage (no file descriptor, no memory: EMFILE and
    # the like) made it fail, not the server: no verdict on the server.
    own: bool = False

    @classmethod
    def success(cls, latency: float, *, weight: int | None = None, detail: str = "") -> ProbeResult:
        return cls(True, Reason.OK, latency, weight, _shared(detail) if detail else "")

    @classmethod
    def failure(
        cls, reason: Reason, latency: float, detail: str = "", *, own: bool = False
    ) -> ProbeResult:
        if reason is Reason.OK:
            raise ValueError("a failed probe needs a failure reason, not 'ok'")
        return cls(False, reason, latency, None, _shared(detail), own)


def _shared(detail: str) -> str:
    """The one copy of `detail` (interned): each checked server keeps its last
    result, and 10,000 servers refused, or answering "status 200", then hold
    one string between them, not a copy each that their probes formatted
    (80 bytes a server, issue 8's RSS). An interned string still goes when
    its last holder does."""
    return sys.intern(detail) if type(detail) is str else detail
