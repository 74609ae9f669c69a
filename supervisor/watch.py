"""`watch_config`: reload when the configuration file changes, as the kernel reports it (inotify).

How each way of changing the file looks to inotify, and so what is watched:

- written in place (`>`, `cp` onto it, an editor that writes in place): CLOSE_WRITE of its name
  in its directory;
- replaced by a rename (an editor's save, `mv new supervisor.toml`): MOVED_TO in its directory;
- a Kubernetes ConfigMap update: the file is a symlink `NAME -> ..data/NAME`, and the kubelet
  writes a new directory, points `..data_tmp` at it and renames that over `..data`: a MOVED_TO
  of `..data` in the mount's directory, no event on the file's own name;
- a release directory switched (`current -> releases/2`, swapped by `ln -sfn` and `mv -T`): a
  MOVED_TO of `current` in its parent.

So the watches are on directories, never on the file's inode, with the names that matter in
each (`places`): the file's own name in its directory, and every symlink met on the way to it,
in the directory that holds the link. A name that does not exist (a directory removed) is
watched for in the nearest directory that does. After each change the watches are set again,
for where the links lead now. Other names in those directories wake the loop for a moment and
do nothing else.

A change is many events (an editor's save makes five or more): the first arms a timer, which
waits until no event came for DEBOUNCE seconds and the file, if written, is closed again (at
most MAX_WAIT after the first event), then the file is read and its digest compared with the
configuration running; only a different content reloads, through the same atomic reload as
SIGHUP. A rejected file is so logged once by that reload (and kept out: the old configuration
serves on); the same bytes are not tried again, a new change is. A reload refused because the
supervisor is busy (an upgrade) is tried again RETRY seconds later. Between changes the watch
costs one descriptor in the selector and no timer: an idle supervisor does not wake up.
"""

import contextlib
import ctypes
import errno
import logging
import os
import struct
import time
from collections.abc import Callable

from supervisor import config, paths
from supervisor.errors import ConfigError
from supervisor.loop import Loop, Timer

log = logging.getLogger("supervisor")

