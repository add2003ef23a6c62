"""Crash and restart: directord killed with SIGKILL at random points while it
applies a 1,000-service table, and while it applies reloads that drop
services; each time a new daemon, started with the config of the moment,
brings the kernel's table to exactly that config, and the services made by
hand with ipvsadm before the test are left byte for byte as they were.

The config: 1,000 TCP services, one real server each, checked every 60 s by
a TCP connect to an address without a route (the probe fails at once, the
real server never enters the table). The first pass of a daemon runs before
any probe, so it adds every missing service (with no real server yet) and
deletes every service a previous run owned that the config no longer has:
that pass, the one a kill interrupts, is 1,000 to 2,000 netlink operations.

Kill points are drawn from a seeded generator (DIRECTOR_CRASH_SEED, printed
on failure) as a delay after the daemon logged `ipvs_apply` (the start pass)
or after SIGHUP (a reload), uniform over a window measured on a first,
unkilled run: a failure reproduces with the same seed, up to the VM's timing.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_runner import START_TIMEOUT, Daemon, wait_until
from topology import ipvsadm, run

PREFIXES = ("0A64", "0A65")  # 10.100 and 10.101 as /proc/net/ip_vs writes them
SEED = int(os.environ.get("DIRECTOR_CRASH_SEED", "20261130"))
SERVICES = 1000
# Trials per test; the environment may change them (a longer soak, say).
APPLY_TRIALS = int(os.environ.get("DIRECTOR_CRASH_APPLY_TRIALS", "10"))
RELOAD_TRIALS = int(os.environ.get("DIRECTOR_CRASH_RELOAD_TRIALS", "10"))
CONVERGE_TIMEOUT = 120.0  # seconds; the VM is slow and shared
# Services ipvsadm made before the daemon ever ran: never the daemon's.
HAND_MADE = (
    "-A -t 10.99.0.1:80 -s wlc",
    "-a -t 10.99.0.1:80 -r 10.99.0.2:80 -g -w 3",
    "-A -f 7 -s rr",
    "-a -f 7 -r 10.99.0.3:0 -g -w 1",
)


def vip(table: int, i: int) -> str:
    """Service i of table `table` (0 or 1): two disjoint sets of addresses."""
    return f"10.{100 + table}.{i // 250}.{i % 250 + 1}:80"


def config_text(workdir: Path, services: Sequence[str]) -> str:
    lines = [
        "[daemon]",
        "reconcile_interval = 5.0",
        f'state_file = "{workdir}/state.json"',
        "",
        "[control]",
        f'socket = "{workdir}/director.sock"',
    ]
    check = 'check = { type = "tcp", interval = 60.0, timeout = 1.0, rise = 1, fall = 1 }'
    for address in services:
        host = address.rsplit(":", 1)[0].split(".")
        server = f"10.{int(host[1]) + 100}.{host[2]}.{host[3]}:80"
        lines += [
            "",
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "{address}"',
            'scheduler = "wlc"',
            check,
            "",
            "[[virtual_server.real_server]]",
            f'address = "{server}"',
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Trial:
    kind: str  # "apply" or "reload"
    delay: float | None = None  # killed this many seconds after the start
    # Killed when this many services were added, or (negative) deleted.
    target: int | None = None
    ready_before_kill: bool = False
    reloaded_before_kill: bool = False
    ours_at_kill: int = 0  # services of the configs in the kernel right after the kill
    converge: float = 0.0  # seconds from the restart to the table's convergence


@dataclass
class Rig:
    workdir: Path
    rng: random.Random
    hand_made: frozenset[str] = frozenset()
    trials: list[Trial] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.workdir / "director.toml"

    def configure(self, services: Sequence[str]) -> None:
        # Written aside and renamed: a daemon must never read half a file.
        tmp = self.workdir / "director.toml.new"
        tmp.write_text(config_text(self.workdir, services))
        tmp.replace(self.config)

    def daemon(self) -> Daemon:
        daemon = Daemon(self.config)
        self.daemons.append(daemon)
        return daemon

    def expected(self, services: Sequence[str]) -> frozenset[str]:
        return self.hand_made | {f"-A -t {s} -s wlc" for s in services}

    def converge(self, services: Sequence[str], trial: Trial | None = None) -> Daemon:
        """Start a daemon with the current config; wait for READY and for the
        table to be exactly the config plus the hand-made services."""
        started = time.monotonic()
        daemon = self.daemon()
        daemon.start()
        want = self.expected(services)

        def table_is_right() -> bool:
            return frozenset(ipvsadm("-Sn").splitlines()) == want

        try:
            wait_until(table_is_right, CONVERGE_TIMEOUT, "the table is the config's")
        except AssertionError as error:
            have = frozenset(ipvsadm("-Sn").splitlines())
            raise AssertionError(
                f"seed {SEED}, trial {len(self.trials)} {trial}: {error}\n"
                f"missing: {sorted(want - have)[:10]} ({len(want - have)})\n"
                f"extra: {sorted(have - want)[:10]} ({len(have - want)})\n"
                f"daemon log:\n{daemon.log_text()}"
            ) from None
        assert daemon.process is not None and daemon.process.poll() is None, daemon.log_text()
        if trial is not None:
            trial.converge = time.monotonic() - started
            self.trials.append(trial)
        return daemon

    def ours(self) -> int:
        return sum(1 for line in ipvsadm("-Sn").splitlines() if line.startswith("-A -t 10.10"))

    def kill_when(self, daemon: Daemon, reached: Callable[[Counter[str]], bool]) -> None:
        """SIGKILL the daemon as soon as the kernel's services (counted by
        the first octets of their address: "0A64" is 10.100) satisfy
        `reached`, or when it has said READY, whichever comes first. The
        table is read from /proc/net/ip_vs, far faster than ipvsadm: an
        apply of 1,000 services takes well under a second in the VM, and
        the daemon's log lines come too late to time a kill by them."""
        deadline = time.monotonic() + START_TIMEOUT
        next_look = 0.0  # parsing the daemon's log is slow: at most twice a second
        while not reached(service_prefixes()):
            now = time.monotonic()
            if now > next_look:
                if now > deadline or daemon.events("ready"):
                    break
                next_look = now + 0.5
        daemon.stop(signal.SIGKILL)

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()


