"""`supervisor run`: in the foreground (systemd, Docker) or detached with `--daemon`.

Everything that can fail at start is done while the terminal still sees the error: the
configuration is loaded, a live pidfile refused (exit 69), the handlers imported and every socket
bound (or taken over from systemd socket activation). Only then does `--daemon` detach, with
python-daemon's DaemonContext: working directory /, umask 022, the pidfile locked, the listening
sockets kept open, stdout and stderr to the log file.
"""

import contextlib
import logging
import os
import signal
import socket
from contextlib import AbstractContextManager

import daemon

from supervisor import config, control, logs, systemd
from supervisor.core import Supervisor
from supervisor.errors import BindError, ConfigError
from supervisor.pidfile import AlreadyRunning, PidFile, running_pid
from supervisor.reload import prepare
from supervisor.sockets import Listener

log = logging.getLogger("supervisor")


def run(path: str, detach: bool = False) -> int:
    """Start the supervisor on the configuration at `path` and serve until it stops."""
    config_path = os.path.abspath(path)  # reloads read it after --daemon has changed directory
    loaded = config.load(path)
    settings = loaded.supervisor
    logs.setup(settings.log_level)
    if detach and (settings.pidfile is None or settings.log_file is None):
        raise ConfigError(path, "supervisor", "run --daemon needs both pidfile and log_file")
    if settings.pidfile is not None and (pid := running_pid(settings.pidfile)) is not None:
        raise AlreadyRunning(settings.pidfile, pid)
    inherited = inherited_listeners()
    prepared = prepare(loaded, spare=inherited)
    used = [id(listener) for listener in prepared.listeners.values()]
    spare = [listener for listener in inherited if id(listener) not in used]
    control_socket = _bind_control(path, settings.control_socket)
    context: AbstractContextManager[object]
    if detach and settings.pidfile is not None:
        keep = [listener.socket for listener in [*prepared.listeners.values(), *spare]]
        context = _daemon_context([*keep, control_socket], settings.pidfile)
    else:
        context = (
            contextlib.nullcontext() if settings.pidfile is None else PidFile(settings.pidfile)
        )
    with context:
        if settings.log_file is not None:
            logs.reopen(settings.log_file)
        supervisor = Supervisor(prepared, config_path, spare, control_socket=control_socket)
        return supervisor.run()


def _bind_control(source: str, path: str | None) -> socket.socket | None:
    if path is None:
        return None
    try:
        return control.bind(path)
    except OSError as exc:
        raise BindError(
            f"{source}: supervisor.pidfile: cannot create the control socket {path} "
            f"({exc.strerror or exc})"
        ) from exc


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


def _daemon_context(sockets: list[socket.socket | None], pidfile: str) -> daemon.DaemonContext:
    return daemon.DaemonContext(
        working_directory="/",
        umask=0o022,
        pidfile=PidFile(pidfile),
        detach_process=True,
        files_preserve=[sock for sock in sockets if sock is not None],
        # The supervisor handles its signals itself, from its loop: no 'terminate' handler.
        signal_map={signal.SIGTSTP: None, signal.SIGTTIN: None, signal.SIGTTOU: None},
    )
