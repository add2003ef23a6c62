"""The control socket: a trio Unix stream server speaking director.control.protocol.

Every connection gets its peer's credentials from the kernel (SO_PEERCRED and
SO_PEERGROUPS), a deadline for each request line, a size limit, and a bounded share of
the server: a bad client gets an error and its connection closed, and nothing it does
reaches the rest of the daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import math
import os
import socket as stdlib_socket
import stat
import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio

from director import log
from director.config.model import SUN_PATH_MAX, ControlSettings
from director.config.toml import string
from director.control.messages import Handler, Peer, Request, Response
from director.control.protocol import (
    MAX_REQUEST_BYTES,
    ErrorKind,
    ProtocolError,
    RequestDecoder,
    encode_error,
    encode_response,
)
from director.log import RateLimit
from director.oserror import strerror

_UCRED = struct.Struct("3i")
_SO_PEERGROUPS = getattr(stdlib_socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13
_RECEIVE_SIZE = 16 * 1024


@dataclass(frozen=True)
class Limits:
    """What the control server allows its clients (`serve`): the size of a request
    line and the seconds to send it, the seconds to take a response, the
    connections at once (one more is answered busy) and the listen backlog."""

    max_request_bytes: int = MAX_REQUEST_BYTES
    request_timeout: float = 10.0  # to send one complete request line, or stay idle
    send_timeout: float = 30.0  # for the client to take a response
    max_connections: int = 128
    backlog: int = 128


class ControlSocketError(Exception):
    """The control socket cannot be set up; the message names the path or group."""


async def serve(
    settings: ControlSettings,
    handler: Handler,
    *,
    limits: Limits = Limits(),
    accepting: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on settings.socket until cancelled, then remove the socket file.

    Reports the path through task_status once the socket is bound (raises
    ControlSocketError when it cannot be: a bad path or group, or another
    daemon on it). With `accepting`, connections wait in the backlog until
    that event is set: the daemon binds first, so that a second instance
    stops before it touches the kernel's table, and answers once its engine
    runs. `control_listening` is logged once the socket is bound, before
    task_status reports it.
    """
    group_gid = _gid(settings.group, "group")
    admin_gid = _gid(settings.admin_group, "admin_group")
    path = settings.socket
    sock = await _bind(path, settings.mode, group_gid, limits.backlog)
    logger = log.get("control")
    try:
        identity = os.stat(path)
    except OSError:
        sock.close()
        raise
    try:
        # Logged before the caller goes on: whatever it logs next (a stop
        # asked during the start, the engine's first pass) comes after.
        logger.info(
            "control_listening",
            socket=path,
            mode=oct(settings.mode),
            answering="once the engine runs" if accepting is not None else "now",
        )
        task_status.started(path)
        if accepting is not None:
            await accepting.wait()
        await accept_loop(trio.SocketListener(sock), handler, limits, admin_gid, logger)
    finally:
        # The path first: a client that comes now finds no socket (ENOENT),
        # then those already in the backlog are answered, then it closes.
        _remove_if_ours(path, identity)
        _turn_away(sock)
        sock.close()


def _turn_away(sock: trio.socket.SocketType) -> None:
    """Answer the connections still in the listening socket's backlog (a
    client that connected during the stop) with CUT_OFF, rather than let
    the close reset them without a word (trial 37). Each one's request, if
    it came, is read first: a socket closed with unread data resets its
    peer before the peer reads the answer."""
    line = _cut_off()
    try:
        listening = stdlib_socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return
    with listening:
        listening.setblocking(False)
        for _ in range(TURN_AWAY_MAX):
            try:
                conn, _ = listening.accept()
            except OSError:  # (none left: EAGAIN)
                return
            with conn:
                conn.setblocking(False)
                with contextlib.suppress(OSError):
                    conn.recv(_RECEIVE_SIZE)
                with contextlib.suppress(OSError):
                    conn.send(line)
                    conn.shutdown(stdlib_socket.SHUT_WR)


def _gid(name: str | None, key: str) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlSocketError(f"[control] {key} = {string(name)}: no such group") from None


