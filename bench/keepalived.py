"""keepalived's checker (`keepalived -C`) as the benchmarks' reference: its
configuration for the same services and check timing as directord's, and the
process started in the current network namespace.

The mapping from the benchmarks' TcpTiming (see README.md):
  interval -> delay_loop and delay_before_retry (a failed check of an up
              server is retried after delay_before_retry, not delay_loop)
  timeout  -> connect_timeout
  fall     -> retry = fall - 1 (retries are the checks after the first failure)
  rise     -> 1: keepalived puts a server back after one good check; there is
              no rise count to configure, so the benchmarks use rise = 1.

keepalived puts every real server in the table at its start, before any
check, and takes out those that fail; directord puts a server in after its
first good check. `KeepalivedAlpha` runs keepalived with `alpha` (each
virtual_server: "assume every real server down at start"), which starts it
the way directord starts: a server enters after its first good check.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from common import BenchProcess, TcpTiming, VirtualService, destination_count


def keepalived_config(
    services: Sequence[VirtualService], timing: TcpTiming, *, alpha: bool = False
) -> str:
    if timing.rise != 1:
        raise ValueError(f"keepalived has no rise count: timing.rise must be 1, not {timing.rise}")
    lines = ["global_defs {", "    router_id director_bench", "}"]
    for service in services:
        lines += [
            f"virtual_server {service.address} {service.port} {{",
            f"    delay_loop {timing.interval:g}",
            "    lb_algo rr",
            "    lb_kind DR",
            "    protocol TCP",
            *(["    alpha"] if alpha else []),
        ]
        for address, port in service.real_servers:
            lines += [
                f"    real_server {address} {port} {{",
                "        weight 1",
                "        TCP_CHECK {",
                f"            connect_timeout {timing.timeout:g}",
                f"            retry {timing.fall - 1}",
                f"            delay_before_retry {timing.interval:g}",
                "        }",
                "    }",
            ]
        lines.append("}")
    return "\n".join(lines) + "\n"


class Keepalived(BenchProcess):
    """keepalived's checker alone, in the foreground, in the current namespace.
    It is ready when every configured real server is in the kernel's table
    (keepalived starts servers as up, before their first check)."""

    name = "keepalived"
    alpha = False

    def __init__(self, services: Sequence[VirtualService], timing: TcpTiming, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "keepalived.conf"
        self.config.write_text(keepalived_config(services, timing, alpha=self.alpha))
        self.expected = sum(len(s.real_servers) for s in services)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float) -> float:
        """Start it; returns the seconds until every real server was in the
        table (with alpha: until its checker process wrote its pid file)."""
        binary = shutil.which("keepalived") or "/usr/sbin/keepalived"
        log = (self.workdir / "keepalived.log").open("wb")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                binary,
                "--check",
                "--dont-fork",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--use-file",
                str(self.config),
                "--pid",
                str(self.workdir / "keepalived.pid"),
                "--checkers_pid",
                str(self.workdir / "checkers.pid"),
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = started + timeout
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.workdir / "keepalived.log").read_text(errors="replace")[-2000:]
                raise TimeoutError(
                    f"keepalived: {destination_count()} of {self.expected} real servers "
                    f"in the table; log tail:\n{tail}"
                )
            time.sleep(0.05)
        return time.monotonic() - started

    def _ready(self) -> bool:
        return destination_count() >= self.expected


class KeepalivedAlpha(Keepalived):
    """keepalived with `alpha`: every real server down until its first good
    check, as directord starts. Ready once the checker process is up."""

    name = "keepalived-alpha"
    alpha = True

    def _ready(self) -> bool:
        pid = self.workdir / "checkers.pid"
        return pid.exists() and pid.read_text().strip() != ""
