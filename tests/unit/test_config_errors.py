"""What an operator reads of a config's errors (operator trial: `forward =
"nat"` in 500 real servers printed 500 errors, and the one other mistake
was lost among them): in file order; one mistake repeated, the same
message about the same key at other entries, as the first in full and one
line with the exact count, the indices and the lines (bounded) of the
rest; past 50 distinct errors, the count of the others. `errors` keeps
every bare path, once, in the parse's order. Every place that prints them:
test_ctl_config_errors.py."""

from __future__ import annotations

import pytest

from director.config import ConfigError, parse_config
from director.config.reader import Problems
from director.ipvs.facts import NO_MODULES

SERVICE = '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n'
NAT = 'must be one of route, masq, tunnel (for "nat" write "masq"): "nat"'


def server(i: int, *keys: str) -> str:
    return (
        f'[[virtual_server.real_server]]\naddress = "10.1.{i // 250}.{i % 250 + 1}:80"\n'
        + "".join(f"{key}\n" for key in keys)
    )


def error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "d.toml", NO_MODULES)
    return caught.value


# 500 real servers with forward = "nat" (line 6 + 3 i, one more past the
# 300th's weight), one of them with a weight too, and [daemon] at the end.
ALIKE = (
    SERVICE
    + "".join(
        server(i, 'forward = "nat"', *(["weight = 70000"] if i == 300 else [])) for i in range(500)
    )
    + '[daemon]\nlog_level = "loud"\n'
)


def test_one_mistake_in_500_real_servers_is_two_lines_and_the_other_is_kept() -> None:
    caught = error(ALIKE)
    assert caught.named_errors == [
        f"virtual_server[0].real_server[0].forward (10.0.0.1:80 tcp, 10.1.0.1:80, line 6): {NAT}",
        "... and 499 more alike: virtual_server[0].real_server[1..499].forward "
        "(lines 9, 12, 15, 18, 21, ..., 1504)",
        "virtual_server[0].real_server[300].weight (10.0.0.1:80 tcp, 10.1.1.51:80, line 907): "
        "must be between 0 and 65535: 70000",
        'daemon.log_level (line 1506): must be one of debug, info, warning, error: "loud"',
    ]
    assert str(caught) == "d.toml: 502 errors:\n" + "\n".join(
        f"d.toml: {line}" for line in caught.named_errors
    )
    # every bare path, in the parse's order ([daemon] first)
    assert len(caught.errors) == 502
    assert caught.errors[0].startswith("daemon.log_level: ")
    assert [e.partition(":")[0] for e in caught.errors[1:]] == [
        f"virtual_server[0].real_server[{i}].{key}"
        for i in range(500)
        for key in (["forward", "weight"] if i == 300 else ["forward"])
    ]


def test_alike_across_entries_and_unlike_values_stay_apart() -> None:
    """The same key with another value is another error; the indices of
    the alike ones are given as runs, each level's where every combination
    is there, else the last level's for each of the others (operator trial:
    "virtual_server[1..2].real_server[3..4,7]" for three errors read as
    six)."""
    text = "".join(
        SERVICE.replace("0.1:80", f"0.{vs + 1}:80")
        + server(10 * vs, 'forward = "nat"')
        + server(10 * vs + 1, 'forward = "dr"' if vs == 1 else 'forward = "nat"')
        for vs in range(3)
    )
    assert error(text).named_errors == [
        f"virtual_server[0].real_server[0].forward (10.0.0.1:80 tcp, 10.1.0.1:80, line 6): {NAT}",
        "... and 4 more alike: virtual_server[0].real_server[1].forward, "
        "virtual_server[1].real_server[0].forward, virtual_server[2].real_server[0..1].forward "
        "(lines 9, 15, 24, 27)",
        "virtual_server[1].real_server[1].forward (10.0.0.2:80 tcp, 10.1.0.12:80, line 18): "
        'must be one of route, masq, tunnel (for "dr" write "route"): "dr"',
    ]


def test_alike_in_every_entry_reads_as_the_rest_of_them() -> None:
    """One mistake in every real server of every service: the first in
    full, the others as "the rest of" each level's runs (exact: the count
    is the product less the first)."""
    text = "".join(
        SERVICE.replace("0.1:80", f"0.{vs + 1}:80")
        + server(10 * vs, 'forward = "nat"')
        + server(10 * vs + 1, 'forward = "nat"')
        for vs in range(2)
    )
    assert error(text).named_errors[1:] == [
        "... and 3 more alike: the rest of virtual_server[0..1].real_server[0..1].forward "
        "(lines 9, 15, 18)",
    ]


