"""Walk parsed TOML with a path, collecting every problem instead of stopping
at the first.

A getter that meets a bad value records `path: message: value` and returns
the default, so one pass reports all the errors of a file. close() reports the
keys nobody asked for, with a suggestion when one is close to a known key.
"""

from __future__ import annotations

import datetime
import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from director.config.toml import literal, string

T = TypeVar("T")

_TYPE_NAMES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
    # TOML's own names: a date-time first (a datetime is a date).
    datetime.datetime: "a date-time",
    datetime.date: "a date",
    datetime.time: "a time",
}


def describe_type(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


# Other names of a choice's values: keepalived's lb_kind (NAT, DR, TUN) and
# ipvsadm's long options (--masquerading, --gatewaying, --ipip) for the
# forwarding method, as an operator coming from them writes them.
_SAME_AS = {
    "nat": "masq",
    "masquerading": "masq",
    "dr": "route",
    "direct": "route",
    "gatewaying": "route",
    "tun": "tunnel",
    "ipip": "tunnel",
}

# Keys by the names keepalived.conf(5) and BIRD's bgp protocol give them,
# as an operator coming from them writes them; suggested where the table
# has the key (difflib finds none of these).
_KEY_SAME_AS = {
    "remote_as": "as",
    "neighbor": "address",
    "lb_algo": "scheduler",
    "lb_kind": "forward",
    "delay_loop": "interval",
    "connect_timeout": "timeout",
    "persistence_timeout": "persistent",
    "sorry": "sorry_server",
    "inhibit_on_failure": "on_failure",
    "retry": "fall",
}


# What an operator reads of a file's errors: at most this many distinct ones
# (a line each, and one for the rest of those alike), then how many more.
SHOWN = 50
# The lines the line for errors alike lists: the first this many, "..." and
# the last.
ALIKE_LINES = 5

_INDEX = re.compile(r"\[(\d+)\]")


class Problems:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self._seen: set[str] = set()  # `errors`, to add each once
        # "virtual_server[17]" -> "10.0.0.1:80 tcp": what each indexed entry
        # is, so that an error names it (index alone, the operator must count
        # [[virtual_server]] tables, as in a converted keepalived.conf).
        self._entries: dict[str, str] = {}
        self._paths: list[str] = []  # each error's path, in `errors`' order
        self._firsts: list[str | None] = []  # and the path its message names

    def name_entry(self, path: str, what: str) -> None:
        """Errors at `path` (an indexed entry, "x[3]") or under it name it:
        "x[3] (what).key"."""
        self._entries[path] = what

    def add(self, path: str, message: str, *value: object, first: str | None = None) -> None:
        """`first`: the path of the entry a duplicate repeats, which
        `message` names as "at {first})": named_errors adds its line there."""
        text = f"{path}: {message}" + "".join(f": {literal(v)}" for v in value)
        if text not in self._seen:
            self._seen.add(text)
            self.errors.append(text)
            self._paths.append(path)
            self._firsts.append(first)

    def named_errors(
        self, line_of: Callable[[str], int | None] | None = None, shown: int = SHOWN
    ) -> list[str]:
        """What an operator reads of `errors`, a line each: the indexed
        entries each is in named after its path and the line `line_of`
        gives for the path (`virtual_server[17].scheduler (10.0.0.1:80 tcp,
        line 204): ...`), a duplicate's first one's line after its path
        (`(first at virtual_server[3], line 52)`); in file order (by line,
        those with none after, as found). One mistake repeated, the same
        message about the same key at other entries, is one error in full
        and one line for the rest (two are two errors): `... and 499 more alike:
        virtual_server[0].real_server[1..499].forward (lines 25, 30, 35,
        40, 45, ..., 2520)`. Past `shown` distinct errors, one line counts
        the rest: `... and 312 more errors not listed (40 distinct)`.
        `errors` keeps the bare paths, each error once, in the parse's
        order."""
        lines = [line_of(path) if line_of is not None else None for path in self._paths]
        order = sorted(range(len(lines)), key=lambda i: (lines[i] is None, lines[i] or 0))
        alike: dict[tuple[str, str], list[int]] = {}
        for i in order:
            path = self._paths[i]
            alike.setdefault((_INDEX.sub("[]", path), self.errors[i][len(path) :]), []).append(i)
        # A pair is two errors in full, in their places: "... and 1 more
        # alike" would be no shorter, and would not name its entry.
        rank = {i: n for n, i in enumerate(order)}
        groups = [g for members in alike.values() for g in _pairs_apart(members)]
        groups.sort(key=lambda group: rank[group[0]])
        named = []
        for i, *more in groups[:shown]:
            path, first = self._paths[i], self._firsts[i]
            text = self._named(path, lines[i]) + self.errors[i][len(path) :]
            line = line_of(first) if first is not None and line_of is not None else None
            if line is not None:
                text = text.replace(f"at {first})", f"at {first}, line {line})", 1)
            named.append(text)
            if more:
                named.append(self._alike(i, more, lines))
        if len(groups) > shown:
            rest = sum(len(group) for group in groups[shown:])
            distinct = len(groups) - shown
            named.append(
                f"... and {rest} more error{'' if rest == 1 else 's'} not listed"
                + (f" ({distinct} distinct)" if distinct != rest else "")
            )
        return named

    def _alike(self, i: int, more: list[int], lines: list[int | None]) -> str:
        """The line for errors alike past the first: their count, their
        path with the indices they have ("virtual_server[0].real_server
        [1..499].forward") and their lines, bounded."""
        parts = _INDEX.split(self._paths[more[0]])
        found_at = {tuple(map(int, _INDEX.findall(self._paths[i]))) for i in more}
        first = tuple(map(int, _INDEX.findall(self._paths[i])))
        paths = _indexed(parts, sorted(found_at), first)
        found = list(dict.fromkeys(line for i in more if (line := lines[i]) is not None))
        if len(found) > ALIKE_LINES + 1:
            found_text = ", ".join(map(str, found[:ALIKE_LINES])) + f", ..., {found[-1]}"
        else:
            found_text = ", ".join(map(str, found))
        where = f" (line{'' if len(found) == 1 else 's'} {found_text})" if found else ""
        return f"... and {len(more)} more alike: {paths}{where}"

    @property
    def paths(self) -> tuple[str, ...]:
        """Each error's path, in `errors`' order."""
        return tuple(self._paths)

    def __len__(self) -> int:
        return len(self.errors)

    def _named(self, path: str, line: int | None) -> str:
        """`path` with the names of the indexed entries it is in, after it,
        and its line: "virtual_server[17] (10.0.0.1:80 tcp, line 204)",
        "virtual_server[3].real_server[1].weight (10.0.0.1:80 tcp,
        10.0.1.1:80, line 60)". After the whole path, so the path stays one
        dotted path to search for."""
        names = []
        if self._entries:
            end = path.find("]")
            while end != -1:
                what = self._entries.get(path[: end + 1])
                if what is not None:
                    names.append(what)
                end = path.find("]", end + 1)
        if line is not None:
            names.append(f"line {line}")
        return f"{path} ({', '.join(names)})" if names else path


def _indexed(parts: list[str], found: list[tuple[int, ...]], first: tuple[int, ...]) -> str:
    """The path whose split by its indices is `parts` (names at even
    places) with the indices `found` (sorted tuples, one index a level),
    alike errors past the one at `first`, so that the count a path reads as
    is the count there is: runs a level where every combination of them is
    in `found` ("virtual_server[0].real_server[1..499]"), or in `found` and
    `first` ("the rest of virtual_server[0..99].real_server[0..99]"), else
    the last level's runs for each of the others
    ("virtual_server[0].real_server[1], virtual_server[2].real_server[0..1]";
    past ALIKE_LINES of them, "..." and the last)."""

    def path(indices: list[list[int]]) -> str:
        text = list(parts)
        for level, values in enumerate(indices):
            text[2 * level + 1] = f"[{_spans(values)}]"
        return "".join(text)

    def levels(of: list[tuple[int, ...]]) -> list[list[int]] | None:
        """Each level's indices, when every combination of them is `of`."""
        each = [sorted({at[level] for at in of}) for level in range(len(parts) // 2)]
        return each if math.prod(map(len, each)) == len(of) else None

    exact = levels(found)
    if exact is not None:
        return path(exact)
    exact = levels([*found, first])
    if exact is not None:
        return f"the rest of {path(exact)}"
    outer: dict[tuple[int, ...], list[int]] = {}
    for each in found:
        outer.setdefault(each[:-1], []).append(each[-1])
    paths = [path([*([i] for i in prefix), last]) for prefix, last in outer.items()]
    if len(paths) > ALIKE_LINES + 1:
        paths = [*paths[:ALIKE_LINES], "...", paths[-1]]
    return ", ".join(paths)


def _spans(indices: list[int]) -> str:
    """Sorted `indices` as runs: "1..499", "0,2..5,9"; past ALIKE_LINES
    runs, "..." and the last index."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = [str(low) if low == high else f"{low}..{high}" for low, high in runs]
    if len(text) > ALIKE_LINES + 1:
        text = [*text[:ALIKE_LINES], "...", str(indices[-1])]
    return ",".join(text)


def entry_name(item: Mapping[str, object]) -> str | None:
    """What names an entry of an array of tables, from its own keys as
    written: "10.0.0.1:80 tcp" (address and protocol), "fwmark 7", or an
    address alone (a real server); None when it has none of them."""
    address, protocol, fwmark = item.get("address"), item.get("protocol"), item.get("fwmark")
    if isinstance(fwmark, int) and not isinstance(fwmark, bool):
        return f"fwmark {fwmark}"
    if not isinstance(address, str):
        return None
    return f"{address} {protocol}" if isinstance(protocol, str) else address


class Table:
    """One TOML table at `path` (a dotted path like virtual_server[0].check)."""

    def __init__(
        self,
        data: Mapping[str, object],
        path: str,
        problems: Problems,
        path_of: Callable[[str], str] | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self._path_of = path_of
        self._read: set[str] = set()

    def where(self, key: str) -> str:
        if self._path_of is not None:
            return self._path_of(key)
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, message: str, *value: object) -> None:
        self.problems.add(self.where(key), message, *value)

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str) -> object | None:
        self._read.add(key)
        return self.data.get(key)

    def _typed(self, key: str, kinds: tuple[type, ...], name: str) -> object | None:
        value = self.raw(key)
        if value is None:
            return None
        # bool is an int in Python, never in TOML
        if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
            self.error(key, f"expected {name}, got {describe_type(value)}", value)
            return None
        return value

    def string(self, key: str) -> str | None:
        value = self._typed(key, (str,), "a string")
        return value if isinstance(value, str) else None

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, (bool,), "a boolean")
        return value if isinstance(value, bool) else default

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self._typed(key, (int,), "an integer")
        if not isinstance(value, int):
            return None
        if not low <= value <= high:
            self.error(key, f"must be between {low} and {high}", value)
            return None
        return value

    def seconds(self, key: str, *, allow_zero: bool = False) -> float | None:
        value = self._typed(key, (int, float), "a number of seconds")
        if not isinstance(value, int | float):
            return None
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            self.error(
                key,
                "must be a finite number " + ("of 0 or more" if allow_zero else "above 0"),
                value,
            )
            return None
        return float(value)

    def choice(self, key: str, choices: Mapping[str, T]) -> T | None:
        value = self.string(key)
        if value is None:
            return None
        if value not in choices:
            alias = _SAME_AS.get(value.lower(), "")
            hint = f" (for {string(value)} write {string(alias)})" if alias in choices else ""
            self.error(key, f"must be one of {', '.join(choices)}{hint}", value)
            return None
        return choices[value]

    def table(self, key: str) -> Table | None:
        value = self._typed(key, (dict,), "a table")
        if not isinstance(value, dict):
            return None
        return Table(value, self.where(key), self.problems)

    def tables(self, key: str) -> list[Table]:
        """An array of tables ([[key]]); each element's path is key[i]."""
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(key, f"expected an array of tables, got {describe_type(value)}", value)
            return []
        result = []
        for i, item in enumerate(value):
            where = f"{self.where(key)}[{i}]"
            if isinstance(item, dict):
                what = entry_name(item)
                if what is not None:
                    self.problems.name_entry(where, what)
                result.append(Table(item, where, self.problems))
            else:
                self.problems.add(where, f"expected a table, got {describe_type(item)}", item)
        return result

    def close(
        self, *, known: tuple[str, ...] = (), elsewhere: Mapping[str, str] | None = None
    ) -> None:
        """Report keys that were never read; `known` adds keys that are valid
        here but were not read (to suggest them, and not report them).
        `elsewhere`: keys valid in another table, by where they go ("a real
        server's key"), suggested when nothing here is closer."""
        allowed = self._read | set(known)
        for key in self.data:
            if key in allowed:
                continue
            alias = _KEY_SAME_AS.get(key)
            close = (
                [alias]
                if alias in allowed
                else difflib.get_close_matches(key, sorted(allowed), n=1)
            )
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if not close and elsewhere:
                there = difflib.get_close_matches(key, sorted(elsewhere), n=1)
                if there:
                    hint = f" ({there[0]!r} is {elsewhere[there[0]]})"
            self.error(key, f"unknown key{hint}")


def _pairs_apart(members: list[int]) -> list[list[int]]:
    """A group of errors alike as Problems.named_errors shows it: two are
    two groups of one."""
    return [[i] for i in members] if len(members) == 2 else [members]
