from __future__ import annotations

from ipaddress import ip_address

import pytest

from director.config import Config, RealServerId, parse_config
from director.desired import AdminState, DesiredService, RealServerView, desired_table
from director.health.result import ProbeResult, Reason
from director.health.state import Health, HealthState
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Forward,
    Protocol,
    ServiceEntry,
    ServiceKey,
)

KEY = ServiceKey.inet(Protocol.TCP, "10.0.0.1", 80)
UP = RealServerView(Health.UP, since=0.0)
DOWN = RealServerView(Health.DOWN, since=0.0)
UNKNOWN = RealServerView()


def config(extra: str = "", servers: int = 2) -> Config:
    text = f'[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\n{extra}\n'
    for i in range(servers):
        text += f'[[virtual_server.real_server]]\naddress = "10.0.0.{10 + i}"\nweight = {i + 3}\n'
    return parse_config(text)


def rid(i: int) -> RealServerId:
    return RealServerId(KEY, ip_address(f"10.0.0.{10 + i}"), 80)


def dest(i: int, weight: int) -> Destination:
    return Destination(ip_address(f"10.0.0.{10 + i}"), 80, Forward.ROUTE, weight)


def kernel_with(*dests: Destination) -> dict[ServiceKey, ServiceEntry]:
    (svc,) = (vs.service() for vs in config().virtual_servers)
    return {KEY: ServiceEntry(svc, tuple(DestinationEntry(d) for d in dests))}


def weights(result: DesiredService) -> dict[str, int]:
    return {str(d.address): d.weight for d in result.destinations}


def reasons(result: DesiredService) -> dict[str, str]:
    return {str(d.address): d.reason for d in result.decisions}


def only(table: dict[ServiceKey, DesiredService]) -> DesiredService:
    assert list(table) == [KEY]
    return table[KEY]


def test_up_servers_are_present_with_configured_weight() -> None:
    result = only(desired_table(config(), {rid(0): UP, rid(1): UP}, {}, now=100.0))
    assert result.service == config().virtual_servers[0].service()
    assert result.destinations == (dest(0, 3), dest(1, 4))
    assert reasons(result) == {"10.0.0.10": "up", "10.0.0.11": "up"}


def test_down_server_is_removed_or_kept_at_weight_0() -> None:
    health = {rid(0): UP, rid(1): DOWN}
    removed = only(desired_table(config(), health, {}, now=1.0))
    assert weights(removed) == {"10.0.0.10": 3}
    assert reasons(removed)["10.0.0.11"] == "down, removed"
    kept = only(desired_table(config('on_failure = "weight0"'), health, {}, now=1.0))
    assert weights(kept) == {"10.0.0.10": 3, "10.0.0.11": 0}
    assert reasons(kept)["10.0.0.11"] == "down, kept at weight 0"


def test_unknown_server_is_left_in_or_out_as_the_kernel_has_it() -> None:
    """In or out as in the kernel until checked; the weight is the
    configured one (an operator's reload of it applies at once: found at
    10,000 servers, where the first probe came minutes after a reload)."""
    kernel = kernel_with(dest(0, 17))
    result = only(desired_table(config(), {}, kernel, now=0.0))
    assert weights(result) == {"10.0.0.10": 3}
    assert reasons(result) == {
        "10.0.0.10": "not checked yet, kept as in the kernel at the configured weight",
        "10.0.0.11": "not checked yet, and not in the kernel",
    }
    result = only(desired_table(config(), {rid(0): UP, rid(1): UNKNOWN}, kernel, now=0.0))
    assert weights(result) == {"10.0.0.10": 3}


@pytest.mark.parametrize(
    ("extra", "found"),
    [
        ("slow_start = 30", 17),  # a ramp goes on from its step
        ('check = { type = "exec", command = ["true"], dynamic_weight = true }', 17),
        ("", 0),  # down (on_failure weight0) or drained at the last run
    ],
    ids=["slow start", "dynamic weight", "weight 0"],
)
def test_unknown_server_keeps_a_weight_of_the_daemons_making(extra: str, found: int) -> None:
    result = only(desired_table(config(extra), {}, kernel_with(dest(0, found)), now=0.0))
    assert weights(result) == {"10.0.0.10": found}
    assert reasons(result)["10.0.0.10"] == "not checked yet, weight kept as in the kernel"