def test_one_more_alike_and_an_entrys_own_error() -> None:
    """An entry's own error (not one of its keys') repeated groups the
    same way; two alike are two errors in full (trial report: "... and 1
    more alike: virtual_server[1].schedular (line 30)" did not name the
    second service, and was no shorter), three are grouped."""
    text = SERVICE + server(0) + "[[virtual_server.real_server]]\n" * 2
    assert error(text).named_errors == [
        "virtual_server[0].real_server[1].address (10.0.0.1:80 tcp, line 6): required",
        "virtual_server[0].real_server[2].address (10.0.0.1:80 tcp, line 7): required",
    ]
    text += "[[virtual_server.real_server]]\n"
    assert error(text).named_errors == [
        "virtual_server[0].real_server[1].address (10.0.0.1:80 tcp, line 6): required",
        "... and 2 more alike: virtual_server[0].real_server[2..3].address (lines 7, 8)",
    ]


def test_errors_come_in_file_order() -> None:
    """[daemon] and [control] are read before the virtual servers, a
    service's keys in the parser's order: each printed at its line."""
    text = (
        SERVICE.replace('"tcp"', '"tcpp"')
        + 'scheduler = 3\n[virtual_server.check]\ntype = "tcp"\nrise = 0\n'
        + '[daemon]\nlog_level = "loud"\n[control]\nsocket = "relative"\n'
    )
    caught = error(text)
    assert [e.partition(":")[0] for e in caught.errors] == [
        "control.socket",
        "daemon.log_level",
        "virtual_server[0].protocol",
        "virtual_server[0].scheduler",
        "virtual_server[0].check.rise",
    ]
    assert [e.partition(" ")[0] for e in caught.named_errors] == [
        "virtual_server[0].protocol",
        "virtual_server[0].scheduler",
        "virtual_server[0].check.rise",
        "daemon.log_level",
        "control.socket",
    ]


def test_errors_with_no_line_come_last_in_the_order_found() -> None:
    problems = Problems()
    for path in ("b", "x[0].a", "c", "x[1].a", "x[2].a", "d"):
        problems.add(path, "wrong")
    line = {"x[0].a": 9, "x[1].a": 3, "c": 5}
    # x[2].a is alike x[1].a: listed with it, though it has no line
    assert problems.named_errors(line.get) == [
        "x[1].a (line 3): wrong",
        "... and 2 more alike: x[0,2].a (line 9)",
        "c (line 5): wrong",
        "b: wrong",
        "d: wrong",
    ]


def test_the_line_for_errors_alike_lists_six_lines_then_five_and_the_last() -> None:
    problems = Problems()
    for i in range(8):
        problems.add(f"x[{i}].a", "wrong", 1)
    assert problems.named_errors(lambda path: 10 + int(path[2])) == [
        "x[0].a (line 10): wrong: 1",
        "... and 7 more alike: x[1..7].a (lines 11, 12, 13, 14, 15, ..., 17)",
    ]
    # x[6] has no line: six to list
    assert problems.named_errors(lambda path: 10 + int(path[2]) if path[2] != "6" else None) == [
        "x[0].a (line 10): wrong: 1",
        "... and 7 more alike: x[1..7].a (lines 11, 12, 13, 14, 15, 17)",
    ]
    assert problems.named_errors(lambda path: 10 + int(path[2]) if path[2] > "1" else None) == [
        "x[2].a (line 12): wrong: 1",
        "... and 7 more alike: x[0..1,3..7].a (lines 13, 14, 15, 16, 17)",
    ]
    problems = Problems()
    for i in (0, 2, 4, 6, 8, 10, 12, 13, 14, 20):
        problems.add(f"x[{i}].a", "wrong", 1)
    assert problems.named_errors() == [
        "x[0].a: wrong: 1",
        "... and 9 more alike: x[2,4,6,8,10,...,20].a",
    ]


def test_past_50_distinct_errors_a_count_of_the_rest() -> None:
    """60 weights, each its own value: 50 printed, then the count."""
    text = SERVICE + "".join(server(i, f"weight = {70000 + i}") for i in range(60))
    caught = error(text)
    assert len(caught.errors) == 60
    assert len(caught.named_errors) == 51
    assert caught.named_errors[49].startswith("virtual_server[0].real_server[49].weight (")
    assert caught.named_errors[50] == "... and 10 more errors not listed"
    assert str(caught).startswith("d.toml: 60 errors:\n")
    assert str(caught).endswith("\nd.toml: ... and 10 more errors not listed")


def test_the_count_past_the_cap_is_of_errors_with_the_distinct_ones() -> None:
    problems = Problems()
    for i in range(3):
        problems.add(f"x[{i}].a", "wrong")
    problems.add("z", "wrong", 1)
    for i in range(3):
        problems.add(f"w[{i}].c", "bad")
    assert problems.named_errors(shown=2) == [
        "x[0].a: wrong",
        "... and 2 more alike: x[1..2].a",
        "z: wrong: 1",
        "... and 3 more errors not listed (1 distinct)",
    ]
    assert problems.named_errors(shown=1)[2:] == ["... and 4 more errors not listed (2 distinct)"]
    assert problems.named_errors(shown=3)[-2:] == ["w[0].c: bad", "... and 2 more alike: w[1..2].c"]
    problems.add("v[0].d", "odd")
    problems.add("v[1].d", "odd")
    assert problems.named_errors()[-2:] == ["v[0].d: odd", "v[1].d: odd"]
