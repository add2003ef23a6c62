"""`directorctl status`: every virtual service and real server with its health,
last probe, counters, weights and admin state, as values, text and JSON.

Pure: built from the effective config, the checker's states, the admin states
and a dump of the kernel table, at a given time.
"""

from __future__ import annotations

from _socket import inet_ntoa
from collections.abc import Container, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from director.bgp import BgpStatus
from director.config import Config, RealServer, RealServerId
from director.desired import AdminState, Decision, RealServerView, desired_table
from director.health.spec import probed_endpoint
from director.health.state import HealthState
from director.ipvs.model import IPAddress, ServiceEntry, ServiceKey
from director.metrics.events import LATE_AFTER
from director.overrides import Override
from director.refusals import Refusal, Refusals, describe_subject
from director.runtime import describe_endpoint, describe_service
from director.sync import SyncDaemonStatus
from director.vips import VipStatus

if TYPE_CHECKING:
    from director.health.checker import Checker


@dataclass(frozen=True)
class RealServerStatus:
    """One real server in `directorctl status` (and in its JSON data): its health,
    last probe, weights and the decision about its place in the table."""

    server: str  # "10.0.1.1:80"
    name: str | None
    health: str  # unknown, up, down
    admin: str  # enabled, disabled, drain
    in_state_for: float  # seconds since `health` was entered
    successes_in_row: int
    failures_in_row: int
    last_ok: bool | None  # None: not probed yet
    last_reason: str | None
    last_latency: float | None  # seconds
    last_detail: str | None
    configured_weight: int
    current_weight: int | None  # in the kernel table now; None when absent
    decision: str  # why it is (or is not) in the table
    refused: str | None = None  # the kernel refuses the change to it, and why
    last_age: float | None = None  # seconds since the last probe's verdict; None: not probed
    # The decision not in the kernel yet (the next pass applies it): "not in
    # the kernel yet", "still in the kernel", "weight 3 not in the kernel yet"
    pending: str | None = None
    # Where its check probes it, when that is not `server` ("10.0.1.1:8080":
    # a route server written with another port, a check's own port)
    probed: str | None = None
    # Its kernel fields (weight, forwarding...) are a runtime change's
    # (directorctl -a or -e), not the file's: a reload of the file does not
    # change them (docs/runtime.md)
    runtime: bool = False
    # The file's values that change keeps from the table, each as its change
    # from the running value: "weight 9 -> 4" (director.overrides)
    not_applied: tuple[str, ...] = ()
    # Seconds its check's probe has been running, before its verdict; None
    # when none runs now
    probe_running_for: float | None = None
    # Seconds its probe has been due and waiting for a slot, and which:
    # "exec" ([daemon] max_exec_checks commands run already), "short" (fewer
    # run for a while: the daemon ran out of file descriptors) or "probe"
    # ([daemon] max_probes run); None when it does not wait
    slot_wait: float | None = None
    slot: str | None = None


@dataclass(frozen=True, slots=True)
class Slots:
    """How many probes the checker runs at once: `probes` ([daemon]
    max_probes), of them `commands` exec checks ([daemon] max_exec_checks),
    and `held`, fewer, while a shortage of the daemon's own file
    descriptors holds it lower (Checker.held; None when none does)."""

    probes: int
    commands: int
    held: int | None = None
    # Running now: probes, of them commands, and of them those of servers a
    # reload removed since they started (Checker.occupancy)
    running: int = 0
    running_commands: int = 0
    removed: int = 0

    @classmethod
    def of(cls, checker: Checker[Any]) -> Slots:
        held = checker.held()
        running, commands, removed = checker.occupancy()
        ceiling = None if held is None else held[0]
        return cls(checker.max_probes, checker.max_exec, ceiling, running, commands, removed)

    def bounds(self) -> dict[str, int]:
        """Each kind of slot's bound: "probe", "exec", and "short" while held."""
        bounds = {"probe": self.probes, "exec": self.commands}
        return bounds if self.held is None else bounds | {"short": self.held}


