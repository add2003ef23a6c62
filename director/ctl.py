"""directorctl: ipvsadm's command line (and director's own commands) sent to the
running directord over its control socket; prints what the daemon answers, exits
with its status.

It is timed against ipvsadm including interpreter start-up, so it imports only
what it must: the C halves of socket and json (the Python halves pull in enum
and re, several milliseconds), posix rather than os (which a `python -S`
start has not imported yet), and nothing of director's daemon side.
"""

import _json
import _socket
import posix
import sys

TYPE_CHECKING = False  # typing itself costs a few milliseconds to import
if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_SOCKET = "/run/director/director.sock"
SOCKET_ENV = "DIRECTOR_SOCKET"
MAX_REQUEST_BYTES = 1024 * 1024  # director.control.protocol.MAX_REQUEST_BYTES
# Characters of -R input per request: a quarter of the limit, as JSON may
# escape them. The daemon commits (saves, reconciles) once per request, so a
# table of some thousand lines goes in one.
RESTORE_CHUNK = 256 * 1024
PROGRAM = "directorctl"
# Seconds the client waits without a byte from the daemon before it gives up
# (--answer-timeout; 0: for ever). While it works on a request the daemon
# sends a space every KEEPALIVE seconds at most (the request asks for it,
# director.control.server.keepalive_interval), so a long -R is not cut off;
# silence means a daemon that stopped answering.
ANSWER_TIMEOUT = 60.0
KEEPALIVE = 5.0

USAGE = """\
usage: directorctl [--socket PATH] [--answer-timeout SECONDS] IPVSADM-ARGS...
       directorctl [--socket PATH] status [--json | --summary]
       directorctl [--socket PATH] drain VS RS [--wait] [--timeout SECONDS]
       directorctl [--socket PATH] disable VS RS
       directorctl [--socket PATH] enable VS RS
       directorctl [--socket PATH] reload
       directorctl [--socket PATH] maintenance [on|off]
       directorctl check-config FILE
       directorctl import-keepalived KEEPALIVED.CONF > director.toml
The socket is --socket, else $DIRECTOR_SOCKET, else /run/director/director.sock;
--socket may come before the command or after it, and so may
--answer-timeout: how long to wait for the daemon while it sends nothing
(default 60 s; the daemon sends a space every few seconds while it works;
0 waits for ever).
"""


class UsageError(Exception):
    pass


class ConnectError(Exception):
    pass


