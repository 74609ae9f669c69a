"""The supervisor: servers, children and signals around one loop.

States: STARTING -> RUNNING (every server bound and registered) -> STOPPING (SIGTERM/SIGINT:
listeners closed, children draining; SIGQUIT: children terminated at once) -> STOPPED (no child
left, or given up on). A reload (SIGHUP or the control socket) happens within RUNNING: it is
prepared completely first (reload.py), and only then switched over in one step of the loop.

How a request runs is its server's mode's (modes/); the supervisor accepts and admits it
(admission.py), counts it, reaps children and tells their mode, and stops.
"""

import contextlib
import enum
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable
from functools import partial
from os import EX_SOFTWARE

from supervisor import config, logs, monitoring, systemd
from supervisor.admission import Admission
from supervisor.children import ChildTable, SystemCalls
from supervisor.config import SupervisorConfig
from supervisor.control import ControlServer
from supervisor.errors import SupervisorError, describe
from supervisor.exporter import HttpServer
from supervisor.guards import Source
from supervisor.loop import Loop
from supervisor.modes import Modes
from supervisor.readiness import ReadyPipe
from supervisor.reload import Prepared, ReloadResult, Reloads, prepare, switch
from supervisor.server import Server
from supervisor.shutdown import Shutdown
from supervisor.signals import Intent, SignalWakeup
from supervisor.sockets import Listener
from supervisor.spawn import Spawner

log = logging.getLogger("supervisor")


