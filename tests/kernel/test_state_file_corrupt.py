"""A state file holding a value the kernel cannot take, on the real kernel:
directord sets the file aside as `<state_file>.corrupt`, logs
`state_file_unusable` naming the field, and runs from the config alone.

statefile.load reads every string only if UTF-8 can carry it, every
interface name only if the kernel could take it, every scheduler name only
within IP_VS_SCHEDNAME_MAXLEN and every timeout only within
TIMEOUT_ANY_KERNEL. The unit tests (tests/unit/test_statefile.py) check the
loader; these start the real daemon on such a file, because before the
loader checked them such values went further: a lone surrogate in the sync
interface's name (`"\\ud800"` in the file) crashed directord at every start
with a UnicodeEncodeError, and the others would have been refused by the
kernel at every pass.

The state file is one the daemon wrote itself: a first daemon (in a namespace
of the module's own) runs the config, is changed at runtime with directorctl
(`-E` to another scheduler, `--set` other timeouts) and stopped; each case
replaces one field of that file's text and starts a fresh daemon, in the
test's own namespace, on it and the same config. The table read with the real
`ipvsadm` must then be the config's (its scheduler, its timeouts, its sync
daemon), not the runtime layer's: the file was not used. The real server is a
socket this process listens on in a namespace behind a veth (ctl_support's
backends), so its TCP check passes and it enters the table at its weight.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from ctl_support import BACKEND_V4, backends, ctl
from daemon_runner import Daemon, waiter
from topology import batch, inside, ipvsadm, run

from director.ipvs.facts import IP_VS_SCHEDNAME_MAXLEN
from director.ipvs.model import TIMEOUT_ANY_KERNEL

T = TypeVar("T")
DEADLINE = 90.0  # the longest one wait may take (the VM is slow, and shared)
VIP = "10.88.0.100:80"
SERVER_PORT = 8080
SERVER = f"{BACKEND_V4}.2:{SERVER_PORT}"
SYNC_LINK = ["link add sync0 type dummy", "addr add 10.89.0.1/24 dev sync0", "link set sync0 up"]
# What the config asks of the kernel, as the real ipvsadm lists it.
TABLE = [  # `ipvsadm -Ln` after its first line (the kernel's version)
    "Prot LocalAddress:Port Scheduler Flags",
    "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn",
    f"TCP  {VIP} wlc",
    f"  -> {SERVER:<28} {'Masq':<7} {5:<6} {0:<10} {0:<10}",  # ipvsadm's printf: padded
]
TIMEOUTS = "Timeout (tcp tcpfin udp): 600 60 200\n"
SYNC_DAEMON = (
    "master sync daemon (mcast=sync0, syncid=7, maxlen=1472, group=224.0.0.81, port=8848, ttl=1)\n"
)
# What the runtime changes of the first daemon asked (kept in the state file).
RUNTIME_CHANGES = (("-E", "-t", VIP, "-s", "rr"), ("--set", "100", "20", "30"))


def config_text(workdir: Path) -> str:
    return (
        "[daemon]\n"
        "reconcile_interval = 2.0\n"
        f'state_file = "{workdir}/state.json"\n'
        "[control]\n"
        f'socket = "{workdir}/director.sock"\n'
        "[ipvs]\n"
        "timeouts = { tcp = 600, tcpfin = 60, udp = 200 }\n"
        "[ipvs.sync]\n"
        'role = "master"\n'
        'interface = "sync0"\n'
        "syncid = 7\n"
        "[[virtual_server]]\n"
        'protocol = "tcp"\n'
        f'address = "{VIP}"\n'
        'scheduler = "wlc"\n'
        'check = { type = "tcp", interval = 0.5, timeout = 1.0, rise = 1, fall = 3 }\n'
        "[[virtual_server.real_server]]\n"
        f'address = "{SERVER}"\n'
        'forward = "masq"\n'
        "weight = 5\n"
    )


def stop_sync_daemon() -> None:
    """The kernel's master sync daemon in this thread's namespace stopped
    (directord leaves it running when it stops)."""
    subprocess.run(["ipvsadm", "--stop-daemon", "master"], capture_output=True, check=False)


def config_table() -> str | None:
    """`ipvsadm -Ln` when it lists the config's table, else None."""
    listing = ipvsadm("-Ln")
    return listing if listing.splitlines()[1:] == TABLE else None


def wait_for(daemon: Daemon, condition: Callable[[], T], what: str) -> T:
    return waiter(daemon, DEADLINE, lambda: ipvsadm("-Ln"))(condition, what)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The text of a valid state file directord wrote: the config's service
    edited to `rr`, timeouts set to 100 20 30, the config's sync daemon owned."""
    workdir = tmp_path_factory.mktemp("seed")
    config = workdir / "director.toml"
    config.write_text(config_text(workdir))
    netns = f"sfc{os.getpid()}"
    run("ip", "netns", "add", netns)
    try:
        with inside(netns):
            batch(["link set lo up", *SYNC_LINK])
            daemon = Daemon(config)
            try:
                daemon.start()
                wait_for(daemon, lambda: ipvsadm("-L", "--daemon") == SYNC_DAEMON, "sync daemon")
                for args in RUNTIME_CHANGES:
                    outcome = ctl(workdir / "director.sock", args)
                    assert outcome.status == 0, (args, outcome, daemon.log_text())
                assert daemon.stop() == 0, daemon.log_text()
            finally:
                daemon.close()
                stop_sync_daemon()
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    text = (workdir / "state.json").read_text(encoding="utf-8")
    state = json.loads(text)
    assert [s["scheduler"] for s in state["services"]] == ["rr"], text
    assert state["timeouts"] == {"tcp": 100, "tcp_fin": 20, "udp": 30}, text
    assert [d["mcast_ifn"] for d in state["sync_daemons"]] == ["sync0"], text
    return text