@dataclass(frozen=True)
class ServiceStatus:
    """One virtual service in `directorctl status` (and in its JSON data), with its
    real servers and its sorry server."""

    service: str  # "tcp:10.0.0.1:80", as drain/disable/enable take it
    scheduler: str
    check: str  # the check type
    in_kernel: bool
    real_servers: tuple[RealServerStatus, ...]
    refused: str | None = None  # the kernel refuses the change to the service, and why
    sorry: str | None = None  # the sorry server, "10.0.9.99:80", with `sorry_server`
    sorry_decision: str | None = None  # why it is (or is not) in the table
    sorry_weight: int | None = None  # in the kernel table now; None when absent
    # A real server's last verdict older than this (seconds: its check's
    # interval + timeout + LATE_AFTER) says its checks are behind; None
    # without a check.
    overdue_after: float | None = None
    # Its kernel fields are a runtime change's (directorctl -A or -E)
    runtime: bool = False
    # The file's values of its own that change keeps from the table:
    # 'scheduler "wlc" -> "rr"' (director.overrides)
    not_applied: tuple[str, ...] = ()
    # Real servers of the file hidden by a runtime delete (directorctl -d):
    # "10.0.1.3:80"
    deleted_at_runtime: tuple[str, ...] = ()
    # The service itself is the file's, hidden by a runtime delete
    # (directorctl -D): not managed, no real servers shown
    deleted: bool = False


