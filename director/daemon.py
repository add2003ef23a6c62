"""directord: the process. Reads the config, opens the kernel's IPVS, runs the
engine, and turns signals into reload and stop. Everything it decides lives in
director.engine and the pure core; this module is the shell around them."""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from director import entry
from director.entry import HANDLED_SIGNALS, IGNORED_SIGNALS
from director.lazyimport import standing_in
from director.oserror import strerror

# trio imports ssl (its TLS streams) and hmac (DTLS cookies) at its top, and
# the probes' modules import ssl: with OpenSSL's libraries, about 4 MiB of a
# daemon checking plain TCP, which never uses them (issue 8's RSS). Imported
# here, they get stand-ins that import the real modules at first use (an
# HTTPS check's context, a TLS error to look at). Where a module touches one
# at its import (a type alias of ssl.SSLContext) or for every failed probe
# (isinstance of ssl.SSLError), the real module comes in then.
with standing_in("ssl", "hmac", "hashlib"):
    import trio

    from director import log, metrics, statefile
    from director.bird import Bird
    from director.config import Config, ConfigError, load_config
    from director.config.toml import string
    from director.control import server
    from director.control.handler import Controller
    from director.engine import ABANDONED, Director, Stopping
    from director.health.spec import ExecCheck
    from director.ipvs.errors import KernelError
    from director.ipvs.netlink import NetlinkBackend
    from director.ipvsadm import SystemNames
    from director.kernel import KernelTable
    from director.rlimits import raise_nofile_limit
    from director.rtnl import Rtnl
    from director.sdnotify import Notifier, watchdog_interval

DEFAULT_CONFIG = "/etc/director/director.toml"


# glibc's malloc gives a thread that allocates while another holds the main
# arena an arena of its own (up to 8 per core), and what is freed in one
# stays with the process. directord's worker threads (the kernel table's
# reads and writes, the state file) need none of their own: with one arena,
# host, 10,000 real servers (bench/rss.py): 50.3 -> 49.3 MiB RSS. An
# operator's MALLOC_ARENA_MAX wins.
MALLOC_ARENAS = 1
_M_ARENA_MAX = -8  # malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """mallopt(M_ARENA_MAX, arenas), before any thread starts; whether it
    was set (not with $MALLOC_ARENA_MAX set, nor without glibc's mallopt)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no libc to load, or not glibc (musl)
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="directord", description="Health-checking IPVS director daemon."
    )
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="TOML configuration file")
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration and exit (0: valid)"
    )
    parser.add_argument(
        "--log-level", choices=sorted(log.LEVELS), help="override [daemon] log_level"
    )
    parser.add_argument(
        "--log-format", choices=("auto", "json", "console"), default="auto", help="log rendering"
    )
    parser.add_argument("--version", action="store_true", help="print director's version and exit")
    return parser.parse_args(argv)


def missing_commands(
    config: Config, which: Callable[[str], str | None] = shutil.which
) -> list[str]:
    """For `--check`: the commands the config runs that this machine cannot
    run (`which`: shutil.which's answer, None for a name not on PATH or a
    path not executable): [bgp] bird and birdc, each exec check's program,
    named with the check's service and, for a real server's own check, the
    real server. A warning, not an error: it may be installed before the
    start; the daemon then reports it at run time and goes on."""
    wanted: dict[str, str] = {}
    if config.bgp is not None:
        wanted.setdefault(config.bgp.bird, "[bgp] bird")
        wanted.setdefault(config.bgp.birdc, "[bgp] birdc")
    for vs in config.virtual_servers:
        if isinstance(vs.check, ExecCheck) and vs.check.command:
            wanted.setdefault(vs.check.command[0], f"the exec check of {vs.label}")
        for rs in vs.real_servers:
            check = rs.check
            if isinstance(check, ExecCheck) and check.command and check is not vs.check:
                where = f"the exec check of {vs.label} real server {rs.label}"
                wanted.setdefault(check.command[0], where)
    return [
        f"{where}: {string(command)} {_why_not_runnable(command)}"
        for command, where in wanted.items()
        if which(command) is None
    ]


