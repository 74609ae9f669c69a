"""The pidfile: one running supervisor per file, and finding it again from another process.

`PidFile` is the context manager given to python-daemon's `DaemonContext(pidfile=...)` (or
entered directly in the foreground); `running_pid(path)` is what `supervisor reload|stop|status`
use to find the running instance.

Invariants:

- While a `PidFile` is entered, its process holds a POSIX record lock (`fcntl.lockf`) on the
  file at `path` (the same inode, checked after locking) and the file holds that process's pid.
  The lock, not the file's existence or content, is what says an instance is running: the
  kernel releases it when the process dies, however it dies.
- POSIX record locks belong to a process and are not inherited by `fork()`: a forked request
  handler never keeps an instance "alive", even though it inherits the descriptor (see
  `PidFile.fileno`). Its flip side: a process drops all its locks on a file as soon as it closes
  *any* descriptor for that file, so the process that holds a `PidFile` must never open the
  same path otherwise (not even through `running_pid`), and enters one `PidFile` per path.
- `running_pid` reports a pid only when another process holds the lock and the kernel knows the
  pid written in the file alive; every other state (missing, empty, garbage, a dead pid, or a
  pid now used by an unrelated process: nobody holds the lock) is stale and gives None. A stale
  file is taken over silently by the next `PidFile.__enter__`; logging that is the caller's
  business.
- A `PidFile` removes only the file it wrote: same inode, still holding its pid, and only in the
  process that entered it (not in a forked child running exit handlers).
"""

import contextlib
import errno
import fcntl
import os
from types import TracebackType
from typing import Self

from supervisor.errors import SupervisorError

_MAX_CONTENT = 64  # bytes read from a pidfile: a pid and a newline, with room for garbage
_MAX_PID = 2**31 - 1  # pid_t is a C int; anything larger is garbage, not a process
_LOCK_HELD = (errno.EACCES, errno.EAGAIN)  # what lockf(LOCK_NB) reports for a held lock


class AlreadyRunning(SupervisorError):
    """Another process holds the pidfile's lock: `<path>: supervisor already running as pid N`."""

    exit_status = os.EX_UNAVAILABLE

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        if pid is None:
            super().__init__(f"{path}: another process holds the lock")
        else:
            super().__init__(f"{path}: supervisor already running as pid {pid}")


class PidFileError(SupervisorError):
    """The pidfile cannot be created or read: `<path>: cannot ... the pidfile (<reason>)`."""

    exit_status = os.EX_OSERR

    def __init__(self, path: str, what: str, exc: OSError) -> None:
        self.path = path
        super().__init__(f"{path}: cannot {what} the pidfile ({exc.strerror or exc})")


class PidFile:
    """The lock and pid of the running supervisor, held from `__enter__` to `__exit__`.

    Made for `DaemonContext(pidfile=PidFile(path))`, which enters it after forking and
    detaching, so the pid written is the daemon's own. A relative `path` is made absolute at
    construction, since DaemonContext changes directory to `/` before entering it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(path)
        self._fd: int | None = None
        self._pid = 0  # the pid written, which is the process that holds the lock
        self._inode = (0, 0)  # (st_dev, st_ino) of the file written

    def __enter__(self) -> Self:
        """Lock the file (taking over a stale one) and write our pid into it.

        Raises AlreadyRunning if another process holds the lock, PidFileError on an OS error.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: pidfile already entered")
        self._make_directory()
        fd = self._open_locked()
        try:
            pid = os.getpid()
            _write_pid(fd, pid)
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise PidFileError(self.path, "write", exc) from exc
        self._fd, self._pid, self._inode = fd, pid, (info.st_dev, info.st_ino)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove the file if it is still ours, then close it, which releases the lock.

        In a forked child (a process other than the one that entered), do nothing: it holds no
        lock, and the descriptor it inherited is the caller's to close (see `fileno`).
        """
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return
        try:
            self._remove_if_ours(fd)
        finally:
            os.close(fd)

    def fileno(self) -> int:
        """The descriptor of the locked file, while entered.

        It is close-on-exec, but a forked child inherits it; the child does not inherit the
        lock, so keeping the descriptor is harmless, but a child that lives long (a request
        handler) should `os.close(pidfile.fileno())` to keep the file's inode from being
        pinned. A child must not call `__exit__` (it would do nothing anyway).
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: pidfile not entered")
        return self._fd

    def _make_directory(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        except OSError as exc:
            raise PidFileError(self.path, "create the directory of", exc) from exc

    def _open_locked(self) -> int:
        """Open and lock the file that is at `path` once locked (it may be replaced meanwhile)."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise PidFileError(self.path, "create", exc) from exc
            try:
                self._lock(fd)
                if _is_at(fd, self.path):
                    return fd
            except OSError as exc:
                os.close(fd)
                raise PidFileError(self.path, "check", exc) from exc
            except BaseException:
                os.close(fd)
                raise
            # The holder we waited for removed the file as we opened it: lock the new one.
            os.close(fd)

    def _lock(self, fd: int) -> None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in _LOCK_HELD:
                raise AlreadyRunning(self.path, _read_pid(fd)) from None
            raise PidFileError(self.path, "lock", exc) from exc

    def _remove_if_ours(self, fd: int) -> None:
        """Unlink the file if it is the one we wrote and still holds our pid.

        An error is ignored: the lock goes with the descriptor, and a stale file left behind is
        taken over by the next start.
        """
        with contextlib.suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode and _read_pid(fd) == self._pid:
                os.unlink(self.path)


def running_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live process that holds the pidfile at `path`, or None if it is stale.

    Never call it in the process that holds the `PidFile` for `path`: opening and closing the
    file there would release that process's lock (POSIX record lock semantics).
    Raises PidFileError if the file exists but cannot be read (permissions).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise PidFileError(os.fspath(path), "read", exc) from exc
    try:
        if not _is_locked(fd, os.fspath(path)):
            return None
        pid = _read_pid(fd)
        if pid is None:
            return None
        # The lock is held, so its owner is alive: trust it over timestamps, which a stepped
        # wall clock (NTP at boot) can make disagree with the process's start time.
        return pid if _exists(pid) else None
    finally:
        os.close(fd)


def _exists(pid: int) -> bool:
    """Whether a process `pid` exists (signal 0: checked, not sent). Not psutil: this runs in
    `supervisor run`, whose resident size every forked child pays for."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def _is_locked(fd: int, path: str) -> bool:
    """Whether another process holds a lock on the file (tested with a shared lock, dropped)."""
    try:
        # A shared lock needs only read access, so an unprivileged `status` can test a root
        # daemon's 0644 pidfile; it conflicts with the holder's exclusive lock all the same.
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in _LOCK_HELD:
            return True
        raise PidFileError(path, "lock", exc) from exc
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return False


def _read_pid(fd: int) -> int | None:
    """The pid in the file (ASCII digits and a newline), or None if it holds anything else."""
    try:
        text = os.pread(fd, _MAX_CONTENT, 0).strip()
    except OSError:
        return None
    if not text.isdigit() or len(text) > 10:
        return None
    pid = int(text)
    return pid if 0 < pid <= _MAX_PID else None


def _write_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    data = f"{pid}\n".encode()
    if os.pwrite(fd, data, 0) != len(data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _is_at(fd: int, path: str) -> bool:
    """Whether the open file `fd` is still the file at `path` (not removed or replaced)."""
    try:
        at_path = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)
