"""Logging: one event per line on stderr, which is the log file when one is configured.

With `log_file`, the file is opened in append mode and put in place of file descriptors 1 and 2,
so the supervisor's own lines, handler output and anything a child prints all land in it.
`reopen()` does that again for logrotate (SIGUSR1): the rotated file is closed, a new one opened.

When stderr is systemd's journal (sd-daemon(3): `JOURNAL_STREAM` names the device and inode of
the stream, and they are stderr's), each line starts with its syslog priority instead, `<3>`
for an error, and carries no timestamp and no `supervisor[pid]` tag: the journal adds both.

With `log_format = "json"`, each record is one JSON object on one line (`JsonFormatter`: a
traceback is a field, not more lines), prefixed with its priority when stderr is the journal
(journald strips it: the message it stores is the object). A line about a server carries its
name as `server`, one about a request the client's address as `client`: the supervisor's own
calls pass them with `extra=about(...)`, and `RequestFields` adds those of the request being
handled (handling.REQUEST) to any other line, a handler's own included.
"""

from __future__ import annotations  # (no typing module at run time: see below)

import json
import logging
import os
import sys
import threading
import time
from collections import Counter

# The fork server loads this file for its children's logging (forkserver.py), and `typing` is a
# megabyte of that small process: types only for the type checker.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from contextvars import ContextVar
    from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s supervisor[%(process)d]: %(message)s"

_handler: logging.Handler | None = None  # ours, on the root logger (see setup)
_json = False  # log_format = "json" (see set_format)


def setup(
    level: str,
    log_file: str | None = None,
    log_format: str = "text",
    request: ContextVar[Any] | None = None,
) -> None:
    """Log at `level` in `log_format` to stderr, after pointing stdout and stderr at `log_file`
    if given. `request`: the request being handled (handling.REQUEST), for RequestFields."""
    global _handler  # noqa: PLW0603 (one per process)
    if log_file is not None:
        reopen(log_file)
    root = logging.getLogger()
    if not root.handlers:
        _handler = logging.StreamHandler(sys.stderr)
        if request is not None:
            _handler.addFilter(RequestFields(request))
        root.addHandler(_handler)
    set_format(log_format)
    set_level(level)


def about(server: str, client: Any = None) -> dict[str, Any]:
    """The `extra` of a line about a server (and a request's client): fields of a JSON line.
    A client is its address as the socket gave it (see client_text)."""
    return {"server": server} if client is None else {"server": server, "client": client}


def client_text(address: Any) -> str:
    """A client's address as a string: `host:port`, `[v6 host]:port`, a unix socket's path
    (empty for an unnamed one, as most clients of unix sockets are)."""
    if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str):
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if isinstance(address, bytes):  # (a unix socket in the abstract namespace: a NUL first)
        return address.decode(errors="backslashreplace")
    return str(address)


class RequestFields(logging.Filter):
    """Gives a record without `server` (or `client`) those of the request being handled in
    this thread or process, if any: `request` holds (server name, client address), set by the
    request path (handling.handle) in every mode. A handler's own lines get them this way."""

    def __init__(self, request: ContextVar[Any]) -> None:
        super().__init__()
        self.request = request

    def filter(self, record: logging.LogRecord) -> bool:
        current = self.request.get()
        if current is not None:
            if not hasattr(record, "server"):
                record.server = current[0]
            if not hasattr(record, "client"):
                record.client = current[1]
        return True


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


