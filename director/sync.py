"""The kernel's connection sync daemons ([ipvs.sync]): what to start, stop or
restart so that the kernel runs what the config asks, and the one owner of
that state in the daemon.

The kernel (net/netfilter/ipvs/ip_vs_sync.c) runs at most one master and one
backup sync daemon per network namespace; a master multicasts the state of
its connections, a backup with the same syncid takes them into its own
connection table, so a backup director can carry on connections a master
scheduled. The kernel cannot change a running daemon: a new setting is a stop
and a start (ip_vs_genl_del_daemon, ip_vs_genl_new_daemon).

Ownership, as for IPVS services: a sync daemon of a state (master, backup)
the config names is the daemon's, whoever started it; the state file records
each one the daemon owns with the settings it asked the kernel for (written
before the start goes out, so a crash cannot orphan it). An owned daemon whose
state the config no longer names is stopped, at once on reload or at the next
start; a state the config never named is never touched (an operator may run
that daemon by hand with ipvsadm).

`plan_sync` and `owned_after` are pure. `SyncKeeper` is the shell the engine
calls in its task: at start, on reload, and every reconcile_interval (a
daemon stopped behind the daemon's back is started again). A refusal (an
interface that does not exist: ENODEV; a master already running: EEXIST;
mixed-family destinations: EINVAL) is logged in ipvsadm's words, kept for
`directorctl status` and retried with director.refusals' backoff; nothing
the kernel answers here holds up the IPVS services.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from typing import TYPE_CHECKING

import trio

from director import log
from director.ipvs.errors import IPVSError, KernelError
from director.ipvs.model import IPAddress, SyncDaemon, SyncState
from director.ipvs.oplog import describe_operation
from director.ipvs.ops import Operation, StartDaemon, StopDaemon
from director.refusals import (
    Refusal,
    Subject,
    failed,
    hold_back,
    next_retry,
    record,
    retry_now,
    to_log,
)

if TYPE_CHECKING:
    from director.config.model import SyncSettings
    from director.kernel import KernelTable

# The kernel's defaults and limits (include/net/ip_vs.h, start_sync_thread
# in net/netfilter/ipvs/ip_vs_sync.c; ipvsadm.c takes the same ranges).
SYNC_GROUP = IPv4Address("224.0.0.81")  # IP_VS_SYNC_GROUP
SYNC_PORT = 8848  # IP_VS_SYNC_PORT
SYNC_TTL = 1
SYNCID_MAX = 255  # a u8 in the sync message header
TTL_MAX = 255
SYNC_MTU = 1500  # a master's messages are sized for it; a backup takes max(MTU, this)
BACKUP_MAXLEN_MIN = 1024  # a backup's maxlen is raised to this
IFNAMSIZ = 16  # with the NUL (IP_VS_IFNAME_MAXLEN)
STATES = (SyncState.MASTER, SyncState.BACKUP)
RETRY_BASE = 1.0  # seconds before the first retry of a refused start or stop


def header_len(group: IPAddress | None) -> int:
    """IP and UDP headers of a sync message to `group` (the default group is
    IPv4): the kernel keeps maxlen at most 65535 minus these."""
    return (40 if group is not None and group.version == 6 else 20) + 8


def maxlen_range(states: Sequence[SyncState], group: IPAddress | None) -> tuple[int, int]:
    """The maxlen values the kernel keeps as asked for these daemons (it
    clamps any other into this range: start_sync_thread)."""
    low = BACKUP_MAXLEN_MIN if SyncState.BACKUP in states else 1
    return low, 65535 - header_len(group)


def interface_problem(name: str) -> str | None:
    """Why `name` cannot be an interface name (dev_valid_name,
    net/core/dev.c), or None."""
    if not name:
        return "empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"longer than an interface name may be ({IFNAMSIZ - 1} bytes)"
    if name in (".", "..") or any(c in "/:" or c.isspace() or c == "\0" for c in name):
        return 'not an interface name (no "/", ":", spaces, "." or "..")'
    return None


def expected(daemon: SyncDaemon) -> SyncDaemon:
    """What the kernel reports (IPVS_CMD_GET_DAEMON) for a daemon started as
    `daemon`: its defaults filled in. A backup's default maxlen depends on
    the interface's MTU: 0 there (unknown)."""
    group = daemon.mcast_group or SYNC_GROUP
    maxlen = daemon.sync_maxlen
    if not maxlen and daemon.state is SyncState.MASTER:
        maxlen = SYNC_MTU - header_len(group)
    return replace(
        daemon,
        sync_maxlen=maxlen,
        mcast_group=group,
        mcast_port=daemon.mcast_port or SYNC_PORT,
        mcast_ttl=daemon.mcast_ttl or SYNC_TTL,
    )


