"""`supervisor run`: in the foreground (systemd, Docker) or detached with `--daemon`.

Everything that can fail at start is done while the terminal still sees the error: the
configuration is loaded, a live pidfile refused (exit 69), the handlers imported and every socket
bound (or taken over from systemd socket activation). Only then does `--daemon` detach, with
python-daemon's DaemonContext: working directory /, umask 022, the pidfile locked, the listening
sockets kept open, stdout and stderr to the log file. The command returns once the daemon is
ready, or failed after it detached, with its status and error line (readiness.py).
"""

import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from supervisor import (
    config,
    control,
    forking,
    handling,
    logs,
    privileges,
    readiness,
    rundir,
    systemd,
    upgrade,
)
from supervisor.core import Supervisor
from supervisor.errors import BindError, ConfigError, LogFileError, SupervisorError, describe
from supervisor.pidfile import AlreadyRunning, PidFile, PidFileError, running_pid
from supervisor.reload import Prepared, prepare
from supervisor.sockets import Listener, bind

if TYPE_CHECKING:
    import daemon

log = logging.getLogger("supervisor")


def run(path: str, detach: bool = False) -> int:
    """Start the supervisor on the configuration at `path` and serve until it stops; or,
    started by an upgrade (upgrade.py), take over from the supervisor that started it."""
    takeover = upgrade.inherited()
    with _reported_to(takeover):
        return _run(path, detach and takeover is None, takeover)


def _run(path: str, detach: bool, takeover: upgrade.Takeover | None) -> int:
    config_path = os.path.abspath(path)  # reloads read it after --daemon has changed directory
    loaded = config.load(path)
    loaded = replace(loaded, supervisor=rundir.secure_pidfile(loaded))
    settings = loaded.supervisor
    logs.setup(settings.log_level, log_format=settings.log_format, request=handling.REQUEST)
    if detach and (settings.pidfile is None or settings.log_file is None):
        raise ConfigError(path, "supervisor", "run --daemon needs both pidfile and log_file")
    pid = None if settings.pidfile is None or takeover else running_pid(settings.pidfile)
    if pid is not None:
        raise AlreadyRunning(settings.pidfile or "", pid)
    prepared, spare = _prepare(loaded, takeover)
    log_fd = _open_log(path, settings.log_file)
    if takeover is None:
        metrics_listener = _bind_metrics(path, loaded.metrics)
        control_socket = _bind_control(path, settings.control_socket, settings.credentials)
    else:
        used = [id(listener) for listener in prepared.listeners.values()]
        metrics_listener, control_socket = _taken_over(path, loaded, takeover, used)
    pidfile = _pidfile(settings.pidfile, takeover)
    extra = [listener for listener in (control_socket, metrics_listener) if listener]
    keep = [*prepared.listeners.values(), *spare, *extra]
    context, ready = _context(pidfile, takeover, detach, keep, log_fd)
    try:
        with _reported_to(ready), context:
            if log_fd is not None:
                logs.redirect(log_fd)
            if control_socket is not None and takeover is None:  # (see control.bind)
                control_socket.socket.listen(control.BACKLOG)  # (taking over: core.py)
            # Everything is bound and open (the pidfile too, after --daemon's fork): for good,
            # before the fork server starts or any child is forked. What the fork server's
            # start needs of the standard library is imported before: the user may not read it.
            if settings.credentials is not None:
                forking.interpreter_flags()
                if pidfile is not None and os.geteuid() == 0 and takeover is None:
                    _give(path, pidfile, settings.credentials)
            privileges.drop(loaded)
            if settings.credentials is not None:
                log.info(
                    "running as %s:%s",
                    settings.credentials.user,
                    settings.credentials.group,
                )
            supervisor = Supervisor(
                prepared,
                config_path=config_path,
                spare=spare,
                control_socket=control_socket,
                metrics_listener=metrics_listener,
                # A child must not keep the pidfile open read-write: one switched to another
                # user could write a pid there that `supervisor stop` would then signal.
                parent_only_fds=() if pidfile is None or not pidfile.held else (pidfile.fileno(),),
                readiness=ready,
                pidfile=pidfile,
                takeover=takeover,
            )
            return supervisor.run()
    finally:  # after a failed start-up; after a run they are closed already
        for listener in (control_socket, metrics_listener):
            if listener is not None:
                listener.close()  # removes only its own unix socket file


