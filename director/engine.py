"""The engine: keeps the kernel's IPVS table equal to "configured services x
healthy real servers", and is the one owner of the daemon's state.

One task (`run`) owns the running config, the runtime layer, the set of owned
services, the kernel refusals and the state file. Everything else reaches that
state through it: the checker pokes it when health changes, and the control
socket and SIGHUP hand it jobs (`exclusive`), which run in that task between
two passes, one at a time, in the order they came (Seesaw's engine: one
goroutine, one queue of changes). Reads of the kernel for listings do not go
through it and never hold up a pass.

A pass reads the kernel's table for the owned services, computes the desired
table (director.desired) and applies the difference (director.reconcile).
A pass is full (every managed service) at start, after a failed pass and
when the caller asks; otherwise it covers only the services something
happened to: a health transition or a new dynamic weight marks its own
service, a reload or an operator's change the services it changed, a due
retry the services of the refused operations, a weight ramp the services
with slow start. A pass for a health change does not even read its
service: it plans from the service as the last pass left it (`_believed`,
forgotten by any job, failure or refusal); an answer that the table moved
under it (another tool's change) makes the next pass read. Where a server's
place hangs on its own health alone (no sorry server, no panic), the pass
plans the changed servers only (desired.desired_servers): one health change
costs the work of that server, whatever the size of its service or the
table; a ramp step or a retry still passes over its whole service.

Drift repair, every `reconcile_interval`, reads the whole table cheaply
(KernelTable.digests: one read of /proc/net/ip_vs, nothing decoded) and
passes over the services it cannot vouch for: those whose digest changed
since a drift check found them as desired (unless a pass of the engine's
changed them, and the digest shows just what that pass left: the churn of
health changes costs no reads), and one slice of DRIFT_ROTATION of the
others, for what the digest does not show (thresholds, tunnel settings,
scheduler flags, persistence engines): each is dumped, and read in full
only when its settled digest (Kernel.settled_digests: the dump without
stats and connection counts) is not the one a read in full found as
desired. Every service is so checked at least once every DRIFT_ROTATION
intervals, and a change ipvsadm's listing shows is repaired at the next
one. A pass that takes
more than half of `reconcile_interval`, and probes that start a second
late, are warned of (pass_slow, probes_late): the daemon is short of CPU.
Operations the kernel refuses are held back with an exponential backoff, up
to `reconcile_interval`, while every other operation goes out
(director.refusals). Nothing the kernel answers ends the loop: a failed read
or an apply whose outcome is unknown is logged, and the pass is tried again
with the same backoff.
"""

from __future__ import annotations

import errno
import math
import random
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Set
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import outcome
import trio

from director import configload, log, statefile
from director.bgp import BgpKeeper, Speaker, prefix
from director.config import Config, ConfigError, RealServerId, service_label
from director.config.lines import key_lines
from director.config.model import (
    VirtualServer,
    real_server_changes,
    restart_needed,
    service_changes,
    settings_changed,
)
from director.desired import (
    DesiredService,
    RealServerView,
    desired_servers,
    desired_service,
    desired_table,
    independent,
    services_changed,
)
from director.health.checker import Checker, Target, default_max_probes
from director.health.probes import ProbeFunction
from director.health.result import ProbeResult
from director.health.spec import Check, ExecCheck, probed_endpoint
from director.health.state import Health, HealthState, Transition, failure_worth_logging
from director.ipvs.errors import IPVSError, KernelError
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    IPAddress,
    Service,
    ServiceEntry,
    ServiceKey,
    SyncDaemon,
    SyncState,
    endpoint,
)
from director.ipvs.oplog import brief_operation, describe_operation, operation_lines
from director.ipvs.ops import AddService, DeleteService, Operation, SetTimeouts
from director.ipvs.servicetable import TableKey, digest_shows, table_key
from director.kernel import KernelTable
from director.metrics.events import LATE_AFTER, Events
from director.oserror import strerror
from director.overrides import Override, overrides
from director.reconcile import plan, plan_destinations, service_sort_key
from director.refusals import (
    Refusal,
    Subject,
    describe_subject,
    failed,
    hold_back,
    next_retry,
    record,
    retry_now,
    service_of,
    table_moved,
)
from director.runtime import (
    EMPTY,
    RuntimeLayer,
    effective_config,
    without_stale_admin,
)
from director.sync import SyncKeeper
from director.taskcpu import TaskCpu
from director.vips import AddressBackend, Vip, VipKeeper, VipOperation, describe_op

T = TypeVar("T")
RETRY_BASE = 1.0  # seconds before the first retry of a refused operation or a failed pass
SLOW_START_STEP = 1.0  # seconds between passes while a weight ramps
CHECK_TICK = (
    0.01  # seconds: probes start, and TCP and HTTP verdicts are read, on 10 ms ticks (checker.py)
)
SPACING_MAX = 1.0  # seconds: the longest a scoped pass waits for the last one's cost
DRIFT_REPAIRS_SHOWN = 10  # operations a table_drift_repaired warning spells out
DRIFT_ROTATION = 12  # drift checks over which every managed service's dump is checked
# A pass that takes more than this share of reconcile_interval, or probes
# that start LATE_AFTER late, mean the daemon is short of CPU for its load.
SLOW_PASS_SHARE = 0.5
OVERLOAD_WARNING_EVERY = 60.0  # seconds: the least time between two warnings of one kind


def check_targets(config: Config) -> dict[RealServerId, Target]:
    """What to probe for every configured real server."""
    targets: dict[RealServerId, Target] = {}
    for vs in config.virtual_servers:
        targets.update(service_targets(vs))
    return targets


def service_targets(vs: VirtualServer) -> dict[RealServerId, Target]:
    """What to probe for each real server of one virtual server: (check,
    address, port) with the address and port probed, the check's own
    folded in, so that one endpoint probed is one target whatever the
    table's entry: a route server that becomes masq on its probed port
    keeps its probe and health across the reload (Checker._change)."""
    targets: dict[RealServerId, Target] = {}
    bare: dict[int, Check] = {}  # each check without its own address and port, by id()
    for rid, rs in zip(vs.real_server_ids, vs.real_servers, strict=True):
        check = rs.check
        if isinstance(check, ExecCheck) or (check.port is None and check.address is None):
            targets[rid] = (check, rs.address, rs.port)
            continue
        plain = bare.get(id(check))
        if plain is None:
            plain = bare[id(check)] = replace(check, port=None, address=None)
        address = rs.address if check.address is None else check.address
        targets[rid] = (plain, address, rs.port if check.port is None else check.port)
    return targets


class Stopping(Exception):
    """A change asked of the engine after `Director.stop` began: not made."""


STOPPING = "directord is stopping: nothing was changed"
ABANDONED = "directord is stopping: the reload was abandoned, the running config kept"


@dataclass(frozen=True)
class ReloadSummary:
    """What a reload changed (Director.reload): services and real servers added,
    removed or changed, the table operations sent and the other changes; what
    the `reloaded` event logs and `directorctl reload` prints."""

    services_added: tuple[ServiceKey, ...]
    services_removed: tuple[ServiceKey, ...]
    real_servers_added: tuple[RealServerId, ...]
    real_servers_removed: tuple[RealServerId, ...]
    real_servers_changed: tuple[RealServerId, ...]
    operations: tuple[Operation, ...]
    # Services in both configs whose own settings changed, each with what
    # changed (`service_changes`).
    services_changed: tuple[tuple[ServiceKey, tuple[str, ...]], ...] = ()
    # What changed in each of `real_servers_changed` (`real_server_changes`).
    real_server_changes: Mapping[RealServerId, tuple[str, ...]] = field(default_factory=dict)
    # What else the reload changed at once: sync daemons, VIPs on their
    # interfaces, BGP announcements; each as its log event's fields.
    others: tuple[dict[str, object], ...] = ()
    # The settings outside the virtual servers it changed (`settings_changed`).
    settings_changed: tuple[str, ...] = ()
    # The file's values runtime changes keep from the table, all of them,
    # not only those this reload changed (director.overrides).
    kept_by_runtime: tuple[Override, ...] = ()
    # CPU seconds of the reload's own work: the file's parse (in its thread),
    # its task's steps and its kernel calls' threads (Director.reload).
    cpu: float = 0.0


@dataclass(frozen=True)
class ReloadResult:
    """A reload's outcome: a summary, or the errors that kept the running
    config (each line names the file, or the setting that needs a restart;
    `errors` as an operator reads them, at most ConfigError's named_errors
    lists, and `count` how many there are)."""

    summary: ReloadSummary | None = None
    errors: tuple[str, ...] = ()
    count: int = 0


