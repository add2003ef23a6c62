"""Check tables ({ type = "http", ... }) into director.health.spec values."""

from __future__ import annotations

import os
import pwd
import re
import shlex
from collections.abc import Callable, Mapping
from ipaddress import ip_address
from typing import Literal

from director.config.reader import Problems, Table, describe_type
from director.health.probes import load_probe
from director.health.probes.tls import TlsSettings, TlsSetupError, tls_context
from director.health.spec import (
    Check,
    DnsCheck,
    ExecCheck,
    HttpCheck,
    StatusRange,
    TcpCheck,
    Timing,
    UdpCheck,
    host_problem,
    pattern_problem,
)
from director.ipvs.facts import unicast_problem
from director.ipvs.model import IPAddress

_TIMING = ("type", "interval", "timeout", "rise", "fall", "initial")
_PROBE = ("port", "address")
_HTTP = ("method", "path", "host", "expect_status", "expect_body")
_DNS = ("query_name", "query_type", "expect_rcode", "expect_address", "expect_answer", "transport")
KEYS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "tcp": _TIMING + _PROBE,
    "http": _TIMING + _PROBE + _HTTP,
    "https": (*_TIMING, *_PROBE, *_HTTP, "verify_tls", "ca_file", "cert_file", "key_file"),
    "udp": (*_TIMING, *_PROBE, "payload", "expect", "silence"),
    "dns": (*_TIMING, *_PROBE, *_DNS),
    "exec": (*_TIMING, "command", "dynamic_weight", "user"),
}
_SILENCE: dict[str, Literal["up", "down"]] = {"up": "up", "down": "down"}
_INITIAL: dict[str, Literal["unknown", "up"]] = {"unknown": "unknown", "up": "up"}
_TRANSPORTS: dict[str, Literal["udp", "tcp"]] = {"udp": "udp", "tcp": "tcp"}
_ALL_KEYS = tuple(dict.fromkeys(k for keys in KEYS_BY_TYPE.values() for k in keys))
# A request line longer than 8 KiB is refused by Apache (LimitRequestLine 8190)
# and nginx (large_client_header_buffers 8k) alike.
MAX_PATH = 8000
_STATUS_RANGE = re.compile(r"\s*(\d{3})\s*-\s*(\d{3})\s*")


def merge_check(
    base: Mapping[str, object] | None,
    base_path: str,
    override: Mapping[str, object],
    override_path: str,
    problems: Problems,
) -> Table:
    """A real server's check table over its service's: keys it sets win;
    with a different type it replaces the service's check entirely (and a
    key it lacks is then its own to give: errors name the real server's
    check)."""
    same_type = base is not None and override.get("type", base.get("type")) == base.get(
        "type", "tcp"
    )
    merged = {**base, **override} if base is not None and same_type else dict(override)

    def path_of(key: str) -> str:
        owner = override_path if key in override or not same_type else base_path
        return f"{owner}.{key}"

    return Table(merged, override_path, problems, path_of)


def parse_server_check(
    base: Mapping[str, object] | None,
    base_path: str,
    override: Mapping[str, object],
    override_path: str,
    problems: Problems,
) -> Check | None:
    """A real server's check (merge_check), where a key it inherits from
    its service's check that the server's own keys leave without a use or
    contradict is left out: a server's `verify_tls = false` drops the
    service's `ca_file`, its `query_type = "SOA"` the service's
    `expect_address`. (keepalived's per-server checks replace the
    service's whole; here the keys a server gives win, and a key it cannot
    keep gives way.) An inherited key wrong in itself stays: its error is
    the service's check's own, reported there. A check is parsed again
    only when its first parse found an error."""

    def attempt(inherited: Mapping[str, object] | None) -> tuple[Check | None, Problems]:
        found = Problems()
        return parse_check(merge_check(inherited, base_path, override, override_path, found)), found

    def clashes(found: Problems, own: set[str]) -> set[str]:
        """The inherited keys of errors that the service's check alone has not."""
        prefix = f"{base_path}."
        return {
            path[len(prefix) :].split(".")[0].split("[")[0]
            for path, error in zip(found.paths, found.errors, strict=True)
            if path.startswith(prefix) and error not in own
        }

    check, found = attempt(base)
    if not found.errors:
        return check
    if base is not None:
        alone = Problems()
        parse_check(Table(dict(base), base_path, alone))
        own = set(alone.errors)
        clash = clashes(found, own)
        trimmed = {key: value for key, value in base.items() if key not in clash}
        # Left out only if that leaves no new error on what is inherited
        # (cert_file dropped, an inherited key_file would have no use).
        if clash and not clashes(attempt(trimmed)[1], own):
            base = trimmed
    return parse_check(merge_check(base, base_path, override, override_path, problems))


