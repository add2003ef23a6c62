"""The checker's partial update (issue 8): `update_targets` changes the
targets it is given and removes the keys it is told to, as `set_targets`
of the whole map would, without looking at the others. Under trio's
autojump clock, with exact probe times; and the engine calling it with the
changed services' targets only."""

from __future__ import annotations

import random
from ipaddress import ip_address
from pathlib import Path

import pytest
import test_checker
import trio
import trio.testing
from engine_support import Network, running
from test_checker import SEED, FakeServers, Recorder, Rig, jitters, tcp

from director.config import RealServerId, parse_config
from director.engine import Director
from director.health.checker import Checker, Target
from director.health.spec import Timing
from director.health.state import Health
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import Protocol, ServiceKey
from director.kernel import KernelTable

# test_checker's fixtures, the same here
servers, recorder, checker = test_checker.servers, test_checker.recorder, test_checker.checker

A, B, C = ip_address("10.0.0.1"), ip_address("10.0.0.2"), ip_address("10.0.0.3")


@pytest.fixture
def rig(
    checker: Checker[str], servers: FakeServers, recorder: Recorder, nursery: trio.Nursery
) -> Rig:
    return Rig(checker, servers, recorder, nursery)


@pytest.fixture
def clock(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    return autojump_clock


async def test_update_targets_loses_and_doubles_no_probe(
    checker: Checker[str], servers: FakeServers, nursery: trio.Nursery, clock: object
) -> None:
    """Updates at every phase of a probe (before, during, after), others
    coming, changing and going, and the kept target set again as it is,
    leave its grid alone."""
    servers.duration = 0.5
    kept: Target = (tcp(interval=1.0), A, 80)
    checker.update_targets({"a": kept})
    await nursery.start(checker.run)
    [j] = jitters(1, 1.0)
    for step in range(1, 40):
        await trio.sleep_until(step * 0.37)
        if step % 3 == 0:
            checker.update_targets({"a": kept}, remove=[f"x{step - 1}", f"x{step - 2}"])
        elif step % 3 == 1:
            checker.update_targets({f"x{step}": (tcp(interval=1.0), C, 1000 + step)})
        else:  # the one added just before changes its port
            checker.update_targets({f"x{step - 1}": (tcp(interval=1.0), C, 2000 + step)})
    await trio.sleep_until(15.0 + j - 0.25)  # the last probe has ended
    assert servers.starts(A) == pytest.approx([j + n for n in range(15)])
    assert checker.state("a").successes_in_row == 15


async def test_a_changed_check_keeps_what_is_known_and_the_others_their_grid(
    checker: Checker[str], servers: FakeServers, nursery: trio.Nursery, clock: object
) -> None:
    checker.update_targets({"a": (tcp(interval=2.0, rise=1), A, 80), "b": (tcp(), B, 80)})
    await nursery.start(checker.run)
    j_a, j_b, j_again = jitters(3, 2.0)
    await trio.sleep_until(5.0)
    up = checker.state("a")
    assert up.status is Health.UP and up.since == pytest.approx(j_a)
    servers.down.add(A)  # seen by the new check's probes only
    checker.update_targets({"a": (tcp(interval=2.0, rise=1, fall=2), A, 80)})
    state = checker.state("a")
    assert (state.status, state.since, state.successes_in_row) == (Health.UP, up.since, up.successes_in_row)  # fmt: skip
    await trio.sleep_until(5.0 + j_again + 0.5)
    # One failure of the new check (fall = 2): still up, its count kept going.
    assert checker.state("a").status is Health.UP
    assert checker.state("a").failures_in_row == 1
    await trio.sleep_until(12.0)
    before = [j_a + 2.0 * n for n in range(3) if j_a + 2.0 * n < 5.0]
    after = [5.0 + j_again + 2.0 * n for n in range(4) if 5.0 + j_again + 2.0 * n < 12]
    assert servers.starts(A) == pytest.approx(before + after)
    assert servers.starts(B) == pytest.approx([j_b + 2.0 * n for n in range(6) if j_b + 2.0 * n < 12])  # fmt: skip
    assert checker.state("a").status is Health.DOWN


async def test_a_removed_target_stops_and_its_result_in_flight_is_dropped(
    rig: Rig, clock: object
) -> None:
    checker, servers, recorder, nursery = rig
    servers.duration = 1.5
    checker.update_targets({"a": (tcp(interval=2.0, timeout=2.0), A, 80), "b": (tcp(), B, 80)})
    [j_a, j_b] = jitters(2, 2.0)
    await nursery.start(checker.run)
    await trio.sleep_until(j_a + 0.5)  # a's first probe is running
    checker.update_targets({}, remove=["a", "never-there"])
    await trio.sleep_until(10.0)
    assert servers.starts(A) == pytest.approx([j_a])
    assert all(key == "b" for key, _, _ in recorder.results)
    assert servers.starts(B) == pytest.approx([j_b + 2.0 * n for n in range(5)])
    with pytest.raises(KeyError, match="no health check target 'a'"):
        checker.state("a")
    assert set(checker.states()) == {"b"}


async def test_a_shared_probe_stays_right_as_its_keys_leave_one_by_one(
    rig: Rig, clock: object
) -> None:
    """Two services' keys on one (check, address, port): one key leaving
    (removed, or moved to another check) leaves the probe, its grid and the
    other key's state alone; the last one leaving stops it."""
    checker, servers, recorder, nursery = rig
    check = tcp(interval=2.0, rise=1)
    checker.update_targets({"web/a": (check, A, 80), "api/a": (check, A, 80), "db/a": (check, A, 80)})  # fmt: skip
    await nursery.start(checker.run)
    [j, j_moved] = jitters(2, 2.0)
    await trio.sleep_until(4.5)
    checker.update_targets({}, remove=["web/a"])
    checker.update_targets({"db/a": (tcp(interval=2.0, rise=1), A, 81)})  # another port: apart
    assert checker.state("db/a").status is Health.UP  # kept through the move
    await trio.sleep_until(9.0)
    grid = [j + 2.0 * n for n in range(5) if j + 2.0 * n < 9.0]
    moved = [4.5 + j_moved + 2.0 * n for n in range(3) if 4.5 + j_moved + 2.0 * n < 9.0]
    assert [t for t, _, port in servers.calls if port == 80] == pytest.approx(grid)
    assert [t for t, _, port in servers.calls if port == 81] == pytest.approx(moved)
    api = checker.state("api/a")
    assert api.status is Health.UP and api.successes_in_row == len(grid)
    web = [k for k, _, _ in recorder.results if k == "web/a"]
    assert web == ["web/a"] * len([t for t in grid if t < 4.5])
    checker.update_targets({}, remove=["api/a"])
    await trio.sleep_until(20.0)
    assert [t for t, _, port in servers.calls if port == 80] == pytest.approx(grid)


@pytest.mark.parametrize("how", ["set_targets", "update_targets"])
async def test_a_key_renamed_in_one_change_keeps_the_probe_and_its_health(
    checker: Checker[str], servers: FakeServers, nursery: trio.Nursery, clock: object, how: str
) -> None:
    """A service renamed (fwmark 2 -> 12, a reload): its servers' keys go
    and new ones come for the same (check, address, port) in one change.
    They keep the probe, its grid, and the health (operator trial, stop 27:
    unknown until a new probe, the service briefly without servers)."""
    check = tcp(interval=2.0)
    checker.set_targets({"fwm2/a": (check, A, 80)})
    await nursery.start(checker.run)
    await trio.sleep_until(7.0)
    before = checker.state("fwm2/a")
    assert before.status is Health.UP
    if how == "set_targets":
        checker.set_targets({"fwm12/a": (check, A, 80)})
    else:
        checker.update_targets({"fwm12/a": (check, A, 80)}, remove=["fwm2/a"])
    assert checker.state("fwm12/a") == before
    await trio.sleep_until(12.0)
    [j] = jitters(1, 2.0)
    assert servers.starts(A) == pytest.approx([j + 2.0 * n for n in range(6)])
    assert checker.state("fwm12/a").successes_in_row == 6


async def test_a_bad_update_changes_nothing(checker: Checker[str], clock: object) -> None:
    checker.update_targets({"a": (tcp(), A, 80)})
    good: Target = (tcp(), B, 80)
    with pytest.raises(ValueError, match="health check target 'c': interval must be"):
        checker.update_targets({"b": good, "c": (tcp(interval=0.0), C, 80)}, remove=["a"])
    with pytest.raises(ValueError, match="health check target 'a': both set and removed"):
        checker.update_targets({"b": good, "a": (tcp(), A, 81)}, remove=["a"])
    with pytest.raises(ValueError, match="health check target 'b': port 70000"):
        checker.update_targets({"b": (tcp(), B, 70000)})
    assert set(checker.states()) == {"a"}


async def test_targets_given_before_the_run_are_unknown_since_it_started(
    checker: Checker[str], servers: FakeServers, nursery: trio.Nursery, clock: object
) -> None:
    """Keys added before the run share one fresh state: each gets its own
    `since` at the start, and an adopted one stays adopted."""
    checker.set_targets({"a": (tcp(), A, 80), "b": (tcp(), B, 80)})
    checker.update_targets({"c": (tcp(), C, 80)})
    checker.adopt("b", ramp_start=-5.0)
    servers.down.add(A)
    await trio.sleep(50)
    await nursery.start(checker.run)
    states = checker.states()
    assert {k: (s.status, s.since, s.adopted) for k, s in states.items()} == {
        "a": (Health.UNKNOWN, 50.0, False),
        "b": (Health.UNKNOWN, 50.0, True),
        "c": (Health.UNKNOWN, 50.0, False),
    }
    assert checker.state("b").ramp_start == -5.0
    await trio.sleep_until(52.0)
    j_a, _, j_c = jitters(3, 2.0)
    assert (checker.state("a").status, checker.state("a").since) == (Health.DOWN, 50.0 + j_a)
    assert (checker.state("c").status, checker.state("c").since) == (Health.UP, 50.0 + j_c)


@pytest.mark.parametrize("seed", range(6))
async def test_updates_probe_as_the_whole_map_would(
    seed: int, nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    """Random changes (targets added, moved to another check or port,
    removed, set again unchanged; keys sharing probes), given to one
    checker as the whole map (set_targets) and to another as what changed
    (update_targets), in the same order: the same probes at the same
    times, the same health for every key."""
    changes = random.Random(seed)
    checks = [tcp(interval=1.0, rise=1, fall=1), tcp(interval=1.5, rise=2, fall=1)]
    addresses = [ip_address(f"10.5.0.{i}") for i in range(1, 6)]

    def target() -> Target:
        return (changes.choice(checks), changes.choice(addresses), changes.choice((80, 81)))

    down = FakeServers(duration=0.3)
    whole, part = FakeServers(duration=0.3), FakeServers(duration=0.3)
    full: Checker[int] = Checker(probe=whole, rng=random.Random(SEED))
    partial: Checker[int] = Checker(probe=part, rng=random.Random(SEED))
    await nursery.start(full.run)
    await nursery.start(partial.run)
    wanted: dict[int, Target] = {}
    for step in range(60):
        await trio.sleep_until(step * 0.29)
        updated: dict[int, Target] = {}
        removed: list[int] = []
        for key in changes.sample(range(12), 3):
            roll = changes.random()
            if key in wanted and roll < 0.3:
                removed.append(key)
                del wanted[key]
            elif key in wanted and roll < 0.5:
                updated[key] = wanted[key]  # set again as it is
            else:
                wanted[key] = updated[key] = target()
        whole.down = part.down = down.down = set(changes.sample(addresses, 2))
        # The whole map in the order the update names its keys, so that both
        # draw the new probes' jitter in the same order.
        full.set_targets({k: wanted[k] for k in [*updated, *(k for k in wanted if k not in updated)]})  # fmt: skip
        partial.update_targets(updated, removed)
        assert full.states() == partial.states()
    await trio.sleep_until(25.0)
    assert sorted(whole.calls, key=str) == sorted(part.calls, key=str)
    assert len(whole.calls) > 100
    assert full.states() == partial.states()


# -- the engine ------------------------------------------------------------------


CONFIG = """
[daemon]
reconcile_interval = 3600.0
"""
SERVICE = """
[[virtual_server]]
protocol = "tcp"
address = "10.0.0.1:{port}"
scheduler = "rr"
check = {{ type = "tcp", interval = 1.0, timeout = 0.5, rise = 1, fall = 1 }}
[[virtual_server.real_server]]
address = "10.0.{n}.1"
[[virtual_server.real_server]]
address = "10.0.{n}.2"
"""


class Spy(Checker[RealServerId]):
    """A checker that records how it was told of each change."""

    calls: list[tuple[str, set[RealServerId], set[RealServerId]]]

    def set_targets(self, targets: object) -> None:
        assert isinstance(targets, dict)
        self.calls.append(("set", set(targets), set()))
        super().set_targets(targets)

    def update_targets(self, targets: object, remove: object = ()) -> None:
        assert isinstance(targets, dict) and isinstance(remove, list)
        self.calls.append(("update", set(targets), set(remove)))
        super().update_targets(targets, remove)


async def test_a_change_tells_the_checker_of_its_own_services_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A reload that adds a server to one service of three, changes another's
    check and drops the third: the checker hears of those servers only; the
    start hands it the whole map; a reload that changes nothing, nothing."""
    first = CONFIG + "".join(SERVICE.format(port=8000 + n, n=n) for n in (1, 2, 3))
    second = (
        CONFIG
        + SERVICE.format(port=8001, n=1)
        + '[[virtual_server.real_server]]\naddress = "10.0.1.3"\n'
        + SERVICE.format(port=8002, n=2).replace("interval = 1.0", "interval = 2.0")
    )
    network = Network()
    director = Director(
        parse_config(first),
        KernelTable(MemoryBackend(), threaded=False),
        probe=network.probe,
        rng=random.Random(1),
    )
    spy: Spy = Spy(probe=network.probe, rng=random.Random(1))
    spy.calls = []
    director.checker = spy
    path = tmp_path / "director.toml"

    def rid(n: int, last: int) -> RealServerId:
        return RealServerId(
            ServiceKey.inet(Protocol.TCP, "10.0.0.1", 8000 + n),
            ip_address(f"10.0.{n}.{last}"),
            8000 + n,  # the service's port
        )

    async with running(director):
        await trio.sleep(3.0)
        assert spy.calls == [("set", {rid(n, i) for n in (1, 2, 3) for i in (1, 2)}, set())]
        up = spy.state(rid(2, 1))
        path.write_text(second)
        await director.reload_file(path)
        assert spy.calls[1:] == [
            ("update", {rid(1, 3), rid(2, 1), rid(2, 2)}, {rid(3, 1), rid(3, 2)}),
        ]
        assert set(spy.states()) == {rid(n, i) for n in (1, 2) for i in (1, 2)} | {rid(1, 3)}
        assert spy.state(rid(2, 1)).status is up.status is Health.UP
        assert spy.state(rid(2, 1)).since == up.since
        changed = spy._slots[rid(2, 1)].target[0].timing
        assert changed == Timing(interval=2.0, timeout=0.5, rise=1, fall=1)
        await director.reload_file(path)
        assert len(spy.calls) == 2