def status_report(
    config: Config,
    states: Mapping[RealServerId, HealthState],
    admin: Mapping[RealServerId, AdminState],
    kernel: Mapping[ServiceKey, ServiceEntry],
    now: float,
    refusals: Refusals | None = None,
    set_at_runtime: Container[object] = frozenset(),
    overrides: Sequence[Override] = (),
    probing: Mapping[RealServerId, float] | None = None,
    waiting_for_slot: Mapping[RealServerId, tuple[float, str]] | None = None,
) -> tuple[ServiceStatus, ...]:
    """`refusals` are the engine's (director.refusals): each is reported on
    the service or real server it is about. `overrides` (the file's values
    runtime changes keep from the table) are shown where they apply; a
    service of the file deleted at runtime comes after the others,
    `deleted`, with no real servers. `probing`: when each real server's
    probe running now started (Checker.probing, on the clock of `now`);
    `waiting_for_slot`: when each probe waiting for a slot was due, and the
    slot (Checker.waiting_for_slot)."""
    probing = probing or {}
    waiting_for_slot = waiting_for_slot or {}
    refused = {describe_subject(s): _refusal_text(r, now) for s, r in (refusals or {}).items()}
    kept: dict[object, tuple[str, ...]] = {}
    hidden: dict[ServiceKey, list[str]] = {}
    hidden_services: list[ServiceKey] = []
    for override in overrides:
        what = override.what
        if not override.deleted:
            kept[what] = override.changes
        elif isinstance(what, RealServerId):
            hidden.setdefault(what.service, []).append(_endpoint(what.address, what.port))
        elif isinstance(what, ServiceKey):
            hidden_services.append(what)
    views = {rid: RealServerView.from_state(s) for rid, s in states.items()}
    desired = desired_table(config, views, kernel, now, admin)
    report = []
    for vs in config.virtual_servers:
        entry = kernel.get(vs.key)
        weights = (
            {d.destination.key: d.destination.weight for d in entry.destinations} if entry else {}
        )
        decisions = desired[vs.key].decisions
        # (Its servers then wait for the service, not for a pass.)
        service_refused = entry is None and (vs.key, None, None) in refused
        reasons = {(d.address, d.port): d for d in decisions if not d.sorry}
        sorry = next((d for d in decisions if d.sorry), None)
        servers = []
        for rs in vs.real_servers:
            rid = vs.real_server_id(rs)
            state = states.get(rid, HealthState(since=now))
            last = state.last
            decision = reasons.get((rs.address, rs.port))
            current = weights.get((rs.address, rs.port))
            waits = waiting_for_slot.get(rid)
            servers.append(
                RealServerStatus(
                    server=_endpoint(rs.address, rs.port),
                    name=rs.name,
                    health=str(state.status),
                    admin=str(admin.get(rid, AdminState.ENABLED)),
                    in_state_for=round(max(now - state.since, 0.0), 3),
                    successes_in_row=state.successes_in_row,
                    failures_in_row=state.failures_in_row,
                    last_ok=None if last is None else last.ok,
                    last_reason=None if last is None else str(last.reason),
                    last_latency=None if last is None else round(last.latency, 6),
                    last_detail=None if last is None else last.detail,
                    configured_weight=rs.weight,
                    current_weight=current,
                    decision="" if decision is None else decision.reason,
                    refused=refused.get((vs.key, rs.address, rs.port)),
                    last_age=(
                        None
                        if state.probed_at is None
                        else round(max(now - state.probed_at, 0.0), 3)
                    ),
                    pending=(
                        None if decision is None else _pending(decision, current, service_refused)
                    ),
                    probed=_probed(rs),
                    runtime=rid in set_at_runtime,
                    not_applied=kept.get(rid, ()),
                    probe_running_for=(
                        None
                        if (started := probing.get(rid)) is None
                        else round(max(now - started, 0.0), 3)
                    ),
                    slot_wait=None if waits is None else round(max(now - waits[0], 0.0), 3),
                    slot=None if waits is None else waits[1],
                )
            )
        report.append(
            ServiceStatus(
                service=describe_service(vs.key),
                scheduler=vs.scheduler,
                check=_check_name(vs.check),
                in_kernel=entry is not None,
                real_servers=tuple(servers),
                refused=refused.get((vs.key, None, None)),
                sorry=None if sorry is None else _endpoint(sorry.address, sorry.port),
                sorry_decision=None if sorry is None else sorry.reason,
                sorry_weight=None if sorry is None else weights.get((sorry.address, sorry.port)),
                overdue_after=_overdue_after(vs.check),
                runtime=vs.key in set_at_runtime,
                not_applied=kept.get(vs.key, ()),
                deleted_at_runtime=tuple(hidden.get(vs.key, ())),
            )
        )
    for key in hidden_services:
        report.append(
            ServiceStatus(
                service=describe_service(key),
                scheduler="",
                check="",
                in_kernel=key in kernel,
                real_servers=(),
                deleted=True,
            )
        )
    return tuple(report)


def _overdue_after(check: object) -> float | None:
    timing = getattr(check, "timing", None)
    return None if timing is None else timing.interval + timing.timeout + LATE_AFTER


def overdue(
    report: tuple[ServiceStatus, ...], before: float = 0.0
) -> tuple[int, str | None, float | None]:
    """How many real servers were last probed longer ago than their check's
    interval and timeout allow (by LATE_AFTER s more), and the longest of
    them ("tcp:10.0.0.1:80 10.0.1.1:80", seconds): a start that a busy
    checker skips is late by nothing, so only these ages tell how far
    behind its checks are. `before`: as they were that many seconds ago
    (when a stop ended the checks)."""
    count, longest, age = 0, None, None
    for service in report:
        limit = service.overdue_after
        if limit is None:
            continue
        for rs in service.real_servers:
            if rs.last_age is not None and rs.last_age - before > limit:
                count += 1
                if age is None or rs.last_age - before > age:
                    longest, age = f"{service.service} {rs.server}", rs.last_age - before
    return count, longest, age


