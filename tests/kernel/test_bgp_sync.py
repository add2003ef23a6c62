"""The active/backup pair end to end (issue 10's proof): BGP with a MED
chooses the director, the kernel's sync daemon carries the connections, and
an established TCP connection survives the traffic moving from one director
to the other by the daemon's own doing, never by hand.

The network is test_bgp.py's (tests/kernel/bgp_rig.py): the router runs
BIRD 2, the client is behind it, d1 and d2 run directord in one AS, d1 with
med 100 (preferred), d2 with med 200. Here both directors have the SAME
service and the SAME real servers (r1, r2, direct routing: they answer the
client through the router, their default route, so the return path never
touches a director), and [ipvs.sync] role "both" with one syncid on their
bridge interface (eth0): each one's master sends its connections, each
one's backup takes the other's.

The client opens one connection to the VIP; the router sends it to d1.
Echoes on it, then the connection appears in d2's `ipvsadm -Lnc` (synced).
Then the route moves to d2, by `directorctl maintenance on` on d1 (its
route withdrawn) or by `kill -9` of d1's directord (its BIRD dies with it
through PDEATHSIG and closes the session). The same connection keeps
echoing, from the same real server, and d2's IPVS counts its packets
(InPkts) though d2 never scheduled a connection (Conns stays 0): it
forwards them by the entry d1's sync daemon sent.

The figures (the connection synced, the route moved, the first echo through
d2) are printed, never asserted: run with -s to see them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from bgp_rig import (
    CLIENT_NET,
    DEADLINE,
    HOLD_TIME,
    PORT,
    REAL,
    VIP,
    Bird,
    Director,
    EchoServers,
    Net,
    bgp_network,
    bird_pids,
    birdc,
    director_config,
    echo,
    hops,
    router_conf,
    rundirs,
    wait_hops,
)
from daemon_runner import wait_alive, wait_until
from topology import inside

SERVERS = REAL["d1"]  # r1 and r2: both directors forward to these
MED = {"d1": 100, "d2": 200}
SYNCID = 9
SYNC = f'[ipvs.sync]\nrole = "both"\ninterface = "eth0"\nsyncid = {SYNCID}\n'
ECHOES = 4  # on the connection before the move, and again after it


@dataclass
class Pair:
    net: Net
    router: Bird
    directors: dict[str, Director] = field(default_factory=dict)

    def context(self) -> str:
        """What a failed wait shows: the router's view, each director's
        tables, BIRD and log."""
        parts = [
            self.router.birdc("show", "protocols"),
            self.router.birdc("show", "route", "all"),
            "router's BIRD log:\n" + self.router.log(),
        ]
        for name, director in self.directors.items():
            parts += [
                f"{name}'s ipvsadm -Lnc:\n{director.ipvsadm('-Lnc')}",
                f"{name}'s ipvsadm -Ln --stats:\n{director.ipvsadm('-Ln', '--stats')}",
                f"{name}'s log:\n{director.log()}",
            ]
            if director.alive():
                parts += [f"{name}'s BIRD:", birdc(director.rundir / "bird.ctl", "show", "route")]
        return "\n".join(parts)

    def wait_hops(self, *names: str, since: float | None = None) -> float:
        return wait_hops(self.net, hops(*names), since=since, context=self.context)


def stop_sync_daemons(netns: str) -> None:
    """directord leaves the kernel's sync daemons running when it stops
    (a restart adopts them): stopped here, before the namespace goes."""
    for state in ("master", "backup"):
        subprocess.run(
            ["ip", "netns", "exec", netns, "ipvsadm", "--stop-daemon", state], capture_output=True
        )


@pytest.fixture
def pair(netns: str, tmp_path: Path) -> Iterator[Pair]:
    """The router, the real servers r1 and r2 echoing, and directord in d1
    and d2 (same service, same real servers, MED 100 and 200, sync "both"),
    each with both servers in its table and both sync daemons running, and
    the router's route to the VIP via d1 alone with d2's in its BGP table."""
    with rundirs() as run, bgp_network(netns) as net:
        servers = EchoServers(net)
        router = Bird(net.ns("rt"), run / "rt", router_conf(("d1", "d2")))
        pair = Pair(net, router)
        try:
            servers.start(*SERVERS)
            router.start()
            for name in ("d1", "d2"):
                director = Director(net, name, tmp_path / name, run / name)
                director.workdir.mkdir()
                config = director_config(director, med=MED[name], servers=SERVERS)
                director.write(config + SYNC)
                director.launch()
                pair.directors[name] = director
            for director in pair.directors.values():
                director.ready()
            for director in pair.directors.values():
                wait_alive(
                    lambda d=director: d.ipvsadm("-Ln").count(" Route ") == len(SERVERS),  # type: ignore[misc]
                    f"both real servers in {director.name}'s table",
                    alive=director.alive,
                    log=director.log,
                    timeout=DEADLINE,
                )
                wait_alive(
                    lambda d=director: d.ipvsadm("-L", "--daemon").count(f"syncid={SYNCID},") == 2,  # type: ignore[misc]
                    f"{director.name}'s master and backup sync daemons",
                    alive=director.alive,
                    log=director.log,
                    timeout=DEADLINE,
                    context=lambda d=director: d.ipvsadm("-L", "--daemon") + d.log(),  # type: ignore[misc]
                )

            def both_learnt() -> bool:
                table = router.birdc("show", "route", f"{VIP}/32")
                return all(f"via {Net.address(name)}" in table for name in ("d1", "d2"))

            wait_until(both_learnt, DEADLINE, "the router learnt the VIP from d1 and d2")
            pair.wait_hops("d1")
            yield pair
        finally:
            for director in pair.directors.values():
                director.close()
            for name in ("d1", "d2"):
                stop_sync_daemons(net.ns(name))
            router.stop()
            servers.close()
            for pid in bird_pids(run):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def report(what: str, seconds: float) -> None:
    print(f"\nMEASURED {what}: {seconds:.2f} s")


def entry(director: Director, client_port: int) -> list[str]:
    """The client connection's line in the director's `ipvsadm -Lnc`, split
    (protocol, expire, state, source, virtual, destination), or []."""
    for line in director.ipvsadm("-Lnc").splitlines():
        if f" {CLIENT_NET}.2:{client_port} " in line:
            return line.split()
    return []


def stats(director: Director) -> tuple[int, int]:
    """Conns and InPkts of the VIP's service in the director's `ipvsadm
    -Ln --stats` (the kernel folds its per-CPU counters in every 2 s: poll)."""
    for line in director.ipvsadm("-Ln", "--stats", "-t", f"{VIP}:{PORT}").splitlines():
        if line.startswith("TCP "):
            fields = line.split()
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"no service {VIP}:{PORT} in {director.name}'s table")


def survives(pair: Pair, move: Callable[[Director], str]) -> None:
    """One connection through d1, synced to d2; `move(d1)` sends the
    route to d2 (its name for the figures); the connection goes on
    through d2."""
    d1, d2 = pair.directors["d1"], pair.directors["d2"]
    with inside(pair.net.ns("c")):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(DEADLINE)  # a reply, not a figure: the VM may be loaded
        sock.connect((VIP, PORT))
        opened = time.monotonic()
        port = sock.getsockname()[1]
        # SYN, ACK, then the data: the master syncs the connection at its
        # third packet (sync_threshold "3 50") and flushes within 2 s.
        served = {echo(sock, f"before {i}") for i in range(ECHOES)}
        assert len(served) == 1 and served <= set(SERVERS), served
        (server,) = served
        destination = f"{Net.address(server)}:{PORT}"
        theirs = entry(d1, port)
        assert theirs[2:] == [
            "ESTABLISHED",
            f"{CLIENT_NET}.2:{port}",
            f"{VIP}:{PORT}",
            destination,
        ], theirs
        synced = wait_alive(
            lambda: entry(d2, port),
            f"the connection from port {port} in d2's -Lnc",
            alive=d2.alive,
            log=d2.log,
            timeout=DEADLINE,
            context=pair.context,
        )
        report("connection opened through d1 -> in d2's -Lnc (synced)", time.monotonic() - opened)
        print(f"d1: {' '.join(theirs)}\nd2: {' '.join(synced)}")
        assert synced[2:] == theirs[2:], (synced, theirs)
        wait_until(lambda: stats(d1)[1] >= ECHOES, DEADLINE, "d1's IPVS counted the packets")
        # Nothing went through d2: the router's route is via d1 alone.
        assert stats(d2) == (0, 0), pair.context()

        started = time.monotonic()
        why = move(d1)
        elapsed = pair.wait_hops("d2", since=started)
        report(f"{why} -> the router's route via d2 alone", elapsed)
        moved = time.monotonic()
        assert echo(sock, "after 0") == server
        report(f"{why} -> first echo on the connection through d2", time.monotonic() - started)
        report("  of which the echo's round trip after the route moved", time.monotonic() - moved)
        for i in range(1, ECHOES):
            assert echo(sock, f"after {i}") == server

        # d2 carried them, by the synced entry: its IPVS counts the packets
        # of a connection it never scheduled.
        wait_until(
            lambda: stats(d2)[1] >= ECHOES,
            DEADLINE,
            f"d2's IPVS counted the {ECHOES} packets sent after the move",
        )
        conns, packets = stats(d2)
        print(f"d2's IPVS: Conns {conns}, InPkts {packets}; d1's: {stats(d1)}")
        assert conns == 0, pair.context()
        after = entry(d2, port)
        assert after[2:] == theirs[2:], after
        print(f"d2 after: {' '.join(after)}")
    assert d2.alive()


def at(event: dict[str, object]) -> float:
    """A logged event's time (its ISO timestamp) as time.time() counts."""
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def test_maintenance_on_the_preferred_director_keeps_its_connections(pair: Pair) -> None:
    times: list[float] = []

    def maintenance(d1: Director) -> str:
        times.append(time.time())
        d1.ctl("maintenance", "on")
        times.append(time.time())
        return "directorctl maintenance on (d1)"

    survives(pair, maintenance)
    d1 = pair.directors["d1"]
    assert d1.daemon is not None and d1.alive()
    # Logged before BIRD was told; the test's reader of d1's log may be behind the router.
    withdrawn = [
        d1.daemon.wait_event("bgp_withdrawn", DEADLINE, address=f"{VIP}/32", why="maintenance")
    ]
    print(
        f"  of which: directorctl returned after {times[1] - times[0]:.2f} s,"
        f" directord logged bgp_withdrawn {at(withdrawn[0]) - times[0]:.2f} s after the command"
    )


def test_kill_9_of_the_preferred_director_keeps_its_connections(pair: Pair) -> None:
    d1 = pair.directors["d1"]
    birds = d1.birds()
    assert len(birds) == 1, birds

    def kill(d1: Director) -> str:
        assert d1.daemon is not None
        os.kill(d1.daemon.pid, signal.SIGKILL)
        return f"kill -9 of d1's directord (hold time {HOLD_TIME} s)"

    survives(pair, kill)
    wait_until(lambda: not d1.birds(), DEADLINE, f"d1's BIRD (pid {birds[0]}) gone")
    assert d1.stop() == -signal.SIGKILL
    # The router heard BIRD's Cease (PDEATHSIG), not its hold timer.
    said = [line for line in pair.router.log().splitlines() if " d1: " in line]
    assert any("d1: Received: Administrative shutdown" in line for line in said), said
