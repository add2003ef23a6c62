"""The pass after a `-R` (issue 8): services the request made itself, every
operation of theirs taken, are not read back when what it made is what the
engine wants; they are when an operation of theirs failed. The handler and the engine over the in-memory backend, under trio's
autojump clock."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import trio
import trio.testing
from test_handler import CONFIG, VIP, rig, until

from director.control.messages import Response
from director.ipvs.errors import error_for
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import Protocol, Service, ServiceEntry, ServiceKey
from director.ipvs.ops import EditService, Operation

QUIET = CONFIG.replace("reconcile_interval = 5.0", "reconcile_interval = 3600.0")
MADE = [ServiceKey.inet(Protocol.TCP, f"10.9.9.{i}", 80) for i in (1, 2, 3)]
SCRIPT = "".join(
    f"-A -t 10.9.9.{i}:80 -s rr\n-a -t 10.9.9.{i}:80 -r 10.0.2.1:80 -m\n" for i in (1, 2, 3)
)


class Recorder(MemoryBackend):
    """Records the services each full read asked for (None: all), and
    refuses the operations `refuse` names."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[set[ServiceKey] | None] = []
        self.refuse: type[Operation] | None = None

    def services(
        self, only: Collection[ServiceKey] | None = None, *, brief: bool = False
    ) -> list[ServiceEntry]:
        if not brief:
            self.reads.append(None if only is None else set(only))
        return super().services(only, brief=brief)

    def apply(self, operations: Sequence[Operation]) -> None:
        if self.refuse is not None and any(isinstance(op, self.refuse) for op in operations):
            raise error_for(1, "EditService")
        super().apply(operations)


def made_reads(backend: Recorder, since: int) -> set[ServiceKey]:
    return {k for read in backend.reads[since:] if read is not None for k in read} & set(MADE)


async def test_a_restore_reads_nothing_back_when_it_made_what_is_wanted(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = Recorder()
    async with rig(tmp_path, backend, QUIET) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        before = len(backend.reads)
        response = await r.ipvsadm("-R", stdin=SCRIPT)
        reads = made_reads(backend, before)
        # Its real servers still enter once probed up: the engine has them.
        await until(lambda: all(r.weights(k) == {"10.0.2.1:80": 1} for k in MADE))
    assert response == Response(0, "", "")
    assert reads == set()


async def test_a_restore_reads_back_a_service_an_operation_of_which_failed(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The kernel refuses -E -t 10.9.9.2:80 -s wrr: what that service is
    now is the kernel's to say, and it is read back (the others are not)."""
    backend = Recorder()
    async with rig(tmp_path, backend, QUIET) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        before = len(backend.reads)
        backend.refuse = EditService
        await r.ipvsadm("-R", stdin=SCRIPT + "-E -t 10.9.9.2:80 -s wrr\n")
        backend.refuse = None
        reads = made_reads(backend, before)
        schedulers = {e.service.key: e.service.scheduler for e in backend.services()}
    assert reads == {MADE[1]}
    assert VIP in schedulers and MADE[1] in schedulers


async def test_a_known_state_unlike_the_kernels_is_planned_from_and_repaired(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A caller's known state that is wrong (another scheduler, no
    destination, where the kernel has the config's): the pass plans from it
    without a read, as from a belief; the kernel refuses the destination it
    already has, which makes the table "moved", and the pass after it reads
    the service and leaves it as the config wants."""
    backend = Recorder()
    async with rig(tmp_path, backend, QUIET) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        director = r.director
        before = len(backend.reads)

        async def commit() -> list[Operation]:
            known = {VIP: ServiceEntry(Service(VIP, "wrr"))}
            return await director.commit(director.runtime, "test", {VIP}, known=known)

        sent = await director.exclusive(commit)
        reads_in_commit = backend.reads[before:]
        await until(lambda: len(backend.reads) > before)
        reads_after = backend.reads[before:]
        schedulers = {e.service.key: e.service.scheduler for e in backend.services()}
    assert [type(op).__name__ for op in sent] == ["EditService", "AddDestination"]
    assert reads_in_commit == []
    assert {VIP} in reads_after or None in reads_after
    assert schedulers[VIP] == "rr"
    assert r.weights() == {"10.0.1.1:80": 5}


async def test_the_services_a_restore_made_are_not_read_at_the_next_drift_check(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Their digests after the commit's pass vouch for them: the drift
    check reads only its rotation's slice (one service of the four), not
    the three the -R made (a thousand, in bench/ctl.py's -R: 3.2 s of
    dumps in the VM after every -R)."""
    backend = Recorder()
    async with rig(tmp_path, backend) as r:  # a drift check every 5 s
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        await r.ipvsadm("-R", stdin=SCRIPT)
        await until(lambda: all(r.weights(k) == {"10.0.2.1:80": 1} for k in MADE))
        before = len(backend.reads)
        await trio.sleep(6.0)  # (the autojump clock's) one drift check
        reads = backend.reads[before:]
    assert len(reads) == 1
    assert reads[0] is not None and len(reads[0]) == 1