def _pending(decision: Decision, current: int | None, service_refused: bool = False) -> str | None:
    """How the kernel (a server's `current` weight there, None: absent)
    differs from `decision`, None when it does not: between a verdict and
    the pass that applies it (milliseconds, or a pass's spacing under load),
    a refused change (its refusal says why), a service the kernel refuses
    (`service_refused`: the service's line says why), or a table another
    tool changed (the next drift check repairs it)."""
    if decision.weight is None:
        return None if current is None else "still in the kernel"
    if current is None:
        return (
            "not in the kernel: its service is refused"
            if service_refused
            else "not in the kernel yet"
        )
    if current != decision.weight:
        return f"weight {decision.weight} not in the kernel yet"
    return None


def _endpoint(address: IPAddress, port: int) -> str:
    """describe_endpoint, without ipaddress's str() of an IPv4 address (about
    15 us each on the host: a sixth of a 10,000-server status)."""
    if address.version == 4:
        return f"{inet_ntoa(address.packed)}:{port}"
    return describe_endpoint(address, port)


def _refusal_text(refusal: Refusal, now: float) -> str:
    kind = type(refusal.operation).__name__
    return (
        f"{kind} refused by the kernel: {refusal.error} "
        f"({refusal.attempts} tries, next in {max(refusal.retry_at - now, 0.0):.1f}s)"
    )


def _probed(rs: RealServer) -> str | None:
    probed = probed_endpoint(rs.check, rs.address, rs.port)
    if probed is None or probed == (rs.address, rs.port):
        return None
    return _endpoint(*probed)


def _check_name(check: object) -> str:
    name = type(check).__name__.removesuffix("Check").lower()
    return "https" if getattr(check, "tls", False) else name


def slot_waiting(report: tuple[ServiceStatus, ...], slot: str) -> int:
    """How many real servers' probes wait for a `slot` ("exec", "probe")."""
    return sum(1 for service in report for rs in service.real_servers if rs.slot == slot)


def status_data(
    report: tuple[ServiceStatus, ...],
    sync: tuple[SyncDaemonStatus, ...] = (),
    *,
    vips: tuple[VipStatus, ...] = (),
    maintenance: bool | None = None,
    bgp: BgpStatus | None = None,
    lateness: float | None = None,
    slots: Slots | None = None,
    stopping: float | None = None,
) -> dict[str, object]:
    """{"services": [...]}, "probe_lateness" when given (seconds the last
    probe started after its due time) and then "probes_overdue" (`overdue`:
    {"servers", "longest", "longest_age"}), "slots" when `slots` (max
    probes, max exec commands) are given ({"probe": {"max", "waiting",
    "running", "removed"}, "exec": {"max", "waiting", "running"}}, and
    "short": {"max", "waiting"} while a shortage of file descriptors holds
    the probes lower), "sync_daemons" when the daemon keeps any
    (director.sync.SyncKeeper.report), "vips" when it keeps any
    (director.vips.VipKeeper.report), "maintenance" (a bool) when given,
    and "bgp" with [bgp] (director.bgp.BgpKeeper.report: "speaker" {state,
    pid, error, retry_in}, "peers", "routes"); "stopping" (seconds since
    the daemon's stop began, when it has: its checks ended then)."""
    data: dict[str, object] = {"services": [_service_data(s) for s in report]}
    if stopping is not None:
        data["stopping"] = round(stopping, 3)
    if lateness is not None:
        data["probe_lateness"] = round(lateness, 3)
        count, longest, age = overdue(report)
        data["probes_overdue"] = {
            "servers": count,
            "longest": longest,
            "longest_age": None if age is None else round(age, 3),
        }
    if slots is not None:
        kinds = {
            kind: {"max": most, "waiting": slot_waiting(report, kind)}
            for kind, most in slots.bounds().items()
        }
        kinds["probe"] |= {"running": slots.running, "removed": slots.removed}
        kinds["exec"]["running"] = slots.running_commands
        data["slots"] = kinds
    if sync:
        data["sync_daemons"] = [asdict(d) for d in sync]
    if vips:
        data["vips"] = [asdict(v) for v in vips]
    if maintenance is not None:
        data["maintenance"] = maintenance
    if bgp is not None:
        data["bgp"] = {
            "speaker": {
                "state": bgp.speaker,
                "pid": bgp.pid,
                "error": bgp.error,
                "retry_in": bgp.retry_in,
            },
            "peers": [
                {"name": p.name, "address": p.address, "as": p.as_number, "state": p.state}
                for p in bgp.peers
            ],
            "routes": [asdict(r) for r in bgp.routes],
        }
    return data


