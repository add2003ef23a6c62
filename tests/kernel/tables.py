"""Helpers for comparing the real ipvsadm with director.ipvsadm on a real
kernel: both run the same command lines and their outputs are compared.

`real()` runs /usr/sbin/ipvsadm; `Ours.run()` does what ipvsadm's main()
does, with director.ipvsadm.cli parsing, a NetlinkBackend applying and
director.ipvsadm.listing printing. `tables()` draws random ipvsadm tables as
command lines.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from hypothesis import strategies as st

from director.ipvs.netlink import NetlinkBackend, NetlinkBatchError
from director.ipvsadm import (
    Apply,
    Command,
    Help,
    ListConnections,
    ListDaemons,
    ListServices,
    ListTimeouts,
    ParseError,
    Restore,
    Save,
    SystemNames,
    Version,
    listing,
    parse,
    parse_restore,
)
from director.ipvsadm.names import Names

Line = tuple[str, ...]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


@dataclass(frozen=True)
class Outcome:
    stdout: str
    stderr: str
    status: int


def real(args: Sequence[str], stdin: str | None = None) -> Outcome:
    done = subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True)
    return Outcome(done.stdout, done.stderr, done.returncode)


def real_ok(args: Sequence[str], stdin: str | None = None) -> str:
    outcome = real(args, stdin)
    assert (outcome.stderr, outcome.status) == ("", 0), (args, stdin, outcome)
    return outcome.stdout


def script(lines: Sequence[Line]) -> str:
    """`ipvsadm -R` input running `lines` in order."""
    return "".join(" ".join(line) + "\n" for line in lines)


class _Exit(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


@dataclass
class Ours:
    """ipvsadm's main() and process_options() over director's pieces: what an
    ipvsadm built on director would print and exit with."""

    backend: NetlinkBackend
    names: Names = field(default_factory=SystemNames)

    def run(self, args: Sequence[str], stdin: str | None = None) -> Outcome:
        out: list[str] = []
        err: list[str] = []
        try:
            try:
                command = parse(args, names=self.names)
            except ParseError as error:
                err.append(error.message)
                raise _Exit(error.status) from None
            status = self._execute(command, stdin or "", out, err)
        except _Exit as exit:
            status = exit.status
        return Outcome("".join(out), "".join(err), status)

    def _execute(self, command: Command, stdin: str, out: list[str], err: list[str]) -> int:
        backend, names = self.backend, self.names
        if isinstance(command, Apply):
            try:
                backend.apply([command.operation])
            except NetlinkBatchError as failure:
                err.append(listing.kernel_error(failure.error))
                return 255
            return 0
        if isinstance(command, ListServices):
            if command.service is None:
                out.append(
                    listing.services(
                        backend.services(brief=command.format.brief),
                        backend.info(),
                        command.format,
                        names,
                    )
                )
                return 0
            entries = backend.services(brief=command.format.brief)
            entry = listing.find_service(entries, command.service)
            if entry is None:
                err.append("No such service\n")
                raise _Exit(1)
            out.append(listing.service(entry, command.format, names))
        elif isinstance(command, ListConnections):
            out.append(listing.connections(backend.connections(), command.format, names))
        elif isinstance(command, ListTimeouts):
            out.append(listing.timeouts(backend.timeouts()))
        elif isinstance(command, ListDaemons):
            out.append(listing.daemons(backend.daemons()))
        elif isinstance(command, Save):
            out.append(listing.save(backend.services(brief=True), command.numeric, names))
        elif isinstance(command, Help):
            out.append(listing.usage(command.program))
        elif isinstance(command, Version):
            out.append(listing.version())
        elif isinstance(command, Restore):
            status = 0
            for step in parse_restore(stdin, names=names):
                if isinstance(step, ParseError):
                    err.append(step.message)
                    if step.fatal:
                        raise _Exit(step.status)
                    status = 255
                else:
                    status = self._execute(step, "", out, err)
            return status
        return 0


# --- network namespaces besides the test's own


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def entered(name: str) -> Iterator[None]:
    """Run this thread (and what it starts) in namespace `name` for a while."""
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        yield
    finally:
        _setns(original)
        os.close(target)
        os.close(original)


@contextmanager
def namespace() -> Iterator[str]:
    """A fresh network namespace (loopback up), deleted afterwards."""
    name = f"dtc{os.getpid()}-{next(_names)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@contextmanager
def backend_in(name: str) -> Iterator[NetlinkBackend]:
    """A NetlinkBackend on namespace `name`'s table (this thread stays put)."""
    with entered(name):
        backend = NetlinkBackend()
    with backend:
        yield backend


# --- what is listed


