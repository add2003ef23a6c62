"""docs/completion/directorctl.bash: its command list is directorctl's own
(read from director/ctl.py, test_docs_commands.py), and bash completes with it:
commands, drain's options, and virtual services and real servers from the
daemon's -Sn (a directorctl function stands in for the daemon here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs_commands import directorctl_commands

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "completion" / "directorctl.bash"
SAVED = [
    "-A -t 10.0.0.1:80 -s wlc",
    "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -g -w 1",
    "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 1",
    "-A -u [2001:db8::1]:53 -s rr",
    "-a -u [2001:db8::1]:53 -r [2001:db8::53]:53 -g -w 1",
    "-A -f 7 -s rr",
    "-a -f 7 -r 10.0.2.1:80 -g -w 1",
]


def test_the_command_list_is_the_clis() -> None:
    match = re.search(r'^_directorctl_commands="([^"]*)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match
    assert match[1].split() == directorctl_commands()


def complete(line: str) -> list[str]:
    """What bash offers for `line` (the cursor at its end)."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    saved = "\n".join(SAVED)
    script = f"""
source {SCRIPT}
directorctl() {{ printf '%s\\n' '{saved}'; }}
COMP_LINE='{line}'
COMP_POINT=${{#COMP_LINE}}
_directorctl
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    result = subprocess.run([bash, "--norc", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr, result.stderr
    return [word for word in result.stdout.splitlines() if word]


def test_the_first_word_offers_every_command() -> None:
    offered = complete("directorctl ")
    assert set(directorctl_commands()) <= set(offered)
    assert {"-L", "-a", "--set", "--socket"} <= set(offered)
    assert complete("directorctl dr") == ["drain"]
    assert complete("directorctl --socket /tmp/x.sock en") == ["enable"]


def test_services_then_their_real_servers() -> None:
    assert complete("directorctl drain ") == ["tcp:10.0.0.1:80", "udp:[2001:db8::1]:53", "fwm:7"]
    # bash replaces what follows the last colon (COMP_WORDBREAKS): only that is offered.
    assert complete("directorctl disable tcp:10.0") == ["10.0.0.1:80"]
    assert complete("directorctl drain tcp:10.0.0.1:80 ") == ["10.0.1.1:80", "10.0.1.2:80"]
    assert complete("directorctl enable udp:[2001:db8::1]:53 ") == ["[2001:db8::53]:53"]
    assert complete("directorctl enable fwm:7 10.0") == ["10.0.2.1:80"]


def test_options_of_status_and_drain() -> None:
    assert complete("directorctl status --") == ["--json"]
    assert complete("directorctl drain tcp:10.0.0.1:80 10.0.1.1:80 --") == ["--wait", "--timeout"]
    assert sorted(complete("directorctl -L --st")) == ["--start-daemon", "--stats", "--stop-daemon"]