# How the text marks what a runtime change set (ServiceStatus.runtime,
# RealServerStatus.runtime).
RUNTIME_NOTE = "set at runtime"
# Seconds a probe runs before the text shows it (the data always has it):
# a TCP or HTTP probe nearby takes milliseconds, and a row that showed each
# one running would change at every look.
PROBE_RUNNING_SHOWN = 1.0
# Seconds after probes last waited for a slot that checks behind still name
# the slots: servers left behind by the waits stay overdue for up to their
# interval and timeout after a reload raised the limit (trial 37).
RECENT_SLOT_WAIT = 60.0


def _runtime(service: ServiceStatus) -> str:
    if not service.runtime:
        return ""
    return f", {RUNTIME_NOTE}{_not_applied(service.not_applied)}"


def _not_applied(changes: Sequence[str]) -> str:
    """'; weight 9 -> 4 in the file, not applied', or nothing."""
    return f"; {', '.join(changes)} in the file, not applied" if changes else ""


def _head(service: ServiceStatus, kernel: str) -> str:
    """A service's line before its rows, without its newline."""
    if service.deleted:
        return (
            f"{service.service} (in the file, deleted at runtime:"
            " directorctl -A brings it back with the file's settings)"
        )
    return (
        f"{service.service} {service.scheduler} ({service.check} check{kernel}{_runtime(service)})"
    )


def _hidden_text(service: ServiceStatus) -> str:
    """The line of the file's real servers a runtime delete hides."""
    if not service.deleted_at_runtime:
        return ""
    return (
        f"  in the file, deleted at runtime: {', '.join(service.deleted_at_runtime)}"
        " (directorctl -a brings it back with the file's settings)\n"
    )


def _service_data(service: ServiceStatus) -> dict[str, object]:
    """asdict(service) without its deep copy of every value (the fields are
    strings, numbers, booleans and None): 1.1 s of a 10,000-server status
    on the host with asdict. A frozen dataclass without slots keeps its
    fields in its __dict__, in order."""
    data = dict(vars(service))
    data["real_servers"] = tuple(dict(vars(rs)) for rs in service.real_servers)
    return data


_COLUMNS = ("SERVER", "HEALTH", "FOR", "ADMIN", "WEIGHT", "LAST PROBE", "OK/FAIL", "TABLE")


def status_text(
    report: tuple[ServiceStatus, ...],
    sync: tuple[SyncDaemonStatus, ...] = (),
    *,
    vips: tuple[VipStatus, ...] = (),
    maintenance: bool = False,
    bgp: BgpStatus | None = None,
    summary: bool = False,
    lateness: float = 0.0,
    slots: Slots | None = None,
    slot_waited: Mapping[str, float] | None = None,
    stopping: float | None = None,
) -> str:
    """A maintenance line when on, a line when the last probe started
    LATE_AFTER or more after its due time (`lateness`, seconds) or real
    servers' last probes are older than their checks allow (`overdue`): the
    checks are behind, and LAST PROBE may be that old; one block per service, one aligned row
    per real server (`summary`: the totals and what is not up, summary_text);
    then one line per sync daemon and per VIP the daemon keeps, and the BGP
    speaker, its peers and routes. With probes waiting for a slot (`slots`:
    max probes, max exec commands at once), or that did within the last
    RECENT_SLOT_WAIT seconds (`slot_waited`: seconds ago, by kind), the
    checks behind say so, not that the daemon is short of CPU. `stopping`
    (seconds since the daemon's stop began): its checks ended then, and a
    line says so in place of the checks behind, with those behind when it
    began."""
    head = (
        "maintenance: on (every VIP of the daemon's removed or withdrawn; "
        "directorctl maintenance off)\n"
        if maintenance
        else ""
    )
    if stopping is None:
        head += _behind_text(report, lateness, slots, slot_waited)
    else:
        head += _stopping_text(report, stopping)
    services = summary_text(report) if summary else _services_text(report)
    return head + services + _sync_text(sync) + _vips_text(vips) + _bgp_text(bgp)


