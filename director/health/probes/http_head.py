"""The HTTP probe's sans-IO core: the request it sends, and what the head of
the answer says, with h11 (httpx's HTTP/1.1 engine) as the only parser.

Shared by the two ways a probe speaks HTTP: the task that awaits a stream
(http.py: HTTPS, and checks that read the body) and the exchanges driven by
one epoll set (http_exchange.py: plain HTTP judged on its head).
"""

from __future__ import annotations

import ast
import functools
import json
import re

import h11
import httpx

from director.health.result import Reason
from director.health.spec import HttpCheck
from director.ipvs.model import IPAddress, endpoint

# Bytes of header fields (names, values, ": " and CRLF): HAProxy relays no more
# than its tune.bufsize (16 KiB) and nginx than proxy_buffer_size (4 or 8 KiB).
MAX_HEADER = 32 << 10
# An incomplete event (status line and header section, a chunk header) h11
# buffers before it refuses the reply: httpcore's h11 limit, as before.
MAX_INCOMPLETE_EVENT = 100 << 10
READ_SIZE = 64 << 10
# Interim (1xx) responses before the final one: a server sends one or two
# (100 Continue, 103 Early Hints); h11 and httpcore take any number, and a
# stream of them, each a complete event, never meets h11's limit above.
MAX_INTERIM = 8
USER_AGENT = "director-health-check"
DISCONNECTED = "Server disconnected without sending a response."  # httpcore's words
# Bytes of a reply a detail quotes (its first bytes, a line h11 refused).
SHOWN = 32
_DEFAULT_PORT = {False: 80, True: 443}
_EMPTY_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})  # sent with Content-Length: 0

__all__ = [
    "DISCONNECTED",
    "MAX_HEADER",
    "MAX_INCOMPLETE_EVENT",
    "MAX_INTERIM",
    "READ_SIZE",
    "SHOWN",
    "USER_AGENT",
    "Connection",
    "head_failure",
    "new_connection",
    "next_response",
    "quoted",
    "receive",
    "refusal",
    "request",
    "request_for",
    "url_for",
]


def request_for(check: HttpCheck, address: IPAddress, port: int) -> h11.Request:
    """The request a probe sends, as httpx sent it: the method in capitals,
    the path quoted by httpx's URL (a space as %20, non-ASCII as UTF-8
    escapes, a fragment left out), Host the check's host (bracketed when an
    IPv6 literal, without a port) or the address with the port unless it is
    the scheme's default; raises h11.LocalProtocolError for a method or path
    HTTP cannot carry, httpx.InvalidURL for a path no URL holds (one with a
    control character, which the config refuses: left to the Prober, which
    contains it as a bug, as before)."""
    if check.host is not None:
        host = f"[{check.host}]" if ":" in check.host else check.host
    elif port == _DEFAULT_PORT[check.tls]:
        host = f"[{address}]" if address.version == 6 else str(address)
    else:
        host = endpoint(address, port)
    headers = [
        ("Host", host),
        ("Accept", "*/*"),
        ("Accept-Encoding", "identity"),  # a health check never needs compression
        ("Connection", "close"),
        ("User-Agent", USER_AGENT),
    ]
    if check.method.upper() in _EMPTY_BODY_METHODS:
        headers.append(("Content-Length", "0"))
    target = httpx.URL(url_for(check, address, port)).raw_path
    return h11.Request(method=check.method.upper(), target=target, headers=headers)


# A probe's request depends only on (check, address, port): built and
# validated by h11 once, not at every probe (about 14 us of the host's CPU).
request = functools.lru_cache(maxsize=16384)(request_for)


def url_for(check: HttpCheck, address: IPAddress, port: int) -> str:
    scheme = "https" if check.tls else "http"
    return f"{scheme}://{endpoint(address, port)}{check.path}"


class Connection(h11.Connection):
    """h11's client connection, counting the interim responses it gave and
    the bytes it was fed, keeping the first of them, and whether the
    final response's head came (`head`): what `refusal` says of a reply."""

    interim = 0
    received = 0
    first = b""  # the first SHOWN + 1 bytes
    head = False


def new_connection() -> Connection:
    """A client-side h11 connection with the probe's limit on an incomplete event."""
    return Connection(h11.CLIENT, max_incomplete_event_size=MAX_INCOMPLETE_EVENT)


