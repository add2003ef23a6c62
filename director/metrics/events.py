"""Counters of what happened, kept where it happens: the engine calls these
hooks at each probe, transition, kernel operation, pass and reload, and the
control socket's handler at each request.

Plain Python numbers in plain containers, touched only by the trio thread:
no lock, no label dict and no prometheus_client object per event (a
prometheus_client Counter takes a lock on each inc(), a Histogram one per
bucket). A probe costs one dict lookup (RealServerId caches its hash) and
three list updates of its target's tally. The scrape (director.metrics.
collect) copies what it needs in the trio thread and turns it into metric
families in a worker thread.

Per real server (one tally each, dropped with the target): probes by reason
(the outcome is ok or not; director.health.result.Reason), the latency of
each probe in PROBE_BUCKETS (exported per virtual service: 10,000 servers
times 15 buckets would be 150,000 series), transitions to up and to down.
Daemon-wide: probe start delay (how late the checker started a probe against
its steady grid, director.health.schedule), passes by scope, kernel
operations by kind and result, reloads by result, control requests by
command and result.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType

from director.config.model import RealServerId
from director.control.messages import Handler, Peer, Request, Response
from director.health.checker import Target
from director.health.result import ProbeResult, Reason
from director.health.state import Health, Transition
from director.ipvs.errors import KernelError
from director.ipvs.ops import Operation

# Seconds. Probes on a LAN answer in well under a millisecond; a timeout is
# seconds (the default check timeout is 2 s, director.health.spec).
PROBE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Seconds a probe started after its due time (the checker's own bench puts
# the median at 0.1 ms and the worst at tens of ms on a busy host).
DELAY_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)
# A probe started this many seconds or more after its due time counts as late.
LATE_AFTER = 1.0
# Seconds a reconcile pass took (wall clock, kernel calls included).
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REASONS = tuple(Reason)
_REASON_INDEX = {reason: i for i, reason in enumerate(REASONS)}
# A tally: [probes by reason..., latency buckets (+Inf last)..., latency sum,
# transitions to up, transitions to down].
BUCKETS_AT = len(REASONS)
SUM_AT = BUCKETS_AT + len(PROBE_BUCKETS) + 1
UP_AT = SUM_AT + 1
DOWN_AT = UP_AT + 1
TALLY_SIZE = DOWN_AT + 1

# ipvsadm's command options, short and long, by the name the counter uses
# (ipvsadm(8)'s long option without the dashes).
_IPVSADM_COMMANDS = {
    "-A": "add-service",
    "--add-service": "add-service",
    "-E": "edit-service",
    "--edit-service": "edit-service",
    "-D": "delete-service",
    "--delete-service": "delete-service",
    "-C": "clear",
    "--clear": "clear",
    "-R": "restore",
    "--restore": "restore",
    "-S": "save",
    "--save": "save",
    "-a": "add-server",
    "--add-server": "add-server",
    "-e": "edit-server",
    "--edit-server": "edit-server",
    "-d": "delete-server",
    "--delete-server": "delete-server",
    "-L": "list",
    "-l": "list",
    "--list": "list",
    "-Z": "zero",
    "--zero": "zero",
    "--set": "set",
    "--start-daemon": "start-daemon",
    "--stop-daemon": "stop-daemon",
    "-h": "help",
    "--help": "help",
    "-v": "version",
    "--version": "version",
}
# director's own commands (director.control.handler); anything else is "other".
_OWN_COMMANDS = frozenset({"status", "drain", "disable", "enable", "reload", "check-config"})


@dataclass
class Histogram:
    """Bucket counts (the last is +Inf) and the sum of what was observed."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total)


