"""directord's own command line, without starting the daemon."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from director.daemon import main


def test_version_prints_directors_own_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`directorctl --version` is ipvsadm's (the control socket answers as
    ipvsadm); director's own version is directord's to tell."""
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"directord {version('director')}\n"
