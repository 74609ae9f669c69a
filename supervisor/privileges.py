"""Privileges: who the handlers run as, dropping root, and what children set up before a handler.

Started as root, the supervisor binds everything first (servers, metrics, control socket, log
file, pidfile), then `drop()`s to `[supervisor] user`/`group` for good (supplementary groups
reset) before the fork server starts or any child is forked. A server's own `user`/`group`
instead makes each of its children switch in the child, which needs the supervisor to keep root.

`check()` runs from reload.prepare, at start and at every reload, since its answers depend on the
user the process runs as: it refuses a configuration that would run handlers as root (unless
`allow_root = true` or SUPERVISOR_ALLOW_ROOT=1), a user switch that only root may make, and child
limits that only root may set (an rlimit above the hard limit, a niceness below the current one).
A reload cannot regain root: a changed `[supervisor] user` applies at the next start.

`child_setup()` turns a server's child limits and user into plain data (marshal-able, for the
fork server too); `forkserver.apply_child_setup` applies it in the child.
"""

import os
import resource

from supervisor.config import IN_PROCESS_MODES, Config, Credentials, Limits, Mode, ServerConfig
from supervisor.errors import ConfigError, SupervisorError

ALLOW_ROOT_ENV = "SUPERVISOR_ALLOW_ROOT"  # "1": an operator's escape hatch (and the test suite's)
NR_OPEN = "/proc/sys/fs/nr_open"  # the most open files any process may have, even root's
CAP_SYS_NICE = 23
CAP_SYS_RESOURCE = 24  # (root in a container often lacks it: then it cannot raise a hard limit)
MIB = 1024 * 1024

# (rlimits as (resource, soft, hard), nice or None, (uid, gid) or None): see forkserver.py.
ChildSetup = tuple[tuple[tuple[int, int, int], ...], int | None, tuple[int, int] | None]


class PrivilegeError(SupervisorError):
    """Switching to the configured user failed."""

    exit_status = os.EX_OSERR


def _rlimits(limits: Limits) -> tuple[tuple[str, int, int], ...]:
    """(key, resource, value) for each limit set; soft and hard are both set to the value."""
    found = (
        ("rlimit_as", resource.RLIMIT_AS, limits.rlimit_as * MIB),
        ("rlimit_cpu", resource.RLIMIT_CPU, limits.rlimit_cpu),
        ("rlimit_nofile", resource.RLIMIT_NOFILE, limits.rlimit_nofile),
    )
    return tuple((key, which, value) for key, which, value in found if value)


def child_setup(server: ServerConfig) -> ChildSetup | None:
    """What a child of `server` applies before its handler; None: nothing (the common case)."""
    limits, credentials = server.limits, server.credentials
    if server.mode not in (Mode.FORK, Mode.PREFORK):
        return None
    if not limits.child_limits and credentials is None:
        return None
    rlimits = tuple((which, value, value) for _, which, value in _rlimits(limits))
    # Already that user (check() allows it: no switch): nothing to switch, and setgroups()
    # would fail without root.
    ids = None if credentials is None or _is_current(credentials) else (
        credentials.uid, credentials.gid)  # fmt: skip
    if not rlimits and limits.nice is None and ids is None:
        return None
    return rlimits, limits.nice, ids


def root_allowed(loaded: Config) -> bool:
    return loaded.supervisor.allow_root or os.environ.get(ALLOW_ROOT_ENV) == "1"


def check(loaded: Config, starting: bool) -> None:
    """Refuse what the process cannot do, or should not, as the user it runs as (after the
    drop, when `starting`); raise ConfigError naming the key."""
    euid = os.geteuid()
    own = loaded.supervisor.credentials
    if starting and own is not None:
        _check_switch(loaded, "supervisor", own)
        euid = own.uid
    for server in loaded.servers.values():
        if server.credentials is not None:
            _check_switch(loaded, f"servers.{server.name}", server.credentials)
    if not root_allowed(loaded):
        _check_not_root(loaded, euid)
    _check_limits(loaded, root=euid == 0)
    _check_nofile(loaded)


def _is_current(credentials: Credentials) -> bool:
    return os.getresuid() == (credentials.uid,) * 3 and os.getresgid() == (credentials.gid,) * 3


def _check_switch(loaded: Config, table: str, credentials: Credentials) -> None:
    """Switching user needs root; being that user already is no switch at all."""
    if os.geteuid() == 0 or _is_current(credentials):
        return
    whose = "the supervisor" if table == "supervisor" else "its children"
    extra = (
        "" if table == "supervisor" else ": the supervisor must keep root (no [supervisor] user)"
    )
    raise ConfigError(
        loaded.source,
        f"{table}.user",
        f"running {whose} as {credentials.user}:{credentials.group} needs root, and this "
        f"process runs as uid {os.geteuid()}{extra}",
    )