TABLE_LISTINGS: tuple[Line, ...] = (
    ("-L", "-n"),
    ("-l", "--numeric"),
    ("-L",),
    ("--list",),
    ("-S",),
    ("-S", "-n"),
    ("--save", "--numeric"),
    ("-L", "-n", "--stats"),
    ("-L", "--stats"),
    ("-L", "-n", "--stats", "--exact"),
    ("-L", "-n", "--rate"),
    ("-L", "-n", "--rate", "--exact"),
    ("-L", "-n", "--thresholds"),
    ("-L", "--thresholds"),
    ("-L", "-n", "--persistent-conn"),
    ("-L", "-n", "--exact"),
    ("-L", "-n", "--sort"),
    ("-L", "-n", "--nosort"),
    ("-L", "--nosort", "--stats"),
    ("-L", "-n", "--tun-info"),
    ("-L", "--tun-info"),
    ("-L", "--timeout"),
    ("-L", "--daemon"),
    ("-L", "-n", "-c"),
    ("-L", "-c"),
    ("-L", "-n", "-c", "--persistent-conn"),
)
PER_SERVICE_FORMATS: tuple[Line, ...] = (
    ("-n",),
    (),
    ("-n", "--stats"),
    ("-n", "--rate", "--exact"),
    ("-n", "--thresholds"),
    ("-n", "--persistent-conn"),
    ("-n", "--tun-info"),
)
MISSING_SERVICE: Line = ("-t", "10.254.254.254:1")


def listing_script(services: Sequence[Line]) -> str:
    """`ipvsadm -R` input printing the table every way ipvsadm can, then each
    service of `services` (ipvsadm service options, e.g. ("-t", "1.2.3.4:80"))
    alone, then a missing service (which ends the run: status 1)."""
    lines = list(TABLE_LISTINGS)
    for index, service in enumerate(services):
        extra = PER_SERVICE_FORMATS[index % len(PER_SERVICE_FORMATS)]
        lines.append(("-L", *service, *extra))
    lines.append(("-L", "-n", *MISSING_SERVICE))
    return script(lines)


# --- random tables as ipvsadm command lines

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh")
V4_ADDRESSES = (
    "10.0.0.1",
    "192.168.1.10",
    "172.16.5.4",
    "200.1.2.3",
    "127.0.0.1",
    "1.2.3.4",
    "10.255.255.254",
    "223.255.255.1",
)
V6_ADDRESSES = (
    "2001:db8::1",
    "2001:db8:1234:5678:9abc:def0:1234:5678",
    "fd00::1:2",
    "2001:db8::a:b",
    "::2",
    "ff::1",
    # Fine for a service, refused by the kernel for a destination:
    "::ffff:10.1.2.3",
    "fe80::1234",
)
DESTINATION_SLOTS = 6
WELL_KNOWN_PORTS = (21, 22, 53, 80, 443, 5060, 8080, 3306, 65535)
PORT_NAMES = {80: "http", 443: "https", 53: "domain"}


@dataclass(frozen=True)
class TableLines:
    """A table as the ipvsadm commands that build it, and how each of its
    services is named on a command line."""

    lines: tuple[Line, ...]
    services: tuple[Line, ...]


def _host_port(family: int, address: str, port: str | None) -> str:
    if port is None:
        return address
    return f"{address}:{port}" if family == 4 else f"[{address}]:{port}"


@st.composite
def _port_text(draw: st.DrawFn, port: int) -> str:
    if port in PORT_NAMES and draw(st.booleans()):  # only asked of tcp services
        return PORT_NAMES[port]
    return str(port)


@st.composite
def _service(draw: st.DrawFn, kind: str, family: int, address: str, port: int) -> tuple[Line, Line]:
    """(the -A line, the service options naming it)."""
    if kind == "fwmark":
        spelling = draw(st.sampled_from(["-f", "--fwmark-service"]))
        name: Line = (spelling, str(port))
        if family == 6:
            name += (draw(st.sampled_from(["-6", "--ipv6"])),)
    else:
        spelling = draw(
            st.sampled_from(
                {
                    "tcp": ["-t", "--tcp-service"],
                    "udp": ["-u", "--udp-service"],
                    "sctp": ["--sctp-service"],
                }[kind]
            )
        )
        port_text = draw(_port_text(port)) if kind == "tcp" else str(port)
        name = (spelling, _host_port(family, address, port_text))
    persistent = (port == 0 and kind != "fwmark") or draw(st.booleans())
    if persistent and port == 0 and kind != "fwmark" and draw(st.booleans()):
        name = (name[0], address)
    line: Line = ("-A", *name)
    scheduler = draw(st.sampled_from((None, *SCHEDULERS)))
    if scheduler is not None:
        line += (draw(st.sampled_from(["-s", "--scheduler"])), scheduler)
    if persistent:
        timeout = draw(
            st.sampled_from([None, "1", "300", "2678400"]) | st.integers(1, 99999).map(str)
        )
        line += ("-p",) if timeout is None else ("-p", timeout)
        if draw(st.booleans()):
            mask = (
                draw(
                    st.sampled_from(
                        ["255.255.255.0", "255.255.0.0", "255.0.0.0", "255.255.255.252"]
                    )
                )
                if family == 4
                else str(draw(st.integers(1, 127)))
            )
            line += (draw(st.sampled_from(["-M", "--netmask"])), mask)
    if draw(st.integers(0, 4)) == 0:
        line += ("--pe", "sip")
    if kind in ("udp", "fwmark") and draw(st.booleans()):
        line += (draw(st.sampled_from(["-o", "--ops"])),)
    choices = {
        "sh": ["sh-fallback", "sh-port"],
        "mh": ["mh-fallback", "mh-port"],
    }.get(scheduler or "", ["flag-1", "flag-2", "flag-3"])
    flags = draw(st.lists(st.sampled_from(choices), unique=True, max_size=len(choices)))
    if flags and (scheduler in ("sh", "mh") or draw(st.integers(0, 3)) == 0):
        line += (draw(st.sampled_from(["-b", "--sched-flags"])), ",".join(flags))
    return line, name


