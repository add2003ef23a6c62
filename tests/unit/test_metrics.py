"""Metrics: [metrics] in the config, the event counters, and what a scrape
reports of the engine over the in-memory backend, in virtual time."""

from __future__ import annotations

import errno
import random
from ipaddress import ip_address
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry
from test_engine import (
    CONFIG,
    CONFIG_TEMPLATE,
    TWO_SERVICES,
    VIP,
    FakeNetwork,
    FaultyKernel,
    faulty_director,
    make_director,
    refuses_destination,
)

from director.config import ConfigError, parse_config
from director.config.model import MetricsSettings, restart_needed
from director.control.messages import Peer, Request, Response
from director.desired import AdminState
from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.state import Health, Transition
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import (
    Destination,
    DestinationEntry,
    Protocol,
    Service,
    ServiceEntry,
    ServiceKey,
    Stats,
)
from director.ipvs.ops import AddDestination, DeleteService
from director.kernel import KernelTable
from director.metrics.collect import (
    Snapshot,
    SnapshotCollector,
    families,
    render,
    take_snapshot,
)
from director.metrics.endpoint import Scraper
from director.metrics.events import (
    LATE_AFTER,
    CountedHandler,
    Events,
    Histogram,
    operation_kind,
    request_command,
)
from director.runtime import RuntimeLayer

METRICS = '\n[metrics]\nlisten = "127.0.0.1:9531"\n'
RS1 = {
    "local_address": "10.0.0.1",
    "local_port": "80",
    "remote_address": "10.0.1.1",
    "remote_port": "80",
    "proto": "TCP",
    "local_mark": "",
}
RS2 = {**RS1, "remote_address": "10.0.1.2"}
SERVICE = {k: RS1[k] for k in ("local_address", "local_port", "proto", "local_mark")}


def inline(backend: MemoryBackend) -> KernelTable:
    return KernelTable(backend, threaded=False)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition, by (name, labels); a repeated series fails."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = sample.value
    return samples


def value(samples: Samples, name: str, labels: dict[str, str] | None = None) -> float:
    return samples[(name, frozenset((labels or {}).items()))]


async def scrape(director: Director) -> Samples:
    return parse((await Scraper(director, director.kernel).scrape()).decode())


# -- [metrics] in the config --------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9531", MetricsSettings("127.0.0.1:9531", ip_address("127.0.0.1"), 9531)),
        ("[::1]:9531", MetricsSettings("[::1]:9531", ip_address("::1"), 9531)),
        ("0.0.0.0:9100", MetricsSettings("0.0.0.0:9100", ip_address("0.0.0.0"), 9100)),
        ("/run/d/metrics.sock", MetricsSettings("/run/d/metrics.sock", path="/run/d/metrics.sock")),
    ],
)
def test_metrics_listen_takes_an_ip_endpoint_or_a_socket_path(
    listen: str, expected: MetricsSettings
) -> None:
    config = parse_config(f'[metrics]\nlisten = "{listen}"\n')
    assert config.metrics == expected


