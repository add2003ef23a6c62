"""Hypothesis on the config parser: whatever the text, parse_config returns a
Config or raises ConfigError, and a Config it returns encodes into netlink
requests the encoder takes (what --check accepts, the kernel's bounds take).

Documents are built from the real sections and keys (with plausible values,
values at and past every bound, and values of any TOML type), with random
keys, nested tables and arrays of tables mixed in; they are written as TOML
text, both with [section] / [[array]] headers and as inline tables.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from director.config import Config, ConfigError, parse_config
from director.config.checks import KEYS_BY_TYPE
from director.config.toml import literal, string
from director.ipvs import genl, ops
from director.ipvs.facts import (
    KNOWN_SCHEDULERS,
    NO_MODULES,
    destination_problem,
    unicast_problem,
)
from director.ipvs.model import TIMEOUT_MAX

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- TOML text from a document (keys and values as config/toml.py writes them) --------


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def to_toml(document: Mapping[str, object], *, headers: bool) -> str:
    """TOML text for `document`: with headers, top-level tables become
    [name] sections and arrays of tables [[name]] ones (their own arrays of
    tables [[name.sub]]); everything else is inline."""
    if not headers:
        return "".join(f"{string(k)} = {literal(v)}\n" for k, v in document.items())
    lines = [
        f"{string(k)} = {literal(v)}"
        for k, v in document.items()
        if not isinstance(v, dict) and not _is_table_array(v)
    ]
    for key, value in document.items():
        if isinstance(value, dict):
            lines.append(f"[{string(key)}]")
            lines += [f"{string(k)} = {literal(v)}" for k, v in value.items()]
        elif _is_table_array(value):
            assert isinstance(value, list)
            for item in value:
                lines.append(f"[[{string(key)}]]")
                subs = {k: v for k, v in item.items() if _is_table_array(v)}
                lines += [f"{string(k)} = {literal(v)}" for k, v in item.items() if k not in subs]
                for sub, items in subs.items():
                    for sub_item in items:
                        lines.append(f"[[{string(key)}.{string(sub)}]]")
                        lines += [f"{string(k)} = {literal(v)}" for k, v in sub_item.items()]
    return "\n".join(lines) + "\n"


# -- documents ---------------------------------------------------------------------------

KEYS = st.text(max_size=12) | st.sampled_from(["type", "address", "port", "check", "weight"])
SCALARS = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    # TOML has no fold: a time written and read back has fold 0
    | st.datetimes(max_value=datetime.datetime(9999, 12, 31)).map(lambda d: d.replace(fold=0))
    | st.dates()
    | st.times().map(lambda t: t.replace(fold=0))
)
ANYTHING = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=8,
)
EDGES = st.sampled_from(
    [0, 1, -1, 255, 256, 65535, 65536, 2147483, 2147484, 2678400, 2678401, 2**31 - 1]
) | st.sampled_from([2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63)])
NUMBERS = EDGES | st.integers(-(2**40), 2**40)
SECONDS = NUMBERS | st.floats(allow_nan=True, allow_infinity=True)
HOSTS = (
    st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1", "0.0.0.0", "0.1.2.3", "240.0.0.1"])
    | st.sampled_from(["255.255.255.255", "224.0.0.1", "239.1.1.1", "2001:db8::1", "::", "::1"])
    | st.sampled_from(["ff02::1", "fe80::1", "::ffff:10.0.0.2", "fd00::1", "10.0.0.x", "h", ""])
) | st.ip_addresses().map(str)
PORTS = st.sampled_from(["", ":0", ":80", ":65535", ":65536", ":http", ":-1", ":²", ":٣"])


@st.composite
def endpoints(draw: st.DrawFn) -> str:
    host, port = draw(HOSTS), draw(PORTS)
    if ":" in host and port and draw(st.booleans()):
        host = f"[{host}]"
    return host + port


@dataclass(frozen=True)
class Field:
    """A key's values: valid ones, and wild ones (plausible, often refused)."""

    valid: st.SearchStrategy[Any]
    wild: st.SearchStrategy[Any] | None = None


def table(
    fields: Mapping[str, Field], required: tuple[str, ...] = ()
) -> st.SearchStrategy[dict[str, object]]:
    """A table with the `required` keys (mostly) and some of the others, each
    with a valid value (mostly), a wild one, or anything at all; and now and
    then a key the parser does not know."""
    optional = sorted(set(fields) - set(required))

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, object]:
        # hypothesis draws small integers most: a rare case is the top of a range
        keys = [k for k in required if draw(st.integers(0, 19)) < 19]
        for key in draw(st.lists(st.sampled_from(optional), unique=True, max_size=5)):
            # a key with no valid value only now and then, or no table would pass
            if fields[key].valid is not fields[key].wild or draw(st.integers(0, 3)) == 3:
                keys.append(key)
        result: dict[str, object] = {}
        for key in keys:
            roll, field = draw(st.integers(0, 39)), fields[key]
            if roll == 39:
                result[key] = draw(ANYTHING)
            elif roll >= 37:
                result[key] = draw(field.valid if field.wild is None else field.wild)
            else:
                result[key] = draw(field.valid)
        if draw(st.integers(0, 39)) == 39:
            result[draw(KEYS)] = draw(ANYTHING)
        return result

    return build()