def _prepare(
    loaded: config.Config, takeover: upgrade.Takeover | None
) -> tuple[Prepared, list[Listener]]:
    """Every server ready to run, with the sockets inherited from systemd, or handed over by
    an upgrade (then as for a reload: the start-up checks were made by the first start); and
    the inherited sockets no server uses."""
    if takeover is None:
        inherited, current = inherited_listeners(), {}
    else:
        inherited, current = takeover.sockets.spare, takeover.sockets.servers
    prepared = prepare(loaded, current, inherited, reloading=takeover is not None)
    used = [id(listener) for listener in prepared.listeners.values()]
    return prepared, [listener for listener in inherited if id(listener) not in used]


def _taken_over(
    source: str, loaded: config.Config, takeover: upgrade.Takeover, used: list[int]
) -> tuple[Listener | None, Listener | None]:
    """The metrics and control sockets of a supervisor taking over: the metrics socket handed
    over when the configuration still has it there, else one bound anew; the control socket
    handed over, which goes with the pidfile (see _pidfile). What is left over is closed once
    the old supervisor has let go (as are the servers' sockets no server uses now)."""
    handed = takeover.sockets
    takeover.unused = [each for each in handed.servers.values() if id(each) not in used]
    metrics, control_socket = handed.metrics, handed.control
    if metrics is not None and metrics.address != loaded.metrics.address:
        takeover.unused.append(metrics)
        metrics = None
    if loaded.metrics.enabled and metrics is None:
        metrics = _bind_metrics(source, loaded.metrics)
    path = loaded.supervisor.control_socket
    if control_socket is None and takeover.old.get("pidfile") is None and path is not None:
        control_socket = _bind_control(source, path, loaded.supervisor.credentials)
    return metrics, control_socket


def _pidfile(path: str | None, takeover: upgrade.Takeover | None) -> PidFile | None:
    """The pidfile: taking over, the old supervisor's (a changed `pidfile` applies at the next
    start, as for a reload; the control socket handed over is next to the old one)."""
    if takeover is not None and isinstance(old := takeover.old.get("pidfile"), str):
        if old != path:
            log.warning("supervisor.pidfile: a change applies at the next start; still %s", old)
        return PidFile(old)
    return None if path is None else PidFile(path)


def _context(
    pidfile: PidFile | None,
    takeover: upgrade.Takeover | None,
    detach: bool,
    keep: list[Listener],
    log_fd: int | None,
) -> tuple[AbstractContextManager[object], readiness.ReadyPipe | None]:
    """What the supervisor runs within: the pidfile held, and with --daemon, detached (and
    the pipe the starting process waits on)."""
    if takeover is not None:
        return _pidfile_of(takeover, pidfile), None
    if detach and pidfile is not None:
        ready = readiness.split()  # the starting process waits there for the daemon's word
        sockets = [listener.socket for listener in keep]
        return _daemon_context(sockets, log_fd, pidfile, ready), ready
    return (contextlib.nullcontext() if pidfile is None else pidfile), None


def _pidfile_of(takeover: upgrade.Takeover, pidfile: PidFile | None) -> contextlib.ExitStack:
    """Taking over, the pidfile is locked once the old supervisor has let go of it (core.py);
    in place, this very process holds it already. Either way it is let go of at the end."""
    stack = contextlib.ExitStack()
    if pidfile is not None:
        if takeover.pidfile_fd is not None:
            pidfile.adopt(takeover.pidfile_fd)
        stack.push(pidfile)
    return stack


