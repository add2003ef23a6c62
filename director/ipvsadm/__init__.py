"""ipvsadm 1.31 compatibility: its command line (cli) and its output
(listing), as pure functions over director.ipvs values."""

from director.ipvsadm.cli import parse, parse_restore
from director.ipvsadm.commands import (
    Apply,
    Command,
    Help,
    ListConnections,
    ListDaemons,
    ListFormat,
    ListServices,
    ListTimeouts,
    Restore,
    Save,
    Version,
)
from director.ipvsadm.errors import ParseError
from director.ipvsadm.names import NUMERIC, Names, SystemNames

__all__ = [
    "NUMERIC",
    "Apply",
    "Command",
    "Help",
    "ListConnections",
    "ListDaemons",
    "ListFormat",
    "ListServices",
    "ListTimeouts",
    "Names",
    "ParseError",
    "Restore",
    "Save",
    "SystemNames",
    "Version",
    "parse",
    "parse_restore",
]
