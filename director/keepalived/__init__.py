"""keepalived.conf's IPVS side into director's TOML config
(`directorctl import-keepalived`).

    conversion = import_keepalived("/etc/keepalived/keepalived.conf")
    conversion.text    # director.toml, commented where a setting changed meaning
    conversion.notes   # every such place: Note(where=Location(file, line), text)

Raises KeepalivedSyntaxError (file, line, message) for a file that cannot be
read as keepalived's grammar. Pure but for the Loader, which reads files.
"""

from __future__ import annotations

from dataclasses import dataclass

from director.keepalived.convert import convert
from director.keepalived.lexer import KeepalivedSyntaxError, Location
from director.keepalived.model import Note, Notes, Reader
from director.keepalived.parse import FileLoader, Loader, parse
from director.keepalived.writer import render

__all__ = [
    "Conversion",
    "FileLoader",
    "KeepalivedSyntaxError",
    "Loader",
    "Location",
    "Note",
    "import_keepalived",
]


@dataclass(frozen=True)
class Conversion:
    text: str  # director.toml
    notes: tuple[Note, ...]  # in file order
    files: tuple[str, ...]  # the files read: the main one, then the included ones


def import_keepalived(path: str, loader: Loader | None = None) -> Conversion:
    """Convert keepalived.conf at `path` (and its includes, read through
    `loader`, the file system by default)."""
    document = parse(path, loader or FileLoader())
    notes = Notes()
    for skipped in document.skipped:
        notes.add(skipped.where, f"include {skipped.pattern}: no file matches it")
    config = Reader(notes).read(document.nodes)
    text = render(convert(config, notes, path))
    order = {name: i for i, name in enumerate(document.files)}
    ordered = sorted(
        dict.fromkeys(notes.items), key=lambda n: (order.get(n.where.file, 0), n.where.line)
    )
    return Conversion(text, tuple(ordered), document.files)
