"""The metrics endpoint of a running directord against the real kernel: real
HTTP traffic from the client namespace through the VIP (NAT mode) makes the
kernel's connection, packet and byte counters rise on /metrics, and a real
server killed and restarted turns its health series down and up again.
See topology.py for the network; the test's own namespace is the director's,
so 127.0.0.1:9531 is the daemon's own.

Deadlines are generous (the VM is emulated and shared): they bound a wait,
they claim nothing about speed."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctl_support import ctl
from daemon_runner import Daemon, wait_alive
from prometheus_client.parser import text_string_to_metric_families
from topology import HTTP_PORT, Network, RealServers, http_get, ipvsadm

LISTEN = "127.0.0.1:9531"
DEADLINE = 90.0
REQUESTS = 20
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def config_text(net: Network, workdir: Path) -> str:
    lines = [
        "[daemon]",
        "reconcile_interval = 30.0",
        f'state_file = "{workdir}/state.json"',
        "",
        "[control]",
        f'socket = "{workdir}/director.sock"',
        "",
        "[metrics]",
        f'listen = "{LISTEN}"',
        "",
        "[[virtual_server]]",
        'protocol = "tcp"',
        f'address = "{net.vip}:{HTTP_PORT}"',
        'scheduler = "rr"',
        'check = { type = "http", path = "/healthz", interval = 1.0, timeout = 1.0, '
        "rise = 1, fall = 2 }",
    ]
    for name in ("rs1", "rs2"):
        lines += [
            "",
            "[[virtual_server.real_server]]",
            f'address = "{net.host(name).address}"',
            'forward = "masq"',
        ]
    return "\n".join(lines) + "\n"


def scrape() -> Samples:
    """GET /metrics from the daemon (this thread is in its namespace)."""
    with urllib.request.urlopen(f"http://{LISTEN}/metrics", timeout=30) as reply:
        assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = reply.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


@pytest.fixture
def daemon(net: Network, servers: RealServers, tmp_path: Path) -> Iterator[Daemon]:
    config = tmp_path / "director.toml"
    config.write_text(config_text(net, tmp_path))
    running = Daemon(config)
    try:
        running.start()
        yield running
    finally:
        running.close()


def test_metrics_show_the_kernels_counters_rise_and_a_killed_server_go_down_and_up(
    net: Network, servers: RealServers, daemon: Daemon, tmp_path: Path
) -> None:
    vip = {
        "local_address": str(net.vip),
        "local_port": str(HTTP_PORT),
        "proto": "TCP",
        "local_mark": "",
    }
    rs = {
        name: {
            **vip,
            "remote_address": str(net.host(name).address),
            "remote_port": str(HTTP_PORT),
        }
        for name in ("rs1", "rs2")
    }

    def get(samples: Samples, name: str, labels: dict[str, str] | None = None) -> float | None:
        return samples.get((name, frozenset((labels or {}).items())))

    def wait(condition: object, what: str) -> Samples:
        def check() -> Samples | None:
            try:
                samples = scrape()
            except OSError:
                return None  # not listening yet
            return samples if condition(samples) else None  # type: ignore[operator]

        return wait_alive(
            check,
            what,
            alive=daemon.alive,
            log=daemon.log_text,
            timeout=DEADLINE,
            every=0.5,
            context=lambda: f"{ipvsadm('-Ln', '--stats')}\n{daemon.log_text()}",
        )

    def health(samples: Samples, name: str, state: str) -> float | None:
        return get(samples, "director_real_server_health", {**rs[name], "state": state})

    before = wait(
        lambda s: (
            all(get(s, "director_ipvs_backend_weight", rs[n]) == 1 for n in rs)
            and all(health(s, n, "up") == 1 for n in rs)
        ),
        "both real servers up and in the table, on /metrics",
    )
    assert get(before, "director_ipvs_read_success") == 1
    # prometheus_client's garbage collector series are served. (Whether it
    # collects is up to the daemon's allocations: an idle one of two real
    # servers went 90 s without a young collection. test_daemon_cli checks
    # that the collector is on once the daemon is started.)
    for generation in ("0", "1", "2"):
        labels = {"generation": generation}
        assert get(before, "python_gc_collections_total", labels) is not None, generation
    conns_before = get(before, "director_ipvs_connections_total", vip) or 0.0
    bytes_in_before = get(before, "director_ipvs_incoming_bytes_total", vip) or 0.0
    backend_out_before = {
        n: get(before, "director_ipvs_backend_outgoing_bytes_total", rs[n]) or 0.0 for n in rs
    }

    answered = [http_get(net) for _ in range(REQUESTS)]
    assert sorted(set(answered)) == ["rs1", "rs2"]

    after = wait(
        lambda s: (get(s, "director_ipvs_connections_total", vip) or 0) >= conns_before + REQUESTS,
        f"{REQUESTS} more connections counted by the kernel, on /metrics",
    )
    assert (get(after, "director_ipvs_incoming_bytes_total", vip) or 0) > bytes_in_before
    assert (get(after, "director_ipvs_incoming_packets_total", vip) or 0) > 0
    assert (get(after, "director_ipvs_outgoing_packets_total", vip) or 0) > 0
    for name in rs:
        out = get(after, "director_ipvs_backend_outgoing_bytes_total", rs[name]) or 0
        assert out > backend_out_before[name], name
        assert (get(after, "director_ipvs_backend_connections_total", rs[name]) or 0) >= 1
    # The kernel keeps each ended connection's entry a while (TIME_WAIT's
    # timeout): they show as inactive (or, just ended, still active).
    held = sum(
        (get(after, f"director_ipvs_backend_connections_{kind}", rs[name]) or 0)
        for name in rs
        for kind in ("active", "inactive")
    )
    assert held >= 1
    # The kernel's stats as ipvsadm shows them through the control socket,
    # and that request counted.
    listed = ctl(tmp_path / "director.sock", ["-Ln", "--stats"])
    assert listed.status == 0, listed.stderr
    assert rs["rs1"]["remote_address"] in listed.stdout
    wait(
        lambda s: (
            (get(s, "director_control_requests_total", {"command": "list", "result": "ok"}) or 0)
            >= 1
        ),
        "the -Ln --stats request counted",
    )

    killed = time.monotonic()
    servers.kill("rs2")
    down = wait(
        lambda s: health(s, "rs2", "down") == 1,
        "rs2's health series at down after it was killed",
    )
    print(f"rs2 down on /metrics {time.monotonic() - killed:.1f} s after the kill")
    assert health(down, "rs2", "up") == 0
    to_down = {**rs["rs2"], "to": "down"}
    assert get(down, "director_real_server_transitions_total", to_down) == 1
    failures = sum(
        v
        for (name, labels), v in down.items()
        if name == "director_real_server_probes_total"
        and dict(labels).get("remote_address") == rs["rs2"]["remote_address"]
        and dict(labels)["outcome"] == "failure"
    )
    assert failures >= 2  # fall = 2
    assert get(down, "director_service_real_servers_up", vip) == 1
    gone = wait(
        lambda s: get(s, "director_ipvs_backend_weight", rs["rs2"]) is None,
        "rs2 out of the kernel's table, on /metrics",
    )
    assert health(gone, "rs1", "up") == 1

    added = {"kind": "add_destination", "result": "applied"}
    restarted = time.time()
    servers.start("rs2")
    # The weight is read from the kernel at the scrape; the operation's count
    # goes up once the kernel's answer is back, so a scrape in between sees the
    # destination and not its count yet: wait for both.
    up = wait(
        lambda s: (
            health(s, "rs2", "up") == 1
            and get(s, "director_ipvs_backend_weight", rs["rs2"]) == 1
            and (get(s, "director_ipvs_operations_total", added) or 0) >= 3
        ),
        "rs2 up again, back in the table and its add counted, on /metrics",
    )
    to_up = {**rs["rs2"], "to": "up"}
    assert get(up, "director_real_server_transitions_total", to_up) == 2
    assert get(up, "director_service_real_servers_up", vip) == 2
    since = get(up, "director_real_server_last_transition_timestamp_seconds", rs["rs2"])
    # The transition to up came after rs2's restart (a second's slack for
    # the daemon's clock conversion), not a deadline's worth of wall time.
    assert since is not None and restarted - 1.0 <= since <= time.time(), (restarted, since)
