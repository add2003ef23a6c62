"""The option scanner ipvsadm uses (libpopt 1.19, as ipvsadm calls it):
options in any order, "-abc" clusters, "--long=value", "-tvalue", an optional
argument that is only taken when the next word does not start with "-",
words that are not options kept as leftovers, "--" ending the options."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class Arg(enum.Enum):
    NONE = 0
    REQUIRED = 1
    OPTIONAL = 2


@dataclass(frozen=True)
class Option:
    """One entry of ipvsadm's popt option table (struct poptOption): the long and
    short names, whether it takes an argument, and `tag` (popt's val), what the
    parser dispatches on."""

    long: str
    short: str  # "" when the option has no short form
    arg: Arg
    tag: str


class PoptError(Exception):
    """A popt error code, as poptStrerror() words it."""

    NOARG = "missing argument"
    UNWANTEDARG = "option does not take an argument"
    BADOPT = "unknown option"


class Scanner:
    """poptGetNextOpt over argv (argv[0] is the program name)."""

    def __init__(self, argv: Sequence[str], table: Sequence[Option]) -> None:
        self._argv = list(argv)
        self._long = {o.long: o for o in table}
        self._short = {o.short: o for o in table if o.short}
        self._next = 1
        self._cluster: str | None = None
        self._rest_are_leftovers = False
        self.leftovers: list[str] = []

    @property
    def bad_option(self) -> str:
        """poptBadOption(): the argv word last consumed."""
        return self._argv[self._next - 1]

    def next_option(self) -> tuple[Option, str | None] | None:
        """The next option and its argument; None at the end of argv."""
        while True:
            long_arg: str | None = None
            option: Option | None = None
            if self._cluster is None:
                if self._next == len(self._argv):
                    return None
                word = self._argv[self._next]
                self._next += 1
                if self._rest_are_leftovers or not word.startswith("-") or word == "-":
                    self.leftovers.append(word)
                    continue
                if word == "--":
                    self._rest_are_leftovers = True
                    continue
                if word.startswith("--"):
                    name, eq, value = word[2:].partition("=")
                    option = self._long.get(name)
                    if option is None:
                        raise PoptError(PoptError.BADOPT)
                    if eq:
                        long_arg = value
                else:
                    self._cluster = word[1:]
            if self._cluster is not None:
                cluster = self._cluster
                self._cluster = None
                option = self._short.get(cluster[0])
                if option is None:
                    raise PoptError(PoptError.BADOPT)
                if len(cluster) > 1:
                    self._cluster = cluster[1:]
            assert option is not None
            return option, self._argument(option, long_arg)

    def _argument(self, option: Option, long_arg: str | None) -> str | None:
        if option.arg is Arg.NONE:
            if long_arg is not None or (self._cluster or "").startswith("="):
                raise PoptError(PoptError.UNWANTEDARG)
            return None
        if long_arg is not None:
            return long_arg
        if self._cluster is not None:
            value = self._cluster[1:] if self._cluster.startswith("=") else self._cluster
            self._cluster = None
            return value
        if self._next == len(self._argv):
            if option.arg is Arg.REQUIRED:
                raise PoptError(PoptError.NOARG)
            return None
        if option.arg is Arg.OPTIONAL and self._argv[self._next].startswith("-"):
            return None
        self._next += 1
        return self._argv[self._next - 1]

    def next_leftover(self) -> str | None:
        """poptGetArg()"""
        return self.leftovers.pop(0) if self.leftovers else None
