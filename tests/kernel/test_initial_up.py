"""A check's `initial = "up"` (keepalived's default, without `alpha`) on the
real kernel, read back with the real `ipvsadm -Sn`.

A server not in the table enters at once, before any probe (at start and
when a reload adds it), at its configured weight, or at weight 1 when its
virtual server has slow_start. It takes `fall` failures in a row to take it
out; a reload that only changes the check keeps its health. Without
`initial` (the default), a server enters only when a probe passes.

The real servers are sockets this process holds in the test's namespace, on
a dummy link: two listening (they answer), and refusing ones (bound, never
listening, so no other socket gets their port). The check's interval is long
(3 s, fall 3) so that the table read as soon as the daemon says READY=1
comes before the `fall` probes: the log is checked to show no
`real_server_down` by then. Nothing here asserts a duration, only an order.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from daemon_runner import Daemon, waiter
from topology import ipvsadm, run

SERVER_NET = "10.86.0"
ADDRESS = f"{SERVER_NET}.1"
PLAIN = f"-t {SERVER_NET}.100:80"  # no slow start
RAMPED = f"-t {SERVER_NET}.101:80"  # slow_start: a ramp far longer than the test
INTERVAL, TIMEOUT, FALL = 3.0, 1.0, 3
DEADLINE = 90.0  # the longest a test waits for one thing (the VM is slow, and shared)


@dataclass(frozen=True)
class Servers:
    """host:port of each real server."""

    answering: tuple[str, str]
    refusing: str
    refusing_added: str  # added by a reload
    answering_added: str  # added by a reload


@contextlib.contextmanager
def real_servers() -> Iterator[Servers]:
    run("ip", "link", "add", "rs0", "type", "dummy")
    run("ip", "addr", "add", f"{ADDRESS}/24", "dev", "rs0")
    run("ip", "link", "set", "rs0", "up")
    held: list[socket.socket] = []

    def bound(listening: bool) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(sock)
        sock.bind((ADDRESS, 0))
        if listening:
            sock.listen(64)
        return f"{ADDRESS}:{sock.getsockname()[1]}"

    try:
        yield Servers(
            answering=(bound(True), bound(True)),
            refusing=bound(False),
            refusing_added=bound(False),
            answering_added=bound(True),
        )
    finally:
        for sock in held:
            sock.close()
        run("ip", "link", "del", "rs0")


def config_text(
    workdir: Path,
    servers: dict[str, list[tuple[str, int]]],
    *,
    initial: str | None,
    interval: float = INTERVAL,
) -> str:
    """Two services (PLAIN, RAMPED) with the same TCP check; `servers` maps
    each service to its (host:port, weight) list."""
    keys = f"interval = {interval}, timeout = {TIMEOUT}, rise = 1, fall = {FALL}"
    if initial is not None:
        keys += f', initial = "{initial}"'
    lines = [
        "[daemon]",
        "reconcile_interval = 60.0",
        f'state_file = "{workdir}/state.json"',
        "[control]",
        f'socket = "{workdir}/director.sock"',
    ]
    for service, extra in ((PLAIN, ""), (RAMPED, "slow_start = 3600")):
        lines += [
            "[[virtual_server]]",
            'protocol = "tcp"',
            f'address = "{service.split()[1]}"',
            'scheduler = "wlc"',
            *([extra] if extra else []),
            f'check = {{ type = "tcp", {keys} }}',
        ]
        for address, weight in servers.get(service, []):
            lines += [
                "[[virtual_server.real_server]]",
                f'address = "{address}"',
                'forward = "masq"',
                f"weight = {weight}",
            ]
    return "\n".join(lines) + "\n"


def destinations(saved: str, service: str) -> dict[str, int]:
    """{host:port: weight} of `service` in an `ipvsadm -Sn` dump."""
    found = {}
    for line in saved.splitlines():
        match = re.fullmatch(rf"-a {re.escape(service)} -r (\S+) -\w -w (\d+)", line)
        if match:
            found[match[1]] = int(match[2])
    return found


def table_without(address: str) -> str | None:
    """`ipvsadm -Sn` when `address` is in neither service, else None."""
    saved = ipvsadm("-Sn")
    return None if f" -r {address} " in saved else saved


def wait_for(daemon: Daemon, condition: Callable[[], Any], what: str) -> Any:
    return waiter(daemon, DEADLINE, lambda: ipvsadm("-Sn"), every=0.1)(condition, what)


def label(service: str) -> str:
    """How the log names a service ("-t 1.2.3.4:80" -> "TCP 1.2.3.4:80")."""
    return f"TCP {service.split()[1]}"


def downs(daemon: Daemon, address: str, service: str = PLAIN) -> list[dict[str, Any]]:
    return daemon.events("real_server_down", rs=address, vs=label(service))


def ups(daemon: Daemon, address: str, service: str = PLAIN) -> list[dict[str, Any]]:
    return daemon.events("real_server_up", rs=address, vs=label(service))


def started(config: Path, text: str) -> Daemon:
    config.write_text(text)
    daemon = Daemon(config)
    daemon.start()
    return daemon


def reloaded(daemon: Daemon, text: str) -> str:
    """Write the config, SIGHUP, and the table as soon as READY=1 came."""
    daemon.config.write_text(text)
    before = len(daemon.events("reloaded"))
    daemon.reload()
    saved = ipvsadm("-Sn")
    wait_for(daemon, lambda: len(daemon.events("reloaded")) > before, "the reload applied")
    assert not daemon.events("reload_rejected"), daemon.log_text()
    return saved


def test_initial_up_serves_at_once_and_falls_after_fall_failures(
    netns: str, tmp_path: Path
) -> None:
    config = tmp_path / "director.toml"
    with real_servers() as s:
        (a1, a2), refusing = s.answering, s.refusing
        layout = {
            PLAIN: [(a1, 5), (a2, 7), (refusing, 9)],
            RAMPED: [(a1, 100), (refusing, 100)],
        }
        daemon = started(config, config_text(tmp_path, layout, initial="up"))
        try:
            # 1. At READY=1, every server is in at its configured weight
            # (weight 1 where slow_start ramps), the refusing one included,
            # before `fall` probes could take it out.
            at_ready = ipvsadm("-Sn")
            assert not daemon.events("real_server_down"), (at_ready, daemon.log_text())
            assert destinations(at_ready, PLAIN) == {a1: 5, a2: 7, refusing: 9}, at_ready
            assert destinations(at_ready, RAMPED) == {a1: 1, refusing: 1}, at_ready

            # Then `fall` failures in a row take the refusing one out (in both
            # services); the answering ones come up and stay.
            for service in (PLAIN, RAMPED):
                down = wait_for(
                    daemon, partial(downs, daemon, refusing, service), f"{refusing} down"
                )[0]
                assert (down["old"], down["new"]) == ("unknown", "down"), down
                assert down["failures_in_row"] == FALL, down
                assert down["successes_in_row"] == 0, down
            for address in (a1, a2):
                up = wait_for(daemon, partial(ups, daemon, address), f"{address} up")[0]
                assert (up["old"], up["new"]) == ("unknown", "up"), up
            wait_for(daemon, lambda: ups(daemon, a1, RAMPED), f"{a1} up in {RAMPED}")
            after = wait_for(daemon, lambda: table_without(refusing), f"{refusing} out")
            assert destinations(after, PLAIN) == {a1: 5, a2: 7}, after
            assert destinations(after, RAMPED) == {a1: 1}, after  # 3600 s ramp: still 1
            assert not downs(daemon, a1) and not downs(daemon, a2), daemon.log_text()
            assert not ups(daemon, refusing), daemon.log_text()

            # 3. A reload that adds servers with initial = "up" puts them in
            # at once: a refusing one too (no probe would ever let it in), at
            # its weight, or at 1 under slow_start (4).
            added, answering_added = s.refusing_added, s.answering_added
            layout = {
                PLAIN: [*layout[PLAIN], (added, 4)],
                RAMPED: [*layout[RAMPED], (added, 100), (answering_added, 100)],
            }
            saved = reloaded(daemon, config_text(tmp_path, layout, initial="up"))
            assert not downs(daemon, added) and not downs(daemon, added, RAMPED), saved
            assert destinations(saved, PLAIN) == {a1: 5, a2: 7, added: 4}, saved
            assert destinations(saved, RAMPED) == {a1: 1, added: 1, answering_added: 1}, saved

            # A reload that only changes the check's interval keeps each
            # server's health: the refusing server, down, stays out.
            saved = reloaded(daemon, config_text(tmp_path, layout, initial="up", interval=2.0))
            assert refusing not in destinations(saved, PLAIN), saved
            assert refusing not in destinations(saved, RAMPED), saved
            assert destinations(saved, PLAIN).keys() >= {a1, a2}, saved
            # And still out once the added refusing one has failed `fall`
            # probes in a row (a reset health would have let it in again, and
            # taken it out with a second real_server_down).
            down = wait_for(daemon, lambda: downs(daemon, added), f"{added} down")[0]
            assert down["failures_in_row"] == FALL, down
            later = wait_for(daemon, lambda: table_without(added), f"{added} out")
            assert destinations(later, PLAIN) == {a1: 5, a2: 7}, later
            assert refusing not in destinations(later, RAMPED), later
            assert len(downs(daemon, refusing)) == 1, daemon.log_text()
            assert len(downs(daemon, refusing, RAMPED)) == 1, daemon.log_text()
            assert daemon.stop() == 0, daemon.log_text()
            assert "Traceback" not in daemon.log_text(), daemon.log_text()
        finally:
            daemon.close()
        ipvsadm("-C")
        (tmp_path / "state.json").unlink(missing_ok=True)

        # 2. The same config without `initial`: the refusing server never
        # enters; the answering ones do, at the same lines as with "up".
        layout = {
            PLAIN: [(a1, 5), (a2, 7), (refusing, 9)],
            RAMPED: [(a1, 100), (refusing, 100)],
        }
        daemon = started(config, config_text(tmp_path, layout, initial=None))
        try:
            seen = [ipvsadm("-Sn")]
            assert refusing not in seen[0], seen[0]

            def settled() -> bool:
                seen.append(ipvsadm("-Sn"))
                return bool(
                    downs(daemon, refusing)
                    and downs(daemon, refusing, RAMPED)
                    and ups(daemon, a1)
                    and ups(daemon, a2)
                    and ups(daemon, a1, RAMPED)
                    and destinations(seen[-1], PLAIN).keys() == {a1, a2}
                    and destinations(seen[-1], RAMPED).keys() == {a1}
                )

            wait_for(daemon, settled, "the answering servers in, the refusing one down")
            # The first failure decides: no `fall` for a server never in service.
            assert downs(daemon, refusing)[0]["failures_in_row"] == 1, daemon.log_text()
            for saved in seen:
                assert refusing not in saved, saved
            # Line for line, the table with `initial = "up"` at READY=1 less
            # the refusing server's lines. Sorted: a service lists its real
            # servers in the order they were added, here the order their
            # first probes passed.
            expected = sorted(line for line in at_ready.splitlines() if refusing not in line)
            assert sorted(seen[-1].splitlines()) == expected, (seen[-1], at_ready)
            assert daemon.stop() == 0, daemon.log_text()
        finally:
            daemon.close()
        ipvsadm("-C")
