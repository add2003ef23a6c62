"""The scrape: the engine's state and the kernel's counters as Prometheus
metric families, gathered when a scrape asks for them.

Two steps, so that the event loop does O(1)-per-server copying only:
`take_snapshot` runs in the trio thread and holds references to what the
engine owns (the effective config, immutable; a copy of the checker's states,
which are frozen values; the admin states and refusals as they are now; the
event counters, director.metrics.events), and `render` turns a snapshot into
the exposition text in a worker thread. `families` is the collector: it
reads one snapshot into metric families at scrape time (and
`SnapshotCollector` is the same as a prometheus_client Collector), so nothing
keeps a gauge per server up to date on each probe.

Names and labels. Everything of ours starts with `director_`; counters end
in `_total`, durations are `_seconds`, times are Unix `_timestamp_seconds`
(Prometheus practice: export the time of the event, and `time() - x` gives
the time since). A real server's series carry node_exporter's ipvs collector
labels (collector/ipvs_linux.go): `local_address`, `local_port`,
`remote_address`, `remote_port`, `proto`, `local_mark`, with its values
(`proto` is TCP, UDP, SCTP or FWM; a fwmark service has an empty
`local_address`, `local_port` "0" and `local_mark` the mark as 8 upper-case
hex digits, as /proc/net/ip_vs prints it; `local_mark` is empty otherwise).
A service's series carry `local_address`, `local_port`, `proto` and
`local_mark`. The kernel's counters are named
`director_ipvs_*` after node_exporter's `node_ipvs_*`: the same labels, so a
dashboard or an alert written for node_exporter carries over by its prefix,
while both exporters can run on one host without colliding (node_exporter
reads every service, ours only the daemon's). node_exporter has per-backend
gauges only; the per-backend counters (`director_ipvs_backend_*_total`) are
the kernel's per-destination stats that it does not read.

Rendering. prometheus_client's generate_latest validates and escapes every
label name of every sample (about 12 us a sample with six labels in 0.2x):
2.6 s for the 200,000 samples of 10,000 real servers. So the families here
are `Family` values whose samples share pre-rendered label sets (a real
server's six labels are formatted once for its twenty-odd series), written
in the text format 0.0.4 by `Family.write` (about 0.5 us a sample), which
every Prometheus accepts (the fallback of its Accept header; OpenMetrics is
not offered). The same families are a prometheus_client Collector
(`SnapshotCollector`, each `Family.metric()` a prometheus_client Metric) for
any registry, and prometheus_client's own process, platform and garbage
collector collectors (`process_*`, `python_info`, `python_gc_*`) are rendered
by its generate_latest and appended. The tests parse the output with prometheus_client's parser and
compare it with the Collector's.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version

import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from director.bgp import BgpStatus
from director.config.model import Config, RealServerId
from director.desired import AdminState
from director.engine import Director
from director.health.state import Health, HealthState
from director.ipvs.model import ServiceEntry, ServiceKey, Stats
from director.metrics.events import (
    BUCKETS_AT,
    DOWN_AT,
    PROBE_BUCKETS,
    REASONS,
    SUM_AT,
    UP_AT,
    Histogram,
    operation_kind,
)
from director.refusals import Refusal, Subject
from director.status import Slots
from director.sync import SyncDaemonStatus
from director.vips import VipStatus

SERVICE_LABELS = ("local_address", "local_port", "proto", "local_mark")
BACKEND_LABELS = (
    "local_address",
    "local_port",
    "remote_address",
    "remote_port",
    "proto",
    "local_mark",
)
HEALTH_STATES = tuple(str(h) for h in Health)
ADMIN_STATES = tuple(str(a) for a in AdminState)
_OUTCOME = {reason: "success" if reason.value == "ok" else "failure" for reason in REASONS}
# The kernel's per-destination and per-service counters (IPVS_STATS_ATTR_*),
# by the name node_exporter gives the global ones (after node_ipvs_, less _total).
_KERNEL_COUNTERS = (
    ("connections", "conns", "Connections scheduled"),
    ("incoming_packets", "inpkts", "Packets in (client to real server)"),
    ("outgoing_packets", "outpkts", "Packets out (real server to client)"),
    ("incoming_bytes", "inbytes", "Bytes in (client to real server)"),
    ("outgoing_bytes", "outbytes", "Bytes out (real server to client)"),
)


@dataclass(frozen=True)
class Snapshot:
    """What one scrape reports. Times in seconds; `trio_now` and `unix_now`
    were read together and convert the engine's clock (trio's) to Unix time."""

    config: Config
    states: Mapping[RealServerId, HealthState]
    admin: Mapping[RealServerId, AdminState]
    refusals: Mapping[Subject, Refusal]
    tallies: Mapping[RealServerId, list[float]]
    start_delay: Histogram
    late: int
    passes: Mapping[bool, Histogram]  # by full (True) or scoped (False)
    operations: Mapping[tuple[str, str], int]
    reloads: Mapping[str, int]
    control: Mapping[tuple[str, str], int]
    last_pass: float  # trio clock; 0.0 before the first
    pass_failing: bool
    trio_now: float
    unix_now: float
    kernel: list[ServiceEntry] | None  # None: the read failed
    kernel_error: str | None = None
    maintenance: bool = False
    vips: tuple[VipStatus, ...] = ()
    sync: tuple[SyncDaemonStatus, ...] = ()
    bgp: BgpStatus | None = None
    # The checker's bounds (max_probes, max_exec_checks, and the lower one a
    # shortage holds), the real servers whose probe waits for a slot now by
    # kind (Checker.waiting_for_slot's), and the probes that found the daemon
    # short of its own resources.
    slots: Slots | None = None
    waiting: Mapping[str, int] = field(default_factory=dict)
    short: int = 0

    def unix(self, at: float) -> float:
        """A time on the engine's clock as Unix time."""
        return self.unix_now - (self.trio_now - at)


