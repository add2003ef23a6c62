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


def test_once_started_the_collector_is_on_and_ready_is_sent() -> None:
    """directord's start runs with the collector off (director.entry); the
    end of the start turns it on, then tells systemd READY=1."""
    import gc

    from director import daemon

    class Notifier:
        def __init__(self) -> None:
            self.said: list[str] = []

        def ready(self, status: str = "") -> None:
            self.said.append(f"ready {gc.isenabled()} {status}")

    gc.disable()
    try:
        notifier = Notifier()
        daemon.started(notifier, "1 service")  # type: ignore[arg-type]
        assert gc.isenabled()
        assert notifier.said == ["ready True 1 service"]
    finally:
        gc.unfreeze()
        gc.enable()
