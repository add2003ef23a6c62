"""What the kernel table should hold, given the config, the health of every
real server, the operator's admin states and the table as it is now.

Pure: the same inputs always give the same table, and every real server's
presence and weight comes with the reason for it (for logs and status).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from director.config.model import (
    Config,
    OnFailure,
    RealServer,
    RealServerId,
    VirtualServer,
)
from director.health.state import Health, HealthState
from director.ipvs.facts import MAX_WEIGHT
from director.ipvs.model import (
    Destination,
    IPAddress,
    Service,
    ServiceEntry,
    ServiceKey,
)


class AdminState(enum.StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # out of rotation: as if down
    DRAIN = "drain"  # weight 0: no new connections, existing ones finish


@dataclass(frozen=True)
class RealServerView:
    """What desired_table needs to know about one real server's health."""

    status: Health = Health.UNKNOWN
    since: float | None = None  # when `status` was entered; while up, when the weight ramp began
    weight: int | None = None  # last asked for by a dynamic-weight exec check

    @classmethod
    def from_state(cls, state: HealthState) -> RealServerView:
        since = state.ramp_start if state.status is Health.UP else state.since
        return cls(state.status, state.since if since is None else since, state.weight)


UNCHECKED = RealServerView()
INITIAL_UP = 'not checked yet, in service from the start (initial = "up")'


@dataclass(frozen=True)
class Decision:
    """Whether a server is in the table, at which weight, and why."""

    address: IPAddress
    port: int
    present: bool
    weight: int | None  # None when absent
    reason: str
    sorry: bool = False  # the sorry server rather than a real server


@dataclass(frozen=True)
class DesiredService:
    """One virtual service as the table should hold it (desired_service): its
    kernel service, the destinations that should be in it, and the decision
    about each real server (and the sorry server), present or not."""

    service: Service
    destinations: tuple[Destination, ...]
    decisions: tuple[Decision, ...] = ()


def desired_table(
    config: Config,
    health: Mapping[RealServerId, RealServerView],
    kernel: Mapping[ServiceKey, ServiceEntry],
    now: float,
    admin: Mapping[RealServerId, AdminState] | None = None,
) -> dict[ServiceKey, DesiredService]:
    """The desired table for every configured virtual service. A server
    missing from `health` is unknown; one missing from `admin` is enabled."""
    return {
        vs.key: desired_service(vs, health, kernel.get(vs.key), now, admin or {})
        for vs in config.virtual_servers
    }


def services_changed(
    old: Iterable[VirtualServer],
    new: Iterable[VirtualServer],
    old_admin: Mapping[RealServerId, AdminState],
    new_admin: Mapping[RealServerId, AdminState],
) -> set[ServiceKey]:
    """The services whose desired state may differ between two configs:
    added, dropped, or defined differently (the service or any of its real
    servers), or with a real server whose admin state changed. A reload or an
    operator's change needs a pass over these only."""
    before = {vs.key: vs for vs in old}
    changed: set[ServiceKey] = set()
    for vs in new:
        previous = before.pop(vs.key, None)
        if previous is None or (previous is not vs and previous != vs):
            changed.add(vs.key)
    changed.update(before)
    if old_admin is not new_admin:
        changed.update(
            rid.service
            for rid in old_admin.keys() | new_admin.keys()
            if old_admin.get(rid) != new_admin.get(rid)
        )
    return changed


def desired_service(
    vs: VirtualServer,
    health: Mapping[RealServerId, RealServerView],
    kernel: ServiceEntry | None,
    now: float,
    admin: Mapping[RealServerId, AdminState],
) -> DesiredService:
    ids = vs.real_server_ids
    views = [health.get(i, UNCHECKED) for i in ids]
    # Only a server not checked yet (or the sorry server) looks at the kernel.
    in_kernel = (
        {e.destination.key: e.destination for e in kernel.destinations}
        if kernel
        and (vs.sorry_server is not None or any(v.status is Health.UNKNOWN for v in views))
        else {}
    )
    states = (
        [admin.get(i, AdminState.ENABLED) for i in ids]
        if admin
        else [AdminState.ENABLED] * len(ids)
    )
    enabled = [
        counted_status(rs, v)
        for rs, v, a in zip(vs.real_servers, views, states, strict=True)
        if a is AdminState.ENABLED
    ]
    panic = vs.panic and bool(enabled) and all(s is Health.DOWN for s in enabled)

    decisions: list[Decision] = []
    destinations: list[Destination] = []
    for rs, view, state in zip(vs.real_servers, views, states, strict=True):
        decision = _decide(vs, rs, view, state, in_kernel.get((rs.address, rs.port)), now, panic)
        decisions.append(decision)
        if decision.weight is not None:
            destinations.append(rs.destination(decision.weight))
    if vs.sorry_server is not None:
        up = enabled.count(Health.UP)
        sorry = vs.sorry_server.destination()
        decision = _decide_sorry(
            sorry, vs.quorum, up, enabled.count(Health.UNKNOWN), in_kernel.get(sorry.key)
        )
        decisions.append(decision)
        if decision.weight is not None:
            destinations.append(replace(sorry, weight=decision.weight))
    return DesiredService(vs.service(), tuple(destinations), tuple(decisions))


def counted_status(rs: RealServer, view: RealServerView) -> Health:
    """The health a quorum (or panic) counts for `rs`: its own, except that
    one not probed yet whose check has `initial = "up"` counts as up, as it
    is in service (keepalived without `alpha` counts it alive)."""
    if view.status is Health.UNKNOWN and rs.check.timing.initial == "up":
        return Health.UP
    return view.status


