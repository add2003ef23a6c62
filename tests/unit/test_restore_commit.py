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


async def test_a_known_state_unlike_the_wanted_one_is_read_after_all(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A caller's known state with another scheduler than the config's: the
    pass reads the service instead of trusting it (and finds nothing to
    change, the kernel having the config's)."""
    backend = Recorder()
    async with rig(tmp_path, backend, QUIET) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        director = r.director
        before = len(backend.reads)

        async def commit() -> list[Operation]:
            known = {VIP: ServiceEntry(Service(VIP, "wrr"))}
            return await director.commit(director.runtime, "test", {VIP}, known=known)

        sent = await director.exclusive(commit)
        reads = backend.reads[before:]
    assert sent == []
    assert reads and all(read == {VIP} for read in reads)