def matches(running: SyncDaemon, desired: SyncDaemon) -> bool:
    """Whether the kernel's `running` daemon is `desired` as the kernel would
    report it. A value unknown on either side (0 or None: a kernel before
    4.3 reports no group, port, ttl or maxlen) is not compared."""
    want = expected(desired)
    optional: list[tuple[object, object]] = [
        (running.sync_maxlen, want.sync_maxlen),
        (running.mcast_group, want.mcast_group),
        (running.mcast_port, want.mcast_port),
        (running.mcast_ttl, want.mcast_ttl),
    ]
    return (
        running.state == want.state
        and running.mcast_ifn == want.mcast_ifn
        and running.syncid == want.syncid
        and all(not have or not wanted or have == wanted for have, wanted in optional)
    )


@dataclass(frozen=True)
class SyncPlan:
    """What `plan_sync` decided: the StopDaemon and StartDaemon operations to send,
    in order, and the sync daemons owned once they are sent."""

    operations: tuple[Operation, ...]
    # What the daemon owns once the operations are sent: record it before
    # they go out (a crash after the kernel took a start must not orphan it).
    owned: Mapping[SyncState, SyncDaemon]


def plan_sync(
    desired: Mapping[SyncState, SyncDaemon],
    running: Sequence[SyncDaemon],
    owned: Mapping[SyncState, SyncDaemon],
) -> SyncPlan:
    """The operations that make the kernel's `running` daemons what
    `desired` asks (by state; empty: none), given those the daemon `owned`
    (each with the settings it last asked for).

    - desired and not running: start it;
    - desired and running as asked (and, if owned, last asked with these
      settings: the kernel does not report everything, a backup's default
      maxlen for one): nothing; it is owned from now on, also when an
      operator had started it;
    - desired and running otherwise: stop, then start;
    - owned, not desired, running: stop it; not running: ownership ends;
    - neither owned nor desired: never touched.
    """
    by_state = {d.state: d for d in running}
    operations: list[Operation] = []
    after: dict[SyncState, SyncDaemon] = {}
    for state in STATES:
        want, have, asked = desired.get(state), by_state.get(state), owned.get(state)
        if want is None:
            if asked is not None and have is not None:
                operations.append(StopDaemon(state))
                after[state] = asked
            continue
        after[state] = want
        if have is None:
            operations.append(StartDaemon(want))
        elif not matches(have, want) or (asked is not None and asked != want):
            operations += [StopDaemon(state), StartDaemon(want)]
    return SyncPlan(tuple(operations), after)


def owned_after(
    owned: Mapping[SyncState, SyncDaemon],
    desired: Mapping[SyncState, SyncDaemon],
    sent: Sequence[Operation],
    errors: Sequence[tuple[str, int | None] | None],
) -> dict[SyncState, SyncDaemon]:
    """Ownership after `sent` went out (errors[i] None: sent[i] applied,
    else the kernel's message and errno): an undesired daemon's ownership
    ends when its stop was applied or found none running (ESRCH)."""
    result = dict(owned)
    for op, error in zip(sent, errors, strict=True):
        stopped = error is None or error[1] == errno.ESRCH
        if isinstance(op, StopDaemon) and op.state not in desired and stopped:
            result.pop(op.state, None)
    return result