@st.composite
def _destination(
    draw: st.DrawFn, service: Line, family: int, address: str, port: int, tunnel_only: bool
) -> Line:
    methods = ["-i", "--ipip"]
    if not tunnel_only:
        methods += ["-g", "--gatewaying", "-m", "--masquerading", ""]
    forward = draw(st.sampled_from(methods))
    tunnel = forward in ("-i", "--ipip")
    port_text: str | None = str(draw(st.sampled_from((port, 0, 80, 8080, 65535))))
    if draw(st.integers(0, 3)) == 0:
        port_text = None
    line: Line = ("-a", *service, draw(st.sampled_from(["-r", "--real-server"])))
    line += (_host_port(family, address, port_text),)
    if forward:
        line += (forward,)
    if draw(st.booleans()):
        weight = draw(st.sampled_from([0, 1, 100, 65535, 1000000, 2147483647]))
        line += (draw(st.sampled_from(["-w", "--weight"])), str(weight))
    # The kernel refuses a lower threshold above the upper one (ERANGE).
    upper = draw(st.sampled_from([None, 0, 1, 500, 99999999, 2147483647]))
    if upper is not None:
        line += (draw(st.sampled_from(["-x", "--u-threshold"])), str(upper))
    lower = draw(st.sampled_from([None, 0, 1, 500, 99999999, 2147483647]))
    if lower is not None and lower <= (upper or 0):
        line += (draw(st.sampled_from(["-y", "--l-threshold"])), str(lower))
    if tunnel:
        tun_type = draw(st.sampled_from([None, "ipip", "gue", "gre"]))
        if tun_type is not None:
            line += ("--tun-type", tun_type)
        if tun_type == "gue":
            line += ("--tun-port", str(draw(st.sampled_from([1, 6080, 65535]))))
            csum = draw(st.sampled_from([None, "--tun-nocsum", "--tun-csum", "--tun-remcsum"]))
            line += (csum,) if csum else ()
        elif tun_type == "gre":
            csum = draw(st.sampled_from([None, "--tun-nocsum", "--tun-csum"]))
            line += (csum,) if csum else ()
    return line


@st.composite
def tables(draw: st.DrawFn, max_services: int = 5) -> TableLines:
    keys = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["tcp", "udp", "sctp", "fwmark"]),
                st.sampled_from([4, 6]),
                st.integers(0, len(V4_ADDRESSES) - 1),
                st.sampled_from(WELL_KNOWN_PORTS) | st.integers(0, 65535),
            ),
            min_size=1,
            max_size=max_services,
            unique_by=lambda k: (k[0], k[1], k[3] or 1) if k[0] == "fwmark" else k,
        )
    )
    lines: list[Line] = []
    services: list[Line] = []
    for kind, family, index, port in keys:
        pool = V4_ADDRESSES if family == 4 else V6_ADDRESSES
        if kind == "fwmark":
            port = port or 1
        line, name = draw(_service(kind, family, pool[index], port))
        lines.append(line)
        services.append(name)
        count = draw(st.integers(0, 4))
        slots = st.integers(0, DESTINATION_SLOTS - 1)
        for slot in draw(st.lists(slots, unique=True, min_size=count, max_size=count)):
            mixed = draw(st.integers(0, 4)) == 0  # only a tunnel may cross families
            dest_family = 10 - family if mixed else family
            dest_pool = V4_ADDRESSES if dest_family == 4 else V6_ADDRESSES
            lines.append(draw(_destination(name, dest_family, dest_pool[slot], port, mixed)))
    return TableLines(tuple(lines), tuple(services))


def same_lines(saved: str, expected: str) -> bool:
    """The same -S lines, in any order. ipvsadm sorts services and
    destinations by subtracting addresses as signed ints, which is not a total
    order (172.16.5.4 < 10.255.255.254 < 127.0.0.1 < 172.16.5.4 as it compares;
    also across families), so the order it saves depends on the order the
    kernel dumps, which depends on the namespace (its hash keys include it)
    and the order entries were added: a table restored into a fresh namespace
    may save in another order, with ipvsadm -R as much as with ours."""
    return sorted(saved.splitlines()) == sorted(expected.splitlines())