def take_snapshot(
    director: Director,
    kernel: list[ServiceEntry] | None,
    kernel_error: str | None = None,
    bgp: BgpStatus | None = None,
) -> Snapshot:
    """The engine's state now. Run in the trio thread (the engine's task owns
    what this reads); O(real servers) in dict copies, nothing formatted.
    `bgp`: director.bgp.BgpKeeper.report's, asked for just before."""
    events = director.events
    checker = director.checker
    states = checker.states()
    events.forget(states)
    return Snapshot(
        config=director.effective,
        states=states,
        admin=director.runtime.admin,
        refusals=dict(director.refusals),
        tallies=dict(events.tallies),
        start_delay=events.start_delay.copy(),
        late=events.late,
        passes={full: h.copy() for full, h in events.passes.items()},
        operations=dict(events.operations),
        reloads=dict(events.reloads),
        control=dict(events.control),
        last_pass=director.last_pass,
        pass_failing=director.pass_error is not None,
        trio_now=trio.current_time(),
        unix_now=time.time(),
        kernel=kernel,
        kernel_error=kernel_error,
        maintenance=director.vips.maintenance,
        vips=director.vips.report(trio.current_time()),
        sync=director.sync.report(trio.current_time()),
        bgp=bgp,
        slots=Slots.of(checker),
        waiting=Counter(kind for _, kind in checker.waiting_for_slot().values()),
        short=events.short,
    )


