"""A path walked name by name as the kernel resolves it: `walk` yields each name met (symlinks
followed, a relative target from the link's own directory; `.` and `..` taken), so that a caller
can judge each link on the way (rundir.py: who could point it elsewhere) or note where each one
lives (watch.py: where a swap would show)."""

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

MAX_LINKS = 40  # symlinks followed at most, as Linux's own path resolution (ELOOP)


@dataclass(frozen=True)
class Step:
    """One name on the way: `directory` (resolved) holds `name`."""

    directory: str
    name: str
    info: os.stat_result | None  # its lstat; None: it does not exist (the walk ends there)
    rest: tuple[str, ...]  # the names still to resolve after it (before a link's target)

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.name)

    @property
    def is_link(self) -> bool:
        return self.info is not None and stat.S_ISLNK(self.info.st_mode)


def walk(path: str) -> Iterator[Step]:
    """Each name on the way to the absolute `path`, in order; a name that does not exist is the
    last. Raises OSError: ELOOP past MAX_LINKS symlinks, or what lstat raised (not ENOENT)."""
    parts = path.split("/")[::-1]  # the names, the next one last
    current, links = "/", 0
    while parts:
        name = parts.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        step = Step(current, name, _lstat(os.path.join(current, name)), tuple(parts[::-1]))
        yield step
        if step.info is None:
            return
        if not step.is_link:
            current = step.path
            continue
        links += 1
        if links > MAX_LINKS:
            raise OSError(errno.ELOOP, f"{path}: too many levels of symbolic links")
        target = os.readlink(step.path)
        if target.startswith("/"):
            current = "/"
        parts.extend(target.split("/")[::-1])


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
