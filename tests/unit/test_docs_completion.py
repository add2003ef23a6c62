"""docs/completion/directorctl.bash and _directorctl (zsh): their command lists
are directorctl's own (read from director/ctl.py, test_docs_commands.py), and
bash and zsh complete with them: commands, options (--socket before or after
the command), and virtual services and real servers from the daemon's -Sn (a
directorctl function stands in for the daemon here), IPv6 and IPv6 fwmark
services included (operator trial: fwm:6:ipv6 was offered as fwm:6, and its
real servers not at all)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs_commands import directorctl_commands

COMPLETION = Path(__file__).resolve().parents[2] / "docs" / "completion"
SCRIPT = COMPLETION / "directorctl.bash"
ZSH_SCRIPT = COMPLETION / "_directorctl"
ZSH_DRIVER = Path(__file__).with_name("zsh_complete.zsh")
SAVED = [
    "-A -t 10.0.0.1:80 -s wlc",
    "-a -t 10.0.0.1:80 -r 10.0.1.1:80 -g -w 1",
    "-a -t 10.0.0.1:80 -r 10.0.1.2:80 -g -w 1",
    "-A -u [2001:db8::1]:53 -s rr",
    "-a -u [2001:db8::1]:53 -r [2001:db8::53]:53 -g -w 1",
    "-A -f 7 -s rr",
    "-a -f 7 -r 10.0.2.1:80 -g -w 1",
    "-A -f 7 -6 -s wlc -p 360 -M 64",
    "-a -f 7 -6 -r [2001:db8::7]:80 -m -w 1",
    "-A -t [2001:db8::1]:80 -s rr",
    "-a -t [2001:db8::1]:80 -r [2001:db8::2]:80 -m -w 1",
    "-a -t [2001:db8::1]:80 -r [2001:db8::3]:80 -m -w 1",
]
SERVICES = [
    "tcp:10.0.0.1:80",
    "udp:[2001:db8::1]:53",
    "fwm:7",
    "fwm:7:ipv6",
    "tcp:[2001:db8::1]:80",
]
# bash's default COMP_WORDBREAKS: the word it replaces starts after the last of these.
WORDBREAKS = " \t\n\"'><=;|&(:"


def test_the_command_list_is_the_clis() -> None:
    match = re.search(r'^_directorctl_commands="([^"]*)"$', SCRIPT.read_text(), re.MULTILINE)
    assert match
    assert match[1].split() == directorctl_commands()
    match = re.search(r"^ *local -a commands=\(([^)]*)\)$", ZSH_SCRIPT.read_text(), re.MULTILINE)
    assert match
    assert match[1].split() == directorctl_commands()


def test_both_shells_offer_the_same_ipvsadm_options() -> None:
    bash = re.search(r'^_directorctl_ipvsadm_options="([^"]*)"', SCRIPT.read_text(), re.M | re.S)
    zsh = re.search(r"local -a ipvsadm_options=\(([^)]*)\)", ZSH_SCRIPT.read_text())
    assert bash and zsh
    assert bash[1].split() == zsh[1].split()


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


def completed(line: str) -> list[str]:
    """The words bash leaves on the line for each of its offers: it replaces
    only the text after the line's last COMP_WORDBREAKS character."""
    start = max(line.rfind(c) for c in WORDBREAKS) + 1
    return [(line[:start] + reply).split(" ")[-1] for reply in complete(line)]


def test_the_first_word_offers_every_command() -> None:
    offered = complete("directorctl ")
    assert set(directorctl_commands()) <= set(offered)
    assert {"-L", "-a", "--set", "--socket"} <= set(offered)
    assert complete("directorctl dr") == ["drain"]
    assert complete("directorctl --socket /tmp/x.sock en") == ["enable"]


def test_services_then_their_real_servers() -> None:
    assert complete("directorctl drain ") == SERVICES
    # bash replaces what follows the last colon (COMP_WORDBREAKS): only that is offered.
    assert complete("directorctl disable tcp:10.0") == ["10.0.0.1:80"]
    assert complete("directorctl drain tcp:10.0.0.1:80 ") == ["10.0.1.1:80", "10.0.1.2:80"]
    assert complete("directorctl enable udp:[2001:db8::1]:53 ") == ["[2001:db8::53]:53"]
    assert complete("directorctl enable fwm:7 10.0") == ["10.0.2.1:80"]


