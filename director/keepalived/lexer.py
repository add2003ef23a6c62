"""keepalived.conf text into lines of words, braces and include directives.

The rules are keepalived 2.2.7's (lib/parser.c): a comment starts at `#` or
`!` outside double quotes and runs to the end of the line (`\\#` and `\\!` are
the characters themselves); a `\\` at the end of a line joins the next one; a
line whose first word is `include` (or `includer`, `includem`, `includew`,
`includeb`, `includea`) names files to read in its place (`check_include`);
every `{` and `}` outside double quotes is a token of its own, so that
`url { path / }` is the three lines `url`, `{`, `path /` and `}`
(`read_line`); words are separated by blanks, and a word that starts with `"`
runs to the next `"`, without the quotes and without escapes
(`alloc_strvec_r`). Parameter substitution (`$NAME`), sequences (`~SEQ`) and
conditional lines (`@id`) are not supported: they raise KeepalivedSyntaxError.
"""

from __future__ import annotations

from dataclasses import dataclass

BLANKS = " \t\r\f\v"
_INCLUDES = ("include", "includer", "includem", "includew", "includeb", "includea")


class KeepalivedSyntaxError(Exception):
    """keepalived.conf cannot be read: `file`, 1-based `line` and what is wrong."""

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file = file
        self.line = line
        self.message = message
        super().__init__(f"{file}:{line}: {message}" if line else f"{file}: {message}")


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Words:
    """One statement: its words, and its text as written (for the keywords
    that re-read it with quotes and escapes, as misc_path does)."""

    words: tuple[str, ...]
    text: str
    where: Location


@dataclass(frozen=True)
class Brace:
    char: str  # "{" or "}"
    where: Location


@dataclass(frozen=True)
class Include:
    pattern: str
    where: Location


Item = Words | Brace | Include


def lex(text: str, file: str) -> list[Item]:
    """The items of one file's text, in order; raises KeepalivedSyntaxError
    for an unmatched quote or an unsupported construct."""
    items: list[Item] = []
    for number, line in _logical_lines(text, file):
        where = Location(file, number)
        stripped = line.strip(BLANKS)
        if not stripped:
            continue
        first = stripped.split(None, 1)[0]
        if first in _INCLUDES:
            pattern = stripped[len(first) :].strip(BLANKS)
            if not pattern:
                raise KeepalivedSyntaxError(file, number, f"{first} without a file name")
            items.append(Include(pattern, where))
            continue
        if stripped[0] in "$~@":
            raise KeepalivedSyntaxError(
                file,
                number,
                "parameter substitution, sequences and conditional configuration "
                f"({stripped[0]}...) are not supported by the importer",
            )
        items.extend(_split_braces(stripped, where))
    return items


def _logical_lines(text: str, file: str) -> list[tuple[int, str]]:
    """(line number, text without its comment), continuation lines joined
    onto the line where they start."""
    result: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line, continued = _decomment(raw, file, number)
        pending = (number, line) if pending is None else (pending[0], pending[1] + line)
        if not continued:
            result.append(pending)
            pending = None
    if pending is not None:
        result.append(pending)
    return result


def _decomment(line: str, file: str, number: int) -> tuple[str, bool]:
    """The line up to its comment, and whether it ends with a continuation
    backslash (keepalived's `decomment`)."""
    out: list[str] = []
    quote = False
    i = 0
    while i < len(line):
        c = line[i]
        if c == '"':
            quote = not quote
        elif c == "\\":
            if i + 1 == len(line):
                return "".join(out), True
            if not quote and line[i + 1] in "#!":
                out.append(line[i + 1])
                i += 2
                continue
            out.append(line[i : i + 2])
            i += 2
            continue
        elif not quote and c in "#!":
            break
        out.append(c)
        i += 1
    if quote:
        raise KeepalivedSyntaxError(file, number, "unterminated quote")
    return "".join(out), False


def _split_braces(line: str, where: Location) -> list[Item]:
    items: list[Item] = []
    start = 0
    quote = False
    for i, c in enumerate(line):
        if c == '"':
            quote = not quote
        elif not quote and c in "{}":
            _add_words(items, line[start:i], where)
            items.append(Brace(c, where))
            start = i + 1
    _add_words(items, line[start:], where)
    return items


def _add_words(items: list[Item], text: str, where: Location) -> None:
    text = text.strip(BLANKS)
    if text:
        items.append(Words(split_words(text, where), text, where))


def split_words(text: str, where: Location) -> tuple[str, ...]:
    """keepalived's alloc_strvec_r: blank-separated words; a word starting
    with `"` is everything up to the next `"`."""
    words: list[str] = []
    i = 0
    while True:
        while i < len(text) and text[i] in BLANKS:
            i += 1
        if i == len(text):
            return tuple(words)
        if text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise KeepalivedSyntaxError(where.file, where.line, "unmatched quote")
            words.append(text[i + 1 : end])
            i = end + 1
            continue
        end = i
        while end < len(text) and text[end] not in BLANKS and text[end] != '"':
            end += 1
        words.append(text[i:end])
        i = end


_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_ESCAPES["v"] = "\v"


def quoted_escaped_words(text: str, where: Location) -> tuple[str, ...]:
    """keepalived's alloc_strvec_quoted_escaped (lib/parser.c), which script
    keywords such as misc_path use: words separated by blanks, with `"..."`
    and `'...'` quoting and shell-like backslash escapes (`\\n`, `\\x41`,
    `\\101`, `\\cC`, and `\\C` for any other C)."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in BLANKS:
            i += 1
        if i == n:
            return tuple(words)
        word: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\":
                i += 1
                if i == n:
                    raise KeepalivedSyntaxError(where.file, where.line, "escape at end of line")
                i = _escape(text, i, word)
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
                i += 1
            elif c in "\"'":
                quote = c
                i += 1
            elif c in BLANKS:
                break
            else:
                word.append(c)
                i += 1
        if quote:
            raise KeepalivedSyntaxError(where.file, where.line, f"missing terminating {quote}")
        words.append("".join(word))


def _escape(text: str, i: int, word: list[str]) -> int:
    """Append the character escaped at text[i] (after the backslash); the
    index after the escape."""
    c = text[i]
    hexdigits = "0123456789abcdefABCDEF"
    if c == "x" and i + 1 < len(text) and text[i + 1] in hexdigits:
        j = i + 1
        value = 0
        while j < len(text) and text[j] in hexdigits:
            value = (value << 4 | int(text[j], 16)) & 0xFF  # a C char keeps the low byte
            j += 1
        word.append(chr(value))
        return j
    if c == "c" and i + 1 < len(text):
        word.append(chr(ord(text[i + 1]) & 0x1F))
        return i + 2
    if "0" <= c <= "7":
        j, value = i, 0
        while j < len(text) and j < i + 3 and "0" <= text[j] <= "7":
            value = value * 8 + int(text[j])
            j += 1
        word.append(chr(value & 0xFF))
        return j
    word.append(_ESCAPES.get(c, c))
    return i + 1
