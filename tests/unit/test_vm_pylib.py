"""tests/vm/run.py's tree of pure-Python code for the guest: each module's
source, and in __pycache__ an unchecked .pyc that the import system uses
without comparing it with the source (a directory on PYTHONPATH, not a zip,
whose directory zipimport would keep in every process's memory)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import pytest

RUN_PY = Path(__file__).resolve().parents[1] / "vm" / "run.py"


@pytest.fixture
def run_py() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_run_pylib", RUN_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tree_imports_from_its_pycs(
    run_py: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sources = tmp_path / "src"
    (sources / "pkg").mkdir(parents=True)
    (sources / "pkg" / "__init__.py").write_text("X = 1\n")
    (sources / "pkg" / "part.py").write_text("Y = 2\n")
    monkeypatch.setattr(run_py, "REPO", tmp_path)
    monkeypatch.setattr(
        run_py,
        "pylib_sources",
        lambda: {name: sources / name for name in ("pkg/__init__.py", "pkg/part.py")},
    )
    archive = run_py.pure_python_tree()
    assert archive.parent == tmp_path / ".vmtest" and archive.suffix == ".tar"
    assert run_py.pure_python_tree() == archive  # the same sources: the same archive
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tag = sys.implementation.cache_tag
        assert names == {
            "pkg/__init__.py",
            "pkg/part.py",
            f"pkg/__pycache__/__init__.{tag}.pyc",
            f"pkg/__pycache__/part.{tag}.pyc",
        }
        tar.extractall(tmp_path / "guest")  # our own archive
    # The source changed after the build: an unchecked .pyc is still what runs,
    # so the guest never compiles (nor reads the source, beyond a stat).
    (tmp_path / "guest" / "pkg" / "part.py").write_text("Y = 3\n")
    out = subprocess.run(
        [sys.executable, "-c", "import pkg.part; print(pkg.X, pkg.part.Y, pkg.part.__file__)"],
        env={"PYTHONPATH": str(tmp_path / "guest"), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["1", "2", str(tmp_path / "guest" / "pkg" / "part.py")]


def test_the_guest_unpacks_it_first_on_the_path(run_py: ModuleType, tmp_path: Path) -> None:
    script = run_py.guest_script(["true"], tmp_path / "rc", tmp_path / "pylib-x.tar")
    guest = run_py.GUEST_PYLIB
    assert f"tar -xf {tmp_path / 'pylib-x.tar'} -C {guest}" in script
    assert f"export PYTHONPATH={guest} PYTHONSAFEPATH=1" in script
    assert "PYTHONPATH" not in run_py.guest_script(["true"], tmp_path / "rc", None)