def held_with_their_stop(send: Sequence[Operation], held: Sequence[Operation]) -> list[Operation]:
    """`send` without the starts whose state's stop is held back (the kernel
    would answer "Daemon has already run")."""
    stopping = {op.state for op in held if isinstance(op, StopDaemon)}
    return [op for op in send if not (isinstance(op, StartDaemon) and op.daemon.state in stopping)]


def describe_daemon(daemon: SyncDaemon) -> str:
    """'mcast=eth1, syncid=7, group=224.0.0.81, ...': the settings asked
    for, in ipvsadm -L --daemon's words (those left to the kernel omitted)."""
    text = f"mcast={daemon.mcast_ifn}, syncid={daemon.syncid}"
    if daemon.sync_maxlen:
        text += f", maxlen={daemon.sync_maxlen}"
    if daemon.mcast_group is not None:
        text += f", group={daemon.mcast_group}"
    if daemon.mcast_port:
        text += f", port={daemon.mcast_port}"
    if daemon.mcast_ttl:
        text += f", ttl={daemon.mcast_ttl}"
    return text


@dataclass(frozen=True)
class SyncDaemonStatus:
    """One sync daemon in `directorctl status`."""

    state: str  # "master", "backup"
    settings: str  # describe_daemon
    wanted: bool  # the config asks for it (False: owned, being stopped)
    refused: str | None = None  # the kernel refuses its start or stop, and why
    error: str | None = None  # the kernel's daemons cannot be read, and why


def sync_report(
    desired: Mapping[SyncState, SyncDaemon],
    owned: Mapping[SyncState, SyncDaemon],
    refusals: Mapping[Subject, Refusal],
    error: str | None,
    now: float,
) -> tuple[SyncDaemonStatus, ...]:
    """Each desired or owned daemon, with the kernel's refusal of it."""
    refused: dict[SyncState, str] = {}
    for refusal in refusals.values():
        op = refusal.operation
        state = op.daemon.state if isinstance(op, StartDaemon) else getattr(op, "state", None)
        if isinstance(state, SyncState):
            refused[state] = (
                f"{type(op).__name__} refused by the kernel: {refusal.error} "
                f"({refusal.attempts} tries, next in {max(refusal.retry_at - now, 0.0):.1f}s)"
            )
    report = []
    for state in STATES:
        daemon = desired.get(state) or owned.get(state)
        if daemon is None:
            continue
        report.append(
            SyncDaemonStatus(
                state="master" if state is SyncState.MASTER else "backup",
                settings=describe_daemon(daemon),
                wanted=state in desired,
                refused=refused.get(state),
                error=error,
            )
        )
    return tuple(report)


