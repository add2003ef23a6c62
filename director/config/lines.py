"""Where things are in a TOML text: the line of each table header, key and
element of a multi-line array, by the path a config error gives
("virtual_server[3].real_server[1].weight"), so that an error names the
line of what is wrong (an operator with a 30,000-line file goes there at
once).

tomli stays the parser: this reads only the lines that open a statement
(a `[table]` or `[[array]]` header, or a `key = ` line) and asks tomli
where a value that may go on over several lines ends (an array, a
multi-line string, an inline table) and how many elements each line of a
multi-line array holds. A statement it cannot read ends the search
(there should be none in a text tomli took): what comes after it gets
no line rather than a wrong one. Run only when there are errors to name,
never on a good file's parse.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import tomli

_KEY = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_DOTTED = rf"{_KEY}(?:[ \t]*\.[ \t]*{_KEY})*"
_PART = re.compile(_KEY)
_HEADER = re.compile(rf"[ \t]*(\[\[?)[ \t]*({_DOTTED})[ \t]*(\]\]?)[ \t]*(?:#.*)?")
_KEY_LINE = re.compile(rf"[ \t]*({_DOTTED})[ \t]*=[ \t]*")
_BARE_KEY_LINE = re.compile(r"[ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*")
# What a value must hold to go on past its line.
_OPENS = re.compile(r"[\[{]|\"{3}|'{3}")
_CLOSES = ("]", "}", '"""', "'''")


def key_lines(text: str) -> Callable[[str], int | None]:
    """The line (from 1) of a path in valid TOML `text`: its own (a key's,
    a header's, a multi-line array's element's), else that of the nearest
    thing it is in that has one (a key of an inline table: the line the
    table is on; a key missing from a table: the table's header), else
    None."""
    found = _find(text)

    def line_of(path: str) -> int | None:
        while True:
            line = found.get(path)
            if line is not None:
                return line
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]

    return line_of


def _find(text: str) -> dict[str, int]:
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    found: dict[str, int] = {}
    entries: dict[str, int] = {}  # an array of tables' path -> its entries so far
    table = ""
    at = 0  # index of the line to read next
    while at < len(lines):
        line = lines[at]
        at += 1
        first = line.lstrip(" \t")[:1]
        if not first or first == "#":
            continue
        if first == "[":
            header = _HEADER.fullmatch(line)
            if header is None:
                return found
            path = ""
            for part in _parts(header[2]):
                if path in entries:  # in the array's last entry
                    path = f"{path}[{entries[path] - 1}]"
                path = f"{path}.{part}" if path else part
                found.setdefault(path, at)  # [[bgp.peer]] with no [bgp]: bgp's
            if header[1] == "[[":
                count = entries.get(path, 0)
                entries[path] = count + 1
                path = f"{path}[{count}]"
            found[path] = at
            table = path
            continue
        key = _BARE_KEY_LINE.match(line)  # most lines: faster than the general one
        if key is not None:
            path = f"{table}.{key[1]}" if table else key[1]
        else:
            key = _KEY_LINE.match(line)
            if key is None:
                return found  # nothing after this is known for sure
            path = table
            for part in _parts(key[1]):
                path = f"{path}.{part}" if path else part
                found.setdefault(path, at)  # a dotted key's tables: their first key's line
        found[path] = at
        value = line[key.end() :]
        if value[:1] in ("[", "{"):
            at = _items_end(lines, at, value, path, found)
        elif _OPENS.search(value):
            at = _value_end(lines, at, value)
    return found


def _parts(dotted: str) -> list[str]:
    """The keys of a dotted key, unquoted (by tomli, if escaped)."""
    return [_unquoted(part) if part[0] in "\"'" else part for part in _PART.findall(dotted)]


def _unquoted(key: str) -> str:
    if "\\" not in key or key[0] == "'":
        return key[1:-1]
    return next(iter(tomli.loads(key + "=0")))


def _value(text: str) -> object:
    """tomli's value of `x=` + text, or _NONE when that is not TOML."""
    try:
        return tomli.loads("x=" + text)["x"]
    except tomli.TOMLDecodeError:
        return _NONE


_NONE = object()


def _value_end(lines: list[str], at: int, value: str) -> int:
    """The index of the line after the value that opens with `value` (the
    end of line `at`, from 1): where tomli reads it whole, tried again only
    after a line that could close it."""
    while at < len(lines) and _value(value) is _NONE:
        while True:
            value += "\n" + lines[at]
            at += 1
            if at >= len(lines) or any(mark in lines[at - 1] for mark in _CLOSES):
                break
    return at


def _items_end(lines: list[str], at: int, value: str, path: str, found: dict[str, int]) -> int:
    """The index of the line after the array or inline table that `value`
    opens (the end of line `at`, from 1), and into `found` the line each
    of its elements or keys begins on: tomli reads the lines so far with
    the array or table closed after them, to tell which they hold. (Of
    items on the line an item over several lines begins on, that line.)"""
    opening, closing = value[0], "]" if value[0] == "[" else "}"
    rest = value[1:]
    index = 0
    start = at  # the line `rest` begins on
    while True:
        whole = _value(opening + rest)
        done = whole if whole is not _NONE else _value(f"{opening}{rest}\n{closing}")
        if isinstance(done, list):
            for i in range(index, index + len(done)):
                found.setdefault(f"{path}[{i}]", start)
            index += len(done)
        elif isinstance(done, dict):
            for key in done:
                found.setdefault(f"{path}.{key}", start)
        if done is not _NONE:
            if whole is not _NONE or at >= len(lines):
                return at
            rest, start = lines[at], at + 1
        elif at >= len(lines):
            return at
        else:
            rest += "\n" + lines[at]  # an item goes on
        at += 1
