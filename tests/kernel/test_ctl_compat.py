"""directorctl through a live directord against ipvsadm 1.31 on the same
kernel: every error of -A/-E/-D/-a/-e/-d in the kernel's order of checks,
schedulers and limits as the kernel has them, and the operator's
`-Sn > rules; -C; -R < rules` cycle with a real server down (docs/runtime.md).

One daemon for the module (a start costs tens of seconds in the VM), managing
one service with three real servers, the last of them down (no listener).
ipvsadm runs in a reference namespace holding the same kernel table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from ctl_support import DEADLINE, Director, Listeners, backends
from daemon_runner import wait_until
from tables import Outcome, entered, namespace, real, real_ok, same_lines

CONFIG = """\
[[virtual_server]]
protocol = "tcp"
address = "10.9.0.1:80"
scheduler = "wrr"
check = { type = "tcp", interval = 0.5, timeout = 1.0, rise = 1, fall = 1 }

[[virtual_server.real_server]]
address = "10.7.0.2:80"
forward = "masq"
weight = 3
thresholds = { upper = 100, lower = 10 }

[[virtual_server.real_server]]
address = "10.7.0.3:80"
forward = "masq"

[[virtual_server.real_server]]
address = "10.7.0.4:80"
forward = "masq"
weight = 2
"""
UP = ("10.7.0.2", "10.7.0.3")
DOWN = "10.7.0.4"
TABLE = (
    "-A -t 10.9.0.1:80 -s wrr",
    "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -w 3",
    "-a -t 10.9.0.1:80 -r 10.7.0.3:80 -m -w 1",
)
SERVICE = "tcp:10.9.0.1:80"

# (why, command line): each refused by the kernel, and by the daemon with the
# kernel's answer for the service it manages. Where a line has two faults,
# the kernel's order decides which one is answered.
ERRORS = (
    ("add an existing service", "-A -t 10.9.0.1:80 -s rr"),
    ("add an existing service, unknown scheduler", "-A -t 10.9.0.1:80 -s nosuch"),
    ("add a new service, unknown scheduler", "-A -t 10.9.9.8:80 -s nosuch"),
    ("add a new service, unknown engine", "-A -u 10.9.9.8:5060 -p --pe nosuch"),
    ("edit a missing service", "-E -t 10.9.9.9:80 -s rr"),
    ("edit a missing service, unknown scheduler", "-E -t 10.9.9.9:80 -s nosuch"),
    ("edit a managed service, unknown scheduler", "-E -t 10.9.0.1:80 -s nosuch"),
    ("delete a missing service", "-D -t 10.9.9.9:80"),
    ("add to a missing service, bad thresholds", "-a -t 10.9.9.9:80 -r 10.7.0.2:80 -x 5 -y 10"),
    ("add an existing server", "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m"),
    ("add an existing server, bad thresholds", "-a -t 10.9.0.1:80 -r 10.7.0.2:80 -m -x 5 -y 10"),
    ("add a new server, lower threshold only", "-a -t 10.9.0.1:80 -r 10.7.0.9:80 -m -y 10"),
    ("add a multicast server", "-a -t 10.9.0.1:80 -r 224.0.0.5:80 -m"),
    ("add the broadcast address", "-a -t 10.9.0.1:80 -r 255.255.255.255:80 -m"),
    ("add the unspecified address", "-a -t 10.9.0.1:80 -r 0.0.0.0:80 -m"),
    ("edit a missing server", "-e -t 10.9.0.1:80 -r 10.7.0.9:80 -m"),
    ("edit a missing server, bad thresholds", "-e -t 10.9.0.1:80 -r 10.7.0.9:80 -m -x 1 -y 2"),
    ("edit an existing server, bad thresholds", "-e -t 10.9.0.1:80 -r 10.7.0.2:80 -m -y 10"),
    ("edit in a missing service", "-e -t 10.9.9.9:80 -r 10.7.0.2:80 -m -x 1 -y 2"),
    ("delete a missing server", "-d -t 10.9.0.1:80 -r 10.7.0.9:80"),
    ("delete in a missing service", "-d -t 10.9.9.9:80 -r 10.7.0.2:80"),
)

# Taken by the kernel: taken by the daemon too, with the same answer.
ACCEPTED = (
    ("no scheduler", "-A -t 10.9.9.7:80 -s none"),
    ("edit to no scheduler", "-E -t 10.9.0.1:80 -s none"),
    ("edit back", "-E -t 10.9.0.1:80 -s wrr"),
    ("delete it", "-D -t 10.9.9.7:80"),
    ("timeouts ipvsadm takes", "--set 2500000 120 300"),
)


class World:
    def __init__(self, director: Director, listeners: Listeners, reference: str) -> None:
        self.d = director
        self.listeners = listeners
        self.reference = reference

    def ipvsadm(self, line: str) -> Outcome:
        with entered(self.reference):
            return real(line.split())

    def reference_saved(self) -> str:
        with entered(self.reference):
            return real_ok(["-Sn"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with namespace() as netns, backends(netns) as listeners, namespace() as reference:
        for address in UP:
            listeners.listen(address, 80)
        d = Director(tmp_path_factory.mktemp("ctl-compat"), CONFIG, netns)
        try:
            with entered(netns):
                d.start()
                for address in UP:
                    d.wait_saved(f"-r {address}:80")
            with entered(reference):
                real_ok(["-R"], stdin="".join(line + "\n" for line in TABLE))
            yield World(d, listeners, reference)
        finally:
            d.close()


@pytest.fixture
def w(world: World) -> Iterator[World]:
    with entered(world.d.netns):
        yield world


def test_both_tables_start_alike(w: World) -> None:
    assert same_lines(real_ok(["-Sn"]), w.reference_saved())


def test_errors_in_the_kernels_order_match_ipvsadm(w: World) -> None:
    """The issue's example among them: -a of a managed server that exists,
    with -x 5 -y 10, is "Numerical result out of range" (ip_vs_add_dest
    checks the thresholds before it looks the destination up)."""
    table = real_ok(["-Sn"])
    mismatches = []
    for why, line in ERRORS:
        ours = w.d.ctl(*line.split())
        theirs = w.ipvsadm(line)
        assert theirs.status == 255, (why, line, theirs)
        if ours != theirs:
            mismatches.append(f"{why}: {line}\n  expected {theirs}\n  got      {ours}")
    assert not mismatches, "\n\n".join(mismatches)
    assert real_ok(["-Sn"]) == table
    assert same_lines(table, w.reference_saved())


def test_what_the_kernel_takes_the_daemon_takes(w: World) -> None:
    mismatches = []
    for why, line in ACCEPTED:
        ours = w.d.ctl(*line.split())
        theirs = w.ipvsadm(line)
        assert theirs == Outcome("", "", 0), (why, line, theirs)
        if ours != theirs:
            mismatches.append(f"{why}: {line}\n  expected {theirs}\n  got      {ours}")
        if line.startswith("-A"):
            assert "-A -t 10.9.9.7:80 -s none" in w.d.wait_saved("-A -t 10.9.9.7:80 -s none")
    assert not mismatches, "\n\n".join(mismatches)
    assert w.d.ctl_ok("-L", "--timeout") == "Timeout (tcp tcpfin udp): 2500000 120 300\n"
    assert same_lines(real_ok(["-Sn"]), w.reference_saved())


def servers_in_status(d: Director) -> dict[str, str]:
    status = json.loads(d.ctl_ok("status", "--json"))
    return {
        rs["server"]: rs["health"]
        for s in status["services"]
        if s["service"] == SERVICE
        for rs in s["real_servers"]
    }


def judged(d: Director) -> dict[str, str]:
    """servers_in_status once every server had its first verdict: the
    fixture (and a -R) waits for the up servers in the table, and the down
    one's first probe may not be made yet ("unknown")."""
    return wait_until(
        lambda: (found := servers_in_status(d)) and "unknown" not in found.values() and found,
        DEADLINE,
        "every real server of the service judged in status",
    )