def _why_not_runnable(command: str) -> str:
    """Why shutil.which found no program for `command`: a name is looked up
    on PATH, a path is taken as it is."""
    if os.sep not in command:
        return "is not on PATH here"
    try:
        mode = os.stat(command).st_mode
    except OSError as error:
        return f"cannot be run here: {strerror(error)}"
    if stat.S_ISDIR(mode):
        return "is a directory"
    return f"is not executable here (mode {stat.S_IMODE(mode):04o})"


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    args = parse_args(argv)
    if args.version or args.check:
        entry.uncatch()  # a run that does not serve: signals as usual
    else:
        entry.catch()  # (already, through the `directord` command)
    if args.version:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"directord {version('director')}")
        except PackageNotFoundError:
            print("directord (version unknown: not installed as a package)")
        return 0
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for line in error.lines():
            print(line, file=sys.stderr)
        return 1
    if args.check:
        for warning in [*config.warnings(), *missing_commands(config)]:
            print(f"{args.config}: warning: {warning}", file=sys.stderr)
        print(f"{args.config}: OK, {config.counts()}")
        return 0
    json = {"auto": None, "json": True, "console": False}[args.log_format]
    log.configure(args.log_level or config.daemon.log_level.value, json=json)
    status = 0
    try:
        trio.run(partial(serve, Path(args.config), config, follow_log_level=args.log_level is None))
    except* (KernelError, server.ControlSocketError) as group:
        # Raised from inside the nursery, these arrive in an exception group.
        for failure in group.exceptions:
            log.get("directord").error("cannot_start", error=str(failure))
        status = 1
    except* KeyboardInterrupt:
        status = 130
    finally:
        entry.ignore()  # the run is over: exit with its status
        log.close()
    return status


async def serve(
    config_path: Path,
    config: Config,
    notifier: Notifier | None = None,
    *,
    follow_log_level: bool = True,
) -> None:
    """Run until SIGTERM or SIGINT. Raises KernelError when IPVS cannot be
    opened at all and ControlSocketError when the socket cannot be set up:
    the daemon then exits (status 1) for its supervisor to restart it."""
    notifier = notifier or Notifier()
    logger = log.get("directord")
    nofile = raise_nofile_limit()
    # Two sockets, two threads: a listing never holds up a pass.
    backend = NetlinkBackend()
    try:
        reads = NetlinkBackend()
    except BaseException:
        backend.close()
        raise
    addresses = Rtnl()  # VIPs (director.vips): its netlink socket opens at first use
    try:
        state_path = config.daemon.state_file
        loaded = await trio.to_thread.run_sync(statefile.load, state_path)
        if loaded.problem is not None:
            logger.error(
                "state_file_unusable",
                path=state_path,
                problem=loaded.problem,
                kept_as=str(loaded.moved_to) if loaded.moved_to else None,
                action="starting from the config file alone",
            )
        director = Director(
            config,
            KernelTable(backend),
            runtime=loaded.layer,
            owned=loaded.owned,
            state_path=state_path,
            follow_log_level=follow_log_level,
            sync_owned=loaded.sync,
            addresses=addresses,
            vips_owned=loaded.vips,
            maintenance=loaded.maintenance,
            speaker=Bird(),
        )
        logger.info(
            "starting",
            open_files=nofile,
            owned_services=len(loaded.owned),
            owned_vips=len(loaded.vips),
            maintenance=loaded.maintenance,
        )
        controller = Controller(
            director, config_path=config_path, names=SystemNames(), reads=KernelTable(reads)
        )
        entry.catch()
        async with trio.open_nursery() as nursery:
            starting = trio.CancelScope()
            nursery.start_soon(_extend_start, notifier, starting)
            # The socket first: a second instance (or a missing group)
            # must stop here, before its first pass changes the table.
            accepting = trio.Event()
            handler = metrics.CountedHandler(controller, director.events)
            await nursery.start(partial(server.serve, config.control, handler, accepting=accepting))
            await nursery.start(director.run)
            accepting.set()
            # Its first try to bind is logged before a signal that came
            # during the start is acted on.
            tried = trio.Event()
            nursery.start_soon(
                partial(metrics.serve, config.metrics, director, controller.reads, tried=tried)
            )
            await tried.wait()
            with trio.open_signal_receiver(*HANDLED_SIGNALS) as signals:
                # What came before (Python's start, the imports, the first
                # pass) was kept with its time (entry.catch): handled now.
                now = time.monotonic()
                kept = entry.replay()
                stop = entry.asks_stop(kept)
                for signum, at in kept:
                    logger.info(
                        "signal_kept",
                        signal=signal.Signals(signum).name,
                        seconds_ago=round(now - at, 3),
                        why=(
                            "came during the start: no reload, a stop came too"
                            if stop and signum == signal.SIGHUP
                            else "came during the start: acted on once ready"
                        ),
                    )
                starting.cancel()
                started(notifier, director.status_line())
                interval = watchdog_interval()
                if interval:
                    nursery.start_soon(_keep_alive, notifier, director, interval)
                reloads = Reloads(director, notifier, config_path)
                async for signum in signals:
                    if signum in IGNORED_SIGNALS:
                        logger.warning(
                            "signal_ignored",
                            signal=signal.Signals(signum).name,
                            status=director.status_line(),
                        )
                        continue
                    if signum == signal.SIGHUP:
                        reloads.ask(nursery)
                        continue
                    logger.info("stopping", signal=signal.Signals(signum).name)
                    notifier.stopping()
                    nursery.start_soon(_extend_stop, notifier)
                    await director.stop()
                    nursery.cancel_scope.cancel()
                    break
    finally:
        backend.close()
        reads.close()
        addresses.close()


