"""The control socket's wire format, sans-IO: newline-delimited JSON, one request and
one response per line (see docs/control-protocol.md).

RequestDecoder is fed whatever bytes arrive and hands out Requests, or ProtocolErrors
saying exactly what is wrong with a line. It never raises on input and never holds
more than `max_line` bytes of an unfinished line.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from director.control.messages import PROTOCOL_VERSION, Request, Response

MAX_REQUEST_BYTES = 1024 * 1024

_REQUEST_FIELDS = frozenset({"v", "argv", "command", "args"})


class ErrorKind(enum.Enum):
    TOO_LONG = "too-long"
    NOT_UTF8 = "not-utf8"
    NOT_JSON = "not-json"
    NOT_OBJECT = "not-object"
    BAD_VERSION = "bad-version"
    BAD_FIELD = "bad-field"
    TIMEOUT = "timeout"
    BUSY = "busy"


# A bad request is the client's mistake, like a usage error (ipvsadm exits 2 for
# those); a timeout or a full server is not.
_STATUS = {ErrorKind.TIMEOUT: 1, ErrorKind.BUSY: 1}


@dataclass(frozen=True)
class ProtocolError:
    """A request line the server cannot take (or a timeout, or a full server), and
    why: not raised, but handed out by RequestDecoder in place of a Request and
    answered by encode_error, `kind` as the response's "error"."""

    kind: ErrorKind
    message: str

    @property
    def fatal(self) -> bool:
        """After this error the connection cannot go on (the server closes it)."""
        return self.kind in (ErrorKind.TOO_LONG, ErrorKind.TIMEOUT, ErrorKind.BUSY)

    @property
    def status(self) -> int:
        return _STATUS.get(self.kind, 2)


Event = Request | ProtocolError


class RequestDecoder:
    def __init__(self, max_line: int = MAX_REQUEST_BYTES) -> None:
        self.max_line = max_line
        self._partial = bytearray()
        self._skipping = False  # inside a line already reported as too long
        self._events: deque[Event] = deque()

    @property
    def buffered(self) -> int:
        """Bytes held of the unfinished line."""
        return len(self._partial)

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._keep(data[start:])
                return
            self._finish(data[start:end])
            start = end + 1

    def feed_eof(self) -> None:
        """The peer will send no more: an unterminated last line still counts."""
        if self._partial:
            self._finish(b"")
        self._skipping = False

    def next_event(self) -> Event | None:
        """The next request or error, or None when more data is needed."""
        return self._events.popleft() if self._events else None

    def _keep(self, piece: bytes) -> None:
        if self._skipping:
            return
        if len(self._partial) + len(piece) > self.max_line:
            self._partial.clear()
            self._skipping = True
            self._events.append(self._too_long())
            return
        self._partial += piece

    def _finish(self, piece: bytes) -> None:
        if self._skipping:
            self._skipping = False
            return
        if len(self._partial) + len(piece) > self.max_line:
            self._partial.clear()
            self._events.append(self._too_long())
            return
        line = bytes(self._partial) + piece if self._partial else piece
        self._partial.clear()
        if line.strip():
            self._events.append(decode_request(line))

    def _too_long(self) -> ProtocolError:
        return ProtocolError(
            ErrorKind.TOO_LONG, f"request is longer than {self.max_line} bytes without a newline"
        )