# LogRecord's own attributes: not extra fields of a JSON line.
_RECORD_KEYS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_FIELDS = frozenset({"time", "level", "logger", "message", "pid", "server", "client"})


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: `time` (RFC 3339, UTC, milliseconds), `level`
    (lowercase, as log_level), `logger`, `message`, `pid` (the process that logged), `server`
    and `client` when the record has them, `exc_info` (the traceback, as text) and
    `stack_info` when there are, then the record's other extra attributes. ASCII only:
    anything else, NUL and line separators included, is a \\u escape. `journal`: each line
    starts with the record's syslog priority, as JournalFormatter's."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        try:
            line = json.dumps(fields, ensure_ascii=True, allow_nan=False, default=_jsonable)
        except (TypeError, ValueError, RecursionError):  # an extra field JSON cannot take
            # (a tuple key, a cycle, NaN, a structure too deep): its text instead
            text = {
                key: value if key in _FIELDS else _jsonable(value) for key, value in fields.items()
            }
            line = json.dumps(text, ensure_ascii=True, allow_nan=False)
        return f"<{priority(record.levelno)}>{line}" if self.journal else line

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        """The object of one line (format serialises it)."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields: dict[str, Any] = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _message(record),
            "pid": record.process,
        }
        server = getattr(record, "server", None)
        if server is not None:
            fields["server"] = str(server)
        client = getattr(record, "client", None)
        if client is not None:
            fields["client"] = client_text(client)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # (cached, as Formatter)
        if record.exc_text:
            fields["exc_info"] = record.exc_text
        if record.stack_info:
            fields["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_KEYS and key not in fields and not key.startswith("_"):
                fields[key] = value
        return fields


def _message(record: logging.LogRecord) -> str:
    """The record's message; one that cannot be formatted (wrong % arguments) still makes a
    JSON line, that says so, instead of logging's multi-line report of the error."""
    try:
        record.message = record.getMessage()
    except Exception as exc:  # (any error of the caller's arguments)
        return f"{record.msg!r} % {_jsonable(record.args)} ({type(exc).__name__}: {exc})"
    return record.message


def _jsonable(value: object) -> str:
    """An extra field's value that JSON has no type for, as text."""
    try:
        return str(value)
    except Exception:  # (a broken __str__ must not lose the line)
        return f"<{type(value).__name__} object>"


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


def error_line(text: str) -> str:
    """A command's one-line error for stderr: with the journal's error priority when stderr is
    the journal (`systemctl reload` runs `supervisor reload` there, as ExecReload=)."""
    return f"<3>{text}" if to_journal() else text


def journal_pid() -> int:
    """The supervisor's pid when its lines go to the journal (for the fork server's), else 0."""
    formatter = None if _handler is None else _handler.formatter
    if isinstance(formatter, JsonFormatter) and formatter.journal:
        return os.getpid()
    return formatter.main_pid if isinstance(formatter, JournalFormatter) else 0


def formatter(log_json: bool, journal_pid: int) -> logging.Formatter:
    """The formatter for the format asked (`log_json`) and for what stderr is: the journal (its
    pid: the supervisor's, `journal_pid`) or not (0). JSON when asked, the journal's or not:
    the priority prefix keeps `journalctl -p` working, and the journal's message is the object."""
    if log_json:
        return JsonFormatter(journal=bool(journal_pid))
    return JournalFormatter(journal_pid) if journal_pid else logging.Formatter(LOG_FORMAT)


def set_format(log_format: str) -> None:
    """Log in `log_format` ("text" or "json") from now on (at start, and at a reload)."""
    global _json  # noqa: PLW0603 (one per process)
    _json = log_format == "json"
    _use_format()
    python_output_logged(_json)


def python_output_logged(enabled: bool) -> None:
    """What Python itself prints on stderr goes through logging (as one JSON line) when
    `enabled`, else is printed as Python does: a warning (two lines of text), an exception
    escaping a thread that a handler started."""
    logging.captureWarnings(enabled)
    threading.excepthook = _log_thread_exception if enabled else threading.__excepthook__


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    """threading.excepthook in JSON mode: the exception as one line, error level."""
    if args.exc_type is SystemExit:
        return  # (as the default hook: a thread's sys.exit() is not an error)
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("supervisor").error(
        "exception in %s, which ended",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
    )


def log_json() -> bool:
    """Whether the format is JSON (for the fork server's setup)."""
    return _json


def _use_format() -> None:
    """The formatter for the format configured and for what stderr is now."""
    if _handler is not None:
        journal = to_journal()
        if not _fits(_handler.formatter, journal):
            _handler.setFormatter(formatter(_json, os.getpid() if journal else 0))


def _fits(current: logging.Formatter | None, journal: bool) -> bool:
    """Whether the formatter in place is the one for the format and for the journal or not
    (kept then: a JournalFormatter keeps the supervisor's pid)."""
    if isinstance(current, JsonFormatter):
        return _json and current.journal == journal
    if isinstance(current, JournalFormatter):
        return not _json and journal
    return current is not None and not _json and not journal


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