async def _bind(path: str, mode: int, gid: int | None, backlog: int) -> trio.socket.SocketType:
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise ControlSocketError(f"control socket path is longer than {SUN_PATH_MAX} bytes: {path}")
    directory, name = os.path.split(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as e:
        raise ControlSocketError(
            f"cannot create {directory} for the control socket: {e.strerror}"
        ) from e
    await _clear_stale(path)
    # Bound under a temporary name and renamed once its mode and group are right, so
    # nobody ever connects through looser permissions.
    temporary = os.path.join(directory, f".{name}.{os.getpid()}")
    if len(os.fsencode(temporary)) > SUN_PATH_MAX:
        temporary = path
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        _unlink_quietly(temporary)
        await sock.bind(temporary)
        os.chmod(temporary, mode)
        if gid is not None:
            os.chown(temporary, -1, gid)
        sock.listen(backlog)
        if temporary != path:
            os.rename(temporary, path)
    except OSError as e:
        sock.close()
        if temporary != path:
            _unlink_quietly(temporary)
        raise ControlSocketError(f"cannot listen on {path}: {strerror(e)}") from e
    return sock


async def _clear_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to take over a live one."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; not replacing it")
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except ConnectionRefusedError:
        _unlink_quietly(path)
        return
    except OSError as e:
        raise ControlSocketError(f"cannot tell whether {path} is in use: {e.strerror}") from e
    finally:
        probe.close()
    raise ControlSocketError(f"another process is listening on {path} (is directord running?)")


def _remove_if_ours(path: str, identity: os.stat_result) -> None:
    try:
        now = os.lstat(path)
    except OSError:
        return
    if (now.st_dev, now.st_ino) == (identity.st_dev, identity.st_ino):
        _unlink_quietly(path)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# accept(2) failing for lack of descriptors, buffers or memory: the system is
# short, not the listening socket broken. Log, pause and go on, as trio's
# serve_listeners does (trio/_highlevel_serve_listeners.py, SLEEP_TIME 0.1 s).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_PAUSE = 0.1  # seconds
# Errors that belong to one pending connection, not to the listener: retried at
# once. trio's SocketListener.accept already retries these
# (trio/_highlevel_socket.py, _ignorable_accept_errno_names, after accept(2)'s
# Linux notes); kept here too so any Listener gets the same treatment.
ACCEPT_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)
# Seconds between two lines about recurring accept or connection failures,
# busy refusals and request timeouts.
LOG_INTERVAL = 10.0


