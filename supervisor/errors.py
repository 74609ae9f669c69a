"""User-facing errors, each one line, each carrying the sysexits status it ends the process with.

Every error a user can cause (a bad file, a port in use) is raised as a `SupervisorError`; the
command line prints `str(error)` on stderr and exits with `error.exit_status`, never a traceback.

Invariant: an error's text is one line of at most `MAX_LINE` characters, whatever it quotes (a
value from a file, an exception raised by a handler module): `one_line` collapses line breaks
and shortens the middle, `shown` quotes a value briefly, `describe` states an exception even
when its own `__str__` raises.
"""

import os
import reprlib

MAX_LINE = 300  # characters of one error line
MAX_VALUE = 60  # characters of a value quoted in one
ELLIPSIS = "..."
_LARGEST_SHOWN = 10**40  # integers beyond are described by their size: str() may refuse them


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """`text` on one line (runs of whitespace and control characters become one space) of at
    most `limit` characters: a longer one keeps its start, which names where, and its end,
    which often holds the reason, around an ellipsis."""
    if len(text) > 4 * limit:  # (a message of megabytes is not flattened whole)
        text = f"{text[: 2 * limit]}{ELLIPSIS}{text[-limit:]}"
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    if len(flat) <= limit:
        return flat
    keep = limit - len(ELLIPSIS)
    head = keep * 2 // 3
    return f"{flat[:head]}{ELLIPSIS}{flat[len(flat) - (keep - head) :]}"


class _Brief(reprlib.Repr):
    """reprlib's bounded repr, with integers too large for str() described by their size."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxstring = MAX_VALUE
        self.maxother = MAX_VALUE
        self.maxlist = self.maxtuple = self.maxdict = 4

    def repr_int(self, x: int, level: int) -> str:
        return integer(x)


_BRIEF = _Brief()


def integer(value: int) -> str:
    """An integer in decimal, or its size when it is too long to be worth showing (or to
    convert at all: Python refuses more than 4,300 digits)."""
    if -_LARGEST_SHOWN < value < _LARGEST_SHOWN:
        return str(value)
    return f"an integer of {value.bit_length()} bits"


def shown(value: object) -> str:
    """A value as Python would write it (strings quoted), shortened: for error messages."""
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, int):
        return integer(value)
    if isinstance(value, float):
        return repr(value)
    try:
        return _BRIEF.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def message(exc: BaseException) -> str:
    """An exception's message on one bounded line, even when its `__str__` raises or returns
    something odd (a hostile handler module may raise anything)."""
    try:
        text = str(exc)
    except BaseException:
        text = "<its message cannot be shown>"
    if not isinstance(text, str):
        text = "<its message cannot be shown>"
    return one_line(text)


def describe(exc: BaseException) -> str:
    """`TypeName: message` for an exception, on one line short enough to quote in another
    (see `message`)."""
    text = message(exc)
    name = type(exc).__name__
    return one_line(f"{name}: {text}" if text else name, MAX_LINE // 2)


class SupervisorError(Exception):
    """An error reported to the user as one line, ending the process with `exit_status`."""

    exit_status = os.EX_SOFTWARE

    def __init__(self, message: str = "") -> None:
        super().__init__(one_line(message))


class UsageError(SupervisorError):
    """The command line itself is wrong."""

    exit_status = os.EX_USAGE


class ConfigError(SupervisorError):
    """The configuration is wrong: `<file>: <table.key>: <what>`."""

    exit_status = os.EX_CONFIG

    def __init__(self, source: str, where: str, what: str) -> None:
        self.source = source
        self.where = where
        self.what = what
        super().__init__(f"{source}: {where}: {what}" if where else f"{source}: {what}")


class BindError(SupervisorError):
    """A server's address cannot be bound (in use, permission): `servers.NAME: ...`."""

    exit_status = os.EX_OSERR


class LogFileError(SupervisorError):
    """The log file cannot be opened."""

    exit_status = os.EX_CANTCREAT
