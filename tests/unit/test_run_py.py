"""tests/vm/run.py keeps a CI log whole: the VM's output goes through a pipe, so a
child that reopens its stdout with O_TRUNC (as qemu does with virtme-ng's
`-chardev file,path=/proc/self/fd/1`) cannot erase what was written before."""

import importlib.util
import io
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "vm" / "run.py"

# What qemu does with the path virtme-ng gives it: open it for writing, truncating.
LIKE_QEMU = (
    "import sys\n"
    "with open('/proc/self/fd/1', 'w') as console:\n"
    "    console.write('guest line 1\\nguest line 2\\n')\n"
    "sys.stderr.write('qemu: a warning\\n')\n"
    "sys.exit(3)\n"
)


@pytest.fixture(scope="module")
def run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_run", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_child_truncating_its_stdout_erases_a_log_file_it_is_given(tmp_path: Path) -> None:
    """The failure itself, without run.py's pipe: the log loses BEFORE."""
    log = tmp_path / "ci.log"
    with log.open("wb") as out:
        out.write(b"BEFORE\n")
        out.flush()
        subprocess.run([sys.executable, "-c", LIKE_QEMU], stdout=out, check=False)
    assert log.read_bytes() == b"guest line 1\nguest line 2\n"


def test_relayed_output_keeps_what_came_before(run_py: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "ci.log"
    with log.open("wb") as out:
        out.write(b"BEFORE\n")
        out.flush()
        status = run_py.run_relayed([sys.executable, "-c", LIKE_QEMU], stdout=out, stderr=out)
        out.write(b"AFTER\n")
    assert status == 3
    lines = log.read_bytes().splitlines()
    assert lines[0] == b"BEFORE"
    assert lines[-1] == b"AFTER"
    assert sorted(lines[1:-1]) == [b"guest line 1", b"guest line 2", b"qemu: a warning"]


class Recording(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushed: list[bytes] = []

    def flush(self) -> None:
        self.flushed.append(self.getvalue())


def test_relay_copies_line_by_line_and_flushes_each(run_py: ModuleType) -> None:
    sink = Recording()
    run_py.relay(io.BytesIO(b"one\ntwo\nno newline at the end"), sink)
    assert sink.flushed == [
        b"one\n",
        b"one\ntwo\n",
        b"one\ntwo\nno newline at the end",
    ]
