"""directorctl against a running directord, next to the real ipvsadm.

The test's namespace is the director: it runs directord (control socket and
state file in the test's tmp dir) and ipvsadm. Real servers live in a second
namespace behind a veth pair (so the kernel keeps the forwarding method asked
for: a destination local to the director reads back as "Local"); their TCP
listeners are sockets this process opens in that namespace and accepts on in a
thread, so health checks pass without a process per server.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from daemon_runner import Daemon, wait_until
from tables import Outcome, real
from topology import batch, inside

CTL = Path(sys.executable).with_name("directorctl")
DEADLINE = 60.0
BACKEND_V4 = "10.7.0"
BACKEND_V6 = "fd07::"


def ctl(sock: Path, args: Sequence[str], stdin: str | None = None) -> Outcome:
    done = subprocess.run(
        [str(CTL), "--socket", str(sock), *args], input=stdin, capture_output=True, text=True
    )
    return Outcome(done.stdout, done.stderr, done.returncode)


class Listeners:
    """TCP listeners in one namespace, accepted (and closed) by one thread."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def listen(self, address: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with inside(self.netns):
            sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(128)
        sock.setblocking(False)
        self._selector.register(sock, selectors.EVENT_READ)
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
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                conn.close()

    def close(self) -> None:
        os.close(self._wake_w)
        self._thread.join(timeout=10)
        for key in list(self._selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
        self._selector.close()
        os.close(self._wake_r)


@contextmanager
def backends(director: str, hosts: int = 8) -> Iterator[Listeners]:
    """A namespace `{director}-be` on a veth from the director: director side
    10.7.0.1/24 and fd07::1/64, backend side 10.7.0.2.. and fd07::2.. (`hosts`
    of each); yields its listeners."""
    netns = f"{director}-be"
    batch([f"netns add {netns}"])
    listeners: Listeners | None = None
    try:
        batch(
            [
                f"link add be0 type veth peer name eth0 netns {netns}",
                f"addr add {BACKEND_V4}.1/24 dev be0",
                f"addr add {BACKEND_V6}1/64 dev be0 nodad",
                "link set be0 up",
            ],
            director,
        )
        batch(
            [
                "link set lo up",
                *(f"addr add {BACKEND_V4}.{i}/24 dev eth0" for i in range(2, hosts + 2)),
                *(f"addr add {BACKEND_V6}{i:x}/64 dev eth0 nodad" for i in range(2, hosts + 2)),
                "link set eth0 up",
                f"route add default via {BACKEND_V4}.1",
                f"route add default via {BACKEND_V6}1",
            ],
            netns,
        )
        listeners = Listeners(netns)
        yield listeners
    finally:
        if listeners is not None:
            listeners.close()
        batch([f"netns del {netns}"])


def config_text(workdir: Path, services: str = "", reconcile_interval: float = 30.0) -> str:
    return (
        "[daemon]\n"
        f"reconcile_interval = {reconcile_interval}\n"
        f'state_file = "{workdir}/state.json"\n'
        "\n[control]\n"
        f'socket = "{workdir}/director.sock"\n'
        # The rig's real servers are TCP listeners (Listeners), its UDP
        # ones too: a UDP service added at runtime is checked by a connect,
        # as a config may say (the default is a `udp` check).
        'runtime_check_udp = { type = "tcp" }\n'
        f"\n{services}"
    )


class Director:
    """directord on the test's namespace, and the two command lines to compare."""

    def __init__(self, workdir: Path, services: str = "", netns: str = "") -> None:
        self.netns = netns
        self.workdir = workdir
        self.config = workdir / "director.toml"
        self.socket = workdir / "director.sock"
        self.state_file = workdir / "state.json"
        self.config.write_text(config_text(workdir, services))
        self.daemon = Daemon(self.config)

    def start(self) -> None:
        self.daemon = Daemon(self.config)
        self.daemon.start()

    def restart(self) -> None:
        status = self.daemon.stop()
        assert status == 0, f"directord exited {status}:\n{self.log()}"
        self.start()

    def ctl(self, *args: str, stdin: str | None = None) -> Outcome:
        return ctl(self.socket, args, stdin)

    def ctl_ok(self, *args: str, stdin: str | None = None) -> str:
        outcome = self.ctl(*args, stdin=stdin)
        assert (outcome.stderr, outcome.status) == ("", 0), (args, outcome, self.log())
        return outcome.stdout

    def log(self) -> str:
        return self.daemon.log_text()

    def wait_saved(self, *parts: str, absent: bool = False) -> str:
        """Until `ipvsadm -Sn` has (or with `absent`, has not) a line containing
        each of `parts`, e.g. a real server waiting for its check; the table."""

        def check() -> str:
            saved = real(["-Sn"]).stdout
            present = any(all(p in line for p in parts) for line in saved.splitlines())
            return saved if present != absent else ""

        try:
            return wait_until(
                check, DEADLINE, f"ipvsadm -Sn {'lacks' if absent else 'shows'} {parts}"
            )
        except AssertionError as e:
            raise AssertionError(f"{e}\n{real(['-Sn']).stdout}\n{self.log()}") from None

    def close(self) -> None:
        self.daemon.close()
