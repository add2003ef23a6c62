"""The man pages in docs/man/: each renders without a warning (groff, or man
-l, when installed; otherwise its macros are checked to be the man macros),
directorctl(8) names every command director/ctl.py accepts, directord(8)
every option of its argument parser, and director.toml(5) every key
docs/config.md documents."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_docs_commands import directorctl_commands
from test_docs_config import doc_rows, doc_text

from director import daemon

MAN = Path(__file__).resolve().parents[2] / "docs" / "man"
PAGES = ("directord.8", "directorctl.8", "director.toml.5")
# The man(7) macros and the requests these pages use.
MACROS = {"TH", "SH", "SS", "TP", "PP", "B", "I", "BR", "RB", "BI", "IR", "EX", "EE", "br"}


def rendered(page: str) -> str:
    """The page as a terminal shows it (plain text), through groff when
    installed; warnings fail the test."""
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed: test_macros_are_man_macros checks the source")
    result = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", "-P", "-cbou", str(MAN / page)],
        capture_output=True,
        text=True,
        env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0 and not result.stderr, f"{page}: {result.stderr}"
    # groff renders '-' as a hyphen (U+2010) and \- as a minus: compare as ASCII.
    return result.stdout.replace("\u2010", "-").replace("\u2212", "-")


@pytest.mark.parametrize("page", PAGES)
def test_macros_are_man_macros(page: str) -> None:
    text = (MAN / page).read_text(encoding="ascii")  # roff without preconv: ASCII only
    lines = text.splitlines()
    assert lines[0].startswith('.\\"')
    th = next(line for line in lines if line.startswith(".TH"))
    name, section = th.split()[1:3]
    assert (name.lower(), section) == tuple(page.rsplit(".", 1))
    used = {m[1] for line in lines if (m := re.match(r"\.([A-Za-z]+)", line))}
    assert used <= MACROS, used - MACROS
    assert {"TH", "SH"} <= used
    assert text.count("\n.EX\n") == text.count("\n.EE\n")
    for section_name in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert f"\n.SH {section_name}\n" in text, (page, section_name)


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_without_warnings(page: str) -> None:
    text = rendered(page)
    assert "NAME" in text and "SEE ALSO" in text


def test_man_renders_each_page_too() -> None:
    man = shutil.which("man")
    if man is None:
        pytest.skip("man is not installed")
    for page in PAGES:
        out = subprocess.run(
            [man, "-l", "-P", "cat", str(MAN / page)],
            capture_output=True,
            text=True,
            env={"LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "MANWIDTH": "80"},
            check=False,
        )
        assert out.returncode == 0 and "SEE ALSO" in out.stdout, (page, out.stderr)


def test_directorctl_page_names_every_command() -> None:
    text = rendered("directorctl.8")
    commands = section(text, "COMMANDS")
    synopsis = section(text, "SYNOPSIS")
    for command in directorctl_commands():
        assert re.search(rf"^\s+{re.escape(command)}\b", commands, re.MULTILINE), command
        assert f" {command}" in synopsis, command


def test_directord_page_names_every_option_of_its_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        daemon.parse_args(["--help"])
    options = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", capsys.readouterr().out))
    assert {"--config", "--check", "--log-level", "--log-format"} <= options
    text = section(rendered("directord.8"), "OPTIONS")
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}\b", text), option


def test_director_toml_page_names_every_documented_key() -> None:
    text = section(rendered("director.toml.5"), "KEYS")
    keys = {row.key for row in doc_rows(doc_text())}
    assert len(keys) > 60
    for key in keys:
        # A short tag shares its line with the text (.TP): "pe     string; ..."
        assert re.search(rf"^\s+{re.escape(key)}(\s|$)", text, re.MULTILINE), key


def section(text: str, name: str) -> str:
    """A rendered page's section: from its heading to the next one."""
    match = re.search(rf"^{name}\n(.*?)(?=^[A-Z][A-Z ]+\n|\Z)", text, re.MULTILINE | re.DOTALL)
    assert match, f"no {name} section"
    return match[1]