def labels(names: Sequence[str], values: Sequence[str]) -> str:
    """A label set rendered once, 'a="x",b="y"' (values escaped as the text
    format wants), for every sample that carries it."""
    return ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True))


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Family:
    """One metric family: `name` (a counter's without `_total`), its type
    (gauge, counter, histogram), help, and its sample lines in the text
    format. Lines, not sample objects: strings are no work for the garbage
    collector, and 200,000 tuples made it run a full collection or two per
    scrape (half the render's time)."""

    __slots__ = ("help", "kind", "lines", "name")

    def __init__(self, name: str, kind: str, help: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help
        self.lines: list[str] = []

    def add(self, labels: str, value: float, extra: str = "") -> None:
        """A sample: `labels` and `extra` as made by labels()."""
        name = self.name + "_total" if self.kind == "counter" else self.name
        self.lines.append(_line(name, labels, extra, value))

    def add_histogram(
        self, labels: str, bounds: Sequence[str], counts: Iterable[float], total: float
    ) -> None:
        """Bucket counts per bound (the last +Inf), not cumulative; `bounds`
        are the `le` labels (le_labels)."""
        cumulative = 0.0
        append, name = self.lines.append, self.name
        for le, count in zip(bounds, counts, strict=True):
            cumulative += count
            append(_line(name + "_bucket", labels, le, cumulative))
        append(_line(name + "_count", labels, "", cumulative))
        append(_line(name + "_sum", labels, "", total))

    def header(self) -> str:
        shown = self.name + "_total" if self.kind == "counter" else self.name
        help = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        return f"# HELP {shown} {help}\n# TYPE {shown} {self.kind}"

    def write(self, out: list[str]) -> None:
        """Append the family in the text format 0.0.4, one line an item."""
        out.append(self.header())
        out.extend(self.lines)

    def metric(self) -> Metric:
        """The family as a prometheus_client Metric (read back through
        prometheus_client's text parser, so it is what `write` serves)."""
        text = "\n".join([self.header(), *self.lines]) + "\n"
        (metric,) = text_string_to_metric_families(text)
        return metric


def _line(name: str, labels: str, extra: str, value: float) -> str:
    if labels and extra:
        return f"{name}{{{labels},{extra}}} {_number(value)}"
    if labels or extra:
        return f"{name}{{{labels or extra}}} {_number(value)}"
    return f"{name} {_number(value)}"


def _number(value: float) -> str:
    if type(value) is int:
        return str(value)
    if math.isfinite(value):
        return repr(float(value))
    return "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")


def le_labels(bounds: Iterable[float]) -> list[str]:
    """The `le` label of each bucket, +Inf last: '0.0005', '1.0', ... (as
    prometheus_client's own histograms write them)."""
    return [*(labels(("le",), (repr(float(b)),)) for b in bounds), 'le="+Inf"']


def service_labels(key: ServiceKey) -> list[str]:
    """SERVICE_LABELS' values for a service, as node_exporter gives them."""
    if key.is_fwmark:
        return ["", "0", "FWM", f"{key.fwmark:08X}"]
    protocol = key.protocol.name if key.protocol is not None else ""
    return [str(key.address), str(key.port), protocol, ""]


def _backend(service: list[str], address: object, port: int) -> str:
    """BACKEND_LABELS rendered, by hand: made for every real server twice a
    scrape, and no value of theirs needs escaping (addresses, numbers,
    TCP/UDP/SCTP/FWM, hex digits)."""
    local_address, local_port, proto, local_mark = service
    return (
        f'local_address="{local_address}",local_port="{local_port}",'
        f'remote_address="{address}",remote_port="{port}",'
        f'proto="{proto}",local_mark="{local_mark}"'
    )


def families(snapshot: Snapshot) -> list[Family]:
    """Every metric family of a snapshot (the daemon's, then the kernel's)."""
    return [
        *_real_servers(snapshot),
        *_daemon(snapshot),
        *_directors(snapshot),
        *_kernel(snapshot),
    ]


_STATE = {name: labels(("state",), (name,)) for name in (*HEALTH_STATES, *ADMIN_STATES)}
_TO = {health: labels(("to",), (str(health),)) for health in (Health.UP, Health.DOWN)}
_PROBE = [labels(("outcome", "reason"), (_OUTCOME[r], str(r))) for r in REASONS]
_PROBE_LE = le_labels(PROBE_BUCKETS)


