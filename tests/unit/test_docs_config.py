"""docs/config.md against the config parser, so that the two cannot drift apart.

The parser has no list of its keys: each table's keys are those its code reads
(director.config.reader.Table records every key asked for, and close()
refuses every other one as "unknown key"). So the accepted keys are found by
parsing a config that holds every table the parser knows, recording what each
table read at close(), and by checking that a stray key in each of those
tables is refused. Against that:

- every key the parser accepts has a row in the doc's table for its section,
  with its type and a default, and every row names a key the parser accepts
  (for check tables: for exactly the check types the row lists);
- a default written as one literal (`5.0`, `"up"`, `wlc`) is the parser's:
  a config that sets the key to it parses to the same Config as one without;
- every TOML example on the page parses without a problem, and together the
  examples set every documented key.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli

from director.config import ConfigError, parse_config
from director.config import parse as config_parse
from director.config import reader as config_reader
from director.config.checks import KEYS_BY_TYPE
from director.ipvs.facts import NO_MODULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "config.md"
CHECK = "check"
# The doc's section headings and the TOML tables they describe.
SECTIONS = {
    "`[ipvs]`": "ipvs",
    "`[daemon]`": "daemon",
    "`[control]`": "control",
    "`[metrics]`": "metrics",
    "`[[virtual_server]]`": "virtual_server",
    "`[[virtual_server.real_server]]`": "virtual_server.real_server",
    "`[bgp]`": "bgp",
    "`[[bgp.peer]]`": "bgp.peer",
    "Check tables": CHECK,
}
ALL_TYPES = frozenset(KEYS_BY_TYPE)
# Where the doc's example files live: the test writes real PEM files there.
TLS_DIR = "/etc/director/tls/"


# -- the doc -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    section: str  # a key of SECTIONS' values
    key: str  # dotted within the section: "timeouts.tcp"
    type: str
    types: frozenset[str]  # check types the key belongs to (ALL_TYPES outside checks)
    default: str


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def _cells(line: str) -> list[str]:
    # A cell may hold `a \| b`: split on the unescaped bars only.
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def doc_rows(text: str) -> list[Row]:
    """The key tables of every section of SECTIONS: a table whose header
    starts with `| key |`."""
    rows: list[Row] = []
    section: str | None = None
    header: list[str] = []
    for line in text.splitlines():
        heading = re.fullmatch(r"#{2,3} (.+)", line)
        if heading:
            section = SECTIONS.get(heading[1].strip(), section if line.startswith("###") else None)
            header = []
            continue
        if section is None or not line.startswith("|"):
            header = [] if not line.startswith("|") else header
            continue
        cells = _cells(line)
        if not header:
            header = cells
            continue
        if set(line) <= set("|-: ") or header[0] != "key":
            continue
        named = dict(zip(header, cells, strict=True))
        key = re.fullmatch(r"`([a-z0-9_.]+)`", named["key"])
        assert key, f"{DOC.name}: a key cell that is not one `key`: {line}"
        types = named.get("types", "")
        rows.append(
            Row(
                section,
                key[1],
                named.get("type", ""),
                ALL_TYPES if types in ("", "all") else frozenset(types.split()),
                named["default"],
            )
        )
    return rows


def toml_examples(text: str) -> list[str]:
    return re.findall(r"```toml\n(.*?)```", text, flags=re.DOTALL)


# -- the parser --------------------------------------------------------------------------


def normalized(path: str) -> str:
    """'virtual_server[0].real_server[1].check' -> 'virtual_server.real_server.check'."""
    return re.sub(r"\[\d+\]", "", path)


def section_of(path: str) -> tuple[str, str]:
    """The doc section of a table's path, and the path's dotted rest
    ('ipvs.timeouts' -> ('ipvs', 'timeouts.')); any check table is CHECK."""
    path = normalized(path)
    if path.rsplit(".", 1)[-1] in ("check", "runtime_check", "runtime_check_udp"):
        return CHECK, ""
    for section in sorted(set(SECTIONS.values()) - {CHECK}, key=len, reverse=True):
        if path == section or path.startswith(section + "."):
            rest = path[len(section) + 1 :]
            return section, f"{rest}." if rest else ""
    return "", f"{path}." if path else ""


# A config that holds every table the parser reads (every section, every
# sub-table, a check of every type), each marked with a line `#@name` where a
# key may be added.
EVERY_TABLE = """
#@root
[ipvs]
#@ipvs
[ipvs.timeouts]
#@ipvs.timeouts
tcp = 900
[ipvs.sync]
#@ipvs.sync
role = "master"
interface = "eth0"
syncid = 1
[daemon]
#@daemon
[control]
#@control
[control.runtime_check]
#@control.runtime_check
[control.runtime_check_udp]
#@control.runtime_check_udp
[metrics]
#@metrics
listen = "127.0.0.1:9531"
[bgp]
#@bgp
local_as = 65001
[[bgp.peer]]
#@bgp.peer
address = "10.0.0.254"
as = 65000
{services}
"""
SERVICE = """
[[virtual_server]]
#@virtual_server
protocol = "tcp"
address = "10.0.0.1:{port}"
[virtual_server.check]
#@virtual_server.check
type = "{type}"
{command}
[virtual_server.sorry_server]
#@virtual_server.sorry_server
address = "10.0.0.9:80"
[[virtual_server.real_server]]
#@virtual_server.real_server
address = "10.0.0.2:80"
[virtual_server.real_server.thresholds]
#@virtual_server.real_server.thresholds
upper = 10
[virtual_server.real_server.check]
#@virtual_server.real_server.check
interval = 2.0
"""


def every_table() -> str:
    services = "".join(
        SERVICE.format(
            port=80 + i,
            type=kind,
            command='command = ["/bin/true"]' if kind == "exec" else "",
        )
        for i, kind in enumerate(sorted(KEYS_BY_TYPE))
    )
    return EVERY_TABLE.format(services=services)


def marked_tables(text: str) -> list[str]:
    return re.findall(r"^#@(\S+)$", text, flags=re.MULTILINE)


def add_line(text: str, table: str, line: str) -> str:
    """`line` added to every table marked `#@table`."""
    return text.replace(f"#@{table}\n", f"#@{table}\n{line}\n")


@pytest.fixture(scope="module")
def accepted() -> dict[tuple[str, str], frozenset[str]]:
    """(section, key) -> the check types (ALL_TYPES outside checks) whose
    tables accepted it, read off every Table at close()."""
    found: dict[tuple[str, str], set[str]] = {}
    original = config_reader.Table.close

    def recording(
        table: config_reader.Table,
        *,
        known: tuple[str, ...] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        section, prefix = section_of(table.path)
        kind = table.data.get("type", "tcp") if section == CHECK else None
        for key in table._read | set(known):
            types = found.setdefault((section, prefix + key), set())
            types.update([str(kind)] if kind is not None else ALL_TYPES)
        original(table, known=known, elsewhere=elsewhere)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config_reader.Table, "close", recording)
        # The parser takes a service it parsed before from its cache: all afresh.
        patch.setattr(config_parse, "_REMEMBERED", config_parse._Remembered())
        parse_config(every_table(), "every-table.toml", NO_MODULES)
    return {key: frozenset(types) for key, types in found.items()}


# -- the tests ---------------------------------------------------------------------------


def test_the_doc_has_a_table_for_every_section() -> None:
    sections = {row.section for row in doc_rows(doc_text())}
    assert sections == set(SECTIONS.values())


def test_every_table_the_parser_reads_refuses_an_unknown_key() -> None:
    """So that what a table read is all it accepts."""
    text = every_table()
    tables = sorted(set(marked_tables(text)))
    assert len(tables) == 17  # the root, 6 sections, 10 sub-tables
    for table in tables:
        with pytest.raises(ConfigError) as info:
            parse_config(add_line(text, table, "stray_key = 1"), "t.toml", NO_MODULES)
        assert any("stray_key: unknown key" in e for e in info.value.errors), (table, info.value)


def test_the_probe_config_itself_is_valid() -> None:
    config = parse_config(every_table(), "every-table.toml", NO_MODULES)
    assert len(config.virtual_servers) == len(KEYS_BY_TYPE)


def test_every_accepted_key_is_documented_with_a_type_and_a_default(
    accepted: dict[tuple[str, str], frozenset[str]],
) -> None:
    rows = {(r.section, r.key): r for r in doc_rows(doc_text())}
    roots = {key for section, key in accepted if section == ""}
    assert roots == {section.split(".")[0] for section in SECTIONS.values() if section != CHECK}
    undocumented = sorted(f"{s}: {k}" for s, k in accepted if s and (s, k) not in rows)
    assert not undocumented, f"keys the parser accepts but {DOC.name} lacks: {undocumented}"
    for where, row in rows.items():
        assert row.default, f"{where}: no default in {DOC.name}"
        assert row.type, f"{where}: no type in {DOC.name}"


def test_every_documented_key_is_accepted_for_the_types_it_lists(
    accepted: dict[tuple[str, str], frozenset[str]],
) -> None:
    for row in doc_rows(doc_text()):
        where = f"{row.section}: {row.key}"
        assert (row.section, row.key) in accepted, f"{DOC.name} documents {where}: not accepted"
        assert accepted[(row.section, row.key)] == row.types, where


def test_numeric_keys_state_their_range() -> None:
    for row in doc_rows(doc_text()):
        if re.search(r"integer|seconds", row.type):
            assert re.search(r"\d|upper", row.type), f"{row.section}: {row.key}: {row.type}"


def _literal(default: str) -> str | None:
    """The TOML value of a default cell that is one literal in backticks:
    `5.0`, `"up"`, `["200-299"]`, or a bare word such as `wlc` (a string)."""
    match = re.fullmatch(r"`([^`]+)`", default)
    if match is None:
        return None
    try:
        tomli.loads(f"x = {match[1]}")
    except tomli.TOMLDecodeError:
        return '"' + match[1] + '"'
    return match[1]


# What a key's default can only be set next to (the key is refused elsewhere).
NEEDS: dict[tuple[str, str], tuple[str, str]] = {
    ("virtual_server", "family"): ('protocol = "tcp"\naddress = "10.0.0.1:', "fwmark = 1\n#"),
    ("virtual_server", "ipv6"): ('protocol = "tcp"\naddress = "10.0.0.1:', "fwmark = 1\n#"),
}
NEEDS_LINE: dict[tuple[str, str], tuple[str, str]] = {
    ("virtual_server.real_server", "tun_type"): (
        "virtual_server.real_server",
        'forward = "tunnel"',
    ),
    ("virtual_server.real_server", "tun_checksum"): (
        "virtual_server.real_server",
        'forward = "tunnel"',
    ),
}


def _with_default(text: str, row: Row, value: str) -> tuple[str, str]:
    """(config without the key, config with it set to `value`)."""
    if (row.section, row.key) in NEEDS:
        old, new = NEEDS[(row.section, row.key)]
        text = text.replace(old, new)
    if (row.section, row.key) in NEEDS_LINE:
        table, line = NEEDS_LINE[(row.section, row.key)]
        text = add_line(text, table, line)
    *parent, key = row.key.split(".")
    if row.section == CHECK:
        kind = sorted(row.types)[0]
        text = text.replace('type = "tcp"\n', f'type = "{kind}"\n', 1)
        if kind == "exec":
            text = add_line(text, "virtual_server.check", 'command = ["/bin/true"]')
        if key == "type":
            text = text.replace(f'type = "{kind}"\n', "", 1)
        table = "virtual_server.check"
    else:
        table = ".".join([row.section, *parent])
    # A key that is a table of the base config: written as the key alone.
    text = text.replace(f"[{table}.{key}]\n#@{table}.{key}\n", "")
    return text, add_line(text, table, f"{key} = {value}")


def one_service() -> str:
    """EVERY_TABLE with one TCP-checked service, its sub-tables empty where a
    documented default may be added."""
    service = SERVICE.format(port=80, type="tcp", command="")
    text = EVERY_TABLE.format(services=service)
    return text.replace("tcp = 900\n", "").replace("upper = 10\n", "")


def test_every_literal_default_is_the_parsers() -> None:
    checked = []
    for row in doc_rows(doc_text()):
        value = _literal(row.default)
        if value is None:
            continue
        without, with_default = _with_default(one_service(), row, value)
        base = parse_config(without, "t.toml", NO_MODULES)
        try:
            same = parse_config(with_default, "t.toml", NO_MODULES)
        except ConfigError as error:
            raise AssertionError(f"{row.section}: {row.key} = {value}: {error}") from None
        assert same == base, f"{row.section}: {row.key}: documented default {value} is not it"
        checked.append(row.key)
    assert len(checked) >= 40, checked


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's CA, client certificate and key, as real PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    openssl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-days", "1", "-nodes", "-subj", "/CN=x"]  # fmt: skip
    for cert, key in (("internal-ca.pem", "ca.key"), ("director.pem", "director.key")):
        subprocess.run(
            [*openssl, "-keyout", str(directory / key), "-out", str(directory / cert)],
            check=True,
            capture_output=True,
        )
    return directory


def examples(tls_files: Path) -> Iterator[tuple[int, str]]:
    for i, text in enumerate(toml_examples(doc_text())):
        yield i, text.replace(TLS_DIR, f"{tls_files}/")


def test_every_example_parses(tls_files: Path) -> None:
    found = list(examples(tls_files))
    assert len(found) >= 8
    for i, text in found:
        try:
            parse_config(text, f"{DOC.name} example {i}", NO_MODULES)
        except ConfigError as error:
            raise AssertionError(f"example {i}:\n{text}\n{error}") from None


def _keys_set(data: object, path: str = "") -> Iterator[tuple[str, str]]:
    """(section, dotted key) of every key a TOML document sets."""
    if isinstance(data, list):
        for item in data:
            yield from _keys_set(item, path)
    elif isinstance(data, dict):
        for key, value in data.items():
            section, prefix = section_of(path)
            if path:
                yield section, prefix + key
            inner = f"{path}.{key}" if path else key
            if isinstance(value, dict) or (
                isinstance(value, list) and value and isinstance(value[0], dict)
            ):
                yield from _keys_set(value, inner)


def test_the_examples_set_every_documented_key(tls_files: Path) -> None:
    shown = {key for _, text in examples(tls_files) for key in _keys_set(tomli.loads(text))}
    missing = sorted(
        f"{row.section}: {row.key}"
        for row in doc_rows(doc_text())
        if (row.section, row.key) not in shown
    )
    assert not missing, f"keys no example in {DOC.name} sets: {missing}"
