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
- `running_pid` reports a pid only when a process holds the lock (the kernel says which,
  F_GETLK) and the file names that very process; a file nobody holds a lock on is stale and
  gives None, and one whose pid is not the lock holder's is refused (`NotOurs`): a pid there
  is never believed on its own, so nothing is ever signalled on a file's word. A stale file is
  taken over silently by the next `PidFile.__enter__`; logging that is the caller's business.
- The file is never opened through a symlink, and must be a regular file: whoever planted one
  (they could only in a directory rundir.py would refuse) gets an error, not root's write.
- A `PidFile` removes only the file it wrote: same inode, still holding its pid, and only in the
  process that entered it (not in a forked child running exit handlers).
"""

import contextlib
import errno
import fcntl
import os
import stat
import struct
from types import TracebackType
from typing import Self

from supervisor.errors import SupervisorError

_MAX_CONTENT = 64  # bytes read from a pidfile: a pid and a newline, with room for garbage
_MAX_PID = 2**31 - 1  # pid_t is a C int; anything larger is garbage, not a process
_LOCK_HELD = (errno.EACCES, errno.EAGAIN)  # what lockf(LOCK_NB) reports for a held lock
# struct flock (Linux, 64-bit off_t): l_type, l_whence, l_start, l_len, l_pid, and padding.
_FLOCK = struct.Struct("hhqqi4x")
_OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Readable by its owner only (root, or the supervisor's user: see PidFile.give_to): whoever can
# open it could hold a shared lock on it, which would keep the next start from taking it.
MODE = 0o600


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


class NotOurs(SupervisorError):
    """The pidfile names a process that does not hold its lock: not a supervisor's word."""

    exit_status = os.EX_UNAVAILABLE


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

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now (entered, or adopted)."""
        return self._fd is not None

    def let_go(self) -> None:
        """Release the lock and leave the file as it is, for the supervisor taking over from
        this one (upgrade.py), which locks it and writes its own pid."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def adopt(self, fd: int) -> None:
        """Take the locked descriptor this very process held before it exec'd itself (an
        upgrade in place: record locks survive exec); raise PidFileError if it is not that."""
        try:
            os.set_inheritable(fd, False)
            info = os.fstat(fd)
            holder = _lock_holder(fd, self.path)
        except OSError as exc:
            raise PidFileError(self.path, "take over", exc) from exc
        if holder not in (None, os.getpid()) or _read_pid(fd) != os.getpid():
            raise PidFileError(self.path, "take over", OSError(errno.EBADF, "not our lock"))
        self._fd, self._pid, self._inode = fd, os.getpid(), (info.st_dev, info.st_ino)

    def give_to(self, uid: int, gid: int) -> None:
        """Make the file the user's the supervisor drops to, who can then still use the
        control commands (and whose pid it holds, which they check). Raise OSError."""
        os.fchown(self.fileno(), uid, gid)

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
            fd = _open(self.path, os.O_RDWR | os.O_CREAT, "create")
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


def _open(path: str, flags: int, what: str) -> int:
    """Open the pidfile itself: never through a symlink, and only a regular file (a FIFO
    would not even open without a writer)."""
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, MODE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise PidFileError(path, what, OSError(exc.errno, "it is a symbolic link")) from exc
        raise PidFileError(path, what, exc) from exc
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError as exc:
        os.close(fd)
        raise PidFileError(path, what, exc) from exc
    if not regular:
        os.close(fd)
        raise PidFileError(path, what, OSError(errno.EINVAL, "not a regular file"))
    return fd


def running_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live process that holds the pidfile at `path`, or None if it is stale.

    Never call it in the process that holds the `PidFile` for `path`: opening and closing the
    file there would release that process's lock (POSIX record lock semantics).
    Raises PidFileError if the file exists but cannot be read (permissions, a symlink), and
    NotOurs if it names a pid other than its lock holder's.
    """
    path = os.fspath(path)
    try:
        fd = _open(path, os.O_RDONLY, "read")
    except PidFileError as error:
        if isinstance(error.__cause__, FileNotFoundError | NotADirectoryError):
            return None
        raise
    try:
        holder = _lock_holder(fd, path)
        if holder is None:
            return None
        written = _read_pid(fd)
    finally:
        os.close(fd)
    if holder == 0:  # (the kernel's answer for a holder outside our PID namespace)
        raise NotOurs(f"{path}: its lock is held by a process in another PID namespace")
    if written != holder:
        names = "no pid" if written is None else f"pid {written}"
        raise NotOurs(f"{path}: names {names}, but pid {holder} holds its lock: not believed")
    return holder


def _lock_holder(fd: int, path: str) -> int | None:
    """The pid of the process holding a lock on the file, or None (F_GETLK: nothing is
    locked or changed, and any open descriptor will do)."""
    query = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError as exc:
        raise PidFileError(path, "lock", exc) from exc
    kind, _, _, _, pid = _FLOCK.unpack(answer)
    # A shared lock is nobody's pidfile lock (ours is exclusive): a reader's, stale for us.
    return None if kind in (fcntl.F_UNLCK, fcntl.F_RDLCK) else int(pid)


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