@dataclass(slots=True)
class _Belief:
    """A service as the last pass over it left the kernel (every operation
    for it done), its destinations by (address, port). The engine's own:
    a pass over some of its servers patches it (`take`)."""

    service: Service
    destinations: dict[tuple[IPAddress, int], Destination]

    def entry(self) -> ServiceEntry:
        return ServiceEntry(self.service, tuple(map(DestinationEntry, self.destinations.values())))

    def take(self, wanted: Mapping[tuple[IPAddress, int], Destination | None]) -> None:
        """The kernel now holds `wanted` (None: absent)."""
        for key, destination in wanted.items():
            if destination is None:
                self.destinations.pop(key, None)
            else:
                self.destinations[key] = destination


def _late_cause(
    waiting: Mapping[str, int], checker: Checker[Any], now: float, since: float = math.inf
) -> dict[str, object]:
    """probes_late's fields on why: probes waiting for a slot, by kind
    (`waiting`: how many now, Checker.waiting_for_slot's kinds), now, or
    that waited at `since` (the run's clock: the last warning) or later
    (said in the past tense: a reload may have raised the limit since), or
    else the CPU. `now`: the run's clock."""
    waited = checker.slot_waited()
    fields: dict[str, object] = {}
    hints = []
    short_at = waited.get("short")
    short = bool(waiting.get("short")) or (short_at is not None and short_at >= since)
    for kind, field_name, (now_, then), limit, remedy in (
        (
            "exec",
            "exec_waiting",
            ("exec checks wait for a command slot", "exec checks waited for a command slot"),
            f" ({checker.max_exec} run at once)",
            "raise [daemon] max_exec_checks, or make the commands shorter or fewer",
        ),
        (
            "short",
            "short_waiting",
            (
                "probes wait while fewer run after the daemon ran short of file descriptors",
                "probes waited while fewer ran after the daemon ran short of file descriptors",
            ),
            " (fewer run at once for a while after a probe found none)",
            "raise LimitNOFILE",
        ),
        (
            "probe",
            "slot_waiting",
            ("probes wait for a slot", "probes waited for a slot"),
            f" ({checker.max_probes} run at once)",
            "raise [daemon] max_probes (at most half the open-file limit), or shorten the"
            " timeouts of servers that do not answer",
        ),
    ):
        count = waiting.get(kind, 0)
        last = waited.get(kind)  # (None: never; trial 39: not "until infs ago")
        if kind != "short" and short:  # (trial 40: more at once would want more files)
            remedy = "not a limit to raise while the daemon runs short of file descriptors"
        if count:
            fields[field_name] = count
            hints.append(f"{now_}{limit}: {remedy}")
        elif last is not None and last >= since:
            fields[field_name] = 0
            hints.append(f"{then} until {now - last:.1f}s ago: {remedy}")
    if not hints:
        hints.append("short of CPU for this many checks at their intervals")
    return fields | {"hint": "probes start late: " + "; ".join(hints)}