def independent(vs: VirtualServer) -> bool:
    """Whether each real server's place in `vs`'s table hangs on its own
    health and admin state alone: no sorry server (a quorum counts them
    all) and no panic (nor does it). A change of some of its servers is
    then planned from theirs alone (desired_servers)."""
    return vs.sorry_server is None and not vs.panic


def desired_servers(
    vs: VirtualServer,
    ids: Iterable[RealServerId],
    health: Mapping[RealServerId, RealServerView],
    kernel: Mapping[tuple[IPAddress, int], Destination],
    now: float,
    admin: Mapping[RealServerId, AdminState],
) -> dict[tuple[IPAddress, int], Destination | None]:
    """For an `independent` virtual server: the destination each real
    server of `ids` should be (None: not in the table), exactly as
    desired_service places it; `kernel` holds the service's destinations
    by (address, port). An id `vs` does not have is skipped. O(len(ids)),
    not O(the service's servers)."""
    if not independent(vs):
        raise ValueError(f"{vs.label}: a sorry server or panic ties its servers together")
    index = vs.real_server_index
    wanted: dict[tuple[IPAddress, int], Destination | None] = {}
    for rid in ids:
        rs = index.get(rid)
        if rs is None:
            continue
        key = (rs.address, rs.port)
        state = admin.get(rid, AdminState.ENABLED)
        view = health.get(rid, UNCHECKED)
        decision = _decide(vs, rs, view, state, kernel.get(key), now, False)
        wanted[key] = None if decision.weight is None else rs.destination(decision.weight)
    return wanted


def _decide(
    vs: VirtualServer,
    rs: RealServer,
    view: RealServerView,
    admin: AdminState,
    in_kernel: Destination | None,
    now: float,
    panic: bool,
) -> Decision:
    def present(weight: int, reason: str) -> Decision:
        return Decision(rs.address, rs.port, True, weight, reason)

    def absent(reason: str) -> Decision:
        return Decision(rs.address, rs.port, False, None, reason)

    def failed(reason: str) -> Decision:
        if vs.on_failure is OnFailure.WEIGHT0:
            return present(0, f"{reason}, kept at weight 0")
        return absent(f"{reason}, removed")

    initial_up = rs.check.timing.initial == "up"
    if admin is AdminState.DISABLED:
        return failed("disabled by admin")
    if admin is AdminState.DRAIN:
        # Weight 0 where it could serve. A drained server that is down is
        # out as any down one: put back, even at weight 0, it would take
        # the clients of its persistence templates again (the kernel keeps
        # a deleted destination's templates and revives them with it).
        if view.status is Health.DOWN and not panic:
            return failed("down, and drained by admin")
        if view.status is Health.UNKNOWN and in_kernel is None and not initial_up:
            return absent("drained by admin, not checked yet, and not in the kernel")
        return present(0, "draining by admin")
    if view.status is Health.UP:
        return _up(rs, view, vs.slow_start, now, present)
    if view.status is Health.DOWN:
        if panic:
            return present(rs.weight, "down, but every server is down: panic keeps all")
        return failed("down")
    if in_kernel is not None:
        # A weight of the kernel's own making is kept: a ramp's step, an
        # exec check's last word, or 0 (down or drained at the last run).
        if in_kernel.weight == 0 or vs.slow_start > 0 or getattr(rs.check, "dynamic_weight", False):
            weight, why = in_kernel.weight, "weight kept as in the kernel"
        else:
            weight, why = rs.weight, "kept as in the kernel at the configured weight"
        return present(weight, INITIAL_UP if initial_up and weight else f"not checked yet, {why}")
    if initial_up:
        # A ramp begins at the first passed probe (state.advance), from 1.
        return present(1 if vs.slow_start > 0 else rs.weight, INITIAL_UP)
    return absent("not checked yet, and not in the kernel")


def _up(
    rs: RealServer,
    view: RealServerView,
    slow_start: float,
    now: float,
    present: Callable[[int, str], Decision],
) -> Decision:
    target, source = rs.weight, ""
    if view.weight is not None:
        target = min(max(view.weight, 0), MAX_WEIGHT)
        source = ", dynamic weight"
    if slow_start > 0 and view.since is not None and target > 1:
        elapsed = max(now - view.since, 0.0)
        if elapsed < slow_start:
            weight = 1 + math.floor((target - 1) * elapsed / slow_start)
            return present(
                weight,
                f"up{source}, slow start {elapsed:.1f}s of {slow_start:g}s towards {target}",
            )
    return present(target, f"up{source}")


def _decide_sorry(
    sorry: Destination, quorum: int, up: int, unknown: int, in_kernel: Destination | None
) -> Decision:
    def decision(present: bool, weight: int | None, reason: str) -> Decision:
        return Decision(sorry.address, sorry.port, present, weight, reason, sorry=True)

    counted = f"{up} up of quorum {quorum}"
    if up >= quorum:
        return decision(False, None, f"quorum met ({counted})")
    if up + unknown >= quorum:
        if in_kernel is not None:
            return decision(
                True, in_kernel.weight, f"quorum not known yet ({counted}), kept as in the kernel"
            )
        return decision(False, None, f"quorum not known yet ({counted}), not in the kernel")
    return decision(True, sorry.weight, f"quorum lost ({counted})")