def main(argv: "Sequence[str] | None" = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        path, timeout, words = _global_options(words)
        if words[:1] == ["check-config"]:
            return _check_config(words[1:])
        if words[:1] == ["import-keepalived"]:
            from director.keepalived.cli import main as import_keepalived

            return import_keepalived(words[1:])
        if asks_help(words):
            _write(1, help_text())
            return 0
        requests = _requests(words)
    except UsageError as e:
        _write(2, f"{PROGRAM}: {e}\n{USAGE}")
        return 2
    try:
        return _run(path, requests, timeout)
    except ConnectError as e:
        _write(2, f"{PROGRAM}: {e}\n")
        return 1


def _global_options(words: list[str]) -> tuple[str, float, list[str]]:
    """The socket, the answer timeout and the words without `--socket PATH`
    / `--socket=PATH` and `--answer-timeout SECONDS` (or `=SECONDS`), which
    may come before the command or anywhere after it (`status --socket X`,
    `-Ln --socket X`): no ipvsadm option nor any of director's own is spelt
    so. The last one given wins."""
    from_env = posix.environ.get(SOCKET_ENV.encode())
    path = from_env.decode("utf-8", "surrogateescape") if from_env else DEFAULT_SOCKET
    timeout = ANSWER_TIMEOUT
    rest: list[str] = []
    given = iter(words)
    for word in given:
        name, equals, value = word.partition("=")
        if name not in ("--socket", "--answer-timeout"):
            rest.append(word)
            continue
        text: str | None = value if equals else next(given, None)
        if name == "--socket":
            path = text or ""
            if not path:
                raise UsageError("--socket needs a path")
        else:
            timeout = _answer_timeout(text)
    return path, timeout, rest


def _answer_timeout(text: str | None) -> float:
    try:
        value = float(text) if text is not None else -1.0
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise UsageError(
            f"--answer-timeout needs a number of seconds (0: wait for ever), not {text!r}"
        )
    return value


def _requests(words: list[str]) -> list[dict[str, object]]:
    """The requests to send, in order: one, or several for a large -R input."""
    command = words[0] if words else None
    if command == "status":
        flags = _flags(words[1:], command, {"--json", "--summary"})
        if flags == {"--json", "--summary"}:
            raise UsageError("status: --summary is for the text; --json holds every server")
        if "--json" in flags:
            return [_command("status", {"json": True})]
        # The text alone: the data (2.9 MB at 10,000 real servers) is not read.
        args: dict[str, object] = {"json": False, "data": False}
        if "--summary" in flags:
            args["summary"] = True
        return [_command("status", args)]
    if command == "drain":
        return [_command("drain", _drain_args(words[1:]))]
    if command in ("disable", "enable"):
        service, server = _service_and_server(words[1:], command)
        return [_command(command, {"service": service, "server": server})]
    if command == "reload":
        _flags(words[1:], command, set())
        return [_command("reload", {})]
    if command == "maintenance":
        mode = words[1:]
        if mode not in ([], ["on"], ["off"]):
            raise UsageError("maintenance: expected on or off (or nothing, to ask)")
        return [_command("maintenance", {"mode": mode[0]} if mode else {})]
    if command is not None and not command.startswith("-"):
        _refuse_misspelt(command)
    if needs_stdin(words):
        text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        return [{"v": 1, "argv": words, "args": {"stdin": chunk}} for chunk in restore_chunks(text)]
    return [{"v": 1, "argv": words}]


def _refuse_misspelt(word: str) -> None:
    """A word close to one of director's own commands is a typo of it, not an
    ipvsadm line (which the daemon would answer with ipvsadm's "Try
    `ipvsadm -h'"): raises UsageError naming the command meant. Other words
    go to the daemon, which answers as ipvsadm does."""
    from difflib import get_close_matches

    commands = (
        "status",
        "drain",
        "disable",
        "enable",
        "reload",
        "maintenance",
        "check-config",
        "import-keepalived",
    )
    close = get_close_matches(word, commands, n=1)
    if close:
        raise UsageError(f"unknown command {word!r}; did you mean {close[0]!r}?")


def _command(name: str, args: dict[str, object]) -> dict[str, object]:
    return {"v": 1, "command": name, "args": args}


def _flags(words: list[str], command: str, allowed: set[str]) -> set[str]:
    for word in words:
        if word not in allowed:
            raise UsageError(f"{command}: unexpected argument {word!r}")
    return set(words)


def _service_and_server(words: list[str], command: str) -> tuple[str, str]:
    if len(words) != 2:
        raise UsageError(
            f"{command}: expected a virtual service and a real server, e.g. "
            f"{command} tcp:10.0.0.1:80 192.168.1.10:80"
        )
    return words[0], words[1]


def _drain_args(words: list[str]) -> dict[str, object]:
    positional: list[str] = []
    wait = False
    timeout: float | None = None
    rest = iter(words)
    for word in rest:
        if word == "--wait":
            wait = True
        elif word == "--timeout" or word.startswith("--timeout="):
            text = word.partition("=")[2] if "=" in word else next(rest, None)
            timeout = _seconds(text)
        elif word.startswith("--"):
            raise UsageError(f"drain: unknown option {word!r}")
        else:
            positional.append(word)
    service, server = _service_and_server(positional, "drain")
    if timeout is not None and not wait:
        raise UsageError("drain: --timeout only makes sense with --wait")
    return {"service": service, "server": server, "wait": wait, "timeout": timeout}


def _seconds(text: str | None) -> float:
    try:
        value = float(text) if text is not None else -1.0
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"drain: --timeout needs a positive number of seconds, not {text!r}")
    return value


