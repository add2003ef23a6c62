"""VIPs announced over BGP: a service with `bgp = true` has its address
announced as a host route (/32, /128) to the [[bgp.peer]] routers while it
should receive traffic (director.vips.receives_traffic: its quorum up, the
director not in maintenance), and withdrawn otherwise.

The BGP speaker is BIRD 2 (director.bird), run as the daemon's child: this
module decides what BIRD is told, never speaks BGP. Pure here: `verdicts`,
`announced_after`, `render` (BIRD's config file), `parse_protocols`
(`birdc show protocols`) and `bgp_report`. `BgpKeeper` is the one owner of
the BGP state in the daemon; the engine feeds it verdicts, and its task
keeps BIRD running with the config that says what to announce.

Not known yet (None, as after a start, before the first checks): a route
announced stays announced, one not announced stays withdrawn. A start
announces nothing until the checks say so.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Protocol

import trio

from director import log
from director.config.model import BgpPeer, BgpSettings, RealServerId, VirtualServer
from director.desired import AdminState, RealServerView
from director.ipvs.model import IPAddress, ServiceKey
from director.refusals import failed
from director.runtime import describe_service
from director.vips import combine_verdicts, receives_traffic, verdict_reason

RETRY_BASE = 1.0  # seconds before BIRD is started again after a failure, doubling
RETRY_CAP = 30.0
SETTLE_TIMEOUT = 2.0  # seconds a withdrawal may hold up the VIPs' removal (settled)
STOP_GRACE = 5.0  # seconds BIRD gets to close its sessions on SIGTERM before SIGKILL
BIRD_LOG_CLASSES = "{ trace, info, remote, warning, error, auth, fatal, bug }"


def address_sort_key(address: IPAddress) -> tuple[int, int]:
    return address.version, int(address)


def prefix(address: IPAddress) -> str:
    """'10.0.0.1/32', '2001:db8::1/128': the host route of a VIP."""
    return f"{address}/{32 if address.version == 4 else 128}"


# -- what to announce -------------------------------------------------------------


def service_verdicts(
    services: Iterable[VirtualServer],
    health: Mapping[RealServerId, RealServerView],
    maintenance: bool,
    admin: Mapping[RealServerId, AdminState] | None = None,
) -> dict[ServiceKey, bool | None]:
    """The verdict of receives_traffic for each service with bgp = true."""
    return {
        vs.key: receives_traffic(vs, health, maintenance, admin)
        for vs in services
        if vs.bgp and vs.key.address is not None
    }


def verdicts(
    services: Iterable[VirtualServer],
    health: Mapping[RealServerId, RealServerView],
    maintenance: bool,
    admin: Mapping[RealServerId, AdminState] | None = None,
) -> dict[IPAddress, bool | None]:
    """Each address of the services with bgp = true, with the verdict of
    receives_traffic; services sharing an address: director.vips.combine_verdicts."""
    return by_address(service_verdicts(services, health, maintenance, admin))


def by_address(verdicts: Mapping[ServiceKey, bool | None]) -> dict[IPAddress, bool | None]:
    return combine_verdicts(
        (key.address, verdict) for key, verdict in verdicts.items() if key.address is not None
    )


def announced_after(
    announced: Set[IPAddress], verdicts: Mapping[IPAddress, bool | None]
) -> frozenset[IPAddress]:
    """The routes to announce: those whose verdict is True, and those
    announced now whose verdict is not known yet (None). An address no
    longer in `verdicts` (its service gone, or bgp = false) is withdrawn."""
    return frozenset(
        address
        for address, verdict in verdicts.items()
        if verdict is True or (verdict is None and address in announced)
    )


# -- BIRD's config ----------------------------------------------------------------


def protocol_name(peer: BgpPeer) -> str:
    """BIRD's name of a peer's BGP protocol (a BIRD symbol: letters, digits, _)."""
    return "peer_" + re.sub(r"[^0-9A-Za-z]", "_", str(peer.address))


def render(settings: BgpSettings, routes: Iterable[IPAddress]) -> str:
    """The whole of BIRD 2's config file: no kernel protocol (BIRD installs
    nothing in the director's routing table), one static protocol per
    family holding the routes to announce (unreachable host routes: their
    next hop on the sessions is set by the BGP protocols), one BGP
    protocol per peer exporting the routes of its family, nothing
    imported. The grammar is BIRD 2.0's (doc/bird.sgml, "Configuration").
    Every value in it was checked by director.config.bgp."""
    by_family: dict[int, list[IPAddress]] = {4: [], 6: []}
    for address in sorted(set(routes), key=address_sort_key):
        by_family[address.version].append(address)
    lines = [
        "# Written by directord: every change is made there, not here.",
        f"log stderr {BIRD_LOG_CLASSES};",
    ]
    if settings.router_id is not None:
        lines.append(f"router id {settings.router_id};")
    lines += ["", "protocol device {}", ""]
    for family, addresses in by_family.items():
        lines.append(f"protocol static director_vips{family} {{")
        lines.append(f"  ipv{family};")
        lines += [f"  route {prefix(address)} unreachable;" for address in addresses]
        lines += ["}", ""]
    attributes = []
    if settings.med is not None:
        attributes.append(f"bgp_med = {settings.med};")
    if settings.local_pref is not None:
        attributes.append(f"bgp_local_pref = {settings.local_pref};")
    lines.append(f"filter director_export {{ {' '.join([*attributes, 'accept;'])} }}")
    lines.append("")
    keepalive = max(settings.hold_time // 3, 1)
    for peer in settings.peers:
        family = peer.address.version
        if settings.next_hop is not None and settings.next_hop.version == family:
            next_hop = f"next hop address {settings.next_hop};"
        else:
            next_hop = "next hop self;"
        lines.append(f"protocol bgp {protocol_name(peer)} {{")
        lines.append("  debug { states };")
        lines.append(f"  local as {settings.local_as};")
        lines.append(f"  neighbor {peer.address} port {peer.port} as {peer.as_number};")
        if settings.hold_time:
            lines.append(f"  hold time {settings.hold_time};")
            lines.append(f"  keepalive time {keepalive};")
        else:
            lines.append("  hold time 0;")
        # BIRD waits 120 s by default before it tries a refused connection again.
        lines.append("  connect retry time 5;")
        lines.append("  connect delay time 1;")
        lines.append("  error wait time 5, 60;")
        if peer.multihop is not None:
            lines.append(f"  multihop {peer.multihop};")
        if peer.password is not None:
            lines.append(f'  password "{peer.password}";')
        lines.append(f"  ipv{family} {{")
        lines.append("    import none;")
        lines.append("    export filter director_export;")
        lines.append(f"    {next_hop}")
        lines.append("  };")
        lines += ["}", ""]
    return "\n".join(lines)


def routes_in(text: str) -> frozenset[str]:
    """The prefixes a config from `render` announces (for tests and status)."""
    return frozenset(re.findall(r"^  route (\S+) unreachable;$", text, re.MULTILINE))


def exit_reason(code: int) -> str:
    """'killed by signal 9 (SIGKILL)', 'exited with status 1': a speaker's
    end as Popen.returncode gives it (negative: the signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"killed by signal {-code} ({name})"
    return f"exited with status {code}"


# -- BIRD's answers -----------------------------------------------------------------


@dataclass(frozen=True)
class ProtocolState:
    """One row of `birdc show protocols`."""

    name: str
    state: str  # BIRD's: up, down, start, stop
    since: str
    info: str  # for BGP: Established, Active, Connect, Idle, ... and the last error


def parse_protocols(text: str) -> dict[str, ProtocolState]:
    """The rows of `birdc show protocols` (BIRD 2: a banner, a heading, then
    name, protocol, table, state, since (date and/or time), info)."""
    rows: dict[str, ProtocolState] = {}
    for line in text.splitlines():
        fields = line.split(None, 4)
        if len(fields) < 5 or fields[1] in ("Proto", "ready."):
            continue
        name, _proto, _table, state, rest = fields
        since, _, info = rest.partition("  ")
        if not re.match(r"[0-9]", since):
            continue
        rows[name] = ProtocolState(name, state, since.strip(), info.strip())
    return rows


# -- status -----------------------------------------------------------------------


@dataclass(frozen=True)
class BgpPeerStatus:
    """One [[bgp.peer]] in `directorctl status`: its BGP session's state as BIRD
    reports it (`birdc show protocols`)."""

    name: str  # BIRD's protocol name
    address: str
    as_number: int
    state: str  # BIRD's info: "Established", "Active", ...; "unknown" when BIRD is not asked


@dataclass(frozen=True)
class BgpRouteStatus:
    """One VIP's host route in `directorctl status`: the services naming it,
    whether it is announced now, and why (or why not)."""

    address: str  # "10.0.0.1/32"
    services: tuple[str, ...]
    announced: bool
    reason: str


@dataclass(frozen=True)
class BgpStatus:
    """The BGP part of `directorctl status` and of the metrics (bgp_report): the
    BIRD speaker's state, its peers' sessions and the VIPs' routes."""

    speaker: str  # running, starting, stopped, failed
    pid: int | None
    error: str | None
    peers: tuple[BgpPeerStatus, ...]
    routes: tuple[BgpRouteStatus, ...]
    retry_in: float | None = None  # failed: seconds to the next start; None while one is under way


def bgp_report(
    settings: BgpSettings,
    services: Iterable[VirtualServer],
    verdicts: Mapping[IPAddress, bool | None],
    announced: Set[IPAddress],
    protocols: Mapping[str, ProtocolState] | None,
    *,
    speaker: str,
    pid: int | None,
    error: str | None,
    maintenance: bool,
    service_verdicts: Mapping[ServiceKey, bool | None] | None = None,
    retry_in: float | None = None,
) -> BgpStatus:
    """Pure: the BGP part of `directorctl status` (protocols None: BIRD not
    asked, or not answering). A route is announced while it is decided so
    (`announced`) and the speaker runs. Where services share an address and
    their verdicts differ (`service_verdicts`), the reason says which."""
    peers = []
    for peer in settings.peers:
        name = protocol_name(peer)
        row = (protocols or {}).get(name)
        state = "unknown" if row is None else (row.info or row.state)
        peers.append(BgpPeerStatus(name, str(peer.address), peer.as_number, state))
    names: dict[IPAddress, list[str]] = {}
    services_of: dict[IPAddress, list[ServiceKey]] = {}
    for vs in services:
        if vs.bgp and vs.key.address is not None:
            names.setdefault(vs.key.address, []).append(describe_service(vs.key))
            services_of.setdefault(vs.key.address, []).append(vs.key)
    routes = []
    for address in sorted(names.keys() | set(announced), key=address_sort_key):
        verdict = verdicts.get(address, False)
        reason = verdict_reason(verdict, configured=address in names, maintenance=maintenance)
        split = _split(services_of.get(address, ()), service_verdicts or {})
        if split and not maintenance:
            reason += f" ({split})"
        wanted = address in announced
        if wanted and speaker != "running":
            reason += f"; not announced while BIRD is {speaker}"
        routes.append(
            BgpRouteStatus(
                prefix(address),
                tuple(names.get(address, ())),
                wanted and speaker == "running",
                reason,
            )
        )
    return BgpStatus(speaker, pid, error, tuple(peers), tuple(routes), retry_in)


def _split(keys: Sequence[ServiceKey], verdicts: Mapping[ServiceKey, bool | None]) -> str:
    """'met by tcp:10.0.0.1:443; not by tcp:10.0.0.1:80' when the services
    on one address differ; '' when they agree (or there is one)."""
    parts: dict[bool | None, list[str]] = {}
    for key in keys:
        if key in verdicts:
            parts.setdefault(verdicts[key], []).append(describe_service(key))
    if len(parts) < 2:
        return ""
    words = {True: "met by", False: "not by", None: "not known yet for"}
    return "; ".join(f"{words[v]} {', '.join(parts[v])}" for v in (True, False, None) if v in parts)


# -- the shell's seam -----------------------------------------------------------------


class SpeakerError(Exception):
    """BIRD could not be started, refused its config, or did not answer; the
    message is in BIRD's (or the system's) words."""


class Speaker(Protocol):
    """What BgpKeeper needs of the BGP speaker (director.bird.Bird; a fake
    in the unit tests)."""

    async def run(
        self,
        settings: BgpSettings,
        config: str,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> tuple[int, str]:
        """Start the speaker with `config`; started() with its pid once it
        answers; return (its exit status, its last words) when it exits.
        Cancelled: stop it (SIGTERM, then SIGKILL after STOP_GRACE).
        Raises SpeakerError when it cannot start."""
        ...

    async def configure(self, settings: BgpSettings, config: str) -> None:
        """Give the running speaker `config`. Raises SpeakerError."""
        ...

    async def protocols(self, settings: BgpSettings) -> str:
        """`birdc show protocols`. Raises SpeakerError."""
        ...


def _restart_needed(old: BgpSettings | None, new: BgpSettings | None) -> bool:
    """A change BIRD cannot take by reconfiguring: which BIRD, and where."""
    if old is None or new is None:
        return old is not new
    return (old.bird, old.runtime_dir) != (new.bird, new.runtime_dir)


class BgpKeeper:
    """The one owner of the BGP state: the settings, the services with
    bgp = true, their verdicts, the routes announced, and the speaker's
    process. `configure` and `update` run in the engine's task; `run` is a
    task of the engine's nursery that keeps BIRD running with the config
    `render` makes of the announced routes."""

    def __init__(self, settings: BgpSettings | None, speaker: Speaker | None = None) -> None:
        self.settings = settings
        self.speaker = speaker
        self.services: tuple[VirtualServer, ...] = ()
        self.keys: frozenset[ServiceKey] = frozenset()
        self.verdicts: dict[IPAddress, bool | None] = {}
        self.service_verdicts: dict[ServiceKey, bool | None] = {}
        self.announced: frozenset[IPAddress] = frozenset()
        self.state = "stopped"  # of the speaker: starting, running, stopped, failed
        self.pid: int | None = None
        self.error: str | None = None
        self.retry_at: float | None = None  # trio time of the next start, after a failure
        self._due = False
        self._changed = trio.Event()  # the announced routes or the settings changed
        self._applied: frozenset[IPAddress] | None = None  # the routes BIRD has
        self._applied_changed = trio.Event()
        self._interrupt = trio.CancelScope()  # the speaker's life, or the wait before one
        self._idle = trio.Event()  # set while no speaker runs
        self._idle.set()
        self._stopping = False
        self._why = "start"
        self._failures = 0
        self.log = log.get("bgp")

    # -- the engine's side (its task) --

    def configure(self, settings: BgpSettings | None, services: Iterable[VirtualServer]) -> None:
        """The effective config's [bgp] and services: the verdicts are due
        again, and the speaker restarted, reconfigured or stopped to match."""
        mine = tuple(vs for vs in services if vs.bgp)
        if settings != self.settings or mine != self.services:
            if _restart_needed(self.settings, settings):
                self._why = "bgp removed from the config" if settings is None else "reload"
                self._interrupt.cancel()
            self.settings, self.services = settings, mine
            self.keys = frozenset(vs.key for vs in mine)
            self._changed.set()
        self.poke()

    def poke(self) -> None:
        """Health (or maintenance) changed: `update` is due."""
        self._due = True

    def due_at(self) -> float:
        return -math.inf if self._due and (self.settings or self.announced) else math.inf

    def update(
        self,
        health: Callable[[], Mapping[RealServerId, RealServerView]],
        admin: Mapping[RealServerId, AdminState],
        maintenance: bool,
        why: str,
        *,
        withdraw_only: bool = False,
    ) -> list[tuple[str, IPAddress]]:
        """When due: the verdicts now and the routes to announce after them
        (each change logged and handed to the task); the changes, as
        ("announce" | "withdraw", address). `withdraw_only`: the
        withdrawals alone, and the update stays due for the rest."""
        if self.due_at() == math.inf:
            return []
        self._due = withdraw_only
        if self.settings is None:
            self.verdicts, self.service_verdicts = {}, {}
        else:
            self.service_verdicts = service_verdicts(self.services, health(), maintenance, admin)
            self.verdicts = by_address(self.service_verdicts)
        announced = announced_after(self.announced, self.verdicts)
        if withdraw_only:
            announced &= self.announced
        changes = [
            ("announce", a) for a in sorted(announced - self.announced, key=address_sort_key)
        ]
        changes += [
            ("withdraw", a) for a in sorted(self.announced - announced, key=address_sort_key)
        ]
        # What BIRD does with it: a route decided while BIRD is not running
        # goes out when it runs (operator trial: bgp_announced with BIRD
        # failed read as if the router had the route).
        bird = self.state
        for change, address in changes:
            if change == "announce":
                self.log.info("bgp_announced", address=prefix(address), why="quorum met", bird=bird)
                continue
            verdict = self.verdicts.get(address)
            reason = "maintenance" if maintenance and verdict is False else why
            if address not in self.verdicts:
                reason = "no longer configured"
            self.log.info("bgp_withdrawn", address=prefix(address), why=reason, bird=bird)
        if changes:
            self.announced = announced
            self._changed.set()
        return changes

    async def settled(self) -> None:
        """Returns once the running speaker has been given the announced
        routes (at once when none runs), or after SETTLE_TIMEOUT seconds: a
        VIP leaves its interface only after its route is withdrawn."""
        with trio.move_on_after(SETTLE_TIMEOUT):
            while self.state == "running" and self._applied != self.announced:
                await self._applied_changed.wait()

    def _set_applied(self, routes: frozenset[IPAddress] | None) -> None:
        self._applied = routes
        self._applied_changed.set()
        self._applied_changed = trio.Event()

    async def stop(self, why: str) -> None:
        """Withdraw everything by stopping the speaker (its sessions close:
        a Cease NOTIFICATION to each peer) and never start it again; returns
        once it has exited (at most STOP_GRACE and a second)."""
        self._stopping, self._why = True, why
        self._interrupt.cancel()
        with trio.move_on_after(STOP_GRACE + 1.0):
            await self._idle.wait()

    # -- the task --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the speaker running while there are settings, with the
        config of the announced routes; start it again with backoff when it
        exits or cannot start. Never raises but for cancellation;
        cancelled, the speaker is stopped."""
        task_status.started()
        while True:
            self._interrupt = trio.CancelScope()
            with self._interrupt:
                settings = self.settings
                if settings is None or self.speaker is None or self._stopping:
                    self.state, self.retry_at = "stopped", None
                    self._idle.set()
                    await trio.sleep_forever()
                    continue
                try:
                    retry_in = await self._life(settings)
                except Exception as error:  # a bug must not end the daemon
                    self.log.exception("bgp_bug")
                    retry_in = self._failed("bgp_bug", repr(error))
                await trio.sleep(retry_in)
            if self._interrupt.cancelled_caught and self.state == "running":
                self.log.info("bgp_speaker_stopped", why=self._why)
            if self.pid is None and self.state != "failed":
                self.state = "stopped"

    async def _life(self, settings: BgpSettings) -> float:
        """One life of the speaker: until it exits (the seconds to wait
        before the next) or the task is cancelled."""
        assert self.speaker is not None
        self._idle = trio.Event()
        if self.state != "failed":  # a retry stays failed, with its error, until it runs
            self.state, self.error = "starting", None
        self.retry_at = None
        exited: list[tuple[int, str]] = []
        try:
            async with trio.open_nursery() as nursery:
                try:
                    self.pid = await nursery.start(self._speak, nursery, settings, exited)
                except SpeakerError as error:
                    return self._failed("bgp_speaker_failed", str(error))
                self.state, self.error = "running", None
                self.log.info(
                    "bgp_speaker_started",
                    pid=self.pid,
                    peers=len(settings.peers),
                    announced=[prefix(a) for a in sorted(self.announced, key=address_sort_key)],
                )
                nursery.start_soon(self._follow, settings)
                nursery.start_soon(self._stable)
        finally:
            self.pid = None
            self._idle.set()
            self._set_applied(None)
        code, words = exited[0]
        retry_in = self._failed(
            "bgp_speaker_exited", exit_reason(code), returncode=code, last_words=words
        )
        if words:  # for status: its last line says most
            self.error = f"{exit_reason(code)}; last: {words.rsplit('; ', 1)[-1]}"
        return retry_in

    async def _speak(
        self,
        nursery: trio.Nursery,
        settings: BgpSettings,
        exited: list[tuple[int, str]],
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.speaker is not None
        routes = self.announced
        self._changed = trio.Event()  # what it starts with is applied
        self._set_applied(routes)
        exited.append(
            await self.speaker.run(settings, render(settings, routes), task_status=task_status)
        )
        nursery.cancel_scope.cancel()

    async def _stable(self) -> None:
        """A speaker that ran RETRY_CAP seconds has recovered: the next exit
        is retried after RETRY_BASE again (one that exits sooner keeps
        doubling the wait)."""
        await trio.sleep(RETRY_CAP)
        if self._failures:
            self.log.info("bgp_speaker_recovered", after_failures=self._failures)
        self._failures = 0

    async def _follow(self, settings: BgpSettings) -> None:
        """Hand each change of the announced routes, or of the settings BIRD
        takes by reconfiguring, to the running speaker."""
        assert self.speaker is not None
        # What it was started with (by _speak); None: not known to BIRD.
        applied: str | None = render(settings, self._applied or frozenset())
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            if self.settings is None:
                continue  # configure() ends this life
            routes = self.announced
            config = render(self.settings, routes)
            if config == applied:
                self._set_applied(routes)
                continue
            try:
                await self.speaker.configure(self.settings, config)
            except SpeakerError as error:
                # BIRD keeps its previous config; the whole config goes again
                # after RETRY_BASE, or with the next change.
                self.error, applied = str(error), None
                self.log.error("bgp_configure_failed", error=str(error), retry_in=RETRY_BASE)
                await trio.sleep(RETRY_BASE)
                self._changed.set()
                continue
            applied, self.error = config, None
            self._set_applied(routes)

    def _failed(self, event: str, error: str, **fields: object) -> float:
        now = trio.current_time()
        failure = failed(self._failures, now, base=RETRY_BASE, cap=RETRY_CAP)
        self._failures, self.state, self.error = failure.count, "failed", error
        retry_in = failure.retry_at - now
        self.retry_at = failure.retry_at
        self.log.error(event, error=error, restart_in=round(retry_in, 3), **fields)
        return retry_in

    # -- status --

    async def report(self, maintenance: bool) -> BgpStatus | None:
        """For `directorctl status` (None without [bgp]); asks BIRD for its
        sessions' states when it runs."""
        if self.settings is None:
            return None
        protocols = None
        error = self.error
        if self.speaker is not None and self.state == "running":
            try:
                protocols = parse_protocols(await self.speaker.protocols(self.settings))
            except SpeakerError as failure:
                error = str(failure)
        return bgp_report(
            self.settings,
            self.services,
            self.verdicts,
            self.announced,
            protocols,
            speaker=self.state,
            pid=self.pid,
            error=error,
            maintenance=maintenance,
            service_verdicts=self.service_verdicts,
            retry_in=(
                None
                if self.state != "failed" or self.retry_at is None
                else max(0.0, round(self.retry_at - trio.current_time(), 1))
            ),
        )
