"""The demo: directord with conf/director.toml on a real IPVS, against real
servers it starts itself, in network namespaces it creates and removes.

    client --+                   (bridge in the director's namespace, 10.10.9.0/24)
             +-- director  10.10.9.1, VIP 10.10.9.60, directord
             +-- rs61, rs62 (HTTP :80)   rs69, rs70 (HTTP :30000)

Direct routing (the example config's `forward = "route"`): the real servers
hold the VIP on their loopback and answer the client directly. The demo shows
the table, sends requests through the VIP, kills a real server, shows it leave
the table and come back, restarts the daemon with the table left in place,
then cleans up. Run it with `make demo` (as root).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "conf" / "director.toml"
PREFIX = f"demo{os.getpid()}"
DIRECTOR = f"{PREFIX}-director"
CLIENT = f"{PREFIX}-client"
VIP = "10.10.9.60"
SERVERS = {"rs61": ("10.10.9.61", 80), "rs62": ("10.10.9.62", 80),
           "rs69": ("10.10.9.69", 30000), "rs70": ("10.10.9.70", 30000)}  # fmt: skip


def sh(*argv: str, netns: str | None = None, check: bool = True) -> str:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def say(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def show_table() -> None:
    print(sh("ipvsadm", "-Ln", netns=DIRECTOR), end="", flush=True)


def wait_for(condition: str, predicate: object, timeout: float = 60.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {condition}")


def in_table(address: str, port: int) -> bool:
    return f"-r {address}:{port} " in sh("ipvsadm", "-Sn", netns=DIRECTOR)


@contextlib.contextmanager
def network() -> Iterator[None]:
    hosts = [CLIENT, *(f"{PREFIX}-{name}" for name in SERVERS)]
    try:
        sh("ip", "netns", "add", DIRECTOR)
        sh("ip", "link", "set", "lo", "up", netns=DIRECTOR)
        sh("ip", "link", "add", "br0", "type", "bridge", netns=DIRECTOR)
        sh("ip", "addr", "add", "10.10.9.1/24", "dev", "br0", netns=DIRECTOR)
        sh("ip", "addr", "add", f"{VIP}/32", "dev", "br0", netns=DIRECTOR)
        sh("ip", "link", "set", "br0", "up", netns=DIRECTOR)
        addresses = {CLIENT: "10.10.9.10", **{f"{PREFIX}-{n}": a for n, (a, _) in SERVERS.items()}}
        for i, host in enumerate(hosts):
            sh("ip", "netns", "add", host)
            sh("ip", "link", "add", f"v{i}", "netns", DIRECTOR, "type", "veth",
               "peer", "name", "eth0", "netns", host)  # fmt: skip
            sh("ip", "link", "set", f"v{i}", "master", "br0", "up", netns=DIRECTOR)
            sh("ip", "addr", "add", f"{addresses[host]}/24", "dev", "eth0", netns=host)
            sh("ip", "link", "set", "eth0", "up", netns=host)
            sh("ip", "link", "set", "lo", "up", netns=host)
            if host != CLIENT:  # direct routing: the VIP on lo, never announced
                sh("ip", "addr", "add", f"{VIP}/32", "dev", "lo", netns=host)
                sh("sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1", netns=host)
                sh("sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2", netns=host)
        yield
    finally:
        for host in [*hosts, DIRECTOR]:
            sh("ip", "netns", "del", host, check=False)


def start_server(name: str, root: Path) -> subprocess.Popen[bytes]:
    _, port = SERVERS[name]
    site = root / name
    site.mkdir(exist_ok=True)
    (site / "index.html").write_text(f"hello from {name}\n")
    return subprocess.Popen(
        ["ip", "netns", "exec", f"{PREFIX}-{name}", sys.executable, "-m", "http.server",
         str(port), "--bind", "0.0.0.0", "--directory", str(site)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def start_daemon(config: Path, notify: socket.socket, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, NOTIFY_SOCKET=notify.getsockname())
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", DIRECTOR, sys.executable, "-m", "director.entry",
         "--config", str(config), "--log-format", "console"],
        stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    notify.settimeout(150)  # as the kernel rig: imports over 9p are slow in a loaded VM
    while b"READY=1" not in notify.recv(4096):
        pass
    return daemon


def fetch(n: int) -> dict[str, int]:
    """n requests from the client's namespace through the VIP, by answer."""
    answers: dict[str, int] = {}
    for _ in range(n):
        out = sh("python3", "-c", f"import urllib.request as u; print(u.urlopen('http://{VIP}/', timeout=3).read().decode().strip())",
                 netns=CLIENT, check=False).strip() or "failed"  # fmt: skip
        answers[out] = answers.get(out, 0) + 1
    return answers


def main() -> int:
    assert urllib.request  # the client side runs python3 -c in its namespace
    with tempfile.TemporaryDirectory() as tmp, network():
        root = Path(tmp)
        config = root / "director.toml"
        config.write_text(
            CONFIG.read_text()
            .replace("/run/director/director.sock", str(root / "director.sock"))
            .replace("/var/lib/director/state.json", str(root / "state.json"))
            .replace("reconcile_interval = 5.0", "reconcile_interval = 2.0")
            .replace("# timeouts = {", "timeouts = {")  # (left out in the example)
        )
        log = root / "directord.log"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(root / "notify"))
        servers = {name: start_server(name, root) for name in SERVERS}
        daemon = None
        try:
            say(f"directord --config {CONFIG.relative_to(REPO)} (timeouts, two services)")
            daemon = start_daemon(config, notify, log)
            wait_for("every real server to be probed up",
                     lambda: all(in_table(a, p) for a, p in SERVERS.values()))  # fmt: skip
            show_table()
            print(sh("ipvsadm", "-L", "--timeout", netns=DIRECTOR), end="")

            say("six requests from the client through the VIP")
            print(fetch(6))

            say("kill rs62 (SIGKILL)")
            servers["rs62"].kill()
            servers["rs62"].wait()
            took = wait_for("rs62 to leave the table", lambda: not in_table("10.10.9.62", 80))
            print(f"rs62 left the table {took:.1f} s after it died")
            show_table()
            print("requests now:", fetch(4))

            say("restart rs62")
            servers["rs62"] = start_server("rs62", root)
            took = wait_for("rs62 to come back", lambda: in_table("10.10.9.62", 80))
            print(f"rs62 is back {took:.1f} s after it restarted")
            show_table()

            say("restart directord: the table stays in place while it is down")
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            show_table()
            daemon = start_daemon(config, notify, log)
            print("requests after the restart:", fetch(4))

            say("directord's log (one event per line)")
            print(log.read_text(), end="")
        finally:
            if daemon is not None and daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=30)
            for server in servers.values():
                server.kill()
                server.wait()
    say("cleaned up: namespaces removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
