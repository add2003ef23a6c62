"""What travels over the control socket, independent of how it is framed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

PROTOCOL_VERSION = 1

_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True)
class Request:
    """Either an ipvsadm command line (argv) or one of director's own commands.

    Exactly one of argv and command is set. args carries a command's arguments, and for
    argv requests that read standard input (ipvsadm -R) the text under "stdin".
    """

    argv: tuple[str, ...] | None = None
    command: str | None = None
    args: Mapping[str, object] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True)
class Response:
    """The answer to a Request: an exit status and the text for stdout and stderr,
    as the command prints them, and for some commands `data`, a JSON value
    (`directorctl status --json` prints it)."""

    status: int
    stdout: str = ""
    stderr: str = ""
    data: object | None = None


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a connection, from SO_PEERCRED."""

    uid: int
    gid: int
    pid: int
    may_change: bool


class Handler(Protocol):
    async def handle(self, request: Request, peer: Peer) -> Response: ...
