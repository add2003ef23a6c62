"""The controller: what the daemon does with each control-socket request.

ipvsadm command lines are parsed exactly as ipvsadm parses them. Listings
(-L, -S, --timeout, --daemon, -c) are formatted from a dump of the kernel table
with director.ipvsadm.listing, so they print what ipvsadm prints. Changes to
services the daemon manages become part of its desired state (the runtime
layer, director.runtime): they are checked as the kernel would check them,
saved to the state file, logged with the peer's uid and pid, and followed by
one reconcile pass before the answer, so a real server added with -a enters
the table only once its check passes. A change runs as a job of the engine
(Director.exclusive): it sees and changes the daemon's state alone, never
during a pass. Listings read the kernel through a table of their own, so a
client listing in a loop never holds up a pass. Everything else (services the daemon does
not manage, -Z, the sync daemon) goes to the kernel as ipvsadm would send it.

Read-only requests are for any peer the socket let in; changes need
peer.may_change, and are refused like ipvsadm run by a non-root user is
refused by the kernel: "Permission denied (you must be root)", status 255.
"""

from __future__ import annotations

import errno
import gc
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence, Set
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from director import configload, log
from director.config import ConfigError, RealServerId
from director.control.messages import Peer, Request, Response
from director.desired import AdminState
from director.engine import Director, ReloadSummary, Stopping
from director.ipvs.errors import (
    AcknowledgementsLost,
    BatchError,
    IPVSError,
    KernelError,
    ipvsadm_message,
)
from director.ipvs.model import ServiceEntry, ServiceKey
from director.ipvs.oplog import describe_operation
from director.ipvs.ops import (
    AddDestination,
    AddService,
    DeleteDestination,
    DeleteService,
    EditDestination,
    EditService,
    Flush,
    Operation,
    SetTimeouts,
)
from director.ipvsadm import (
    NUMERIC,
    Apply,
    Command,
    Help,
    ListConnections,
    ListDaemons,
    ListServices,
    ListTimeouts,
    Names,
    ParseError,
    Restore,
    Save,
    Version,
    listing,
    parse,
    parse_restore,
)
from director.kernel import KernelTable
from director.overrides import overrides
from director.refusals import service_of
from director.runtime import (
    LayerBuilder,
    describe_endpoint,
    describe_service,
    is_managed,
    kernel_probe,
    parse_real_server,
    parse_service,
)
from director.status import Slots, status_data, status_report, status_text

KERNEL_ERROR = 255  # ipvsadm's exit status when the kernel refuses a change
LIST_ERROR = 1  # ... and when a listing fails
USAGE = 2
PERMISSION_DENIED = ipvsadm_message(None, errno.EPERM) + "\n"
READ_ONLY_COMMANDS = frozenset({"status", "check-config"})
DRAIN_WAIT_LIMIT = 3600.0
DRAIN_POLL = 1.0
# Operations a request sent to the kernel itself, per log event (about 10 KB
# of JSON: under journald's default line limit of 48 KiB).
KERNEL_OPS_PER_EVENT = 100
_T = TypeVar("_T")


@dataclass
class _Outcome:
    """What an ipvsadm command (or a run of -R lines, added up by `add`) answers:
    its output and exit status as ipvsadm's, and whether it changed the runtime
    layer (which `_commit` then saves and applies)."""

    stdout: str = ""
    stderr: str = ""
    status: int = 0
    changed: bool = False  # the runtime layer changed

    def response(self) -> Response:
        return Response(self.status, self.stdout, self.stderr)

    def add(self, outcome: _Outcome) -> None:
        """One more -R line's outcome: output appended, its status the last."""
        self.stdout += outcome.stdout
        self.stderr += outcome.stderr
        self.status = outcome.status
        self.changed |= outcome.changed


