"""The engine: keeps the kernel's IPVS table equal to "configured services x
healthy real servers".

It owns the running config and the checker, and runs one loop: whenever
health changes, a reload lands, or the drift-repair interval passes, it reads
the kernel's table, computes the desired table (director.desired) and applies
the difference (director.reconcile) for the services it owns. The decisions
are in those pure modules; this one only sequences them and logs.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

import trio

from director import log
from director.config import Config, RealServerId, service_label
from director.desired import DesiredService, RealServerView, desired_table
from director.health.checker import Checker, Target
from director.health.probes import ProbeFunction
from director.health.result import ProbeResult
from director.health.state import Health, HealthState, Transition
from director.ipvs.errors import BatchError
from director.ipvs.model import ServiceEntry, ServiceKey, endpoint
from director.ipvs.ops import Operation, SetTimeouts
from director.kernel import KernelTable
from director.oplog import describe_operation
from director.reconcile import plan, service_sort_key
from director.runtime import EMPTY, RuntimeLayer, effective_config


def check_targets(config: Config) -> dict[RealServerId, Target]:
    """What to probe for every configured real server."""
    targets: dict[RealServerId, Target] = {}
    for vs in config.virtual_servers:
        for rs in vs.real_servers:
            targets[vs.real_server_id(rs)] = (rs.check, rs.address, rs.port)
    return targets


@dataclass(frozen=True)
class ReloadSummary:
    services_added: tuple[ServiceKey, ...]
    services_removed: tuple[ServiceKey, ...]
    real_servers_added: tuple[RealServerId, ...]
    real_servers_removed: tuple[RealServerId, ...]
    real_servers_changed: tuple[RealServerId, ...]
    operations: tuple[Operation, ...]


class Director:
    def __init__(
        self,
        config: Config,
        kernel: KernelTable,
        *,
        runtime: RuntimeLayer = EMPTY,
        probe: ProbeFunction | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`config` is the config file's, `runtime` the operator's changes
        over it (director.runtime); `probe` and `rng` replace the real probes
        and the jitter's source (tests)."""
        self.config = config
        self.runtime = runtime
        self.effective = effective_config(config, runtime)
        self.kernel = kernel
        self.checker: Checker[RealServerId] = Checker(
            on_transition=self._on_transition, on_result=self._on_result, probe=probe, rng=rng
        )
        self._dynamic_weights: dict[RealServerId, int] = {}
        # Services this daemon manages: the config's, plus those a reload just
        # dropped (deleted on the next pass, then forgotten).
        self.owned: set[ServiceKey] = set(self.effective.service_keys())
        self.log = log.get("director")
        self.last_pass = 0.0
        self._wake = trio.Event()
        self._why = "start"
        self._passes = 0
        self._one_pass_at_a_time = trio.Lock()

    # -- health -------------------------------------------------------------

    def _on_transition(self, target: RealServerId, transition: Transition) -> None:
        event = "real_server_up" if transition.new is Health.UP else "real_server_down"
        last = self.checker.state(target).last
        self.log.info(
            event,
            vs=service_label(target.service),
            rs=endpoint(target.address, target.port),
            latency=round(last.latency, 4) if last else None,
            **transition.log_fields(),
        )
        self.poke(f"{event} {endpoint(target.address, target.port)}")

    def _on_result(self, target: RealServerId, result: ProbeResult, state: HealthState) -> None:
        """Every failed probe is logged with its reason and latency (successes
        are not: they are the steady state). A dynamic-weight check can change
        a server's weight without a transition: a new weight asks for a pass."""
        if not result.ok:
            self.log.info(
                "probe_failed",
                vs=service_label(target.service),
                rs=endpoint(target.address, target.port),
                reason=str(result.reason),
                detail=result.detail,
                latency=round(result.latency, 4),
                failures_in_row=state.failures_in_row,
                status=str(state.status),
            )
        if result.weight is None or self._dynamic_weights.get(target) == result.weight:
            return
        old = self._dynamic_weights.get(target)
        self._dynamic_weights[target] = result.weight
        if old is not None and state.status is Health.UP:
            self.log.info(
                "dynamic_weight",
                rs=endpoint(target.address, target.port),
                old=old,
                new=result.weight,
            )
            self.poke(f"dynamic weight {endpoint(target.address, target.port)}")

    def health_views(self) -> dict[RealServerId, RealServerView]:
        return {target: RealServerView.from_state(s) for target, s in self.checker.states().items()}

    def poke(self, why: str) -> None:
        """Ask the loop for a reconcile pass soon."""
        self._why = why
        self._wake.set()

    # -- the loop -----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._apply_timeouts()
        self.checker.set_targets(check_targets(self.effective))
        self._adopt(await self.kernel.services(self._managed_keys()))
        # The first pass runs before any probe: it only adds what is missing
        # (every server is still unknown), and the start is not slowed down by
        # thousands of probes starting at once.
        await self.reconcile("start")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.checker.run)
            self.log.info("ready", **self.counts())
            task_status.started()
            while True:
                with trio.move_on_after(self._next_pass_in()):
                    await self._wake.wait()
                why, self._why = self._why, "drift check"
                self._wake = trio.Event()
                await self.reconcile(why)

    def _managed_keys(self) -> set[ServiceKey]:
        """The services a pass reads: a large table of services owned by
        others (kube-proxy's, say) costs one service dump, not one
        destination dump each."""
        return self.owned | self.effective.service_keys()

    def _adopt(self, entries: list[ServiceEntry]) -> None:
        """Real servers in service in the kernel before their first probe are
        adopted: they stay until `fall` probes in a row fail."""
        in_service = {
            RealServerId(e.service.key, d.destination.address, d.destination.port)
            for e in entries
            for d in e.destinations
            if d.destination.weight > 0
        }
        for target in self.checker.states():
            if target in in_service:
                self.checker.adopt(target)

    def _next_pass_in(self) -> float:
        interval = self.config.daemon.reconcile_interval
        ramping = any(vs.slow_start for vs in self.effective.virtual_servers)
        return min(interval, 1.0) if ramping else interval

    async def reconcile(self, why: str) -> list[Operation]:
        """One pass; passes never overlap (the loop's, a reload's and the
        control socket's would otherwise plan from the same stale table)."""
        async with self._one_pass_at_a_time:
            return await self._reconcile(why)

    async def _reconcile(self, why: str) -> list[Operation]:
        entries = await self.kernel.services(self._managed_keys())
        kernel: dict[ServiceKey, ServiceEntry] = {e.service.key: e for e in entries}
        desired: Mapping[ServiceKey, DesiredService] = desired_table(
            self.effective, self.health_views(), kernel, trio.current_time(), self.runtime.admin
        )
        operations = plan(desired, kernel, self.owned)
        self.owned = set(self.effective.service_keys())
        self.last_pass = trio.current_time()
        self._passes += 1
        if not operations:
            return []
        self.log.info("ipvs_apply", why=why, count=len(operations))
        for op in operations:
            self.log.info("ipvs_op", **describe_operation(op))
        try:
            await self.kernel.apply(operations)
        except BatchError as error:
            self.log.error(
                "ipvs_apply_failed",
                why=why,
                index=error.index,
                failed=describe_operation(error.operation),
                error=error.error.message,
                applied=error.index,
            )
            # Kernel state moved under us; the next pass re-reads and retries.
            self.poke("retry after failed apply")
        return operations

    async def _apply_timeouts(self) -> None:
        timeouts = self.effective.ipvs.timeouts
        if timeouts is None:
            return
        await self.kernel.apply([SetTimeouts(timeouts)])
        self.log.info("ipvs_timeouts", tcp=timeouts.tcp, tcpfin=timeouts.tcp_fin, udp=timeouts.udp)

    # -- reload and stop ----------------------------------------------------

    def set_runtime(self, runtime: RuntimeLayer) -> None:
        """Take new operator changes: what to check changes at once, the
        table on the next pass (a service they drop stays owned until then)."""
        self.owned |= self.effective.service_keys()
        self.runtime = runtime
        self.effective = effective_config(self.config, runtime)
        self.checker.set_targets(check_targets(self.effective))

    async def reload(self, config: Config) -> ReloadSummary:
        """Take a new config file; the runtime layer is applied over it again."""
        old = self.effective
        new = effective_config(config, self.runtime)
        old_targets, new_targets = check_targets(old), check_targets(new)
        summary = ReloadSummary(
            services_added=tuple(
                sorted(new.service_keys() - old.service_keys(), key=service_sort_key)
            ),
            services_removed=tuple(
                sorted(old.service_keys() - new.service_keys(), key=service_sort_key)
            ),
            real_servers_added=tuple(t for t in new_targets if t not in old_targets),
            real_servers_removed=tuple(t for t in old_targets if t not in new_targets),
            real_servers_changed=tuple(
                t for t in new_targets if t in old_targets and new_targets[t] != old_targets[t]
            ),
            operations=(),
        )
        self.owned |= old.service_keys()
        self.config = config
        self.effective = new
        self.checker.set_targets(new_targets)
        self._adopt(await self.kernel.services(self._managed_keys()))
        await self._apply_timeouts()
        operations = await self.reconcile("reload")
        self.log.info(
            "reloaded",
            services_added=[str(k) for k in summary.services_added],
            services_removed=[str(k) for k in summary.services_removed],
            real_servers_added=[endpoint(t.address, t.port) for t in summary.real_servers_added],
            real_servers_removed=[
                endpoint(t.address, t.port) for t in summary.real_servers_removed
            ],
            real_servers_changed=[
                endpoint(t.address, t.port) for t in summary.real_servers_changed
            ],
            operations=len(operations),
        )
        return ReloadSummary(**{**summary.__dict__, "operations": tuple(operations)})

    async def stop(self) -> None:
        if not self.config.daemon.flush_on_stop:
            self.log.info("table_left_in_place", services=len(self.owned))
            return
        entries = await self.kernel.services(self._managed_keys())
        kernel = {e.service.key: e for e in entries}
        operations = plan({}, kernel, self.owned)
        self.log.info("flush_own_services", count=len(operations))
        await self.kernel.apply(operations)

    # -- reporting ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        states = self.checker.states()
        return {
            "services": len(self.effective.virtual_servers),
            "real_servers": len(states),
            "up": sum(1 for s in states.values() if s.status is Health.UP),
            "down": sum(1 for s in states.values() if s.status is Health.DOWN),
            "unknown": sum(1 for s in states.values() if s.status is Health.UNKNOWN),
        }

    def status_line(self) -> str:
        c = self.counts()
        return (
            f"{c['services']} services, {c['real_servers']} real servers: "
            f"{c['up']} up, {c['down']} down, {c['unknown']} unknown"
        )
