"""The fast reading of `ipvsadm -R` input: the canonical lines of `ipvsadm -S`
without the option scanner, and the line splitting up to the last newline.
Each must give exactly what the full, ipvsadm-compatible reading gives (the
full parser's answers are compared with ipvsadm 1.31 itself in
test_ipvsadm_cli.py and the kernel tests)."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import example, given
from hypothesis import strategies as st

from director.ipvs import ops
from director.ipvs.model import Destination, Forward, Protocol, Service, ServiceKey
from director.ipvsadm.cli import (
    _Canonical,
    _parse,
    _scan_lines,
    _words,
    parse_restore,
    restore_lines,
)
from director.ipvsadm.commands import Apply, Command
from director.ipvsadm.errors import ParseError
from director.ipvsadm.names import NUMERIC

VIP = ServiceKey.inet(Protocol.TCP, "10.1.0.1", 80)


def full(words: list[str]) -> Command | ParseError:
    try:
        return _parse(["ipvsadm", *words], NUMERIC, reading_stdin=True)
    except ParseError as error:
        return error


def full_restore(text: str) -> list[Command | ParseError]:
    """parse_restore as it was: every line through the full parser."""
    steps: list[Command | ParseError] = []
    for words in _scan_lines(text):
        step = full(words)
        steps.append(step)
        if isinstance(step, ParseError) and step.fatal:
            break
    return steps


def same(a: list[Command | ParseError], b: list[Command | ParseError]) -> bool:
    """Commands equal, errors with the same message, status and fatality."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, ParseError) or isinstance(y, ParseError):
            if not (isinstance(x, ParseError) and isinstance(y, ParseError)):
                return False
            if (x.message, x.status, x.fatal) != (y.message, y.status, y.fatal):
                return False
        elif x != y:
            return False
    return True


def test_save_lines_take_the_fast_way_with_the_full_parsers_result() -> None:
    canonical = _Canonical()
    lines = [
        ["-A", "-t", "10.1.0.1:80", "-s", "wrr"],
        ["-A", "-u", "10.1.0.1:53", "-s", "none"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:8080", "-m", "-w", "1"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:8080", "-g", "-w", "0"],
        ["-a", "-u", "255.255.255.255:65535", "-r", "0.0.0.0:1", "-m", "-w", "2147483647"],
    ]
    for words in lines:
        fast = canonical.parse(words)
        assert fast is not None, words
        assert fast == full(words)
    assert canonical.parse(lines[0]) == Apply(ops.AddService(Service(VIP, "wrr")))
    # -g: the real server gets the service's port, as ipvsadm sends it
    assert canonical.parse(lines[3]) == Apply(
        ops.AddDestination(VIP, Destination(IPv4Address("10.2.0.1"), 80, Forward.ROUTE, 0))
    )


