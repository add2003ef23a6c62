"""director.lazyimport: a module imported within `standing_in` is a stand-in
that imports the real one at the first attribute asked of it, once, whatever
the thread; outside the block, imports are ordinary."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from director.lazyimport import StandIn, imported, standing_in

MODULE = """
import sys
sys.modules["_lazy_runs"].append(__name__)
VALUE = 42
"""


@pytest.fixture
def modules(tmp_path: Path) -> Iterator[Path]:
    """A directory on sys.path for the test's modules, which record their
    runs in sys.modules["_lazy_runs"]; all of them gone afterwards."""
    sys.modules["_lazy_runs"] = []  # type: ignore[assignment]
    sys.path.insert(0, str(tmp_path))
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in set(sys.modules) - before:
            del sys.modules[name]
        del sys.modules["_lazy_runs"]


def runs() -> list[str]:
    return sys.modules["_lazy_runs"]  # type: ignore[return-value]


def test_the_first_attribute_imports_it_once(modules: Path) -> None:
    (modules / "lz_plain.py").write_text(MODULE)
    with standing_in("lz_plain"):
        import lz_plain  # type: ignore[import-not-found]
    assert isinstance(lz_plain, StandIn)
    assert "lz_plain" not in sys.modules  # the block's import alone saw it
    assert runs() == []
    assert not imported(lz_plain)
    assert lz_plain.VALUE == 42
    assert lz_plain.VALUE == 42
    assert runs() == ["lz_plain"]
    assert imported(lz_plain)
    assert sys.modules["lz_plain"].VALUE == 42
    with pytest.raises(AttributeError, match="missing"):
        _ = lz_plain.missing


def test_outside_the_block_imports_are_ordinary(modules: Path) -> None:
    package = modules / "lz_package"
    package.mkdir()
    (package / "__init__.py").write_text(MODULE + "from lz_package import part\n")
    (package / "part.py").write_text(MODULE)
    with standing_in("lz_package"):
        held = importlib.import_module("lz_package")
    assert runs() == []
    import lz_package.part  # type: ignore[import-not-found]

    assert runs() == ["lz_package", "lz_package.part"]  # each once
    assert type(lz_package) is type(sys)
    assert held.part is lz_package.part  # the stand-in answers from the real one
    assert runs() == ["lz_package", "lz_package.part"]


def test_asked_within_the_block(modules: Path) -> None:
    (modules / "lz_early.py").write_text(MODULE)
    with standing_in("lz_early"):
        import lz_early  # type: ignore[import-not-found]

        assert lz_early.VALUE == 42
        assert sys.modules["lz_early"] is not lz_early
    assert sys.modules["lz_early"].VALUE == 42
    assert runs() == ["lz_early"]


def test_threads_wait_for_the_one_that_imports(modules: Path) -> None:
    # The module takes a while (an Event the test sets once all 8 threads
    # are waiting on it); every thread gets VALUE, the module runs once.
    (modules / "lz_slow.py").write_text(
        MODULE.replace("VALUE = 42", "sys.modules['_lazy_gate'].wait(5)\nVALUE = 42")
    )
    gate = threading.Event()
    sys.modules["_lazy_gate"] = gate  # type: ignore[assignment]
    try:
        with standing_in("lz_slow"):
            import lz_slow  # type: ignore[import-not-found]
        seen: list[object] = []

        def ask() -> None:
            try:
                seen.append(lz_slow.VALUE)
            except Exception as e:  # pragma: no cover - what the test catches
                seen.append(e)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        gate.set()
        for thread in threads:
            thread.join(10)
    finally:
        del sys.modules["_lazy_gate"]
    assert seen == [42] * 8
    assert runs() == ["lz_slow"]


def test_an_imported_module_is_left_alone(modules: Path) -> None:
    (modules / "lz_there.py").write_text(MODULE)
    import lz_there  # type: ignore[import-not-found]

    with standing_in("lz_there", "os.path"):
        assert sys.modules["lz_there"] is lz_there
        assert not isinstance(sys.modules["os.path"], StandIn)
    assert sys.modules["lz_there"] is lz_there


def test_the_daemon_runs_without_asyncio() -> None:
    # What it is for: directord's imports and its logging leave asyncio out.
    code = textwrap.dedent(
        """
        import sys, io
        import director.daemon
        from director import log
        log.configure("info", io.StringIO(), json=True)
        log.get("test").info("event", figure=1)
        log.close()
        print("asyncio" in sys.modules)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
