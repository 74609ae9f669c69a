"""User-facing errors, each one line, each carrying the sysexits status it ends the process with.

Every error a user can cause (a bad file, a port in use) is raised as a `SupervisorError`; the
command line prints `str(error)` on stderr and exits with `error.exit_status`, never a traceback.
"""

import os


class SupervisorError(Exception):
    """An error reported to the user as one line, ending the process with `exit_status`."""

    exit_status = os.EX_SOFTWARE


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