DEBOUNCE = 0.1  # seconds without an event before the file is read
MAX_WAIT = 0.5  # seconds from the first event at most (a file written for ever still reloads)
RETRY = 1.0  # seconds before a reload refused (the supervisor was busy) is tried again
# <sys/inotify.h>
IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x8, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW, IN_IGNORED, IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
DIRECTORY_EVENTS = (
    IN_MODIFY  # (a write in progress: the file is read once it has stopped)
    | IN_CLOSE_WRITE
    | IN_MOVED_TO
    | IN_MOVED_FROM
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
SELF_EVENTS = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED  # the directory itself went away
LIMITS = {  # what an errno of inotify means for an operator
    errno.ENOSPC: "the limit of inotify watches, sysctl fs.inotify.max_user_watches, is reached",
    errno.EMFILE: "the limit of inotify instances, sysctl fs.inotify.max_user_instances, "
    "is reached",
}

Event = tuple[int, int, str]  # watch descriptor, mask, name


def digest(path: str) -> str:
    """What the file at `path` holds now, as a digest; or the reason it cannot be read (which
    a reload would report too)."""
    try:
        return config.content_digest(config.read_bytes(path))
    except ConfigError as exc:
        return f"unreadable: {exc}"


def places(path: str) -> dict[str, set[str]]:
    """Directory -> the names in it that matter for `path`: each symlink met on the way to the
    file (paths.walk), the file's own name, or the first name on the way that does not exist."""
    found: dict[str, set[str]] = {}
    with contextlib.suppress(OSError):  # (a loop of links, a file on the way: it ends there)
        for step in paths.walk(os.path.abspath(path)):
            if step.is_link or step.info is None or not step.rest:
                found.setdefault(step.directory, set()).add(step.name)
    return found


def _reason(exc: OSError) -> str:
    return LIMITS.get(exc.errno or 0, exc.strerror or str(exc))


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

    def read(self) -> list[Event]:
        """Every event queued."""
        events: list[Event] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                wd, mask, _, length = self._EVENT.unpack_from(data, offset)
                offset += self._EVENT.size
                name = data[offset : offset + length].split(b"\0", 1)[0]
                offset += length
                events.append((wd, mask, os.fsdecode(name)))

    def close(self) -> None:
        os.close(self.fd)


class ConfigWatch:
    """Calls `on_change` when the file at `path` holds something else than `loaded` (the
    digest of the configuration running: the caller says `reloaded`) and than what was
    tried last. `on_change` returns False when the reload was refused (not tried)."""

    def __init__(self, loop: Loop, path: str, loaded: str, on_change: Callable[[], bool]) -> None:
        self.loop = loop
        self.path = os.path.abspath(path)
        self.loaded = loaded
        self._rejected = ""  # of the last content tried that did not load (until it does)
        self.on_change = on_change
        self._inotify: Inotify | None = None
        self._names: dict[int, set[str]] = {}  # watch descriptor -> the names that matter
        self._timer: Timer | None = None
        self._first = self._last = 0.0  # monotonic times of this change's events
        self._writing = False  # the file was written and not closed since: wait (MAX_WAIT)
        self._unwatchable: set[str] = set()  # directories already reported as such

    def start(self) -> None:
        """Watch (or say, once, why not); catch up with a change made since the load."""
        try:
            self._inotify = Inotify()
        except OSError as exc:
            log.warning(
                "watch_config: cannot watch %s (%s); reload it with SIGHUP", self.path, _reason(exc)
            )
            return
        self.loop.add_reader(self._inotify, self._on_events)
        self._watch()
        if self._names:
            log.info("watch_config: reloading when %s changes", self.path)
        self._catch_up()

    @property
    def pending(self) -> bool:
        """Whether a change is being waited on (the timer is set)."""
        return self._timer is not None

    def reloaded(self, loaded: str) -> None:
        """The configuration running now is `loaded` (a reload, by SIGHUP or by the watch)."""
        self.loaded = loaded
        if self._inotify is not None:
            self._watch()  # (a directory that could not be watched may be back)

    def _catch_up(self) -> None:
        """Look at the file soon if it is not what was loaded (changed before the watch was
        set; once it is, a change has its events)."""
        if self._timer is None and digest(self.path) not in (self.loaded, self._rejected):
            self._first = self._last = time.monotonic()
            self._timer = self.loop.call_later(DEBOUNCE, self._settled)

    def _watch(self) -> None:
        """Watch the directories the path goes through now, and no other."""
        assert self._inotify is not None  # noqa: S101 (started)
        wanted: dict[int, set[str]] = {}
        for directory, names in places(self.path).items():
            try:
                wd = self._inotify.add_watch(directory, DIRECTORY_EVENTS)
            except OSError as exc:
                if directory not in self._unwatchable:
                    self._unwatchable.add(directory)
                    log.warning(
                        "watch_config: cannot watch %s for %s (%s)",
                        directory,
                        self.path,
                        _reason(exc),
                    )
                continue
            wanted.setdefault(wd, set()).update(names)
            self._unwatchable.discard(directory)
        for wd in self._names.keys() - wanted.keys():
            with contextlib.suppress(OSError):  # (gone with its directory already)
                self._inotify.rm_watch(wd)
        self._names = wanted

    def _matters(self, event: Event) -> bool:
        wd, mask, name = event
        if mask & IN_Q_OVERFLOW:
            return True  # (events were lost: look)
        names = self._names.get(wd)
        return names is not None and (bool(mask & SELF_EVENTS) or name in names)

    def _on_events(self) -> None:
        assert self._inotify is not None  # noqa: S101 (a reader only while started)
        events = [event for event in self._inotify.read() if self._matters(event)]
        if not events:
            return
        for _, mask, _ in events:  # (a write in progress: written, not yet closed)
            if mask & (IN_MODIFY | IN_CLOSE_WRITE):
                self._writing = bool(mask & IN_MODIFY)
        now = time.monotonic()
        self._last = now
        if self._timer is None:
            self._first = now
            self._timer = self.loop.call_later(DEBOUNCE, self._settled)

    def _settled(self) -> None:
        """Once no event came for DEBOUNCE, and the file is not open for writing (or MAX_WAIT
        after the first event, whatever happens): look at the file."""
        now = time.monotonic()
        quiet_at = self._first + MAX_WAIT if self._writing else self._last + DEBOUNCE
        if now < quiet_at and now < self._first + MAX_WAIT:
            self._timer = self.loop.call_later(
                min(quiet_at, self._first + MAX_WAIT) - now, self._settled
            )
            return
        self._timer = None
        self._writing = False
        self._watch()  # (where the links lead now)
        content = digest(self.path)
        if content in (self.loaded, self._rejected):
            log.debug(
                "watch_config: %s holds the %s content: nothing to do",
                self.path,
                "loaded" if content == self.loaded else "rejected",
            )
            return
        log.info("watch_config: %s changed; reloading", self.path)
        if self.on_change():
            if content != self.loaded:  # (reloaded() says what loaded)
                self._rejected = content  # tried once: not again
        else:
            self._first = self._last = time.monotonic()
            self._timer = self.loop.call_later(RETRY, self._settled)

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
