"""keepalived.conf, with its includes, into a tree of statements.

Sans-IO: the files are read through a Loader (read a file, list the files a
glob pattern names), so that tests give text and the command line gives the
file system (FileLoader). Includes are spliced in where they stand, as
keepalived reads them (lib/parser.c `check_include`, `open_glob_file`): the
pattern is relative to the directory of the file that includes it, may hold
wildcards and csh-style braces (`{a,b}`), and its files are read in sorted
order.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from director.keepalived.lexer import (
    Brace,
    Include,
    Item,
    KeepalivedSyntaxError,
    Location,
    Words,
    lex,
)

MAX_INCLUDE_DEPTH = 32  # an include cycle is an error long before this


@dataclass(frozen=True)
class Node:
    """A statement, with the statements of its `{ }` block if it has one."""

    words: tuple[str, ...]
    text: str
    where: Location
    block: tuple[Node, ...] | None = None

    @property
    def keyword(self) -> str:
        return self.words[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.words[1:]

    def children(self) -> tuple[Node, ...]:
        return self.block or ()


@dataclass(frozen=True)
class Skipped:
    """An include that named no file (keepalived's plain `include` says
    nothing of it; the importer reports it)."""

    pattern: str
    where: Location


class Loader(Protocol):
    def read(self, path: str) -> str:
        """The text of the file; raises OSError or UnicodeDecodeError."""

    def glob(self, pattern: str) -> list[str]:
        """The existing files the pattern names, sorted."""


class FileLoader:
    """Files from the file system (blocking)."""

    def read(self, path: str) -> str:
        with open(path, encoding="utf-8") as f:
            return f.read()

    def glob(self, pattern: str) -> list[str]:
        found: set[str] = set()
        for expanded in expand_braces(pattern):
            found.update(p for p in glob.glob(expanded) if os.path.isfile(p))
        return sorted(found)


@dataclass(frozen=True)
class Document:
    nodes: tuple[Node, ...]
    files: tuple[str, ...]  # the main file, then every included one, in reading order
    skipped: tuple[Skipped, ...]


def parse(path: str, loader: Loader) -> Document:
    """The statements of keepalived.conf at `path` and what it includes.
    Raises KeepalivedSyntaxError (naming file and line) for text that
    cannot be read as keepalived's grammar, an unreadable file, or an
    include cycle."""
    files: list[str] = []
    skipped: list[Skipped] = []
    items = list(_items(path, loader, None, (), files, skipped))
    return Document(_tree(items, path), tuple(files), tuple(skipped))


def _items(
    path: str,
    loader: Loader,
    included_at: Location | None,
    stack: tuple[str, ...],
    files: list[str],
    skipped: list[Skipped],
) -> Iterator[Item]:
    where = included_at or Location(path, 0)
    if len(stack) >= MAX_INCLUDE_DEPTH or os.path.normpath(path) in stack:
        raise KeepalivedSyntaxError(where.file, where.line, f"include cycle through {path}")
    try:
        text = loader.read(path)
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        if included_at is None:
            raise KeepalivedSyntaxError(path, 0, f"cannot read: {reason}") from e
        raise KeepalivedSyntaxError(where.file, where.line, f"cannot read {path}: {reason}") from e
    files.append(path)
    inner = (*stack, os.path.normpath(path))
    for item in lex(text, path):
        if not isinstance(item, Include):
            yield item
            continue
        pattern = item.pattern
        if not os.path.isabs(pattern):
            pattern = os.path.join(os.path.dirname(path), pattern)
        names = loader.glob(pattern)
        if not names:
            skipped.append(Skipped(item.pattern, item.where))
        for name in names:
            yield from _items(name, loader, item.where, inner, files, skipped)


def _tree(items: Sequence[Item], main: str) -> tuple[Node, ...]:
    # Each level: the statements so far, and the statement whose block it is.
    levels: list[tuple[list[Node], Words | None, Location | None]] = [([], None, None)]
    last_words: Words | None = None  # the statement a '{' opens, if it came just before
    for item in items:
        if isinstance(item, Words):
            levels[-1][0].append(Node(item.words, item.text, item.where))
            last_words = item
        elif isinstance(item, Brace) and item.char == "{":
            if last_words is None:
                raise KeepalivedSyntaxError(
                    item.where.file, item.where.line, "'{' without a keyword before it"
                )
            levels[-1][0].pop()
            levels.append(([], last_words, item.where))
            last_words = None
        elif isinstance(item, Brace):
            if len(levels) == 1:
                raise KeepalivedSyntaxError(item.where.file, item.where.line, "extra '}'")
            nodes, opener, _ = levels.pop()
            assert opener is not None
            levels[-1][0].append(Node(opener.words, opener.text, opener.where, tuple(nodes)))
            last_words = None
    if len(levels) > 1:
        opener = levels[-1][1]
        assert opener is not None
        raise KeepalivedSyntaxError(
            opener.where.file,
            opener.where.line,
            f"'{opener.words[0]}' block has no closing '}}' (end of {main})",
        )
    return tuple(levels[0][0])


def expand_braces(pattern: str) -> list[str]:
    """csh-style brace expansion, as glob(3)'s GLOB_BRACE does:
    'a{b,c{d,e}}f' -> ['abf', 'acdf', 'acef']; a '{' without its '}' is literal."""
    depth = 0
    start = -1
    for i, c in enumerate(pattern):
        if c == "{":
            if depth == 0:
                start = i
            depth += 1
        elif c == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                head, body, tail = pattern[:start], pattern[start + 1 : i], pattern[i + 1 :]
                return [
                    head + choice + rest
                    for alternative in _top_level_split(body)
                    for choice in expand_braces(alternative)
                    for rest in expand_braces(tail)
                ]
    return [pattern]


def _top_level_split(body: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, c in enumerate(body):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return parts
