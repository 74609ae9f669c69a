"""Logging: one event per line on stderr, which is the log file when one is configured.

With `log_file`, the file is opened in append mode and put in place of file descriptors 1 and 2,
so the supervisor's own lines, handler output and anything a child prints all land in it.
`reopen()` does that again for logrotate (SIGUSR1): the rotated file is closed, a new one opened.

When stderr is systemd's journal (sd-daemon(3): `JOURNAL_STREAM` names the device and inode of
the stream, and they are stderr's), each line starts with its syslog priority instead, `<3>`
for an error, and carries no timestamp and no `supervisor[pid]` tag: the journal adds both.
"""

import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Hashable

LOG_FORMAT = "%(asctime)s %(levelname)s supervisor[%(process)d]: %(message)s"

_handler: logging.Handler | None = None  # ours, on the root logger (see setup)


def setup(level: str, log_file: str | None = None) -> None:
    """Log at `level` to stderr, after pointing stdout and stderr at `log_file` if given."""
    global _handler  # noqa: PLW0603 (one per process)
    if log_file is not None:
        reopen(log_file)
    root = logging.getLogger()
    if not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        root.addHandler(_handler)
        _use_format()
    set_level(level)


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 3 (err) for ERROR, 6 (info) for INFO..."""
    for floor, value in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4)):
        if levelno >= floor:
            return value
    return 6 if levelno >= logging.INFO else 7


class JournalFormatter(logging.Formatter):
    """Lines for the journal: every line of a record (a traceback's too) prefixed with the
    record's priority; a line logged by another process than the supervisor (`main_pid`),
    a child or a worker, says its pid (the journal names the supervisor's)."""

    def __init__(self, main_pid: int) -> None:
        super().__init__("%(message)s")
        self.main_pid = main_pid

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.process != self.main_pid:
            text = f"pid {record.process}: {text}"
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def to_journal() -> bool:
    """Whether stderr is the journal's stream (JOURNAL_STREAM is `DEVICE:INODE` of it)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(2)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


def journal_pid() -> int:
    """The supervisor's pid when its lines go to the journal (for the fork server's), else 0."""
    formatter = None if _handler is None else _handler.formatter
    return formatter.main_pid if isinstance(formatter, JournalFormatter) else 0


def _use_format() -> None:
    """The journal's format or the text one, for what stderr is now."""
    if _handler is not None:
        journal = to_journal()
        formatter = _handler.formatter
        if formatter is None or journal != isinstance(formatter, JournalFormatter):
            _handler.setFormatter(
                JournalFormatter(os.getpid()) if journal else logging.Formatter(LOG_FORMAT)
            )


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
    _use_format()  # (a file now: timestamps)


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
