"""directord limits glibc's malloc arenas (director.daemon.limit_malloc_arenas),
unless the operator set MALLOC_ARENA_MAX. In a child process: mallopt
changes the process it runs in."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

CALL = "from director.daemon import limit_malloc_arenas; print(limit_malloc_arenas())"


def _run(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", CALL], env=environ | env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_the_arenas_are_limited() -> None:
    assert _run() == "True"


def test_an_operators_malloc_arena_max_wins() -> None:
    assert _run(MALLOC_ARENA_MAX="4") == "False"