@pytest.fixture
def rig(netns: str, tmp_path: Path) -> Iterator[Rig]:
    run("sh", "-c", "printf '%s\\n' \"$@\" | ipvsadm -R", "sh", *HAND_MADE)
    built = Rig(tmp_path, random.Random(SEED))
    built.hand_made = frozenset(ipvsadm("-Sn").splitlines())
    assert built.hand_made == frozenset(HAND_MADE), built.hand_made
    try:
        yield built
    finally:
        built.close()
        print(f"\ncrash/restart seed {SEED}:")
        for i, t in enumerate(built.trials):
            print(
                f"  {i:2} {t.kind:6} kill at "
                + (f"+{t.delay:5.2f} s" if t.delay is not None else f"count {t.target:4}")
                + f" ready={t.ready_before_kill!s:5} reloaded={t.reloaded_before_kill!s:5}"
                f" services at kill={t.ours_at_kill:4}  converged in {t.converge:5.1f} s"
            )


def service_prefixes() -> Counter[str]:
    """How many services of each /16 the kernel has ("0A64": 10.100.0.0/16)."""
    with open("/proc/thread-self/net/ip_vs", encoding="ascii") as table:
        return Counter(line[5:9] for line in table if line.startswith("TCP  ") and line[13] == ":")


def tables(services: int = SERVICES) -> tuple[list[str], list[str]]:
    return [vip(0, i) for i in range(services)], [vip(1, i) for i in range(services)]


def test_kill_during_the_apply_of_a_1000_service_table(rig: Rig) -> None:
    """Every start is a pass of 1,000 adds (and, from the second on, 1,000
    deletes of the other table, which the state file says the daemon owns).
    The daemon is killed once a random number of the new table's services
    is in the kernel, or of the old one's deleted (one trial in four each),
    or at a random time after its start (one in four); a restart
    converges."""
    both = tables()
    rig.configure(both[0])
    # The first run is not killed: it measures how long a start takes.
    daemon = rig.daemon()
    launched = time.monotonic()
    daemon.start()
    window = time.monotonic() - launched
    wait_until(lambda: rig.ours() == SERVICES, CONVERGE_TIMEOUT, "the first table applied")
    daemon.stop(signal.SIGKILL)
    for trial in range(APPLY_TRIALS):
        table = (trial + 1) % 2
        services = both[table]
        rig.configure(services)
        daemon = rig.daemon()
        daemon.launch()
        new, old = PREFIXES[table], PREFIXES[1 - table]
        target = rig.rng.randint(1, SERVICES - 1)
        if trial % 4 == 3:
            delay = rig.rng.uniform(0, window)
            record = Trial("apply", delay=delay)
            time.sleep(delay)
            record.ready_before_kill = bool(daemon.events("ready"))
            daemon.stop(signal.SIGKILL)
        elif trial % 4 == 1:
            # Among the deletes of the other table, which come first.
            record = Trial("apply", target=-target)
            rig.kill_when(daemon, lambda found: found[old] <= SERVICES - target)  # noqa: B023
            record.ready_before_kill = bool(daemon.events("ready"))
        else:
            record = Trial("apply", target=target)
            rig.kill_when(daemon, lambda found: found[new] >= target)  # noqa: B023
            record.ready_before_kill = bool(daemon.events("ready"))
        record.ours_at_kill = rig.ours()
        rig.converge(services, record).stop(signal.SIGKILL)
    interrupted = [t for t in rig.trials if not t.ready_before_kill]
    partial = [t for t in rig.trials if t.ours_at_kill not in (SERVICES, 2 * SERVICES)]
    print(
        f"start {window:.2f} s; {len(interrupted)} kills before READY, "
        f"{len(partial)} with a partly applied table"
    )
    # The point of the test: most kills land inside the start pass.
    assert len(partial) >= APPLY_TRIALS // 2, rig.trials


def test_kill_during_reloads_that_drop_services(rig: Rig) -> None:
    """A daemon runs 1,000 services; the config is rewritten to a random half
    of them and SIGHUP sent; the daemon is killed once a random number of
    the services the reload drops are gone from the kernel. A restart with
    that half converges. Each next trial reloads another random half
    (dropping about 250 services and adding about 250)."""
    full = tables()[0]
    rig.configure(full)
    daemon = rig.converge(full)
    for _ in range(RELOAD_TRIALS):
        running = frozenset(
            line.split()[2]
            for line in ipvsadm("-Sn").splitlines()
            if line.startswith("-A -t 10.100.")
        )
        half = sorted(rig.rng.sample(full, SERVICES // 2))
        dropped = len(running - set(half))
        target = rig.rng.randint(0, dropped)
        rig.configure(half)
        record = Trial("reload", target=target)
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        # Services of the table: those kept, plus the dropped ones left.
        kept = len(running) - dropped
        rig.kill_when(daemon, lambda found: found[PREFIXES[0]] <= kept + dropped - target)  # noqa: B023
        record.reloaded_before_kill = bool(daemon.events("reloaded"))
        record.ours_at_kill = rig.ours()
        daemon = rig.converge(half, record)
    partial = [t for t in rig.trials if not t.reloaded_before_kill]
    print(f"{len(partial)} of {RELOAD_TRIALS} kills before the reload was done")
