"""bench/ctl.py reports a hang as a failure with what it knows, instead of
waiting for ever (two -R rounds in the VM once printed nothing for 8 minutes)."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import ctl as bench_ctl  # noqa: E402 (bench/ctl.py, after its directory is on the path)


@pytest.fixture
def short_steps(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(bench_ctl, "STEP_TIMEOUT", 0.3)
    monkeypatch.setattr(bench_ctl, "ipvs_table", lambda: {})  # no kernel table on the host
    monkeypatch.setattr(bench_ctl, "WATCHED", [])
    yield


class FakeDaemon:
    """What the report reads of a Directord: its process and its log."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "directord.log").write_text("".join(f"line {i}\n" for i in range(40)))
        self.process = subprocess.Popen(["sleep", "30"])


def test_a_command_that_does_not_finish_is_a_reported_hang(
    short_steps: None, tmp_path: Path
) -> None:
    daemon: Any = FakeDaemon(tmp_path)
    bench_ctl.WATCHED.append(daemon)
    try:
        script = "import sys, time; print('partial answer', flush=True); time.sleep(30)"
        with pytest.raises(SystemExit) as stopped:
            bench_ctl.timed([sys.executable, "-c", script], b"-A -t 10.0.0.1:80\n")
    finally:
        daemon.process.kill()
        daemon.process.wait()
    report = str(stopped.value.code)
    assert report.startswith("HANG: ") and "(with input) did not finish in" in report
    assert "partial answer" in report
    assert f"directord {daemon.process.pid}: running" in report
    assert "    thread " in report  # where each of its threads waits
    assert "last 30 of 40 lines" in report and "line 39" in report and "line 9\n" not in report


def test_a_raw_request_without_an_answer_is_a_reported_hang(short_steps: None) -> None:
    directory = tempfile.mkdtemp(prefix="ctlb", dir="/tmp")
    path = Path(directory) / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)  # the connection waits in the backlog, never answered
        with pytest.raises(SystemExit) as stopped:
            bench_ctl.raw_answer(path, ["-R"], "-C\n")
    path.unlink()
    Path(directory).rmdir()
    report = str(stopped.value.code)
    assert report.startswith("HANG: raw -R (3 characters of input) did not finish")
