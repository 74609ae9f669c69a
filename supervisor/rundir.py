"""The directory of the pidfile and the control socket: nobody but trusted users may change it.

Whoever can write that directory can put a symlink where the pidfile goes (a root supervisor
would then truncate the file it points at) or swap in a pidfile and a control socket of their
own (root's `supervisor stop` would then signal a process they chose, and `reload` print what
they like). So before the supervisor creates anything there, and before a control command
believes anything it finds there, the directory is checked:

- it, and every directory above it, belongs to root or to a trusted user;
- it is writable by no one else: not by others, not by a group other than root's (gid 0, the
  convention of container platforms that run an image as an arbitrary uid in group 0);
- a directory above it may be writable by others only if it is sticky (/tmp): they cannot
  rename or remove what belongs to someone else there, though they could have created the
  directory below first, which the owner check then refuses.

Trusted users: root, the user running the check, and `[supervisor] user`; and the directory's
owner when a trusted user made it for them (its parent is a trusted user's, which nobody else
may write, sticky or not; a user's own home is not root's gift): root that made
/run/supervisor for a user, as systemd's RuntimeDirectory= or a container image does, vouches
for that user (an image run as an arbitrary uid in group 0 finds it owned by the image's
user). Such an owner could still remove or replace files there, which costs a start or a
command (a symlink is refused, a pid not believed unless its process holds the pidfile's lock
and the control socket), never root's writes or signals.

Paths are resolved first, and a symlink on the way must be a trusted user's, in a directory
nobody else may write (sticky or not): anyone else could point it at a directory of theirs.
The checks then apply to the real directories, and callers use the resolved path.
"""

import contextlib
import errno
import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import dataclass, replace

from supervisor import config, paths
from supervisor.errors import ConfigError, SupervisorError
from supervisor.pidfile import PidFileError


class UnsafeDirectory(SupervisorError):
    """Someone other than the trusted users could change the directory: refused."""

    exit_status = os.EX_NOPERM


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


def _writable_by_others(info: os.stat_result) -> bool:
    """Writable by someone other than its owner and root (and root's group)."""
    return bool(info.st_mode & stat.S_IWOTH) or bool(
        info.st_mode & stat.S_IWGRP and info.st_gid != 0
    )


@dataclass(frozen=True)
class Checked:
    """A directory found safe: its real path, and the users trusted there (the given ones,
    root, and its owner when root made it for them)."""

    path: str
    trusted: frozenset[int]


def check(directory: str, trusted: Collection[int], delegate: bool = True) -> Checked:
    """`directory` once checked (see the module docstring; not `delegate`: its owner must be
    trusted itself); raise UnsafeDirectory naming what is wrong, OSError if it cannot be
    examined."""
    trusted = {0, *trusted}
    real = _resolve(os.path.abspath(directory), trusted)
    info = os.stat(real)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{real}: not a directory")
    vouched = _check_parents(real, os.path.dirname(real), trusted, info.st_uid)
    if info.st_uid not in trusted and not (delegate and vouched):
        raise UnsafeDirectory(
            f"{real}: belongs to {_user(info.st_uid)}, not to root or the supervisor's user"
        )
    if _writable_by_others(info):
        raise UnsafeDirectory(
            f"{real}: writable by other users (mode {stat.S_IMODE(info.st_mode):04o})"
        )
    return Checked(real, frozenset({*trusted, info.st_uid}))


def _resolve(path: str, trusted: set[int]) -> str:
    """`path` with its symlinks resolved (realpath), refusing a symlink on the way that an
    untrusted user owns or could replace: it could point anywhere tomorrow."""
    real = "/"
    try:
        for step in paths.walk(path):
            if step.info is None:
                return os.path.join(step.path, *step.rest)  # (nothing further to resolve)
            if step.is_link:
                _check_link(step, trusted)
            else:
                real = step.path
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise UnsafeDirectory(str(exc.strerror)) from exc
    return real


