"""What a health check is, as configured: one frozen dataclass per check type.

The config module builds these from TOML; the probes read them. Timing
(interval, timeout, rise, fall) is common to every type. `port` and `address`
let a probe aim somewhere other than the real server's own address and port.
"""

from __future__ import annotations

from dataclasses import dataclass

from director.ipvs.model import IPAddress


@dataclass(frozen=True)
class Timing:
    interval: float = 1.0  # seconds between the starts of two probes
    timeout: float = 1.0  # seconds a probe may take before it counts as failed
    rise: int = 2  # successes in a row that make a down (or new) server up
    fall: int = 2  # failures in a row that make an up server down


@dataclass(frozen=True)
class TcpCheck:
    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None


@dataclass(frozen=True)
class StatusRange:
    low: int
    high: int

    def __contains__(self, status: object) -> bool:
        return isinstance(status, int) and self.low <= status <= self.high


@dataclass(frozen=True)
class HttpCheck:
    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None
    tls: bool = False  # "https" when True
    method: str = "GET"
    path: str = "/"
    host: str | None = None  # Host header; default: the probed address
    expect_status: tuple[StatusRange, ...] = (StatusRange(200, 299),)
    expect_body: str | None = None  # regex searched in the body
    verify_tls: bool = True


@dataclass(frozen=True)
class UdpCheck:
    timing: Timing = Timing()
    port: int | None = None
    address: IPAddress | None = None
    payload: bytes = b""
    expect: str | None = None  # regex the reply must match; None: silence is up


@dataclass(frozen=True)
class ExecCheck:
    """Run a command; exit status 0 is up. With dynamic_weight, the last line of
    its standard output, when it is an integer, is the weight to set."""

    command: tuple[str, ...]
    timing: Timing = Timing()
    dynamic_weight: bool = False


Check = TcpCheck | HttpCheck | UdpCheck | ExecCheck