def parse_check(table: Table) -> Check | None:
    kind = table.choice("type", {k: k for k in KEYS_BY_TYPE}) if "type" in table else "tcp"
    if kind is None:
        table.close(known=_ALL_KEYS)
        return None
    keys = KEYS_BY_TYPE[kind]
    for key in table.data:
        if key not in keys and key in _ALL_KEYS:
            users = ", ".join(t for t, ks in KEYS_BY_TYPE.items() if key in ks)
            table.error(key, f"not a key of {_article(kind)} {kind} check (it is for {users})")
            table.raw(key)

    timing = Timing(
        interval=table.seconds("interval") or Timing.interval,
        timeout=table.seconds("timeout") or Timing.timeout,
        rise=table.integer("rise", 1, 1_000_000) or Timing.rise,
        fall=table.integer("fall", 1, 1_000_000) or Timing.fall,
        initial=table.choice("initial", _INITIAL) or Timing.initial,
    )
    check: Check
    if kind == "exec":
        check = ExecCheck(
            command=_command(table) or ("false",),
            timing=timing,
            dynamic_weight=table.boolean("dynamic_weight", False),
            user=_user(table),
        )
    else:
        port = table.integer("port", 1, 65535)
        address = _address(table, "address")
        if kind == "tcp":
            check = TcpCheck(timing, port, address)
        elif kind == "udp":
            check = _udp(table, timing, port, address)
        elif kind == "dns":
            check = _dns(table, timing, port, address)
        else:
            check = _http(table, timing, port, address, tls=kind == "https")
    table.close(known=keys)
    # Its probe's libraries load now, with the config (in the reload's
    # thread), rather than at its first probe, on the event loop.
    load_probe(type(check))
    return check


