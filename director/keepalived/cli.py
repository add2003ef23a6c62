"""`directorctl import-keepalived FILE`: director.toml on standard output,
every note on standard error as `file:line: text`. Exit 0 when converted
(with a warning when the result does not pass directord's --check on this
host, which can depend on the host: an exec check's user, a TLS file), 1 when
FILE cannot be read or parsed, 2 for a usage error."""

from __future__ import annotations

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
        err.writelines(f"  {error}\n" for error in e.errors)
        return 0
    count = len(conversion.notes)
    err.write(
        f"{PROGRAM}: {words[0]}: {config.counts()}; "
        f"{count} note{'' if count == 1 else 's'} (commented in the output)\n"
    )
    return 0