def test_metrics_are_off_when_the_section_or_the_key_is_absent() -> None:
    assert parse_config("").metrics.listen is None
    assert parse_config("[metrics]\n").metrics.listen is None


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            'listen = "localhost:9531"',
            'metrics.listen: "localhost" is not an IP address (no host names): expected an IP address and port',
        ),
        ('listen = "127.0.0.1"', "metrics.listen: no port: expected an IP address and port"),
        ('listen = "127.0.0.1:0"', "metrics.listen: port 0 is not in 1..65535: expected"),
        ('listen = "127.0.0.1:99999"', "metrics.listen: port 99999 is not in 1..65535: expected"),
        ('listen = "[::1]:70000"', "metrics.listen: port 70000 is not in 1..65535: expected"),
        ('listen = "127.0.0.1:http"', 'metrics.listen: port "http" is not a number: expected'),
        ('listen = "::1:9531"', "metrics.listen: an IPv6 address goes in brackets: expected"),
        ('listen = "run/metrics.sock"', "metrics.listen: no port: expected an IP address and port"),
        ('listen = "/' + "x" * 120 + '"', "metrics.listen: longer than a socket path may be"),
        ('port = 9531\nlisten = "127.0.0.1:9531"', "metrics.port: unknown key"),
    ],
)
def test_a_bad_metrics_setting_is_an_error_naming_the_key(text: str, error: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(f"[metrics]\n{text}\n")
    assert any(e.startswith(error) for e in raised.value.errors), raised.value.errors


def test_a_reload_that_changes_metrics_listen_needs_a_restart() -> None:
    old = parse_config('[metrics]\nlisten = "127.0.0.1:9531"\n')
    assert restart_needed(old, parse_config('[metrics]\nlisten = "127.0.0.1:9531"\n')) == []
    assert restart_needed(old, parse_config("")) == [
        '[metrics] listen: "127.0.0.1:9531" -> (not set)'
    ]
    assert restart_needed(old, parse_config('[metrics]\nlisten = "[::1]:9531"\n')) == [
        '[metrics] listen: "127.0.0.1:9531" -> "[::1]:9531"'
    ]


async def test_reload_file_rejects_a_new_listen_and_counts_both_results(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "director.toml"
    path.write_text(CONFIG + METRICS)
    director = make_director(MemoryBackend(), FakeNetwork("10.0.1.1"), extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        assert (await director.reload_file(path)).summary is not None
        path.write_text(CONFIG)
        result = await director.reload_file(path)
        assert result.summary is None
        assert '[metrics] listen: "127.0.0.1:9531" -> (not set) needs a restart' in result.errors[0]
        samples = await scrape(director)
        assert value(samples, "director_reloads_total", {"result": "applied"}) == 1
        assert value(samples, "director_reloads_total", {"result": "rejected"}) == 1
        nursery.cancel_scope.cancel()


# -- the event counters ---------------------------------------------------------------


def test_without_metrics_listen_nothing_is_counted() -> None:
    director = make_director(MemoryBackend(), FakeNetwork())
    assert not director.events.enabled
    target = director.effective.virtual_servers[0].real_server_ids[0]
    director.events.probed(target, ProbeResult.success(0.001))
    director.events.operation(DeleteService(VIP), None)
    with director.events.timed_pass(full=True):
        pass
    assert director.events.tallies == {} and director.events.operations == {}
    assert sum(director.events.passes[True].counts) == 0
    assert make_director(MemoryBackend(), FakeNetwork(), extra=METRICS).events.enabled


def test_a_probe_is_counted_by_reason_and_latency_bucket() -> None:
    events = Events()
    target = parse_config(CONFIG).virtual_servers[0].real_server_ids[0]
    events.probed(target, ProbeResult.success(0.0004))
    events.probed(target, ProbeResult.failure(Reason.TIMEOUT, 0.5))
    events.probed(target, ProbeResult.failure(Reason.TIMEOUT, 20.0))
    tally = events.tallies[target]
    assert tally[list(Reason).index(Reason.OK)] == 1
    assert tally[list(Reason).index(Reason.TIMEOUT)] == 2


def test_probe_start_delays_of_a_second_or_more_count_as_late() -> None:
    events = Events()
    check = parse_config(CONFIG).virtual_servers[0].check
    target = (check, ip_address("10.0.1.1"), 80)
    for lateness in (0.0, 0.2, LATE_AFTER - 0.001, LATE_AFTER, 30.0):
        events.probe_started(target, lateness)
    assert events.late == 2
    assert sum(events.start_delay.counts) == 5


def test_a_histogram_puts_a_value_on_a_bound_in_that_bucket() -> None:
    histogram = Histogram((0.1, 1.0))
    for observed in (0.1, 0.5, 1.0, 1.5):
        histogram.observe(observed)
    assert histogram.counts == [1, 2, 1]
    assert histogram.total == pytest.approx(3.1)


@pytest.mark.parametrize(
    ("request_", "command"),
    [
        (Request(argv=("-Ln",)), "list"),
        (Request(argv=("-L", "-n", "--stats")), "list"),
        (Request(argv=()), "list"),
        (Request(argv=("-a", "-t", "10.0.0.1:80", "-r", "10.0.1.1:80")), "add-server"),
        (Request(argv=("--add-service", "-t", "10.0.0.1:80")), "add-service"),
        (Request(argv=("-S", "-n")), "save"),
        (Request(argv=("-R",)), "restore"),
        (Request(argv=("--set", "5", "10", "300")), "set"),
        (Request(command="status"), "status"),
        (Request(command="drain"), "drain"),
        (Request(command="no such command"), "other"),
    ],
)
def test_control_requests_are_named_by_their_command(request_: Request, command: str) -> None:
    assert request_command(request_) == command


def test_an_operation_kind_is_the_op_of_its_log_event() -> None:
    assert operation_kind(DeleteService(VIP)) == "delete_service"
    destination = Destination(ip_address("10.0.1.1"), 80)
    assert operation_kind(AddDestination(VIP, destination)) == "add_destination"


async def test_control_requests_are_counted_by_command_and_result() -> None:
    class Answers:
        async def handle(self, request: Request, peer: Peer) -> Response:
            return Response(0 if request.command == "status" else 255)

    events = Events()
    handler = CountedHandler(Answers(), events)
    peer = Peer(0, 0, 1, True)
    for request in (Request(command="status"), Request(command="status"), Request(argv=("-C",))):
        await handler.handle(request, peer)
    assert events.control == {("status", "ok"): 2, ("clear", "error"): 1}


# -- a scrape of the engine -------------------------------------------------------------


async def test_a_scrape_shows_health_weights_probes_and_transitions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    network = FakeNetwork("10.0.1.1", "10.0.1.2")
    director = make_director(MemoryBackend(), network, extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        samples = await scrape(director)
        for rs, weight in ((RS1, 5), (RS2, 7)):
            assert value(samples, "director_real_server_health", {**rs, "state": "up"}) == 1
            assert value(samples, "director_real_server_health", {**rs, "state": "down"}) == 0
            assert value(samples, "director_real_server_configured_weight", rs) == weight
            assert value(samples, "director_ipvs_backend_weight", rs) == weight
            assert value(samples, "director_real_server_transitions_total", {**rs, "to": "up"}) == 1
        assert value(samples, "director_service_real_servers_up", SERVICE) == 2
        assert value(samples, "director_ipvs_read_success") == 1

        network.alive.discard(ip_address("10.0.1.2"))
        killed = trio.current_time()
        await trio.sleep(3.5)  # fall = 3 at a 1 s interval
        samples = await scrape(director)
        assert value(samples, "director_real_server_health", {**RS2, "state": "down"}) == 1
        assert value(samples, "director_real_server_transitions_total", {**RS2, "to": "down"}) == 1
        failed = {**RS2, "outcome": "failure", "reason": "refused"}
        assert value(samples, "director_real_server_probes_total", failed) == 3
        ok = {**RS2, "outcome": "success", "reason": "ok"}
        assert value(samples, "director_real_server_probes_total", ok) >= 1
        assert ("director_ipvs_backend_weight", frozenset(RS2.items())) not in samples
        assert value(samples, "director_service_real_servers_up", SERVICE) == 1
        since = value(samples, "director_real_server_last_transition_timestamp_seconds", RS2)
        # The transition's Unix time: the scrape's, less the virtual seconds since it.
        down_after = trio.current_time() - killed
        assert since <= value(samples, "director_last_pass_timestamp_seconds")
        assert down_after > 2.0
        # Every probe of the service is in its latency histogram.
        probes = sum(
            v
            for (name, labels), v in samples.items()
            if name == "director_real_server_probes_total"
        )
        assert value(samples, "director_probe_duration_seconds_count", SERVICE) == probes
        bucket = {**SERVICE, "le": "0.01"}
        assert value(samples, "director_probe_duration_seconds_bucket", bucket) == probes
        assert (
            value(
                samples,
                "director_ipvs_operations_total",
                {"kind": "add_destination", "result": "applied"},
            )
            == 2
        )
        assert (
            value(
                samples,
                "director_ipvs_operations_total",
                {"kind": "delete_destination", "result": "applied"},
            )
            == 1
        )
        assert value(samples, "director_pass_duration_seconds_count", {"scope": "scoped"}) >= 3
        assert value(samples, "director_pass_failing") == 0
        # Each probe start was timed against its due time (one per target here).
        assert value(samples, "director_probe_start_delay_seconds_count") >= probes
        assert value(samples, "director_probes_late_total") == 0
        nursery.cancel_scope.cancel()


async def test_a_scrape_shows_the_admin_state(autojump_clock: trio.testing.MockClock) -> None:
    director = make_director(MemoryBackend(), FakeNetwork("10.0.1.1", "10.0.1.2"), extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        rid = director.effective.virtual_servers[0].real_server_ids[1]

        async def drain() -> None:
            await director.commit(RuntimeLayer(admin={rid: AdminState.DRAIN}), "test")

        await director.exclusive(drain)
        samples = await scrape(director)
        assert value(samples, "director_real_server_admin", {**RS2, "state": "drain"}) == 1
        assert value(samples, "director_real_server_admin", {**RS2, "state": "enabled"}) == 0
        assert value(samples, "director_real_server_admin", {**RS1, "state": "enabled"}) == 1
        assert value(samples, "director_ipvs_backend_weight", RS2) == 0
        assert value(samples, "director_service_real_servers_up", SERVICE) == 1
        nursery.cancel_scope.cancel()


async def test_refused_operations_are_counted_and_shown_while_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    backend.refuse = refuses_destination("10.0.1.2", errno.EINVAL)
    director = faulty_director(
        backend, FakeNetwork("10.0.1.1", "10.0.1.2", "10.0.2.1"), TWO_SERVICES + METRICS
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(10)
        samples = await scrape(director)
        refused = {"kind": "add_destination", "result": "refused"}
        assert value(samples, "director_ipvs_operations_total", refused) >= 3
        assert value(samples, "director_ipvs_refused_operations", {"kind": "add_destination"}) == 1
        backend.refuse = lambda op: None
        await trio.sleep(10)
        samples = await scrape(director)
        assert (
            "director_ipvs_refused_operations",
            frozenset({("kind", "add_destination")}),
        ) not in samples
        nursery.cancel_scope.cancel()


async def test_a_failed_kernel_read_is_a_gauge_not_a_failed_scrape(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1"), TWO_SERVICES + METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        backend.reads_failing = 100
        samples = await scrape(director)
        assert value(samples, "director_ipvs_read_success") == 0
        assert not any(name.startswith("director_ipvs_backend") for name, _ in samples)
        assert value(samples, "director_real_server_health", {**RS1, "state": "up"}) == 1
        nursery.cancel_scope.cancel()


async def test_two_scrapes_within_the_cache_read_the_kernel_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = FaultyKernel()
    director = faulty_director(backend, FakeNetwork("10.0.1.1"), TWO_SERVICES + METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        scraper = Scraper(director, inline(backend), cache=2.0)
        reads = backend.reads
        async with trio.open_nursery() as scrapes:
            scrapes.start_soon(scraper.scrape)
            scrapes.start_soon(scraper.scrape)
        await scraper.scrape()
        assert backend.reads - reads == 1 == scraper.kernel_reads
        await trio.sleep(2.0)
        await scraper.scrape()
        assert scraper.kernel_reads == 2
        nursery.cancel_scope.cancel()


async def test_a_removed_real_server_leaves_the_scrape_and_its_tally(
    autojump_clock: trio.testing.MockClock,
) -> None:
    director = make_director(MemoryBackend(), FakeNetwork("10.0.1.1", "10.0.1.2"), extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        one_server = CONFIG.split('[[virtual_server.real_server]]\naddress = "10.0.1.2:80"')[0]

        async def reload() -> None:
            await director.reload(parse_config(one_server))

        await director.exclusive(reload)
        samples = await scrape(director)
        assert not any(dict(labels).get("remote_address") == "10.0.1.2" for _, labels in samples)
        assert len(director.events.tallies) == 1
        nursery.cancel_scope.cancel()


# -- the kernel's counters ----------------------------------------------------------------


def kernel_snapshot(entries: list[ServiceEntry], config: str = CONFIG) -> Snapshot:
    director = Director(parse_config(config + METRICS), inline(MemoryBackend()))
    return take_snapshot(director, entries)


async def test_kernel_counters_carry_node_exporters_labels() -> None:
    fwm = ServiceKey.mark(10)
    stats = Stats(conns=3, inpkts=40, outpkts=30, inbytes=5000, outbytes=7000)
    entries = [
        ServiceEntry(
            Service(VIP),
            (
                DestinationEntry(
                    Destination(ip_address("10.0.1.1"), 80, weight=5),
                    active_conns=2,
                    inact_conns=1,
                    stats=stats,
                ),
            ),
            stats=Stats(conns=9, inbytes=99),
        ),
        ServiceEntry(
            Service(fwm),
            (DestinationEntry(Destination(ip_address("10.0.1.9"), 8080, weight=1)),),
        ),
    ]
    samples = parse(render(kernel_snapshot(entries)).decode())
    assert value(samples, "director_ipvs_backend_connections_active", RS1) == 2
    assert value(samples, "director_ipvs_backend_connections_inactive", RS1) == 1
    assert value(samples, "director_ipvs_backend_connections_total", RS1) == 3
    assert value(samples, "director_ipvs_backend_incoming_packets_total", RS1) == 40
    assert value(samples, "director_ipvs_backend_outgoing_packets_total", RS1) == 30
    assert value(samples, "director_ipvs_backend_incoming_bytes_total", RS1) == 5000
    assert value(samples, "director_ipvs_backend_outgoing_bytes_total", RS1) == 7000
    assert value(samples, "director_ipvs_connections_total", SERVICE) == 9
    assert value(samples, "director_ipvs_incoming_bytes_total", SERVICE) == 99
    marked = {
        "local_address": "",
        "local_port": "0",
        "remote_address": "10.0.1.9",
        "remote_port": "8080",
        "proto": "FWM",
        "local_mark": "0000000A",
    }
    assert value(samples, "director_ipvs_backend_weight", marked) == 1


async def test_an_ipv6_real_server_is_labelled_as_node_exporter_does() -> None:
    key = ServiceKey.inet(Protocol.UDP, "2001:db8::1", 53)
    entry = ServiceEntry(
        Service(key), (DestinationEntry(Destination(ip_address("2001:db8::10"), 53)),)
    )
    samples = parse(render(kernel_snapshot([entry])).decode())
    labels = {
        "local_address": "2001:db8::1",
        "local_port": "53",
        "remote_address": "2001:db8::10",
        "remote_port": "53",
        "proto": "UDP",
        "local_mark": "",
    }
    assert value(samples, "director_ipvs_backend_weight", labels) == 1


def test_a_transition_to_unknown_counts_nowhere() -> None:
    events = Events()
    target = parse_config(CONFIG).virtual_servers[0].real_server_ids[0]
    events.transitioned(
        target, Transition(Health.UP, Health.UNKNOWN, 0.0, 0.0, Reason.OK, "", 0, 0)
    )
    events.transitioned(target, Transition(Health.UP, Health.DOWN, 0.0, 0.0, Reason.OK, "", 0, 1))
    assert events.tallies[target][-2:] == [0, 1]


# -- the Collector and the served text agree ------------------------------------------------


async def test_the_collector_yields_what_the_endpoint_serves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    director = make_director(MemoryBackend(), FakeNetwork("10.0.1.1"), extra=METRICS)
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        await trio.sleep(1.1)
        snapshot = take_snapshot(director, await director.kernel.services())
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(snapshot))
        through_client = parse(generate_latest(registry).decode())
        served = parse(render(snapshot).decode())
        ours = {key: v for key, v in served.items() if key[0].startswith("director_")}
        assert ours == through_client
        assert len({f.name for f in families(snapshot)}) == len(families(snapshot))
        nursery.cancel_scope.cancel()


async def test_maintenance_vips_sync_daemons_and_bgp_are_gauges() -> None:
    from dataclasses import replace

    from director.bgp import BgpPeerStatus, BgpRouteStatus, BgpStatus
    from director.sync import SyncDaemonStatus
    from director.vips import VipStatus

    base = kernel_snapshot([])
    vips = (
        VipStatus("10.0.0.1/32", "director0", ("tcp:10.0.0.1:80",), "present (ours)", "", True),
        VipStatus("10.0.0.2/32", "director0", ("tcp:10.0.0.2:80",), "absent", "", False),
    )
    sync = (
        SyncDaemonStatus("master", "eth1 syncid 7", wanted=True),
        SyncDaemonStatus("backup", "eth1 syncid 7", wanted=True, refused="EPERM"),
    )
    bgp = BgpStatus(
        "running",
        42,
        None,
        (
            BgpPeerStatus("peer_10_9_0_1", "10.9.0.1", 65000, "Established"),
            BgpPeerStatus(
                "peer_10_9_0_2", "10.9.0.2", 65000, "Active    Socket: Connection refused"
            ),
        ),
        (
            BgpRouteStatus("10.0.0.1/32", ("tcp:10.0.0.1:80",), True, "quorum met"),
            BgpRouteStatus("10.0.0.2/32", ("tcp:10.0.0.2:80",), False, "quorum not met"),
        ),
    )
    samples = parse(render(replace(base, maintenance=True, vips=vips, sync=sync, bgp=bgp)).decode())
    assert value(samples, "director_maintenance") == 1
    assert (
        value(samples, "director_vip_present", {"address": "10.0.0.1/32", "interface": "director0"})
        == 1
    )
    assert (
        value(samples, "director_vip_present", {"address": "10.0.0.2/32", "interface": "director0"})
        == 0
    )
    assert value(samples, "director_ipvs_sync_daemon_running", {"state": "master"}) == 1
    assert value(samples, "director_ipvs_sync_daemon_running", {"state": "backup"}) == 0
    assert value(samples, "director_bgp_speaker_up") == 1
    assert (
        value(samples, "director_bgp_session_established", {"peer": "10.9.0.1", "peer_as": "65000"})
        == 1
    )
    assert (
        value(samples, "director_bgp_session_established", {"peer": "10.9.0.2", "peer_as": "65000"})
        == 0
    )
    assert value(samples, "director_bgp_route_announced", {"prefix": "10.0.0.1/32"}) == 1
    assert value(samples, "director_bgp_route_announced", {"prefix": "10.0.0.2/32"}) == 0
    plain = parse(render(base).decode())
    assert value(plain, "director_maintenance") == 0
    assert not any(name.startswith("director_bgp_") for name, _ in plain)
    stopped = parse(render(replace(base, bgp=replace(bgp, speaker="failed", pid=None))).decode())
    assert value(stopped, "director_bgp_speaker_up") == 0


async def test_slots_waits_and_shortages_are_metrics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Trial 37 (L7): a probes_late alert could not tell a limit or a
    shortage of files from a short CPU; only the log and the status could.
    The bounds, the waits by kind and the probes short of files are
    series of their own."""
    config = parse_config(CONFIG_TEMPLATE.replace("ON_FAILURE", "remove") + METRICS)

    async def probe(check: object, address: object, port: int) -> ProbeResult:
        if address == ip_address("10.0.1.2"):
            return ProbeResult.failure(Reason.ERROR, 0.0, "EMFILE: Too many open files", own=True)
        await trio.sleep(0.5)
        return ProbeResult.success(0.5)

    director = Director(config, inline(MemoryBackend()), probe=probe, rng=random.Random(1))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        before = await scrape(director)
        assert (
            value(before, "director_probe_slots", {"kind": "probe"}) == director.checker.max_probes
        )
        assert value(before, "director_probe_slots", {"kind": "exec"}) == director.checker.max_exec
        assert ("director_probe_slots", frozenset({("kind", "short")})) not in before
        assert value(before, "director_probes_waiting", {"kind": "probe"}) == 0
        await trio.sleep(5.0)
        samples = await scrape(director)
        held = director.checker.held()
        assert value(samples, "director_probes_short_of_resources_total") >= 1
        assert held is not None  # (one server is short at each of its probes)
        assert value(samples, "director_probe_slots", {"kind": "short"}) == held[0]
        waiting = {k: value(samples, "director_probes_waiting", {"kind": k}) for k in ("probe", "exec", "short")}  # fmt: skip
        assert waiting["probe"] == waiting["exec"] == 0, waiting
        nursery.cancel_scope.cancel()
