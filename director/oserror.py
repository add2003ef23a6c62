"""A failed system call in words, for messages that name the file or peer
themselves."""

from __future__ import annotations


def strerror(error: OSError) -> str:
    """The system's words for `error` ("Is a directory", from strerror(3)),
    without Python's "[Errno 21]" prefix and quoted paths; `str(error)` when
    it has none (an OSError raised with a message of its own)."""
    return error.strerror or str(error)
