"""The supervisor: servers, children and signals around one loop.

States: STARTING -> RUNNING (every server bound and registered) -> STOPPING (SIGTERM/SIGINT:
listeners closed, children draining; SIGQUIT: children terminated at once) -> STOPPED (no child
left, or given up on). A reload (SIGHUP or the control socket) happens within RUNNING: it is
prepared completely first (reload.py), and only then switched over in one step of the loop. An
upgrade (SIGUSR2 or the control socket) starts the code now installed with this process's
sockets (upgrade.py); once it is ready, RUNNING -> STOPPING as for a stop, except that the
sockets are let go of, not closed, and the requests in progress finish here.

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
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from functools import partial
from os import EX_CONFIG, EX_SOFTWARE
from typing import Any

from supervisor import __version__, config, control, logs, monitoring, signals, stats, systemd
from supervisor.admission import Admission
from supervisor.children import ChildTable, SystemCalls
from supervisor.config import SupervisorConfig
from supervisor.control import ControlServer
from supervisor.errors import SupervisorError, describe
from supervisor.exporter import HttpServer
from supervisor.guards import Source
from supervisor.inplace import Preflight, changed_since, exec_in_place
from supervisor.inplace import in_place as upgrade_in_place
from supervisor.loop import Loop, Timer
from supervisor.modes import Modes
from supervisor.pidfile import PidFile
from supervisor.readiness import ReadyPipe
from supervisor.reload import Prepared, ReloadResult, Reloads, prepare, switch
from supervisor.responder import Later, after_answers
from supervisor.server import Server
from supervisor.shutdown import Shutdown
from supervisor.signals import Intent, SignalWakeup
from supervisor.sockets import Listener
from supervisor.spawn import Spawner
from supervisor.upgrade import Counted, Outcome, Sockets, Spawned, Takeover
from supervisor.upgrade import manifest as upgrade_manifest
from supervisor.watch import ConfigWatch

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
        pidfile: PidFile | None = None,
        takeover: Takeover | None = None,
    ) -> None:
        self.config = prepared.config
        self.config_path = config_path or prepared.config.source  # re-read on every reload
        self.loop = Loop()
        # As PID 1 (in a container) orphans are re-parented to us: reap them too.
        # After an upgrade in place, the old code's children are ours too, unknown to the table.
        in_place = takeover is not None and takeover.in_place
        self.children: ChildTable[Server] = ChildTable(
            calls or SystemCalls(), reap_strangers=os.getpid() == 1 or in_place
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
        self._parent_only_fds = list(parent_only_fds)  # closed in every child (the pidfile)
        self._pidfile = pidfile  # held by this process (or, taking over, to be)
        self._takeover = takeover  # what an old supervisor handed this one (upgrade.py)
        self.upgrades = stats.UpgradeStats()
        self._upgrading: Spawned | Preflight | None = None
        self._upgrade_reply: Later | None = None  # the control connection waiting for it
        self._handed_to: Spawned | None = None  # the supervisor that took over from this one
        self._in_place: Timer | None = None  # waiting for request threads, then exec
        self._new_code: list[subprocess.Popen[bytes]] = []  # started, to be collected
        self._old_drain: Timer | None = None  # stopped, waiting for the old one's requests
        self._watch: ConfigWatch | None = None  # watch_config
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
        self._update_watch()
        for listener in self.spare:
            log.warning(
                "inherited socket %s (name %r) matches no server", listener.bound, listener.fd_name
            )
        if self._takeover is not None:
            self._took_over(self._takeover)
        log.info("ready: %d servers, pid %d", len(self.servers), os.getpid())
        status = monitoring.summary(self)
        if self._readiness is not None:
            self._readiness.ready()
        systemd.notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
        self._status.start(status)
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
        self._stop_watching()
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
        if self._watch is not None:
            self._watch.close_in_child()
        for fd in self._parent_only_fds:
            os.close(fd)
        for talking in (self._takeover, self._upgrading, self._handed_to):
            if talking is not None:
                talking.close_in_child()

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
        elif intent is Intent.UPGRADE:
            self.upgrade()

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
        if self.state is not State.RUNNING or self._upgrading is not None:
            doing = "upgrading" if self._upgrading is not None else self.state.value
            log.warning("reload refused: cannot reload while %s", doing)
            return ReloadResult(False, f"cannot reload while {doing}", exit_status=69, refused=True)
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
        self._update_watch()
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
        logs.set_format(prepared.config.supervisor.log_format)
        for server in self.servers.values():
            self._update(server)  # max_children or the mode may have changed
        for name in done.moved:
            server = self.servers[name]
            monitoring.log_listening(server, self.modes[server.mode])
        _freeze_for_fork(again=True)
        self.modes.start(self.servers.values())  # the new handlers, in every mode

    def _update_watch(self) -> None:
        """Watch the file if the configuration says so (and no longer if it does not); tell the
        watch what was loaded."""
        if not self.settings.watch_config:
            self._stop_watching()
        elif self._watch is not None:
            self._watch.reloaded(self.config.digest)
        else:
            self._watch = ConfigWatch(
                self.loop, self.config_path, self.config.digest, self._reload_for_watch
            )
            self._watch.start()

    def _reload_for_watch(self) -> bool:
        """watch_config's reload: False if it was refused (not now: upgrading, stopping)."""
        return not self.reload().refused

    def _stop_watching(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

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
            log.info(
                "%s: removed; %d requests still running",
                server.name,
                server.active,
                extra=logs.about(server.name),
            )
        else:
            log.info("%s: removed", server.name, extra=logs.about(server.name))

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

    # -- upgrading (upgrade.py) ------------------------------------------------------------

    def upgrade(self, reply: Later | None = None) -> None:
        """Hand over to the code now installed; `reply` gets the outcome (upgrade.Outcome)."""
        if self.state is not State.RUNNING or self._upgrading is not None:
            why = "one is in progress" if self._upgrading else f"while {self.state.value}"
            outcome = Outcome(False, f"cannot upgrade: {why}", os.EX_UNAVAILABLE, os.getpid())
            if reply is not None:
                reply.give(control.encode(outcome.answer()))
            else:
                log.warning("upgrade refused: %s", outcome.message)
            return
        in_place = upgrade_in_place()
        if in_place and (changed := changed_since(self.config_path, self.config)) is not None:
            outcome = Outcome(False, changed, os.EX_CONFIG, os.getpid())
            if reply is not None:
                reply.give(control.encode(outcome.answer()))
            self.upgrades.failed += 1
            log.error("upgrade refused: %s", changed)
            return
        log.info("upgrade: starting the code now installed (%s)", sys.executable)
        self._upgrade_reply = reply
        try:
            if in_place:
                self._upgrading = Preflight(self.config_path, self._preflight_done)
                self._upgrading.attach(self.loop)
            else:
                self._upgrading = spawned = Spawned(
                    self.loop,
                    self.config_path,
                    self._sockets(),
                    self._old_facts(),
                    self._take_over_from_here,
                    self._upgrade_failed,
                )
                self._new_code.append(spawned.process)
        except (OSError, subprocess.SubprocessError) as exc:
            self._upgrade_failed(f"cannot start the new code ({describe(exc)})", os.EX_OSERR)

    def _sockets(self) -> Sockets:
        return Sockets(
            {name: server.listener for name, server in self.servers.items()},
            list(self.spare),
            None if self._metrics is None else self._metrics.listener,
            None if self._control is None else self._control.listener,
        )

    def _upgraded(self, outcome: Outcome) -> None:
        reply, self._upgrade_reply = self._upgrade_reply, None
        if reply is not None:
            reply.give(control.encode(outcome.answer()))

    def _upgrade_failed(self, reason: str, exit_status: int) -> None:
        self._upgrading = None
        self.upgrades.failed += 1
        message = f"still running pid {os.getpid()} (version {__version__}): {reason}"
        log.error("upgrade failed, %s", message)
        self._upgraded(Outcome(False, message, exit_status, os.getpid()))

    def _counted(self) -> Counted:
        """The counters carried over an upgrade (upgrade.py)."""
        stats_by_name = {name: server.stats for name, server in self.servers.items()}
        return Counted(stats_by_name, self.reload_stats, self.upgrades, self.loop.faults)

    def _carry(self, counted: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> None:
        """Add what the old supervisor counted (beyond `before`) to this one's counters."""
        self.loop.faults += self._counted().add(counted, before)

    def _old_facts(self) -> dict[str, Any]:
        """What the new code is told of this supervisor (the manifest's `old`)."""
        pidfile = None if self._pidfile is None else self._pidfile.path
        return {"pid": os.getpid(), "version": __version__, "pidfile": pidfile}

    def _take_over_from_here(self, new: Spawned) -> None:
        """The new supervisor is ready: let go of everything it takes, then drain here."""
        self._upgrading, self._handed_to = None, new
        self.upgrades.ok += 1
        message = f"pid {new.pid} (version {new.version}) took over from pid {os.getpid()} "
        message += f"(version {__version__})"
        workers = sum(mode.workers() for mode in self.modes)
        log.info("upgrade: %s; %d requests in progress finish here", message, self.active - workers)
        self._let_go()
        systemd.notify(f"MAINPID={new.pid}")
        os.environ.pop("NOTIFY_SOCKET", None)  # (the new main process's to use from now on)
        new.go(self._counted().snapshot())
        self._upgraded(Outcome(True, message, 0, new.pid))
        self._shutdown.begin("upgrade", fast=False)

    def _let_go(self) -> None:
        """Stop accepting, as in a stop, and let go of every socket and of the pidfile's lock,
        leaving them as they are for the supervisor that took over. Each socket leaves the
        selector before its descriptor is closed: epoll watches the socket, which lives on in
        the new process, and would go on reporting it here."""
        self.state = State.STOPPING  # RUNNING -> STOPPING (handed over)
        self._stop_watching()
        sockets = self._sockets()
        for mode in self.modes:
            mode.stop()
        for server in [*self.servers.values(), *self.draining]:
            self._refresh(server)
            if not server.threads:
                server.close_handler_socket()
        if self._control is not None:
            self._control.stop_listening()  # (the upgrade's answer is still to be sent)
        if self._metrics is not None:
            self._metrics.stop_listening()  # (scrapes already accepted are answered)
        for listener in [*sockets.servers.values(), *sockets.spare]:
            listener.let_go()
        self.spare = []
        if self._pidfile is not None:
            self._pidfile.let_go()

    def _took_over(self, takeover: Takeover) -> None:
        """This is the new supervisor: once the old one has let go, take the pidfile and the
        control socket, and its counters."""
        counters = takeover.ready()
        takeover.claim()
        if not takeover.in_place and self._pidfile is not None:
            try:
                self._pidfile.__enter__()
                self._parent_only_fds.append(self._pidfile.fileno())
            except SupervisorError as exc:
                log.error("upgrade: %s", exc)  # (serving matters more than the pidfile)
        if self._control_socket is not None and not takeover.in_place:
            self._control_socket.socket.listen(control.BACKLOG)  # (SO_PEERCRED: this pid)
        for listener in takeover.unused:
            listener.close()
        self._carry(counters, None)
        takeover.watch(self.loop, partial(self._carry, before=counters))
        old = takeover.old
        message = f"pid {os.getpid()} (version {__version__}) took over from pid "
        message += f"{old.get('pid')} (version {old.get('version')})"
        log.info("upgrade: %s", message)
        if takeover.reply_fd is not None:
            takeover.answer(Outcome(True, message, 0, os.getpid()).answer())

    def _abandon_upgrade(self, reason: str) -> None:
        """Stopping while an upgrade is under way: the new code is not run (a new process is
        killed before it takes anything; an exec in place is called off)."""
        upgrading, self._upgrading = self._upgrading, None
        if upgrading is None:
            return
        upgrading.abandon()
        if self._in_place is not None:
            self._in_place.cancel()
            self._in_place = None
            self.state = State.RUNNING  # (the stop that follows is an ordinary one)
        self._upgrade_failed(f"called off by {reason}, which stops it", os.EX_UNAVAILABLE)

    # -- upgrading in place (PID 1) --------------------------------------------------------

    def _preflight_done(self, error: str | None) -> None:
        if error is not None:
            self._upgrade_failed(f"the new code does not start: {error}", os.EX_CONFIG)
            return
        log.info("upgrade: the new code checked; stopping accepting and exec'ing it in place")
        self.state = State.STOPPING  # RUNNING -> STOPPING (exec in place)
        for mode in self.modes:
            mode.stop()  # prefork workers and fork servers finish theirs and exit; children stay
        for server in self.servers.values():
            self._refresh(server)
        self._in_place = self.loop.call_later(self.settings.shutdown_timeout, self._exec)
        self._exec_when_idle()

    def _exec_when_idle(self) -> None:
        """Threads do not survive an exec: wait for the requests they run."""
        if self._in_place is not None and not any(s.threads for s in self.servers.values()):
            self._exec()

    def _exec(self) -> None:
        if self._in_place is None:
            return
        self._in_place.cancel()
        self._in_place = None
        if any(server.threads for server in self.servers.values()):
            log.warning("upgrade: request threads still running after shutdown_timeout: ended")
        changed = changed_since(self.config_path, self.config)  # (the check saw it earlier)
        if changed is not None:  # (watch_config: a ConfigMap update may come any time)
            self._resume_after_failed_exec(changed, EX_CONFIG)
            return
        self.upgrades.ok += 1
        sockets = self._sockets()
        reply = self._upgrade_reply
        old = {**self._old_facts(), "counters": self._counted().snapshot()}
        keep = [listener.socket.fileno() for listener in sockets.all()]
        if self._pidfile is not None:
            old["pidfile_fd"] = self._pidfile.fileno()
            keep.append(old["pidfile_fd"])
        waiting = reply
        if waiting is not None and waiting.conn is not None and waiting.conn.fileno() >= 0:
            waiting.done = True  # (answered by the new code)
            old["reply_fd"] = waiting.conn.fileno()
            keep.append(old["reply_fd"])
        mask = signals.block_signals()
        try:
            exec_in_place(self.config_path, upgrade_manifest(sockets, old), keep)
        except OSError as exc:
            signals.set_signal_mask(mask)
            if waiting is not None:
                waiting.done = False
            self.upgrades.ok -= 1
            self._resume_after_failed_exec(
                f"cannot exec the new code ({describe(exc)})", os.EX_OSERR
            )

    def _resume_after_failed_exec(self, reason: str, exit_status: int) -> None:
        self.state = State.RUNNING  # STOPPING -> RUNNING (the exec failed: nothing changed)
        for server in self.servers.values():
            self._refresh(server)
        self.modes.start(self.servers.values())
        self._upgrade_failed(reason, exit_status)

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
            log.info("%s: removed server drained", server.name, extra=logs.about(server.name))
        if self._in_place is not None:
            self._exec_when_idle()
        elif self.state is State.STOPPING:
            self._shutdown.check()

    def _reap(self) -> None:
        if self._upgrading is not None:
            self._upgrading.reap()  # (before the table: a stranger it would take, as PID 1)
        if self._new_code:  # (started by upgrades: collected here, not by the table)
            self._new_code = [process for process in self._new_code if process.poll() is None]
        for mode in self.modes:
            mode.reap()
        for reaped in self.children.reap():
            if reaped.child is None:
                log.debug("reaped pid %d, not a child of ours: %s", reaped.pid, reaped.status)
            else:
                reaped.child.keeper.child_exited(reaped)

    # -- stopping --------------------------------------------------------------------------

    def _stop(self, reason: str, fast: bool = False) -> None:
        self._abandon_upgrade(reason)
        if self.state is State.STOPPING:
            if not self._shutdown.terminating:  # once: repeating it must not postpone SIGKILL
                log.info("%s again: terminating the remaining requests now", reason)
                self._shutdown.terminate()
            return
        if not fast:
            self._take_the_queue()  # (while still RUNNING: as any accept)
        self.state = State.STOPPING  # RUNNING -> STOPPING
        systemd.notify("STOPPING=1")
        self._stop_watching()
        for mode in self.modes:
            mode.stop()  # prefork workers and fork servers finish what they have and exit
        for server in [*self.servers.values(), *self.draining]:
            self._refresh(server)
            self._release(server.listener)
            if not server.threads:  # else closed when the last thread is done
                server.close_handler_socket()
        self._shutdown.begin(reason, fast)

    def stopped(self) -> None:
        """Nothing left to wait for (shutdown.py): end the loop; but a supervisor that took
        over waits for the old one to finish its requests first (up to shutdown_timeout and
        twice kill_grace, the old one's own limit): a service manager kills what is left of
        the service once its main process exits (systemd's KillMode), the old one included."""
        if self._handed_to is not None:
            self._handed_to.final(self._counted().snapshot())
        if self._old_drain is not None:
            return  # (waiting already)
        takeover = self._takeover
        if takeover is not None and takeover.channel is not None:
            log.info(
                "waiting for the old supervisor (pid %s) to finish its requests",
                takeover.old.get("pid"),
            )
            settings = self.settings
            limit = settings.shutdown_timeout + 2 * settings.kill_grace
            self._old_drain = self.loop.call_later(limit, self._end)
            takeover.on_gone = self._end
            return
        self._end()

    def _end(self) -> None:
        if self.state is State.STOPPED:
            return
        if self._old_drain is not None:
            self._old_drain.cancel()
        self.state = State.STOPPED  # STOPPING -> STOPPED
        # A scrape or a status being answered (rendered over several turns) gets its answer.
        responders = [r for r in (self._control, self._metrics) if r is not None]
        after_answers(self.loop, responders, self.loop.stop)