def test_save_clear_restore_with_a_server_down_brings_it_back(w: World) -> None:
    """`directorctl -Sn > rules; directorctl -C; directorctl -R < rules` (what
    Debian's ipvsadm init script does) while a configured server is down: it
    is not in `rules`, yet after the cycle it is checked again, in `status`,
    and enters the table once up; nothing of the cycle survives in the state
    file, and a restart keeps it all."""
    d = w.d
    assert judged(d) == {"10.7.0.2:80": "up", "10.7.0.3:80": "up", "10.7.0.4:80": "down"}
    rules = d.ctl_ok("-Sn")
    assert DOWN not in rules
    assert same_lines(rules, "".join(line + "\n" for line in TABLE))
    d.ctl_ok("-C")
    assert real_ok(["-Sn"]) == ""
    assert d.ctl("-R", stdin=rules) == Outcome("", "", 0)
    for address in UP:
        d.wait_saved(f"-r {address}:80")
    assert judged(d) == {"10.7.0.2:80": "up", "10.7.0.3:80": "up", "10.7.0.4:80": "down"}
    state = json.loads(d.state_file.read_text())
    assert (state["services"], state["deleted_services"]) == ([], [])
    assert (state["real_servers"], state["deleted_real_servers"]) == ([], [])

    w.listeners.listen(DOWN, 80)
    assert "-a -t 10.9.0.1:80 -r 10.7.0.4:80 -m -w 2" in d.wait_saved(f"-r {DOWN}:80")
    d.restart()
    d.wait_saved(f"-r {DOWN}:80")
    assert set(servers_in_status(d)) == {"10.7.0.2:80", "10.7.0.3:80", "10.7.0.4:80"}