class Controller:
    def __init__(
        self,
        director: Director,
        *,
        config_path: str | Path | None = None,
        names: Names = NUMERIC,
        reads: KernelTable | None = None,
    ) -> None:
        """`config_path` is what `reload` reads; `names` resolves host and
        port names as ipvsadm does without -n (director.ipvsadm.SystemNames in
        the daemon; lookups then run in a worker thread); `reads` is the
        kernel table listings read (default: the engine's)."""
        self.director = director
        self.config_path = Path(config_path) if config_path is not None else None
        self.names = names
        self.reads = reads or director.kernel
        self.log = log.get("control")

    def holding(self, request: Request) -> AbstractContextManager[None]:
        """What the server holds while it answers `request` and sends the
        answer: for a -R (the one request with input), the collector off
        (_collector_held), so that the collection of the thousands of
        objects the -R kept (16-35 ms of the host's CPU, about a second of
        the VM's) comes after the client has its answer, not before."""
        if request.argv is not None and "stdin" in request.args:
            return _collector_held()
        return nullcontext()

    async def handle(self, request: Request, peer: Peer) -> Response:
        try:
            if request.argv is not None:
                return await self._ipvsadm(request, peer)
            return await self._command(request, peer)
        except Stopping as error:  # (a change that raced the stop)
            return Response(1, "", f"{error}\n")
        except Exception as error:  # a bug must answer, not kill the daemon
            self.log.exception("control_failed", uid=peer.uid, pid=peer.pid)
            return Response(1, "", f"director: internal error: {error!r}\n")

    # -- ipvsadm ----------------------------------------------------------------

    async def _ipvsadm(self, request: Request, peer: Peer) -> Response:
        assert request.argv is not None
        program = _text(request.args.get("program"), "ipvsadm")
        try:
            command = await self._blocking(
                parse, list(request.argv), program=program, names=self.names
            )
        except ParseError as error:
            return Response(error.status, "", error.message)
        if isinstance(command, Apply | Restore) and not peer.may_change:
            self._log_refusal(peer, list(request.argv))
            return Response(KERNEL_ERROR, "", PERMISSION_DENIED)
        if isinstance(command, Restore):
            with _collector_held():
                return await self._restore(_text(request.args.get("stdin"), ""), program, peer)
        if isinstance(command, Apply):
            operation, argv = command.operation, list(request.argv)

            async def change() -> _Outcome:
                work = _Work(self)
                try:
                    await work.read_keys([operation])
                    outcome = await self.director.kernel.run_sync(
                        lambda: self._change(operation, work)
                    )
                    await self._commit(work, outcome, peer, {"argv": argv})
                finally:
                    self._log_sent(work)  # what went to the kernel, whatever came after
                return outcome

            return (await self.director.exclusive(change)).response()
        return (await self._read(command)).response()

    async def _read(self, command: Command) -> _Outcome:
        kernel = self.reads
        names = self.names
        try:
            match command:
                case Help(program):
                    return _Outcome(listing.usage(program))
                case Version():
                    return _Outcome(listing.version())
                case ListServices(format, None):
                    entries = await kernel.services(brief=format.brief)
                    info = await kernel.info()
                    text = await self._bulk(listing.services, entries, info, format, names)
                    return _Outcome(text)
                case ListServices(format, key):
                    assert key is not None
                    entries = await kernel.services(brief=format.brief)
                    entry = listing.find_service(entries, key)
                    if entry is None:
                        return _Outcome(
                            "", ipvsadm_message("GetService", errno.ESRCH) + "\n", LIST_ERROR
                        )
                    return _Outcome(await self._bulk(listing.service, entry, format, names))
                case Save(numeric):
                    entries = await kernel.services(brief=True)
                    return _Outcome(await self._bulk(listing.save, entries, numeric, names))
                case ListTimeouts():
                    return _Outcome(listing.timeouts(await kernel.timeouts()))
                case ListDaemons():
                    return _Outcome(listing.daemons(await kernel.daemons()))
                case ListConnections(format):
                    conns = await kernel.connections()
                    return _Outcome(await self._bulk(listing.connections, conns, format, names))
        except KernelError as error:
            return _Outcome("", _kernel_error(error), LIST_ERROR)
        raise TypeError(f"not a read-only command: {command!r}")

    async def _restore(self, text: str, program: str, peer: Peer) -> Response:
        """Each line as ipvsadm -R runs it: errors are printed and the next
        line runs; a fatal parse error stops there, and the answer's data says
        so (the client then sends no more of its input). Changes are saved
        and reconciled once, after the last line. The lines are parsed
        before the job, in a worker thread; in the job, each run of changes
        between two listings goes to one worker thread."""
        started = time.perf_counter()
        steps = await self._bulk(parse_restore, text, program=program, names=self.names)
        parsed = time.perf_counter()
        total = _Outcome()
        stopped = False
        times: dict[str, float] = {}

        async def restore() -> None:
            nonlocal stopped
            nonlocal total
            times["job"] = time.perf_counter()
            work = _Work(self, deferring=True)
            try:
                try:
                    stopped = await self._restore_lines(steps, work, total)
                except _Replay:
                    # A kernel probe sent with others failed: the services
                    # they added are gone again, and the lines run again
                    # with each probe sent in its turn.
                    self._log_sent(work)
                    work, total = _Work(self), _Outcome()
                    stopped = await self._restore_lines(steps, work, total)
                times["lines"] = time.perf_counter()
                await self._commit(work, total, peer, {"argv": ["-R"], "lines": len(steps)})
                times["commit"] = time.perf_counter()
            finally:
                self._log_sent(work)  # what went to the kernel, whatever came after

        await self.director.exclusive(restore)
        # Where a long -R's time went (real seconds): bench/ctl.py reads it.
        self.log.info(
            "control_restore_timing",
            lines=len(steps),
            parse=round(parsed - started, 4),
            wait=round(times["job"] - parsed, 4),
            changes=round(times["lines"] - times["job"], 4),
            commit=round(times["commit"] - times["lines"], 4),
        )
        if stopped:
            return Response(total.status, total.stdout, total.stderr, {"restore_stopped": True})
        return total.response()

    async def _restore_lines(
        self, steps: Sequence[Apply | ParseError | Command], work: _Work, total: _Outcome
    ) -> bool:
        """A -R's lines into `work` and `total` (from its job): each run of
        changes in one worker thread, listings between them read in turn.
        True when a fatal parse error stopped the restore."""
        await work.read_keys([s.operation for s in steps if isinstance(s, Apply)])
        start = 0
        while start < len(steps):
            end = start
            while end < len(steps) and isinstance(steps[end], Apply | ParseError):
                end += 1
            if end > start:
                run = partial(self._changes, steps[start:end], work, total)
                if await self.director.kernel.run_sync(run):
                    return True
            if end < len(steps):
                step = steps[end]
                assert not isinstance(step, Apply | ParseError)
                total.add(await self._read(step))
                end += 1
            start = end
        return False

    def _changes(
        self, steps: Sequence[Apply | ParseError | Command], work: _Work, total: _Outcome
    ) -> bool:
        """Lines of a -R, in order, into `total`; True when a fatal parse
        error stops the restore."""
        for step in steps:
            if isinstance(step, ParseError):
                total.stderr += step.message
                total.status = step.status
                if step.fatal:
                    work.flush()
                    return True
            elif isinstance(step, Apply):
                op = step.operation
                if isinstance(op, _SERVER_OPS) and op.service in work.layer.service_keys():
                    # _change's answer for a real server of a managed
                    # service (most lines of a -R), without its routing.
                    error = work.layer.apply(op)
                    if error is None:
                        total.status, total.changed = 0, True
                    else:
                        total.stderr += listing.kernel_error(error)
                        total.status = KERNEL_ERROR
                else:
                    total.add(self._change(op, work))
        work.flush()  # before a listing, or the commit
        return False

    def _change(self, op: Operation, work: _Work) -> _Outcome:
        """One ipvsadm change. A managed one is checked by the runtime layer
        in the kernel's order; what only the kernel can judge (whether it
        has a scheduler or persistence engine, which timeouts it takes) is
        asked of the kernel first, and recorded only once the kernel took it.

        Blocking (it calls the kernel): run in a worker thread through the
        engine table's run_sync, from a job. The job owns that table: no
        pass runs meanwhile, and listings read through a table of their own."""
        try:
            kernel = work.kernel_keys(op)
        except KernelError as failure:
            return _Outcome("", _kernel_error(failure), KERNEL_ERROR)
        if isinstance(op, AddService) and op.service.key in self.director.foreign:
            # Flushed by -C while it was someone else's: -R puts it back as
            # theirs, not as a new service of ours.
            work.flush()  # before the change below: a replay starts from scratch
            self.director.foreign.discard(op.service.key)
            return self._to_kernel(op, work)
        if not is_managed(op, work.layer, kernel, work.owned):
            return self._to_kernel(op, work)
        if isinstance(op, Flush):
            ours = self.director.owned | work.probed | work.layer.service_keys()
            foreign = kernel - ours
        first: Operation | None = op if isinstance(op, SetTimeouts) else kernel_probe(op, kernel)
        if first is not None and first is not op and work.layer.refusal(op) is not None:
            first = None  # refused before the kernel would look at the scheduler
        if isinstance(first, AddService) and work.deferring:
            work.defer(first)  # sent with the others (work.flush)
            work.probed.add(first.service.key)
        elif first is not None:
            outcome = self._to_kernel(first, work)
            if outcome.status:
                return outcome
            if isinstance(first, AddService):
                # Ours from now on, though the engine learns it at the commit.
                work.probed.add(first.service.key)
        error = work.layer.apply(op)
        if error is not None:
            return _Outcome("", listing.kernel_error(error), KERNEL_ERROR)
        if isinstance(op, Flush):
            # -C also clears services the daemon does not manage.
            outcome = self._to_kernel(op, work)
            if not outcome.status:
                self.director.foreign |= foreign
            outcome.changed = True
            return outcome
        return _Outcome(changed=True)

    def _to_kernel(self, op: Operation, work: _Work) -> _Outcome:
        work.flush()
        try:
            self.director.kernel.backend.apply([op])
        except BatchError as error:
            work.unknown(op)
            return _Outcome("", _kernel_error(error.error), KERNEL_ERROR)
        except KernelError as error:
            work.unknown(op)
            return _Outcome("", _kernel_error(error), KERNEL_ERROR)
        work.applied(op)
        work.sent.append(op)  # logged by _log_sent, in one event per KERNEL_OPS_PER_EVENT
        return _Outcome()

    def _log_sent(self, work: _Work) -> None:
        """Log the operations `work` sent to the kernel itself, in order: one
        alone as `control_kernel_op` (its fields), more (the -A lines of a
        -R) as `control_kernel_ops` events of up to KERNEL_OPS_PER_EVENT each
        (each event costs about as much as its JSON: a thousand events took
        1.8 s of the VM's CPU for a -R, ten of a hundred 0.2 s)."""
        sent, work.sent = work.sent, []
        if len(sent) == 1:
            self.log.info("control_kernel_op", **describe_operation(sent[0]))
            return
        for start in range(0, len(sent), KERNEL_OPS_PER_EVENT):
            part = sent[start : start + KERNEL_OPS_PER_EVENT]
            self.log.info(
                "control_kernel_ops",
                count=len(part),
                ops=[describe_operation(op) for op in part],
            )

    async def _commit(
        self, work: _Work, outcome: _Outcome, peer: Peer, what: Mapping[str, object]
    ) -> None:
        """Log, save and apply a request's changes, then one reconcile pass
        (in the engine's job)."""
        self._log_sent(work)
        self.log.info(
            "control_change",
            uid=peer.uid,
            gid=peer.gid,
            pid=peer.pid,
            status=outcome.status,
            **what,
        )
        if not outcome.changed:
            return
        director = self.director
        layer = work.layer
        effective = None
        if director.config is layer.config and director.runtime is work.runtime:
            # The builder merges only the services it changed over the
            # effective config it started from.
            effective = layer.effective(director.effective)
        await director.commit(
            layer.freeze(),
            f"control ({peer.uid}/{peer.pid})",
            work.probed,
            known={k: e for k, e in work.known.items() if e is not None},
            effective=effective,
        )

    def _log_refusal(self, peer: Peer, what: object) -> None:
        self.log.warning("control_change_refused", uid=peer.uid, pid=peer.pid, request=what)

    async def _blocking(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """Name lookups block; without them a command line parses quickly
        enough inline."""
        if self.names is NUMERIC:
            return fn(*args, **kwargs)
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    async def _bulk(self, fn: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        """Formatting a large table or parsing a long -R input takes tens of
        milliseconds: in a worker thread, the event loop (probes, passes)
        keeps its turns while a client lists in a loop."""
        return await self.reads.run_sync(lambda: fn(*args, **kwargs))

    # -- director's own commands --------------------------------------------------

    async def _command(self, request: Request, peer: Peer) -> Response:
        name = request.command or ""
        handlers: dict[str, Callable[[Mapping[str, object], Peer], Awaitable[Response]]] = {
            "status": self._status,
            "drain": self._drain,
            "disable": self._disable,
            "enable": self._enable,
            "reload": self._reload,
            "check-config": self._check_config,
            "maintenance": self._maintenance,
        }
        if name not in handlers:
            known = ", ".join(sorted(handlers))
            return Response(USAGE, "", f"director: unknown command {name!r} (known: {known})\n")
        asks = name == "maintenance" and "mode" not in request.args  # only reads it
        if name not in READ_ONLY_COMMANDS and not asks and not peer.may_change:
            self._log_refusal(peer, name)
            return Response(KERNEL_ERROR, "", PERMISSION_DENIED)
        return await handlers[name](request.args, peer)

    async def _status(self, args: Mapping[str, object], peer: Peer) -> Response:
        """The status, built in a worker thread from a snapshot taken on the
        loop (the config, admin states and health states are immutable
        values; the mappings are copied): at 10,000 real servers it is
        about 0.3 s of the host's CPU that the probes need not wait for.
        `data` always, unless "data" is false (directorctl's text status:
        it never reads it, at 10,000 servers 2.9 MB to encode, send and
        decode)."""
        director = self.director
        config = director.effective
        try:
            # Brief: the status reads each destination's weight and presence
            # alone (status_report, desired_table), as plain listings do: one
            # service dump and /proc/net/ip_vs, not a decoded dump of every
            # service with its stats (in a loaded VM at 1,000 real servers,
            # 2.5 s of the process's CPU against 0.5).
            entries = await self.reads.services(config.service_keys(), brief=True)
        except KernelError as error:
            return Response(LIST_ERROR, "", _kernel_error(error))
        now = trio.current_time()
        states = director.checker.states()
        probing = director.checker.probing()
        waiting_for_slot = director.checker.waiting_for_slot()
        slots = Slots.of(director.checker)
        slot_waited = {kind: now - at for kind, at in director.checker.slot_waited().items()}
        admin = director.runtime.admin
        runtime_set = director.runtime.set_at_runtime
        kept = overrides(director.config, config, director.runtime)
        refusals = dict(director.refusals)
        sync = director.sync.report(now)
        vips = director.vips.report(now)
        maintenance = director.vips.maintenance
        lateness = director.lateness
        stopping = None if director.stopped_at is None else now - director.stopped_at
        bgp = await director.bgp.report(maintenance)
        json = bool(args.get("json"))
        with_data = json or args.get("data") is not False
        summary = args.get("summary") is True

        def build() -> Response:
            kernel = {e.service.key: e for e in entries}
            report = status_report(
                config,
                states,
                admin,
                kernel,
                now,
                refusals,
                runtime_set,
                overrides=kept,
                probing=probing,
                waiting_for_slot=waiting_for_slot,
            )
            data = None
            if with_data:
                data = status_data(
                    report,
                    sync,
                    vips=vips,
                    maintenance=maintenance,
                    bgp=bgp,
                    lateness=lateness,
                    slots=slots,
                    stopping=stopping,
                )
            if json:
                return Response(0, "", "", data)
            text = status_text(
                report,
                sync,
                vips=vips,
                maintenance=maintenance,
                bgp=bgp,
                summary=summary,
                lateness=lateness,
                slots=slots,
                slot_waited=slot_waited,
                stopping=stopping,
            )
            return Response(0, text, "", data)

        return await self.reads.run_sync(build)

    async def _maintenance(self, args: Mapping[str, object], peer: Peer) -> Response:
        """`maintenance on`: every VIP the daemon owns is removed (and kept
        off while on); `off`: each comes back where its service has its
        quorum. Persisted in the state file before any address changes.
        Without "mode": the current setting."""
        mode = args.get("mode")
        if "mode" not in args:
            on = self.director.vips.maintenance
            return Response(0, f"maintenance: {'on' if on else 'off'}\n", "", {"maintenance": on})
        if mode not in ("on", "off"):
            return Response(
                USAGE, "", f'director: maintenance: expected "on" or "off", not {mode!r}\n'
            )
        on = mode == "on"

        async def change() -> Response:
            director = self.director
            was = director.set_maintenance(on)
            self.log.info(
                "maintenance_on" if on else "maintenance_off",
                was="on" if was else "off",
                uid=peer.uid,
                pid=peer.pid,
            )
            await director.save()
            sent, routes = await director.traffic_pass(f"maintenance {mode}", vips_now=True)
            verb = "removed" if on else "added"
            text = f"maintenance {mode}: {len(sent)} VIPs {verb}"
            if director.bgp.settings is not None:
                text += f", {len(routes)} BGP routes {'withdrawn' if on else 'announced'}"
            return Response(0, text + "\n", "", {"sent": len(sent), "bgp_changes": len(routes)})

        return await self.director.exclusive(change)

    async def _drain(self, args: Mapping[str, object], peer: Peer) -> Response:
        response, drained = await self._set_admin(args, peer, AdminState.DRAIN)
        if drained is None or not args.get("wait"):
            return response
        limit = args.get("timeout")
        if limit is None:
            limit = DRAIN_WAIT_LIMIT
        if not isinstance(limit, int | float) or isinstance(limit, bool) or limit <= 0:
            return Response(
                USAGE,
                "",
                f"director: drain: timeout {limit!r} is not a positive number of seconds\n",
            )
        # The entry drained, not the server as named: a route server named
        # by the port its check probes is in the table on the service's.
        left: int | None = -1
        with trio.move_on_after(min(float(limit), DRAIN_WAIT_LIMIT)):
            while True:
                # The kernel has no event for a connection count reaching 0.
                left = await self._connections(drained)
                if left is None:
                    where = describe_endpoint(drained.address, drained.port)
                    return Response(0, response.stdout + f"drained: {where} is not in the table\n")
                if left == 0:
                    return Response(0, response.stdout + "drained: no connections left\n")
                await trio.sleep(DRAIN_POLL)
        # The drain stays: say so, and what undoes it (docs/runtime.md).
        undo = f"directorctl enable {_rid(drained)}"
        still = (
            "the kernel's connection count could not be read"
            if left is None or left < 0
            else f"still {left} connection{'' if left == 1 else 's'}"
        )
        return Response(
            1,
            response.stdout,
            f"director: drain: {still} after {limit:g}s; "
            f"the server stays drained (weight 0): '{undo}' puts it back\n",
        )

    async def _connections(self, rid: RealServerId) -> int | None:
        """Connections left on the destination of `rid`; -1 while the kernel
        cannot say, None when its service has no such destination."""
        try:
            entries = await self.reads.services({rid.service})
        except KernelError:
            return -1
        for entry in entries:
            if entry.service.key == rid.service:
                d = entry.destination((rid.address, rid.port))
                if d is not None:
                    return d.active_conns + d.inact_conns
        return None

    async def _disable(self, args: Mapping[str, object], peer: Peer) -> Response:
        return (await self._set_admin(args, peer, AdminState.DISABLED))[0]

    async def _enable(self, args: Mapping[str, object], peer: Peer) -> Response:
        return (await self._set_admin(args, peer, AdminState.ENABLED))[0]

    async def _set_admin(
        self, args: Mapping[str, object], peer: Peer, state: AdminState
    ) -> tuple[Response, RealServerId | None]:
        """The answer, and the real server whose admin state was set (as the
        table has it), None when none was."""
        try:
            service = parse_service(_text(args.get("service"), ""))
            rid = parse_real_server(service, _text(args.get("server"), ""))
        except ValueError as error:
            return Response(USAGE, "", f"director: {error}\n"), None
        what = {
            "command": _ADMIN_COMMANDS[state],
            "state": str(state),
            "service": describe_service(service),
            "server": describe_endpoint(rid.address, rid.port),
        }

        async def change() -> tuple[Response, RealServerId | None]:
            work = _Work(self)
            try:
                changed = work.layer.set_admin(rid, state)
            except LookupError as error:
                return Response(LIST_ERROR, "", f"director: {error.args[0]}\n"), None
            what["server"] = describe_endpoint(changed.address, changed.port)
            await self._commit(work, _Outcome(changed=True), peer, what)
            return Response(0, f"{what['server']} in {what['service']}: {state}\n"), changed

        return await self.director.exclusive(change)

    async def _reload(self, args: Mapping[str, object], peer: Peer) -> Response:
        return await self.reload(uid=peer.uid, pid=peer.pid)

    async def reload(self, **origin: object) -> Response:
        """Re-read the config file: SIGHUP and `directorctl reload` both come
        here, so a reload never races a change made through the socket."""
        if self.config_path is None:
            return Response(1, "", "director: no config file to reload\n")
        result = await self.director.reload_file(self.config_path, **origin)
        if result.summary is None:
            count = f"{result.count} error{'' if result.count == 1 else 's'}"
            head = f"director: reload rejected, the running config is kept ({count}):\n"
            return Response(1, "", head + "".join(f"{e}\n" for e in result.errors))
        return Response(0, reload_text(result.summary), "", reload_data(result.summary))

    async def _check_config(self, args: Mapping[str, object], peer: Peer) -> Response:
        """With "text" (and "source" to name it) any peer may check a config;
        with "path" the daemon reads the file itself, which only a peer that may
        change state may ask (it reads as root)."""
        text, path = args.get("text"), args.get("path")
        source = _text(args.get("source"), str(path) if path is not None else "<config>")
        try:
            if isinstance(text, str):
                config, _ = await configload.parse(text, source)
            elif isinstance(path, str):
                if not peer.may_change:
                    return Response(KERNEL_ERROR, "", PERMISSION_DENIED)
                config, _ = await configload.load(path)
            else:
                return Response(USAGE, "", 'director: check-config needs "text" or "path"\n')
        except ConfigError as error:
            return Response(1, "", "".join(f"{line}\n" for line in error.lines(source)))
        warned = "".join(f"{source}: warning: {w}\n" for w in config.warnings())
        return Response(0, f"{source}: OK, {config.counts()}\n", warned)


class _CollectorHold:
    """Python's garbage collector held off during a bulk change. A -R of
    thousands of lines makes hundreds of thousands of objects and keeps
    nearly all of them (the layer, the effective config, the checker's
    targets): each collection they trigger on the way walks them again,
    about a third of the -R's CPU with the daemon's heap (bench/restore.py
    --gc). Held, they are walked once, by the next collection after it.
    Holds nest (concurrent restores): the collector is on again once the
    last ends, and only if it was on before the first."""

    def __init__(self) -> None:
        self._holds = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        if self._holds == 0:
            self._was_enabled = gc.isenabled()
            gc.disable()
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0 and self._was_enabled:
                gc.enable()


_collector_held = _CollectorHold()


class _Work:
    """One request's changes in progress: the runtime layer it builds (over
    the daemon's, frozen at commit), and the kernel's service keys, dumped at
    most once and kept up to date with the operations it sends straight to
    the kernel."""

    def __init__(self, controller: Controller, *, deferring: bool = False) -> None:
        """`deferring`: the kernel probes that add services (kernel_probe's
        AddService for a managed -A) wait in `defer` until `flush` sends
        them all at once (one netlink send for hundreds: a -R's thousand
        -A lines cost 1.0 s of the VM's CPU one send each, 0.4-0.9 s in
        one), as if each had been taken; a `flush` where one was refused
        deletes the others' services and raises _Replay, for the caller
        to run the lines again with a new _Work that sends each probe in
        its turn (the kernel's error then answers its own line, and the
        lines after it see the kernel as it is). A flush comes before any
        other operation goes to the kernel, and after it nothing more is
        deferred: a replay starts from the kernel as the request found it."""
        self._controller = controller
        self.deferring = deferring
        self._deferred: list[AddService] = []
        director = controller.director
        # Schedulers and engines are the kernel's to judge (kernel_probe).
        self.runtime = director.runtime  # the layer this request started from
        self.layer = LayerBuilder(director.config, director.runtime, engines=None)
        self._keys: set[ServiceKey] | None = None
        self._failure: KernelError | None = None
        self.probed: set[ServiceKey] = set()  # services a kernel probe added
        self.sent: list[Operation] = []  # sent to the kernel, not logged yet
        # The kernel's state of each service this request made, as its own
        # operations left it (None once one of them failed or left it
        # unknown): the commit's pass need not read these back.
        self.known: dict[ServiceKey, ServiceEntry | None] = {}

    @property
    def owned(self) -> Set[ServiceKey]:
        """What the daemon owns and this request added, without a copy of
        both for each line of a long -R."""
        return _Union(self._controller.director.owned, self.probed)

    async def read_keys(self, operations: Sequence[Operation]) -> None:
        """Read the kernel's service keys once, if any of `operations` needs
        them; a failed read is kept for kernel_keys to raise."""
        if self._keys is None and any(map(_needs_keys, operations)):
            try:
                entries = await self._controller.director.kernel.services(brief=True)
            except KernelError as error:
                self._failure = error
            else:
                self._keys = {e.service.key for e in entries}

    def kernel_keys(self, op: Operation) -> set[ServiceKey]:
        """The kernel's service keys, for -A and -E (whether an unmanaged -A
        is ours, and whether a managed one's kernel probe adds or edits) and
        -C (which of the services it clears were someone else's), as
        read_keys read them. Raises the KernelError of that read."""
        if not _needs_keys(op):
            return set()
        if self._keys is None:
            raise self._failure or RuntimeError("read_keys was not awaited")
        return self._keys

    def defer(self, probe: AddService) -> None:
        """Take `probe` as sent and taken (until `flush`)."""
        self._deferred.append(probe)
        self.applied(probe)
        self.sent.append(probe)

    def flush(self) -> None:
        """Send the deferred probes (blocking: from the worker thread); no
        more are deferred after this. Raises _Replay when one of them was
        refused or its outcome is unknown, after deleting the services the
        others added (`sent` then holds exactly what the kernel took)."""
        self.deferring = False
        probes, self._deferred = self._deferred, []
        if not probes:
            return
        backend = self._controller.director.kernel.backend
        unknown: list[AddService] = []
        try:
            outcomes: Sequence[KernelError | None] = backend.apply_each(probes)
        except AcknowledgementsLost as lost:
            # Those from the first lost acknowledgement on may have been taken.
            outcomes, unknown = lost.known, probes[len(lost.known) :]
        except KernelError:  # nothing was sent
            outcomes = [None]
        if len(outcomes) == len(probes) and not any(outcomes):
            return
        # Deleted again: only what this request added (a refusal may be
        # EEXIST for a service someone else made meanwhile).
        taken = [p for p, outcome in zip(probes, outcomes, strict=False) if outcome is None]
        undo = [DeleteService(p.service.key) for p in taken + unknown]
        undone = backend.apply_each(undo) if undo else []
        deleted = [op for op, out in zip(undo, undone, strict=True) if out is None]
        gone = {op.key for op in deleted}
        self.sent = [*taken, *(p for p in unknown if p.service.key in gone), *deleted]
        raise _Replay

    def unknown(self, op: Operation) -> None:
        """`op` failed, or its outcome is unknown: its service's state is."""
        key = service_of(op)
        if key is not None:
            self.known[key] = None
        elif isinstance(op, Flush):
            self.known = dict.fromkeys(self.known)

    def applied(self, op: Operation) -> None:
        if isinstance(op, AddService):
            self.known[op.service.key] = ServiceEntry(op.service)
        elif isinstance(op, EditService) and (entry := self.known.get(op.service.key)):
            self.known[op.service.key] = ServiceEntry(op.service, entry.destinations)
        else:
            self.unknown(op)
        if self._keys is None:
            return
        if isinstance(op, AddService):
            self._keys.add(op.service.key)
        elif isinstance(op, DeleteService):
            self._keys.discard(op.key)
        elif isinstance(op, Flush):
            self._keys.clear()


class _Replay(Exception):
    """A deferred kernel probe was refused (_Work.flush): run the lines
    again, each probe sent in its turn."""


class _Union(Set[ServiceKey]):
    """A live view of the union of two sets (membership, iteration, size)."""

    def __init__(self, first: Set[ServiceKey], second: Set[ServiceKey]) -> None:
        self._first, self._second = first, second

    def __contains__(self, item: object) -> bool:
        return item in self._first or item in self._second

    def __iter__(self) -> Iterator[ServiceKey]:
        yield from self._first
        yield from (k for k in self._second if k not in self._first)

    def __len__(self) -> int:
        return sum(1 for _ in self)


# Lines whose routing needs only the layer's services: managed when the
# effective state has their service, and nothing to ask of the kernel first.
_SERVER_OPS = AddDestination | EditDestination | DeleteDestination


def _needs_keys(op: Operation) -> bool:
    return isinstance(op, AddService | EditService | Flush)


# `!` lines a reload's text shows at most: after a `-R` of thousands of
# changes each reload would print them all.
KEPT_LINES = 20


def reload_text(summary: ReloadSummary) -> str:
    lines = [
        *(f"+ service {describe_service(k)}" for k in summary.services_added),
        *(f"- service {describe_service(k)}" for k in summary.services_removed),
        *(f"~ service {describe_service(k)}{_what(c)}" for k, c in summary.services_changed),
        *(f"+ real server {_rid(r)}" for r in summary.real_servers_added),
        *(f"- real server {_rid(r)}" for r in summary.real_servers_removed),
        *(
            f"~ real server {_rid(r)}" + _what(summary.real_server_changes.get(r, ()))
            for r in summary.real_servers_changed
        ),
        *(f"~ {setting}" for setting in summary.settings_changed),
        *(f"> {_other(fields)}" for fields in summary.others),
        *(f"! {kept.text()}" for kept in summary.kept_by_runtime[:KEPT_LINES]),
    ]
    more = len(summary.kept_by_runtime) - KEPT_LINES
    if more > 0:
        lines.append(
            f"! and {more} more kept by runtime changes"
            " (the reloaded log event lists them all; status marks them)"
        )
    return "".join(f"{line}\n" for line in lines) + (
        f"reloaded: {len(summary.operations)} table operations\n"
    )


def _what(changes: Sequence[str]) -> str:
    """': weight 1 -> 3, check': what changed, after a reload line's name."""
    return f": {', '.join(changes)}" if changes else ""


def reload_data(summary: ReloadSummary) -> dict[str, object]:
    return {
        "services_added": [describe_service(k) for k in summary.services_added],
        "services_removed": [describe_service(k) for k in summary.services_removed],
        "services_changed": {describe_service(k): list(c) for k, c in summary.services_changed},
        "real_servers_added": [_rid(r) for r in summary.real_servers_added],
        "real_servers_removed": [_rid(r) for r in summary.real_servers_removed],
        "real_servers_changed": [_rid(r) for r in summary.real_servers_changed],
        "real_server_changes": {
            _rid(r): list(summary.real_server_changes.get(r, ()))
            for r in summary.real_servers_changed
        },
        "operations": [describe_operation(op) for op in summary.operations],
        "others": list(summary.others),
        "settings_changed": list(summary.settings_changed),
        "kept_by_runtime": [kept.text() for kept in summary.kept_by_runtime],
    }


def _other(fields: Mapping[str, object]) -> str:
    """'vip add_address address=10.0.0.1/32 dev=director0': one change of a
    reload beyond the IPVS table (ReloadSummary.others)."""
    rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("what", "op"))
    return f"{fields['what']} {fields['op']} {rest}".rstrip()


# The command that sets each admin state, as `control_change` names it.
_ADMIN_COMMANDS = {
    AdminState.ENABLED: "enable",
    AdminState.DISABLED: "disable",
    AdminState.DRAIN: "drain",
}


def _rid(rid: RealServerId) -> str:
    return f"{describe_service(rid.service)} {describe_endpoint(rid.address, rid.port)}"


def _kernel_error(error: KernelError) -> str:
    """ipvsadm's words for a refusal; our own for what ipvsadm never meets
    (an interrupted dump, lost acknowledgements, a reply we cannot read)."""
    if isinstance(error, IPVSError):
        return listing.kernel_error(error)
    return f"{error}\n"


def _text(value: object, default: str) -> str:
    return value if isinstance(value, str) else default
