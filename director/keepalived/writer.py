"""A small TOML writer for director's config (the keepalived converter's
output): tables of keys, with comments between them (which no TOML library
in reach writes: tomli_w writes no comments). Keys and values are written
in TOML's notation by director/config/toml.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from director.config.toml import key, value


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