@dataclass(frozen=True)
class Case:
    name: str
    field: str  # its JSON text in the daemon's file
    corrupt: str  # what replaces it
    problem: str  # in the logged problem


LONG_NAME = "s" * 40  # 40 bytes: IP_VS_SCHEDNAME_MAXLEN is 16, its NUL included
U32_MAX = 2**32 - 1  # 4294967295: fits the u32 attribute, more than any kernel takes
assert len(LONG_NAME) > IP_VS_SCHEDNAME_MAXLEN
assert TIMEOUT_ANY_KERNEL < U32_MAX
CASES = [
    Case(
        "sync_interface_surrogate",
        '"mcast_ifn": "sync0"',
        '"mcast_ifn": "\\ud800"',
        'state.sync_daemons[0].mcast_ifn: "\\ud800" holds a lone surrogate',
    ),
    Case(
        "scheduler_surrogate",
        '"scheduler": "rr"',
        '"scheduler": "\\ud800"',
        'state.services[0].scheduler: "\\ud800" holds a lone surrogate',
    ),
    Case(
        "scheduler_40_bytes",
        '"scheduler": "rr"',
        f'"scheduler": "{LONG_NAME}"',
        f'state.services[0].scheduler: "{LONG_NAME}": longer than 15 characters'
        " (IP_VS_SCHEDNAME_MAXLEN)",
    ),
    Case(
        "timeout_u32_max",
        '"tcp": 100',
        f'"tcp": {U32_MAX}',
        f"state.timeouts.tcp: {U32_MAX} is not in 0..{TIMEOUT_ANY_KERNEL}",
    ),
    Case(
        "sync_interface_slash",
        '"mcast_ifn": "sync0"',
        '"mcast_ifn": "a/b"',
        'state.sync_daemons[0].mcast_ifn: "a/b" is not an interface name',
    ),
]


@pytest.fixture
def sync_link(netns: str) -> Iterator[None]:
    batch(SYNC_LINK)
    try:
        yield
    finally:
        stop_sync_daemon()


def errors(daemon: Daemon) -> list[dict[str, Any]]:
    """Every logged event at level error or above."""
    return [e for e in daemon.logged() if e.get("level") in ("error", "critical")]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_value_the_kernel_cannot_take_sets_the_file_aside(
    netns: str, sync_link: None, tmp_path: Path, saved: str, case: Case
) -> None:
    assert saved.count(case.field) == 1, saved
    corrupt = saved.replace(case.field, case.corrupt).encode()
    state = tmp_path / "state.json"
    state.write_bytes(corrupt)
    config = tmp_path / "director.toml"
    config.write_text(config_text(tmp_path))
    with backends(netns) as listeners:
        listeners.listen(f"{BACKEND_V4}.2", SERVER_PORT)
        daemon = Daemon(config)
        try:
            daemon.start()  # READY=1: the load did not stop it

            # The file set aside, byte for byte, and the problem logged.
            kept = tmp_path / "state.json.corrupt"
            assert kept.read_bytes() == corrupt
            unusable = daemon.events("state_file_unusable")
            assert len(unusable) == 1, daemon.log_text()
            event = unusable[0]
            assert event["level"] == "error", event
            assert case.problem in event["problem"], event
            assert (event["path"], event["kept_as"]) == (str(state), str(kept)), event
            assert event["action"] == "starting from the config file alone", event

            # The kernel gets the config alone: its scheduler (not the `-E`'s
            # rr), its timeouts (not the `--set`'s), its sync daemon.
            listing = wait_for(daemon, config_table, "the config's table")
            assert listing is not None and listing.startswith("IP Virtual Server version ")
            assert ipvsadm("-L", "--timeout") == TIMEOUTS
            wait_for(
                daemon, lambda: ipvsadm("-L", "--daemon") == SYNC_DAEMON, "the config's sync daemon"
            )
            # The daemon's new state file has no runtime change.
            written = json.loads(state.read_text(encoding="utf-8"))
            assert written["services"] == [] and written["timeouts"] is None, written

            # Still serving: directorctl lists the same table as ipvsadm.
            answer = ctl(tmp_path / "director.sock", ["-Ln"])
            assert (answer.status, answer.stdout) == (0, ipvsadm("-Ln")), answer
            assert daemon.alive(), daemon.log_text()
            # The file was set aside once, and nothing else went wrong.
            assert [e["event"] for e in errors(daemon)] == ["state_file_unusable"], (
                daemon.log_text()
            )
            assert "Traceback" not in daemon.log_text(), daemon.log_text()
            assert daemon.stop() == 0, daemon.log_text()
        finally:
            daemon.close()