def needs_stdin(argv: list[str]) -> bool:
    """Whether ipvsadm would read stdin (a valid -R/--restore command line).

    Only then: ipvsadm reports a bad command line without touching stdin.
    """
    if not any("R" in word or "restore" in word for word in argv):
        return False
    if argv in (["-R"], ["--restore"]):
        return True  # the usual case, without importing the parser
    from director.ipvsadm.cli import parse
    from director.ipvsadm.commands import Restore
    from director.ipvsadm.errors import ParseError

    try:
        return isinstance(parse(argv), Restore)
    except ParseError:
        return False


def asks_help(argv: list[str]) -> bool:
    """Whether ipvsadm would print its usage (-h, --help): answered here,
    without the daemon."""
    if not any("h" in word for word in argv):
        return False
    from director.ipvsadm.cli import parse
    from director.ipvsadm.commands import Help
    from director.ipvsadm.errors import ParseError

    try:
        return isinstance(parse(argv), Help)
    except ParseError:
        return False


def help_text() -> str:
    """ipvsadm's usage under directorctl's name, then directorctl's own commands."""
    from director.ipvsadm.listing import usage

    return f"{usage(PROGRAM)}\n{USAGE}"


def restore_chunks(text: str) -> list[str]:
    """-R input cut at line ends into pieces that each fit in one request."""
    if len(text) <= RESTORE_CHUNK:
        return [text]
    chunks: list[str] = []
    start = 0
    while start < len(text):
        end = text.rfind("\n", start, start + RESTORE_CHUNK) + 1
        if end <= start:
            end = text.find("\n", start + RESTORE_CHUNK) + 1 or len(text)
        chunks.append(text[start:end])
        start = end
    return chunks


def keepalive(timeout: float) -> float | None:
    """The interval the daemon is asked to send spaces at, for `timeout`
    (None: no timeout, no spaces): a tenth of it, within 0.1 and KEEPALIVE
    seconds, so that a daemon whose loop is busy has several chances."""
    if not timeout:
        return None
    return min(max(timeout / 10, 0.1), KEEPALIVE)


def _run(path: str, requests: list[dict[str, object]], timeout: float = ANSWER_TIMEOUT) -> int:
    sock = _connect(path, timeout)
    interval = keepalive(timeout)
    status = 0
    try:
        for request in requests:
            if interval is not None:
                args = request.get("args")
                asked = dict(args) if isinstance(args, dict) else {}
                asked["keepalive"] = interval
                request = {**request, "args": asked}
            _send(sock, encode(request).encode("ascii"), path, timeout)
            response = _receive(sock, path, timeout)
            status = _show(response)
            data = response.get("data")
            if _asks_json(request) and data is not None and not response.get("stdout"):
                _write(1, encode_data(data))
            if isinstance(data, dict) and data.get("restore_stopped"):
                break
    finally:
        sock.close()
    return status


def _asks_json(request: dict[str, object]) -> bool:
    args = request.get("args")
    return (
        request.get("command") == "status" and isinstance(args, dict) and args.get("json") is True
    )


def _connect(path: str, timeout: float = ANSWER_TIMEOUT) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    if timeout:
        # Each connect, send and receive: a daemon whose backlog is full
        # (it stopped accepting) or that stopped reading.
        sock.settimeout(timeout)
    try:
        sock.connect(path)
    except TimeoutError:
        sock.close()
        raise ConnectError(
            f"cannot connect to {path}: no answer in {timeout:g} s"
            " (directord is not accepting connections; --answer-timeout SECONDS waits longer)"
        ) from None
    except OSError as e:
        sock.close()
        hint = {
            2: " (is directord running?)",
            111: " (is directord running?)",
            13: " (reading needs the [control] group, changes root or admin_group)",
        }.get(e.errno or 0, "")
        raise ConnectError(f"cannot connect to {path}: {e.strerror}{hint}") from None
    return sock


def _send(sock: _socket.socket, data: bytes, path: str, timeout: float) -> None:
    try:
        sock.sendall(data)
    except TimeoutError:
        raise ConnectError(
            f"directord took no request on {path} in {timeout:g} s (it stopped reading;"
            " --answer-timeout SECONDS waits longer)"
        ) from None
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon may have answered before it closed (a stop): _receive reads it
    except OSError as e:
        raise ConnectError(f"lost the connection to {path}: {e.strerror}") from None