def _real_servers(s: Snapshot) -> list[Family]:
    health = Family(
        "director_real_server_health",
        "gauge",
        "Health of a real server: 1 for its current state (up, down, unknown), 0 for the others.",
    )
    admin = Family(
        "director_real_server_admin",
        "gauge",
        "Admin state of a real server (enabled, drain, disabled): 1 for the current one.",
    )
    weight = Family(
        "director_real_server_configured_weight",
        "gauge",
        "Weight of a real server in the config (its weight in the kernel is "
        "director_ipvs_backend_weight).",
    )
    since = Family(
        "director_real_server_last_transition_timestamp_seconds",
        "gauge",
        "When a real server entered its current health state (the daemon's start while unknown).",
    )
    probes = Family(
        "director_real_server_probes",
        "counter",
        "Probes of a real server by outcome (success, failure) and reason.",
    )
    transitions = Family(
        "director_real_server_transitions",
        "counter",
        "Health transitions of a real server, by the state entered (up, down).",
    )
    latency = Family(
        "director_probe_duration_seconds",
        "histogram",
        "Probe latency, from its start to its verdict, of a service's real servers.",
    )
    quorum = Family(
        "director_service_quorum",
        "gauge",
        "Real servers a service needs up before its sorry server leaves (quorum).",
    )
    up = Family(
        "director_service_real_servers_up",
        "gauge",
        "Real servers of a service that are up and enabled (what quorum counts).",
    )
    configured = Family(
        "director_service_real_servers", "gauge", "Real servers configured for a service."
    )
    states, admins, tallies = s.states, s.admin, s.tallies
    enabled = AdminState.ENABLED
    unknown = HealthState(since=s.trio_now)  # not in the checker yet: unknown from now
    width = len(PROBE_BUCKETS) + 1
    to_up, to_down = _TO[Health.UP], _TO[Health.DOWN]
    health_states = [(name, _STATE[name]) for name in HEALTH_STATES]
    admin_states = [(name, _STATE[name]) for name in ADMIN_STATES]
    for vs in s.config.virtual_servers:
        service = service_labels(vs.key)
        counts = [0] * width
        latency_sum = 0.0
        up_count = 0
        for rid, rs in zip(vs.real_server_ids, vs.real_servers, strict=True):
            row = _backend(service, rs.address, rs.port)
            state = states.get(rid, unknown)
            status = state.status.value
            for name, extra in health_states:
                health.add(row, 1 if name == status else 0, extra)
            admin_state = admins.get(rid, enabled)
            if admin_state is enabled and state.status is Health.UP:
                up_count += 1
            current = admin_state.value
            for name, extra in admin_states:
                admin.add(row, 1 if name == current else 0, extra)
            weight.add(row, rs.weight)
            since.add(row, round(s.unix(state.since), 3))
            tally = tallies.get(rid)
            if tally is None:
                transitions.add(row, 0, to_up)
                transitions.add(row, 0, to_down)
                continue
            for i, extra in enumerate(_PROBE):
                if tally[i]:
                    probes.add(row, tally[i], extra)
            transitions.add(row, tally[UP_AT], to_up)
            transitions.add(row, tally[DOWN_AT], to_down)
            for i in range(width):
                counts[i] += int(tally[BUCKETS_AT + i])
            latency_sum += tally[SUM_AT]
        per_service = labels(SERVICE_LABELS, service)
        latency.add_histogram(per_service, _PROBE_LE, counts, latency_sum)
        quorum.add(per_service, vs.quorum)
        up.add(per_service, up_count)
        configured.add(per_service, len(vs.real_servers))
    return [health, admin, weight, since, probes, transitions, latency, quorum, up, configured]


def _histogram(
    name: str, help: str, histograms: Mapping[tuple[str, ...], Histogram], names: list[str]
) -> Family:
    family = Family(name, "histogram", help)
    for values, h in histograms.items():
        family.add_histogram(labels(names, values), le_labels(h.bounds), h.counts, h.total)
    return family


def _single(name: str, kind: str, help: str, value: float) -> Family:
    family = Family(name, kind, help)
    family.add("", value)
    return family


def _by(
    name: str,
    kind: str,
    help: str,
    names: tuple[str, ...],
    values: Iterable[tuple[tuple[str, ...], float]],
) -> Family:
    family = Family(name, kind, help)
    for key, value in sorted(values):
        family.add(labels(names, key), value)
    return family


