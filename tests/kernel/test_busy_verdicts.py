"""The operator trial's busy-daemon examples on the real kernel: a check's
verdict says what the server did, not how busy the daemon was when it read
the answer (stop 21's fix; tests/unit holds the mechanisms, this module the
examples as the tester met them, with `kill -STOP` / `kill -CONT`).

One network and one directord for the module:

    director --- rs    10.84/16  prompt: 120 TCP listeners (the load: checks
             |                   every 0.5 s), UDP "pong", HTTP /healthz "ok",
             |                   DNS (test_dns_check's responder)
             +--- slow  10.85/16  everything it sends is 1.3 s late (netem):
                                  a TCP listener (its SYN-ACK), a UDP echo

Every example's check has a 1 s timeout and rise = fall = 1, so one probe
decides. Once every real server is judged, the daemon is paused PAUSES times
for 1.5 s (SIGSTOP, then SIGCONT), the gaps seeded (DIRECTOR_BUSY_SEED);
between the pauses the module samples `status --json` (each server's last
probe), and it keeps directord's JSON log (`real_server_up`/`_down`,
`probe_failed` with its detail). The tests assert on what was seen:

1. A TCP server whose SYN-ACK comes 1.3 s late never comes up: every probe is
   a timeout, `no connection within 1 s` or `connected in 1.3 s, past the 1 s
   timeout` (before the fix a pause made it `ok 0.0ms`, and up).
2. `expect` (UDP), `expect_body` (HTTP) and `expect_answer` (DNS) checks of
   prompt servers never go down and never say `still searching` (before, a
   pause failed them: `still searching the reply`).
3. A UDP reply 1.3 s late is silence, paused or not: `no reply (one came in
   1.3 s)` or `no reply`, up with silence = "up"; `no reply within 1 s (one
   came in 1.3 s)`, down with silence = "down" (before, load decided).

Deadlines are generous (the VM is emulated and shared): they bound waits and
claim nothing about speed; the assertions are on verdicts and detail strings.
The guest gets no environment from run.py: another seed, or directord's log
kept in a file, is `tests/vm/run.py env DIRECTOR_BUSY_SEED=7
DIRECTOR_BUSY_LOG=.vmtest/busy.log pytest tests/kernel/test_busy_verdicts.py`.
"""

from __future__ import annotations

import os
import random
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import dns.message as dns_message
import pytest
from ctl_support import Listeners
from daemon_runner import Daemon, wait_alive, wait_until
from test_dns_check import ANSWER, Responder
from topology import SERVERS, Host, batch, inside, run

from director.control.messages import Request
from director.control.protocol import decode_response, encode_request

SEED = int(os.environ.get("DIRECTOR_BUSY_SEED", "20261202"))
PAUSES = 8
PAUSE = 1.5  # seconds each SIGSTOP lasts
GAP = (2.0, 3.5)  # seconds between pauses (seeded)
SETTLE = 4.0  # seconds of sampling after the last pause
DELAY = 1.3  # seconds: netem on everything the slow namespace sends
LOAD = 120  # TCP checks every 0.5 s against listeners that answer: the busy daemon
EACH = 6  # real servers of each example's kind
DEADLINE = 120.0
RS_NET, SLOW_NET = "10.84", "10.85"
TIMING = "interval = 1.0, timeout = 1.0, rise = 1, fall = 1"


@dataclass(frozen=True)
class Group:
    """Real servers behind one virtual service, with one check."""

    protocol: str
    vip: str
    check: str
    servers: tuple[str, ...]


def _servers(subnet: str, port: int, count: int = EACH) -> tuple[str, ...]:
    return tuple(f"{subnet}.{i}:{port}" for i in range(1, count + 1))