def _receive(sock: _socket.socket, path: str, timeout: float = ANSWER_TIMEOUT) -> dict[str, object]:
    """One response line; the spaces a working daemon sends before it
    (keepalive) reset the timeout, and are whitespace to JSON."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            raise ConnectError(
                f"directord sent nothing on {path} for {timeout:g} s (while it works it sends"
                " a space every tenth of --answer-timeout, at least every 0.1 s: it is stuck"
                " or far behind). If the command was a change, it may or may not be made:"
                " check with -Ln or status. --answer-timeout SECONDS waits longer, 0 for ever"
            ) from None
        except OSError as e:
            raise ConnectError(f"lost the connection to {path}: {e.strerror}") from None
        if not chunk:
            got = b"".join(chunks).lstrip(b" ")
            if got:
                raise ConnectError(
                    f"directord closed {path} in the middle of its answer ({len(got)} bytes of it)"
                )
            raise ConnectError(f"directord closed {path} without answering")
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    try:
        value, _ = _SCANNER(b"".join(chunks).decode("utf-8").strip(" \n"), 0)
    except (ValueError, StopIteration):
        value = None
    if not (isinstance(value, dict) and type(value.get("status")) is int):
        raise ConnectError(f"directord sent something that is not a response on {path}")
    return value


def _show(response: dict[str, object]) -> int:
    for fd, key in ((1, "stdout"), (2, "stderr")):
        text = response.get(key)
        if isinstance(text, str) and text:
            _write(fd, text)
    status = response["status"]
    assert isinstance(status, int)
    return status


def _write(fd: int, text: str) -> None:
    data = text.encode("utf-8", "surrogateescape")
    try:
        while data:
            data = data[posix.write(fd, data) :]
    except BrokenPipeError:
        # like ipvsadm in `| head`: the reader went away, nothing left to say
        pass


def _check_config(words: list[str]) -> int:
    if words in (["--help"], ["-h"]):  # (a file of that name: ./--help)
        _write(
            1,
            "usage: directorctl check-config FILE\n"
            "Checks FILE as directord --check does, without a daemon: every\n"
            "error with its place in the file, or FILE: OK and what it holds.\n",
        )
        return 0
    if len(words) != 1:
        raise UsageError("check-config: expected one configuration file")
    from director.config import ConfigError, load_config

    try:
        config = load_config(words[0])
    except ConfigError as e:
        # str(e): the count of errors, then each as directord --check prints it.
        _write(2, f"{e}\n")
        return 1
    for warning in config.warnings():
        _write(2, f"{words[0]}: warning: {warning}\n")
    _write(1, f"{words[0]}: OK, {config.counts()}\n")
    return 0


class _Decoding:
    """What _json's scanner reads off json.JSONDecoder, with strict JSON constants."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ValueError(f"{name} is not JSON")


_SCANNER = _json.make_scanner(_Decoding())  # type: ignore[arg-type]  # reads only these attributes


def encode(value: object) -> str:
    """JSON text of a request (dicts, lists, strings, numbers, booleans, None) and a newline."""
    return _encode(value) + "\n"


# _json's encoder, as json.dumps(separators=(",", ":")) makes it: the text
# _encode writes, at C speed (`status --json` of 10,000 real servers: 60 ms
# of the host's CPU against 164).
def _unencodable(value: object) -> object:
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


_C_ENCODE = _json.make_encoder(
    None, _unencodable, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)


def encode_data(value: object) -> str:
    """JSON text of a response's data and a newline, as `encode` writes it."""
    try:
        return "".join(_C_ENCODE(value, 0)) + "\n"
    except (TypeError, ValueError):  # what the C encoder does not take, _encode says why
        return encode(value)


def _encode(value: object) -> str:
    if isinstance(value, str):
        return _json.encode_basestring_ascii(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ",".join(_encode(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{_encode(str(k))}:{_encode(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


if __name__ == "__main__":
    sys.exit(main())
