"""The controller over the in-memory backend, with a fake probe and the
autojump clock: ipvsadm commands change the desired state (servers enter the
table only once probed up), errors read as ipvsadm's, the state file survives a
restart, reload keeps runtime changes, admin states, status, permissions."""

from __future__ import annotations

import json
import random
import shlex
import threading
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import structlog
import trio
import trio.testing

from director import ctl, log, statefile
from director.config import parse_config
from director.control.handler import Controller
from director.control.messages import Peer, Request, Response
from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs.errors import KernelError
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    Info,
    IPAddress,
    Protocol,
    Service,
    ServiceEntry,
    ServiceKey,
)
from director.ipvs.ops import AddDestination, AddService, DeleteService, Operation
from director.kernel import KernelTable

VIP = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
UNMANAGED = ServiceKey.inet(Protocol.TCP, "10.9.9.9", 80)
ROOT = Peer(uid=0, gid=0, pid=4242, may_change=True)
READER = Peer(uid=1000, gid=1000, pid=4343, may_change=False)
CONFIG = """
[daemon]
reconcile_interval = 5.0
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:80"
scheduler = "rr"
check = { type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }
[[virtual_server.real_server]]
address = "10.0.1.1:80"
weight = 5
"""


class FakeNetwork:
    def __init__(self, *alive: str, delay: float = 0.01) -> None:
        self.alive = {ip_address(a) for a in alive}
        self.delay = delay  # seconds a probe takes

    async def probe(self, check: Check, address: IPAddress, port: int) -> ProbeResult:
        await trio.sleep(self.delay)
        if address in self.alive:
            return ProbeResult.success(0.01)
        return ProbeResult.failure(Reason.REFUSED, 0.01, "connection refused")


@dataclass
class Rig:
    backend: MemoryBackend
    network: FakeNetwork
    director: Director
    controller: Controller

    async def ipvsadm(self, *argv: str, peer: Peer = ROOT, stdin: str | None = None) -> Response:
        args = {} if stdin is None else {"stdin": stdin}
        return await self.controller.handle(Request(argv=argv, args=args), peer)

    async def command(self, name: str, peer: Peer = ROOT, **args: object) -> Response:
        return await self.controller.handle(Request(command=name, args=args), peer)

    def weights(self, key: ServiceKey = VIP) -> dict[str, int]:
        for entry in self.backend.services():
            if entry.service.key == key:
                return {
                    f"{d.destination.address}:{d.destination.port}": d.destination.weight
                    for d in entry.destinations
                }
        return {}