GROUPS = {
    "load": Group(
        "tcp",
        "10.99.0.1:80",
        '{ type = "tcp", interval = 0.5, timeout = 1.0, rise = 1, fall = 1 }',
        _servers(f"{RS_NET}.1", 7000, LOAD),
    ),
    "slow_tcp": Group(
        "tcp", "10.99.0.2:80", f'{{ type = "tcp", {TIMING} }}', _servers(f"{SLOW_NET}.3", 8001)
    ),
    "udp_expect": Group(
        "udp",
        "10.99.0.3:9000",
        f'{{ type = "udp", payload = "ping", expect = "^pong ping$", {TIMING} }}',
        _servers(f"{RS_NET}.2", 9000),
    ),
    "http_body": Group(
        "tcp",
        "10.99.0.4:80",
        f'{{ type = "http", path = "/healthz", expect_body = "^ok$", {TIMING} }}',
        _servers(f"{RS_NET}.3", 8080),
    ),
    "dns_answer": Group(
        "udp",
        "10.99.0.5:53",
        '{ type = "dns", query_name = "www.example.test", query_type = "A",'
        f" expect_answer = 'IN A {re.escape(ANSWER)}', {TIMING} }}",
        _servers(f"{RS_NET}.4", 53),
    ),
    "late_up": Group(
        "udp",
        "10.99.0.6:9000",
        f'{{ type = "udp", payload = "ping", silence = "up", {TIMING} }}',
        _servers(f"{SLOW_NET}.1", 9000),
    ),
    "late_down": Group(
        "udp",
        "10.99.0.7:9000",
        f'{{ type = "udp", payload = "ping", silence = "down", {TIMING} }}',
        _servers(f"{SLOW_NET}.2", 9000),
    ),
}

# The details each example may show (what docs/config.md, "What a probe may
# meet", says of a 1 s timeout); `s` is the server's time as the kernel timed it.
SECONDS = r"(?P<s>\d+(?:\.\d+)?) s"
SLOW_TCP = re.compile(rf"no connection within 1 s|connected in {SECONDS}, past the 1 s timeout")
CAME = rf"(?: \(one came in {SECONDS}\))?"
LATE_UP = re.compile(rf"no reply{CAME}")
LAG = r"2 s of the start: the server had [\d.e-]+ s of it, the rest was the daemon's lag"
LATE_DOWN = re.compile(rf"no reply within (?:1 s|{LAG}){CAME}")
PATTERN_OK = {"udp_expect": "9 byte reply", "http_body": "status 200", "dns_answer": "NOERROR, 1 answer"}  # fmt: skip


def config_text(workdir: Path) -> str:
    lines = [
        "[daemon]",
        "reconcile_interval = 5.0",
        f'state_file = "{workdir}/state.json"',
        "[control]",
        f'socket = "{workdir}/director.sock"',
    ]
    for group in GROUPS.values():
        lines += [
            "[[virtual_server]]",
            f'protocol = "{group.protocol}"',
            f'address = "{group.vip}"',
            'scheduler = "rr"',
            f"check = {group.check}",
        ]
        for server in group.servers:
            # masq: the table keeps the port written, which the samples key on
            # (a route server's entry has the service's port, as ipvsadm's)
            lines += ["[[virtual_server.real_server]]", f'address = "{server}"', 'forward = "masq"']
    return "\n".join(lines) + "\n"


# -- the network and its servers -------------------------------------------


def _addresses(group: str) -> list[str]:
    return [f"addr add {s.rsplit(':', 1)[0]}/16 dev eth0" for s in GROUPS[group].servers]


@contextmanager
def namespaces() -> Iterator[tuple[str, str]]:
    """The director's namespace (this thread inside it for the block) and
    the `rs` and `slow` namespaces on veth pairs from it; yields the names
    of rs and slow. Deleted afterwards."""
    director = f"bv{os.getpid()}"
    rs, slow = f"{director}-rs", f"{director}-slow"
    names = [director, rs, slow]
    batch([f"netns add {name}" for name in names])
    try:
        batch(
            [
                "link set lo up",
                f"link add rs type veth peer name eth0 netns {rs}",
                f"addr add {RS_NET}.0.1/16 dev rs",
                "link set rs up",
                f"link add slow type veth peer name eth0 netns {slow}",
                f"addr add {SLOW_NET}.0.1/16 dev slow",
                "link set slow up",
            ],
            director,
        )
        rs_groups = ("load", "udp_expect", "http_body", "dns_answer")
        batch(
            [
                "link set lo up",
                f"addr add {RS_NET}.0.2/16 dev eth0",
                *(line for group in rs_groups for line in _addresses(group)),
                "link set eth0 up",
            ],
            rs,
        )
        slow_groups = ("slow_tcp", "late_up", "late_down")
        batch(
            [
                "link set lo up",
                f"addr add {SLOW_NET}.0.2/16 dev eth0",
                *(line for group in slow_groups for line in _addresses(group)),
                "link set eth0 up",
            ],
            slow,
        )
        subprocess.run(["modprobe", "-q", "sch_netem"], check=False)
        netem = ["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{DELAY:g}s"]
        run("ip", "netns", "exec", slow, *netem)
        with inside(director):
            yield rs, slow
    finally:
        existing = set(os.listdir("/run/netns"))
        batch([f"netns del {name}" for name in names if name in existing])