class Events:
    """The daemon's event counters; one instance, owned by the engine
    (Director.events). Every method runs in the trio thread and is O(1).
    Not `enabled` (no [metrics] listen), every hook returns at once and
    nothing is counted. A real server's tally is dropped by the first scrape
    after it left the config (forget). Cost per probe, measured on the host:
    about 1 us for `probed` and 0.6 us for `probe_started`, against some
    75 us of the checker's own (bench/checker.py)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tallies: dict[RealServerId, list[float]] = {}
        self.start_delay = Histogram(DELAY_BUCKETS)
        self.late = 0
        self.short = 0  # probes that found the daemon short of its own resources
        self.passes = {True: Histogram(PASS_BUCKETS), False: Histogram(PASS_BUCKETS)}
        self.operations: dict[tuple[str, str], int] = {}
        self.reloads: dict[str, int] = {}
        self.control: dict[tuple[str, str], int] = {}

    # -- health (per probe: keep these cheap) ---------------------------------

    def probed(self, target: RealServerId, result: ProbeResult) -> None:
        if not self.enabled:
            return
        tally = self.tallies.get(target)
        if tally is None:
            tally = self.tallies[target] = [0] * TALLY_SIZE
        tally[_REASON_INDEX[result.reason]] += 1
        tally[BUCKETS_AT + bisect_left(PROBE_BUCKETS, result.latency)] += 1
        tally[SUM_AT] += result.latency

    def transitioned(self, target: RealServerId, transition: Transition) -> None:
        if not self.enabled:
            return
        tally = self.tallies.get(target)
        if tally is None:
            tally = self.tallies[target] = [0] * TALLY_SIZE
        if transition.new is Health.UP:
            tally[UP_AT] += 1
        elif transition.new is Health.DOWN:
            tally[DOWN_AT] += 1

    def probe_started(self, target: Target, lateness: float) -> None:
        """The checker's on_start: how many seconds after its due time."""
        if not self.enabled:
            return
        self.start_delay.observe(lateness)
        if lateness >= LATE_AFTER:
            self.late += 1

    def probe_short(self) -> None:
        """A probe gave no verdict: the daemon was short of its own file
        descriptors or memory (ProbeResult.own)."""
        if self.enabled:
            self.short += 1

    def forget(self, current: Mapping[RealServerId, object]) -> None:
        """Drop the tallies of targets no longer in `current` (a reload
        removed them): their series end with them."""
        for target in [t for t in self.tallies if t not in current]:
            del self.tallies[target]

    # -- the engine ------------------------------------------------------------

    def operation(self, op: Operation, error: KernelError | None) -> None:
        """One operation sent to the kernel: applied (error None) or refused."""
        if not self.enabled:
            return
        key = (operation_kind(op), "applied" if error is None else "refused")
        self.operations[key] = self.operations.get(key, 0) + 1

    def timed_pass(self, *, full: bool) -> _PassTimer:
        """`with events.timed_pass(full=...):` around one pass."""
        return _PassTimer(self.passes[full] if self.enabled else None)

    def reloaded(self, applied: bool) -> None:
        if not self.enabled:
            return
        result = "applied" if applied else "rejected"
        self.reloads[result] = self.reloads.get(result, 0) + 1

    # -- the control socket ------------------------------------------------------

    def answered(self, request: Request, response: Response) -> None:
        if not self.enabled:
            return
        key = (request_command(request), "ok" if response.status == 0 else "error")
        self.control[key] = self.control.get(key, 0) + 1


class _PassTimer:
    def __init__(self, histogram: Histogram | None) -> None:
        self._histogram = histogram
        self._began = 0.0

    def __enter__(self) -> None:
        self._began = time.perf_counter()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._histogram is not None:
            self._histogram.observe(time.perf_counter() - self._began)


class CountedHandler:
    """A control-socket Handler that counts each request by command and
    result (director.control.messages.Handler), then answers as `inner`."""

    def __init__(self, inner: Handler, events: Events) -> None:
        self._inner = inner
        self._events = events

    async def handle(self, request: Request, peer: Peer) -> Response:
        response = await self._inner.handle(request, peer)
        self._events.answered(request, response)
        return response


def request_command(request: Request) -> str:
    """The command label of a control request: director's own command, the
    ipvsadm command of an ipvsadm line ('list', 'add-server', ...; 'list'
    when it names none, as ipvsadm lists), or 'other' for an unknown command
    (a bounded set: a client cannot invent labels)."""
    if request.argv is None:
        name = request.command or ""
        return name if name in _OWN_COMMANDS else "other"
    for arg in request.argv:
        command = _IPVSADM_COMMANDS.get(arg.split("=", 1)[0])
        if command is not None:
            return command
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 2:
            # Bundled short options (-Ln): the command is the first letter.
            command = _IPVSADM_COMMANDS.get(arg[:2])
            if command is not None:
                return command
    return "list"  # ipvsadm's command when none is given


def operation_kind(op: Operation) -> str:
    """'add_destination' for AddDestination: the `op` field of the ipvs_op
    log event (director.ipvs.oplog)."""
    kind = _KINDS.get(type(op))
    if kind is None:
        name = type(op).__name__
        kind = _KINDS[type(op)] = "".join("_" + c.lower() if c.isupper() else c for c in name).lstrip("_")  # fmt: skip
    return kind


_KINDS: dict[type, str] = {}
