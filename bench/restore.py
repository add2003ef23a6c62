"""`directorctl -R`'s cost in the daemon, on the host, without a kernel.

The restore part of bench/ctl.py needs IPVS (the VM); this is the daemon's
side of it alone: a fresh Director with no virtual servers (the config
bench/ctl.py's directord gets: a TCP `runtime_check`, a state file in a
temporary directory) over the in-memory backend, called inline (no worker
thread, so that this thread's CPU is all of it), and the Controller's -R of
ctl.table()'s lines (1,000 TCP services x 4 masquerading destinations by
default: 5,000 lines). Per round, a new Director; printed, in CPU ms of
this thread (medians of --rounds), the whole -R and its parts:

- parse: the lines parsed (parse_restore, through the Controller's _bulk);
- changes: the lines' changes into the runtime layer, kernel probes included;
- commit: `Director.commit`, and of it `set_runtime` (the effective config
  and the checker's targets), of that the checker's `set_targets` or
  `update_targets`, the state file (`Director.save`: encoding and the atomic
  write with its fsyncs; statefile.encode alone on its own row), and the pass.

    .venv/bin/python bench/restore.py [--services 1000] [--dests 4] [--rounds 5] [--profile]

Then, on the same daemon, one line (`-a` of one more real server): its
CPU, its commit, the checker's part, the state file and the pass ("one ...":
what a change costs once the daemon holds the -R's thousands of servers).

With --profile, the last round's commit runs under cProfile (printed), with
--profile-all its whole -R (SORT and TOP: pstats' order and row count); with
--no-gc, the garbage collector is off during the -R (the daemon's has it on:
its full collections land in whichever part allocates at the time). The
daemon holds the collector off during a -R itself (director.control.handler
_collector_held); --no-hold measures it without that hold, --freeze with
gc.freeze() after the daemon's start (its objects then out of every
collection). "collect" is a full collection right after the -R: what the
held collector does once it is on again (with --gc).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import os
import pstats
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

import director.control.handler

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import TcpTiming, directord_config
from ctl import table

from director import log, statefile
from director.config import parse_config
from director.control.handler import Controller
from director.control.messages import Peer, Request
from director.engine import Director
from director.health.result import ProbeResult
from director.health.spec import Check
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import IPAddress
from director.kernel import KernelTable

ROOT = Peer(uid=0, gid=0, pid=1, may_change=True)
PARTS = (
    "restore",
    "parse",
    "changes",
    "commit",
    "set_runtime",
    "targets",
    "save",
    "encode",
    "pass",
    "collect",
)
ONE_PARTS = ("one restore", "one commit", "one targets", "one save", "one pass")
# One real server more for the -R's first service (ctl.table's 10.1.0.1:80).
ONE_LINE = ("-a", "-t", "10.1.0.1:80", "-r", "10.3.0.1:80", "-m", "-w", "1")


async def probe(check: Check, address: IPAddress, port: int) -> ProbeResult:
    await trio.lowlevel.checkpoint()
    return ProbeResult.success(0.0)


def timed(samples: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            samples[name] = samples.get(name, 0.0) + time.thread_time() - began

    return wrapper


def timed_async(
    samples: dict[str, float], name: str, function: Callable[..., Any]
) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.thread_time()
        try:
            return await function(*args, **kwargs)
        finally:
            samples[name] = samples.get(name, 0.0) + time.thread_time() - began

    return wrapper


async def one_round(
    text: str, workdir: Path, profile: bool, collect: bool, freeze: bool, profile_all: bool = False
) -> dict[str, float]:
    timing = TcpTiming(interval=60.0)
    config = parse_config(directord_config([], timing, workdir))
    director = Director(
        config,
        KernelTable(MemoryBackend(), threaded=False),
        state_path=workdir / "state.json",
        probe=probe,
        rng=random.Random(1),
    )
    samples: dict[str, float] = {}
    controller = Controller(director)
    controller._bulk = timed_async(samples, "parse", controller._bulk)  # type: ignore[method-assign]
    controller._changes = timed(samples, "changes", controller._changes)  # type: ignore[method-assign]
    profiler = cProfile.Profile() if profile else None
    commit = director.commit

    async def profiled_commit(*args: Any, **kwargs: Any) -> Any:
        if profiler is not None:
            profiler.enable()
        try:
            return await commit(*args, **kwargs)
        finally:
            if profiler is not None:
                profiler.disable()

    director.commit = timed_async(samples, "commit", profiled_commit)  # type: ignore[method-assign]
    director.set_runtime = timed(samples, "set_runtime", director.set_runtime)  # type: ignore[method-assign]
    director.save = timed_async(samples, "save", director.save)  # type: ignore[method-assign]
    director.reconcile = timed_async(samples, "pass", director.reconcile)  # type: ignore[method-assign]
    checker: Any = director.checker
    for name in ("set_targets", "update_targets"):
        if hasattr(checker, name):
            setattr(checker, name, timed(samples, "targets", getattr(checker, name)))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        if freeze:
            gc.freeze()
        samples.clear()
        if not collect:
            gc.disable()
        whole = cProfile.Profile() if profile_all else None
        began = time.thread_time()
        try:
            if whole is not None:
                whole.enable()
            response = await controller.handle(Request(argv=("-R",), args={"stdin": text}), ROOT)
        finally:
            if whole is not None:
                whole.disable()
                profiler = whole
            gc.enable()
        samples["restore"] = time.thread_time() - began
        if collect:
            began = time.thread_time()
            gc.collect()
            samples["collect"] = time.thread_time() - began
        if freeze:
            gc.unfreeze()
        if response.status != 0 or response.stderr:
            raise SystemExit(f"-R: {response}")
        # Then one line into the table the -R made: what it costs is what
        # a change costs once the daemon holds thousands of servers.
        restored = dict(samples)
        samples.clear()
        if not collect:
            gc.disable()
        began = time.thread_time()
        try:
            response = await controller.handle(Request(argv=ONE_LINE), ROOT)
        finally:
            gc.enable()
        samples["restore"] = time.thread_time() - began
        if response.status != 0 or response.stderr:
            raise SystemExit(f"{' '.join(ONE_LINE)}: {response}")
        one = {f"one {name}": seconds for name, seconds in samples.items()}
        samples.clear()
        samples.update(restored, **one)
        nursery.cancel_scope.cancel()
    saved = statefile.load(workdir / "state.json")
    began = time.thread_time()
    statefile.encode(saved.layer, saved.owned, saved.sync, vips=saved.vips)
    samples["encode"] = time.thread_time() - began
    if profiler is not None:
        pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "25"))
        )
    return samples


async def main_async(args: argparse.Namespace) -> None:
    text = table(args.services, args.dests)
    print(
        f"table: {args.services} services x {args.dests} destinations ({text.count(chr(10))} lines)"
    )
    rounds: list[dict[str, float]] = []
    for round_ in range(args.rounds):
        gc.collect()  # the previous rounds' garbage: each round is a fresh daemon
        with tempfile.TemporaryDirectory(prefix="director-bench-restore-") as tmp:
            last = round_ == args.rounds - 1
            samples = await one_round(
                text,
                Path(tmp),
                args.profile and last,
                args.gc,
                args.freeze,
                args.profile_all and last,
            )
        rounds.append(samples)
        print(
            f"round {round_ + 1}: "
            + ", ".join(f"{n} {samples.get(n, 0.0) * 1000:.1f}" for n in PARTS + ONE_PARTS)
            + " (CPU ms)",
            flush=True,
        )
    print(
        f"median of {args.rounds}: "
        + ", ".join(
            f"{n} {statistics.median(r.get(n, 0.0) for r in rounds) * 1000:.1f}"
            for n in PARTS + ONE_PARTS
        )
        + " (CPU ms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--dests", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile of the last commit")
    parser.add_argument(
        "--profile-all", action="store_true", help="cProfile of the last round's whole -R"
    )
    parser.add_argument(
        "--gc",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-gc: the garbage collector off during the -R (its collections,"
        " which come at any allocation, make the parts' figures noisy)",
    )
    parser.add_argument(
        "--hold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="--no-hold: without the daemon's hold of the collector during the -R",
    )
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after the start")
    args = parser.parse_args()
    if not args.hold:
        director.control.handler._collector_held = contextlib.nullcontext  # type: ignore[assignment]
    log.configure("info", open(os.devnull, "w"), json=True)  # noqa: SIM115 (as the daemon logs)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