def _freeze_for_fork(again: bool = False) -> None:
    """Move what the supervisor has built so far (modules, configuration, servers) out of the
    garbage collector's reach: a forked child's collections then never touch, and copy, those
    pages. Done at start and after each reload (`again`: the previous configuration's objects
    are let go first, so a reload's garbage can still be collected)."""
    if again:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor(Admission):
    """Hosts the configured servers until told to stop."""

    def __init__(
        self,
        prepared: Prepared,
        *,
        config_path: str | None = None,
        spare: Iterable[Listener] = (),
        calls: SystemCalls | None = None,
        control_socket: Listener | None = None,
        metrics_listener: Listener | None = None,
        parent_only_fds: Iterable[int] = (),
        readiness: ReadyPipe | None = None,
    ) -> None:
        self.config = prepared.config
        self.config_path = config_path or prepared.config.source  # re-read on every reload
        self.loop = Loop()
        # As PID 1 (in a container) orphans are re-parented to us: reap them too.
        self.children: ChildTable[Server] = ChildTable(
            calls or SystemCalls(), reap_strangers=os.getpid() == 1
        )
        self.servers = {
            name: Server(server, prepared.codes[name], prepared.listeners[name])
            for name, server in prepared.config.servers.items()
        }
        self.draining: set[Server] = set()  # removed by a reload, with requests still running
        self.spare = [listener for listener in spare if listener.inherited]  # unused, from systemd
        self.state = State.STARTING
        self.started = time.time()
        self.reloads = Reloads()
        self.reload_stats = self.reloads.stats  # (what the metrics read)
        self._signals: SignalWakeup | None = None
        self._control_socket = control_socket  # bound by the caller, served from run()
        self._control: ControlServer | None = None
        self._metrics_listener = metrics_listener
        self._metrics: HttpServer | None = None
        self._readiness = readiness  # `run --daemon` waits for its word
        self._status = monitoring.StatusUpdates(self, self.loop)  # systemd's STATUS=
        self.spawner = Spawner(self.children, self._descriptors)
        self.spawner.on_child(self._close_in_child)
        self._parent_only_fds = tuple(parent_only_fds)  # closed in every child (the pidfile)
        self.modes = Modes(self)
        super().__init__()
        self._shutdown = Shutdown(self)

    # -- what the modes and the monitoring read (modes.base.Host, monitoring.Observed) -----

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    @property
    def settings(self) -> SupervisorConfig:
        return self.config.supervisor

    @property
    def state_name(self) -> str:
        return self.state.value

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit status."""
        self._signals = SignalWakeup(self.loop, self._on_intent)
        if self._control_socket is not None:
            self._control = ControlServer(
                self.loop, self._control_socket, partial(monitoring.answer, self)
            )
        if self._metrics_listener is not None:
            self._metrics = monitoring.serve_metrics(self, self._metrics_listener)
        self.state = State.RUNNING  # STARTING -> RUNNING
        _freeze_for_fork()
        for server in self.servers.values():
            self._refresh(server)
            monitoring.log_listening(server, self.modes[server.mode])
        self.modes.start(self.servers.values())  # (the loop has not run: no accept yet)
        for listener in self.spare:
            log.warning(
                "inherited socket %s (name %r) matches no server", listener.bound, listener.fd_name
            )
        log.info("ready: %d servers, pid %d", len(self.servers), os.getpid())
        status = monitoring.summary(self)
        systemd.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
        self._status.start(status)
        if self._readiness is not None:
            self._readiness.ready()
        systemd.keep_watchdog(self.loop, partial(monitoring.summary, self))
        try:
            self.loop.run()
        finally:
            self._close()
        log.info("stopped")
        return 0

    def _close(self) -> None:
        for mode in self.modes:
            mode.close()
        for server in [*self.servers.values(), *self.draining]:
            server.close_handler_socket()
            self._release(server.listener)
        for listener in self.spare:
            listener.socket.close()
        if self._control is not None:
            self._control.close()
        if self._metrics is not None:
            self._metrics.close()
        if self._signals is not None:
            self._signals.close()
        self.loop.close()

    def _descriptors(self) -> Iterable[int]:
        """What a forked child closes by number: every server's sockets (listeners, datagram
        handler sockets, replaced ones) and the spare listeners (spawn.py)."""
        for server in [*self.servers.values(), *self.draining]:
            yield from server.own_descriptors()
        for listener in self.spare:
            yield listener.socket.fileno()

    def _close_in_child(self) -> None:
        """Drop what belongs to the parent: signal routing, the loop, its own sockets."""
        if self._signals is not None:
            self._signals.reset_in_child()
        self.loop.close_in_child()
        if self._control is not None:
            self._control.close_in_child()
        if self._metrics is not None:
            self._metrics.close_in_child()
        if self._readiness is not None:
            self._readiness.close_in_child()
        for fd in self._parent_only_fds:
            os.close(fd)

    def _on_intent(self, intent: Intent, signum: int) -> None:
        if self.state is State.STOPPED:
            return  # on the way out: the loop ends after this turn
        if intent is Intent.REAP:
            self._reap()
        elif intent is Intent.STOP:
            self._stop(signal.Signals(signum).name)
        elif intent is Intent.FAST_STOP:
            self._stop(signal.Signals(signum).name, fast=True)
        elif intent is Intent.RELOAD:
            self.reload()
        elif intent is Intent.REOPEN_LOGS:
            self._reopen_logs()

    def _reopen_logs(self, reason: str = "SIGUSR1") -> None:
        if logs.reopen_for(reason, self.settings.log_file):
            for mode in self.modes:
                mode.logs_reopened()

    def catch_up(self) -> None:
        """Take note of the requests whose handler has returned, which the loop has not read
        about yet (before a client is turned away for max_per_source)."""
        for mode in self.modes:
            mode.catch_up()

    def collect(self) -> None:
        """Read what the workers have reported and the loop not yet (before a scrape)."""
        for mode in self.modes:
            mode.collect()

    # -- reloading -------------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the configuration and switch to it, or change nothing if any step fails."""
        if self.state is not State.RUNNING:
            return ReloadResult(False, f"cannot reload while {self.state.value}", exit_status=69)
        systemd.notify(systemd.reloading_message())
        log.info("reloading %s", self.config_path)
        current = {name: server.listener for name, server in self.servers.items()}
        try:
            codes = {name: server.code for name, server in self.servers.items()}
            prepared = prepare(self.config_path, current, self.spare, reloading=True, kept=codes)
        except SupervisorError as exc:
            self.reloads.failed(str(exc), exc.exit_status)
        except Exception as exc:  # a bug, or input nobody foresaw: prepare() changed nothing
            self.loop.fault("reload")
            self.reloads.failed(f"internal error ({describe(exc)}); see the log", EX_SOFTWARE)
        else:
            try:
                self._switch_to(prepared)
            except Exception as exc:  # a bug: the switch is made of steps that cannot fail
                self.loop.fault("reload")
                self.reloads.failed(
                    f"internal error while switching ({describe(exc)}); some servers may run "
                    "the new configuration: see the log",
                    EX_SOFTWARE,
                    switching=True,
                )
        systemd.notify(f"READY=1\nSTATUS={monitoring.summary(self)}")
        assert self.reloads.last is not None  # noqa: S101 (every branch set it)
        return self.reloads.last

    def _switch_to(self, prepared: Prepared) -> None:
        """The second half of a reload: everything is ready, switch to it (see _switch)."""
        old, new = self.config, prepared.config
        changes = str(config.diff(old, new))
        self._switch(prepared)
        log.info("reloaded: %s", changes)
        if new.supervisor.log_file not in (old.supervisor.log_file, None):
            self._reopen_logs("log_file changed")
        self.reloads.succeeded(old, new, changes)

    def _switch(self, prepared: Prepared) -> None:
        """Run the prepared configuration: one step, nothing in it can fail (reload.switch)."""
        for server in self.servers.values():
            self._unlisten(server)
        done = switch(self.servers, prepared)
        for listener in done.unused:
            self._release(listener)
        for server, released in done.removed:
            self._retire(server, released)
        self.spare = [listener for listener in self.spare if id(listener) not in done.in_use]
        self.servers, self.config = done.servers, prepared.config
        self.spawner.forget()
        logs.set_level(prepared.config.supervisor.log_level)
        for server in self.servers.values():
            self._update(server)  # max_children or the mode may have changed
        for name in done.moved:
            server = self.servers[name]
            monitoring.log_listening(server, self.modes[server.mode])
        _freeze_for_fork(again=True)
        self.modes.start(self.servers.values())  # the new handlers, in every mode

    def _retire(self, server: Server, released: bool) -> None:
        """A server the new configuration removes: stop accepting, let its requests finish."""
        server.retired = True
        self.modes[server.mode].retire(server)
        if released:
            self._release(server.listener)
        if not server.threads:
            server.close_handler_socket()
        if server.active:
            self.draining.add(server)
            log.info("%s: removed; %d requests still running", server.name, server.active)
        else:
            log.info("%s: removed", server.name)

    def _release(self, listener: Listener) -> None:
        """A listener no server uses any more: close it, or keep it if systemd passed it in."""
        self.spawner.forget()
        if listener.inherited:
            if not any(listener is spare for spare in self.spare):
                self.spare.append(listener)
        else:
            if listener.address.is_stream:
                # Out of LISTEN for every process holding it, prefork workers busy with a request
                # included: new clients are refused, not queued for nobody (and the workers'
                # accept() fails with EINVAL, their sign to stop).
                with contextlib.suppress(OSError):
                    listener.socket.shutdown(socket.SHUT_RD)
            listener.close()

    # -- counting and reaping --------------------------------------------------------------

    def count(self, server: Server, delta: int, source: Source = None) -> None:
        """A request (or worker) of `server` started (+1) or ended (-1): re-apply admission;
        once the last request of a removed server or of a stopping supervisor is done, act."""
        self._count(server, delta, source)
        self._status.changed()
        if server.retired and not server.active:
            self.draining.discard(server)
            server.close_handler_socket()
            self.spawner.forget()
            log.info("%s: removed server drained", server.name)
        if self.state is State.STOPPING:
            self._shutdown.check()

    def _reap(self) -> None:
        for mode in self.modes:
            mode.reap()
        for reaped in self.children.reap():
            if reaped.child is None:
                log.debug("reaped pid %d, not a child of ours: %s", reaped.pid, reaped.status)
            else:
                reaped.child.keeper.child_exited(reaped)

    # -- stopping --------------------------------------------------------------------------

    def _stop(self, reason: str, fast: bool = False) -> None:
        if self.state is State.STOPPING:
            if not self._shutdown.terminating:  # once: repeating it must not postpone SIGKILL
                log.info("%s again: terminating the remaining requests now", reason)
                self._shutdown.terminate()
            return
        self.state = State.STOPPING  # RUNNING -> STOPPING
        systemd.notify("STOPPING=1")
        for mode in self.modes:
            mode.stop()  # prefork workers and fork servers finish what they have and exit
        for server in [*self.servers.values(), *self.draining]:
            self._refresh(server)
            self._release(server.listener)
            if not server.threads:  # else closed when the last thread is done
                server.close_handler_socket()
        self._shutdown.begin(reason, fast)

    def stopped(self) -> None:
        """Nothing left to wait for (shutdown.py): end the loop."""
        self.state = State.STOPPED  # STOPPING -> STOPPED
        self.loop.stop()