class Director:
    def __init__(
        self,
        config: Config,
        kernel: KernelTable,
        *,
        runtime: RuntimeLayer = EMPTY,
        owned: frozenset[ServiceKey] = frozenset(),
        state_path: str | Path | None = None,
        probe: ProbeFunction | None = None,
        rng: random.Random | None = None,
        follow_log_level: bool = False,
        sync_owned: Mapping[SyncState, SyncDaemon] | None = None,
        addresses: AddressBackend | None = None,
        vips_owned: Set[Vip] = frozenset(),
        maintenance: bool = False,
        speaker: Speaker | None = None,
    ) -> None:
        """`config` is the config file's, `runtime` the operator's changes
        over it (director.runtime), `owned` the services a previous run owned
        (from the state file: those no longer configured are deleted), and
        `state_path` where runtime changes and owned services are saved
        (None: not saved). `probe` and `rng` replace the real probes and the
        jitter's source (tests). With `follow_log_level`, a reload applies
        [daemon] log_level. `speaker` announces the VIPs of [bgp] (director.bird;
        None: decided, never announced)."""
        self.config = config
        self.runtime = runtime
        self.effective = config  # set by _set_effective
        self._by_key: dict[ServiceKey, VirtualServer] = {}
        self._ramping: frozenset[ServiceKey] = frozenset()  # services with slow start
        # What the checker checks, by service: a reload recomputes the
        # targets of the services it changed only.
        self._targets: dict[ServiceKey, dict[RealServerId, Target]] = {}
        # VIPs on interfaces (director.vips) through `addresses` (None: none
        # kept); `vips_owned` and `maintenance` from the state file.
        self.vips = VipKeeper(
            addresses,
            vips_owned,
            maintenance=maintenance,
            interval=config.daemon.reconcile_interval,
        )
        self.bgp = BgpKeeper(config.bgp, speaker)  # [bgp]: VIPs announced through BIRD
        self._set_effective(effective_config(config, runtime))
        self.kernel = kernel
        self.state_path = Path(state_path) if state_path is not None else None
        self.events = Events(enabled=config.metrics.listen is not None)  # director.metrics
        self.checker: Checker[RealServerId] = Checker(
            on_transition=self._on_transition,
            on_result=self._on_result,
            probe=probe,
            rng=rng,
            on_start=self._on_start,
            tick=CHECK_TICK,
            max_probes=default_max_probes(config.daemon.max_probes),
            max_exec=config.daemon.max_exec_checks,
            on_shortage=self._on_shortage,
        )
        self.owned: frozenset[ServiceKey] = owned | self.effective.service_keys()
        self.refusals: dict[Subject, Refusal] = {}
        # [ipvs.sync]: its own state, passes and refusals; `sync_owned` from the state file.
        self.sync = SyncKeeper(
            config.ipvs.sync, sync_owned, interval=config.daemon.reconcile_interval
        )
        # Services someone else made that a -C through the control socket
        # cleared: a later -A of one (ipvsadm -R of a saved table) is theirs
        # again, not a new one of ours. Changed by control jobs only.
        self.foreign: set[ServiceKey] = set()
        self.pass_error: str | None = None  # why the last pass failed, while it does
        self.log = log.get("director")
        self.last_pass = 0.0  # when a pass (full or scoped) last completed
        self._last_full = 0.0  # when a full pass last completed: drift repair counts from it
        self._last_ramp = 0.0  # when the services with slow start were last passed over
        self._follow_log_level = follow_log_level
        self._saved_owned: frozenset[ServiceKey] | None = None
        # A state file that cannot be written fails every save (a pass's, a
        # change's): one line a minute says so, with the count of the others.
        self._save_failures = log.RateLimit(60.0)
        self._timeouts_pending = self.effective.ipvs.timeouts
        self._failed_passes = 0
        self._retry_pass_at: float | None = None
        self._wake = trio.Event()
        self._poked = False  # a full pass is asked for
        # The services a scoped pass is asked for, each with the real servers
        # whose health changed (None: the whole service is to be passed over).
        self._dirty: dict[ServiceKey, set[RealServerId] | None] = {}
        # The digest of each service a drift check found as desired: the
        # next drift check skips it while its digest stays the same, or, for
        # one a pass has touched since, while the digest shows what that
        # pass left (its belief).
        self._verified: dict[ServiceKey, str] = {}
        self._touched: set[ServiceKey] = set()
        # The settled digest (Kernel.settled_digests) of each service the
        # rotation read in full and found as desired: the rotation skips its
        # read while that stays the same and no pass touched it.
        self._settled: dict[ServiceKey, bytes] = {}
        # Each service as the last pass over it left the kernel (every
        # operation for it done): a pass for a health change plans from it
        # instead of reading the service back (100 destinations decoded for
        # one change). Control jobs and failures forget it; drift checks
        # and full passes read.
        self._believed: dict[ServiceKey, _Belief] = {}
        self._rotation = 0  # where the next drift check's slice of full reads starts
        self._scoped_at = 0.0  # when a scoped pass may next start (see _pass_if_due)
        self._why = "start"
        self._jobs: deque[tuple[Callable[[], Awaitable[object]], _Reply]] = deque()
        self._running = False
        # Set by `stop`: no pass, job or announcement changes the table or
        # the routes after it (a flush stays a flush).
        self._stopping = False
        # When `stop` was called (its job may wait its turn), None before.
        self.stopped_at: float | None = None
        # The probes, until `stop` is called: no verdict reaches the table
        # after it, and checks that went on logging servers up and down
        # through a flush told of changes that were not made.
        self._checks = trio.CancelScope()
        self._parse: trio.CancelScope | None = None  # a reload's read of its file, while it runs
        self._passes = 0
        self._drift_vouched = 0  # services the last drift check's digests vouched for
        self.lateness = 0.0  # seconds: how late the last probe started (status shows it)
        self._late = 0  # probes started LATE_AFTER or more late since the last warning
        self._latest = 0.0  # seconds: the latest of those
        self._warned: dict[str, tuple[float, int]] = {}  # event -> (when, warnings held back)

    # -- health -------------------------------------------------------------

    def _on_transition(self, target: RealServerId, transition: Transition) -> None:
        self.events.transitioned(target, transition)
        event = "real_server_up" if transition.new is Health.UP else "real_server_down"
        last = self.checker.state(target).last
        self.log.info(
            event,
            vs=service_label(target.service),
            rs=endpoint(target.address, target.port),
            latency=round(last.latency, 4) if last else None,
            **transition.log_fields(),
            **self._probed(target),
        )
        if target.service in self.vips.keys:
            self.vips.poke()
        if target.service in self.bgp.keys:
            self.bgp.poke()
        # A pass may start at once and nothing has woken the loop yet: the
        # probes' slices end now, so that the change reaches the kernel in a
        # few events, not behind them (at 10,000 real servers they were
        # most of its way). A start's fill of thousands of first verdicts
        # hurries about once a pass, not once a verdict.
        hurry = not self._wake.is_set() and trio.current_time() >= self._scoped_at
        self.poke(f"{event} {endpoint(target.address, target.port)}", target.service, target)
        if hurry:
            self.checker.hurry()

    def _probed(self, rid: RealServerId) -> dict[str, str]:
        """{"probed": "address:port"} for a real server its check probes
        elsewhere (a route server written with another port, a check with
        its own port or address); {} for the rest."""
        target = self._targets.get(rid.service, {}).get(rid)
        probed = None if target is None else probed_endpoint(*target)
        if probed is None or probed == (rid.address, rid.port):
            return {}
        return {"probed": endpoint(*probed)}

    def _on_shortage(self, target: Target, result: ProbeResult) -> None:
        """A probe the daemon's own shortage failed (out of file descriptors,
        say): no verdict on the server, whose health stays as it was; a
        warning at most once every OVERLOAD_WARNING_EVERY seconds."""
        _, address, port = target
        self.events.probe_short()
        held = self.checker.held()
        self._overloaded(
            "probe_short_of_resources",
            probed=endpoint(address, port),
            detail=result.detail,
            **({} if held is None else {"run_at_once": held[0]}),
            hint="the daemon ran short of file descriptors or memory: the probe gave no verdict"
            " and the server's health stays, and for a while no more probes run at once than"
            " ran beside it (the others wait their turn); raise LimitNOFILE, or lower [daemon]"
            " max_probes or max_exec_checks",
        )

    def _on_start(self, target: Target, lateness: float) -> None:
        """The checker's on_start: a probe started `lateness` seconds after
        its due time."""
        self.lateness = lateness
        if lateness >= LATE_AFTER:
            self._late += 1
            self._latest = max(self._latest, lateness)
        if self.events.enabled:
            self.events.probe_started(target, lateness)

    def _overloaded(self, event: str, **fields: object) -> bool:
        """A warning that the daemon is short of CPU for its load, at most
        once every OVERLOAD_WARNING_EVERY seconds for each `event` (with
        how many were held back since the last). Whether it was logged."""
        now = trio.current_time()
        last, held = self._warned.get(event, (-OVERLOAD_WARNING_EVERY, 0))
        if now - last < OVERLOAD_WARNING_EVERY:
            self._warned[event] = (last, held + 1)
            return False
        self._warned[event] = (now, 0)
        self.log.warning(event, **fields, held_back=held)
        return True

    def _check_load(self, why: str, took: float, services: int | None) -> None:
        """After a pass that took `took` seconds over `services` services
        (None: all): warn of a pass that takes too much of
        reconcile_interval, and, after a full one, of late probes."""
        interval = self.config.daemon.reconcile_interval
        if took > SLOW_PASS_SHARE * interval:
            self._overloaded(
                "pass_slow",
                why=why,
                seconds=round(took, 3),
                services=services if services is not None else len(self._managed_keys()),
                **({"vouched": self._drift_vouched} if why == "drift check" else {}),
                reconcile_interval=interval,
                hint="short of CPU for this table: raise reconcile_interval or the checks' intervals",
            )
        waits = self.checker.waiting_for_slot() if services is None and self._late else {}
        waiting = Counter(kind for _, kind in waits.values())
        if (
            services is None
            and self._late
            and self._overloaded(
                "probes_late",
                probes=self._late,
                late_after_s=LATE_AFTER,
                latest_s=round(self._latest, 3),
                **_late_cause(
                    waiting,
                    self.checker,
                    trio.current_time(),
                    since=self._warned.get("probes_late", (-math.inf, 0))[0],
                ),
            )
        ):
            self._late, self._latest = 0, 0.0

    def _on_result(self, target: RealServerId, before: HealthState, after: HealthState) -> None:
        """A failed probe is logged when it starts a series, changes reason,
        or reaches 10, 100, 1000... in a row (successes are the steady state);
        every probe's result at the debug level (`probe_result`).
        A new dynamic weight of an up server asks for a pass."""
        result = after.last
        assert result is not None
        self.events.probed(target, result)
        if log.debugging():
            self.log.debug(
                "probe_result",
                successes_in_row=after.successes_in_row,
                **self._probe_fields(target, after),
            )
        if failure_worth_logging(before, after):
            self.log.info("probe_failed", **self._probe_fields(target, after))
        if after.weight != before.weight and after.status is Health.UP:
            self.log.info(
                "dynamic_weight",
                rs=endpoint(target.address, target.port),
                old=before.weight,
                new=after.weight,
            )
            self.poke(
                f"dynamic weight {endpoint(target.address, target.port)}", target.service, target
            )

    def _probe_fields(self, target: RealServerId, after: HealthState) -> dict[str, object]:
        """The fields of a line about the probe that made `after`."""
        result = after.last
        assert result is not None
        return {
            "vs": service_label(target.service),
            "rs": endpoint(target.address, target.port),
            "reason": str(result.reason),
            "detail": result.detail,
            "latency": round(result.latency, 4),
            "failures_in_row": after.failures_in_row,
            "status": str(after.status),
            **self._probed(target),
        }

    def health_views(
        self, services: Set[ServiceKey] | None = None
    ) -> dict[RealServerId, RealServerView]:
        """The health of every checked real server, or of those of `services`
        only (O(their servers), not O(table))."""
        if services is None:
            return {t: RealServerView.from_state(s) for t, s in self.checker.states().items()}
        return self._views(rid for vs in self._services(services) for rid in vs.real_server_ids)

    def _views(self, ids: Iterable[RealServerId]) -> dict[RealServerId, RealServerView]:
        """The health of the real servers `ids` (those checked)."""
        views: dict[RealServerId, RealServerView] = {}
        for rid in ids:
            try:
                views[rid] = RealServerView.from_state(self.checker.state(rid))
            except KeyError:  # not checked (yet): unknown
                continue
        return views

    def poke(
        self, why: str, service: ServiceKey | None = None, server: RealServerId | None = None
    ) -> None:
        """Ask the loop for a pass soon: over every managed service (None),
        over `service`, or, for a change of one real server's health alone,
        over `server` of `service` (the pass may then plan that server's
        place only)."""
        if service is None:
            self._poked = True
        elif server is None:
            self._dirty[service] = None
        else:
            servers = self._dirty.get(service, set())
            if servers is not None:
                servers.add(server)
                self._dirty[service] = servers
        self._why = why
        self._wake.set()

    def _retarget(
        self, changed: Set[ServiceKey] | None
    ) -> tuple[dict[RealServerId, Target], dict[RealServerId, Target]]:
        """Hand the checker the effective config's targets, recomputing those
        of the `changed` services only (None: all), and telling the checker
        of theirs only (a service the effective config no longer has counts
        as changed); the checker is not called when no target changed. The
        targets of the changed services, before and after."""
        before, after = self._targets, {}
        old: dict[RealServerId, Target] = {}
        new: dict[RealServerId, Target] = {}
        for vs in self.effective.virtual_servers:
            kept = before.get(vs.key)
            if kept is None or changed is None or vs.key in changed:
                after[vs.key] = service_targets(vs)
                new.update(after[vs.key])
            else:
                after[vs.key] = kept
        for key, part in before.items():
            if changed is None or key in changed or key not in after:
                old.update(part)
        if changed is None:
            targets: dict[RealServerId, Target] = {}
            for part in after.values():
                targets.update(part)
            self.checker.set_targets(targets)
        elif old != new:
            self.checker.update_targets(
                {rid: target for rid, target in new.items() if old.get(rid) != target},
                [rid for rid in old if rid not in new],
            )
        self._targets = after
        return old, new

    def _set_effective(self, effective: Config) -> None:
        self.effective = effective
        self._by_key = {vs.key: vs for vs in effective.virtual_servers}
        self._ramping = frozenset(vs.key for vs in effective.virtual_servers if vs.slow_start)
        self.vips.configure(effective.virtual_servers, effective.daemon.reconcile_interval)
        self.bgp.configure(effective.bgp, effective.virtual_servers)

    # -- jobs: the only way in for other tasks --------------------------------

    async def exclusive(self, job: Callable[[], Awaitable[T]]) -> T:
        """Run `job` in the engine's task, after the jobs before it and never
        during a pass; its result or exception comes back here. Before the
        loop runs (or after it ended), the caller is the only actor and the
        job runs at once. A job may call the engine's own methods
        (set_runtime, reconcile, ...): it is the owner while it runs.
        Raises Stopping once `stop` began."""
        if self._stopping:
            raise Stopping(STOPPING)
        if not self._running:
            return await job()
        reply = _Reply()
        self._jobs.append((job, reply))
        self._wake.set()
        await reply.done.wait()
        assert reply.outcome is not None
        return cast(T, reply.outcome.unwrap())

    async def _run_jobs(self) -> None:
        while self._jobs:
            job, reply = self._jobs.popleft()
            if self._stopping:  # queued behind the stop
                reply.outcome = outcome.Error(Stopping(STOPPING))
            else:
                self._believed.clear()  # a job may change the kernel itself
                reply.outcome = await outcome.acapture(job)
            reply.done.set()

    # -- the loop -----------------------------------------------------------

    def _forget_stale_admin(self, effective: Config) -> list[dict[str, object]]:
        """Drop the admin states of real servers `effective` no longer has
        (runtime.without_stale_admin), each logged as `admin_state_forgotten`;
        each as a reload's `others` entry. The caller saves the state file."""
        self.runtime, stale = without_stale_admin(self.runtime, effective)
        forgotten: list[dict[str, object]] = []
        for rid, state in stale:
            fields = {"vs": service_label(rid.service), "rs": endpoint(rid.address, rid.port)}
            self.log.info("admin_state_forgotten", **fields, state=str(state))
            forgotten.append({"what": "admin", "op": f"forget {state}", **fields})
        return forgotten

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._forget_stale_admin(self.effective):
            await self.save()
        self._retarget(None)
        self._adopt(await self._read("adopt"))
        # The first pass runs before any probe: it only adds what is missing
        # (every server is still unknown), deletes what a previous run owned
        # and the config dropped, and the start is not slowed down by
        # thousands of probes starting at once. It reads every service in
        # full, so the first drift check need not (the digests vouch).
        try:
            digests = await self.kernel.digests()
        except KernelError:
            digests = None
        await self.reconcile("start", digests=digests)
        await self.sync.converge(self.kernel, "start", self.save)
        await self.traffic_pass("start", vips_now=True)
        self._running = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.bgp.run)
                await nursery.start(self._check)
                self.log.info("ready", **self.counts())
                task_status.started()
                while True:
                    with trio.move_on_at(math.inf if self._stopping else self._next_pass_at()):
                        await self._wake.wait()
                    self._wake = trio.Event()
                    await self._run_jobs()
                    if self._stopping:
                        continue  # until the daemon cancels the loop
                    await self._pass_if_due()
                    await self.sync.pass_if_due(self.kernel, self.save)
                    await self.traffic_pass("quorum not met")
        finally:
            self._running = False
            for _, reply in self._jobs:
                reply.outcome = outcome.Error(RuntimeError("the engine stopped"))
                reply.done.set()

    async def _check(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        if self._checks.cancel_called:  # stopped before it ran
            task_status.started()
            return
        with self._checks:
            await self.checker.run(task_status=task_status)

    async def _pass_if_due(self) -> None:
        """A full pass when one is asked for or due, else a pass over the
        services that are due (dirty, ramping, or with a refusal to retry)."""
        now = trio.current_time()
        scope: dict[ServiceKey, set[RealServerId] | None] | None
        drift, due = False, None
        if self._poked or now >= self._full_due():
            scope, why = None, self._why if self._poked else "drift check"
            drift = not self._poked and self._retry_pass_at is None
            # The drift check covers what a scoped pass is due for, unless a
            # refusal of no one service (the timeouts) is: then a full pass.
            due = self._due_services(now)
            drift = drift and due is not None
        else:
            scope = self._due_services(now)
            if scope is None:
                why = "retry"
            elif not scope or now < self._scoped_at:
                return  # (what is due waits: the loop wakes by then)
            elif not self._dirty:
                why = "retry" if scope.keys() - self._ramping else "slow start"
            else:
                why = self._why
        self._poked, self._why = False, "drift check"
        self._dirty = {}
        try:
            with self.events.timed_pass(full=scope is None):
                if drift:
                    await self.drift_check(set(due or ()))
                elif scope is None:
                    await self.reconcile(why)
                else:
                    changed = {k: ids for k, ids in scope.items() if ids is not None}
                    await self.reconcile(why, only=scope.keys(), believed=True, changed=changed)
            end = trio.current_time()
            self._check_load(why, end - now, None if scope is None else len(scope))
            if scope is not None:
                # The next scoped pass waits as long as this one took, so
                # that a burst of changes (thousands of servers coming up
                # at a start) makes few passes of many changes, not one
                # pass over a 100-server service for each: passes take at
                # most about half the loop, and one change alone, on a
                # quiet loop, waits a pass's time (a millisecond or two);
                # after a pass the kernel held up, at most SPACING_MAX.
                self._scoped_at = end + min(end - now, SPACING_MAX)
        except Exception as error:
            # A bug must not end health checking for every service: log it,
            # and try again after a backoff.
            self.log.exception("pass_bug")
            self._pass_failed(why, error)

    async def drift_check(self, due: Set[ServiceKey] = frozenset()) -> list[Operation]:
        """Drift repair (see the module's docstring): a pass over the managed
        services the kernel's digests and the rotation do not vouch for, and
        over `due` (those a scoped pass is due for), or a full pass when the
        digests cannot be read. The operations sent. Runs in the engine's
        task."""
        try:
            digests = await self.kernel.digests()
        except KernelError:
            digests = None
        if digests is None:
            return await self.reconcile("drift check")
        managed = sorted(self._managed_keys(), key=service_sort_key)
        suspect = {key for key in managed if not self._vouched(key, digests.get(table_key(key)))}
        suspect.update(due)
        self._drift_vouched = len(managed) - len(suspect)
        settled: dict[ServiceKey, bytes] = {}
        if managed:
            size = -(-len(managed) // DRIFT_ROTATION)
            start = self._rotation if self._rotation < len(managed) else 0
            rotation = [key for key in managed[start : start + size] if key not in suspect]
            self._rotation = start + size
            settled = await self._settled_digests(rotation)
            suspect.update(
                key
                for key in rotation
                if key in self._touched or settled.get(key, b"") != self._settled.get(key)
            )
        found: dict[ServiceKey, ServiceEntry] = {}
        sent = await self.reconcile("drift check", only=suspect, digests=digests, found=found)
        self._settle(managed, suspect, settled, sent)
        drifted = {key for op in sent if (key := service_of(op)) is not None}
        # (Their own changes were due, or came during the check: a health
        # change while it read the kernel is in its pass.)
        drifted -= due | self._ramping | self._dirty.keys()
        if drifted:
            # The table was not as this daemon left it: someone (ipvsadm by
            # hand, another tool) changed it. The repairs say what was found:
            # an add, a server or service missing; a delete, one not the
            # daemon's; an edit, settings that differed.
            repairs = [op for op in sent if service_of(op) in drifted]
            self.log.warning(
                "table_drift_repaired",
                services=[service_label(k) for k in sorted(drifted, key=service_sort_key)],
                operations=len(repairs),
                repairs=[
                    brief_operation(
                        op, found.get(key) if (key := service_of(op)) is not None else None
                    )
                    for op in repairs[:DRIFT_REPAIRS_SHOWN]
                ],
            )
        return sent

    async def _settled_digests(self, keys: list[ServiceKey]) -> dict[ServiceKey, bytes]:
        """Kernel.settled_digests of `keys`; {} where the backend has none
        or the read failed (then the rotation reads them in full)."""
        if not keys:
            return {}
        try:
            return await self.kernel.settled_digests(keys) or {}
        except KernelError:
            return {}

    def _settle(
        self,
        managed: list[ServiceKey],
        read: Set[ServiceKey],
        settled: Mapping[ServiceKey, bytes],
        sent: list[Operation],
    ) -> None:
        """After a drift check's pass over `read`: the rotation's services
        it read in full and had nothing to do for (no operation sent, none
        refused) keep the settled digest read before it; a later rotation
        skips them while theirs stays the same. (A read in full of 100
        destinations is their dump, decoding and planning: most of a drift
        check's cost at 10,000 servers, for what changes by hand once in a
        long while.)"""
        if len(self._settled) > len(managed):
            kept = set(managed)
            self._settled = {k: d for k, d in self._settled.items() if k in kept}
        if not settled:
            return
        busy = {service_of(op) for op in sent}
        busy.update(describe_subject(subject)[0] for subject in self.refusals)
        for key, digest in settled.items():
            if key in read and key not in busy and key not in self._touched:
                self._settled[key] = digest

    def _vouched(self, key: ServiceKey, digest: str | None) -> bool:
        """Whether a drift check may skip `key` (its rotation aside): its
        digest is the one vouched for, or, if a pass has touched it since,
        shows the service line vouched for and the destinations that pass
        left (then it is vouched for in turn: under churn, health changes
        touch most services between two drift checks, and reading each
        back costs a dump and a plan of all its destinations)."""
        seen = self._verified.get(key)
        if seen is None or digest is None:
            return False
        if key not in self._touched:
            return seen == digest
        belief = self._believed.get(key)
        if belief is None or not digest_shows(digest, seen, belief.destinations.values()):
            return False
        self._verified[key] = digest
        self._touched.discard(key)
        return True

    def _due_services(self, now: float) -> dict[ServiceKey, set[RealServerId] | None] | None:
        """The services a scoped pass is due for now, each with the real
        servers whose health changed, or None when the whole service is due
        (its weight ramp, a retry, another change); None when a full pass is
        (a refusal of no one service, the timeouts, is due)."""
        scope = dict(self._dirty)
        if self._ramping and now >= self._last_ramp + SLOW_START_STEP:
            scope.update(dict.fromkeys(self._ramping))
        for subject, refusal in self.refusals.items():
            if refusal.retry_at <= now:
                service = describe_subject(subject)[0]
                if service is None:
                    return None
                scope[service] = None
        return scope

    def _full_due(self) -> float:
        if self._retry_pass_at is not None:
            return self._retry_pass_at
        return self._last_full + self.config.daemon.reconcile_interval

    def _managed_keys(self) -> set[ServiceKey]:
        """The services a pass reads: a large table of services owned by
        others (kube-proxy's, say) costs one service dump, not one
        destination dump each."""
        return set(self.owned | self._by_key.keys())

    async def _read(
        self, why: str, only: Set[ServiceKey] | None = None
    ) -> list[ServiceEntry] | None:
        """The managed services (or those of `only` that are managed) as the
        kernel has them, without their counters (no pass reads them), or
        None (logged) when the kernel cannot be read."""
        if only is not None and not only:
            return []
        try:
            keys = self._managed_keys() if only is None else only
            return await self.kernel.services(keys, counters=False)
        except KernelError as error:
            self._pass_failed(why, error)
            return None

    def _adopt(
        self, entries: list[ServiceEntry] | None, only: Set[ServiceKey] | None = None
    ) -> None:
        """Real servers in the kernel before their first probe are adopted:
        they stay until `fall` probes in a row fail, and a weight ramp (slow
        start) goes on from the weight found, not from 1. One at weight 0
        too (trial 41: a drained server, still finishing its connections,
        was removed at the first failed probe after a restart): it stays at
        0 until probed, and a first success ramps it from 1, as for any
        server coming up (its 0 may have been on_failure = "weight0"'s
        mark of a down server)."""
        if entries is None:
            return
        now = trio.current_time()
        found = {
            (e.service.key, d.destination.address, d.destination.port): d.destination.weight
            for e in entries
            for d in e.destinations
        }
        for vs in self.effective.virtual_servers if only is None else self._services(only):
            for target, rs in zip(vs.real_server_ids, vs.real_servers, strict=True):
                weight = found.get((vs.key, rs.address, rs.port))
                if weight is None:
                    continue
                try:
                    self.checker.state(target)
                except KeyError:
                    continue
                ramp_start: float | None = now - vs.slow_start
                if weight == 0:
                    ramp_start = None
                elif vs.slow_start > 0 and weight < rs.weight:
                    ramp_start = now - vs.slow_start * (weight - 1) / (rs.weight - 1)
                self.checker.adopt(target, ramp_start)

    def _services(self, keys: Set[ServiceKey]) -> list[VirtualServer]:
        """The effective virtual servers of `keys` (those configured)."""
        return [vs for key in keys if (vs := self._by_key.get(key)) is not None]

    async def traffic_pass(
        self, why: str, *, vips_now: bool = False
    ) -> tuple[list[VipOperation], list[tuple[str, IPAddress]]]:
        """Where traffic reaches this director follows the verdicts, in an
        order that drops no packet of its own making: BGP withdrawals first
        (once BIRD has them, at most SETTLE_TIMEOUT), then the VIPs on their
        interfaces (`vips_now`: whether due or not), then BGP announcements
        (of VIPs now in place). The VIP operations sent and the BGP changes.
        Runs in the engine's task."""
        changes = self.bgp_pass(why, withdraw_only=True)
        if changes:
            await self.bgp.settled()
        if vips_now:
            self.vips.poke()
        sent = await self.vips.pass_if_due(self._vip_health, self.runtime.admin, self.save, why)
        return sent, changes + self.bgp_pass(why)

    def _vip_health(self) -> dict[RealServerId, RealServerView]:
        return self.health_views(self.vips.keys) if self.vips.keys else {}

    def bgp_pass(self, why: str, *, withdraw_only: bool = False) -> list[tuple[str, IPAddress]]:
        """The routes announced over BGP follow the verdicts now, if due
        (director.bgp.BgpKeeper.update); the changes, as ("announce" |
        "withdraw", address). Runs in the engine's task."""
        try:
            return self.bgp.update(
                lambda: self.health_views(self.bgp.keys),
                self.runtime.admin,
                self.vips.maintenance,
                why,
                withdraw_only=withdraw_only,
            )
        except Exception:  # a bug must not end the daemon; the next poke tries again
            self.log.exception("bgp_bug", why=why)
            return []

    def set_maintenance(self, on: bool) -> bool:
        """Enter or leave maintenance (no VIP on an interface, nothing
        announced over BGP while on); the previous setting. The caller
        saves it and runs traffic_pass."""
        self.bgp.poke()
        return self.vips.set_maintenance(on)

    def _next_pass_at(self) -> float:
        due = min(self._full_due(), self.sync.due_at(), self.vips.due_at(), self.bgp.due_at())
        if self._dirty:
            due = min(due, self._scoped_at)
        if self._ramping:
            due = min(due, self._last_ramp + SLOW_START_STEP)
        retry = next_retry(self.refusals)
        return due if retry is None else min(due, retry)

    async def reconcile(
        self,
        why: str,
        only: Set[ServiceKey] | None = None,
        *,
        known: Mapping[ServiceKey, ServiceEntry] | None = None,
        read: Mapping[ServiceKey, ServiceEntry | None] | None = None,
        digests: Mapping[TableKey, str] | None = None,
        believed: bool = False,
        changed: Mapping[ServiceKey, Set[RealServerId]] | None = None,
        found: dict[ServiceKey, ServiceEntry] | None = None,
    ) -> list[Operation]:
        """One pass over every managed service, or over those of `only`
        (the others, their refusals and their ownership are left as they
        are); the operations sent (applied or refused). Runs in the engine's
        task: from a job, or before the loop starts.

        `known`: services of `only` whose kernel state the caller knows
        exactly (it just made them so): they are planned from that, not
        read (an operation the kernel then refuses because the table was
        not so is retried after a read, as with `believed`), and their
        digests after the pass vouch for them (see _vouch). `read`:
        services of `only` the caller read in the same job (a reload's
        adoption; None: not in the kernel): planned from that, not read
        again, and vouched for as a read of the pass's own would be.
        `digests` (drift_check's, or the start's, read before the pass):
        the services it reads in full are vouched for by their digest (see
        _vouch) until a pass touches them again. With `believed`, services
        of `only` that an earlier pass left as it wanted are planned from
        that, not read (a table another tool moved meanwhile shows in the
        kernel's answers, and the next read repairs it). `changed` (with
        `believed`): for a service of `only`, the real servers whose health
        changed since that earlier pass: where their places hang on their
        own health alone (desired.independent), the pass plans theirs only,
        O(the change) instead of O(the service). `found`, when given, gets
        the kernel's entries the pass planned from (read, known or
        believed): what a drift repair found (drift_check's warning)."""
        now = trio.current_time()
        scope = None if only is None else {k for k in only if k in self.owned or k in self._by_key}
        if digests is None:
            # What this pass changes (or finds to change) no earlier digest
            # shows: the next drift check compares it with the belief.
            self._touched.update(
                self._verified.keys() if scope is None else scope & self._verified.keys()
            )
        taken: dict[ServiceKey, ServiceEntry] = {}  # known
        if known and scope is not None:
            taken = {k: e for k, e in known.items() if k in scope}
        if read and scope is not None:
            taken_read = {k: e for k, e in read.items() if k in scope and k not in taken}
        else:
            taken_read = {}
        found_read = {k: e for k, e in taken_read.items() if e is not None}
        trusted: dict[ServiceKey, ServiceEntry] = {}
        beliefs: dict[ServiceKey, _Belief] = {}  # planned from their changed servers alone
        if believed and scope is not None:
            for key in scope - taken.keys():
                belief = self._believed.get(key)
                if belief is None:
                    continue
                vs = self._by_key.get(key)
                if changed and key in changed and vs is not None and independent(vs):
                    beliefs[key] = belief
                else:
                    trusted[key] = belief.entry()
        entries = await self._read(
            why,
            scope - taken.keys() - taken_read.keys() - trusted.keys() - beliefs.keys()
            if scope is not None
            else None,
        )
        if entries is None:
            return []
        kernel: dict[ServiceKey, ServiceEntry] = {e.service.key: e for e in entries}
        kernel.update(found_read)
        kernel.update(trusted)
        kernel.update(taken)
        if found is not None:
            found.update(kernel)
        desired: Mapping[ServiceKey, DesiredService]
        if scope is None:
            desired = desired_table(
                self.effective, self.health_views(), kernel, now, self.runtime.admin
            )
            owned_here: Set[ServiceKey] = self.owned
            refusals: dict[Subject, Refusal] = self.refusals
            others: dict[Subject, Refusal] = {}
        else:
            assert only is not None
            rest = scope - beliefs.keys()
            views = self.health_views(rest)
            admin = self.runtime.admin
            desired = {
                vs.key: desired_service(vs, views, kernel.get(vs.key), now, admin)
                for vs in self._services(rest)
            }
            owned_here = self.owned & rest
            refusals, others = {}, {}
            # Refusals of the services asked for go through this pass (those
            # of a service no longer managed are forgotten); the others stay.
            for subject, refusal in self.refusals.items():
                service = describe_subject(subject)[0]
                (refusals if service is None or service in only else others)[subject] = refusal
        operations = plan(desired, kernel, owned_here)
        wanted: dict[ServiceKey, dict[tuple[IPAddress, int], Destination | None]] = {}
        if beliefs:
            assert changed is not None
            deletes: list[Operation] = []
            changes: list[Operation] = []
            for key in sorted(beliefs, key=service_sort_key):
                have = beliefs[key].destinations
                ids = changed[key]
                wanted[key] = servers = desired_servers(
                    self._by_key[key], ids, self._views(ids), have, now, self.runtime.admin
                )
                service_deletes, service_changes = plan_destinations(key, servers, have)
                deletes += service_deletes
                changes += service_changes
            operations = [*deletes, *operations, *changes]
        # An owned service the config dropped is deleted even when this read
        # did not show it: an IPVS dump is no consistent snapshot (another
        # tool's changes during it can make it skip services), so only the
        # kernel's answer (done, or "No such service") ends the ownership.
        operations += [
            DeleteService(key)
            for key in sorted(owned_here - desired.keys() - kernel.keys(), key=service_sort_key)
        ]
        if self._timeouts_pending is not None:
            operations.insert(0, SetTimeouts(self._timeouts_pending))
        split = hold_back(operations, refusals, now)
        owned = set(self.owned | desired.keys() | beliefs.keys())
        adding = {op.service.key for op in split.send if isinstance(op, AddService)}
        # Written ahead: a crash after the kernel took a new service must not
        # leave it unowned (a restart with a config without it would orphan it).
        await self._save_owned(frozenset(owned | adding))
        errors: list[tuple[str, int | None] | None] = []
        moved = 0
        unsure: set[ServiceKey | None] = set()  # services an operation of failed for
        unadded: set[ServiceKey | None] = set()  # services whose add the kernel refused
        # What this pass leaves as it wants it is believed below; the rest
        # (its services, or all of them) is forgotten now.
        if scope is None:
            self._believed.clear()
        else:
            for key in scope:
                self._believed.pop(key, None)
        if split.send:
            self.log.info("ipvs_apply", why=why, count=len(split.send), held=len(split.held))
            try:
                outcomes = await self.kernel.apply_each(split.send)
            except KernelError as error:
                # Outcomes unknown: the next pass re-reads the table.
                self.owned = frozenset(owned | adding)
                self._pass_failed(why, error)
                return list(split.send)
            # One logger for the pass's lines: the module's lazy logger binds
            # a new one at every call, a quarter of a line's cost when a
            # start logs 10,000 operations.
            oplog = self.log.bind()
            took: list[Operation] = []
            for op, result in zip(split.send, outcomes, strict=True):
                err = _errno(result) if result is not None else None
                self.events.operation(op, result)
                if isinstance(op, DeleteService) and (result is None or err == errno.ESRCH):
                    owned.discard(op.key)
                if result is None:
                    took.append(op)
                else:
                    service = service_of(op)
                    unsure.add(service)
                    if service in unadded:
                        # Refused for want of its service, whose add was
                        # refused just before: neither a moved table nor a
                        # refusal of its own (`record`).
                        pass
                    elif table_moved(op, err):
                        # The table was not as read: read again soon, no refusal.
                        moved += 1
                        result = None
                    elif isinstance(op, AddService):
                        unadded.add(service)
                errors.append(None if result is None else (str(result), err))
            self._applied(took, oplog)
        unsure.update(service_of(op) for op in split.held)
        for key, want in desired.items():
            if key not in unsure:
                self._believed[key] = _Belief(want.service, {d.key: d for d in want.destinations})
        for key, belief in beliefs.items():
            if key not in unsure:
                belief.take(wanted[key])
                self._believed[key] = belief
        recorded = record(
            refusals,
            operations,
            split.send,
            errors,
            now,
            base=RETRY_BASE,
            cap=self.config.daemon.reconcile_interval,
        )
        self.refusals = self._log_refusals({**others, **recorded})
        self.owned = frozenset(owned)
        await self._save_owned(self.owned)
        self.last_pass = trio.current_time()
        self._passes += 1
        if scope is None or self._ramping <= scope:
            self._last_ramp = self.last_pass
        if digests is not None:
            keys = self._managed_keys() if scope is None else scope
            if any(table_key(key) not in digests for key in self._believed.keys() & keys):
                # Services this pass made (all of them at a first start): the
                # digests read before it lack them; read them now.
                try:
                    after = await self.kernel.digests()
                except KernelError:
                    after = None
                digests = {**(after or {}), **digests}
            self._vouch(keys, operations, digests)
            self._last_full = self.last_pass
        if taken and digests is None and len(taken) * DRIFT_ROTATION >= len(self._managed_keys()):
            # (The digests cost a read of the whole table's text: for a few
            # services, the drift check's dumps of them cost less.)
            await self._vouch_made(taken.keys() - unsure)
        if scope is None:
            self._last_full = self.last_pass
            if self._failed_passes:
                self.log.info("pass_recovered", after_failures=self._failed_passes)
            self._failed_passes, self._retry_pass_at, self.pass_error = 0, None, None
        if moved:
            self.log.info("ipvs_table_moved", why=why, operations=moved)
            self._retry_pass_at = self.last_pass + RETRY_BASE
        return list(split.send)

    def _vouch(
        self,
        scope: Set[ServiceKey],
        operations: list[Operation],
        digests: Mapping[TableKey, str],
    ) -> None:
        """After a pass over `scope` that read it in full, with the digests
        read before it: a service it had nothing to send (or hold back) for
        is vouched for by its digest; one it changed, by its digest and the
        belief the pass left (see _vouched), which the next drift check
        compares with the digest then. (Without that, a service the pass
        changed was read in full again at the next drift check, and at the
        start's fill, where most drift checks find new servers to add,
        that was a third of the services at every check.)"""
        touched = {service_of(op) for op in operations}
        for key in scope:
            digest = digests.get(table_key(key))
            if digest is None:
                self._verified.pop(key, None)
                self._touched.discard(key)
                continue
            self._verified[key] = digest
            if key in touched:
                self._touched.add(key)
            else:
                self._touched.discard(key)

    async def _vouch_made(self, keys: Set[ServiceKey]) -> None:
        """After a pass over services a caller made (`known`, every
        operation taken): each whose digest now shows the destinations the
        pass left is vouched for by it, as a read would have: a -R's
        thousand new services are not read in full at the next drift check.
        (Their service lines are the caller's word, the kernel having taken
        every operation of theirs.)"""
        try:
            after = await self.kernel.digests()
        except KernelError:
            after = None
        if after is None:
            return
        for key in keys:
            digest, belief = after.get(table_key(key)), self._believed.get(key)
            if digest is None or belief is None:
                continue
            if digest_shows(digest, digest, belief.destinations.values()):
                self._verified[key] = digest
                self._touched.discard(key)

    def _applied(self, taken: list[Operation], oplog: Any) -> None:
        """Log the operations the kernel took (operation_lines)."""
        for event, fields in operation_lines(taken):
            oplog.info(event, **fields)
        for op in taken:
            if isinstance(op, SetTimeouts):
                self._timeouts_pending = None
                t = op.timeouts
                oplog.info("ipvs_timeouts", tcp=t.tcp, tcpfin=t.tcp_fin, udp=t.udp)

    def _log_refusals(self, refusals: dict[Subject, Refusal]) -> dict[Subject, Refusal]:
        """Each refusal is logged at its 1st, 10th, 100th... attempt, and
        when the kernel's answer changes."""
        for key, refusal in refusals.items():
            before = self.refusals.get(key)
            if before is not None and before.attempts == refusal.attempts:
                continue
            count = refusal.attempts
            while count % 10 == 0:
                count //= 10
            if count == 1 or before is None or before.error != refusal.error:
                self.log.error(
                    "ipvs_refused",
                    error=refusal.error,
                    attempts=refusal.attempts,
                    retry_in=round(refusal.retry_at - trio.current_time(), 3),
                    **describe_operation(refusal.operation),
                )
        return refusals

    def _pass_failed(self, why: str, error: Exception) -> None:
        now, cap = trio.current_time(), self.config.daemon.reconcile_interval
        failure = failed(self._failed_passes, now, base=RETRY_BASE, cap=cap)
        self._failed_passes, self._retry_pass_at = failure.count, failure.retry_at
        self.pass_error = str(error)
        if failure.logged:
            self.log.error(
                "pass_failed",
                why=why,
                error=str(error),
                error_type=type(error).__name__,
                **failure.fields(),
            )

    # -- the state file -------------------------------------------------------

    async def _save_owned(self, owned: frozenset[ServiceKey]) -> None:
        if owned != self._saved_owned:
            await self.save(owned)

    async def save(self, owned: frozenset[ServiceKey] | None = None) -> None:
        """Write the runtime layer and the owned services to the state file.
        A failed write is logged: the change stands in memory."""
        owned = self.owned if owned is None else owned
        if self.state_path is None:
            self._saved_owned = owned
            return
        try:
            path, runtime, sync = self.state_path, self.runtime, dict(self.sync.owned)
            vips, maintenance = self.vips.owned, self.vips.maintenance
            await self.kernel.run_sync(
                lambda: statefile.save(
                    path, runtime, owned, sync, vips=vips, maintenance=maintenance
                )
            )
        except OSError as error:
            suppressed = self._save_failures.allow(trio.current_time())
            if suppressed is not None:
                self.log.error(
                    "state_file_write_failed",
                    path=str(self.state_path),
                    error=strerror(error),
                    suppressed=suppressed,
                )
            return
        self._saved_owned = owned

    # -- changes: runtime layer, reload, stop (from jobs) -----------------------

    def set_runtime(
        self, runtime: RuntimeLayer, effective: Config | None = None
    ) -> set[ServiceKey]:
        """Take new operator changes: what to check changes at once, the
        table at the next pass. A service they drop stays owned until the
        kernel no longer has it. Returns the services whose desired state
        the change may have changed. `effective`: effective_config(self.config,
        runtime) if the caller has it already. Call from a job."""
        before, admin = self.effective, self.runtime.admin
        self.runtime = runtime
        if effective is None:
            effective = effective_config(self.config, runtime)
        self._set_effective(effective)
        self.owned |= self.effective.service_keys()
        changed = services_changed(
            before.virtual_servers, self.effective.virtual_servers, admin, runtime.admin
        )
        self._retarget(changed)
        if runtime.timeouts is not None:
            self._timeouts_pending = None  # the control socket sent them itself
        self.refusals = retry_now(self.refusals, trio.current_time())
        return changed

    async def commit(
        self,
        runtime: RuntimeLayer,
        why: str,
        added: Set[ServiceKey] = frozenset(),
        known: Mapping[ServiceKey, ServiceEntry] | None = None,
        effective: Config | None = None,
    ) -> list[Operation]:
        """Take, save and apply an operator's change; `added` are services it
        already sent to the kernel itself (owned from now on, so deleted if
        the change dropped them again), `known` those of them whose kernel
        state it knows exactly (every operation it sent for them taken): the
        pass does not read these back unless they need a change. The pass
        covers the services the change touched: a hand-made service someone
        restores with -R is the kernel's and theirs, not a reason to read
        the whole table. `effective`: as set_runtime's. Call from a job."""
        self.owned |= added
        changed = self.set_runtime(runtime, effective) | added
        await self.save()
        return await self.reconcile(why, only=changed, known=known)

    async def reload_file(self, path: str | Path, **origin: object) -> ReloadResult:
        """Re-read the config file and apply it (SIGHUP and `directorctl
        reload` both come here). The file is read in the engine's turn, so
        reloads apply in the order they were asked for. An invalid file, or
        one that changes a setting only a restart applies, keeps the running
        config."""

        async def job() -> ReloadResult:
            parse = self._parse = trio.CancelScope()
            if self.stop_asked:
                parse.cancel()
            try:
                with parse:
                    # Given up (the thread left to finish) when a stop comes.
                    config, parse_cpu = await configload.load(path, abandon_on_cancel=True)
                    # A stop asked during a parse in the loop's thread (no
                    # checkpoint in it) abandons the reload too.
                    await trio.lowlevel.checkpoint_if_cancelled()
                if parse.cancelled_caught:
                    self.log.warning("reload_abandoned", **origin, reason=ABANDONED)
                    return ReloadResult(errors=(f"{path}: {ABANDONED}",), count=1)
            except ConfigError as error:
                errors = tuple(error.lines(str(path)))
                count = len(error.errors)
                self.log.error("reload_rejected", **origin, error_count=count, errors=list(errors))
                return ReloadResult(errors=errors, count=count)
            except Exception as error:  # a bug must not end the daemon
                self.log.exception("reload_failed", **origin)
                return ReloadResult(errors=(f"{path}: internal error: {error!r}",), count=1)
            finally:
                self._parse = None
            if not config.virtual_servers and self.config.virtual_servers:
                # An empty or cut-short file (a failed deploy) is valid TOML:
                # taking it would delete every service. A start may.
                count = len(self.config.virtual_servers)
                services = f"{count} virtual service{'' if count == 1 else 's'}"
                errors = (
                    f"{path}: no virtual service: the reload would delete the running config's"
                    f" {services}; the running config is kept (restart directord to run"
                    " without any)",
                )
                self.log.error("reload_rejected", **origin, error_count=1, errors=list(errors))
                return ReloadResult(errors=errors, count=1)
            needs_restart = restart_needed(self.config, config)
            if needs_restart:
                line_of = await trio.to_thread.run_sync(_line_finder, path)
                needs_restart = restart_needed(self.config, config, line_of)
                errors = tuple(
                    f"{path}: {change} needs a restart of directord; the running config is kept"
                    for change in needs_restart
                )
                self.log.error(
                    "reload_rejected", **origin, error_count=len(errors), errors=list(errors)
                )
                return ReloadResult(errors=errors, count=len(errors))
            self.log.info("reload", **origin)
            return ReloadResult(summary=await self.reload(config, parse_cpu=parse_cpu))

        result = await self.exclusive(job)
        self.events.reloaded(result.summary is not None)
        return result

    async def reload(self, config: Config, *, parse_cpu: float = 0.0) -> ReloadSummary:
        """Take a new config; the runtime layer is applied over it again.
        Call from a job (reload_file does). The `reloaded` event's cpu_ms is
        `parse_cpu` (seconds, the file's parse; also logged alone, as
        parse_cpu_ms) plus the CPU of the reload's own work: this task's
        steps in here and the worker threads of its kernel calls, not the
        other tasks' turns meanwhile (the probes', at 10,000 real servers
        most of the time it takes)."""
        with TaskCpu() as meter:
            summary = await self._reload(config)
        summary = replace(summary, cpu=parse_cpu + meter.seconds)
        self.log.info(
            "reloaded",
            services_added=[service_label(k) for k in summary.services_added],
            services_removed=[service_label(k) for k in summary.services_removed],
            services_changed={service_label(k): list(c) for k, c in summary.services_changed},
            real_servers_added=_by_service(summary.real_servers_added),
            real_servers_removed=_by_service(summary.real_servers_removed),
            real_servers_changed=_by_service(summary.real_servers_changed),
            operations=len(summary.operations),
            cpu_ms=round(1000 * summary.cpu, 1),
            parse_cpu_ms=round(1000 * parse_cpu, 1),
            **(
                {"settings_changed": list(summary.settings_changed)}
                if summary.settings_changed
                else {}
            ),
            **(
                {"kept_by_runtime": [kept.text() for kept in summary.kept_by_runtime]}
                if summary.kept_by_runtime
                else {}
            ),
        )
        return summary

    async def _reload(self, config: Config) -> ReloadSummary:
        old = self.effective
        new = effective_config(config, self.runtime)
        before = self.runtime.admin
        forgotten = self._forget_stale_admin(new)
        admin = self.runtime.admin
        changed = services_changed(old.virtual_servers, new.virtual_servers, before, admin)
        self.config = config
        self._set_effective(new)
        self.owned |= new.service_keys()
        old_targets, new_targets = self._retarget(changed)
        # One read serves the adoption and the pass: the job holds the table
        # meanwhile, so what it shows is what the pass would read again.
        entries = await self._read("reload", changed)
        self._adopt(entries, changed)
        read: dict[ServiceKey, ServiceEntry | None] | None = None
        if entries is not None:
            read = {key: None for key in changed} | {e.service.key: e for e in entries}
        if new.ipvs.timeouts is not None and new.ipvs.timeouts != old.ipvs.timeouts:
            self._timeouts_pending = new.ipvs.timeouts
        self.refusals = retry_now(self.refusals, trio.current_time())
        self.checker.set_limits(
            max_probes=default_max_probes(config.daemon.max_probes),
            max_exec=config.daemon.max_exec_checks,
        )
        if self._follow_log_level and config.daemon.log_level != old.daemon.log_level:
            log.set_level(config.daemon.log_level.value)
        operations = await self.reconcile("reload", only=changed, read=read)
        if forgotten:
            await self.save()
        self.sync.configure(config.ipvs.sync, config.daemon.reconcile_interval)
        others: list[dict[str, object]] = list(forgotten)
        for op in await self.sync.pass_if_due(self.kernel, self.save, "reload"):
            others.append({"what": "sync daemon", **describe_operation(op)})
        vip_ops, bgp_changes = await self.traffic_pass("reload", vips_now=True)
        for vip_op in vip_ops:
            others.append({"what": "vip", **describe_op(vip_op)})
        for change, address in bgp_changes:
            others.append({"what": "bgp", "op": change, "address": prefix(address)})
        changes_of = _real_servers_changed(old, new, changed)
        summary = ReloadSummary(
            services_added=tuple(
                sorted(new.service_keys() - old.service_keys(), key=service_sort_key)
            ),
            services_removed=tuple(
                sorted(old.service_keys() - new.service_keys(), key=service_sort_key)
            ),
            real_servers_added=tuple(t for t in new_targets if t not in old_targets),
            real_servers_removed=tuple(t for t in old_targets if t not in new_targets),
            real_servers_changed=tuple(changes_of),
            real_server_changes=changes_of,
            services_changed=_services_changed(old, new, changed),
            operations=tuple(operations),
            others=tuple(others),
            # The running settings': a runtime --set keeps the file's timeouts out.
            settings_changed=settings_changed(old, new),
            kept_by_runtime=overrides(config, new, self.runtime),
        )
        return summary

    @property
    def stop_asked(self) -> bool:
        """Whether `stop` has been called (its job may not have run yet)."""
        return self.stopped_at is not None

    async def stop(self) -> None:
        """End the checks at once; withdraw every BGP announcement (BIRD
        stopped); leave the table (and the VIPs) in place, or with [daemon]
        flush_on_stop delete the owned services and remove the owned VIPs
        (never anyone else's).
        A reload still reading its file (or queued to) is abandoned at once,
        the running config kept: a stop does not wait for a parse."""
        self.stopped_at = trio.current_time()
        if self._parse is not None:
            self._parse.cancel()
        # The checks end now, not when the job gets its turn (trial 41: a
        # pass ran, and probes meanwhile logged servers going down that
        # the stop then left in the table).
        self.checker.freeze()
        self._checks.cancel()

        async def job() -> None:
            self._stopping = True
            await self.bgp.stop("daemon stopping")
            if not self.config.daemon.flush_on_stop:
                self.log.info("table_left_in_place", services=len(self.owned))
                return
            entries = await self._read("stop")
            if entries is None:
                return
            kernel = {e.service.key: e for e in entries}
            operations = plan({}, kernel, self.owned)
            self.log.info("flush_own_services", count=len(operations))
            try:
                outcomes = await self.kernel.apply_each(operations)
            except KernelError as error:
                self.log.error("flush_failed", error=str(error))
                return
            deleted = {
                op.key
                for op, result in zip(operations, outcomes, strict=True)
                if isinstance(op, DeleteService) and result is None
            }
            for op, result in zip(operations, outcomes, strict=True):
                if result is not None:
                    self.log.error("flush_refused", error=str(result), **describe_operation(op))
            self.owned -= deleted
            await self.save()
            await self.vips.flush(self.save)

        await self.exclusive(job)

    # -- reporting ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Services and checked real servers by health; `initial_up` of the
        unknown ones are in service all the same (not probed yet, their
        check's `initial = "up"`); `refused` counts the kernel's refusals."""
        states = self.checker.states()
        unknown = [rid for rid, s in states.items() if s.status is Health.UNKNOWN]
        return {
            "services": len(self.effective.virtual_servers),
            "real_servers": len(states),
            "up": sum(1 for s in states.values() if s.status is Health.UP),
            "down": sum(1 for s in states.values() if s.status is Health.DOWN),
            "unknown": len(unknown),
            "initial_up": sum(1 for rid in unknown if self._initial_up(rid)),
            "refused": len(self.refusals),
        }

    def _initial_up(self, rid: RealServerId) -> bool:
        target = self._targets.get(rid.service, {}).get(rid)
        return target is not None and target[0].timing.initial == "up"

    def status_line(self) -> str:
        c = self.counts()
        line = (
            f"{c['services']} services, {c['real_servers']} real servers: "
            f"{c['up']} up, {c['down']} down, {c['unknown']} unknown"
        )
        if c["initial_up"]:
            line += f' ({c["initial_up"]} of them in service: initial = "up")'
        if c["refused"]:
            line += f"; {c['refused']} operations refused by the kernel"
        if self.pass_error is not None:
            line += f"; passes failing: {self.pass_error}"
        return line


def _by_service(ids: Iterable[RealServerId]) -> dict[str, list[str]]:
    """Real servers as the `reloaded` event lists them: under their service,
    {"TCP 10.0.0.1:80": ["10.1.1.2:80"]} (one address can serve several)."""
    grouped: dict[str, list[str]] = {}
    for rid in ids:
        grouped.setdefault(service_label(rid.service), []).append(endpoint(rid.address, rid.port))
    return grouped


def _real_servers_changed(
    old: Config, new: Config, changed: Set[ServiceKey]
) -> dict[RealServerId, tuple[str, ...]]:
    """The real servers of the `changed` services in both configs whose
    settings differ (weight, forwarding method, thresholds, check...), in
    the new config's order, each with what changed (`real_server_changes`);
    not those whose one change is their service's check, which the
    service's line says."""
    old_services = {vs.key: vs for vs in old.virtual_servers if vs.key in changed}
    found: dict[RealServerId, tuple[str, ...]] = {}
    for vs in new.virtual_servers:
        was = old_services.get(vs.key)
        if was is None:
            continue
        before = was.real_server_index
        checks = (was.check, vs.check)
        for rs in vs.real_servers:
            rid = vs.real_server_id(rs)
            old_rs = before.get(rid)
            if old_rs is not None and old_rs != rs:
                changes = real_server_changes(old_rs, rs, checks)
                if changes:
                    found[rid] = changes
    return found


def _services_changed(
    old: Config, new: Config, changed: Set[ServiceKey]
) -> tuple[tuple[ServiceKey, tuple[str, ...]], ...]:
    """The `changed` services in both configs whose own settings differ,
    with what changed (`service_changes`), in the new config's order."""
    before = {vs.key: vs for vs in old.virtual_servers if vs.key in changed}
    return tuple(
        (vs.key, changes)
        for vs in new.virtual_servers
        if vs.key in before and (changes := service_changes(before[vs.key], vs))
    )


def _line_finder(path: str | Path) -> Callable[[str], int | None] | None:
    """config.lines.key_lines of the file at `path`; None when it cannot be
    read again."""
    try:
        return key_lines(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class _Reply:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.outcome: outcome.Outcome[object] | None = None


def _errno(error: KernelError) -> int | None:
    return error.errno if isinstance(error, IPVSError) else None