def _stopping_text(report: tuple[ServiceStatus, ...], stopping: float) -> str:
    """The line of a daemon whose stop began `stopping` seconds ago (its
    checks ended then), and the checks behind as they were then (trial 42:
    the stopping line alone hid that the health it shows was stale)."""
    text = (
        f"stopping: directord began to stop {stopping:.1f}s ago; its checks ended then, and"
        " HEALTH and LAST PROBE are as they were\n"
    )
    count, longest, age = overdue(report, before=stopping)
    if count and age is not None:
        text += (
            f"checks were behind when the stop began: {_overdue_phrase(count, longest, age)}"
            " (HEALTH may be that old)\n"
        )
    return text


def _behind_text(
    report: tuple[ServiceStatus, ...],
    lateness: float,
    slots: Slots | None,
    slot_waited: Mapping[str, float] | None,
) -> str:
    """The `checks behind` line, "" when they are not (see status_text)."""
    behind = []
    if lateness >= LATE_AFTER:
        behind.append(f"the last probe started {lateness:.1f}s after its time")
    count, longest, age = overdue(report)
    if count and age is not None:
        behind.append(_overdue_phrase(count, longest, age))
    if not behind:
        return ""
    most = slots or Slots(0, 0)
    causes = []
    if waiting := slot_waiting(report, "exec"):
        causes.append(
            f"exec checks wait for a command slot: {waiting} waiting, {most.commands} run at"
            " once ([daemon] max_exec_checks)"
        )
    if waiting := slot_waiting(report, "short"):
        causes.append(
            "probes wait while fewer run after the daemon ran short of file descriptors:"
            f" {waiting} waiting, {most.held} run at once for now (raise LimitNOFILE)"
        )
    if waiting := slot_waiting(report, "probe"):
        removed = (
            f"; {most.removed} of those running probe servers a reload removed, each"
            " until its timeout"
            if most.removed
            else ""
        )
        causes.append(
            f"probes wait for a slot: {waiting} waiting, {most.probes} run at once"
            f" ([daemon] max_probes, at most half the open-file limit{removed})"
        )
    if not causes:
        for kind, what, limit in _WAITED:
            ago = (slot_waited or {}).get(kind)
            if ago is not None and ago <= RECENT_SLOT_WAIT:
                causes.append(f"{what} until {ago:.1f}s ago ({limit})")
    cause = "; ".join(causes) or "short of CPU for this many checks at their intervals"
    return (
        f"checks behind: {'; '.join(behind)} ({cause}: LAST PROBE may be that old, and"
        " failures are seen that late)\n"
    )


def _overdue_phrase(count: int, longest: str | None, age: float) -> str:
    return (
        f"{count} real server{'' if count == 1 else 's'} not probed for longer than"
        f" {'its' if count == 1 else 'their'} interval and timeout allow, the longest"
        f" {age:.1f}s ({longest})"
    )


_WAITED = (
    ("exec", "exec checks waited for a command slot", "[daemon] max_exec_checks"),
    ("short", "probes waited while fewer ran after the daemon ran short of files", "LimitNOFILE"),
    ("probe", "probes waited for a slot", "[daemon] max_probes"),
)