def test_options_of_status_and_drain() -> None:
    assert complete("directorctl status --") == [
        "--json",
        "--summary",
        "--socket",
        "--answer-timeout",
    ]
    assert complete("directorctl drain tcp:10.0.0.1:80 10.0.1.1:80 --") == [
        "--wait",
        "--timeout",
        "--socket",
    ]
    assert sorted(complete("directorctl -L --st")) == ["--start-daemon", "--stats", "--stop-daemon"]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("directorctl drain fwm:7", ["fwm:7", "fwm:7:ipv6"]),
        ("directorctl drain fwm:7:", ["fwm:7:ipv6"]),
        ("directorctl enable fwm:7:ipv6 ", ["[2001:db8::7]:80"]),
        ("directorctl enable fwm:7 ", ["10.0.2.1:80"]),
        ("directorctl disable tcp:[2001:db8::", ["tcp:[2001:db8::1]:80"]),
        ("directorctl disable tcp:[2001:db8::1]:80 ", ["[2001:db8::2]:80", "[2001:db8::3]:80"]),
        (
            "directorctl disable tcp:[2001:db8::1]:80 [2001:db8::",
            ["[2001:db8::2]:80", "[2001:db8::3]:80"],
        ),
        ("directorctl disable tcp:[2001:db8::1]:80 [2001:db8::3", ["[2001:db8::3]:80"]),
        ("directorctl drain udp:[2001:db8::1]:53 [", ["[2001:db8::53]:53"]),
        ("directorctl drain --socket /tmp/d.sock fwm:7:ipv6 ", ["[2001:db8::7]:80"]),
        ("directorctl drain fwm:7:ipv6 --socket /tmp/d.sock ", ["[2001:db8::7]:80"]),
        ("directorctl enable tcp:10.0.0.1:80 --s", ["--socket"]),
        ("directorctl -Ln --soc", ["--socket"]),
    ],
)
def test_bash_completes_ipv6_and_fwmark_ipv6_words_whole(line: str, words: list[str]) -> None:
    assert completed(line) == words


def zsh_complete(line: str, tmp_path: Path) -> list[str]:
    """What zsh's completion system (compinit, docs/completion in fpath)
    offers for `line` and TAB, unquoted (zsh inserts `[` as `\\[`)."""
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (tests/vm/setup-host.sh installs it)")
    saved = tmp_path / "saved"
    saved.write_text("\n".join(SAVED) + "\n")
    result = subprocess.run(
        [zsh, "-f", str(ZSH_DRIVER), str(COMPLETION), str(saved), line],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [re.sub(r"\\(.)", r"\1", word) for word in result.stdout.splitlines() if word]


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("directorctl dr", ["drain"]),
        ("directorctl --socket /tmp/d.sock en", ["enable"]),
        ("directorctl drain ", SERVICES),
        ("directorctl drain fwm:7", ["fwm:7", "fwm:7:ipv6"]),
        ("directorctl enable fwm:7:ipv6 ", ["[2001:db8::7]:80"]),
        ("directorctl enable fwm:7 ", ["10.0.2.1:80"]),
        ("directorctl disable tcp:\\[2001:db8::", ["tcp:[2001:db8::1]:80"]),
        ("directorctl disable tcp:[2001:db8::1]:80 ", ["[2001:db8::2]:80", "[2001:db8::3]:80"]),
        ("directorctl drain udp:[2001:db8::1]:53 ", ["[2001:db8::53]:53"]),
        ("directorctl drain fwm:7:ipv6 --socket /tmp/d.sock ", ["[2001:db8::7]:80"]),
        ("directorctl status --", ["--json", "--summary", "--socket", "--answer-timeout"]),
        ("directorctl drain tcp:10.0.0.1:80 10.0.1.1:80 --", ["--socket", "--timeout", "--wait"]),
    ],
)
def test_zsh_completes_the_same(line: str, words: list[str], tmp_path: Path) -> None:
    assert sorted(zsh_complete(line, tmp_path)) == sorted(words)


def test_make_install_puts_both_completions_where_the_shells_look(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    result = subprocess.run(
        [make, "-s", "install", f"DESTDIR={tmp_path}", "PREFIX=/usr/local"],
        cwd=COMPLETION.parents[1],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    share = tmp_path / "usr" / "local" / "share"
    bash = share / "bash-completion" / "completions" / "directorctl"
    zsh = share / "zsh" / "site-functions" / "_directorctl"
    assert bash.read_text() == SCRIPT.read_text()
    assert zsh.read_text() == ZSH_SCRIPT.read_text()
    assert zsh.read_text().startswith("#compdef directorctl\n")
