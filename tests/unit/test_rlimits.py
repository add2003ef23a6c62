"""raise_nofile_limit in child processes, so this process keeps its own limits."""

import resource
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))
from director.rlimits import raise_nofile_limit
got = raise_nofile_limit()
print(got, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def limits_after(soft: int, hard: int) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(soft), str(hard)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [int(word) for word in done.stdout.split()]


def test_the_soft_limit_goes_up_to_the_hard_limit() -> None:
    assert limits_after(1024, 4096) == [4096, 4096, 4096]


def test_a_soft_limit_already_at_the_hard_limit_stays() -> None:
    assert limits_after(2048, 2048) == [2048, 2048, 2048]


def test_the_limit_in_force_is_returned_in_this_process() -> None:
    from director.rlimits import raise_nofile_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        got = raise_nofile_limit()
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got >= soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_unlimited_hard_limit_means_nr_open(monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux refuses RLIM_INFINITY for NOFILE (beyond nr_open), so this case is
    # reached only through getrlimit's answer, replaced here.
    from director import rlimits

    with open(rlimits.NR_OPEN, encoding="ascii") as value:
        nr_open = int(value.read())
    limits = [(1024, resource.RLIM_INFINITY)]
    monkeypatch.setattr(rlimits.resource, "getrlimit", lambda _: limits[-1])
    monkeypatch.setattr(rlimits.resource, "setrlimit", lambda _, new: limits.append(new))
    assert rlimits.raise_nofile_limit() == nr_open
    assert limits == [(1024, resource.RLIM_INFINITY), (nr_open, resource.RLIM_INFINITY)]
