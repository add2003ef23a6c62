"""Config errors name the line of the key that is wrong (operator trial at
10,000 real servers: the line of an entry's header left `weight = 300`
to find among its keys, and a duplicate's first one, a top-level table's
key and an inline table's had no line at all): each kind with its exact
message and line; director.config.lines.key_lines on what could shift a
line (multi-line values, quoted and dotted keys, a statement it cannot
read)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from test_config_plain import config_text

from director.config import ConfigError, parse_config
from director.config.lines import key_lines
from director.ipvs.facts import NO_MODULES

SERVICE = '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'


def named(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "d.toml", NO_MODULES)
    return caught.value.named_errors


def test_a_key_of_an_entry_has_its_own_line() -> None:
    text = (
        SERVICE
        + '[[virtual_server.real_server]]\naddress = "10.0.1.1:80"\n'
        + '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\nname = "b"\n\nweight = 300\n'
    )
    assert named(text.replace("300", "70000")) == [
        "virtual_server[0].real_server[1].weight (10.0.0.1:80 tcp, 10.0.1.2:80, line 10): "
        "must be between 0 and 65535: 70000"
    ]


def test_a_key_of_a_top_level_table_has_its_line() -> None:
    text = '# director\n[daemon]\nflush_on_stop = true\nlog_level = "loud"\n\n[metrics]\nlisten = "x"\n'
    assert named(text) == [
        'daemon.log_level (line 4): must be one of debug, info, warning, error: "loud"',
        'metrics.listen (line 7): no port: expected an IP address and port ("127.0.0.1:9531", '
        '"[::1]:9531") or an absolute Unix socket path: "x"',
    ]
    # a dotted key, and a key of a table never opened but by a dotted key
    assert named("[ipvs]\ntimeouts.tcp = -1\n") == [
        "ipvs.timeouts.tcp (line 2): must be between 0 and 2147483: -1"
    ]


def test_a_key_of_an_inline_table_has_the_line_the_table_is_on() -> None:
    text = SERVICE + "scheduler = 'rr'\ncheck = { type = 'tcp', interval = -1 }\n"
    assert named(text) == [
        "virtual_server[0].check.interval (10.0.0.1:80 tcp, line 5): "
        "must be a finite number above 0: -1"
    ]
    inline = SERVICE + (
        'real_server = [{ address = "10.0.1.1:80" },\n'
        '  { address = "10.0.1.2:80", weight = -1 },\n]\nscheduler = 3\n'
    )
    assert named(inline) == [
        "virtual_server[0].real_server[1].weight (10.0.0.1:80 tcp, 10.0.1.2:80, line 5): "
        "must be between 0 and 65535: -1",
        "virtual_server[0].scheduler (10.0.0.1:80 tcp, line 7): expected a string, got an integer: 3",
    ]
    control = '[control]\nsocket = "/run/d.sock"\nruntime_check = { type = "tcp", fall = 0 }\n'
    assert named(control) == [
        "control.runtime_check.fall (line 3): must be between 1 and 1000000: 0"
    ]


def test_a_duplicate_names_both_lines() -> None:
    server = '[[virtual_server.real_server]]\naddress = "10.0.1.1:80"\n'
    text = SERVICE + server + server.replace("1.1", "1.2") + "weight = 2\n" + server + SERVICE
    assert named(text) == [
        "virtual_server[0].real_server[2] (10.0.0.1:80 tcp, 10.0.1.1:80, line 9): "
        "duplicate real server 10.0.1.1:80 (first at virtual_server[0].real_server[0], line 4)",
        "virtual_server[1] (10.0.0.1:80 tcp, line 11): duplicate virtual service "
        "TCP 10.0.0.1:80 (first at virtual_server[0], line 1)",
    ]
    peer = '[[bgp.peer]]\naddress = "10.9.0.1"\nas = 65000\n'
    assert named("[bgp]\nlocal_as = 65001\n" + peer + "\n" + peer) == [
        "bgp.peer[1].address (10.9.0.1, line 8): a second peer at this address "
        "(first at bgp.peer[0], line 3)"
    ]


def test_a_missing_key_has_its_tables_header_line() -> None:
    text = SERVICE + '[[virtual_server.real_server]]\nweight = 3\n\n[ipvs.sync]\nrole = "master"\n'
    assert named(text) == [
        "virtual_server[0].real_server[0].address (10.0.0.1:80 tcp, line 4): required",
        "ipvs.sync.interface (line 7): required: the interface sync messages use",
        "ipvs.sync.syncid (line 7): required (0..255; 0: a backup takes every master's)",
    ]


def test_keys_over_several_lines() -> None:
    """A multi-line array's element has its own line, and the keys after a
    multi-line value keep theirs; so has a key of an inline table over
    several lines. A multi-line array in an inline table has the line its
    key is on (what is wrong is on the lines that follow)."""
    text = SERVICE + (
        'scheduler = "sh"\nscheduler_flags = [\n  "sh-port",  # ]\n\n  "mh-port",\n]\n'
        'persistent = """\n[[virtual_server]]\nweight = 3\n"""\n'
        "quorum = 0\n"
        '[virtual_server.check]\ntype = "http"\nexpect_status = [\n  200,\n  "99-100",\n]\n'
    )
    assert named(text) == [
        "virtual_server[0].scheduler_flags[1] (10.0.0.1:80 tcp, line 8): "
        'only for the mh scheduler, not sh: "mh-port"',
        "virtual_server[0].persistent (10.0.0.1:80 tcp, line 10): "
        'expected an integer, got a string: "[[virtual_server]]\\nweight = 3\\n"',
        "virtual_server[0].quorum (10.0.0.1:80 tcp, line 14): must be between 1 and 2147483647: 0",
        "virtual_server[0].check.expect_status[1] (10.0.0.1:80 tcp, line 19): "
        'expected a status (200) or a range ("200-299"), got a string: "99-100"',
    ]
    inline = SERVICE + 'check = { type = "http", expect_status = [\n  200,\n  "99-100",\n] }\n'
    assert named(inline) == [
        "virtual_server[0].check.expect_status[1] (10.0.0.1:80 tcp, line 4): "
        'expected a status (200) or a range ("200-299"), got a string: "99-100"',
    ]
    # an inline table over several lines (TOML 1.1): each key its line
    inline = SERVICE + 'check = {\n  type = "http",\n  fall = 0, path = "x",\n  rise = 0,\n}\n'
    assert named(inline) == [
        "virtual_server[0].check.fall (10.0.0.1:80 tcp, line 6): must be between 1 and 1000000: 0",
        'virtual_server[0].check.path (10.0.0.1:80 tcp, line 6): must start with "/": "x"',
        "virtual_server[0].check.rise (10.0.0.1:80 tcp, line 7): must be between 1 and 1000000: 0",
    ]


def test_key_lines_read_quoted_and_dotted_keys_and_stop_at_what_they_cannot_read() -> None:
    text = (
        "[ 'a' . \"b.c\" ]\nd = 1\n"  # line 1, 2
        '[[x]]\n[[x]]\n"y" . z = [\n  [1,\n   2], 3\n]\n'  # 3-8
        '"e\\"f" = 1\n[g]\nh = 1\n'  # 9-11
    )
    line_of = key_lines(text)
    paths = ["a.b.c", "a.b.c.d", "a.b.c.nokey", "a", "x[0]", "x[1].y", "x[2]", 'x[1].e"f', "g.h"]
    assert [line_of(path) for path in paths] == [1, 2, 1, 1, 3, 5, 3, 9, 11]
    # an element has the line its part of the array begins on: "[1,\n2], 3"
    assert [line_of("x[1].y.z[0]"), line_of("x[1].y.z[1]")] == [6, 6]
    # not TOML: nothing after it is known
    line_of = key_lines("a = 1\n@@ = 2\n[b]\nc = 3\n")
    assert [line_of(path) for path in ("a", "b", "b.c", "nothing")] == [1, None, None, None]


@settings(max_examples=200, deadline=None)
@given(text=config_text())
def test_every_error_of_a_file_with_headers_has_its_keys_line(text: str) -> None:
    """Of the plain path's test's files (every table with a header): each
    error has a line, that of its key when the key is in its table (the
    key's own line), else its entry's header; so has each listed on the
    line for errors alike. They come in file order, and the lines count
    every error once."""
    try:
        parse_config(text, modules=NO_MODULES)
    except ConfigError as error:
        errors, count = error.named_errors, len(error.errors)
    else:
        return
    lines = text.split("\n")
    text_lines, counted = [], 0
    for message in errors:
        full = re.match(r"(\S+) \((?:[^()]*, )?line (\d+)\)", message)
        alike = re.fullmatch(
            r"\.\.\. and (\d+) more alike: (?:the rest of )?(\S+?),? .*\(lines? ([\d, .]+)\)",
            message,
        )
        rest = re.fullmatch(
            r"\.\.\. and (\d+) more errors? not listed( \(\d+ distinct\))?", message
        )
        if rest is not None:  # past 50 distinct errors: the last line
            assert message == errors[-1]
            counted += int(rest[1])
            continue
        if full is not None:
            path, numbers, counted = full[1], [int(full[2])], counted + 1
            text_lines.append(numbers[0])
        else:
            assert alike is not None, message
            path, counted = alike[2], counted + int(alike[1])
            numbers = [int(n) for n in alike[3].split(", ") if n != "..."]
        key = re.fullmatch(r".*\]\.(\w+)", path)
        for number in numbers:
            line = lines[number - 1]
            if key is not None and re.search(rf"^{key[1]} = ", "\n".join(lines), re.M):
                assert line.startswith((f"{key[1]} = ", "[[")), (message, line)
            else:
                assert line.startswith("[["), (message, line)
    assert text_lines == sorted(text_lines)
    assert counted == count, errors
