"""The engine's own cost, on the host, without a kernel: directord's Director
over the in-memory backend, under trio's autojump clock, with a fake probe
(every server answers at once; a server in the `down` set fails).

For a small and a large table (by default 1 service x 10 real servers and
100 services x 100 real servers, the scale benchmark's 10,000) it measures,
in CPU seconds of this process (utime + stime):

- start: from the Director's creation to its readiness (the first pass, the
  checker's targets), then the passes and the CPU spent in them until every
  server is in the table (virtual time; probes are not counted);
- transition: the pass that one server's health change causes (one server of
  the first service goes down): its CPU, the services it read and the
  operations it sent;
- full pass: `Director.reconcile` over every managed service once the
  table is full and nothing changed (what a poke, a recovery after a failed
  pass, and every drift check before the digests cost): its CPU, median of
  FULL_PASSES, without the kernel's decoding; and its netlink decoding
  over the real kernel, one GET_DEST reply per destination (with its stats,
  as the kernel sends them) decoded as NetlinkBackend.services decodes them;
- drift check: `Director.drift_check` with nothing changed, median of
  DRIFT_CHECKS in a row after the first: the digests of /proc/net/ip_vs
  (netlink.table_digests of the table as the kernel prints it; that part
  alone on its own row), one slice of services read in full (their number,
  averaged), and the netlink decoding those reads add over the real kernel
  (estimated from the decode row);
- reload: `Director.reload_file` of the same config with one real server's
  weight changed (parsing, validation, the checker's targets and the pass):
  its own CPU (ReloadSummary.cpu: the parse's thread and the engine's; the
  process's would count the probes the autojump clock runs meanwhile) and
  the operations sent (the target is exactly 1);

and prints the large table's figures over the small one's. The config is
written by bench/common.directord_config, as the scale benchmark writes it.

    .venv/bin/python bench/engine.py [--small 1x10] [--large 100x100] [--profile start|fill|transition|full|drift|reload]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import resource
import struct
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import trio
import trio.testing

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import TcpTiming, VirtualService, directord_config

from director import log
from director.config import load_config
from director.engine import Director
from director.health.result import ProbeResult, Reason
from director.health.spec import Check
from director.ipvs import genl
from director.ipvs.errors import KernelError
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import Forward, IPAddress, ServiceEntry, ServiceKey
from director.ipvs.netlink import table_digests
from director.ipvs.ops import Operation
from director.ipvs.servicetable import TableKey
from director.kernel import KernelTable

VIP = "10.1.0.1"
FIRST_PORT = 20000
FULL_PASSES = 7
DRIFT_CHECKS = 24


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CountingBackend(MemoryBackend):
    """The in-memory backend, counting services read and operations sent;
    its `service_digests` are NetlinkBackend's: table_digests of the table
    as the kernel prints it in /proc/net/ip_vs (rendered again only when an
    operation changed it: the kernel's work, not the daemon's)."""

    def __init__(self) -> None:
        super().__init__()
        self.services_read = 0
        self.operations = 0
        self._text: tuple[int, str] = (-1, "")

    def service_digests(self) -> dict[TableKey, str] | None:
        if self._text[0] != len(self.applied):
            self._text = (len(self.applied), service_table(MemoryBackend.services(self)))
        return table_digests(self._text[1])

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        entries = super().services(only, brief=brief)
        self.services_read += len(entries)
        return entries

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        self.operations += len(operations)
        return super().apply_each(operations)


@dataclass
class Figures:
    servers: int
    ready_cpu: float = 0.0
    fill_passes: int = 0
    fill_pass_cpu: float = 0.0
    transition_cpu: float = 0.0
    transition_reads: int = 0
    transition_ops: int = 0
    full_pass_cpu: float = 0.0
    full_pass_ops: int = 0
    decode_cpu: float = 0.0
    drift_cpu: float = 0.0
    drift_ops: int = 0
    drift_reads: float = 0.0
    digest_cpu: float = 0.0
    drift_decode_cpu: float = 0.0
    reload_cpu: float = 0.0
    reload_ops: int = 0


@contextmanager
def profiled(wanted: bool) -> Iterator[None]:
    if not wanted:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


def write_configs(services: int, per_service: int, workdir: Path) -> tuple[Path, Path]:
    vss = [
        VirtualService(
            VIP,
            FIRST_PORT + i,
            tuple((f"10.2.{i + 1}.{j + 1}", FIRST_PORT + i) for j in range(per_service)),
        )
        for i in range(services)
    ]
    timing = TcpTiming(interval=1.0, timeout=1.0, fall=1, rise=1)
    text = directord_config(vss, timing, workdir)
    first, second = workdir / "a.toml", workdir / "b.toml"
    first.write_text(text)
    # One real server of the first service gets another weight.
    server = f'address = "10.2.1.2:{FIRST_PORT}"'
    assert server in text, "a service of at least 2 real servers is needed"
    second.write_text(text.replace(server, server + "\nweight = 3", 1))
    return first, second


async def measure(services: int, per_service: int, profile: str | None) -> Figures:
    figures = Figures(services * per_service)
    with tempfile.TemporaryDirectory(prefix="director-bench-engine-") as tmp:
        first, second = write_configs(services, per_service, Path(tmp))
        down: set[IPAddress] = set()

        async def probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
            await trio.lowlevel.checkpoint()
            if address in down:
                return ProbeResult.failure(Reason.REFUSED, 0.0)
            return ProbeResult.success(0.0)

        backend = CountingBackend()
        pass_cpu = [0.0]
        passes_profile = cProfile.Profile() if profile == "fill" else None
        with profiled(profile == "start"):
            began = cpu()
            config = await trio.to_thread.run_sync(load_config, str(first))
            director = Director(
                config,
                KernelTable(backend, threaded=False),
                state_path=Path(tmp) / "state.json",
                probe=probe,
                rng=random.Random(1),
            )
            # Every pass is timed, whichever way it is called.
            reconcile = director.reconcile

            async def timed(
                why: str, only: Collection[ServiceKey] | None = None, **kwargs: Any
            ) -> list[Operation]:
                t = cpu()
                if passes_profile is not None and only is not None:
                    passes_profile.enable()
                try:
                    return await reconcile(why, only=None if only is None else set(only), **kwargs)
                finally:
                    if passes_profile is not None:
                        passes_profile.disable()
                    pass_cpu[0] += cpu() - t

            director.reconcile = timed  # type: ignore[method-assign]
            async with trio.open_nursery() as nursery:
                await nursery.start(director.run)
                figures.ready_cpu = cpu() - began
                # The profile of a start covers the readiness only.
                pass_cpu[0] = 0.0
                passes = director._passes
                while (  # noqa: ASYNC110
                    sum(len(e.destinations) for e in MemoryBackend.services(backend))
                    < figures.servers
                ):
                    await trio.sleep(0.25)
                figures.fill_passes = director._passes - passes
                figures.fill_pass_cpu = pass_cpu[0]
                if passes_profile is not None:
                    pstats.Stats(passes_profile).sort_stats("tottime").print_stats(25)
                    passes_profile = None

                victim = ip_address("10.2.1.1")
                pass_cpu[0] = 0.0
                down.add(victim)
                reads, ops = backend.services_read, backend.operations
                with profiled(profile == "transition"):
                    while any(  # noqa: ASYNC110
                        d.destination.address == victim
                        for e in MemoryBackend.services(backend, [config.virtual_servers[0].key])
                        for d in e.destinations
                    ):
                        await trio.sleep(0.001)
                figures.transition_cpu = pass_cpu[0]
                figures.transition_reads = backend.services_read - reads
                figures.transition_ops = backend.operations - ops

                ops = backend.operations
                samples = []
                with profiled(profile == "full"):
                    for _ in range(FULL_PASSES):
                        t = cpu()
                        await reconcile("drift check")
                        samples.append(cpu() - t)
                figures.full_pass_cpu = sorted(samples)[len(samples) // 2]
                figures.full_pass_ops = backend.operations - ops
                figures.decode_cpu = decode_cpu(MemoryBackend.services(backend))

                ops, reads = backend.operations, backend.services_read
                samples = []
                await director.drift_check()  # the first after a full pass reads all
                ops, reads = backend.operations, backend.services_read
                with profiled(profile == "drift"):
                    for _ in range(DRIFT_CHECKS):
                        t = cpu()
                        await director.drift_check()
                        samples.append(cpu() - t)
                figures.drift_cpu = sorted(samples)[len(samples) // 2]
                figures.drift_ops = backend.operations - ops
                figures.drift_reads = (backend.services_read - reads) / DRIFT_CHECKS
                figures.digest_cpu = digest_cpu(MemoryBackend.services(backend))
                figures.drift_decode_cpu = (
                    figures.decode_cpu * figures.drift_reads / max(services, 1)
                )

                ops = backend.operations
                with profiled(profile == "reload"):
                    result = await director.reload_file(second)
                assert result.summary is not None, result.errors
                # Its own CPU (the parse's thread and the engine's): the
                # process's would count the probes the autojump clock runs
                # while the parse's thread works.
                figures.reload_cpu = result.summary.cpu
                figures.reload_ops = backend.operations - ops
                nursery.cancel_scope.cancel()
    return figures


def decode_cpu(entries: Sequence[ServiceEntry]) -> float:
    """CPU seconds to decode `entries`' destinations from GET_DEST replies as
    the kernel sends them (ip_vs_genl_fill_dest: stats and stats64 included),
    the way NetlinkBackend.services does."""
    stats = genl.nested(
        genl.DEST_ATTR_STATS64, *(genl.attr(i, struct.pack("=Q", 1000 + i)) for i in range(1, 11))
    )
    replies = []
    for entry in entries:
        key = entry.service.key
        for d in entry.destinations:
            nest = genl.parse_attrs(genl.destination_nest(key, d.destination))[genl.CMD_ATTR_DEST]
            extra = b"".join(
                genl.attr(kind, struct.pack("=I", 0))
                for kind in (
                    genl.DEST_ATTR_ACTIVE_CONNS,
                    genl.DEST_ATTR_INACT_CONNS,
                    genl.DEST_ATTR_PERSIST_CONNS,
                )
            )
            body = genl.genl_body(
                genl.CMD_NEW_DEST, genl.attr(genl.CMD_ATTR_DEST, nest + extra + stats)
            )
            replies.append((genl.frame(1, genl.NLM_F_MULTI, 1, body), key.family))
    began = cpu()
    for data, family in replies:
        for message in genl.messages(data):
            genl.parse_destination(message, family)
    return cpu() - began


def service_table(entries: Sequence[ServiceEntry]) -> str:
    """`entries` as the kernel prints them in /proc/net/ip_vs
    (ip_vs_info_seq_show; IPv4 TCP services only), with connection counts."""
    lines = [
        "IP Virtual Server version 1.2.1 (size=4096)",
        "Prot LocalAddress:Port Scheduler Flags",
        "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn",
    ]
    names = {Forward.MASQ: "Masq", Forward.ROUTE: "Route", Forward.TUNNEL: "Tunnel"}
    for entry in entries:
        key = entry.service.key
        assert key.address is not None
        lines.append(f"TCP  {int(key.address):08X}:{key.port:04X} {entry.service.scheduler} ")
        for d in entry.destinations:
            dest = d.destination
            lines.append(
                f"  -> {int(dest.address):08X}:{dest.port:04X}      "
                f"{names.get(dest.forward, 'Local'):<7s} {dest.weight:<6d} {3:<10d} {17:<10d}"
            )
    return "\n".join(lines) + "\n"


def digest_cpu(entries: Sequence[ServiceEntry]) -> float:
    """CPU seconds of netlink.table_digests over `entries` as the kernel
    prints them."""
    text = service_table(entries)
    began = cpu()
    digests = table_digests(text)
    spent = cpu() - began
    assert len(digests) == len(entries)
    return spent


def shape(text: str) -> tuple[int, int]:
    services, _, per_service = text.partition("x")
    return int(services), int(per_service)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=shape, default=(1, 10), help="SERVICESxSERVERS")
    parser.add_argument("--large", type=shape, default=(100, 100), help="SERVICESxSERVERS")
    parser.add_argument(
        "--profile", choices=("start", "fill", "transition", "full", "drift", "reload")
    )
    args = parser.parse_args(argv)
    log.configure("info", open(os.devnull, "w"), json=True)  # noqa: SIM115
    results = []
    for services, per_service in (args.small, args.large):
        figures = trio.run(
            measure,
            services,
            per_service,
            args.profile if (services, per_service) == args.large else None,
            clock=trio.testing.MockClock(autojump_threshold=0),
        )
        results.append(figures)
    small, large = results
    rows: list[tuple[str, Callable[[Figures], float]]] = [
        ("ready, CPU ms", lambda f: 1000 * f.ready_cpu),
        ("passes to a full table", lambda f: f.fill_passes),
        ("  their CPU ms", lambda f: 1000 * f.fill_pass_cpu),
        ("transition pass, CPU ms", lambda f: 1000 * f.transition_cpu),
        ("  services read", lambda f: f.transition_reads),
        ("  operations", lambda f: f.transition_ops),
        ("full pass, nothing changed, CPU ms", lambda f: 1000 * f.full_pass_cpu),
        ("  operations", lambda f: f.full_pass_ops),
        ("  + netlink decode, CPU ms", lambda f: 1000 * f.decode_cpu),
        ("drift check, nothing changed, CPU ms", lambda f: 1000 * f.drift_cpu),
        ("  services read in full", lambda f: f.drift_reads),
        ("  operations", lambda f: f.drift_ops),
        ("  of which /proc/net/ip_vs digests, ms", lambda f: 1000 * f.digest_cpu),
        ("  + netlink decode of its reads, ms", lambda f: 1000 * f.drift_decode_cpu),
        ("reload, one server changed, CPU ms", lambda f: 1000 * f.reload_cpu),
        ("  operations", lambda f: f.reload_ops),
    ]
    print(f"{'':40}{small.servers:>10}{large.servers:>10}   ratio")
    for name, value in rows:
        a, b = float(value(small)), float(value(large))
        shown = f"{b / a:7.2f}" if a else "      -"
        print(f"{name:40}{a:10.3f}{b:10.3f}   {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
