"""VIPs the daemon owns: a virtual service's address, as a /32 (IPv4) or
/128 (IPv6) on its `vip_interface`, while the service should receive
traffic, and nowhere otherwise.

Pure here: `receives_traffic` (the one verdict the VIPs, and later the BGP
announcements, follow), `desired_vips`, `plan_vips` and `owned_after`.
`VipKeeper` is the one owner of the VIP state in the daemon; it runs in the
engine's task and talks to the kernel through an `AddressBackend`
(director.rtnl: pyroute2's IPRoute in a worker thread).

Ownership, as for IPVS services: the daemon touches only the addresses it
added. The state file records them (written before the add goes out, so a
crash cannot orphan one); a restart adopts each recorded one that is still
present and leaves it in place (no flap). An address the daemon did not add
(by hand on the same interface, or the VIP itself already on any
interface) is never removed; a VIP already present and not ours is reported
as "there already" and not added a second time. A VIP whose service the
config drops, or whose vip_interface it changes, is removed from where the
daemon put it.

A refusal (a missing interface without create_vip_interface, EPERM,
EEXIST) is logged in the kernel's words, shown in `directorctl status` and
retried with director.refusals' backoff, up to reconcile_interval; it never
holds up anything else.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import trio

from director import log
from director.config.model import RealServerId, VirtualServer
from director.desired import UNCHECKED, AdminState, RealServerView, counted_status
from director.health.state import Health
from director.ipvs.model import IPAddress, ServiceKey
from director.refusals import backoff, failed, to_log
from director.runtime import describe_service

RETRY_BASE = 1.0  # seconds before the first retry of a refused change
K = TypeVar("K")


@dataclass(frozen=True)
class Vip:
    """One address on one interface, as the daemon puts it there."""

    interface: str
    address: IPAddress

    @property
    def prefixlen(self) -> int:
        return 32 if self.address.version == 4 else 128

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen} dev {self.interface}"


def vip_sort_key(vip: Vip) -> tuple[str, int, int]:
    return vip.interface, vip.address.version, int(vip.address)


# -- the verdict ------------------------------------------------------------------


def receives_traffic(
    vs: VirtualServer,
    health: Mapping[RealServerId, RealServerView],
    maintenance: bool,
    admin: Mapping[RealServerId, AdminState] | None = None,
) -> bool | None:
    """Whether the service should receive traffic: at least `quorum` of its
    enabled real servers up (as desired_service counts them for the sorry
    server) and the director not in maintenance. None: not known yet (fewer
    are up, but enough are not checked yet to make the quorum, as after a
    restart, where servers in service are adopted unchecked): whoever acts
    on it keeps what is (a VIP present stays, an absent one stays absent)."""
    if maintenance:
        return False
    up = unknown = 0
    for rid, rs in zip(vs.real_server_ids, vs.real_servers, strict=True):
        if admin and admin.get(rid, AdminState.ENABLED) is not AdminState.ENABLED:
            continue
        status = counted_status(rs, health.get(rid, UNCHECKED))
        if status is Health.UP:
            up += 1
        elif status is Health.UNKNOWN:
            unknown += 1
    if up >= vs.quorum:
        return True
    return None if up + unknown >= vs.quorum else False


def desired_vips(
    services: Iterable[VirtualServer],
    health: Mapping[RealServerId, RealServerView],
    maintenance: bool,
    admin: Mapping[RealServerId, AdminState] | None = None,
) -> dict[Vip, bool | None]:
    """Each VIP the services name (those with a vip_interface), with the
    verdict of receives_traffic; several services on one address (tcp:80
    and tcp:443) share it: True when any is True, else None when any is
    None, else False."""
    return combine_verdicts(
        (Vip(vs.vip_interface, vs.key.address), receives_traffic(vs, health, maintenance, admin))
        for vs in services
        if vs.vip_interface is not None and vs.key.address is not None
    )


def verdict_reason(verdict: bool | None, *, configured: bool, maintenance: bool) -> str:
    """Why a VIP is (or is not) to receive traffic, for status."""
    if maintenance and configured:
        return "maintenance"
    if verdict is None:
        return "quorum not known yet: kept as it is"
    if verdict:
        return "quorum met"
    return "quorum not met" if configured else "no longer configured"


def combine_verdicts(pairs: Iterable[tuple[K, bool | None]]) -> dict[K, bool | None]:
    """One verdict per key from those of the services sharing it: True when
    any is True, else None when any is None, else False."""
    verdicts: dict[K, bool | None] = {}
    for key, verdict in pairs:
        if key not in verdicts or verdict is True:
            verdicts[key] = verdict
        elif verdict is None and verdicts[key] is False:
            verdicts[key] = None
    return verdicts


# -- the plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class CreateInterface:
    """`ip link add NAME type dummy; ip link set NAME up`."""

    name: str


@dataclass(frozen=True)
class AddAddress:
    """`ip address add ADDR/32 dev IFACE` (IPv6: /128 nodad)."""

    vip: Vip


@dataclass(frozen=True)
class RemoveAddress:
    """`ip address del ADDR/32 dev IFACE` (IPv6: /128)."""

    vip: Vip


VipOperation = CreateInterface | AddAddress | RemoveAddress


@dataclass(frozen=True)
class Present:
    """The addresses and interfaces the kernel has (RTM_GETADDR, RTM_GETLINK)."""

    interfaces: frozenset[str] = frozenset()
    addresses: Mapping[IPAddress, frozenset[str]] = field(default_factory=dict)  # -> interfaces

    def has(self, vip: Vip) -> bool:
        return vip.interface in self.addresses.get(vip.address, frozenset())


@dataclass(frozen=True)
class VipPlan:
    """What `plan_vips` decided: the operations to send, the VIPs owned once they
    are sent, and the wanted VIPs it leaves alone (there already, or on an
    interface that is missing)."""

    operations: tuple[VipOperation, ...]
    # Owned once the operations are sent: record it before they go out.
    owned: frozenset[Vip]
    # Wanted VIPs already present and not ours: where each is.
    there_already: Mapping[Vip, frozenset[str]]
    # Wanted VIPs whose interface is missing and not to be created.
    no_interface: frozenset[Vip]


def plan_vips(
    desired: Mapping[Vip, bool | None],
    owned: Set[Vip],
    present: Present,
    create: Set[str] = frozenset(),
) -> VipPlan:
    """The operations that make the kernel's addresses what `desired` asks
    (director.vips.desired_vips), touching only `owned` ones:

    - wanted (True), present where asked and owned: nothing;
    - wanted, the address present anywhere and not owned: left alone, "there
      already" (never owned, so never removed);
    - wanted, absent: add it (owned from now on), creating its interface
      first when it is missing and named in `create`; missing otherwise: no
      operation, reported in `no_interface`;
    - not known (None): nothing, either way;
    - owned and not wanted (False, or no longer configured): removed when
      present; ownership ends when absent.
    """
    operations: list[VipOperation] = []
    after = {vip for vip in owned if present.has(vip)}
    there_already: dict[Vip, frozenset[str]] = {}
    no_interface: set[Vip] = set()
    creating: set[str] = set()
    for vip in sorted(desired, key=vip_sort_key):
        verdict = desired[vip]
        if present.has(vip) and vip in owned:
            continue
        # Where it is and not ours (ours elsewhere: a vip_interface the
        # config changed; that one goes below), whatever the verdict: status
        # must not call an address the host still answers for "absent".
        where = frozenset(
            i for i in present.addresses.get(vip.address, ()) if Vip(i, vip.address) not in owned
        )
        if where:
            there_already[vip] = where
            if verdict is True:
                after.discard(vip)
            continue
        if verdict is not True:
            continue
        if vip.interface not in present.interfaces:
            if vip.interface not in create:
                no_interface.add(vip)
                continue
            if vip.interface not in creating:
                creating.add(vip.interface)
                operations.append(CreateInterface(vip.interface))
        operations.append(AddAddress(vip))
        after.add(vip)
    for vip in sorted(owned, key=vip_sort_key):
        if desired.get(vip, False) is False and present.has(vip):
            operations.append(RemoveAddress(vip))
    return VipPlan(tuple(operations), frozenset(after), there_already, frozenset(no_interface))


def owned_after(
    owned: Set[Vip],
    sent: Sequence[VipOperation],
    errors: Sequence[tuple[str, int | None] | None],
) -> frozenset[Vip]:
    """Ownership once `sent` went out (errors[i] None: applied, else the
    kernel's words and errno). A removal applied, or of an address already
    gone (EADDRNOTAVAIL), ends it; so does an add that failed: EEXIST says
    someone else's address got there first, any other refusal left nothing
    of ours (the next pass adds it again, owned again)."""
    result = set(owned)
    for op, error in zip(sent, errors, strict=True):
        if isinstance(op, CreateInterface):
            continue
        removed = isinstance(op, RemoveAddress) and (
            error is None or error[1] == errno.EADDRNOTAVAIL
        )
        if removed or (isinstance(op, AddAddress) and error is not None):
            result.discard(op.vip)
    return frozenset(result)


def subject(op: VipOperation) -> object:
    """What a refusal is about: one VIP (its add and remove alike) or one
    interface's creation."""
    return ("interface", op.name) if isinstance(op, CreateInterface) else op.vip


@dataclass(frozen=True)
class VipRefusal:
    """The kernel's refusal of a VIP operation: its words, how many times in a
    row, and when it may be sent again (`retry_at`, the caller's clock); one
    per subject (`record`)."""

    operation: VipOperation
    error: str  # the kernel's words
    errno: int | None
    attempts: int  # in a row
    retry_at: float


def record(
    refusals: Mapping[object, VipRefusal],
    planned: Iterable[VipOperation],
    sent: Sequence[VipOperation],
    errors: Sequence[tuple[str, int | None] | None],
    now: float,
    cap: float,
) -> dict[object, VipRefusal]:
    """The refusals after a pass, as director.refusals.record keeps the
    IPVS ones: a subject no longer planned is forgotten, an applied one
    cleared, a refused one retried after RETRY_BASE, doubling, up to `cap`."""
    still = {subject(op) for op in planned}
    result = {s: r for s, r in refusals.items() if s in still}
    for op, error in zip(sent, errors, strict=True):
        key = subject(op)
        if error is None:
            result.pop(key, None)
            continue
        previous = result.get(key)
        attempts = previous.attempts + 1 if previous and previous.operation == op else 1
        result[key] = VipRefusal(
            op, error[0], error[1], attempts, now + backoff(attempts, RETRY_BASE, cap)
        )
    return result


def hold_back(
    operations: Sequence[VipOperation], refusals: Mapping[object, VipRefusal], now: float
) -> list[VipOperation]:
    """The operations to send now: not those refused whose backoff runs,
    nor the adds on an interface whose creation is held."""
    send: list[VipOperation] = []
    held_interfaces: set[str] = set()
    for op in operations:
        refusal = refusals.get(subject(op))
        if refusal is not None and refusal.operation == op and refusal.retry_at > now:
            if isinstance(op, CreateInterface):
                held_interfaces.add(op.name)
            continue
        if isinstance(op, AddAddress) and op.vip.interface in held_interfaces:
            continue
        send.append(op)
    return send


def describe_op(op: VipOperation) -> dict[str, object]:
    """Log fields of one operation."""
    if isinstance(op, CreateInterface):
        return {"op": "create_interface", "interface": op.name, "kind": "dummy"}
    name = "add_address" if isinstance(op, AddAddress) else "remove_address"
    return {"op": name, "address": f"{op.vip.address}/{op.vip.prefixlen}", "dev": op.vip.interface}


# -- status -----------------------------------------------------------------------


@dataclass(frozen=True)
class VipStatus:
    """One VIP in `directorctl status`."""

    address: str  # "10.0.0.1/32"
    interface: str
    services: tuple[str, ...]  # the services naming it
    state: str  # present, absent, there already (not ours), removing, ...
    reason: str  # the verdict's, or what keeps it from its state
    owned: bool
    refused: str | None = None  # the kernel refuses the change, and why


# -- the shell's seam ---------------------------------------------------------------


class AddressError(Exception):
    """The kernel refused an rtnetlink request; `errno` and the kernel's
    words (strerror, as `ip` prints them)."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class AddressBackend(Protocol):
    """What VipKeeper needs of rtnetlink (director.rtnl.Rtnl; a dict-backed
    fake in the unit tests)."""

    async def present(self) -> Present:
        """Raises AddressError."""
        ...

    async def apply(self, op: VipOperation) -> None:
        """Raises AddressError."""
        ...


class VipKeeper:
    """The one owner of the VIP state: the services that name a
    vip_interface, the VIPs owned, the maintenance flag, the kernel's
    refusals. Every method runs in the engine's task; `save` is the
    engine's state-file writer, called whenever `owned` or `maintenance`
    changes."""

    def __init__(
        self,
        backend: AddressBackend | None,
        owned: Set[Vip] = frozenset(),
        *,
        maintenance: bool = False,
        interval: float = 5.0,
    ) -> None:
        self.backend = backend
        self.owned: frozenset[Vip] = frozenset(owned)
        self.maintenance = maintenance
        self.interval = interval
        self.services: tuple[VirtualServer, ...] = ()
        self.keys: frozenset[ServiceKey] = frozenset()  # of `services`
        self.refusals: dict[object, VipRefusal] = {}
        self.verdicts: dict[Vip, bool | None] = {}
        self.plan: VipPlan | None = None
        self.error: str | None = None  # why the last read of the addresses failed
        self._failures = 0
        self._due = -math.inf
        self.log = log.get("vips")

    def configure(self, services: Iterable[VirtualServer], interval: float) -> None:
        """The effective config's services (those naming a vip_interface
        are kept), after a reload or an operator's change (an admin state
        counts for the quorum): a pass is due at once, and a refused
        change may be tried again when the services changed."""
        mine = tuple(vs for vs in services if vs.vip_interface is not None)
        if mine != self.services:
            self.refusals = {
                s: VipRefusal(r.operation, r.error, r.errno, r.attempts, -math.inf)
                for s, r in self.refusals.items()
            }
        self.services, self.interval = mine, interval
        self.keys = frozenset(vs.key for vs in mine)
        self.poke()

    def set_maintenance(self, on: bool) -> bool:
        """Enter or leave maintenance (VIPs verdicts all False while on); a
        pass is due at once. The previous setting."""
        was, self.maintenance = self.maintenance, on
        self.poke()
        return was

    def poke(self) -> None:
        """Health (or maintenance) changed: a pass is due at once."""
        self._due = -math.inf

    def due_at(self) -> float:
        if self.backend is None or (not self.services and not self.owned):
            return math.inf
        return self._due

    async def pass_if_due(
        self,
        health: Callable[[], Mapping[RealServerId, RealServerView]],
        admin: Mapping[RealServerId, AdminState],
        save: Callable[[], Awaitable[None]],
        why: str = "vip check",
    ) -> list[VipOperation]:
        if trio.current_time() < self.due_at():
            return []
        return await self.converge(health(), admin, save, why)

    async def converge(
        self,
        health: Mapping[RealServerId, RealServerView],
        admin: Mapping[RealServerId, AdminState],
        save: Callable[[], Awaitable[None]],
        why: str,
    ) -> list[VipOperation]:
        """Read the addresses and send what plan_vips asks (refused
        operations held back until their retry is due); the operations
        sent. Never raises but for cancellation."""
        if self.due_at() == math.inf:
            return []
        try:
            return await self._converge(health, admin, save, why)
        except Exception as error:  # a bug must not end the daemon
            self.log.exception("vip_bug", why=why)
            self._failed(why, error)
            return []

    async def _converge(
        self,
        health: Mapping[RealServerId, RealServerView],
        admin: Mapping[RealServerId, AdminState],
        save: Callable[[], Awaitable[None]],
        why: str,
    ) -> list[VipOperation]:
        assert self.backend is not None
        now = trio.current_time()
        try:
            present = await self.backend.present()
        except AddressError as error:
            self._failed(why, error)
            return []
        self.verdicts = desired_vips(self.services, health, self.maintenance, admin)
        create = {vs.vip_interface for vs in self.services if vs.create_vip_interface}
        plan = plan_vips(self.verdicts, self.owned, present, {c for c in create if c})
        self._log_news(plan)
        self.plan = plan
        send = hold_back(plan.operations, self.refusals, now)
        if plan.owned != self.owned:
            self.owned = plan.owned
            await save()
        errors: list[tuple[str, int | None] | None] = []
        for op in send:
            try:
                await self.backend.apply(op)
            except AddressError as error:
                errors.append((str(error), error.errno))
            else:
                errors.append(None)
                self.log.info("vip_op", why=why, **describe_op(op))
        before = self.refusals
        self.refusals = record(before, plan.operations, send, errors, now, self.interval)
        self._log_refusals(before)
        owned = owned_after(self.owned, send, errors)
        if owned != self.owned:
            self.owned = owned
            await save()
        if self._failures:
            self.log.info("vip_pass_recovered", after_failures=self._failures)
        self._failures, self.error = 0, None
        retry = min((r.retry_at for r in self.refusals.values()), default=math.inf)
        self._due = min(now + self.interval, retry)
        return send

    async def flush(self, save: Callable[[], Awaitable[None]]) -> list[VipOperation]:
        """Remove every owned VIP that is present ([daemon] flush_on_stop:
        the services go, their addresses with them); the removals sent.
        Never raises but for cancellation."""
        if self.backend is None or not self.owned:
            return []
        try:
            present = await self.backend.present()
        except AddressError as error:
            self.log.error("vip_flush_failed", error=str(error))
            return []
        send: list[VipOperation] = [
            RemoveAddress(v) for v in sorted(self.owned, key=vip_sort_key) if present.has(v)
        ]
        errors: list[tuple[str, int | None] | None] = []
        for op in send:
            try:
                await self.backend.apply(op)
            except AddressError as error:
                errors.append((str(error), error.errno))
                self.log.error("vip_flush_refused", error=str(error), **describe_op(op))
            else:
                errors.append(None)
                self.log.info("vip_op", why="flush on stop", **describe_op(op))
        owned = owned_after(self.owned, send, errors)
        owned = frozenset(v for v in owned if present.has(v))
        if owned != self.owned:
            self.owned = owned
            await save()
        return send

    def _log_news(self, plan: VipPlan) -> None:
        """A VIP found there already, or without its interface: once, when
        it starts."""
        last = self.plan
        for vip, where in plan.there_already.items():
            if last is None or last.there_already.get(vip) != where:
                self.log.warning(
                    "vip_there_already",
                    address=f"{vip.address}/{vip.prefixlen}",
                    dev=vip.interface,
                    found_on=sorted(where),
                    action="left alone, not ours",
                )
        for vip in plan.no_interface:
            if last is None or vip not in last.no_interface:
                self.log.error(
                    "vip_no_interface",
                    address=f"{vip.address}/{vip.prefixlen}",
                    dev=vip.interface,
                    error=f'Cannot find device "{vip.interface}"',
                    action="create_vip_interface = true makes it; retried",
                )

    def _log_refusals(self, before: Mapping[object, VipRefusal]) -> None:
        now = trio.current_time()
        for refusal in to_log(before, self.refusals):
            self.log.error(
                "vip_refused",
                error=refusal.error,
                attempts=refusal.attempts,
                retry_in=round(refusal.retry_at - now, 3),
                **describe_op(refusal.operation),
            )

    def _failed(self, why: str, error: Exception) -> None:
        now = trio.current_time()
        failure = failed(self._failures, now, base=RETRY_BASE, cap=self.interval)
        self._failures, self._due, self.error = failure.count, failure.retry_at, str(error)
        if failure.logged:
            self.log.error("vip_pass_failed", why=why, error=str(error), **failure.fields())

    def report(self, now: float) -> tuple[VipStatus, ...]:
        """For `directorctl status`: each VIP configured or owned."""
        return vip_report(
            self.services,
            self.verdicts,
            self.owned,
            self.plan,
            self.refusals,
            self.error,
            now,
            maintenance=self.maintenance,
        )


def vip_report(
    services: Sequence[VirtualServer],
    verdicts: Mapping[Vip, bool | None],
    owned: Set[Vip],
    plan: VipPlan | None,
    refusals: Mapping[object, VipRefusal],
    error: str | None,
    now: float,
    *,
    maintenance: bool = False,
) -> tuple[VipStatus, ...]:
    """Pure: one VipStatus for each VIP the services name or the daemon owns."""
    names: dict[Vip, list[str]] = {}
    for vs in services:
        if vs.vip_interface is not None and vs.key.address is not None:
            names.setdefault(Vip(vs.vip_interface, vs.key.address), []).append(
                describe_service(vs.key)
            )
    report = []
    for vip in sorted(names.keys() | owned, key=vip_sort_key):
        verdict = verdicts.get(vip, False) if vip in names else False
        reason = verdict_reason(verdict, configured=vip in names, maintenance=maintenance)

        if vip in owned:
            state = "present (ours)" if verdict is not False else "removing"
        elif plan is not None and vip in plan.there_already:
            where = ", ".join(sorted(plan.there_already[vip]))
            state = f"there already on {where}, not ours: left alone"
        elif plan is not None and vip in plan.no_interface:
            state = f'missing interface: Cannot find device "{vip.interface}"'
        else:
            state = "absent"
        if error is not None:
            state += f" (addresses not readable: {error})"
        refusal = refusals.get(vip) or refusals.get(("interface", vip.interface))
        refused = None
        if refusal is not None:
            refused = (
                f"{describe_op(refusal.operation)['op']} refused by the kernel: {refusal.error} "
                f"({refusal.attempts} tries, next in {max(refusal.retry_at - now, 0.0):.1f}s)"
            )
        report.append(
            VipStatus(
                address=f"{vip.address}/{vip.prefixlen}",
                interface=vip.interface,
                services=tuple(names.get(vip, ())),
                state=state,
                reason=reason,
                owned=vip in owned,
                refused=refused,
            )
        )
    return tuple(report)
