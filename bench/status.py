"""`directorctl status` at 10,000 real servers, timed on the host.

    .venv/bin/python bench/status.py [--services 100] [--servers 100] [--rounds 5] [--profile]

The engine on the in-memory backend (as bench/metrics.py runs it: a fake
probe that answers at once, 9 of 10 up), the Controller answering `status`
and `status --json` as the control server would (the handler, then the
response's encoding), and the client's decoding of that line. Per part,
the median CPU of this process (time.process_time; for the answer also
the event loop thread's own, time.thread_time, probes included: the
engine's probes count too with --probing; by default the engine is stopped
once every server is probed, its states kept), and the size of the response. --profile: the
handler and encoding under cProfile, the top entries by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from metrics import config_text, probe, ready

from director import ctl, log
from director.config import parse_config
from director.control.handler import Controller
from director.control.messages import Peer, Request
from director.control.protocol import encode_response
from director.engine import Director
from director.ipvs.memory import MemoryBackend
from director.kernel import KernelTable

PEER = Peer(uid=0, gid=0, pid=1, may_change=True)


async def bench(services: int, servers: int, rounds: int, profile: bool, probing: bool) -> None:
    config = parse_config(config_text(services, servers))
    backend = MemoryBackend()
    director = Director(config, KernelTable(backend), probe=probe, rng=random.Random(1))
    controller = Controller(director, reads=KernelTable(backend))
    async with trio.open_nursery() as nursery:
        await nursery.start(director.run)
        total = services * servers
        while not ready(director, backend, total):  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(0.2)
        if not probing:
            nursery.cancel_scope.cancel()  # the states stay; no probe runs meanwhile
    async with trio.open_nursery() as nursery:
        print(
            f"table: {services} services x {servers} real servers = {total:,}"
            f" ({'probed' if probing else 'no probes'} meanwhile)"
        )
        asks: tuple[tuple[str, dict[str, object]], ...] = (
            ("status (text and data)", {"json": False}),
            ("status (directorctl: text)", {"json": False, "data": False}),
            ("status --json", {"json": True}),
        )
        for name, args in asks:
            request = Request(command="status", args=args)
            answer, loop, encode, decode, size = [], [], [], [], 0
            for _ in range(rounds):
                began = time.process_time()
                began_loop = time.thread_time()
                response = await controller.handle(request, PEER)
                loop.append(time.thread_time() - began_loop)
                answered = time.process_time()
                line = encode_response(response)
                encoded = time.process_time()
                ctl._SCANNER(line.decode("utf-8").rstrip("\n"), 0)
                decoded = time.process_time()
                answer.append(answered - began)
                encode.append(encoded - answered)
                decode.append(decoded - encoded)
                size = len(line)
                assert response.status == 0, response
            print(
                f"{name}: answer {statistics.median(answer) * 1000:.1f} ms"
                f" (on the loop {statistics.median(loop) * 1000:.1f}),"
                f" encode {statistics.median(encode) * 1000:.1f} ms,"
                f" client decode {statistics.median(decode) * 1000:.1f} ms CPU;"
                f" response {size / 1e6:.2f} MB (stdout {len(response.stdout) / 1e6:.2f} MB)",
                flush=True,
            )
            if profile:
                profiler = cProfile.Profile()
                profiler.enable()
                response = await controller.handle(request, PEER)
                encode_response(response)
                profiler.disable()
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        nursery.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--servers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--probing",
        action="store_true",
        help="keep the engine probing while the status is asked (its CPU counts too)",
    )
    args = parser.parse_args(argv)
    log.configure("warning", json=False)
    trio.run(bench, args.services, args.servers, args.rounds, args.profile, args.probing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
