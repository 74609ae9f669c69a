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
owner when nobody else could have created it (it is not in a directory others may write,
sticky or not, unless a trusted user's directory lies in between): root that made
/run/supervisor for a user, as systemd's RuntimeDirectory= or a container image does, vouches
for that user (an image run as an arbitrary uid in group 0 finds it owned by the image's
user). Such an owner could still remove or replace files there, which costs a start or a
command (a symlink is refused, a pid not believed unless its process holds the pidfile's lock
and the control socket), never root's writes or signals.

Paths are resolved (realpath) first and the checks apply to the real directories; callers
then use the resolved path, so a symlink on the way cannot be swapped later.
"""

import os
import pwd
import stat
from collections.abc import Collection
from dataclasses import replace

from supervisor import config
from supervisor.errors import SupervisorError
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


def check(directory: str, trusted: Collection[int], delegate: bool = True) -> str:
    """The real path of `directory`, once checked (see the module docstring; not `delegate`:
    its owner must be trusted itself); raise UnsafeDirectory naming what is wrong, OSError if
    it cannot be examined."""
    real = os.path.realpath(directory)
    info = os.stat(real)
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"{real}: not a directory")
    trusted = {0, *trusted}
    vouched = _check_parents(real, os.path.dirname(real), trusted, info.st_uid)
    if info.st_uid not in trusted and not (delegate and vouched):
        raise UnsafeDirectory(
            f"{real}: belongs to {_user(info.st_uid)}, not to root or the supervisor's user"
        )
    if _writable_by_others(info):
        raise UnsafeDirectory(
            f"{real}: writable by other users (mode {stat.S_IMODE(info.st_mode):04o})"
        )
    return real


def _check_parents(real: str, parent: str, trusted: set[int], owner: int) -> bool:
    """Check `parent` and every directory above it for `real`, whose owner is `owner`: each
    belongs to a trusted user or `owner`, and is writable by nobody else unless it is sticky.
    Whether `owner` was given `real` by a trusted user: no directory anyone may write (even
    sticky) holds it, or a directory of `owner`'s above it."""
    vouched = True
    untrusted_below = owner not in trusted  # (the directory just below is not a trusted one)
    while True:
        above = os.stat(parent)
        if above.st_uid not in trusted and above.st_uid != owner:
            raise UnsafeDirectory(
                f"{real}: {parent} belongs to {_user(above.st_uid)}, who could replace it"
            )
        if _writable_by_others(above):
            if not above.st_mode & stat.S_ISVTX:
                raise UnsafeDirectory(f"{real}: {parent} is writable by other users")
            if untrusted_below:
                vouched = False  # anyone could have created what is below
        untrusted_below = above.st_uid not in trusted
        if parent == "/":
            return vouched
        parent = os.path.dirname(parent)


def prepare(directory: str, trusted: Collection[int], create: bool = True) -> str:
    """`check`, after creating the directory (mode 0755) if it is missing: what exists of its
    parents is checked first, so that nothing is created where someone else could meddle.
    Without `create`, a missing directory is only checked that far (`supervisor check`)."""
    real = os.path.realpath(directory)
    existing = real
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if existing != real:
        _check_parents(real, existing, {0, *trusted}, os.geteuid())
        if not create:
            return real
        os.makedirs(real, mode=0o755, exist_ok=True)
    return check(real, trusted)


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
    return replace(settings, pidfile=os.path.join(real, name))
