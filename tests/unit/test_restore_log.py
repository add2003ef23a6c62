"""A -R's kernel probes, sent together, and how they are logged (issue 8).

The operations a request sends to the kernel itself are logged:
one alone as `control_kernel_op` with its fields, the many of a -R (each
managed -A's kernel probe adds its service) as `control_kernel_ops` events
of at most KERNEL_OPS_PER_EVENT operations each, in order, before the
request's `control_change`. The handler and the engine over the in-memory
backend, under trio's autojump clock."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import structlog
import trio
import trio.testing
from test_handler import rig, until

from director.control.handler import KERNEL_OPS_PER_EVENT
from director.control.messages import Response
from director.ipvs.errors import KernelError
from director.ipvs.memory import MemoryBackend
from director.ipvs.model import Protocol, Service, ServiceKey
from director.ipvs.ops import AddService, Operation

COUNT = 2 * KERNEL_OPS_PER_EVENT + 7


def _vip(i: int) -> str:
    return f"10.9.{i // 250}.{i % 250 + 1}:80"


async def test_a_restore_logs_its_kernel_operations_in_events_of_many(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    script = "".join(
        f"-A -t {_vip(i)} -s rr\n-a -t {_vip(i)} -r 10.0.2.1:80 -m\n" for i in range(COUNT)
    )
    with structlog.testing.capture_logs() as logs:
        async with rig(tmp_path) as r:
            await until(lambda: r.weights() == {"10.0.1.1:80": 5})
            del logs[:]
            assert await r.ipvsadm("-R", stdin=script) == Response(0, "", "")
    events = [e["event"] for e in logs if e["event"].startswith("control_")]
    assert events[:4] == ["control_kernel_ops"] * 3 + ["control_change"]
    assert "control_kernel_op" not in events
    batches = [e for e in logs if e["event"] == "control_kernel_ops"]
    assert [e["count"] for e in batches] == [KERNEL_OPS_PER_EVENT] * 2 + [7]
    ops = [op for e in batches for op in e["ops"]]
    assert [op["vs"] for op in ops] == [f"TCP {_vip(i)}" for i in range(COUNT)]
    assert {op["op"] for op in ops} == {"add_service"}
    assert ops[0] == {"op": "add_service", "vs": f"TCP {_vip(0)}", "scheduler": "rr"} | {
        k: ops[0][k] for k in ("flags", "timeout")
    }


async def test_one_kernel_operation_is_one_event_with_its_fields(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with rig(tmp_path) as r:
            await until(lambda: r.weights() == {"10.0.1.1:80": 5})
            del logs[:]
            assert await r.ipvsadm("-A", "-t", "10.9.0.1:80", "-s", "wlc") == Response(0, "", "")
    sent = [e for e in logs if e["event"].startswith("control_kernel_op")]
    assert [(e["event"], e["op"], e["vs"], e["scheduler"]) for e in sent] == [
        ("control_kernel_op", "add_service", "TCP 10.9.0.1:80", "wlc")
    ]


# -- the kernel probes of a -R's -A lines, sent together ---------------------


class Batches(MemoryBackend):
    """Records each apply and apply_each call's operations."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[Operation]]] = []

    def apply(self, operations: Sequence[Operation]) -> None:
        self.calls.append(("apply", list(operations)))
        super().apply(operations)

    def apply_each(self, operations: Sequence[Operation]) -> list[KernelError | None]:
        self.calls.append(("each", list(operations)))
        return super().apply_each(operations)


def _key(i: int) -> ServiceKey:
    return ServiceKey.inet(Protocol.TCP, _vip(i).split(":")[0], 80)


async def test_a_restores_kernel_probes_go_in_one_send(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    backend = Batches()
    script = "".join(
        f"-A -t {_vip(i)} -s wrr\n-a -t {_vip(i)} -r 10.0.2.1:80 -m\n" for i in range(5)
    )
    async with rig(tmp_path, backend) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        del backend.calls[:]
        assert await r.ipvsadm("-R", stdin=script) == Response(0, "", "")
        first = backend.calls[0]
        keys = {e.service.key for e in backend.services()}
    assert first == ("each", [AddService(Service(_key(i), "wrr")) for i in range(5)])
    assert not [ops for kind, ops in backend.calls if kind == "apply"]
    assert {_key(i) for i in range(5)} <= keys


async def test_a_refused_probe_among_others_is_answered_on_its_own_line(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The send of the deferred probes has one refused (no such scheduler):
    the services the others added are deleted, and the lines run again with
    each probe sent in its turn, so the answer is one request per line's."""
    backend = Batches()
    lines = [
        "-A -t 10.9.0.1:80 -s wrr",
        "-a -t 10.9.0.1:80 -r 10.0.2.1:80 -m",
        "-A -t 10.9.0.2:80 -s nosuch",
        "-a -t 10.9.0.2:80 -r 10.0.2.1:80 -m",
        "-A -t 10.9.0.3:80 -s rr",
    ]
    (tmp_path / "lines").mkdir()
    (tmp_path / "restore").mkdir()
    async with rig(tmp_path / "lines") as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        one_by_one = [await r.ipvsadm(*line.split()) for line in lines]
    async with rig(tmp_path / "restore", backend) as r:
        await until(lambda: r.weights() == {"10.0.1.1:80": 5})
        del backend.calls[:]
        response = await r.ipvsadm("-R", stdin="".join(f"{line}\n" for line in lines))
        calls = list(backend.calls)
        keys = {e.service.key for e in backend.services()}
    assert response == Response(one_by_one[-1].status, "", "".join(x.stderr for x in one_by_one))
    assert "Scheduler or persistence engine not found" in response.stderr
    made = [ServiceKey.inet(Protocol.TCP, f"10.9.0.{i}", 80) for i in (1, 2, 3)]
    assert made[0] in keys and made[2] in keys and made[1] not in keys
    # The -a of the refused service goes to the kernel too (not managed).
    assert [(kind, [type(op).__name__ for op in ops]) for kind, ops in calls[:6]] == [
        ("each", ["AddService"] * 3),
        ("each", ["DeleteService"] * 2),
        ("apply", ["AddService"]),
        ("apply", ["AddService"]),
        ("apply", ["AddDestination"]),
        ("apply", ["AddService"]),
    ]
