"""A soak: directord through cycles of everything that changes in a day of
production, with what it holds measured after each, so that a leak of any
kind shows as growth from cycle to cycle.

The daemon checks, every 0.5 s: rs1-rs3 over TCP (rs3's server is killed
and started again at each cycle: down, then up); rs1 and rs2 over HTTP
(/healthz, 200), and rs1 on a page that answers 404 (down all along: a
failure at every probe); a port nothing listens on (refused at every probe);
an address on rs1's link that no host has (no ARP answer: a timeout at every
probe); an exec check whose command passes or fails as a flag file says
(turned at each cycle); rs2 over HTTPS (its certificate checked against the
test's CA, sessions resumed) and rs1's plain HTTP port over HTTPS (a TLS
failure at every probe); u1 over UDP (its echo expected) and a UDP port
nothing listens on (an ICMP error at every probe). At each cycle, besides: a reload that changes a
weight, a drain and an enable, `-Ln`, `status --json`, and a scrape of the
metrics endpoint.

After WARMUP cycles the daemon's open files, threads, child processes and
resident memory are sampled at the end of each of CYCLES cycles (once the
table shows that cycle's changes, and between two runs of the exec probe:
the least of a few samples): the files and threads must end where the
measured cycles began (within a few: a probe or a worker thread in flight at
the sample), no child process may be left, and the memory may not grow by
more than RSS_GROWTH. A file or task per probe, per failure, per reload or
per command would grow by dozens over the cycles. (In the VM, 40 cycles:
16-21 files, 3-4 threads, 35.8 -> 38.6 MiB, 2.2 of it at one cycle early
on, then nearly flat; a file leaked at each probe of the server that times
out, injected to try the test, made 32 -> 64 files over 8 cycles.) These are bounds on what
is held, not on time: the waits only wait for progress.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from ctl_support import ctl
from daemon_runner import Daemon, waiter
from tables import Outcome
from topology import HTTP_PORT, UDP_PORT, Network, RealServers, director_network, ipvsadm

T = TypeVar("T")
WARMUP = 2
CYCLES = int(os.environ.get("DIRECTOR_SOAK_CYCLES", "8"))
DEADLINE = 60.0  # seconds any one wait may take in the (slow, shared) VM
POLL = 0.1
FILES_SLACK = 6  # files a probe in flight or a command being answered may hold at a sample
THREADS_SLACK = 3  # worker threads trio may keep idle for a while
RSS_GROWTH = 4 * 1024  # KiB over the measured cycles
METRICS = "127.0.0.1:9599"
FAST = "interval = 0.5, timeout = 1.0, rise = 1, fall = 1"
HTTPS_PORT = 8443
# An HTTPS server for the soak (stdlib only): /healthz answers 200.
TLS_SERVER = """
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer.daemon_threads = True
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[3])), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(sys.argv[1], sys.argv[2])
server.socket = context.wrap_socket(server.socket, server_side=True)
print("ready", flush=True)
server.serve_forever()
"""


@dataclass
class Held:
    files: int
    threads: int
    children: int
    rss_kib: int


def held(pid: int) -> Held:
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status if ":" in line)
    children = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            children += len(listed.read().split())
    return Held(
        files=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(fields["Threads"]),
        children=children,
        rss_kib=int(fields["VmRSS"].split()[0]),
    )


def held_between_probes(pid: int, tries: int = 10) -> Held:
    """What the daemon holds, least of up to `tries` samples 0.1 s apart, done
    at the first with no command running: an exec probe in flight holds its
    pipes, a process handle and a child (3-7 files while it starts), a leak
    holds them in every sample."""
    samples = [held(pid)]
    while samples[-1].children and len(samples) < tries:
        time.sleep(0.1)
        samples.append(held(pid))
    return Held(
        files=min(s.files for s in samples),
        threads=min(s.threads for s in samples),
        children=min(s.children for s in samples),
        rss_kib=samples[-1].rss_kib,
    )


@dataclass
class Soak:
    net: Network
    servers: RealServers
    workdir: Path
    daemon: Daemon | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "director.sock"

    @property
    def flag(self) -> Path:
        return self.workdir / "pass"

    def rs(self, name: str, port: int = HTTP_PORT) -> str:
        return f"{self.net.host(name).address}:{port}"

    def config(self, weight: int) -> str:
        tcp = f'{{ type = "tcp", {FAST} }}'
        http = f'{{ type = "http", path = "/healthz", expect_status = [200], {FAST} }}'
        missing = f'{{ type = "http", path = "/missing", expect_status = [200], {FAST} }}'
        script = self.workdir / "check.sh"
        script.write_text(f"#!/bin/sh\ntest -e {self.flag}\n")
        command = f'{{ type = "exec", command = ["/bin/sh", "{script}"], {FAST} }}'
        https = (
            f'{{ type = "https", path = "/healthz", ca_file = "{self.workdir / "cert.pem"}", '
            f"{FAST} }}"
        )
        udp = f'{{ type = "udp", payload = "ping", expect = "^u1 ping$", {FAST} }}'
        unanswered = str(self.net.host("rs1").gateway).rsplit(".", 1)[0] + ".99"

        def service(port: int, check: str, *servers: str, protocol: str = "tcp") -> str:
            text = (
                f'[[virtual_server]]\nprotocol = "{protocol}"\naddress = "{self.net.vip}:{port}"\n'
                f'scheduler = "rr"\ncheck = {check}\n'
            )
            for server in servers:
                text += f'[[virtual_server.real_server]]\naddress = "{server}"\nforward = "masq"\n'
            return text

        return "\n".join(
            [
                "[daemon]",
                "reconcile_interval = 2.0",
                f'state_file = "{self.workdir / "state.json"}"',
                "[control]",
                f'socket = "{self.socket}"',
                "[metrics]",
                f'listen = "{METRICS}"',
                service(80, tcp, self.rs("rs1"), self.rs("rs3"))
                + f'[[virtual_server.real_server]]\naddress = "{self.rs("rs2")}"\n'
                f'forward = "masq"\nweight = {weight}\n',
                service(8080, http, self.rs("rs1"), self.rs("rs2")),
                service(8081, missing, self.rs("rs1")),
                service(8082, tcp, self.rs("rs2", 81), f"{unanswered}:80"),
                service(8083, command, self.rs("rs2")),
                service(HTTPS_PORT, https, self.rs("rs2", HTTPS_PORT), self.rs("rs1")),
                service(
                    UDP_PORT,
                    udp,
                    self.rs("u1", UDP_PORT),
                    self.rs("u1", UDP_PORT + 1),
                    protocol="udp",
                ),
            ]
        )

    def ctl(self, *args: str) -> Outcome:
        answer = ctl(self.socket, args)
        assert answer.status == 0, answer
        return answer

    def weights(self, port: int, protocol: str = "-t") -> dict[str, int]:
        saved = ipvsadm("-Sn")
        found: dict[str, int] = {}
        current = None
        for line in saved.splitlines():
            words = line.split()
            if words[:1] == ["-A"]:
                current = (words[1], words[2])
            elif words[:1] == ["-a"] and current == (protocol, f"{self.net.vip}:{port}"):
                found[words[4]] = int(words[words.index("-w") + 1])
        return found

    def start_tls_server(self) -> subprocess.Popen[str]:
        """rs2's HTTPS server, with a certificate for its address made now."""
        cert, key = self.workdir / "cert.pem", self.workdir / "key.pem"
        address = self.net.host("rs2").address
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-days", "1", "-nodes", "-subj", "/CN=rs2", "-addext", f"subjectAltName=IP:{address}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True,
        )  # fmt: skip
        argv = ["ip", "netns", "exec", self.net.host("rs2").netns, sys.executable, "-c"]
        server = subprocess.Popen(
            [*argv, TLS_SERVER, str(cert), str(key), str(HTTPS_PORT)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            server.kill()
            raise RuntimeError(f"the HTTPS server did not start: {server.communicate()[1]}")
        return server

    def wait(self, condition: Callable[[], T], what: str) -> T:
        assert self.daemon is not None
        return waiter(self.daemon, DEADLINE, lambda: ipvsadm("-Sn"), every=POLL)(condition, what)


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[Soak]:
    with director_network("so", udp=1) as net:
        servers = RealServers(net)
        tls = None
        try:
            servers.start("rs1", "rs2", "rs3", "u1")
            built = Soak(net, servers, tmp_path)
            tls = built.start_tls_server()
            yield built
            if built.daemon is not None:
                built.daemon.close()
        finally:
            if tls is not None:
                tls.kill()
                tls.communicate()
            servers.close()
            ipvsadm("-C")


def cycle(soak: Soak, n: int) -> None:
    """One cycle of changes; returns once the table shows each of them."""
    rs1, rs2, rs3 = soak.rs("rs1"), soak.rs("rs2"), soak.rs("rs3")
    soak.servers.kill("rs3")
    soak.wait(lambda: rs3 not in soak.weights(80), "rs3 out of the table")
    soak.servers.start("rs3")
    soak.wait(lambda: rs3 in soak.weights(80), "rs3 back in the table")
    passing = n % 2 == 0
    if passing:
        soak.flag.touch()
    else:
        soak.flag.unlink(missing_ok=True)
    soak.wait(lambda: (rs2 in soak.weights(8083)) == passing, f"the exec check {passing}")
    weight = 2 + n % 2
    (soak.workdir / "director.toml").write_text(soak.config(weight))
    soak.ctl("reload")
    soak.wait(lambda: soak.weights(80).get(rs2) == weight, f"rs2 at weight {weight}")
    soak.ctl("drain", f"tcp:{soak.net.vip}:80", rs1)
    soak.wait(lambda: soak.weights(80).get(rs1) == 0, "rs1 drained")
    soak.ctl("enable", f"tcp:{soak.net.vip}:80", rs1)
    soak.wait(lambda: soak.weights(80).get(rs1) == 1, "rs1 enabled")
    soak.ctl("-Ln")
    soak.ctl("status", "--json")
    with urllib.request.urlopen(f"http://{METRICS}/metrics", timeout=DEADLINE) as page:
        assert page.status == 200 and b"director_" in page.read()


def test_a_day_of_changes_leaves_nothing_held(soak: Soak) -> None:
    config = soak.workdir / "director.toml"
    config.write_text(soak.config(2))
    soak.flag.touch()
    soak.daemon = Daemon(config)
    soak.daemon.start()
    pid = soak.daemon.pid
    rs1, rs2 = soak.rs("rs1"), soak.rs("rs2")
    soak.wait(lambda: soak.weights(8080) == {rs1: 1, rs2: 1}, "both HTTP servers in")
    https, u1 = soak.rs("rs2", HTTPS_PORT), soak.rs("u1", UDP_PORT)
    soak.wait(lambda: soak.weights(HTTPS_PORT) == {https: 1}, "the HTTPS server in")
    soak.wait(lambda: soak.weights(UDP_PORT, "-u") == {u1: 1}, "the UDP server in")
    assert soak.weights(8081) == {} and soak.weights(8082) == {}

    samples: list[Held] = []
    for n in range(WARMUP + CYCLES):
        cycle(soak, n)
        if n >= WARMUP:
            samples.append(held_between_probes(pid))
    report = "\n".join(f"cycle {WARMUP + i}: {s}" for i, s in enumerate(samples))
    files = min(s.files for s in samples[:3])
    assert max(s.files for s in samples) <= files + FILES_SLACK, report
    assert min(s.files for s in samples[-3:]) <= files + 2, report
    threads = min(s.threads for s in samples[:3])
    assert max(s.threads for s in samples) <= threads + THREADS_SLACK, report
    assert all(s.children <= 1 for s in samples), report  # at most the exec probe running
    assert samples[-1].rss_kib - samples[0].rss_kib <= RSS_GROWTH, report
    # The failures went on all along, each a verdict, never a stop.
    assert soak.weights(8081) == {} and soak.weights(8082) == {}
    assert soak.weights(HTTPS_PORT) == {https: 1}
    assert soak.weights(UDP_PORT, "-u") == {u1: 1}
    assert soak.daemon.stop(signal.SIGTERM) == 0, soak.daemon.log_text()[-4000:]