class _Reporter(Protocol):
    def failed(self, status: int, line: str) -> None: ...


@contextlib.contextmanager
def _reported_to(ready: _Reporter | None) -> Iterator[None]:
    """An error that ends the start-up of a detached daemon also goes to the process that
    waits for it (once `ready` is sent, nobody waits any more, and this sends nothing), after
    it is in the daemon's log (its stderr): whoever is told can read it there at once."""
    try:
        yield
    except SupervisorError as exc:
        if ready is None:
            raise
        print(exc, file=sys.stderr, flush=True)
        ready.failed(exc.exit_status, str(exc))
        raise SystemExit(exc.exit_status) from None  # (said: not again by the cli)
    except BaseException as exc:
        if ready is not None:
            ready.failed(os.EX_SOFTWARE, f"internal error ({describe(exc)}): see the log file")
        raise


def _give(source: str, pidfile: PidFile, owner: config.Credentials) -> None:
    try:
        pidfile.give_to(owner.uid, owner.gid)
    except OSError as exc:
        raise PidFileError(
            pidfile.path, f"give to {owner.user} ({source}: supervisor.user)", exc
        ) from exc


def _open_log(source: str, log_file: str | None) -> int | None:
    """Open the log file while the terminal still sees errors."""
    if log_file is None:
        return None
    try:
        return logs.open_log(log_file)
    except OSError as exc:
        raise LogFileError(
            f"{source}: supervisor.log_file: cannot open {log_file} ({exc.strerror or exc})"
        ) from exc


def _bind_metrics(source: str, settings: config.MetricsConfig) -> Listener | None:
    if not settings.enabled:
        return None
    try:
        return bind(settings.address, backlog=64)
    except OSError as exc:
        raise BindError(
            f"{source}: metrics.address: cannot bind {settings.address} ({exc.strerror or exc})"
        ) from exc


def _bind_control(
    source: str, path: str | None, owner: config.Credentials | None
) -> Listener | None:
    """The control socket; owned by `owner` when the supervisor drops to that user, which may
    then use `supervisor status|reload` too (the socket answers root and its own user)."""
    if path is None:
        return None
    try:
        listener = control.bind(path)
    except OSError as exc:
        raise BindError(
            f"{source}: supervisor.pidfile: cannot create the control socket {path} "
            f"({exc.strerror or exc})"
        ) from exc
    if owner is not None and os.geteuid() == 0:
        try:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)
        except OSError as exc:
            listener.close()
            raise BindError(
                f"{source}: supervisor.user: cannot give the control socket {path} to "
                f"{owner.user} ({exc.strerror or exc})"
            ) from exc
    return listener


def inherited_listeners() -> list[Listener]:
    """The sockets systemd passed in (LISTEN_FDS), ready to be matched to servers."""
    listeners = []
    try:
        passed = systemd.listen_fds()
    except OSError as exc:
        raise BindError(f"socket activation: {exc.strerror}") from exc
    for inherited in passed:
        try:
            listener = systemd.adopt(inherited.socket)
        except ValueError as exc:
            log.warning("ignoring an inherited socket (name %r): %s", inherited.name, exc)
            inherited.socket.close()
            continue
        listener.inherited = True
        listener.fd_name = inherited.name
        listeners.append(listener)
    return listeners


def _daemon_context(
    sockets: list[socket.socket],
    log_fd: int | None,
    pidfile: PidFile,
    ready: readiness.ReadyPipe | None,
) -> "daemon.DaemonContext":
    import daemon  # noqa: PLC0415 (python-daemon: only --daemon needs it, and it stays resident)

    fds = [fd for fd in (log_fd, None if ready is None else ready.fd) if fd is not None]
    return daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        pidfile=pidfile,
        detach_process=True,
        files_preserve=[*sockets, *fds],
        # The supervisor handles its signals itself, from its loop: no 'terminate' handler.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