def _check_not_root(loaded: Config, euid: int) -> None:
    """Handlers must not run as root unless allowed: thread and inline ones run as the
    supervisor (`euid`), fork and prefork ones as their server's user, or as the supervisor."""
    own = loaded.supervisor.credentials
    for server in loaded.servers.values():
        credentials = server.credentials
        if (euid if credentials is None else credentials.uid) != 0:
            continue
        allow = f"allow_root = true in [supervisor] ({ALLOW_ROOT_ENV}=1 in the environment)"
        who = f"the handlers of servers.{server.name}"
        others = any(other.credentials for other in loaded.servers.values())
        if others and server.mode in IN_PROCESS_MODES:
            key = f"servers.{server.name}.mode"
            what = f"{who} would run as root, inside the supervisor (which keeps root for the "
            what += f"servers' own users): use fork or prefork with a user, or {allow}"
        elif credentials is not None or others:
            key, what = f"servers.{server.name}.user", f"{who} would run as root: set a user "
            what += f"other than root here, or {allow}"
        elif own is not None and own.uid != 0:  # a reload, still running as root
            key = "supervisor.user"
            what = f"{who} would run as root until the next start (when this user applies): "
            what += f"restart instead, or set {allow}"
        else:
            key = "supervisor.user"
            what = f"{who} would run as root: set a user (the supervisor drops to it once "
            what += f"bound), or {allow}"
        raise ConfigError(loaded.source, key, what)


def _capable(capability: int) -> bool:
    """Whether this process has `capability` in its effective set (Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> capability & 1)
    except (OSError, ValueError):
        pass
    return os.geteuid() == 0


def _check_limits(loaded: Config, root: bool) -> None:
    """A child may lower its limits and raise its niceness; the reverse needs root (with
    CAP_SYS_RESOURCE, CAP_SYS_NICE), which children have only if the supervisor keeps it."""
    raise_limits = root and _capable(CAP_SYS_RESOURCE)
    lowest_nice = -20 if root and _capable(CAP_SYS_NICE) else _lowest_nice()
    tables = [("supervisor", loaded.supervisor.limits)]
    tables += [(f"servers.{server.name}", server.limits) for server in loaded.servers.values()]
    for table, limits in tables:
        for key, which, value in _rlimits(limits):
            hard = resource.getrlimit(which)[1]
            if not raise_limits and hard != resource.RLIM_INFINITY and value > hard:
                shown = f"{value // MIB} MiB" if key == "rlimit_as" else str(value)
                limit = f"{hard // MIB} MiB" if key == "rlimit_as" else str(hard)
                raise ConfigError(
                    loaded.source,
                    f"{table}.{key}",
                    f"{shown} is above the hard limit ({limit}), which only root (with "
                    "CAP_SYS_RESOURCE) may raise",
                )
        if limits.nice is not None and limits.nice < lowest_nice:
            raise ConfigError(
                loaded.source,
                f"{table}.nice",
                f"{limits.nice} is below {lowest_nice}, the lowest niceness this process may "
                "set without root (with CAP_SYS_NICE)",
            )


def _lowest_nice() -> int:
    """The lowest niceness an unprivileged process may set: its own, or what RLIMIT_NICE
    allows (20 - the limit), whichever is lower."""
    allowed = resource.getrlimit(resource.RLIMIT_NICE)[0]
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if allowed == resource.RLIM_INFINITY:
        return -20
    return min(current, 20 - allowed) if allowed else current


def _check_nofile(loaded: Config) -> None:
    """Not even root may give a process more open files than fs.nr_open."""
    try:
        with open(NR_OPEN) as file:
            most = int(file.read())
    except (OSError, ValueError):
        return
    tables = [("supervisor", loaded.supervisor.limits)]
    tables += [(f"servers.{server.name}", server.limits) for server in loaded.servers.values()]
    for table, limits in tables:
        if limits.rlimit_nofile > most:
            raise ConfigError(
                loaded.source,
                f"{table}.rlimit_nofile",
                f"{limits.rlimit_nofile} is above the system's maximum (fs.nr_open = {most})",
            )


def drop(loaded: Config) -> None:
    """Become `[supervisor] user`/`group` for good, with no supplementary groups, if set and
    not that user already. Raise PrivilegeError."""
    credentials = loaded.supervisor.credentials
    if credentials is None or (os.geteuid() != 0 and _is_current(credentials)):
        return
    try:
        os.setgroups([])
        os.setgid(credentials.gid)
        os.setuid(credentials.uid)
    except OSError as exc:
        raise PrivilegeError(
            f"{loaded.source}: supervisor.user: cannot switch to "
            f"{credentials.user}:{credentials.group} ({exc.strerror or exc})"
        ) from exc
    uids, gids, groups = os.getresuid(), os.getresgid(), os.getgroups()
    if uids != (credentials.uid,) * 3 or gids != (credentials.gid,) * 3 or groups:
        raise PrivilegeError(
            f"{loaded.source}: supervisor.user: switching to "
            f"{credentials.user}:{credentials.group} left uids {uids}, gids {gids}, "
            f"groups {groups}"
        )
