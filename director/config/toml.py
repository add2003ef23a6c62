"""TOML's notation of keys and values: `value`, what the keepalived
converter writes (director/keepalived/writer.py), and `literal`, a value as
a config error shows it. Values are strings, integers, floats, booleans,
lists and inline tables; the output is TOML 1.0 that tomli reads back to
the same values."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping

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


_PY_STRING = r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""
_PY_KEY_PATH = re.compile(rf"\((?:{_PY_STRING})(?:, (?:{_PY_STRING}))*,?\)")
_PY_STRING_RE = re.compile(_PY_STRING)


def syntax_error(message: str) -> str:
    """tomli's message for a TOMLDecodeError (its `msg`) with the Python
    reprs it holds in TOML's notation: a key path ('a.b', 'c') as "a.b".c,
    a character or key '\\x00' as "\\u0000"."""
    import ast

    def path(match: re.Match[str]) -> str:
        return ".".join(key(part) for part in ast.literal_eval(match.group()))

    def text(match: re.Match[str]) -> str:
        return string(ast.literal_eval(match.group()))

    return _PY_STRING_RE.sub(text, _PY_KEY_PATH.sub(path, message))