def test_dynamic_weight_from_exec_check_and_clamping() -> None:
    health = {
        rid(0): RealServerView(Health.UP, 0.0, weight=42),
        rid(1): RealServerView(Health.UP, 0.0, weight=10**6),
    }
    result = only(desired_table(config(), health, {}, now=1.0))
    assert weights(result) == {"10.0.0.10": 42, "10.0.0.11": 65535}
    assert reasons(result)["10.0.0.10"] == "up, dynamic weight"


def test_slow_start_ramps_linearly_from_1_to_configured_weight() -> None:
    cfg = parse_config(
        '[[virtual_server]]\nprotocol = "tcp"\naddress = "10.0.0.1:80"\nslow_start = 10\n'
        '[[virtual_server.real_server]]\naddress = "10.0.0.10"\nweight = 101\n'
    )
    seen = []
    for now in (100.0, 102.5, 105.0, 109.99, 110.0, 500.0):
        health = {rid(0): RealServerView(Health.UP, since=100.0)}
        seen.append(weights(only(desired_table(cfg, health, {}, now)))["10.0.0.10"])
    assert seen == [1, 26, 51, 100, 101, 101]
    health = {rid(0): RealServerView(Health.UP, since=100.0)}
    assert reasons(only(desired_table(cfg, health, {}, 105.0)))["10.0.0.10"] == (
        "up, slow start 5.0s of 10s towards 101"
    )


def test_admin_states() -> None:
    health = {rid(0): UP, rid(1): UP}
    admin = {rid(0): AdminState.DISABLED, rid(1): AdminState.DRAIN}
    result = only(desired_table(config(), health, {}, 0.0, admin))
    assert weights(result) == {"10.0.0.11": 0}
    assert reasons(result) == {
        "10.0.0.10": "disabled by admin, removed",
        "10.0.0.11": "draining by admin",
    }
    result = only(desired_table(config('on_failure = "weight0"'), health, {}, 0.0, admin))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 0}
    enabled = {rid(0): AdminState.ENABLED}
    assert weights(only(desired_table(config(), health, {}, 0.0, enabled))) == {
        "10.0.0.10": 3,
        "10.0.0.11": 4,
    }