async def accept_loop(
    listener: trio.abc.Listener[trio.SocketStream],
    handler: Handler,
    limits: Limits,
    admin_gid: int | None,
    logger: Any,
) -> None:
    """Accept connections on `listener` and serve each in a task of its own, until
    cancelled.

    accept() errors in ACCEPT_CAPACITY_ERRNOS are logged (at most one line per
    LOG_INTERVAL s, with the count left out) and retried after ACCEPT_PAUSE s;
    those in ACCEPT_TRANSIENT_ERRNOS are retried at once. Any other OSError means
    the listening socket itself is broken and is raised. Nothing a connection
    does (or that fails while serving it) leaves its task.
    """
    active = 0
    answers = _Answers()
    capacity_limit = RateLimit(LOG_INTERVAL)
    failure_limit = RateLimit(LOG_INTERVAL)
    # A client can make these as fast as it connects: one line an interval.
    busy_limit = RateLimit(LOG_INTERVAL)
    timeout_limit = RateLimit(LOG_INTERVAL)

    async def connection(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            await _serve_connection(
                stream, handler, limits, admin_gid, logger, timeout_limit, answers
            )
        except Exception as e:
            # A bug reached by one connection: that connection ends, the server goes on.
            suppressed = failure_limit.allow(trio.current_time())
            if suppressed is not None:
                logger.error(
                    "control_connection_failed",
                    error=f"{type(e).__name__}: {e}",
                    suppressed=suppressed,
                    exc_info=True,
                )
            await trio.aclose_forcefully(stream)
        finally:
            active -= 1

    async with trio.open_nursery() as nursery:
        try:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno in ACCEPT_TRANSIENT_ERRNOS:
                        await trio.lowlevel.checkpoint()
                        continue
                    if e.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    suppressed = capacity_limit.allow(trio.current_time())
                    if suppressed is not None:
                        # A warning, as the probes' shortage is: the server
                        # goes on and the client's connection waits its turn.
                        logger.warning(
                            "control_accept_failed",
                            error=errno.errorcode.get(e.errno, str(e.errno)),
                            message=os.strerror(e.errno),
                            retry_after=ACCEPT_PAUSE,
                            suppressed=suppressed,
                            hint="the daemon is short of file descriptors or memory: clients"
                            " wait in the socket's queue; raise LimitNOFILE",
                        )
                    await trio.sleep(ACCEPT_PAUSE)
                    continue
                if active >= limits.max_connections:
                    suppressed = busy_limit.allow(trio.current_time())
                    if suppressed is not None:
                        logger.warning(
                            "control_busy", limit=limits.max_connections, suppressed=suppressed
                        )
                    await _refuse_busy(stream, limits.max_connections)
                    continue
                active += 1
                nursery.start_soon(connection, stream)
        finally:
            answers.stop()  # those going out get STOP_SEND s more at most; the nursery waits


async def _refuse_busy(stream: trio.SocketStream, limit: int) -> None:
    busy = ProtocolError(ErrorKind.BUSY, f"too many control connections ({limit}), try again")
    # Inline in the accept loop, so a flood holds one descriptor at a time: a fresh
    # socket's buffer takes these few bytes at once, and the timeout only guards
    # against the impossible. Failing that, the client just sees the close.
    try:
        with trio.move_on_after(1), contextlib.suppress(Exception):
            await _send(stream, encode_error(busy))
    finally:
        await trio.aclose_forcefully(stream)


async def _serve_connection(
    stream: trio.SocketStream,
    handler: Handler,
    limits: Limits,
    admin_gid: int | None,
    logger: Any,
    timeout_limit: RateLimit,
    answers: _Answers,
) -> None:
    async with stream:
        try:
            peer = peer_of(stream.socket, admin_gid)
        except OSError as e:
            logger.warning("control_peer_unknown", error=str(e))
            return
        decoder = RequestDecoder(limits.max_request_bytes)
        ended = False
        answered = False  # a request of this connection was answered
        deadline = trio.current_time() + limits.request_timeout
        while True:
            event = decoder.next_event()
            if event is None:
                if ended:
                    return
                with trio.move_on_at(deadline) as waiting:
                    try:
                        data = await stream.receive_some(_RECEIVE_SIZE)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    except trio.Cancelled:
                        # The daemon stops before this request was read whole
                        # (not this wait's own deadline): it is told so, not
                        # closed on without a word (once idle after an
                        # answer, the close says enough).
                        if not waiting.cancel_called and (decoder.buffered or not answered):
                            await answers.send(stream, _cut_off())
                        raise
                    if data:
                        decoder.feed(data)
                    else:
                        decoder.feed_eof()
                        ended = True
                    continue
                timeout = _timeout_error(decoder.buffered, limits.request_timeout)
                suppressed = timeout_limit.allow(trio.current_time())
                if suppressed is not None:
                    logger.info(
                        "control_timeout",
                        uid=peer.uid,
                        pid=peer.pid,
                        error=timeout.message,
                        suppressed=suppressed,
                    )
                with trio.move_on_after(limits.send_timeout):
                    await _send(stream, encode_error(timeout))
                return
            # Controller.holding: what stays held until the answer is sent.
            hold: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
            holding = getattr(handler, "holding", None)
            if holding is not None and isinstance(event, Request):
                hold = holding(event)
            with hold:
                reply: bytes | None = None
                try:
                    if isinstance(event, ProtocolError):
                        logger.info(
                            "control_bad_request", uid=peer.uid, pid=peer.pid, error=event.message
                        )
                        reply = encode_error(event)
                    else:
                        interval = keepalive_interval(event)
                        event = _without_keepalive(event)
                        if interval is None:
                            reply = await _answer(handler, event, peer, logger)
                        else:
                            async with trio.open_nursery() as nursery:
                                nursery.start_soon(_keep_alive, stream, interval)
                                reply = await _answer(handler, event, peer, logger)
                                nursery.cancel_scope.cancel()
                except* trio.Cancelled:  # (from the keepalive's nursery: in a group)
                    # The daemon stops: the answer if it was made, else
                    # CUT_OFF, rather than a close without a word (trial 36:
                    # a -Ln queued during the start, then a SIGTERM). Sent
                    # here, once the keepalive spaces have ended (trial 38:
                    # one going out as the stop came made this send busy,
                    # and 4 of 81 clients were closed on unanswered).
                    await answers.send(stream, reply or _cut_off())
                    raise
                sent = await answers.send(stream, reply, limits.send_timeout)
            if not sent:
                return
            answered = True
            if isinstance(event, ProtocolError) and event.fatal:
                return
            deadline = trio.current_time() + limits.request_timeout


# A request's "args" may ask for a space every `keepalive` seconds while
# its answer is being made (directorctl does, for its --answer-timeout: a
# -R of thousands of lines works for minutes in a loaded VM, and a client
# that hears nothing cannot tell a busy daemon from a stuck one). The
# spaces come before the response's JSON, on its line: JSON allows
# whitespace there, so a client that parses the line as JSON reads the
# same response. The interval is clamped to these bounds.
KEEPALIVE_MIN = 0.1
KEEPALIVE_MAX = 60.0


def keepalive_interval(request: Request) -> float | None:
    """Seconds between two spaces while `request` is answered, or None."""
    value = request.args.get("keepalive")
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        return None
    return min(max(float(value), KEEPALIVE_MIN), KEEPALIVE_MAX)


def _without_keepalive(request: Request) -> Request:
    """The request as the handler sees it: "keepalive" is the server's."""
    if "keepalive" not in request.args:
        return request
    args = {k: v for k, v in request.args.items() if k != "keepalive"}
    return dataclasses.replace(request, args=MappingProxyType(args))


async def _keep_alive(stream: trio.SocketStream, interval: float) -> None:
    """A space every `interval` seconds until cancelled (the answer is made)
    or the client is gone. One byte: a cancelled send sent it or not."""
    while True:
        await trio.sleep(interval)
        if not await _send(stream, b" "):
            return


def _timeout_error(buffered: int, timeout: float) -> ProtocolError:
    if buffered:
        message = f"request incomplete after {timeout:g} s ({buffered} bytes without a newline)"
    else:
        message = f"no request within {timeout:g} s"
    return ProtocolError(ErrorKind.TIMEOUT, message)


# Connections in the backlog a stop answers at most (the rest are reset).
TURN_AWAY_MAX = 1024


# What a client whose request the stop cut off is told (a listing read in
# a worker thread, say; a change the engine had begun is finished and
# answered by the stop's wait, _Answers).
CUT_OFF = "directord is stopping: the request was cut off before its answer"


def _cut_off() -> bytes:
    return encode_response(Response(1, "", f"{CUT_OFF}\n"))


# A response with `data` (`status --json`: 2.9 MB of JSON at 10,000 real
# servers, about 50 ms of the host's CPU) is encoded in a worker thread.
async def _answer(handler: Handler, request: Request, peer: Peer, logger: Any) -> bytes:
    try:
        response = await handler.handle(request, peer)
        if response.data is None:
            return encode_response(response)
        return await trio.to_thread.run_sync(encode_response, response)
    except Exception as e:
        logger.exception(
            "control_handler_failed",
            uid=peer.uid,
            pid=peer.pid,
            argv=request.argv,
            command=request.command,
        )
        failure = Response(1, "", f"directord: internal error: {type(e).__name__}: {e}\n")
        return encode_response(failure)


# Seconds an answer already made may take to go out once the daemon stops:
# a change made as the stop began is answered, not cut off (the client would
# say the daemon closed without answering, of a change it made).
STOP_SEND = 2.0


class _Answers:
    """The answers going out on the server's connections. Each is sent
    shielded from the stop, so that a line is never cut in half; once the
    server stops (`stop`), each has STOP_SEND s more at most, not the rest
    of a slow client's send timeout."""

    def __init__(self) -> None:
        self._sending: set[trio.CancelScope] = set()
        self._stopped = False

    async def send(
        self, stream: trio.SocketStream, reply: bytes, seconds: float = STOP_SEND
    ) -> bool:
        """Send `reply` within `seconds` (STOP_SEND once stopping or this
        task cancelled). False when it did not go out whole."""
        stopping = self._stopped or trio.current_effective_deadline() == -math.inf
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + (STOP_SEND if stopping else seconds)
            self._sending.add(scope)
            try:
                return await _send(stream, reply)
            finally:
                self._sending.discard(scope)
        return False

    def stop(self) -> None:
        self._stopped = True
        last = trio.current_time() + STOP_SEND
        for scope in self._sending:
            scope.deadline = min(scope.deadline, last)


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    """False when the client is gone; callers bound the time it may take."""
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


def peer_of(sock: trio.socket.SocketType, admin_gid: int | None) -> Peer:
    """Who is at the other end, as the kernel recorded it at connect() time."""
    pid, uid, gid = _UCRED.unpack(
        sock.getsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_PEERCRED, _UCRED.size)
    )
    may_change = uid == 0
    if not may_change and admin_gid is not None:
        may_change = gid == admin_gid or admin_gid in _peer_groups(sock, pid)
    return Peer(uid=uid, gid=gid, pid=pid, may_change=may_change)


def _peer_groups(sock: trio.socket.SocketType, pid: int) -> frozenset[int]:
    """The peer's supplementary groups: from the socket where the kernel records them,
    else from /proc (racy if the peer has exited and its pid is reused)."""
    size = 4 * 256
    while True:
        try:
            raw = sock.getsockopt(stdlib_socket.SOL_SOCKET, _SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE and size < 4 * 65536:
                size *= 16
                continue
            return _proc_groups(pid)
        return frozenset(struct.unpack(f"{len(raw) // 4}I", raw))


def _proc_groups(pid: int) -> frozenset[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Groups:"):
                    return frozenset(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    return frozenset()
