"""import-keepalived against keepalived itself: the same keepalived.conf run
by keepalived 2.2.7 (its checker alone, `keepalived --check --dont-fork`)
in one namespace, and converted by `directorctl import-keepalived` and run
by directord in a fresh one, give the same table (`ipvsadm -Sn`) and the
same timeouts (`ipvsadm -L --timeout`) and the same connection thresholds
(`ipvsadm -Ln --thresholds`: -S does not print them) once every real server
is up.

The configs are tests/data/keepalived/*.conf; their real servers are the
hosts of tests/kernel/topology.py (rs1..rs3 serve HTTP on 10.1.N.2:80,
u1..u2 echo UDP on 10.2.N.2:9000), the VIP is 192.168.100.10.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from daemon_runner import Daemon
from topology import RealServers, director_network, ipvsadm

from director.config import load_config
from director.keepalived import import_keepalived

DATA = Path(__file__).parent.parent / "data" / "keepalived"
SETTLE = 120.0  # seconds for every real server to be in the table (the VM is slow)


@contextmanager
def real_servers(prefix: str) -> Iterator[None]:
    """A fresh director namespace (this thread inside it) with its real
    servers running."""
    with director_network(prefix, web=3, udp=2) as net:
        servers = RealServers(net)
        try:
            servers.start_all()
            yield
        finally:
            servers.close()


Table = tuple[list[str], str, list[str]]


def table() -> Table:
    """The table's lines (`ipvsadm -Sn`, sorted: services come in the
    kernel's hash order, destinations in the order they were added), the
    timeouts line, and each real server's connection thresholds. -S never
    prints -x/-y (ipvsadm's print_service_entry writes a rule's weight and
    tunnel options only; director/ipvsadm/listing.py does as it does), so
    they come from `ipvsadm -Ln --thresholds`: "SERVICE -> SERVER UPPER
    LOWER", sorted (ActiveConn and InActConn left out)."""
    lines = sorted(line for line in ipvsadm("-Sn").splitlines() if line.strip())
    return lines, ipvsadm("-L", "--timeout").strip(), thresholds()


def thresholds() -> list[str]:
    found = []
    service = ""
    for line in ipvsadm("-Ln", "--thresholds").splitlines()[3:]:
        fields = line.split()
        if fields and fields[0] != "->":
            service = " ".join(fields[:2])
        elif len(fields) >= 4:
            found.append(f"{service} -> {fields[1]} {fields[2]} {fields[3]}")
    return sorted(found)


def settled(expected: int, alive: Callable[[], bool], what: str) -> Table:
    """The table once it holds `expected` destinations and stays so for a
    second; fails after SETTLE seconds or when `alive()` turns false."""
    deadline = time.monotonic() + SETTLE
    last: Table = ([], "", [])
    while time.monotonic() < deadline:
        assert alive(), f"{what} exited; table: {last}"
        now = table()
        if sum(line.startswith("-a") for line in now[0]) == expected and now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"{what}: not {expected} destinations in {SETTLE:.0f} s: {last}")


def under_keepalived(config: Path, workdir: Path, expected: int) -> Table:
    binary = shutil.which("keepalived") or "/usr/sbin/keepalived"
    log = workdir / "keepalived.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "--check",
                "--dont-fork",
                "--log-console",
                "--no-syslog",
                "--use-file",
                str(config),
                "--pid",
                str(workdir / "keepalived.pid"),
                "--checkers_pid",
                str(workdir / "checkers.pid"),
            ],
            stdout=out,
            stderr=out,
        )
    try:
        return settled(expected, lambda: process.poll() is None, "keepalived")
    except AssertionError as e:
        raise AssertionError(f"{e}\nkeepalived's log:\n{log.read_text()[-3000:]}") from None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def under_directord(text: str, workdir: Path, expected: int) -> Table:
    config = workdir / "director.toml"
    config.write_text(
        "[daemon]\n"
        f'state_file = "{workdir}/state.json"\n'
        "[control]\n"
        f'socket = "{workdir}/director.sock"\n\n' + text
    )
    daemon = Daemon(config)
    try:
        daemon.start()
        try:
            return settled(expected, daemon.alive, "directord")
        except AssertionError as e:
            raise AssertionError(f"{e}\ndirectord's log:\n{daemon.log_text()}") from None
    finally:
        daemon.close()


@pytest.mark.parametrize("name", ["web-nat.conf", "dr-group.conf", "udp-fwmark.conf"])
def test_keepalived_and_the_converted_config_make_the_same_table(
    name: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    source = DATA / name
    conversion = import_keepalived(str(source))
    workdir = tmp_path_factory.mktemp("ka")
    (workdir / "director-part.toml").write_text(conversion.text)
    expected = sum(
        len(vs.real_servers) for vs in load_config(workdir / "director-part.toml").virtual_servers
    )
    with real_servers("dk"):
        keepalived = under_keepalived(source, workdir, expected)
    with real_servers("dd"):
        directord = under_directord(conversion.text, workdir, expected)
    both = [
        "keepalived:",
        *keepalived[0],
        keepalived[1],
        *keepalived[2],
        "directord:",
        *directord[0],
        directord[1],
        *directord[2],
    ]
    print(f"{name}:", *both, sep="\n")
    assert directord == keepalived, "\n".join(both)
    if name == "web-nat.conf":  # its uthreshold 100, lthreshold 10 are compared
        assert any(line.endswith(" 100 10") for line in keepalived[2]), keepalived[2]