def _daemon(s: Snapshot) -> list[Family]:
    refused: dict[tuple[str, ...], float] = {}
    for refusal in s.refusals.values():
        kind = (operation_kind(refusal.operation),)
        refused[kind] = refused.get(kind, 0) + 1
    return [
        _by(
            "director_build_info",
            "gauge",
            "The running directord's version (value 1).",
            ("version",),
            [((_version(),), 1)],
        ),
        _histogram(
            "director_probe_start_delay_seconds",
            "How late the checker started a probe after its due time.",
            {(): s.start_delay},
            [],
        ),
        _single(
            "director_probes_late",
            "counter",
            "Probes started a second or more after their due time (the checker is behind).",
            s.late,
        ),
        *_slots(s),
        _histogram(
            "director_pass_duration_seconds",
            "Duration of the engine's reconcile passes: full (every service) or scoped.",
            {("full" if full else "scoped",): h for full, h in s.passes.items()},
            ["scope"],
        ),
        _single(
            "director_last_pass_timestamp_seconds",
            "gauge",
            "When the engine last completed a reconcile pass.",
            round(s.unix(s.last_pass), 3) if s.last_pass else 0,
        ),
        _single(
            "director_pass_failing",
            "gauge",
            "1 while the engine's passes fail (the kernel cannot be read or written), else 0.",
            1 if s.pass_failing else 0,
        ),
        _by(
            "director_ipvs_operations",
            "counter",
            "Operations sent to the kernel, by kind (add_destination, ...) and result "
            "(applied, refused).",
            ("kind", "result"),
            s.operations.items(),
        ),
        _by(
            "director_ipvs_refused_operations",
            "gauge",
            "Operations the kernel refuses now and the engine retries, by kind.",
            ("kind",),
            refused.items(),
        ),
        _by(
            "director_reloads",
            "counter",
            "Config reloads (SIGHUP, directorctl reload) by result (applied, rejected).",
            ("result",),
            [((r,), s.reloads.get(r, 0)) for r in ("applied", "rejected")],
        ),
        _by(
            "director_control_requests",
            "counter",
            "Control-socket requests by command (ipvsadm's or directorctl's) and result "
            "(ok, error).",
            ("command", "result"),
            s.control.items(),
        ),
    ]


def _slots(s: Snapshot) -> list[Family]:
    """The checker's bounds on probes at once and the real servers whose
    probe waits for one now, by kind: what tells a probes_late alert's
    cause (a limit, a shortage of files) from a short CPU."""
    kinds = ("probe", "exec", "short")
    bounds = {} if s.slots is None else s.slots.bounds()
    return [
        _by(
            "director_probe_slots",
            "gauge",
            "Probes that may run at once, by kind: probe ([daemon] max_probes), exec "
            "([daemon] max_exec_checks), short (fewer, for a while after a probe found the "
            "daemon out of file descriptors; absent otherwise).",
            ("kind",),
            [((kind,), most) for kind, most in bounds.items()],
        ),
        _by(
            "director_probes_waiting",
            "gauge",
            "Real servers whose probe is due and waits for a slot now, by the slot's kind.",
            ("kind",),
            [((kind,), s.waiting.get(kind, 0)) for kind in kinds],
        ),
        _single(
            "director_probes_short_of_resources",
            "counter",
            "Probes that gave no verdict because the daemon was short of its own file "
            "descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM).",
            s.short,
        ),
    ]


def _directors(s: Snapshot) -> list[Family]:
    """Maintenance, the VIPs on interfaces, the sync daemons and BGP: what
    a pair or a group of directors is watched by."""
    families = [
        _single(
            "director_maintenance",
            "gauge",
            "1 while the director is in maintenance (directorctl maintenance on), else 0.",
            1 if s.maintenance else 0,
        ),
        _by(
            "director_vip_present",
            "gauge",
            "1 while a VIP the config names is on its vip_interface (put there by the "
            "daemon), else 0.",
            ("address", "interface"),
            [((v.address, v.interface), 1 if v.state.startswith("present") else 0) for v in s.vips],
        ),
        _by(
            "director_ipvs_sync_daemon_running",
            "gauge",
            "1 while a sync daemon of [ipvs.sync] runs as configured, by state (master, "
            "backup), else 0.",
            ("state",),
            [
                ((d.state,), 1 if d.wanted and d.error is None and d.refused is None else 0)
                for d in s.sync
            ],
        ),
    ]
    if s.bgp is None:
        return families
    return [
        *families,
        _single(
            "director_bgp_speaker_up",
            "gauge",
            "1 while BIRD, the BGP speaker directord runs for [bgp], is running, else 0.",
            1 if s.bgp.speaker == "running" else 0,
        ),
        _by(
            "director_bgp_session_established",
            "gauge",
            "1 while the BGP session with a [[bgp.peer]] is established, else 0.",
            ("peer", "peer_as"),
            [
                ((p.address, str(p.as_number)), 1 if p.state.startswith("Established") else 0)
                for p in s.bgp.peers
            ],
        ),
        _by(
            "director_bgp_route_announced",
            "gauge",
            "1 while a VIP (a service with bgp = true) is announced to the peers, else 0.",
            ("prefix",),
            [((r.address,), 1 if r.announced else 0) for r in s.bgp.routes],
        ),
    ]


