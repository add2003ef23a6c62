"""How ipvsadm fails on bad input: the exact text and exit status."""

from __future__ import annotations


class ParseError(Exception):
    """ipvsadm refused its command line.

    `message` is exactly what ipvsadm writes to stderr (with its newline),
    `status` its exit status. `fatal` is False only for option-parser (popt)
    errors, after which `ipvsadm -R` goes on with the next line instead of
    exiting.
    """

    def __init__(self, message: str, status: int = 2, *, fatal: bool = True) -> None:
        self.message = message
        self.status = status
        self.fatal = fatal
        super().__init__(message.rstrip("\n"))


def fail(text: str) -> ParseError:
    """ipvsadm's fail(2, ...): the text and a newline, exit status 2."""
    return ParseError(text + "\n", 2)


def try_help(program: str) -> ParseError:
    """ipvsadm's tryhelp_exit(argv[0], -1)."""
    return ParseError(f"Try `{program} -h' or '{program} --help' for more information.\n", 255)