def test_a_drained_server_is_at_weight_0_only_where_it_could_serve() -> None:
    """Trial report: `drain` of a server that was down (or disabled) put it
    back in the table at weight 0; on a persistent service the kernel
    revived its persistence templates with it, and their clients were sent
    to the dead server until the templates expired. A drained server that
    is down is out, as any down server (on_failure = "weight0" keeps it at
    0); one not checked yet stays as the kernel has it; panic keeps it at 0."""
    drained = {rid(0): AdminState.DRAIN}
    result = only(desired_table(config(), {rid(0): DOWN, rid(1): UP}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.11": 4}
    assert reasons(result)["10.0.0.10"] == "down, and drained by admin, removed"
    # It died while drained: it leaves the table.
    in_kernel = kernel_with(dest(0, 0), dest(1, 4))
    result = only(desired_table(config(), {rid(0): DOWN, rid(1): UP}, in_kernel, 0.0, drained))
    assert weights(result) == {"10.0.0.11": 4}
    weight0 = config('on_failure = "weight0"')
    result = only(desired_table(weight0, {rid(0): DOWN, rid(1): UP}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 4}
    assert reasons(result)["10.0.0.10"] == "down, and drained by admin, kept at weight 0"
    # Every server down: panic keeps them all, the drained one at 0.
    panic = config("panic = true")
    result = only(desired_table(panic, {rid(0): DOWN, rid(1): DOWN}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 4}
    # Not checked yet: out unless the kernel has it (or its check is initial up).
    result = only(desired_table(config(), {rid(1): UP}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.11": 4}
    assert reasons(result)["10.0.0.10"] == (
        "drained by admin, not checked yet, and not in the kernel"
    )
    result = only(desired_table(config(), {rid(1): UP}, in_kernel, 0.0, drained))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 4}
    initial_up = config('check = { type = "tcp", initial = "up" }')
    result = only(desired_table(initial_up, {rid(1): UP}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 4}
    # Up: weight 0, as always.
    result = only(desired_table(config(), {rid(0): UP, rid(1): UP}, {}, 0.0, drained))
    assert weights(result) == {"10.0.0.10": 0, "10.0.0.11": 4}


def test_panic_keeps_every_server_when_all_are_down() -> None:
    all_down = {rid(0): DOWN, rid(1): DOWN}
    result = only(desired_table(config("panic = true"), all_down, {}, 0.0))
    assert weights(result) == {"10.0.0.10": 3, "10.0.0.11": 4}
    assert reasons(result)["10.0.0.10"] == "down, but every server is down: panic keeps all"
    # not all down: no panic
    one_up = {rid(0): UP, rid(1): DOWN}
    assert weights(only(desired_table(config("panic = true"), one_up, {}, 0.0))) == {"10.0.0.10": 3}
    # without panic, all down means an empty service
    assert only(desired_table(config(), all_down, {}, 0.0)).destinations == ()
    # a disabled server does not count, and stays out
    admin = {rid(1): AdminState.DISABLED}
    down_and_disabled = {rid(0): DOWN, rid(1): UP}
    assert weights(
        only(desired_table(config("panic = true"), down_and_disabled, {}, 0.0, admin))
    ) == {"10.0.0.10": 3}


SORRY = 'quorum = 2\nsorry_server = { address = "10.0.0.99", weight = 7 }'


def test_sorry_server_when_quorum_is_lost() -> None:
    cfg = config(SORRY)
    lost = only(desired_table(cfg, {rid(0): UP, rid(1): DOWN}, {}, 0.0))
    assert weights(lost) == {"10.0.0.10": 3, "10.0.0.99": 7}
    sorry = lost.decisions[-1]
    assert sorry.sorry
    assert sorry.reason == "quorum lost (1 up of quorum 2)"
    met = only(desired_table(cfg, {rid(0): UP, rid(1): UP}, {}, 0.0))
    assert weights(met) == {"10.0.0.10": 3, "10.0.0.11": 4}
    assert met.decisions[-1].reason == "quorum met (2 up of quorum 2)"
    # draining servers take no new connections: they do not count
    drained = only(
        desired_table(cfg, {rid(0): UP, rid(1): UP}, {}, 0.0, {rid(1): AdminState.DRAIN})
    )
    assert "10.0.0.99" in weights(drained)


def test_sorry_server_default_quorum_is_one() -> None:
    cfg = config('sorry_server = { address = "10.0.0.99" }')
    assert weights(only(desired_table(cfg, {rid(0): DOWN, rid(1): DOWN}, {}, 0.0))) == {
        "10.0.0.99": 1
    }
    assert "10.0.0.99" not in weights(only(desired_table(cfg, {rid(0): UP}, {}, 0.0)))


def test_sorry_server_while_quorum_is_not_known_follows_the_kernel() -> None:
    cfg = config(SORRY)
    health = {rid(0): UP, rid(1): UNKNOWN}
    sorry = Destination(ip_address("10.0.0.99"), 80, Forward.ROUTE, 5)
    with_sorry = only(desired_table(cfg, health, kernel_with(sorry), 0.0))
    assert weights(with_sorry) == {"10.0.0.10": 3, "10.0.0.99": 5}
    assert with_sorry.decisions[-1].reason == (
        "quorum not known yet (1 up of quorum 2), kept as in the kernel"
    )
    without = only(desired_table(cfg, health, {}, 0.0))
    assert weights(without) == {"10.0.0.10": 3}
    # even if the unknown one turns out up, the quorum cannot be met: sorry at once
    health = {rid(0): DOWN, rid(1): UNKNOWN}
    assert weights(only(desired_table(cfg, health, {}, 0.0))) == {"10.0.0.99": 7}


def test_view_from_health_state() -> None:
    state = HealthState(
        Health.UP, 3, 0, since=12.0, last=ProbeResult.success(0.01, weight=9), weight=9
    )
    assert RealServerView.from_state(state) == RealServerView(Health.UP, 12.0, 9)
    ramped = HealthState(Health.UP, 3, 0, since=12.0, ramp_start=4.0, weight=None)
    assert RealServerView.from_state(ramped) == RealServerView(Health.UP, 4.0, None)
    failed = HealthState(Health.UP, 0, 1, since=12.0, last=ProbeResult.failure(Reason.TIMEOUT, 1.0))
    assert RealServerView.from_state(failed) == RealServerView(Health.UP, 12.0, None)
    assert RealServerView.from_state(HealthState()) == RealServerView(Health.UNKNOWN, 0.0, None)


def test_every_configured_service_is_desired_even_with_no_server_up() -> None:
    cfg = parse_config(
        """
        [[virtual_server]]
        protocol = "udp"
        address = "10.0.0.1:53"
        [[virtual_server]]
        fwmark = 3
        [[virtual_server.real_server]]
        address = "10.0.0.5:53"
        """
    )
    table = desired_table(cfg, {}, {}, 0.0)
    assert list(table) == [vs.key for vs in cfg.virtual_servers]
    assert all(d.destinations == () for d in table.values())


INITIAL_UP = 'check = { type = "tcp", initial = "up" }'


def test_initial_up_puts_an_unchecked_server_in_at_once() -> None:
    cfg = config(INITIAL_UP)
    result = only(desired_table(cfg, {rid(1): DOWN}, {}, 0.0))
    assert weights(result) == {"10.0.0.10": 3}
    assert reasons(result)["10.0.0.10"] == (
        'not checked yet, in service from the start (initial = "up")'
    )
    # without it, the same server waits for its first probe
    assert weights(only(desired_table(config(), {rid(1): DOWN}, {}, 0.0))) == {}
    # what the kernel has still wins: weight 0 was the last run's down or drain
    kept = only(desired_table(cfg, {}, kernel_with(dest(0, 0)), 0.0))
    assert weights(kept) == {"10.0.0.10": 0, "10.0.0.11": 4}
    assert reasons(kept)["10.0.0.10"] == "not checked yet, weight kept as in the kernel"
    # once its pass put it in, the reason stays what put it there
    placed = only(desired_table(cfg, {}, kernel_with(dest(0, 3), dest(1, 4)), 0.0))
    assert weights(placed) == {"10.0.0.10": 3, "10.0.0.11": 4}
    assert set(reasons(placed).values()) == {
        'not checked yet, in service from the start (initial = "up")'
    }
    # admin states apply as to any server
    admin = {rid(0): AdminState.DISABLED, rid(1): AdminState.DRAIN}
    assert weights(only(desired_table(cfg, {}, {}, 0.0, admin))) == {"10.0.0.11": 0}


def test_initial_up_with_slow_start_enters_at_weight_one() -> None:
    cfg = config(f"slow_start = 10.0\n{INITIAL_UP}")
    assert weights(only(desired_table(cfg, {}, {}, 5.0))) == {"10.0.0.10": 1, "10.0.0.11": 1}


def test_initial_up_counts_as_up_for_the_quorum_and_panic() -> None:
    cfg = config(f"{SORRY}\n{INITIAL_UP}")
    met = only(desired_table(cfg, {rid(0): UP}, {}, 0.0))
    assert weights(met) == {"10.0.0.10": 3, "10.0.0.11": 4}
    assert met.decisions[-1].reason == "quorum met (2 up of quorum 2)"
    lost = only(desired_table(cfg, {rid(1): DOWN}, {}, 0.0))
    assert weights(lost) == {"10.0.0.10": 3, "10.0.0.99": 7}
    assert lost.decisions[-1].reason == "quorum lost (1 up of quorum 2)"
    # no panic while one is in service unchecked
    panic = config(f"panic = true\n{INITIAL_UP}")
    assert weights(only(desired_table(panic, {rid(1): DOWN}, {}, 0.0))) == {"10.0.0.10": 3}