START_EXTEND_EVERY = 10.0  # seconds
STOP_EXTEND_FOR = 120.0  # seconds: a stop asks systemd for at most this much time in all


class Reloads:
    """SIGHUP's reloads, one at a time, in a task of their own: the signal
    loop goes on reading signals during one, so that a SIGTERM stops the
    daemon at once (the stop abandons a reload still reading its file,
    Director.stop). A SIGHUP during a reload asks for one more after it
    (the file may have changed again), however many came."""

    def __init__(self, director: Director, notifier: Notifier, path: Path) -> None:
        self.director, self.notifier, self.path = director, notifier, path
        self.running = False
        self.again = False

    def ask(self, nursery: trio.Nursery) -> None:
        if self.running:
            self.again = True
            return
        self.running = True
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            while True:
                self.again = False
                self.notifier.reloading()
                try:
                    await self.director.reload_file(self.path, signal="SIGHUP")
                except Stopping:
                    _abandoned()
                    return
                except trio.Cancelled:
                    _abandoned()
                    raise
                if self.director.stop_asked:  # no READY=1 after STOPPING=1
                    return
                self.notifier.ready(self.director.status_line())
                if not self.again:
                    return
        finally:
            self.running = False


def _abandoned() -> None:
    """The stop came before a SIGHUP's reload had its turn (a SIGHUP and a
    SIGTERM kept during the start, say): said, not dropped."""
    log.get("directord").warning("reload_abandoned", signal="SIGHUP", reason=ABANDONED)


async def _extend_stop(notifier: Notifier) -> None:
    """Ask systemd for more time while a stop makes progress (a flush of a
    large table, a reload's operations it waits for), past the unit's
    TimeoutStopSec, for STOP_EXTEND_FOR seconds at most: a loop that is
    stuck sends nothing, and is killed when the last extension runs out."""
    end = trio.current_time() + STOP_EXTEND_FOR
    while trio.current_time() < end:
        notifier.extend_timeout(min(3 * START_EXTEND_EVERY, end - trio.current_time()))
        await trio.sleep(START_EXTEND_EVERY)


def started(notifier: Notifier, status: str) -> None:
    """The start is over: what it built (modules, config, tables, targets)
    lives as long as the daemon, so out of the collector's generations a
    full collection no longer walks it (at 10,000 servers one took about
    100 ms, a pause of every probe); the collector, off during the start
    (entry.main), runs from here on; READY=1 with `status`."""
    gc.freeze()
    gc.enable()
    notifier.ready(status)


async def _extend_start(notifier: Notifier, starting: trio.CancelScope) -> None:
    """Ask systemd for more start-up time while a large table is still being
    read and applied (EXTEND_TIMEOUT_USEC), until the daemon says READY."""
    with starting:
        while True:
            notifier.extend_timeout(3 * START_EXTEND_EVERY)
            await trio.sleep(START_EXTEND_EVERY)


async def _keep_alive(notifier: Notifier, director: Director, interval: float) -> None:
    """Pet systemd's watchdog only while the engine's loop makes passes, so a
    wedged loop (a hung netlink call, say) gets the daemon restarted."""
    stale_after = 2 * director.config.daemon.reconcile_interval + interval
    while True:
        if trio.current_time() - director.last_pass <= stale_after:
            notifier.watchdog()
        await trio.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
