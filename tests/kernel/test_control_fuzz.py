"""The control protocol fuzzed against one live directord (docs/control-protocol.md).

Hypothesis sends what clients should never send: arbitrary bytes, truncated
JSON, every field of a request with a wrong type, lines past the 1 MiB limit,
connections by the hundred at once, connections closed half-way or before the
answer, ipvsadm command lines of random options and values, and director
commands of random names and arguments. The daemon runs in a namespace of the
test's own (so whatever a fuzzed command changes is that namespace's table, and
a real server it adds is probed there, where no packet can leave). After every
case it must be alive and answer `-Ln` exactly as ipvsadm lists the same table,
every response line must be a well-formed response, and no request may end in
an internal error. The run is derandomized (the same cases every time) and
prints how many cases were tried.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import pytest
from ctl_support import Director, backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tables import entered, namespace, real, real_ok

from director.control.protocol import MAX_REQUEST_BYTES, decode_response

SERVICES = """\
[[virtual_server]]
protocol = "tcp"
address = "10.9.0.1:80"
scheduler = "wrr"
check = { type = "tcp", interval = 1.0, timeout = 1.0, rise = 1, fall = 1 }

[[virtual_server.real_server]]
address = "10.7.0.2:80"
forward = "masq"
weight = 3

[[virtual_server.real_server]]
address = "10.7.0.3:80"
forward = "masq"
"""
UNMANAGED = (
    ["-A", "-u", "10.9.0.5:53", "-s", "rr"],
    ["-a", "-u", "10.9.0.5:53", "-r", "10.8.0.1:53", "-g", "-w", "2"],
)
ANSWER_TIMEOUT = 30.0
LISTING_SETTLES = 60.0  # seconds -Ln and ipvsadm -Ln may take to agree (see alive_and_listing)
LIST = b'{"v":1,"argv":["-Ln"]}\n'
# DIRECTOR_FUZZ_SCALE=10 fuzzes ten times deeper (the default, 153 cases, takes
# about two minutes of a quiet VM's time at 0.5-1 s a case).
SCALE = float(os.environ.get("DIRECTOR_FUZZ_SCALE", "1"))
tried = {"cases": 0}
planned = {"cases": 0}
spent = {"case": 0.0, "check": 0.0}


def fuzz_settings(examples: int) -> settings:
    scaled = max(1, round(examples * SCALE))
    planned["cases"] += scaled
    return settings(
        max_examples=scaled,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Director]:
    with namespace() as netns, backends(netns) as listeners:
        listeners.listen("10.7.0.2", 80)
        listeners.listen("10.7.0.3", 80)
        d = Director(tmp_path_factory.mktemp("fuzz"), SERVICES, netns)
        try:
            with entered(netns):
                for line in UNMANAGED:
                    real_ok(line)
                d.start()
                d.wait_saved("-r 10.7.0.2:80")
            started = time.monotonic()
            yield d
            reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(
                    f"\ncontrol fuzz: {tried['cases']} cases in {time.monotonic() - started:.0f} s"
                    f" ({spent['check']:.0f} s of it checking -Ln after each),"
                    " the daemon alive and listing correctly after each"
                )
            with entered(netns):
                assert d.daemon.stop() == 0, d.log()
        finally:
            d.close()


@pytest.fixture
def d(world: Director) -> Iterator[Director]:
    with entered(world.netns):
        yield world


# -- talking to the socket ------------------------------------------------------


def connect(d: Director) -> socket.socket:
    """A connection; while the listen backlog is full (EAGAIN from a Unix
    socket's connect) it is tried again, for at most ANSWER_TIMEOUT s."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(ANSWER_TIMEOUT)
        try:
            sock.connect(str(d.socket))
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
            continue
        except BaseException:
            sock.close()
            raise
        return sock


def send(sock: socket.socket, payload: bytes) -> None:
    """Send what the server takes: it may close early (a too-long line)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(payload)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break  # closed with part of what was sent unread
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(d: Director, payload: bytes) -> bytes:
    """Send `payload`, close the write side, read until the server closes."""
    with connect(d) as sock:
        send(sock, payload)
        with contextlib.suppress(OSError):  # already reset by the server
            sock.shutdown(socket.SHUT_WR)
        return read_all(sock)


def well_formed(answer: bytes, why: object) -> list[dict[str, object]]:
    """Every line of `answer` is a response; none is an internal error."""
    assert answer == b"" or answer.endswith(b"\n"), (why, answer[-200:])
    responses = []
    for line in answer.splitlines():
        decode_response(line)  # raises ValueError naming the problem
        response = json.loads(line)
        assert "internal error" not in response["stderr"], (why, response)
        responses.append(response)
    return responses


def alive_and_listing(d: Director, why: object) -> None:
    """The daemon runs and its -Ln is what ipvsadm -Ln lists just after (or,
    when a pass changed the table in between, on a later try: a server a
    fuzzed command added fails its probes and its removal may take seconds in
    a loaded VM, so the reads are repeated until the table holds still, for
    at most LISTING_SETTLES s; a -Ln that differs from ipvsadm's on a still
    table never agrees)."""
    tried["cases"] += 1
    started = time.monotonic()
    process = d.daemon.process
    assert process is not None and process.poll() is None, (why, d.log())
    deadline = started + LISTING_SETTLES
    while True:
        [ours] = well_formed(exchange(d, LIST), why)
        theirs = real(["-Ln"])
        if (ours["stdout"], ours["stderr"], ours["status"]) == (
            theirs.stdout,
            theirs.stderr,
            theirs.status,
        ):
            spent["check"] += time.monotonic() - started
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a pass changed the table between the two reads
    raise AssertionError(f"{why!r}: -Ln differs from ipvsadm's:\n{theirs}\n{ours}\n{d.log()}")


# -- what is sent ------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ("v", "argv", "command", "args")
OPTIONS = [
    "-A",
    "-E",
    "-D",
    "-C",
    "-L",
    "-l",
    "-Z",
    "-a",
    "-e",
    "-d",
    "-h",
    "-v",
    "-R",
    "-S",
    "-t",
    "-u",
    "-f",
    "-s",
    "-p",
    "-M",
    "-r",
    "-m",
    "-i",
    "-g",
    "-w",
    "-x",
    "-y",
    "-n",
    "-c",
    "-X",
    "-6",
    "-o",
    "-b",
    "--set",
    "--start-daemon",
    "--stop-daemon",
    "--sctp-service",
    "--timeout",
    "--daemon",
    "--stats",
    "--rate",
    "--thresholds",
    "--persistent-conn",
    "--nosort",
    "--sort",
    "--exact",
    "--ipv6",
    "--ops",
    "--pe",
    "--sched-flags",
    "--mcast-interface",
    "--syncid",
    "--mcast-group",
    "--mcast-port",
    "--mcast-ttl",
    "--sync-maxlen",
    "--tun-info",
    "--tun-type",
    "--tun-port",
    "--tun-nocsum",
    "--tun-csum",
    "--tun-remcsum",
    "--persistent",
    "--weight",
    "--scheduler",
    "--real-server",
    "--numeric",
    "--connection",
    "--bogus",
]
# Services and servers from a small pool, so the table a fuzzed -A/-a builds
# stays small; everything else is random.
ADDRESSES = (
    "10.9.0.1:80",
    "10.9.0.2:80",
    "10.9.0.5:53",
    "[fd09::1]:443",
    "10.7.0.2:80",
    "10.7.0.9",
    "10.9.0.300:80",
    "[fd09::1",
    ":80",
    "",
)
VALUES = (
    st.sampled_from(ADDRESSES)
    | st.sampled_from(
        [
            "rr",
            "wrr",
            "lc",
            "wlc",
            "sh",
            "mh",
            "none",
            "nosuch",
            "sip",
            "ipip",
            "gue",
            "gre",
            "master",
            "backup",
        ]
    )
    | st.integers(min_value=-(2**33), max_value=2**33).map(str)
    | st.sampled_from(["sh-fallback,sh-port", "flag-1", "255.255.255.0", "128", "1", "0"])
    | st.text(max_size=12)
)
argv_words = st.lists(st.sampled_from(OPTIONS) | VALUES, max_size=10)
COMMANDS = ("status", "drain", "disable", "enable", "reload", "check-config")
ARG_KEYS = ("json", "service", "server", "wait", "timeout", "stdin", "path", "extra")
command_args = st.dictionaries(
    st.sampled_from(ARG_KEYS) | st.text(max_size=6),
    st.sampled_from(["tcp:10.9.0.1:80", "10.7.0.2:80", "10.7.0.3:80", "udp:10.9.0.5:53"])
    | st.just(0.1)
    | st.booleans()
    | json_values,
    max_size=5,
)


def line(message: object) -> bytes:
    return json.dumps(message).encode() + b"\n"


def request(argv: list[str] | None = None, command: str | None = None, **extra: object) -> bytes:
    message: dict[str, object] = {"v": 1}
    if argv is not None:
        message["argv"] = argv
    if command is not None:
        message["command"] = command
    message.update(extra)
    return line(message)


valid_requests = st.builds(request, argv=argv_words) | st.builds(
    lambda command, args: request(command=command, args=args),
    st.sampled_from(COMMANDS),
    command_args,
)


# -- the cases -------------------------------------------------------------------------


@fuzz_settings(25)
@given(
    payload=st.binary(max_size=2048)
    | st.lists(st.binary(max_size=120), min_size=1, max_size=8).map(b"\n".join)
)
def test_arbitrary_bytes(d: Director, payload: bytes) -> None:
    well_formed(exchange(d, payload), payload)
    alive_and_listing(d, payload)


@fuzz_settings(15)
@given(whole=valid_requests, data=st.data())
def test_truncated_json(d: Director, whole: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 2), label="cut")
    newline = data.draw(st.booleans(), label="newline")
    payload = whole[:cut] + (b"\n" if newline else b"")
    responses = well_formed(exchange(d, payload), payload)
    if payload.strip():
        assert [r.get("error") for r in responses] in (["not-json"], ["not-utf8"]), responses
    alive_and_listing(d, payload)


@fuzz_settings(25)
@given(
    field=st.sampled_from(FIELDS),
    value=json_values,
    base=st.sampled_from([{"v": 1, "argv": ["-Ln"]}, {"v": 1, "command": "status"}]),
    drop=st.booleans(),
)
def test_wrong_types_for_every_field(
    d: Director, field: str, value: object, base: dict[str, object], drop: bool
) -> None:
    message = dict(base)
    if drop:
        message.pop(field, None)
    else:
        message[field] = value
    payload = line(message)
    responses = well_formed(exchange(d, payload), message)
    assert len(responses) == 1, responses
    alive_and_listing(d, message)


@fuzz_settings(8)
@given(extra=st.dictionaries(st.text(min_size=1, max_size=10), json_values, min_size=1))
def test_unknown_fields(d: Director, extra: dict[str, object]) -> None:
    message = {"v": 1, "argv": ["-Ln"], **extra}
    responses = well_formed(exchange(d, line(message)), message)
    if set(extra) - set(FIELDS):
        assert responses[0].get("error") == "bad-field", responses
    alive_and_listing(d, message)


@fuzz_settings(4)
@given(
    size=st.sampled_from(
        [MAX_REQUEST_BYTES - 1, MAX_REQUEST_BYTES, MAX_REQUEST_BYTES + 1, 3 * MAX_REQUEST_BYTES]
    ),
    as_request=st.booleans(),
    newline=st.booleans(),
)
def test_huge_lines(d: Director, size: int, as_request: bool, newline: bool) -> None:
    if as_request:  # a request whose one argument fills the line
        head, tail = b'{"v":1,"argv":["', b'"]}'
        payload = head + b"a" * (size - len(head) - len(tail)) + tail
    else:
        payload = b"x" * size
    payload += b"\n" if newline else b""
    responses = well_formed(exchange(d, payload), size)
    assert len(responses) == 1, responses
    if size > MAX_REQUEST_BYTES:
        assert responses[0].get("error") == "too-long", responses
    alive_and_listing(d, (size, as_request, newline))


@fuzz_settings(4)
@given(
    count=st.integers(min_value=1, max_value=220),
    payloads=st.lists(valid_requests | st.binary(max_size=64), min_size=1, max_size=8),
    leave=st.sets(st.integers(min_value=0, max_value=219)),
)
def test_many_connections_at_once(
    d: Director, count: int, payloads: list[bytes], leave: set[int]
) -> None:
    """`count` connections open together (past the limit of 128 some are told
    `busy`), each sending a request; those in `leave` close without reading."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            socks.append(connect(d))
        for number, sock in enumerate(socks):
            send(sock, payloads[number % len(payloads)])
            if number in leave:
                sock.close()
            else:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
        for number, sock in enumerate(socks):
            if number not in leave:
                well_formed(read_all(sock), (count, number))
    finally:
        for sock in socks:
            sock.close()
    alive_and_listing(d, (count, len(leave)))


@fuzz_settings(12)
@given(
    payload=valid_requests | st.binary(max_size=200),
    cut=st.integers(min_value=0, max_value=300),
    how=st.sampled_from(["shut-write", "close-before-reading", "reset", "shut-both"]),
)
def test_half_closed_and_abandoned_connections(
    d: Director, payload: bytes, cut: int, how: str
) -> None:
    sock = connect(d)
    try:
        send(sock, payload[:cut])
        if how == "shut-write":
            sock.shutdown(socket.SHUT_WR)
            well_formed(read_all(sock), payload)
        elif how == "reset":  # SO_LINGER 0: the close discards what is queued
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        elif how == "shut-both":
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()
    alive_and_listing(d, (payload[:cut], how))


@fuzz_settings(40)
@given(argv=argv_words, stdin=st.none() | st.text(max_size=200))
def test_ipvsadm_command_lines_of_random_options_and_values(
    d: Director, argv: list[str], stdin: str | None
) -> None:
    args = {} if stdin is None else {"stdin": stdin}
    responses = well_formed(exchange(d, request(argv, args=args)), argv)
    assert len(responses) == 1, responses
    assert responses[0].get("error") is None, responses
    alive_and_listing(d, argv)


@fuzz_settings(20)
@given(
    command=st.sampled_from(COMMANDS) | st.text(min_size=1, max_size=12),
    args=command_args,
)
def test_director_commands_of_random_names_and_arguments(
    d: Director, command: str, args: dict[str, object]
) -> None:
    responses = well_formed(exchange(d, request(command=command, args=args)), (command, args))
    assert len(responses) == 1, responses
    assert responses[0].get("error") is None, responses
    alive_and_listing(d, (command, args))


def test_the_daemon_logged_no_bug_and_is_still_listening(d: Director) -> None:
    """Last: nothing the fuzzing sent reached a bug in the server."""
    assert d.daemon.events("control_connection_failed") == [], d.log()
    assert d.daemon.events("control_handler_failed") == [], d.log()
    alive_and_listing(d, "the end")


def test_fuzz_covered_the_cases(world: Director) -> None:
    """Hypothesis tried most of what was planned (it may stop early when a
    strategy has fewer distinct cases than asked for)."""
    assert tried["cases"] >= 0.7 * planned["cases"], (tried, planned)