def test_other_spellings_are_left_to_the_full_parser() -> None:
    canonical = _Canonical()
    for words in (
        ["-A", "-t", "10.1.0.1:0", "-s", "rr"],  # zero port: an error
        ["-A", "-t", "010.1.0.1:80", "-s", "rr"],  # octal, as inet_aton reads it
        ["-A", "-t", "10.1.0.1:080", "-s", "rr"],
        ["-A", "-t", "10.1.0.256:80", "-s", "rr"],
        ["-A", "-t", "10.1.0.1:65536", "-s", "rr"],
        ["-A", "-t", "10.1.1:80", "-s", "rr"],
        ["-A", "-t", "[::1]:80", "-s", "rr"],
        ["-A", "-t", "10.1.0.1:http", "-s", "rr"],
        ["-A", "-t", "10.1.0.1:80", "-s", "a-very-long-scheduler-name"],
        ["-A", "-f", "1", "-s", "rr"],
        ["-A", "-t", "10.1.0.1:80", "-s", "rr", "-p"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-i", "-w", "1"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "+1"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "01"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "2147483648"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1", "-m", "-w", "1"],
        ["-a", "-t", "10.1.0.1:80", "-m", "-r", "10.2.0.1:80", "-w", "1"],
        ["-a", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-x", "1"],
        ["-e", "-t", "10.1.0.1:80", "-r", "10.2.0.1:80", "-m", "-w", "1"],
    ):
        assert canonical.parse(words) is None, words


OCTETS = st.sampled_from(["0", "1", "10", "99", "255", "256", "00", "010", "0x1", "+1", ""])
PORTS = st.sampled_from(["1", "80", "65535", "0", "65536", "080", "http", "99999", ""])
ENDPOINTS = st.one_of(
    st.builds(lambda o, p: ".".join(o) + ":" + p, st.lists(OCTETS, min_size=3, max_size=5), PORTS),
    st.sampled_from(["[::1]:80", "10.0.0.1", "host:80", "1.2.3.4:80:80", "1.2.3.4 :80"]),
)
WORDS = st.one_of(
    st.sampled_from(["-A", "-a", "-e", "-t", "-u", "-f", "-r", "-m", "-g", "-i", "-w", "-s"]),
    st.sampled_from(["wrr", "rr", "none", "RR", "x" * 16, "0", "1", "2147483647", "2147483648"]),
    st.sampled_from(["-1", "+5", "007", "--weight=1", "-w1", "-mw", "ipvsadm", "a\0b"]),
    ENDPOINTS,
)


@given(
    st.sampled_from(["-A", "-a"]),
    st.sampled_from(["-t", "-u", "-f"]),
    ENDPOINTS,
    st.lists(WORDS, max_size=6),
)
@example("-a", "-t", "10.1.0.1:80", ["-r", "10.2.0.1:80", "-g", "-w", "7"])
def test_the_fast_way_agrees_with_the_full_parser(
    command: str, protocol: str, service: str, rest: list[str]
) -> None:
    words = [command, protocol, service, *rest]
    fast = _Canonical().parse(words)
    if fast is not None:
        assert fast == full(words)


@given(st.text(alphabet=" \t\r\n\v-Aab#\0", max_size=40) | st.sampled_from(["ipvsadm\n", "a  "]))
def test_line_splitting_is_the_character_scanners(text: str) -> None:
    assert restore_lines(text) == _scan_lines(text)


@given(
    st.lists(
        st.one_of(
            st.builds(lambda w: " ".join(w), st.lists(WORDS, max_size=8)),
            st.builds(
                lambda p, s, r, f, w: f"-a {p} {s} -r {r} {f} -w {w}",
                st.sampled_from(["-t", "-u"]),
                ENDPOINTS,
                ENDPOINTS,
                st.sampled_from(["-m", "-g", "-i"]),
                st.sampled_from(["0", "1", "100", "-1"]),
            ),
            st.builds(lambda s, x: f"-A -t {s} -s {x}", ENDPOINTS, st.sampled_from(["wrr", "R"])),
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r\n", " \n", "\t"]),
)
def test_a_restore_reads_as_the_full_parser_reads_it(lines: list[str], end: str) -> None:
    text = end.join(lines) + end
    assert same(parse_restore(text), full_restore(text))


def test_a_saved_table_reads_as_the_full_parser_reads_it() -> None:
    text = "".join(
        f"-A -t 10.1.{i // 250}.{i % 250 + 1}:80 -s wrr\n"
        + "".join(
            f"-a -t 10.1.{i // 250}.{i % 250 + 1}:80 -r 10.2.{i % 250}.{j + 1}:80 -m -w {j}\n"
            for j in range(4)
        )
        for i in range(300)
    )
    steps = parse_restore(text)
    assert len(steps) == 1500
    assert same(steps, full_restore(text))


@given(
    st.one_of(
        st.builds(
            lambda p, s, r, f, w: f"-a {p} {s} -r {r} {f} -w {w}",
            st.sampled_from(["-t", "-u", "-f"]),
            ENDPOINTS | WORDS,
            ENDPOINTS | WORDS,
            st.sampled_from(["-m", "-g", "-i"]),
            st.sampled_from(["0", "1", "100", "-1", "ipvsadm", "1\0"]),
        ),
        st.builds(lambda s, x: f"-A -t {s} -s {x}", ENDPOINTS | WORDS, WORDS),
    ),
    st.sampled_from(["", " ", "\t", "ipvsadm ", "\v"]),
    st.sampled_from(["", " ", "\r", " ipvsadm"]),
)
@example("-a -t 10.1.0.1:80 -r 10.2.0.1:80 -m -w 1", "ipvsadm ", "")
@example("-a -t 10.1.0.1:80 -r ipvsadm -m -w 1", "", "")
def test_a_whole_canonical_line_is_its_words(line: str, before: str, after: str) -> None:
    """_Canonical.line takes a line without splitting it: what it answers
    is what parse answers for the words the split gives."""
    text = before + line + after
    fast = _Canonical().line(text)
    if fast is not None:
        assert fast == _Canonical().parse(_words(text))
        assert fast == full(_words(text))
