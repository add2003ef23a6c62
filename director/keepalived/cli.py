"""`directorctl import-keepalived FILE`: director.toml on standard output,
every note on standard error as `file:line: text`. Exit 0 when converted
(with a warning when the result does not pass directord's --check on this
host, which can depend on the host: an exec check's user, a TLS file), 1 when
FILE cannot be read or parsed, 2 for a usage error."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import TextIO

from director.config import ConfigError, parse_config
from director.keepalived import KeepalivedSyntaxError, import_keepalived

PROGRAM = "directorctl import-keepalived"
USAGE = "usage: directorctl import-keepalived KEEPALIVED.CONF > director.toml\n"


def main(words: Sequence[str], stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if len(words) != 1 or words[0].startswith("-"):
        if list(words) in (["-h"], ["--help"]):
            out.write(USAGE)
            return 0
        err.write(f"{PROGRAM}: expected one keepalived configuration file\n{USAGE}")
        return 2
    try:
        conversion = import_keepalived(words[0])
    except KeepalivedSyntaxError as e:
        err.write(f"{PROGRAM}: {e}\n")
        return 1
    out.write(conversion.text)
    out.flush()
    for note in conversion.notes:
        err.write(f"{note}\n")
    try:
        config = parse_config(conversion.text, "<converted>")
    except ConfigError as e:
        err.write(f"{PROGRAM}: warning: the result does not pass directord --check here:\n")
        sources = _sources(conversion.text)
        err.writelines(f"  {_with_source(error, sources)}\n" for error in e.named_errors)
        return 0
    count = len(conversion.notes)
    err.write(
        f"{PROGRAM}: {words[0]}: {config.counts()}; "
        f"{count} note{'' if count == 1 else 's'} (commented in the output)\n"
    )
    return 0


_SOURCE = re.compile(r"^# (.+:\d+): virtual_server ")
_INDEX = re.compile(r"^virtual_server\[(\d+)\]")


def _sources(text: str) -> list[str]:
    """The keepalived file:line of each [[virtual_server]] of the output, in
    order: the comment the converter writes before each one."""
    sources: list[str] = []
    last = ""
    for line in text.splitlines():
        match = _SOURCE.match(line)
        if match:
            last = match[1]
        elif line == "[[virtual_server]]":
            sources.append(last)
    return sources


def _with_source(error: str, sources: list[str]) -> str:
    """A config error about virtual_server[i] with where that service came
    from in keepalived.conf."""
    match = _INDEX.match(error)
    if match is None or int(match[1]) >= len(sources) or not sources[int(match[1])]:
        return error
    return f"{error} (from {sources[int(match[1])]})"