def decode_request(line: bytes) -> Event:
    """One line (without its newline) as a Request, or what is wrong with it."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return ProtocolError(
            ErrorKind.NOT_UTF8,
            f"request is not UTF-8: byte {line[e.start]:#04x} at offset {e.start}",
        )
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        return ProtocolError(ErrorKind.NOT_JSON, "request is not JSON: nested too deeply")
    except ValueError as e:
        return ProtocolError(ErrorKind.NOT_JSON, f"request is not JSON: {e}")
    if not isinstance(value, dict):
        return ProtocolError(
            ErrorKind.NOT_OBJECT, f"request must be a JSON object, not {_json_type(value)}"
        )
    event = _request(value)
    # Valid UTF-8 text can still say \ud800: a string no encoder downstream
    # (netlink, the state file, a terminal) can write. Only an escape makes one.
    if isinstance(event, Request) and b"\\u" in line:
        where = _lone_surrogate(value)
        if where is not None:
            return ProtocolError(
                ErrorKind.NOT_UTF8,
                f"request is not UTF-8: {where} holds a lone surrogate escape"
                " (\\ud800-\\udfff without its pair)",
            )
    return event


def _lone_surrogate(value: dict[str, object]) -> str | None:
    """Where the first string holding an unpaired surrogate is (e.g. '"argv"[1]'),
    or None. Iterative: json.loads nests as deep as the recursion limit allows."""
    stack: list[tuple[str, object]] = [(json.dumps(key), item) for key, item in value.items()]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return where
        elif isinstance(item, list):
            stack.extend((f"{where}[{index}]", child) for index, child in enumerate(item))
        elif isinstance(item, dict):
            for key, child in item.items():
                if not _encodable(key):
                    return f"a key in {where}"
                stack.append((f"{where}[{json.dumps(key)}]", child))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _request(value: dict[str, object]) -> Event:
    unknown = sorted(set(value) - _REQUEST_FIELDS)
    if unknown:
        return _bad_field(f"unknown field {unknown[0]!r}")
    version = value.get("v")
    if "v" not in value:
        return ProtocolError(ErrorKind.BAD_VERSION, f'"v" is missing (expected {PROTOCOL_VERSION})')
    if type(version) is not int or version != PROTOCOL_VERSION:
        return ProtocolError(
            ErrorKind.BAD_VERSION,
            f'"v" is {json.dumps(version)}, this server speaks version {PROTOCOL_VERSION}',
        )
    argv = value.get("argv")
    command = value.get("command")
    args = value.get("args", {})
    if ("argv" in value) == ("command" in value):
        return _bad_field('a request has exactly one of "argv" and "command"')
    if not isinstance(args, dict):
        return _bad_field(f'"args" must be an object, not {_json_type(args)}')
    frozen_args: Mapping[str, object] = MappingProxyType(args)
    if "argv" in value:
        if not isinstance(argv, list):
            return _bad_field(f'"argv" must be a list of strings, not {_json_type(argv)}')
        for index, word in enumerate(argv):
            if not isinstance(word, str):
                return _bad_field(f'"argv"[{index}] must be a string, not {_json_type(word)}')
            if "\0" in word:
                return _bad_field(
                    f'"argv"[{index}] holds a NUL character, which no command line can hold'
                )
        return Request(argv=tuple(argv), args=frozen_args)
    if not isinstance(command, str) or not command:
        return _bad_field(f'"command" must be a non-empty string, not {json.dumps(command)}')
    return Request(command=command, args=frozen_args)


def _bad_field(message: str) -> ProtocolError:
    return ProtocolError(ErrorKind.BAD_FIELD, message)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON value")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def encode_request(request: Request) -> bytes:
    message: dict[str, object] = {"v": PROTOCOL_VERSION}
    if request.argv is not None:
        message["argv"] = list(request.argv)
    else:
        message["command"] = request.command
    if request.args:
        message["args"] = dict(request.args)
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def encode_response(response: Response) -> bytes:
    message: dict[str, object] = {
        "v": PROTOCOL_VERSION,
        "status": response.status,
        "stdout": response.stdout,
        "stderr": response.stderr,
    }
    if response.data is not None:
        message["data"] = response.data
    return _line(message)


def encode_error(error: ProtocolError) -> bytes:
    """The response to a request that could not be read; `error` names the kind."""
    return _line(
        {
            "v": PROTOCOL_VERSION,
            "status": error.status,
            "stdout": "",
            "stderr": f"directord: {error.message}\n",
            "error": error.kind.value,
        }
    )


def decode_response(line: bytes) -> Response:
    """A response line as a Response; ValueError naming the problem if it is not one."""
    value = json.loads(line)
    if not isinstance(value, dict) or value.get("v") != PROTOCOL_VERSION:
        raise ValueError(f"not a version {PROTOCOL_VERSION} response: {line[:80]!r}")
    status, stdout, stderr = value.get("status"), value.get("stdout"), value.get("stderr")
    if type(status) is not int or not isinstance(stdout, str) or not isinstance(stderr, str):
        raise ValueError(f"response lacks status, stdout or stderr: {line[:80]!r}")
    return Response(status, stdout, stderr, value.get("data"))


def _line(message: Mapping[str, object]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode("ascii") + b"\n"