def receive(conn: Connection, data: bytes) -> None:
    """Feed what one read returned (b"": the server closed). Raises
    h11.RemoteProtocolError for a close before the final response's head
    (h11 would say "can't handle event type ConnectionClosed when
    role=SERVER and state=SEND_RESPONSE"): httpcore's DISCONNECTED when
    nothing came, else the bytes that did; at once for bytes that cannot
    begin a response (not "HTTP/"), which `refusal` says are not HTTP."""
    before, conn.received = conn.received, conn.received + len(data)
    if before <= SHOWN:  # (one more: `quoted` says when there were more)
        conn.first += data[: SHOWN + 1 - before]
        if not b"HTTP/".startswith(conn.first[:5]):
            # Every response starts so: a server that sent anything else
            # and waits (an SSH banner on the port) is told at once, in
            # `refusal`'s words, not at the timeout.
            raise h11.RemoteProtocolError("not HTTP")
    if not data and conn.their_state is h11.SEND_RESPONSE:
        received = conn.received
        if not received:
            raise h11.RemoteProtocolError(DISCONNECTED)
        closed = f"the server closed after {received} byte{'' if received == 1 else 's'}"
        raise h11.RemoteProtocolError(f"the head incomplete: {closed}")
    conn.receive_data(data)


def next_response(conn: Connection) -> h11.Response | None:
    """The final response once h11 has its whole head, else None (more data
    needed). 1xx before it are skipped, as httpcore does, except 101, which
    is final. Raises h11.RemoteProtocolError for a reply h11 refuses (a
    header section past MAX_INCOMPLETE_EVENT among them) and for more than
    MAX_INTERIM interim responses."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.Response):
            conn.head = True
            return event
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                conn.head = True
                return h11.Response(status_code=101, headers=event.headers, reason=event.reason)
            conn.interim += 1
            if conn.interim > MAX_INTERIM:
                raise h11.RemoteProtocolError(f"more than {MAX_INTERIM} interim (1xx) responses")
            continue
        raise h11.RemoteProtocolError(DISCONNECTED)


def head_failure(check: HttpCheck, response: h11.Response) -> tuple[Reason, str] | None:
    """What is wrong with the response's head for `check` (a header section
    over MAX_HEADER: BAD_REPLY; a status outside expect_status: BAD_STATUS),
    or None when it passes (then the detail is f"status {status}")."""
    status = response.status_code
    header_size = sum(len(name) + len(value) + 4 for name, value in response.headers)
    if header_size > MAX_HEADER:
        detail = f"status {status}, {header_size} bytes of header fields (limit {MAX_HEADER})"
        return Reason.BAD_REPLY, detail
    if not any(status in expected for expected in check.expect_status):
        return Reason.BAD_STATUS, f"status {status}"
    return None


# A bytes or bytearray repr in h11's messages ("illegal status line:
# bytearray(b'HTTP/1.1 2OO OK')", "illegal header line: ...", "illegal chunk
# header: ...", "malformed chunk footer: ... (expected b'\r\n')"): the
# literal in group 1 (in a bytearray) or 2.
_LITERAL = r"""b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")"""
_BYTES_REPR = re.compile(rf"bytearray\(({_LITERAL})\)|\b({_LITERAL})")
# h11's words for a refused reply that an operator reads otherwise.
_TOO_LONG = "Receive buffer too long"  # an event past MAX_INCOMPLETE_EVENT
_NOT_A_STATUS_LINE = "illegal request line"  # a first byte below "!" (h11's test for requests)


def refusal(conn: Connection | None, exc: h11.RemoteProtocolError) -> str:
    """The detail of a reply h11 refused, or that ended before its head
    (`receive`), in words: the first bytes of one that is not HTTP (every
    response starts "HTTP/"): 'not an HTTP response: the first bytes were
    "ok\\n"'; the limit an event never ended within (h11: "Receive buffer
    too long"); a line h11 quotes as a Python bytes repr as text, as
    `quoted` shows it ('illegal status line: "HTTP/1.1 2OO OK"')."""
    message = str(exc) or DISCONNECTED
    if conn is None:
        return message
    if conn.received and not b"HTTP/".startswith(conn.first[:5]):
        return f"not an HTTP response: the first bytes were {quoted(conn.first)}"
    if message == _TOO_LONG:
        where = "a chunk header or trailer" if conn.head else "the head"
        return f"no end of {where} within {MAX_INCOMPLETE_EVENT} bytes"
    if message == _NOT_A_STATUS_LINE:  # (after an interim response; else not HTTP above)
        return f"illegal status line: {quoted(conn.trailing_data[0])}"
    return _BYTES_REPR.sub(_as_text, message)


def _as_text(match: re.Match[str]) -> str:
    try:
        data = ast.literal_eval(match[1] or match[2])
    except (ValueError, SyntaxError):
        return match[0]
    return quoted(data) if isinstance(data, bytes) else match[0]


def quoted(data: bytes | bytearray, limit: int = SHOWN) -> str:
    """`data` as a JSON string, each byte one character (as Latin-1: a
    control character or a byte past ASCII escaped, "\\u00ff"), its first
    `limit` bytes followed by "..." when longer."""
    text = json.dumps(bytes(data[:limit]).decode("latin-1"))
    return f"{text}..." if len(data) > limit else text