class UdpServers:
    """UDP servers in one namespace, one socket per address, answered by one
    thread of this process: `answer(datagram)` is the reply (None: none). A
    socket of its own for each address, because a socket bound to 0.0.0.0
    answers from the link's first address, and a probe's connected socket
    drops that reply."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def serve(self, server: str, answer: Callable[[bytes], bytes | None]) -> None:
        address, port = server.rsplit(":", 1)
        with inside(self.netns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((address, int(port)))
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ, answer)
        os.write(self._wake_w, b"x")

    def _serve(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj == self._wake_r:
                    if not os.read(self._wake_r, 64):
                        return
                    continue
                assert isinstance(key.fileobj, socket.socket)
                try:
                    data, peer = key.fileobj.recvfrom(65535)
                except OSError:  # (nothing after all, or an ICMP error)
                    continue
                reply = key.data(data)
                if reply is not None:
                    key.fileobj.sendto(reply, peer)

    def close(self) -> None:
        os.close(self._wake_w)
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        self._selector.close()
        os.close(self._wake_r)


@contextmanager
def responders(rs: str, slow: str) -> Iterator[None]:
    """Every real server running. TCP listeners accepted by threads of this
    process (ctl_support's: the load's on rs, the slow one's on slow), UDP
    servers in threads too: "pong " and the datagram on rs, test_dns_check's
    DNS answers on rs, the datagram echoed on slow (at once: netem holds it
    1.3 s); the HTTP server is tests/kernel/servers.py (/healthz: "ok")."""
    with ExitStack() as stack:
        for netns, port in ((rs, 7000), (slow, 8001)):
            listeners = Listeners(netns)
            stack.callback(listeners.close)
            listeners.listen("0.0.0.0", port)
        dns = Responder(Host("dns", rs, IPv4Address(f"{RS_NET}.0.2"), IPv4Address(f"{RS_NET}.0.1")))

        def pong(data: bytes) -> bytes:
            return b"pong " + data

        def answer(data: bytes) -> bytes:
            return dns.reply(dns_message.from_wire(data)).to_wire()

        def echo(data: bytes) -> bytes:
            return data

        for netns, groups in ((rs, {"udp_expect": pong, "dns_answer": answer}), (slow, {"late_up": echo, "late_down": echo})):  # fmt: skip
            udp = UdpServers(netns)
            stack.callback(udp.close)
            for group, reply in groups.items():
                for server in GROUPS[group].servers:
                    udp.serve(server, reply)
        argv = [sys.executable, str(SERVERS), "http", "--port", "8080", "--name", "web"]
        http = subprocess.Popen(
            ["ip", "netns", "exec", rs, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stack.callback(http.communicate, timeout=DEADLINE)
        stack.callback(http.kill)
        assert http.stdout is not None
        if http.stdout.readline().strip() != "ready":  # "" when it died first
            http.kill()
            raise RuntimeError(f"the HTTP server did not start: {http.communicate()[1]}")
        yield


# -- the trial ---------------------------------------------------------------

Sample = dict[str, dict[str, Any]]  # server ("addr:port") -> its status entry


def status(sock: Path) -> Sample:
    """`directorctl status --json`'s real servers, by "addr:port" (each
    example's servers are on addresses of their own)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(DEADLINE)
        conn.connect(str(sock))
        conn.sendall(encode_request(Request(command="status", args={"json": True})))
        chunks: list[bytes] = []
        while not chunks or not chunks[-1].endswith(b"\n"):
            chunk = conn.recv(1 << 20)
            assert chunk, "directord closed the control connection without an answer"
            chunks.append(chunk)
    response = decode_response(b"".join(chunks))
    assert response.status == 0 and isinstance(response.data, dict), response
    return {
        rs["server"]: rs for service in response.data["services"] for rs in service["real_servers"]
    }


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (proc(5): R, S, T for stopped ...)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


def pause(pid: int) -> None:
    """SIGSTOP the daemon (and see it stopped), PAUSE seconds, SIGCONT."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: process_state(pid) == "T", 30.0, f"directord ({pid}) stopped")
        time.sleep(PAUSE)
    finally:
        os.kill(pid, signal.SIGCONT)


def sample_for(sock: Path, seconds: float) -> list[Sample]:
    """Status samples for `seconds`, the first at once."""
    end = time.monotonic() + seconds
    samples = [status(sock)]
    while time.monotonic() < end:
        time.sleep(0.2)
        samples.append(status(sock))
    return samples


@dataclass
class Trial:
    daemon: Daemon  # stopped; its log kept
    before: Sample  # once every real server was judged, before the first pause
    samples: list[Sample]  # `before`, then those between and after the pauses
    pauses: int

    @property
    def final(self) -> Sample:
        return self.samples[-1]

    def events(self, name: str, servers: Sequence[str]) -> list[dict[str, Any]]:
        return [e for e in self.daemon.events(name) if e.get("rs") in servers]

    def probes(self, servers: Sequence[str]) -> list[tuple[str, str, str]]:
        """(server, reason, detail) of every probe seen of `servers`: each
        sample's last probe, and every probe_failed logged."""
        seen = [
            (server, sample[server]["last_reason"], sample[server]["last_detail"])
            for sample in self.samples
            for server in servers
        ]
        seen += [(e["rs"], e["reason"], e["detail"]) for e in self.events("probe_failed", servers)]
        return seen

    def show(self, group: str) -> Counter[tuple[str, str]]:
        """How often each (reason, detail) was seen for the group; printed."""
        counts = Counter(
            (reason, detail) for _, reason, detail in self.probes(GROUPS[group].servers)
        )
        print(f"{group} ({self.pauses} pauses, {len(self.samples)} samples, seed {SEED}):")
        for (reason, detail), count in counts.most_common():
            print(f"  {count:4d} x {reason}: {detail!r}")
        return counts


def judged(sock: Path) -> Sample | None:
    """A sample once every real server has a verdict and every load server is up."""
    sample = status(sock)
    every = [server for group in GROUPS.values() for server in group.servers]
    if any(sample[server]["health"] == "unknown" for server in every):
        return None
    if any(sample[server]["health"] != "up" for server in GROUPS["load"].servers):
        return None
    return sample


@pytest.fixture(scope="module")
def trial(tmp_path_factory: pytest.TempPathFactory) -> Trial:
    workdir = tmp_path_factory.mktemp("busy")
    sock = workdir / "director.sock"
    config = workdir / "director.toml"
    config.write_text(config_text(workdir))
    rng = random.Random(SEED)
    with namespaces() as (rs, slow), responders(rs, slow):
        daemon = Daemon(config)
        try:
            daemon.start()
            before = wait_alive(
                lambda: judged(sock),
                "every real server judged and the load up",
                alive=daemon.alive,
                log=daemon.log_text,
                timeout=DEADLINE,
                every=0.5,
            )
            assert before is not None  # (wait_alive returns a truthy value)
            samples = [before]
            started = time.monotonic()
            stops = []  # when each pause began (UTC, as the log's timestamps)
            for _ in range(PAUSES):
                stops.append(datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3])
                pause(daemon.pid)
                samples += sample_for(sock, rng.uniform(*GAP))
            samples += sample_for(sock, SETTLE)
            took = time.monotonic() - started
            assert daemon.stop() == 0, daemon.log_text()
        finally:
            daemon.close()
            if keep := os.environ.get("DIRECTOR_BUSY_LOG"):  # (for a look afterwards)
                Path(keep).write_text("\n".join(daemon.lines) + "\n")
    print(f"{PAUSES} pauses of {PAUSE:g} s, {len(samples)} status samples in {took:.1f} s")
    print(f"pauses began at {', '.join(stops)} UTC")
    return Trial(daemon, before, samples, PAUSES)


