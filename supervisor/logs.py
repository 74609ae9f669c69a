"""Logging: one event per line on stderr, which is the log file when one is configured.

With `log_file`, the file is opened in append mode and put in place of file descriptors 1 and 2,
so the supervisor's own lines, handler output and anything a child prints all land in it.
`reopen()` does that again for logrotate (SIGUSR1): the rotated file is closed, a new one opened.
"""

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable

LOG_FORMAT = "%(asctime)s %(levelname)s supervisor[%(process)d]: %(message)s"


def setup(level: str, log_file: str | None = None) -> None:
    """Log at `level` to stderr, after pointing stdout and stderr at `log_file` if given."""
    if log_file is not None:
        reopen(log_file)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())


def open_log(log_file: str) -> int:
    """Open `log_file` for appending (created 0640, with its directory); raise OSError."""
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    return os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def redirect(fd: int) -> None:
    """Make the open file `fd` the process's stdout and stderr, and close `fd`."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def reopen(log_file: str) -> None:
    """Open `log_file` afresh and make it stdout and stderr; raise OSError."""
    redirect(open_log(log_file))


def reopen_for(reason: str, log_file: str | None) -> bool:
    """Reopen `log_file` (for logrotate's SIGUSR1, or a new log_file); True if it was, else
    the log says why (and goes on to the previous file)."""
    log = logging.getLogger("supervisor")
    if log_file is None:
        log.info("%s: no log_file configured, nothing to reopen", reason)
        return False
    try:
        reopen(log_file)
    except OSError as exc:
        log.error(
            "%s: cannot open %s (%s); still logging to the previous file",
            reason,
            log_file,
            exc.strerror or exc,
        )
        return False
    log.info("%s: reopened %s", reason, log_file)
    return True


class Throttle:
    """At most one log line per key (a place, a server and reason) every `every` seconds, and a
    count of the lines left out: a flood of one event must not become a flood of lines."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self.clock = clock
        self._next: dict[Hashable, float] = {}
        self._quiet: Counter[Hashable] = Counter()

    def __call__(self, key: Hashable) -> int | None:
        """None: leave this line out (it is counted); else log it, with the number of lines
        left out since the last one."""
        now = self.clock()
        if now < self._next.get(key, 0.0):
            self._quiet[key] += 1
            return None
        self._next[key] = now + self.every
        return self._quiet.pop(key, 0)


def since(left_out: int) -> str:
    """The end of a throttled line: how many like it were left out."""
    return f"; {left_out} more since the last such line" if left_out else ""