class SyncKeeper:
    """The one owner of the sync daemons' state: the settings asked for, the
    daemons owned, the kernel's refusals. Every method runs in the engine's
    task (a pass, a reload job); `save` is the engine's state-file writer,
    called whenever `owned` changes."""

    def __init__(
        self,
        settings: SyncSettings | None,
        owned: Mapping[SyncState, SyncDaemon] | None = None,
        *,
        interval: float = 5.0,
    ) -> None:
        self.settings = settings
        self.owned: dict[SyncState, SyncDaemon] = dict(owned or {})
        self.refusals: dict[Subject, Refusal] = {}
        self.error: str | None = None  # why the last read of the kernel's daemons failed
        self.interval = interval
        self._failures = 0
        self._due = -math.inf  # the first pass is due at once
        self.log = log.get("sync")

    @property
    def desired(self) -> dict[SyncState, SyncDaemon]:
        return self.settings.daemons() if self.settings is not None else {}

    def configure(self, settings: SyncSettings | None, interval: float) -> None:
        """Take a reloaded config's [ipvs.sync]; a pass is due at once when
        it changed or a refusal is waiting (it may be taken now)."""
        now = trio.current_time()
        changed = settings != self.settings
        self.settings, self.interval = settings, interval
        if changed or self.refusals:
            self.refusals = retry_now(self.refusals, now)
            self._due = now

    def due_at(self) -> float:
        """When the next pass is due; never while there is nothing to keep."""
        return self._due if self.settings is not None or self.owned else math.inf

    async def pass_if_due(
        self, kernel: KernelTable, save: Callable[[], Awaitable[None]], why: str = "sync check"
    ) -> list[Operation]:
        """converge, when a pass is due (due_at); else nothing."""
        if trio.current_time() < self.due_at():
            return []
        return await self.converge(kernel, why, save)

    async def converge(
        self, kernel: KernelTable, why: str, save: Callable[[], Awaitable[None]]
    ) -> list[Operation]:
        """Read the kernel's daemons and send what plan_sync asks (refused
        operations held back until their retry is due); the operations
        sent. Never raises but for cancellation."""
        if self.due_at() == math.inf:
            return []
        try:
            return await self._converge(kernel, why, save)
        except Exception as error:  # a bug must not end the daemon
            self.log.exception("sync_bug", why=why)
            self._failed(why, error)
            return []

    async def _converge(
        self, kernel: KernelTable, why: str, save: Callable[[], Awaitable[None]]
    ) -> list[Operation]:
        now = trio.current_time()
        try:
            running = await kernel.daemons()
        except KernelError as error:
            self._failed(why, error)
            return []
        desired = self.desired
        plan = plan_sync(desired, running, self.owned)
        split = hold_back(plan.operations, self.refusals, now)
        send = held_with_their_stop(split.send, split.held)
        if plan.owned != self.owned:
            self.owned = dict(plan.owned)
            await save()
        errors: list[tuple[str, int | None] | None] = []
        if send:
            try:
                outcomes = await kernel.apply_each(send)
            except KernelError as error:
                self._failed(why, error)
                return send
            for op, result in zip(send, outcomes, strict=True):
                if result is None:
                    self.log.info("ipvs_op", why=why, **describe_operation(op))
                    errors.append(None)
                else:
                    err = result.errno if isinstance(result, IPVSError) else None
                    errors.append((str(result), err))
        before = self.refusals
        self.refusals = record(
            before, plan.operations, send, errors, now, base=RETRY_BASE, cap=self.interval
        )
        self._log_refusals(before)
        owned = owned_after(self.owned, desired, send, errors)
        if owned != self.owned:
            self.owned = owned
            await save()
        if self._failures:
            self.log.info("sync_pass_recovered", after_failures=self._failures)
        self._failures, self.error = 0, None
        retry = next_retry(self.refusals)
        self._due = now + self.interval if retry is None else min(now + self.interval, retry)
        return send

    def _failed(self, why: str, error: Exception) -> None:
        """The kernel's daemons could not be read, or an apply's outcome is
        unknown: logged (at the 1st, 10th, 100th... failure in a row), and
        tried again after a backoff."""
        now = trio.current_time()
        failure = failed(self._failures, now, base=RETRY_BASE, cap=self.interval)
        self._failures, self._due, self.error = failure.count, failure.retry_at, str(error)
        if failure.logged:
            self.log.error("sync_pass_failed", why=why, error=str(error), **failure.fields())

    def _log_refusals(self, before: Mapping[Subject, Refusal]) -> None:
        """Each refusal at its 1st, 10th, 100th... attempt, and when the
        kernel's answer changes (as the engine logs the services')."""
        now = trio.current_time()
        for refusal in to_log(before, self.refusals):
            self.log.error(
                "ipvs_refused",
                error=refusal.error,
                attempts=refusal.attempts,
                retry_in=round(refusal.retry_at - now, 3),
                **describe_operation(refusal.operation),
            )

    def report(self, now: float) -> tuple[SyncDaemonStatus, ...]:
        """For `directorctl status`."""
        return sync_report(self.desired, self.owned, self.refusals, self.error, now)