def seconds_of(pattern: re.Pattern[str], details: Iterable[str]) -> list[float] | list[str]:
    """The server's times (`s`) named in `details`, or, when any of them
    does not match `pattern`, those details."""
    matches = [(detail, pattern.fullmatch(detail)) for detail in details]
    if unlike := sorted(detail for detail, m in matches if m is None):
        return unlike
    return sorted(float(m["s"]) for _, m in matches if m is not None and m["s"] is not None)


def verdicts(trial: Trial, group: str) -> dict[str, object]:
    """What the group's servers did: who went up and down (the log), their
    health at the end, and the reasons of every probe seen."""
    servers = GROUPS[group].servers
    return {
        "up": sorted({e["rs"] for e in trial.events("real_server_up", servers)}),
        "down": sorted({e["rs"] for e in trial.events("real_server_down", servers)}),
        "final": sorted({trial.final[s]["health"] for s in servers}),
        "reasons": sorted({reason for _, reason, _ in trial.probes(servers)}),
    }


def test_tcp_server_1_3_s_away_never_comes_up_through_pauses(trial: Trial) -> None:
    counts = trial.show("slow_tcp")
    servers = sorted(GROUPS["slow_tcp"].servers)
    down = {"up": [], "down": servers, "final": ["down"], "reasons": ["timeout"]}
    assert verdicts(trial, "slow_tcp") == down
    handshakes = seconds_of(SLOW_TCP, (detail for _, detail in counts))
    # netem holds the SYN-ACK 1.3 s; the kernel's figure is within two ticks.
    assert all(isinstance(h, float) and h >= DELAY - 0.1 for h in handshakes), handshakes