def summary_text(report: tuple[ServiceStatus, ...]) -> str:
    """`status --summary`, for a table of thousands: one line of totals,
    then only the services with a real server that is down, not enabled,
    not in the table or refused (and those servers' rows), and the
    services not in the kernel table or refused. A server not checked yet
    (unknown) is counted, not listed, unless something else about it needs
    a look: after a restart of 10,000 servers the list was thousands of
    them."""
    servers = [rs for service in report for rs in service.real_servers]
    health = {name: 0 for name in ("up", "down", "unknown")}
    admin = {name: 0 for name in ("disabled", "drain")}
    for rs in servers:
        health[rs.health] = health.get(rs.health, 0) + 1
        if rs.admin in admin:
            admin[rs.admin] += 1
    in_table = sum(1 for rs in servers if rs.current_weight is not None)
    managed = [service for service in report if not service.deleted]
    hidden = sum(len(service.deleted_at_runtime) for service in report)
    hidden_services = len(report) - len(managed)
    deleted = [
        f"{count} {what} of the file deleted at runtime"
        for count, what in (
            (hidden, "real server" if hidden == 1 else "real servers"),
            (hidden_services, "service" if hidden_services == 1 else "services"),
        )
        if count
    ]
    out = [
        f"{len(servers)} real servers in {len(managed)} services: "
        + ", ".join(f"{count} {name}" for name, count in health.items())
        + f"; {in_table} in the kernel table; "
        + ", ".join(f"{count} {name}" for name, count in admin.items())
        + "".join(f"; {text}" for text in deleted)
        + "\n"
    ]
    for service in report:
        shown = tuple(rs for rs in service.real_servers if _needs_a_look(rs))
        if (
            not shown
            and service.in_kernel
            and not service.refused
            and service.sorry_weight is None
            and not service.deleted_at_runtime
            and not service.deleted
        ):
            continue
        kernel = "" if service.in_kernel else ", not in the kernel table"
        if service.deleted:
            out.append(_head(service, kernel) + "\n")
            continue
        up = sum(1 for rs in service.real_servers if rs.health == "up")
        out.append(f"{_head(service, kernel)}: {up} of {len(service.real_servers)} up\n")
        if service.refused:
            out.append(f"  {service.refused}\n")
        out.append(_sorry_text(service))
        if shown:
            out.append(_rows_text(shown))
        out.append(_hidden_text(service))
    if len(out) == 1:
        unknown = health["unknown"]
        out.append(
            "every real server is up, enabled and in the kernel table\n"
            if not unknown
            else (
                "every real server checked is up, enabled and in the kernel table;"
                f" {unknown} not checked yet (counted, not listed)\n"
            )
        )
    return "".join(out)


def _needs_a_look(rs: RealServerStatus) -> bool:
    if rs.health == "unknown":
        return rs.admin != "enabled" or rs.refused is not None
    return (
        rs.health != "up"
        or rs.admin != "enabled"
        or rs.current_weight is None
        or rs.refused is not None
    )


def _bgp_text(bgp: BgpStatus | None) -> str:
    if bgp is None:
        return ""
    speaker = f"BIRD {bgp.speaker}" + (f" (pid {bgp.pid})" if bgp.pid is not None else "")
    if bgp.error is not None:
        speaker += f": {bgp.error}"
    if bgp.speaker == "failed":
        speaker += (
            " (starting again now)"
            if bgp.retry_in is None
            else f" (next start in {bgp.retry_in:g} s)"
        )
    out = [f"BGP ([bgp]): {speaker}\n"]
    for peer in bgp.peers:
        out.append(f"  peer {peer.address} AS {peer.as_number}: {peer.state}\n")
    for route in bgp.routes:
        services = f" ({', '.join(route.services)})" if route.services else ""
        state = "announced" if route.announced else "withdrawn"
        out.append(f"  route {route.address}{services}: {state}, {route.reason}\n")
    return "".join(out)


def _vips_text(vips: tuple[VipStatus, ...]) -> str:
    if not vips:
        return ""
    out = ["VIPs (vip_interface)\n"]
    for vip in vips:
        services = f" ({', '.join(vip.services)})" if vip.services else ""
        line = f"  {vip.address} dev {vip.interface}{services}: {vip.state}, {vip.reason}"
        if vip.refused is not None:
            line += f"; {vip.refused}"
        out.append(line + "\n")
    return "".join(out)