def _http(
    table: Table, timing: Timing, port: int | None, address: IPAddress | None, *, tls: bool
) -> HttpCheck:
    method = table.string("method") or "GET"
    if not re.fullmatch(r"[A-Za-z]+", method):
        table.error("method", "not an HTTP method", method)
    path = table.string("path") or "/"
    if not path.startswith("/"):
        table.error("path", 'must start with "/"', path)
    elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        table.error("path", "contains a control character", path)
    elif len(path) > MAX_PATH:
        table.error("path", f"longer than {MAX_PATH} characters", path[:40] + "...")
    host = table.string("host")
    if host is not None and (problem := host_problem(host)) is not None:
        table.error("host", f"not a host name or IP address ({problem})", host)
    statuses = _statuses(table)
    verify = table.boolean("verify_tls", True) if tls else True
    ca_file, cert_file, key_file = _tls_files(table, verify) if tls else (None, None, None)
    return HttpCheck(
        timing,
        port,
        address,
        tls=tls,
        method=method.upper(),
        path=path,
        host=host,
        expect_status=statuses or HttpCheck.expect_status,
        expect_body=_regex(table, "expect_body"),
        verify_tls=verify,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _tls_files(table: Table, verify: bool) -> tuple[str | None, str | None, str | None]:
    """ca_file, cert_file and key_file: absolute paths of files that load into
    an SSLContext now (one that cannot is an error here, not a probe that
    fails for ever)."""
    ca_file, cert_file, key_file = (_absolute_path(table, key) for key in _TLS_FILES)
    if ca_file is not None and not verify:
        table.error("ca_file", "has no use with verify_tls = false")
    elif ca_file is not None:
        _try_loading(table, TlsSettings(ca_file=ca_file))
    if key_file is not None and "cert_file" not in table:
        table.error("key_file", "only with cert_file (the client certificate)")
    elif cert_file is not None and (key_file is not None or "key_file" not in table):
        _try_loading(table, TlsSettings(verify=False, cert_file=cert_file, key_file=key_file))
    return ca_file, cert_file, key_file


_TLS_FILES = ("ca_file", "cert_file", "key_file")


def _try_loading(table: Table, settings: TlsSettings) -> None:
    try:
        tls_context(settings)
    except TlsSetupError as e:
        table.error(e.key, f"cannot load it: {e.reason}", e.path)


def _absolute_path(table: Table, key: str) -> str | None:
    path = table.string(key)
    if path is not None and not os.path.isabs(path):
        table.error(key, "must be an absolute path", path)
        return None
    return path


def _udp(table: Table, timing: Timing, port: int | None, address: IPAddress | None) -> UdpCheck:
    expect = _regex(table, "expect")
    silence = table.choice("silence", _SILENCE)
    if silence == "up" and "expect" in table:
        table.error("silence", "with expect, silence is always down (no matching reply)", silence)
    return UdpCheck(
        timing,
        port,
        address,
        payload=_payload(table),
        expect=expect,
        silence=silence or UdpCheck.silence,
    )


def _dns(table: Table, timing: Timing, port: int | None, address: IPAddress | None) -> DnsCheck:
    # dnspython's names: imported with the first DNS check, not with the config module.
    from director.health.probes.dns import QUERY_TYPES, REPLY_RCODES, name_problem

    name = _dns_name(table, name_problem)
    query_type = _mnemonic(table, "query_type", QUERY_TYPES, "an RR type (A, AAAA, SOA, NS, ...)")
    rcode = _mnemonic(table, "expect_rcode", REPLY_RCODES, f"an rcode ({', '.join(REPLY_RCODES)})")
    expect_address = _expected_address(table, query_type or DnsCheck.query_type)
    if expect_address is not None and (rcode or DnsCheck.expect_rcode) != "NOERROR":
        table.error("expect_address", 'an answer comes only with expect_rcode = "NOERROR"')
    return DnsCheck(
        timing,
        port,
        address,
        query_name=name or DnsCheck.query_name,
        query_type=query_type or DnsCheck.query_type,
        expect_rcode=rcode or DnsCheck.expect_rcode,
        expect_address=expect_address,
        expect_answer=_regex(table, "expect_answer"),
        transport=table.choice("transport", _TRANSPORTS) or DnsCheck.transport,
    )


def _dns_name(table: Table, name_problem: Callable[[str], str | None]) -> str | None:
    name = table.string("query_name")
    if name is None:
        return None
    if not name:
        table.error("query_name", 'empty (the root is ".")')
        return None
    problem = name_problem(name)
    if problem is not None:
        table.error("query_name", f"not a DNS name ({problem})", name)
        return None
    return name


def _mnemonic(table: Table, key: str, names: tuple[str, ...], what: str) -> str | None:
    """A name from `names`, in any case, as written there."""
    text = table.string(key)
    if text is None:
        return None
    if text.upper() not in names:
        table.error(key, f"not {what}", text)
        return None
    return text.upper()


def _expected_address(table: Table, query_type: str) -> IPAddress | None:
    text = table.string("expect_address")
    if text is None:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        table.error("expect_address", "not an IP address", text)
        return None
    wanted = "A" if address.version == 4 else "AAAA"
    if query_type not in {wanted, "ANY"}:
        table.error(
            "expect_address",
            f'an IPv{address.version} address answers query_type = "{wanted}", not "{query_type}"',
            text,
        )
    return address


def _user(table: Table) -> str | None:
    user = table.string("user")
    if user is None:
        return None
    try:
        pwd.getpwnam(user)
    except (KeyError, ValueError):
        table.error("user", "no such user", user)
        return None
    return user


def _statuses(table: Table) -> tuple[StatusRange, ...] | None:
    value = table.raw("expect_status")
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if not items:
        table.error("expect_status", "must list at least one status")
        return None
    ranges = []
    for i, item in enumerate(items):
        where = f"{table.where('expect_status')}" + (f"[{i}]" if isinstance(value, list) else "")
        match = _STATUS_RANGE.fullmatch(item) if isinstance(item, str) else None
        if isinstance(item, int) and not isinstance(item, bool):
            low = high = item
        elif match:
            low, high = int(match[1]), int(match[2])
        else:
            table.problems.add(
                where,
                f'expected a status (200) or a range ("200-299"), got {describe_type(item)}',
                item,
            )
            continue
        if not 100 <= low <= high <= 599:
            table.problems.add(where, "not an HTTP status or range between 100 and 599", item)
            continue
        ranges.append(StatusRange(low, high))
    return tuple(ranges)


def _regex(table: Table, key: str) -> str | None:
    pattern = table.string(key)
    if pattern is not None:
        problem = pattern_problem(pattern)
        if problem is not None:
            table.error(key, f"not a valid regular expression ({problem})", pattern)
            return None
    return pattern


def _payload(table: Table) -> bytes:
    text = table.string("payload")
    if text is None:
        return b""
    if text.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            table.error("payload", '"hex:" must be followed by pairs of hex digits', text)
            return b""
    return text.encode()


def _command(table: Table) -> tuple[str, ...] | None:
    value = table.raw("command")
    if value is None:
        table.error("command", "required for an exec check")
        return None
    if isinstance(value, str):
        try:
            words = shlex.split(value)
        except ValueError as e:
            table.error("command", f"cannot split into words ({e})", value)
            return None
    elif isinstance(value, list) and all(isinstance(w, str) for w in value):
        words = value
    else:
        table.error("command", "expected a string or an array of strings", value)
        return None
    if not words or not words[0]:
        table.error("command", "must name a program", value)
        return None
    return tuple(words)


def _address(table: Table, key: str) -> IPAddress | None:
    text = table.string(key)
    if text is None:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        table.error(key, "not an IP address", text)
        return None
    problem = unicast_problem(address)
    if problem is not None:
        table.error(key, f"not an address a probe can reach ({problem})", text)
        return None
    return address


def _article(kind: str) -> str:
    return "an" if kind in ("exec", "http", "https") else "a"  # an HTTP, a UDP
