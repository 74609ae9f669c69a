"""`watch_config`: reload when the configuration file changes, as the kernel reports it (inotify).

How each way of changing the file looks to inotify, and so what is watched:

- written in place (`>`, `cp` onto it, an editor that writes in place): CLOSE_WRITE of its name
  in its directory;
- replaced by a rename (an editor's save, `mv new supervisor.toml`): MOVED_TO in its directory;
- a Kubernetes ConfigMap update: the file is a symlink `NAME -> ..data/NAME`, and the kubelet
  writes a new directory, points `..data_tmp` at it and renames that over `..data`: a MOVED_TO
  of `..data` in the mount's directory, no event on the file's own name.

So the watches are on directories, never on the file's inode: the directory of the path as
given, and of every link on the way to the real file (a symlink into another directory: there
the file is written or renamed). After each change they are set again, for where the links
lead now. Every event in those directories counts (a ConfigMap's mount holds nothing else).

A change is many events (an editor's save makes five or more): the first arms a timer, which
waits until no event came for DEBOUNCE seconds (at most MAX_WAIT after the first), then the
file is read and its digest compared with the configuration loaded last; only a different
content reloads, through the same atomic reload as SIGHUP. A rejected file is so logged once
by that reload (and kept out: the old configuration serves on); the same bytes are not tried
again, a new change is. Between changes the watch costs one descriptor in the selector and no
timer: an idle supervisor does not wake up.
"""

import contextlib
import ctypes
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator

from supervisor import config
from supervisor.errors import ConfigError
from supervisor.loop import Loop, Timer

log = logging.getLogger("supervisor")

DEBOUNCE = 0.1  # seconds without an event before the file is read
MAX_WAIT = 0.5  # seconds from the first event at most (a file written for ever still reloads)
MAX_LINKS = 40  # symlinks followed at most (as the kernel's own limit: ELOOP)
# <sys/inotify.h>: what is watched in each directory.
IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_ONLYDIR = 0x400, 0x800, 0x01000000
DIRECTORY_EVENTS = (
    IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)


def digest(path: str) -> str:
    """What the file at `path` holds now, as a digest; or the reason it cannot be read (which
    a reload would report too)."""
    try:
        return config.content_digest(config.read_bytes(path))
    except ConfigError as exc:
        return f"unreadable: {exc}"


def directories(path: str) -> Iterator[str]:
    """The directories to watch for `path`: its own, and that of each symlink's target on the
    way to the real file (relative targets are relative to the link's directory)."""
    for _ in range(MAX_LINKS):
        yield os.path.dirname(path) or "."
        try:
            target = os.readlink(path)
        except OSError:  # not a link (or gone): this is the end of the way
            break
        path = os.path.join(os.path.dirname(path), target)
    yield os.path.dirname(os.path.realpath(path))


class Inotify:
    """An inotify instance (inotify(7)), through libc: close-on-exec and non-blocking.

    Hand-written (README, "Dependencies"): the Python bindings (inotify_simple and others)
    find libc with ctypes.util.find_library, which runs `ldconfig -p` in a child process: a
    fork from the supervisor, and a child exit to reap. The process's own libc has the three
    functions already."""

    _EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (the name follows)

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._call(self._libc.inotify_init1, os.O_CLOEXEC | os.O_NONBLOCK)

    def _call(self, function: Callable[..., int], *args: object) -> int:
        result = function(*args)
        if result < 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))
        return result

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        return self._call(self._libc.inotify_add_watch, self.fd, os.fsencode(path), mask)

    def rm_watch(self, wd: int) -> None:
        self._call(self._libc.inotify_rm_watch, self.fd, wd)

    def read(self) -> int:
        """Read every event queued; return how many there were."""
        count = 0
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return count
            offset = 0
            while offset < len(data):
                *_, length = self._EVENT.unpack_from(data, offset)
                offset += self._EVENT.size + length
                count += 1

    def close(self) -> None:
        os.close(self.fd)


class ConfigWatch:
    """Calls `on_change` when the file at `path` holds something else than `loaded` (the
    digest of the configuration running, kept up to date by the caller) and than what was
    tried last."""

    def __init__(self, loop: Loop, path: str, loaded: str, on_change: Callable[[], object]) -> None:
        self.loop = loop
        self.path = os.path.abspath(path)
        self.loaded = loaded  # the digest of the configuration running
        self._rejected = ""  # of the last content tried that did not load (until it does)
        self.on_change = on_change
        self._inotify: Inotify | None = None
        self._watches: dict[int, str] = {}  # watch descriptor -> directory
        self._timer: Timer | None = None
        self._first = self._last = 0.0  # monotonic times of this change's events
        self._unwatchable: set[str] = set()  # directories already reported as such

    def start(self) -> bool:
        """Watch; False (and a warning, once) if the kernel refuses even that."""
        try:
            self._inotify = Inotify()
        except OSError as exc:
            log.warning(
                "watch_config: cannot watch %s (%s); reload it with SIGHUP",
                self.path,
                exc.strerror or exc,
            )
            return False
        self.loop.add_reader(self._inotify, self._on_events)
        self._watch()
        return bool(self._watches)

    def _watch(self) -> None:
        """Watch the directories the path goes through now, and no other."""
        assert self._inotify is not None  # noqa: S101 (started)
        wanted: dict[int, str] = {}
        for directory in dict.fromkeys(directories(self.path)):
            try:
                wanted[self._inotify.add_watch(directory, DIRECTORY_EVENTS)] = directory
            except OSError as exc:
                if directory not in self._unwatchable:
                    self._unwatchable.add(directory)
                    log.warning(
                        "watch_config: cannot watch %s for %s (%s)",
                        directory,
                        self.path,
                        exc.strerror or exc,
                    )
        for wd in self._watches.keys() - wanted.keys():
            with contextlib.suppress(OSError):  # (gone with its directory already)
                self._inotify.rm_watch(wd)
        self._watches = wanted

    def _on_events(self) -> None:
        assert self._inotify is not None  # noqa: S101 (a reader only while started)
        if not self._inotify.read():
            return
        now = time.monotonic()
        self._last = now
        if self._timer is None:
            self._first = now
            self._timer = self.loop.call_later(DEBOUNCE, self._settled)

    def _settled(self) -> None:
        """DEBOUNCE after the first event: wait on while events come (up to MAX_WAIT), then
        look at the file."""
        now = time.monotonic()
        quiet_at = self._last + DEBOUNCE
        if now < quiet_at and now < self._first + MAX_WAIT:
            self._timer = self.loop.call_later(
                min(quiet_at, self._first + MAX_WAIT) - now, self._settled
            )
            return
        self._timer = None
        self._watch()  # (where the links lead now)
        content = digest(self.path)
        if content in (self.loaded, self._rejected):
            log.debug(
                "watch_config: %s holds the %s content: nothing to do",
                self.path,
                "loaded" if content == self.loaded else "rejected",
            )
            return
        self._rejected = content  # unless the reload says otherwise (loaded): tried once
        log.info("watch_config: %s changed; reloading", self.path)
        self.on_change()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inotify is not None:
            self.loop.remove_reader(self._inotify)
            self._inotify.close()
            self._inotify = None

    def close_in_child(self) -> None:
        """In a forked child: the descriptor is the supervisor's (the loop is gone already)."""
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