def test_pattern_checks_stay_up_through_pauses(trial: Trial) -> None:
    seen: dict[str, object] = {}
    want: dict[str, object] = {}
    for group, ok in PATTERN_OK.items():
        counts = trial.show(group)
        details = sorted({detail for _, detail in counts})
        seen[group] = {**verdicts(trial, group), "details": details}
        servers = sorted(GROUPS[group].servers)
        want[group] = {"up": servers, "down": [], "final": ["up"], "reasons": ["ok"], "details": [ok]}  # fmt: skip
    # A search gets a time of its own, whatever the pause took of the probe's.
    every = [server for group in GROUPS.values() for server in group.servers]
    seen["still searching"] = sorted(
        {p[2] for p in trial.probes(every) if "still searching" in p[2]}
    )
    want["still searching"] = []
    assert seen == want
    # Probed all along: more successes in a row since the first pause than pauses.
    grew = {
        s: trial.final[s]["successes_in_row"] - trial.before[s]["successes_in_row"]
        for group in PATTERN_OK
        for s in GROUPS[group].servers
    }
    assert min(grew.values()) >= trial.pauses, grew


CAME_LATE = "some 'one came in', each >= 1.3 s"


def came_late(pattern: re.Pattern[str], counts: Counter[tuple[str, str]]) -> object:
    """CAME_LATE when every detail matches `pattern` and some name the
    server's time, each at least the netem delay; else what was seen."""
    times = seconds_of(pattern, (detail for _, detail in counts))
    if times and all(isinstance(t, float) and t >= DELAY for t in times):
        return CAME_LATE
    return times


def test_udp_reply_1_3_s_late_is_silence_paused_or_not(trial: Trial) -> None:
    up_counts, down_counts = trial.show("late_up"), trial.show("late_down")
    seen = {
        "late_up": {**verdicts(trial, "late_up"), "details": came_late(LATE_UP, up_counts)},
        "late_down": {**verdicts(trial, "late_down"), "details": came_late(LATE_DOWN, down_counts)},
    }
    # silence = "up": up all along, every probe silence; silence = "down":
    # down all along, every probe `no reply`. A pause over a reply's arrival
    # shows it, with the kernel's stamp: 1.3 s of netem at least (exact
    # stamps, no slack). Each pause lands on one probe of every server, so
    # both kinds must show some.
    up, down = sorted(GROUPS["late_up"].servers), sorted(GROUPS["late_down"].servers)
    assert seen == {
        "late_up": {
            "up": up,
            "down": [],
            "final": ["up"],
            "reasons": ["ok"],
            "details": CAME_LATE,
        },
        "late_down": {
            "up": [],
            "down": down,
            "final": ["down"],
            "reasons": ["no reply"],
            "details": CAME_LATE,
        },
    }
