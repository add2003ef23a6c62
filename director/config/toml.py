"""TOML text: a small writer for director's config (the keepalived
converter's output), tables of keys with comments between them (which no
TOML library in reach writes: tomli_w writes no comments), and `literal`,
a value as a config error shows it. Values are strings, integers, floats,
booleans, lists and inline tables; the output is TOML 1.0 that tomli reads
back to the same values."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass
class Table:
    """`header` is 'ipvs' for [ipvs], '[virtual_server]' for [[virtual_server]],
    None for the top of the document."""

    header: str | None
    entries: list[tuple[str, object] | Comment] = field(default_factory=list)

    def set(self, key: str, value: object) -> None:
        self.entries.append((key, value))

    def comment(self, text: str) -> None:
        self.entries.append(Comment(text))


def render(tables: Sequence[Table]) -> str:
    """The document's text, tables separated by a blank line."""
    blocks = []
    for table in tables:
        lines: list[str] = []
        pending: list[str] = []
        for entry in table.entries:
            if isinstance(entry, Comment):
                pending.extend(_comment_lines(entry.text))
            else:
                lines.extend(pending)
                pending = []
                lines.append(f"{key(entry[0])} = {value(entry[1])}")
        if table.header is not None:
            # comments before the first key go above the header: they are the table's
            first_key = next(
                (i for i, line in enumerate(lines) if not line.startswith("#")), len(lines)
            )
            lines = [*lines[:first_key], f"[{table.header}]", *lines[first_key:]]
        lines.extend(pending)
        if lines:
            blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def _comment_lines(text: str) -> list[str]:
    return [f"# {line}".rstrip() for line in text.splitlines() or [""]]


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else string(name)


def string(text: str) -> str:
    """A TOML basic string; control characters as \\uXXXX."""
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04X}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def value(item: object) -> str:
    """A TOML value. Raises TypeError or ValueError for what TOML cannot hold here
    (the converter writes no infinity, NaN or date)."""
    return _value(item, strict=True)


def literal(item: object) -> str:
    """`item` as it is written in TOML (`"rr"`, `true`, `inf`,
    `1979-05-27T07:32:00`, `[1, "a"]`), for what a config error shows of a
    value tomli read: the operator's own notation, not Python's (`'rr'`,
    `True`). Anything else tomli cannot return: its repr."""
    try:
        return _value(item, strict=False)
    except TypeError:
        return repr(item)


def _value(item: object, *, strict: bool) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, float):
        if math.isfinite(item):
            return repr(item)
        if strict:
            raise ValueError(f"not a finite number: {item}")
        return "nan" if math.isnan(item) else ("inf" if item > 0 else "-inf")
    if isinstance(item, str):
        return string(item)
    if isinstance(item, Mapping):
        inner = ", ".join(f"{key(str(k))} = {_value(v, strict=strict)}" for k, v in item.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(item, list | tuple):
        return "[" + ", ".join(_value(v, strict=strict) for v in item) + "]"
    if not strict and isinstance(item, datetime.date | datetime.time):
        return item.isoformat()
    raise TypeError(f"cannot write {type(item).__name__} as TOML")