@asynccontextmanager
async def rig(
    tmp_path: Path,
    backend: MemoryBackend | None = None,
    config: str = CONFIG,
    *alive: str,
    delay: float = 0.01,
) -> AsyncIterator[Rig]:
    backend = backend or MemoryBackend()
    network = FakeNetwork(*(alive or ("10.0.1.1", "10.0.1.2", "10.0.2.1")), delay=delay)
    config_path = tmp_path / "director.toml"
    if not config_path.exists():
        config_path.write_text(config)
    state_path = tmp_path / "state.json"
    director = Director(
        parse_config(config_path.read_text()),
        KernelTable(backend, threaded=False),
        runtime=statefile.load(state_path).layer,
        owned=statefile.load(state_path).owned,
        state_path=state_path,
        probe=network.probe,
        rng=random.Random(1),
    )
    controller = Controller(director, config_path=config_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        yield Rig(backend, network, director, controller)
        nursery.cancel_scope.cancel()


async def until(condition: Callable[[], bool]) -> None:
    while not condition():  # noqa: ASYNC110 - the backend has no change events
        await trio.sleep(0.05)


async def test_added_server_enters_the_table_only_once_probed_up(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        r.network.alive.discard(ip_address("10.0.1.2"))
        response = await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.2:80", "-w", "3")
        assert response == Response(0, "", "")
        assert "10.0.1.2:80" not in r.weights()  # not probed up yet
        await trio.sleep(3)
        assert "10.0.1.2:80" not in r.weights()  # probed down: stays out
        r.network.alive.add(ip_address("10.0.1.2"))
        await until(lambda: r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 3})

        assert await r.ipvsadm("-e", "-t", "10.0.0.1:80", "-r", "10.0.1.2:80", "-w", "9") == (
            Response(0)
        )
        assert r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 9}
        assert await r.ipvsadm("-d", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80") == Response(0)
        assert r.weights() == {"10.0.1.2:80": 9}
        await trio.sleep(6)  # a drift pass does not bring the file's server back
        assert r.weights() == {"10.0.1.2:80": 9}


async def test_service_commands_and_ipvsadm_errors(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        new = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
        assert await r.ipvsadm("-A", "-t", "10.0.0.2:80", "-s", "sh") == Response(0)
        assert any(e.service.key == new for e in r.backend.services())
        assert await r.ipvsadm("-A", "-t", "10.0.0.2:80") == Response(
            255, "", "Service already exists\n"
        )
        assert await r.ipvsadm("-E", "-t", "10.0.0.3:80") == Response(255, "", "No such service\n")
        assert await r.ipvsadm("-E", "-t", "10.0.0.2:80", "-s", "nope") == Response(
            255, "", "Scheduler or persistence engine not found\n"
        )
        assert await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80") == Response(
            255, "", "Destination already exists\n"
        )
        assert await r.ipvsadm("-d", "-t", "10.0.0.1:80", "-r", "10.0.1.7:80") == Response(
            255, "", "No such destination\n"
        )
        assert await r.ipvsadm("-a", "-t", "10.0.0.3:80", "-r", "10.0.1.7:80") == Response(
            255, "", "Service not defined\n"
        )
        assert await r.ipvsadm("-L", "-t", "10.0.0.3:80") == Response(1, "", "No such service\n")
        usage = await r.ipvsadm("-Q")
        assert usage.status == 255 and "Try `ipvsadm -h'" in usage.stderr
        assert await r.ipvsadm("-E", "-t", "10.0.0.2:80", "-s", "wrr") == Response(0)
        assert [e.service.scheduler for e in r.backend.services() if e.service.key == new] == [
            "wrr"
        ]
        assert await r.ipvsadm("-D", "-t", "10.0.0.2:80") == Response(0)
        assert all(e.service.key != new for e in r.backend.services())
        assert await r.ipvsadm("-C") == Response(0)
        assert r.backend.services() == []
        await trio.sleep(6)
        assert r.backend.services() == []  # -C is desired state: nothing comes back


async def test_listings_are_ipvsadm_output_of_the_kernel_table(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await until(lambda: bool(r.weights()))
        listing = await r.ipvsadm("-Ln")
        assert listing == Response(
            0,
            "IP Virtual Server version 1.2.1 (size=4096)\n"
            "Prot LocalAddress:Port Scheduler Flags\n"
            "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
            "TCP  10.0.0.1:80 rr\n"
            "  -> 10.0.1.1:80                  Route   5      0          0         \n",
        )
        assert await r.ipvsadm("-Sn") == Response(
            0, "-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.1.1:80 -g -w 5\n"
        )
        assert await r.ipvsadm("-L", "--timeout") == Response(
            0, "Timeout (tcp tcpfin udp): 900 120 300\n"
        )
        assert await r.ipvsadm("-L", "-n", "-c") == Response(
            0,
            "IPVS connection entries\n"
            "pro expire state       source             virtual            destination\n",
        )
        # A reader may list but not change.
        assert (await r.ipvsadm("-Ln", peer=READER)).stdout == listing.stdout
        assert await r.ipvsadm("-C", peer=READER) == Response(
            255, "", "Permission denied (you must be root)\n"
        )
        assert await r.command("disable", READER, service="tcp:10.0.0.1:80", server="10.0.1.1") == (
            Response(255, "", "Permission denied (you must be root)\n")
        )
        assert r.weights() == {"10.0.1.1:80": 5}


async def test_unmanaged_services_go_straight_to_the_kernel(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    other = ServiceEntry(Service(UNMANAGED, "wlc"))
    async with rig(tmp_path, MemoryBackend([other])) as r:
        assert await r.ipvsadm("-A", "-t", "10.9.9.9:80") == Response(
            255, "", "Service already exists\n"
        )
        assert await r.ipvsadm("-a", "-t", "10.9.9.9:80", "-r", "10.0.9.1:80", "-m") == Response(0)
        assert r.weights(UNMANAGED) == {"10.0.9.1:80": 1}  # not health-checked: at once
        assert statefile.load(tmp_path / "state.json").layer.empty
        assert await r.ipvsadm("-Z") == Response(0)
        assert await r.ipvsadm("--stop-daemon", "master") == Response(
            255, "", "No daemon is running\n"
        )


async def test_restore_runs_every_line_and_reports_like_ipvsadm(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        text = (
            "-A -t 10.0.0.2:80 -s rr\n"
            "-A -t 10.0.0.2:80 -s rr\n"
            "-a -t 10.0.0.2:80 -r 10.0.2.1:80 -m -w 2\n"
        )
        assert await r.ipvsadm("-R", stdin=text) == Response(0, "", "Service already exists\n")
        key = ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80)
        await until(lambda: r.weights(key) == {"10.0.2.1:80": 2})
        saved = (await r.ipvsadm("-Sn")).stdout
        assert "-a -t 10.0.0.2:80 -r 10.0.2.1:80 -m -w 2\n" in saved


async def test_state_file_survives_a_restart_and_reload_keeps_runtime_changes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = MemoryBackend()
    async with rig(tmp_path, backend) as r:
        await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.2:80", "-w", "3")
        await r.ipvsadm("-A", "-u", "10.0.0.5:53", "-s", "wrr")
        assert await r.command("drain", service="tcp:10.0.0.1:80", server="10.0.1.1") == Response(
            0, "10.0.1.1:80 in tcp:10.0.0.1:80: drain\n"
        )
        await until(lambda: r.weights() == {"10.0.1.1:80": 0, "10.0.1.2:80": 3})
    saved = statefile.load(tmp_path / "state.json").layer
    assert not saved.empty

    async with rig(tmp_path, backend) as r:  # a restart: new director, same files
        assert r.director.runtime == saved
        await until(lambda: r.weights() == {"10.0.1.1:80": 0, "10.0.1.2:80": 3})
        udp = ServiceKey.inet(Protocol.UDP, "10.0.0.5", 53)
        assert any(e.service.key == udp for e in backend.services())

        (tmp_path / "director.toml").write_text(CONFIG.replace("weight = 5", "weight = 8"))
        reloaded = await r.command("reload")
        assert reloaded.status == 0 and "reloaded" in reloaded.stdout
        await r.command("enable", service="TCP 10.0.0.1:80", server="10.0.1.1:80")
        await until(lambda: r.weights() == {"10.0.1.1:80": 8, "10.0.1.2:80": 3})
        assert any(e.service.key == udp for e in backend.services())

        (tmp_path / "director.toml").write_text("[[virtual_server]]\nprotocol = 1\n")
        rejected = await r.command("reload")
        assert rejected.status == 1 and "virtual_server[0].protocol" in rejected.stderr
        assert r.weights() == {"10.0.1.1:80": 8, "10.0.1.2:80": 3}


async def test_a_reload_names_the_file_values_runtime_changes_keep_from_applying(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trials' reports: after `directorctl -e` of a server's weight, an edit
    of that weight in the file and a reload printed nothing of it, and the
    table kept the runtime weight; then (stop 34) a second reload said
    nothing again though the file was still not in effect. Every reload
    names each value of the file a runtime change keeps from the table, as
    its change from the running value, why, and how to drop the runtime
    change."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        await r.ipvsadm("-e", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80", "-w", "9")
        await r.ipvsadm("-E", "-t", "10.0.0.1:80", "-s", "wlc")
        await until(lambda: r.weights() == {"10.0.1.1:80": 9})
        edited = (
            CONFIG.replace("weight = 5", "weight = 6")
            .replace('"rr"', '"wrr"')
            .replace("fall = 1 }", "fall = 2 }")
        )
        (tmp_path / "director.toml").write_text(edited)
        with structlog.testing.capture_logs() as logs:
            reloaded = await r.command("reload")
        assert reloaded.status == 0
        kept = [
            'service tcp:10.0.0.1:80: scheduler "wlc" -> "wrr" in the file, not applied:'
            " edited at runtime (directorctl -E back to the file's values drops that)",
            "real server tcp:10.0.0.1:80 10.0.1.1:80: weight 9 -> 6 in the file, not applied:"
            " edited at runtime (directorctl -e back to the file's values drops that)",
        ]
        assert [line[2:] for line in reloaded.stdout.splitlines() if line[:2] == "! "] == kept
        # The check is the file's alone: its change applies, said once, on
        # the service's line (its servers' own lines said `check` each).
        assert "~ service tcp:10.0.0.1:80: check.fall 1 -> 2\n" in reloaded.stdout
        assert "~ real server" not in reloaded.stdout
        assert reloaded.data is not None and reloaded.data["kept_by_runtime"] == kept
        [event] = [e for e in logs if e["event"] == "reloaded"]
        assert event["kept_by_runtime"] == kept
        assert r.weights() == {"10.0.1.1:80": 9}
        # A reload of the same file says so again: the file is still not in effect.
        again = await r.command("reload")
        assert again.stdout == "".join(f"! {line}\n" for line in kept) + (
            "reloaded: 0 table operations\n"
        )
        # A runtime -d hides the server: named as such.
        await r.ipvsadm("-d", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80")
        (tmp_path / "director.toml").write_text(edited.replace("weight = 6", "weight = 7"))
        reloaded = await r.command("reload")
        assert (
            "! real server tcp:10.0.0.1:80 10.0.1.1:80: in the file, not applied:"
            " deleted at runtime (directorctl -a brings it back with the file's settings)\n"
        ) in reloaded.stdout
        # Without runtime changes a reload says nothing of the kind.
        await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80", "-w", "7")
        await r.ipvsadm("-E", "-t", "10.0.0.1:80", "-s", "wrr")
        (tmp_path / "director.toml").write_text(edited.replace("weight = 6", "weight = 8"))
        reloaded = await r.command("reload")
        assert "! " not in reloaded.stdout, reloaded.stdout
        assert "~ real server tcp:10.0.0.1:80 10.0.1.1:80: weight 7 -> 8\n" in reloaded.stdout


async def test_runtime_timeouts_keep_the_files_out_and_a_reload_says_so(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The trial's kind of fault, for timeouts: after `directorctl --set`, a
    reload of an edit of `[ipvs] timeouts` printed `~ [ipvs] timeouts: ...`
    as if applied, and the kernel kept the runtime values. It is a `!` line
    at every reload, and a --set back to the file's values drops it."""
    timeouts = "[ipvs]\ntimeouts = { tcp = 900, tcpfin = 120, udp = 300 }\n"
    (tmp_path / "director.toml").write_text(timeouts + CONFIG)
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        assert (r.backend.timeouts().tcp, r.backend.timeouts().tcp_fin) == (900, 120)
        assert await r.ipvsadm("--set", "60", "0", "0") == Response(0, "", "")
        edited = timeouts.replace("tcp = 900", "tcp = 800") + CONFIG
        (tmp_path / "director.toml").write_text(edited)
        reloaded = await r.command("reload")
        assert reloaded.stdout == (
            "! [ipvs] timeouts: { tcp = 60, tcpfin = 120, udp = 300 } ->"
            " { tcp = 800, tcpfin = 120, udp = 300 } in the file, not applied: set at runtime"
            " (directorctl --set back to the file's values drops that)\n"
            "reloaded: 0 table operations\n"
        )
        assert r.backend.timeouts().tcp == 60
        assert await r.ipvsadm("--set", "800", "0", "0") == Response(0, "", "")
        assert statefile.load(tmp_path / "state.json").layer.timeouts is None
        (tmp_path / "director.toml").write_text(edited.replace("tcp = 800", "tcp = 700"))
        reloaded = await r.command("reload")
        assert reloaded.stdout == (
            "~ [ipvs] timeouts: { tcp = 800, tcpfin = 120, udp = 300 } ->"
            " { tcp = 700, tcpfin = 120, udp = 300 }\n"
            "reloaded: 1 table operations\n"
        )
        assert r.backend.timeouts().tcp == 700


async def test_a_reload_names_the_settings_it_changed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A trial's report: a reload to flush_on_stop = true printed only
    `reloaded: 0 table operations`, though it took effect."""
    async with rig(tmp_path) as r:
        edited = CONFIG.replace(
            "reconcile_interval = 5.0",
            'reconcile_interval = 7.5\nflush_on_stop = true\nlog_level = "debug"',
        )
        runtime_check = '[control]\nruntime_check = { type = "tcp", interval = 3 }\n'
        (tmp_path / "director.toml").write_text(runtime_check + edited)
        with structlog.testing.capture_logs() as logs:
            reloaded = await r.command("reload")
        settings = [
            "[daemon] flush_on_stop: false -> true",
            "[daemon] reconcile_interval: 5.0 -> 7.5",
            '[daemon] log_level: "info" -> "debug"',
            "[control] runtime_check: check.interval 1.0 -> 3.0",
        ]
        assert reloaded.stdout == "".join(f"~ {line}\n" for line in settings) + (
            "reloaded: 0 table operations\n"
        )
        assert reloaded.data is not None and reloaded.data["settings_changed"] == settings
        [event] = [e for e in logs if e["event"] == "reloaded"]
        assert event["settings_changed"] == settings
        assert r.director.config.daemon.flush_on_stop


async def test_disable_takes_a_server_out_whatever_its_health(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
        assert (await r.command("disable", **target)).status == 0
        assert r.weights() == {}
        bad = await r.command("disable", service="tcp:10.0.0.1:80", server="10.0.1.9")
        assert bad == Response(1, "", "director: no real server 10.0.1.9:80 in tcp:10.0.0.1:80\n")
        bad = await r.command("disable", service="http://x", server="10.0.1.9")
        assert bad.status == 2 and "virtual service 'http://x'" in bad.stderr
        assert (await r.command("enable", **target)).status == 0
        assert r.weights() == {"10.0.1.1:80": 5}


async def test_control_change_names_the_command_and_the_state_it_set(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Operator trial (stop 25): `disable` logged command "disabled", `drain`
    command "drain"."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
        with structlog.testing.capture_logs() as logs:
            for command in ("disable", "drain", "enable"):
                assert (await r.command(command, **target)).status == 0
        changes = [(e["command"], e["state"]) for e in logs if e["event"] == "control_change"]
        assert changes == [("disable", "disabled"), ("drain", "drain"), ("enable", "enabled")]


def busy_entry(active_conns: int = 0, inact_conns: int = 0) -> ServiceEntry:
    """VIP with 10.0.1.1:80 at weight 5 and these connections on it."""
    destination = Destination(ip_address("10.0.1.1"), 80, weight=5)
    return ServiceEntry(
        Service(VIP, "rr"),
        (DestinationEntry(destination, active_conns=active_conns, inact_conns=inact_conns),),
    )


async def test_drain_wait_returns_when_connections_are_gone(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    busy = busy_entry(active_conns=2)
    async with rig(tmp_path, MemoryBackend([busy])) as r:
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
        short = await r.command("drain", wait=True, timeout=3, **target)
        assert short.status == 1 and "still 2 connections after 3s" in short.stderr
        assert r.weights() == {"10.0.1.1:80": 0}
        # The kernel finishes the connections (the model's counters are set by hand).
        r.backend._services[VIP] = ServiceEntry(
            Service(VIP, "rr"),
            (DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=0)),),
        )
        done = await r.command("drain", wait=True, **target)
        assert done.status == 0 and done.stdout.endswith("drained: no connections left\n")


async def undo_as_told(r: Rig, stderr: str) -> None:
    """Run the directorctl command a timed-out `drain --wait` quotes."""
    quoted = stderr.split("'")[1]
    words = shlex.split(quoted)
    assert words[:2] == ["directorctl", "enable"], quoted
    (request,) = ctl._requests(words[1:])
    args = request["args"]
    assert isinstance(args, dict)
    assert (await r.command(str(request["command"]), **args)).status == 0


async def test_drain_wait_timed_out_says_the_drain_stays_and_how_to_undo_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Operator trial: `drain --wait --timeout 4` said only "still 6
    connections after 4s" and exited 1, which read as the drain undone;
    it stays, and the answer now says so and quotes the enable that ends it."""
    busy = busy_entry(active_conns=6)
    async with rig(tmp_path, MemoryBackend([busy])) as r:
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
        short = await r.command("drain", wait=True, timeout=4, **target)
        assert short == Response(
            1,
            "10.0.1.1:80 in tcp:10.0.0.1:80: drain\n",
            "director: drain: still 6 connections after 4s; the server stays drained (weight 0):"
            " 'directorctl enable tcp:10.0.0.1:80 10.0.1.1:80' puts it back\n",
        )
        await trio.sleep(10)
        assert r.weights() == {"10.0.1.1:80": 0}
        await undo_as_told(r, short.stderr)
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})


async def test_drain_wait_timed_out_counts_one_connection_and_an_unread_count_in_words(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """ "still 1 connections", and "still -1 connections" while the kernel's
    table could not be read (helper's review of the message above)."""
    busy = busy_entry(inact_conns=1)
    async with rig(tmp_path, MemoryBackend([busy])) as r:
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
        one = await r.command("drain", wait=True, timeout=2, **target)
        assert one.stderr.startswith("director: drain: still 1 connection after 2s; "), one

        async def unreadable(rid: object) -> int:
            return -1

        r.controller._connections = unreadable  # type: ignore[method-assign]
        unread = await r.command("drain", wait=True, timeout=2, **target)
        assert unread.stderr.startswith(
            "director: drain: the kernel's connection count could not be read after 2s; "
            "the server stays drained (weight 0): "
        ), unread


async def test_drain_wait_without_a_timeout_waits(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Operators' report: `directorctl drain SERVICE SERVER --wait` without
    --timeout (the README's own example) answered status 2 after committing
    the drain. directorctl sends "timeout": null then."""
    busy = busy_entry(active_conns=2)
    async with rig(tmp_path, MemoryBackend([busy])) as r:

        async def connections_end() -> None:
            await trio.sleep(30)
            r.backend._services[VIP] = ServiceEntry(
                Service(VIP, "rr"),
                (DestinationEntry(Destination(ip_address("10.0.1.1"), 80, weight=0)),),
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(connections_end)
            started = trio.current_time()
            target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1"}
            done = await r.command("drain", wait=True, timeout=None, **target)
        assert done.status == 0 and done.stdout.endswith("drained: no connections left\n")
        assert 30 <= trio.current_time() - started <= 32


async def add_a_third_server(r: Rig) -> None:
    """10.0.1.3 added with ipvsadm at weight 2 (no probe answers it), and
    the table settled: only 10.0.1.1 in it, two seconds of probes after."""
    await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.3:80", "-w", "2")
    await until(lambda: r.weights() == {"10.0.1.1:80": 5})
    await trio.sleep(2)


async def test_status_reports_health_weights_and_admin(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        await add_a_third_server(r)
        await r.command("disable", service="tcp:10.0.0.1:80", server="10.0.1.1")
        response = await r.command("status", json=True)
        assert response.status == 0 and response.stdout == ""
        assert isinstance(response.data, dict)
        (service,) = response.data["services"]
        assert service["service"] == "tcp:10.0.0.1:80" and service["check"] == "tcp"
        first, added = service["real_servers"]
        assert first["health"] == "up" and first["admin"] == "disabled"
        assert (first["configured_weight"], first["current_weight"]) == (5, None)
        assert first["last_ok"] is True and first["last_latency"] == 0.01
        assert added["health"] == "down" and added["last_reason"] == "refused"
        assert added["last_detail"] == "connection refused" and added["failures_in_row"] >= 2
        assert added["in_state_for"] >= 1.0
        text = (await r.command("status")).stdout
        assert text.splitlines()[0] == "tcp:10.0.0.1:80 rr (tcp check)"
        assert "10.0.1.3:80" in text and "refused 10.0ms (connection refused)" in text


async def test_unknown_command_and_check_config(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        unknown = await r.command("frobnicate")
        assert unknown.status == 2 and "unknown command 'frobnicate'" in unknown.stderr
        assert await r.command("check-config", READER, text=CONFIG, source="x.toml") == Response(
            0, "x.toml: OK, 1 virtual service, 1 real server\n"
        )
        bad = await r.command("check-config", READER, text="[daemon]\nbogus = 1\n", source="y")
        assert bad.status == 1 and bad.stderr.startswith("y: ")
        path = str(tmp_path / "director.toml")
        assert (await r.command("check-config", READER, path=path)).status == 255
        assert (await r.command("check-config", ROOT, path=path)).status == 0


class BatchRecorder(MemoryBackend):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[str, list[Operation]]] = []

    def apply(self, operations: Sequence[Operation]) -> None:
        self.batches.append(("apply", list(operations)))
        super().apply(operations)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        self.batches.append(("each", list(operations)))
        return super().apply_each(operations)


RESTORE_SCRIPT = [
    "-A -t 10.0.0.2:80 -s rr",
    "-A -t 10.0.0.2:80 -s rr",
    "-a -t 10.0.0.2:80 -r 10.0.2.1:80 -m -w 2",
    "-a -t 10.0.0.3:80 -r 10.0.2.1:80 -m",
    "-e -t 10.0.0.1:80 -r 10.0.1.1:80 -g -w 7",
    "-e -t 10.0.0.1:80 -r 10.0.1.9:80 -g -w 7",
    "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 3",
    "-d -t 10.0.0.1:80 -r 10.0.1.2:80",
    "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 4",
    "-a -t 10.9.9.9:80 -r 10.0.9.1:80 -m",
    "-A -t 10.0.0.4:80 -s wlc",
    "-D -t 10.0.0.4:80",
    "-D -t 10.0.0.4:80",
    *(
        line
        for i in range(10, 30)
        for line in (f"-A -t 10.0.0.{i}:80 -s wrr", f"-a -t 10.0.0.{i}:80 -r 10.0.2.1:80 -m")
    ),
    "-E -t 10.0.0.2:80 -s wrr",
]


async def test_restore_is_the_same_as_one_request_per_line_but_one_pass(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """-R builds one request's changes line after line; every line is checked
    against what the lines before it made, exactly as if each had been its
    own request, and the table is reconciled once, after the last line."""
    unmanaged = [ServiceEntry(Service(UNMANAGED, "wlc"))]
    (tmp_path / "lines").mkdir()
    (tmp_path / "restore").mkdir()
    async with rig(tmp_path / "lines", BatchRecorder(unmanaged)) as lines:
        await until(lambda: lines.weights() == {"10.0.1.1:80": 5})
        one_by_one = [await lines.ipvsadm(*line.split()) for line in RESTORE_SCRIPT]
        await trio.sleep(5)
        expected_table = (await lines.ipvsadm("-Sn")).stdout
    backend = BatchRecorder(unmanaged)
    async with rig(tmp_path / "restore", backend) as restore:
        await until(lambda: restore.weights() == {"10.0.1.1:80": 5})
        before = len(backend.batches)
        response = await restore.ipvsadm("-R", stdin="".join(f"{x}\n" for x in RESTORE_SCRIPT))
        batches = backend.batches[before:]
        await trio.sleep(5)
        table = (await restore.ipvsadm("-Sn")).stdout

    assert response == Response(0, "", "".join(r.stderr for r in one_by_one))
    assert response.stderr.count("\n") == 4
    saved = [statefile.load(tmp_path / d / "state.json").layer for d in ("lines", "restore")]
    assert saved[0] == saved[1] and not saved[0].empty
    assert table == expected_table and "-a -t 10.0.0.29:80 -r 10.0.2.1:80 -m -w 1\n" in table
    # Lines went to the kernel only where the kernel alone can answer: the
    # unmanaged ones, one at a time, and each managed -A (does it have the
    # scheduler?): those before the first unmanaged line in one send (the
    # request's deferred probes), the later ones each in its turn. Then one
    # pass for all the rest; later passes only add real servers as their
    # probes come up.
    direct = [b for kind, b in batches if kind == "apply"]
    probes, *passes = [b for kind, b in batches if kind == "each"]
    assert all(len(b) == 1 for b in direct)
    assert probes == [AddService(Service(ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80), "rr"))]
    probed = {op.service.key for op in probes}
    probed |= {op.service.key for [op] in direct if isinstance(op, AddService)}
    assert probed == {
        ServiceKey.inet(Protocol.TCP, "10.0.0.4", 80),
        ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80),
        *(ServiceKey.inet(Protocol.TCP, f"10.0.0.{i}", 80) for i in range(10, 30)),
    }
    first_pass = passes[0]
    assert DeleteService(ServiceKey.inet(Protocol.TCP, "10.0.0.4", 80)) in first_pass
    assert all(isinstance(op, AddDestination) for b in passes[1:] for op in b)


async def test_restore_stops_at_a_fatal_line_and_says_so(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    async with rig(tmp_path) as r:
        text = "-A -t 10.0.0.2:80\n-A -t 10.0.0.300:80\n-A -t 10.0.0.3:80\n"
        response = await r.ipvsadm("-R", stdin=text)
        assert response.data == {"restore_stopped": True}
        assert response.status == 2
        assert "illegal virtual server address[:port] specified" in response.stderr
        keys = {e.service.key for e in r.backend.services()}
        assert ServiceKey.inet(Protocol.TCP, "10.0.0.2", 80) in keys
        assert ServiceKey.inet(Protocol.TCP, "10.0.0.3", 80) not in keys
        assert (await r.ipvsadm("-R", stdin="-A -t 10.0.0.4:80\n")).data is None


class StuckReads(MemoryBackend):
    """A view of another backend whose reads hang until released: a client
    listing a huge table, or a kernel slow to dump."""

    def __init__(self, table: MemoryBackend) -> None:
        super().__init__()
        self.table = table
        self.entered = threading.Event()
        self.release = threading.Event()

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        self.entered.set()
        self.release.wait(timeout=30)
        return self.table.services(only, brief=brief)

    def info(self) -> Info:
        return self.table.info()


async def test_a_listing_never_holds_up_the_pass_that_removes_a_dead_server(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = MemoryBackend()
    async with rig(tmp_path, backend) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        stuck = StuckReads(backend)
        r.controller.reads = KernelTable(stuck)
        async with trio.open_nursery() as nursery:
            listing: list[Response] = []

            async def list_table() -> None:
                listing.append(await r.ipvsadm("-Ln"))

            nursery.start_soon(list_table)
            await trio.to_thread.run_sync(stuck.entered.wait)
            r.network.alive.discard(ip_address("10.0.1.1"))
            await until(lambda: r.weights() == {})  # fall = 1: one failed probe
            assert not listing  # the listing is still stuck in its read
            stuck.release.set()
        assert listing[0].status == 0


async def test_what_only_the_kernel_can_judge_is_asked_of_it_and_recorded_only_if_taken(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A scheduler the kernel lacks, and timeouts beyond INT_MAX / HZ, get the
    kernel's own answer, and nothing of them is recorded or retried. (ipvsadm
    takes --set values up to 31 days; a kernel with HZ=1000 only to 2147483 s.)"""
    async with rig(tmp_path, MemoryBackend(hz=1000)) as r:
        refused = await r.ipvsadm("-A", "-t", "10.0.0.5:80", "-s", "nosuch")
        assert refused == Response(255, "", "Scheduler or persistence engine not found\n")
        too_long = await r.ipvsadm("--set", "2500000", "0", "0")
        assert too_long.status == 255 and "Invalid operation" in too_long.stderr
        none = await r.ipvsadm("-A", "-t", "10.0.0.6:80", "-s", "none")
        assert none == Response(0, "", "")
        layer = statefile.load(tmp_path / "state.json").layer
        assert list(layer.services) == [ServiceKey.inet(Protocol.TCP, "10.0.0.6", 80)]
        assert layer.timeouts is None
        assert ServiceKey.inet(Protocol.TCP, "10.0.0.5", 80) not in {
            e.service.key for e in r.backend.services()
        }
        assert r.director.refusals == {}


async def test_save_clear_restore_leaves_someone_elses_service_theirs(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Operators' trial: `directorctl -Sn > rules; directorctl -C;
    directorctl -R < rules` on a table with a hand-made service made that
    service the daemon's: probed, in the state file, deleted at flush_on_stop."""
    hand_made = ServiceEntry(
        Service(UNMANAGED, "wrr"),
        (DestinationEntry(Destination(ip_address("10.0.9.1"), 80, weight=7)),),
    )
    backend = MemoryBackend([hand_made])
    async with rig(tmp_path, backend) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        rules = (await r.ipvsadm("-Sn")).stdout
        assert (await r.ipvsadm("-C")).status == 0
        assert (await r.ipvsadm("-R", stdin=rules)).status == 0
        await trio.sleep(3)
        assert (await r.ipvsadm("-Sn")).stdout == rules
        assert UNMANAGED not in r.director.owned
        assert UNMANAGED not in r.director.effective.service_keys()
        assert "10.9.9.9" not in (await r.command("status")).stdout
    saved = statefile.load(tmp_path / "state.json")
    assert UNMANAGED not in saved.owned
    assert UNMANAGED not in saved.layer.services


class ReadRecorder(MemoryBackend):
    """The in-memory backend, recording the services each read asked for
    (None: all), and which of them were brief (the keys, or the digests)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[set[ServiceKey] | None] = []
        self.brief: list[bool] = []

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        self.reads.append(None if only is None else set(only))
        self.brief.append(brief)
        return super().services(only, brief=brief)


async def test_a_restore_passes_over_the_services_it_made_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The pass after a commit covers what the change touched: restoring
    services (ipvsadm -R of a saved table, 5,000 lines in the ctl bench)
    must not read and plan every other managed service again."""
    backend = ReadRecorder()
    quiet = CONFIG.replace(
        "reconcile_interval = 5.0", "reconcile_interval = 3600.0"
    )  # no drift pass
    async with rig(tmp_path, backend, quiet) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        before = len(backend.reads)
        script = "".join(
            f"-A -t 10.9.9.{i}:80 -s rr\n-a -t 10.9.9.{i}:80 -r 10.0.2.1:80 -m\n" for i in (1, 2, 3)
        )
        response = await r.ipvsadm("-R", stdin=script)
        reads, briefs = backend.reads[before:], backend.brief[before:]
        table = (await r.ipvsadm("-Sn")).stdout
    assert response == Response(0, "", "")
    # The table the lines are checked against, as ipvsadm would find it;
    # then the pass over the services the lines made, not the other one.
    # (and the digests after it, one brief read: they vouch for the services
    # the lines made, which the next drift check then need not read).
    assert reads[0] is None and briefs[0]
    full = [read for read, brief in zip(reads, briefs, strict=True) if not brief]
    assert all(read is not None and VIP not in read for read in full)  # (none now)
    assert briefs.count(True) == 2
    assert all(f"-A -t 10.9.9.{i}:80 -s rr\n" in table for i in (1, 2, 3))


async def test_a_change_after_the_stop_is_refused_and_changes_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Operator trial: changes raced SIGTERM. Once the stop began, a change
    (ipvsadm or command) or a reload is answered as not made, and the table
    and the state file stay as the stop left them."""
    async with rig(tmp_path) as r:
        await trio.sleep(2.0)
        before, saved = r.backend.services(), (tmp_path / "state.json").read_bytes()
        await r.director.stop()
        refused = "directord is stopping: nothing was changed\n"
        for response in [
            await r.ipvsadm("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.2:80"),
            await r.ipvsadm("-D", "-t", "10.0.0.1:80"),
            await r.command("drain", service="tcp:10.0.0.1:80", server="10.0.1.1:80"),
            await r.command("reload"),
        ]:
            assert (response.status, response.stdout, response.stderr) == (1, "", refused)
        await trio.sleep(5.0)
        assert r.backend.services() == before
        assert (tmp_path / "state.json").read_bytes() == saved


ROUTED = CONFIG.replace('address = "10.0.1.1:80"', 'address = "10.0.1.1:8080"\nforward = "route"')


async def test_drain_wait_by_the_port_written_waits_on_the_entry_in_the_table(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trial report: `drain --wait` naming a route server by the port its
    check probes (10.0.1.1:8080, in the table as 10.0.1.1:80, the service's
    port) answered "drained: no connections left" at once while the entry
    still had connections: it counted those of 10.0.1.1:8080, which the
    table has not. It now waits on the entry it drained."""
    routed = Destination(ip_address("10.0.1.1"), 80, Forward.ROUTE, 5)
    busy = ServiceEntry(Service(VIP, "rr"), (DestinationEntry(routed, active_conns=2),))
    async with rig(tmp_path, MemoryBackend([busy]), ROUTED, "10.0.1.1") as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.1:8080"}
        short = await r.command("drain", wait=True, timeout=3, **target)
        assert short.stdout == "10.0.1.1:80 in tcp:10.0.0.1:80: drain\n"
        # The enable it quotes names the entry, as the table has it.
        assert short.status == 1 and short.stderr == (
            "director: drain: still 2 connections after 3s; the server stays drained (weight 0):"
            " 'directorctl enable tcp:10.0.0.1:80 10.0.1.1:80' puts it back\n"
        )
        assert r.weights() == {"10.0.1.1:80": 0}
        await undo_as_told(r, short.stderr)
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        assert (await r.command("drain", **target)).status == 0
        r.backend._services[VIP] = ServiceEntry(
            Service(VIP, "rr"), (DestinationEntry(replace(routed, weight=0)),)
        )
        done = await r.command("drain", wait=True, timeout=3, **target)
        assert done.status == 0 and done.stdout.endswith("drained: no connections left\n")


async def test_drain_wait_of_a_server_that_is_down_says_it_is_not_in_the_table(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trial report: draining a server that was down put it back in the
    table at weight 0. A drained server that is down stays out, and
    `drain --wait` says so rather than "no connections left"."""
    config = CONFIG + '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\n'
    async with rig(tmp_path, None, config, "10.0.1.1") as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        await trio.sleep(3)  # 10.0.1.2 probed down
        down = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.2"}
        done = await r.command("drain", wait=True, timeout=3, **down)
        assert done == Response(
            0, "10.0.1.2:80 in tcp:10.0.0.1:80: drain\ndrained: 10.0.1.2:80 is not in the table\n"
        ), done
        await trio.sleep(3)
        assert r.weights() == {"10.0.1.1:80": 5}


TWO = CONFIG + '[[virtual_server.real_server]]\naddress = "10.0.1.2:80"\nweight = 2\n'


@asynccontextmanager
async def rig_with_the_second_drained(tmp_path: Path) -> AsyncIterator[Rig]:
    """A rig over TWO, once both servers are in, with 10.0.1.2 drained."""
    (tmp_path / "director.toml").write_text(TWO)
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 2})
        target = {"service": "tcp:10.0.0.1:80", "server": "10.0.1.2"}
        assert (await r.command("drain", **target)).status == 0
        yield r


async def test_a_reload_that_drops_a_drained_server_forgets_its_drain(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Trial report: a drained server removed from the config by a reload
    kept its drain in the state file, and a later reload that put a server
    at that address again brought it in drained (weight 0), without a word.
    A reload that drops a server forgets its admin state, says so in its
    answer and the log, and the server it adds later is enabled."""
    async with rig_with_the_second_drained(tmp_path) as r:
        assert r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 0}
        assert json.loads((tmp_path / "state.json").read_text())["admin"]

        (tmp_path / "director.toml").write_text(CONFIG)
        dropped = await r.command("reload")
        assert dropped.status == 0, dropped
        assert "- real server tcp:10.0.0.1:80 10.0.1.2:80\n" in dropped.stdout
        assert "> admin forget drain vs=TCP 10.0.0.1:80 rs=10.0.1.2:80\n" in dropped.stdout
        assert json.loads((tmp_path / "state.json").read_text())["admin"] == []
        assert r.weights() == {"10.0.1.1:80": 5}

        (tmp_path / "director.toml").write_text(TWO)
        added = await r.command("reload")
        assert added.status == 0 and "admin" not in added.stdout, added
        await until(lambda: r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 2})


async def test_a_start_forgets_the_admin_states_of_servers_the_config_dropped(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The same at a start: the state file's drain of a server the config
    no longer has is dropped (and saved), not kept for its address."""
    async with rig_with_the_second_drained(tmp_path):
        pass
    (tmp_path / "director.toml").write_text(CONFIG)
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        assert json.loads((tmp_path / "state.json").read_text())["admin"] == []
    (tmp_path / "director.toml").write_text(TWO)
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5, "10.0.1.2:80": 2})


async def test_at_the_debug_level_every_probe_is_a_line(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Stop 34's trial: `log_level = "debug"` added no line at all. It adds
    each probe's result; at `info` there is none."""
    async with rig(tmp_path) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        try:
            log.set_level("debug")
            with structlog.testing.capture_logs() as logs:
                await trio.sleep(3.5)
            log.set_level("info")
            with structlog.testing.capture_logs() as quiet:
                await trio.sleep(3.5)
        finally:
            log.set_level("info")
            structlog.reset_defaults()
    results = [e for e in logs if e["event"] == "probe_result"]
    assert len(results) >= 3
    assert {(e["log_level"], e["rs"], e["reason"], e["status"]) for e in results} == {
        ("debug", "10.0.1.1:80", "ok", "up")
    }
    assert not [e for e in quiet if e["event"] == "probe_result"]
