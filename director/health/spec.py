"""What a health check is, as configured: one frozen dataclass per check type.

The config module builds these from TOML; the probes read them. Timing
(interval, timeout, rise, fall) is common to every type. `port` and `address`
let a probe aim somewhere other than the real server's own address and port.
`host_problem` says which HTTP `host` values are valid: the config refuses the
others and the probe fails them (a check built in code skips the config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_address
from typing import Literal

from director.ipvs.model import IPAddress

MAX_HOST_NAME = 253  # bytes, without the trailing dot (RFC 1035 section 2.3.4)
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")  # RFC 1123 section 2.1


@dataclass(frozen=True)
class Timing:
    """When a check probes and how many results in a row change a server's health
    (director.health.state); common to every check type."""

    interval: float = 1.0  # seconds between the starts of two probes
    timeout: float = 1.0  # seconds a probe may take before it counts as failed
    rise: int = 2  # successes in a row that make a down (or new) server up
    fall: int = 2  # failures in a row that make an up server down
    # A real server's place before its first probe. "unknown": out of the
    # table until a probe passes (one found in the kernel's table stays, as
    # adopted). "up": in at once, as keepalived without `alpha` puts it;
    # then, like an adopted one, out only after `fall` failures in a row.
    initial: Literal["unknown", "up"] = "unknown"


@dataclass(frozen=True)
class TcpCheck:
    """A TCP check (type "tcp"): up when the server accepts a connection."""

    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None


@dataclass(frozen=True)
class StatusRange:
    """The HTTP statuses from `low` to `high`, both included: one item of an HTTP
    check's expect_status (200, or "200-299")."""

    low: int
    high: int

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self.low <= status <= self.high


@dataclass(frozen=True)
class HttpCheck:
    """An HTTP or HTTPS check (type "http", "https"): up when the server answers
    `method` `path` with a status in `expect_status` and, when set, a body in
    which `expect_body` is found. Redirects are not followed."""

    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None
    tls: bool = False  # "https" when True
    method: str = "GET"
    path: str = "/"
    host: str | None = None  # Host header and TLS name (see host_problem); default: the address
    expect_status: tuple[StatusRange, ...] = (StatusRange(200, 299),)
    expect_body: str | None = None  # regex searched in the body
    verify_tls: bool = True
    ca_file: str | None = None  # absolute path of a PEM bundle; None: the system's trust store
    cert_file: str | None = None  # absolute path of a PEM client certificate (mutual TLS)
    key_file: str | None = None  # its private key; None: in cert_file


@dataclass(frozen=True)
class UdpCheck:
    """A UDP check (type "udp"): sends `payload`; up on a reply that matches
    `expect` (any reply without it), down on an ICMP error; silence is down
    with `expect`, else as `silence` says."""

    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None
    payload: bytes = b""
    expect: str | None = None  # regex the reply must match
    # What no reply and no ICMP error within the timeout means when there is no
    # `expect` (with `expect`, silence is always down).
    silence: Literal["up", "down"] = "up"

    @property
    def silence_is_up(self) -> bool:
        return self.expect is None and self.silence == "up"


@dataclass(frozen=True)
class ExecCheck:
    """Run a command; exit status 0 is up. With dynamic_weight, the last line of
    its standard output, when it is an integer, is the weight to set. `user`
    (a user name) runs it as that user with its groups; None: as the daemon."""

    command: tuple[str, ...]
    timing: Timing = Timing()
    dynamic_weight: bool = False
    user: str | None = None


@dataclass(frozen=True)
class DnsCheck:
    """Send one DNS query and judge the reply: up when its rcode is
    `expect_rcode` and, when set, its answer section holds `expect_address`
    (an A or AAAA record) and matches `expect_answer` (a regex searched in the
    answer section's text, one record per line as in a zone file). Names are
    as dnspython writes them: `query_type` an RR type mnemonic ("A", "SOA"),
    `expect_rcode` an rcode mnemonic ("NOERROR", "NXDOMAIN"). The defaults,
    "." and SOA, are keepalived's DNS_CHECK's."""

    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None
    query_name: str = "."
    query_type: str = "SOA"
    expect_rcode: str = "NOERROR"
    expect_address: IPAddress | None = None
    expect_answer: str | None = None
    transport: Literal["udp", "tcp"] = "udp"


Check = TcpCheck | HttpCheck | UdpCheck | DnsCheck | ExecCheck


def probed_endpoint(check: Check, address: IPAddress, port: int) -> tuple[IPAddress, int] | None:
    """Where `check` probes a real server at `address`:`port`: the check's
    own address and port where it has them; None for an exec check (it
    runs a command)."""
    if isinstance(check, ExecCheck):
        return None
    return (
        address if check.address is None else check.address,
        port if check.port is None else check.port,
    )


def host_problem(host: str) -> str | None:
    """Why `host` is neither a host name nor an IP literal, or None when it is one.

    A host name is ASCII, at most 253 bytes, of dot-separated labels of 1 to 63
    letters, digits and hyphens that neither start nor end with a hyphen (RFC
    1123 section 2.1), with an optional trailing dot. An IP literal is an IPv4
    or IPv6 address without brackets or zone.
    """
    try:
        address = ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, IPv6Address) and address.scope_id:
            return "an IPv6 address with a zone cannot be a host"
        return None
    if not host.isascii():
        return "not ASCII (write an internationalized name in its xn-- form)"
    name = host.removesuffix(".")
    if not name:
        return "empty"
    if len(name) > MAX_HOST_NAME:
        return f"longer than {MAX_HOST_NAME} bytes"
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            return (
                f"label {label!r} is not 1 to 63 letters, digits and hyphens"
                " that neither start nor end with a hyphen"
            )
    return None


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` does not compile as the probes compile it (the `regex`
    module, in Python's `re` syntax: see probes/patterns.py), or None."""
    # Imported here: only a config with a pattern needs it (start-up time).
    import regex  # type: ignore[import-untyped]  # no stubs in the venv

    try:
        regex.compile(pattern)
    except regex.error as e:
        return str(e)
    except (ValueError, TypeError, RecursionError, OverflowError) as e:
        return f"{type(e).__name__}: {e}"
    return None