def _sync_text(sync: tuple[SyncDaemonStatus, ...]) -> str:
    if not sync:
        return ""
    out = ["sync daemons ([ipvs.sync])\n"]
    for daemon in sync:
        if daemon.error is not None:
            state = f"kernel not readable: {daemon.error}"
        elif daemon.refused is not None:
            state = daemon.refused
        else:
            state = "running" if daemon.wanted else "stopping (no longer in the config)"
        out.append(f"  {daemon.state} ({daemon.settings}): {state}\n")
    return "".join(out)


def _services_text(report: tuple[ServiceStatus, ...]) -> str:
    if not report:
        return "no virtual services\n"
    out = []
    for service in report:
        kernel = "" if service.in_kernel else ", not in the kernel table"
        out.append(_head(service, kernel) + "\n")
        if service.deleted:
            continue
        if service.refused:
            out.append(f"  {service.refused}\n")
        out.append(_sorry_text(service))
        out.append(_rows_text(service.real_servers))
        out.append(_hidden_text(service))
    return "".join(out)


def _sorry_text(service: ServiceStatus) -> str:
    """The sorry server's line: where it is, and why it is in the table or not."""
    if service.sorry is None:
        return ""
    where = "not in the table" if service.sorry_weight is None else f"weight {service.sorry_weight}"
    return f"  sorry server {service.sorry} ({where}): {service.sorry_decision}\n"


def _rows_text(servers: tuple[RealServerStatus, ...]) -> str:
    """The column heads and one aligned row per real server."""
    rows = [_COLUMNS] + [_row(rs) for rs in servers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    out = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        out.append("  " + "  ".join([*cells, row[-1]]).rstrip() + "\n")
    return "".join(out)


_SLOT_NAMES = {"exec": "an exec slot", "short": "a slot (fewer run after a shortage of files)"}


def _row(rs: RealServerStatus) -> tuple[str, ...]:
    running = rs.probe_running_for
    if running is not None and running < PROBE_RUNNING_SHOWN:
        running = None
    waiting = rs.slot_wait
    if waiting is not None and waiting < PROBE_RUNNING_SHOWN:
        waiting = None
    slot = _SLOT_NAMES.get(rs.slot or "", "a probe slot")
    if rs.last_ok is None:
        last = "-" if running is None else f"first probe running for {_duration(running)}"
        if waiting is not None:
            last = f"first probe waiting {_duration(waiting)} for {slot}"
    else:
        assert rs.last_latency is not None
        last = f"{rs.last_reason} {rs.last_latency * 1000:.1f}ms"
        if rs.last_detail:
            last += f" ({rs.last_detail})"
        if rs.last_age is not None:
            last += f", {_duration(rs.last_age)} ago"
        if running is not None:
            last += f"; probe running for {_duration(running)}"
        elif waiting is not None:
            last += f"; next probe waiting {_duration(waiting)} for {slot}"
    current = "-" if rs.current_weight is None else str(rs.current_weight)
    notes = [
        note
        for note in (
            rs.name,
            rs.probed and f"probed at {rs.probed}",
            rs.runtime and RUNTIME_NOTE + _not_applied(rs.not_applied),
        )
        if note
    ]
    return (
        f"{rs.server} ({', '.join(notes)})" if notes else rs.server,
        rs.health,
        _duration(rs.in_state_for),
        rs.admin,
        f"{current}/{rs.configured_weight}",
        last,
        f"{rs.successes_in_row}/{rs.failures_in_row}",
        _table(rs),
    )


def _table(rs: RealServerStatus) -> str:
    """The TABLE column: the decision, and what the kernel does not have of
    it yet, or the kernel's refusal of it."""
    if rs.refused is not None:
        return f"{rs.decision}; {rs.refused}"
    if rs.pending is not None:
        return f"{rs.decision}; pending: {rs.pending}"
    return rs.decision


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