def _check_link(step: paths.Step, trusted: set[int]) -> None:
    """Refuse a symlink that an untrusted user owns, or that others can replace."""
    assert step.info is not None  # noqa: S101 (a link exists)
    holder = os.stat(step.directory)
    if step.info.st_uid not in trusted or (
        _writable_by_others(holder) and not holder.st_mode & stat.S_ISVTX
    ):
        owner = step.info.st_uid
        raise UnsafeDirectory(
            f"the symlink {step.path} could be pointed elsewhere by "
            f"{_user(owner) if owner not in trusted else 'other users'}"
        )


def _check_parents(real: str, parent: str, trusted: set[int], owner: int) -> bool:
    """Check `parent` and every directory above it for `real`, whose owner is `owner`: each
    belongs to a trusted user or `owner`, and is writable by nobody else unless it is sticky.
    Whether a trusted user made `real` for `owner`: its parent is a trusted user's, which
    nobody else may write (sticky or not)."""
    vouched: bool | None = None
    while True:
        above = os.stat(parent)
        if above.st_uid not in trusted and above.st_uid != owner:
            raise UnsafeDirectory(
                f"{real}: {parent} belongs to {_user(above.st_uid)}, who could replace it"
            )
        writable = _writable_by_others(above)
        if writable and not above.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(f"{real}: {parent} is writable by other users")
        if vouched is None:
            vouched = above.st_uid in trusted and not writable
        if parent == "/":
            return vouched
        parent = os.path.dirname(parent)


def prepare(directory: str, trusted: Collection[int], create: bool = True) -> str:
    """`check`'s real path, after creating the directory (mode 0755, whatever the umask) if it
    is missing: what exists of its parents is checked first, so that nothing is created where
    someone else could meddle. Without `create`, a missing directory is only checked that
    far (`supervisor check`)."""
    real = _resolve(os.path.abspath(directory), {0, *trusted})
    existing = real
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing != real:
        _check_parents(real, existing, {0, *trusted}, os.geteuid())
        if not create:
            return real
        umask = os.umask(0o022)  # (makedirs gives the directories it adds above 0o777 & ~umask)
        try:
            os.makedirs(real, mode=0o755, exist_ok=True)
        finally:
            os.umask(umask)
    return check(real, trusted).path


def trusted_users(supervisor_uid: int | None) -> set[int]:
    """Root, this process's user, and the configured [supervisor] user."""
    users = {0, os.geteuid()}
    if supervisor_uid is not None:
        users.add(supervisor_uid)
    return users


def secure_pidfile(loaded: config.Config, create: bool = True) -> config.SupervisorConfig:
    """The [supervisor] settings with the pidfile in its real directory (symlinks resolved),
    once that directory is known to be one only trusted users can change (rundir.py),
    created if missing (unless not `create`); raise UnsafeDirectory or PidFileError."""
    settings = loaded.supervisor
    if settings.pidfile is None:
        return settings
    where = f"{loaded.source}: supervisor.pidfile"
    credentials = settings.credentials
    trusted = trusted_users(None if credentials is None else credentials.uid)
    directory, name = os.path.split(settings.pidfile)
    try:
        real = prepare(directory, trusted, create)
    except UnsafeDirectory as exc:
        raise UnsafeDirectory(f"{where}: {exc}") from exc
    except OSError as exc:
        raise PidFileError(settings.pidfile, "create the directory of", exc) from exc
    pidfile = os.path.join(real, name)
    _check_files(loaded, pidfile)
    return replace(settings, pidfile=pidfile)


def _check_files(loaded: config.Config, pidfile: str) -> None:
    """What the file's own check (config.py, on the paths as written) cannot see: the pidfile
    already there as something else, and a log file that is the pidfile or the control
    socket through a symlink (opening the pidfile twice drops its lock)."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(pidfile)
        if not stat.S_ISREG(info.st_mode):
            raise PidFileError(pidfile, "use", OSError(errno.EINVAL, "not a regular file"))
    log_file = loaded.supervisor.log_file
    if log_file is None:
        return
    real_log = os.path.realpath(log_file)
    control = config.control_socket_for(pidfile)
    for what, path in (("supervisor.pidfile", pidfile), ("the control socket", control)):
        if real_log == os.path.realpath(path):
            raise ConfigError(
                loaded.source, "supervisor.log_file", f"{log_file} is also {what}, through a link"
            )