def _kernel(s: Snapshot) -> list[Family]:
    read = _single(
        "director_ipvs_read_success",
        "gauge",
        "1 when this scrape read the kernel's IPVS table, 0 when it failed "
        "(the director_ipvs_* series are then absent).",
        0 if s.kernel is None else 1,
    )
    if s.kernel is None:
        return [read]
    active = Family(
        "director_ipvs_backend_connections_active",
        "gauge",
        "The current active connections by local and remote address (ipvsadm's ActiveConn).",
    )
    inactive = Family(
        "director_ipvs_backend_connections_inactive",
        "gauge",
        "The current inactive connections by local and remote address (ipvsadm's InActConn).",
    )
    weight = Family(
        "director_ipvs_backend_weight",
        "gauge",
        "The current backend weight in the kernel by local and remote address.",
    )
    backend = [
        (field, Family(f"director_ipvs_backend_{name}", "counter", f"{doc}, per real server."))
        for name, field, doc in _KERNEL_COUNTERS
    ]
    service = [
        (field, Family(f"director_ipvs_{name}", "counter", f"{doc}, per virtual service."))
        for name, field, doc in _KERNEL_COUNTERS
    ]
    seen: set[tuple[str, ...]] = set()
    for entry in s.kernel:
        values = service_labels(entry.service.key)
        if tuple(values) in seen:
            # An IPv4 and an IPv6 fwmark service of one mark have the same
            # labels (node_exporter's too): the first one is reported.
            continue
        seen.add(tuple(values))
        _add_stats(service, labels(SERVICE_LABELS, values), entry.stats)
        for dest in entry.destinations:
            d = dest.destination
            row = _backend(values, d.address, d.port)
            active.add(row, dest.active_conns)
            inactive.add(row, dest.inact_conns)
            weight.add(row, d.weight)
            _add_stats(backend, row, dest.stats)
    return [read, active, inactive, weight, *(f for _, f in backend), *(f for _, f in service)]


def _add_stats(families: list[tuple[str, Family]], row: str, stats: Stats) -> None:
    for name, family in families:
        family.add(row, getattr(stats, name))


@cache
def _version() -> str:
    try:
        return version("director")
    except PackageNotFoundError:
        return "unknown"


class SnapshotCollector(Collector):
    """A prometheus_client Collector of one snapshot's families."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return (family.metric() for family in families(self.snapshot) if family.lines)


_PROCESS = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS)
PlatformCollector(registry=_PROCESS)
GCCollector(registry=_PROCESS)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def render(snapshot: Snapshot, gzipped: bool = False) -> bytes:
    """The exposition of `snapshot` in the text format 0.0.4 (CONTENT_TYPE),
    followed by prometheus_client's process_*, python_info and python_gc_* metrics;
    gzipped when asked. Blocking: run it in a worker thread. Joined, encoded
    and compressed a family at a time: one join of 30 MB would hold the GIL
    from the event loop for tens of milliseconds."""
    chunks: list[bytes] = []
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS) if gzipped else None
    for family in families(snapshot):
        lines = [family.header()]
        for start in range(0, len(family.lines), _CHUNK_LINES):
            lines.extend(family.lines[start : start + _CHUNK_LINES])
            _emit(chunks, compressor, lines)
            lines = []
        _emit(chunks, compressor, lines)
    _emit(chunks, compressor, [generate_latest(_PROCESS).decode("utf-8").rstrip("\n")])
    if compressor is not None:
        chunks.append(compressor.flush())
    return b"".join(chunks)


_CHUNK_LINES = 2000


def _emit(chunks: list[bytes], compressor: zlib._Compress | None, lines: list[str]) -> None:
    if not lines:
        return
    data = ("\n".join(lines) + "\n").encode("utf-8")
    # Level 1 (above): about as small for this repetitive text as level 9, at a fraction
    # of its CPU.
    chunks.append(data if compressor is None else compressor.compress(data))
