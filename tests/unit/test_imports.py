"""Start-up imports (issue 8): a daemon whose config has only TCP checks loads
none of the other probes' libraries (httpx, h11, dnspython, `regex`) nor their
modules; a config that uses them loads them with the config, before any probe.

Each case runs in a fresh interpreter, as the daemon starts: this test process
has imported everything already. `ssl` is not among the libraries asserted
absent: trio imports it itself (trio/__init__.py, for its SSL helpers).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

LIBRARIES = ("httpx", "h11", "dns", "regex")
PROBE_MODULES = tuple(
    f"director.health.probes.{name}" for name in ("http", "udp", "dns", "command", "patterns")
)
WATCHED = LIBRARIES + PROBE_MODULES

# The daemon's own path: directord's main() reads and validates the config
# (--check stops there, before trio.run); then, when asked, one probe.
SCRIPT = """
import json, sys
from ipaddress import ip_address

from director import daemon

status = daemon.main(["--check", "--config", sys.argv[1]])
loaded = sorted(m for m in sys.argv[3:] if m in sys.modules)
reason = None
if sys.argv[2] != "-":
    import trio
    from director.health.probes import probe
    from director.health.spec import TcpCheck, UdpCheck

    check = {"tcp": TcpCheck(), "udp": UdpCheck(silence="down")}[sys.argv[2].split(":")[0]]
    port = int(sys.argv[2].split(":")[1])
    result = trio.run(probe, check, ip_address("127.0.0.1"), port)
    reason = result.reason.value
print(json.dumps({"status": status, "loaded": loaded, "reason": reason,
                  "after_probe": sorted(m for m in sys.argv[3:] if m in sys.modules)}))
"""

TCP_ONLY = """
[control]
socket = "{dir}/director.sock"

[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = {{ type = "tcp", interval = 2.0 }}
real_server = [
  {{ address = "10.0.0.2:80" }},
  {{ address = "10.0.0.3:80", check = {{ type = "tcp", port = 8080 }} }},
]
"""

EVERY_TYPE = """
[control]
socket = "{dir}/director.sock"

[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
check = {{ type = "http", path = "/health", expect_body = "ok|ready" }}
real_server = [{{ address = "10.0.0.2:80" }}]

[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:53"
check = {{ type = "dns", query_name = "example.org", query_type = "A", expect_answer = "IN A" }}
real_server = [{{ address = "10.0.0.2:53" }}]

[[virtual_server]]
protocol = "udp"
address = "10.0.0.1:514"
check = {{ type = "udp", payload = "ping" }}
real_server = [{{ address = "10.0.0.2:514", check = {{ type = "exec", command = "true" }} }}]
"""


def start(tmp_path: Path, config: str, probe: str = "-") -> dict[str, Any]:
    path = tmp_path / "director.toml"
    path.write_text(config.format(dir=tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), probe, *WATCHED],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 0, done.stderr
    return result


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback TCP port bound here and not listening: a connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_tcp_only_config_loads_no_other_probe(tmp_path: Path) -> None:
    loaded = start(tmp_path, TCP_ONLY)["loaded"]
    assert loaded == [], f"imported by directord with TCP checks only: {loaded}"


def test_a_tcp_probe_fails_without_httpx(tmp_path: Path, closed_port: int) -> None:
    # A refused connect goes through attempt.py's translation, which knows
    # httpx's exceptions only once something has imported httpx.
    result = start(tmp_path, TCP_ONLY, f"tcp:{closed_port}")
    assert (result["reason"], result["after_probe"]) == ("refused", [])


def test_a_config_with_every_check_type_loads_their_probes_with_it(tmp_path: Path) -> None:
    assert start(tmp_path, EVERY_TYPE)["loaded"] == sorted(WATCHED)


def test_a_probe_built_in_code_loads_its_module_at_its_first_call(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Closed now: the kernel answers the probe's datagram with ICMP port unreachable.
    result = start(tmp_path, TCP_ONLY, f"udp:{port}")
    assert (result["loaded"], result["reason"]) == ([], "unreachable")
    assert "director.health.probes.udp" in result["after_probe"]
