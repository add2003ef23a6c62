"""The operations a request sends to the kernel itself are logged (issue 8):
one alone as `control_kernel_op` with its fields, the many of a -R (each
managed -A's kernel probe adds its service) as `control_kernel_ops` events
of at most KERNEL_OPS_PER_EVENT operations each, in order, before the
request's `control_change`. The handler and the engine over the in-memory
backend, under trio's autojump clock."""

from __future__ import annotations

from pathlib import Path

import structlog
import trio
import trio.testing
from test_handler import rig, until

from director.control.handler import KERNEL_OPS_PER_EVENT
from director.control.messages import Response

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
