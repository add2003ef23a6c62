"""What an ipvsadm command line asks for, as values.

`director.ipvsadm.cli.parse` turns argv into one of these; a shell executes
it (against a Backend) and prints with `director.ipvsadm.listing`.
"""

from __future__ import annotations

from dataclasses import dataclass

from director.ipvs.model import ServiceKey
from director.ipvs.ops import Operation


@dataclass(frozen=True)
class ListFormat:
    """ipvsadm's FMT_* flags for the listing commands."""

    numeric: bool = False
    stats: bool = False
    rate: bool = False
    thresholds: bool = False
    persistent_conn: bool = False
    exact: bool = False
    nosort: bool = False
    tun_info: bool = False

    @property
    def brief(self) -> bool:
        """Whether it shows only what a brief read of the table has (no
        thresholds, persistent-connection counts or stats)."""
        return not (self.stats or self.rate or self.thresholds or self.persistent_conn)


PLAIN = ListFormat()


@dataclass(frozen=True)
class ListServices:
    """-L [virtual-service]: the whole table (with the version header), or one
    service (without it) when `service` is set."""

    format: ListFormat = PLAIN
    service: ServiceKey | None = None


@dataclass(frozen=True)
class ListConnections:
    """-L -c"""

    format: ListFormat = PLAIN


@dataclass(frozen=True)
class ListTimeouts:
    """-L --timeout"""


@dataclass(frozen=True)
class ListDaemons:
    """-L --daemon"""


@dataclass(frozen=True)
class Save:
    """-S [-n]"""

    numeric: bool = False


@dataclass(frozen=True)
class Restore:
    """-R: read commands from stdin (see cli.parse_restore)."""


@dataclass(frozen=True)
class Apply:
    """A command that changes the table: -A -E -D -a -e -d -C -Z --set
    --start-daemon --stop-daemon."""

    operation: Operation


@dataclass(frozen=True)
class Help:
    """-h: print listing.usage(program) on stdout, exit 0."""

    program: str = "ipvsadm"


@dataclass(frozen=True)
class Version:
    """-v: print listing.version() on stdout, exit 0."""


Command = (
    ListServices
    | ListConnections
    | ListTimeouts
    | ListDaemons
    | Save
    | Restore
    | Apply
    | Help
    | Version
)