def wild(strategy: st.SearchStrategy[Any]) -> Field:
    return Field(strategy, strategy)


FILES = st.sampled_from(
    ["/nonexistent", "rel", "/etc/passwd", "/dev/null", "/", "/a\x00b"]
) | st.text(max_size=10)
CHECK_TABLE = table(
    {
        "type": Field(st.sampled_from([*KEYS_BY_TYPE]), st.sampled_from(["smtp", ""])),
        "interval": Field(st.floats(0.01, 100), SECONDS),
        "timeout": Field(st.floats(0.01, 100), SECONDS),
        "rise": Field(st.integers(1, 10), NUMBERS),
        "fall": Field(st.integers(1, 10), NUMBERS),
        "port": Field(st.integers(1, 65535), NUMBERS),
        "address": Field(st.sampled_from(["10.0.0.9", "2001:db8::9"]), HOSTS),
        "method": wild(st.sampled_from(["GET", "head", "GE T", ""]) | st.text(max_size=8)),
        "path": wild(st.sampled_from(["/", "/h", "x"]) | st.text(max_size=8)),
        "host": wild(st.sampled_from(["example.org", "bücher.example", "a b", ""]) | st.text()),
        "expect_status": wild(
            st.lists(NUMBERS | st.sampled_from(["200-299", "599-100"]), max_size=3) | NUMBERS
        ),
        "expect_body": wild(st.sampled_from(["ok", "[", "(a|b)"]) | st.text(max_size=8)),
        "verify_tls": Field(st.booleans()),
        "payload": wild(st.sampled_from(["hex:00ff", "hex:0", "ping"]) | st.text(max_size=8)),
        "expect": wild(st.sampled_from(["^pong", "("]) | st.text(max_size=8)),
        "command": wild(st.sampled_from(["/bin/true", "a 'b", ""]) | st.lists(st.text(max_size=6))),
        "dynamic_weight": Field(st.booleans()),
        "silence": Field(st.sampled_from(["up", "down"]), st.just("maybe")),
        "user": wild(st.sampled_from(["root", "nobody", "no-such-user", ""]) | st.text(max_size=8)),
        "ca_file": wild(FILES),
        "cert_file": wild(FILES),
        "key_file": wild(FILES),
    }
)
VALID_CHECKS = st.sampled_from(
    [{}, {"type": "tcp", "port": 81}, {"type": "http", "path": "/h"}, {"type": "udp"}]
) | st.sampled_from([{"type": "exec", "command": ["/bin/true"]}, {"type": "https"}])
CHECK = Field(VALID_CHECKS, CHECK_TABLE)
REAL_SERVER = table(
    {
        "address": Field(
            st.builds("10.0.0.{}{}".format, st.integers(2, 250), st.sampled_from(["", ":8080"])),
            endpoints(),
        ),
        "name": Field(st.text(max_size=10)),
        "forward": Field(st.sampled_from(["route", "masq", "tunnel"]), st.just("dr")),
        "weight": Field(st.integers(0, 65535), NUMBERS),
        "thresholds": Field(
            st.sampled_from([{}, {"upper": 10, "lower": 5}, {"upper": 2**31 - 1}]),
            table({"upper": wild(NUMBERS), "lower": wild(NUMBERS)}),
        ),
        "tun_type": wild(st.sampled_from(["ipip", "gue", "gre", "vxlan"])),
        "tun_port": wild(NUMBERS),
        "tun_checksum": wild(st.sampled_from(["nocsum", "csum", "remcsum", "x"])),
        "check": CHECK,
    },
    required=("address",),
)
VIRTUAL_SERVER = table(
    {
        "protocol": Field(st.sampled_from(["tcp", "udp", "sctp"]), st.just("icmp")),
        "address": Field(
            st.sampled_from(["10.0.0.1:80", "10.0.0.1:443", "10.1.0.1:53"]),
            endpoints(),
        ),
        "fwmark": Field(st.integers(1, 2**32 - 1), NUMBERS),
        "family": wild(st.sampled_from(["ipv4", "ipv6", "ipx"])),
        "ipv6": wild(st.booleans()),
        "scheduler": Field(
            st.sampled_from(KNOWN_SCHEDULERS), st.sampled_from(["x" * 16, "a b", ""]) | st.text()
        ),
        "scheduler_flags": wild(
            st.lists(
                st.sampled_from(["sh-fallback", "sh-port", "mh-port", "flag-1", "flag-3", "x"]),
                max_size=3,
            )
        ),
        "persistent": Field(st.integers(1, 2678400), NUMBERS),
        "persistent_netmask": Field(
            st.integers(1, 32), NUMBERS | st.sampled_from(["255.255.255.0", "255.0.255.0", "x"])
        ),
        "one_packet": Field(st.booleans()),
        "pe": wild(st.sampled_from(["sip", "h323", "p" * 32, ""])),
        "on_failure": Field(st.sampled_from(["remove", "weight0"]), st.just("drop")),
        "check": CHECK,
        "quorum": Field(st.integers(1, 2), NUMBERS),
        "sorry_server": Field(
            st.sampled_from([{"address": "10.0.0.254"}, {"address": "10.0.0.253", "weight": 9}]),
            table(
                {
                    "address": wild(endpoints()),
                    "forward": wild(st.sampled_from(["route", "masq", "tunnel"])),
                    "weight": wild(NUMBERS),
                }
            ),
        ),
        "panic": Field(st.booleans()),
        "slow_start": Field(st.floats(0, 1000), SECONDS),
        "real_server": Field(st.lists(REAL_SERVER, max_size=4)),
    },
    required=("protocol", "address", "real_server"),
)
DOCUMENTS = table(
    {
        "ipvs": Field(
            table(
                {
                    "timeouts": Field(
                        table(
                            {
                                "tcp": Field(st.integers(0, TIMEOUT_MAX), NUMBERS),
                                "tcpfin": Field(st.integers(0, TIMEOUT_MAX), NUMBERS),
                                "udp": Field(st.integers(0, TIMEOUT_MAX), NUMBERS),
                            }
                        )
                    )
                }
            )
        ),
        "daemon": Field(
            table(
                {
                    "flush_on_stop": Field(st.booleans()),
                    "reconcile_interval": Field(st.floats(0.1, 60), SECONDS),
                    "state_file": Field(st.just("/run/s.json"), st.text(max_size=8)),
                    "log_level": Field(st.sampled_from(["debug", "info"]), st.just("trace")),
                }
            )
        ),
        "control": Field(
            table(
                {
                    "socket": Field(st.just("/run/d.sock"), st.just("x.sock")),
                    "group": Field(st.text(max_size=8)),
                    "admin_group": Field(st.text(max_size=8)),
                    "mode": Field(st.sampled_from([0o660, "0660"]), NUMBERS | st.just("0999")),
                    "runtime_check": CHECK,
                }
            )
        ),
        "virtual_server": Field(st.lists(VIRTUAL_SERVER, max_size=3)),
    },
    required=("virtual_server",),
)

# -- properties --------------------------------------------------------------------------


def parses_or_config_error(text: str) -> Config | None:
    try:
        config = parse_config(text, "fuzz.toml", NO_MODULES)
    except ConfigError as error:
        assert error.errors
        assert all(isinstance(e, str) and e for e in error.errors)
        assert error.source == "fuzz.toml"
        return None
    assert isinstance(config, Config)
    return config


def kernel_takes(config: Config) -> None:
    """What an accepted config makes encodes, and names no address the
    kernel refuses."""
    operations: list[ops.Operation] = []
    if config.ipvs.timeouts is not None:
        operations.append(ops.SetTimeouts(config.ipvs.timeouts))
    for vs in config.virtual_servers:
        operations.append(ops.AddService(vs.service()))
        if vs.key.address is not None:
            assert unicast_problem(vs.key.address) is None
        servers = [rs.destination() for rs in vs.real_servers]
        if vs.sorry_server is not None:
            servers.append(vs.sorry_server.destination())
        for dest in servers:
            assert destination_problem(dest.address) is None
            operations.append(ops.AddDestination(vs.key, dest))
    for op in operations:
        genl.operation_body(op)


@FUZZ
@given(st.text())
def test_any_text_gives_a_config_or_a_config_error(text: str) -> None:
    parses_or_config_error(text)


@FUZZ
@given(st.binary().map(lambda b: b.decode("utf-8", "replace")))
def test_any_bytes_as_text_give_a_config_or_a_config_error(text: str) -> None:
    parses_or_config_error(text)


@FUZZ
@given(DOCUMENTS, st.booleans())
def test_documents_of_real_keys_give_a_config_or_a_config_error(
    document: dict[str, object], headers: bool
) -> None:
    text = to_toml(document, headers=headers)
    config = parses_or_config_error(text)
    if config is not None:
        kernel_takes(config)


@FUZZ
@given(st.dictionaries(KEYS, ANYTHING, max_size=4), st.booleans())
def test_documents_of_random_keys_give_a_config_or_a_config_error(
    document: dict[str, object], headers: bool
) -> None:
    parses_or_config_error(to_toml(document, headers=headers))


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return sorted((k, _canonical(v)) for k, v in value.items())
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return repr(value)


@FUZZ
@given(DOCUMENTS)
def test_the_generated_text_is_the_document(document: dict[str, object]) -> None:
    # Guards the fuzz itself: text that tomli refuses would only test syntax errors.
    assert _canonical(tomli.loads(to_toml(document, headers=False))) == _canonical(document)
    assert _canonical(tomli.loads(to_toml(document, headers=True))) == _canonical(document)


def test_nesting_deeper_than_tomli_takes_is_a_config_error() -> None:
    # tomli raises RecursionError past 400 levels; it must come out as a ConfigError.
    assert parses_or_config_error("a = " + "[" * 1000 + "]" * 1000 + "\n") is None
    assert parses_or_config_error("a = " + "{b = " * 1000 + "1" + "}" * 1000 + "\n") is None
