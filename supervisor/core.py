"""The supervisor: servers, children and signals around one loop.

States: STARTING -> RUNNING (every server bound and registered) -> STOPPING (SIGTERM/SIGINT:
listeners closed, children draining; SIGQUIT: children terminated at once) -> STOPPED (no child
left, or given up on). A reload (SIGHUP or the control socket) happens within RUNNING: it is
prepared completely first (reload.py), and only then switched over in one step of the loop.

Admission invariant: a server's socket is in the selector exactly when the supervisor is
RUNNING, the server is below its `max_children`, the global cap is not reached, and accept is not
backing off. A full server therefore waits in the kernel's listen queue while every other server
keeps serving; nothing ever blocks in `waitpid`.
"""

import contextlib
import enum
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from os import EX_SOFTWARE
from typing import Any, NoReturn

from supervisor import config, exposition, guards, logs, metrics, systemd
from supervisor.children import Child, ChildTable, ExitStatus, Reaped, SystemCalls
from supervisor.config import Mode
from supervisor.control import ControlServer
from supervisor.errors import SupervisorError, describe
from supervisor.exporter import HttpServer, Response
from supervisor.finished import Finished
from supervisor.forking import ForkServer, Handover, Usage, setup_for
from supervisor.forkserver import set_up_child
from supervisor.guards import RejectionLog, Source
from supervisor.loop import Loop, Timer
from supervisor.metrics import ReloadStats
from supervisor.prefork import Pool
from supervisor.readiness import ReadyPipe
from supervisor.reload import Prepared, prepare
from supervisor.server import Request, Server
from supervisor.signals import Intent, SignalWakeup, block_signals, set_signal_mask
from supervisor.sockets import TRANSIENT_ERRNOS, Listener

log = logging.getLogger("supervisor")

ACCEPT_BATCH = 16  # requests taken per readiness event, so one busy server cannot starve others
FORK_BATCH = 2  # the same for fork mode: each fork holds the loop for most of a millisecond
REJECT_BATCH = 4  # and for clients the guards turn away: each is ~15 us another server waits
ACCEPT_BACKOFF = 0.1  # seconds to stop accepting after EMFILE, ENFILE, ENOBUFS or ENOMEM
# Seconds to stop accepting after a request's process or thread could not be started (out of
# processes or memory): the first pause, doubled while they keep failing, up to the second.
START_FAILURE_PAUSE = (0.1, 5.0)
FORK_SERVER_RESTART = (1.0, 60.0)  # seconds before replacing a fork server that died: first, most


def exit_outcome(reaped: Reaped[Server]) -> str:
    """ok, error (non-zero exit), signal, or killed (by the supervisor; also a child that ran
    over its request_timeout, however it then ended)."""
    if reaped.child is not None and reaped.child.timed_out:
        return "killed"
    if reaped.status.ok:
        return "ok"
    if reaped.child is not None and reaped.child.signalled is not None:
        return "killed"
    return "signal" if reaped.status.signal is not None else "error"


def _freeze_for_fork(again: bool = False) -> None:
    """Move what the supervisor has built so far (modules, configuration, servers) out of the
    garbage collector's reach: a forked child's collections then never touch, and copy, those
    pages. Done at start and after each reload (`again`: the previous configuration's objects
    are let go first, so a reload's garbage can still be collected)."""
    if again:
        gc.unfreeze()
        gc.collect()
    gc.freeze()


def descriptor_runs(fds: Iterable[int]) -> list[tuple[int, int]]:
    """The descriptors as runs [low, high) of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for fd in sorted(fds):
        if runs and runs[-1][1] == fd:
            runs[-1] = (runs[-1][0], fd + 1)
        else:
            runs.append((fd, fd + 1))
    return runs


def close_runs(runs: list[tuple[int, int]], keep: set[int]) -> None:
    """Close every descriptor in the runs [low, high), but those in `keep`."""
    for low, high in runs:
        start = low
        for kept in sorted(fd for fd in keep if low <= fd < high):
            os.closerange(start, kept)
            start = kept + 1
        os.closerange(start, high)


def flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # (not contextlib.suppress: this runs on every fork, in parent and child)
            stream.flush()
        except (OSError, ValueError):
            continue


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ReloadResult:
    """The outcome of the last reload, for `supervisor reload`, `status` and systemd."""

    ok: bool
    message: str  # what changed, or the one-line error
    at: float  # time.time()
    exit_status: int = 0


class Supervisor:
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
            name: Server(server, prepared.handlers[name], prepared.listeners[name])
            for name, server in prepared.config.servers.items()
        }
        self.draining: set[Server] = set()  # removed by a reload, with requests still running
        self.spare = [listener for listener in spare if listener.inherited]  # unused, from systemd
        self.state = State.STARTING
        self.active = 0  # children and busy threads across all servers
        self.started = time.time()
        self.last_reload: ReloadResult | None = None
        self._signals: SignalWakeup | None = None
        self._control_socket = control_socket  # bound by the caller, served from run()
        self._control: ControlServer | None = None
        self._metrics_listener = metrics_listener
        self._metrics: HttpServer | None = None
        self.reload_stats = ReloadStats()
        self._stop_timer: Timer | None = None
        self._terminating = False  # SIGTERM sent to the children; SIGKILL is next
        self._killing = False  # SIGKILL sent: stop once the children are gone, threads or not
        # Connections being served by threads: a forked child must not keep them open.
        self._thread_requests: set[Request] = set()
        self.pools: dict[Server, Pool] = {}  # prefork servers' workers (also while draining)
        self._debug = log.isEnabledFor(logging.DEBUG)  # per request: cheaper than asking logging
        # What a forked child closes of the servers' sockets, as runs of descriptors; None when
        # a socket was opened or closed since (see _socket_runs).
        self._fd_runs: list[tuple[int, int]] | None = None
        # Fork servers (forking.py): the current one, and earlier ones finishing their children.
        self.fork_server: ForkServer | None = None
        self.fork_servers: list[ForkServer] = []
        self._fork_server_delay = FORK_SERVER_RESTART[0]
        self._unsent_fds: set[int] = set()  # a batch the fork server did not get, being forked
        self._stop_signal: int | None = None  # the last signal sent to all children
        self._parent_only_fds = tuple(parent_only_fds)  # closed in every child (the pidfile)
        self._readiness = readiness  # `run --daemon` waits for its word
        self._rejections = RejectionLog()
        # Children with a request_timeout (Child.deadline), and the timer for the earliest.
        self._timed: dict[int, Child[Server]] = {}
        self._deadline_timer: Timer | None = None
        # max_per_source: requests whose handler has returned (finished.py).
        self._finished = Finished()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit status."""
        self._signals = SignalWakeup(self.loop, self._on_intent)
        self.loop.add_reader(self._finished.read_fd, self._read_done)
        if self._control_socket is not None:
            self._control = ControlServer(self.loop, self._control_socket, self._on_command)
        if self._metrics_listener is not None:
            self._metrics = self._serve_metrics(self._metrics_listener)
        self.state = State.RUNNING  # STARTING -> RUNNING
        _freeze_for_fork()
        self._start_fork_server()
        for server in self.servers.values():
            self._refresh(server)
            self._log_listening(server)
            self._staff(server)
        for listener in self.spare:
            log.warning(
                "inherited socket %s (name %r) matches no server", listener.bound, listener.fd_name
            )
        log.info("ready: %d servers, pid %d", len(self.servers), os.getpid())
        systemd.notify(f"READY=1\nSTATUS={self._summary()}\nMAINPID={os.getpid()}")
        if self._readiness is not None:
            self._readiness.ready()
        self._start_watchdog()
        try:
            self.loop.run()
        finally:
            self._close()
        log.info("stopped")
        return 0

    def _log_listening(self, server: Server) -> None:
        limit = "" if server.mode is Mode.INLINE else f", max_children={server.config.max_children}"
        if server.mode is Mode.PREFORK:
            limit = f", workers={server.config.workers}{limit}"
        log.info(
            "%s: listening on %s (%s, handler %s%s)",
            server.name,
            server.listener.bound,
            server.mode,
            server.config.handler,
            limit,
        )

    def _close(self) -> None:
        for fork_server in self.fork_servers:
            fork_server.kill()
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
        self._finished.close()

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

    def _summary(self) -> str:
        """A one-line state for systemd's STATUS=."""
        text = f"{len(self.servers)} servers, {self.active} active requests"
        if self.last_reload is not None:
            outcome = "ok" if self.last_reload.ok else f"failed: {self.last_reload.message}"
            text += f"; last reload {outcome}"
        return " ".join(text.split())  # one line: a newline would start another sd_notify field

    def _start_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return

        def ping() -> None:
            systemd.notify(f"WATCHDOG=1\nSTATUS={self._summary()}")
            self.loop.call_later(interval, ping)

        ping()

    def _reopen_logs(self, reason: str = "SIGUSR1") -> None:
        log_file = self.config.supervisor.log_file
        if log_file is None:
            log.info("%s: no log_file configured, nothing to reopen", reason)
            return
        try:
            logs.reopen(log_file)
        except OSError as exc:
            log.error(
                "%s: cannot open %s (%s); still logging to the previous file",
                reason,
                log_file,
                exc.strerror or exc,
            )
            return
        log.info("%s: reopened %s", reason, log_file)
        for fork_server in self.fork_servers:
            fork_server.reopen_log()

    # -- reloading -----------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the configuration and switch to it, or change nothing if any step fails."""
        if self.state is not State.RUNNING:
            return ReloadResult(False, f"cannot reload while {self.state.value}", time.time(), 69)
        systemd.notify(systemd.reloading_message())
        log.info("reloading %s", self.config_path)
        current = {name: server.listener for name, server in self.servers.items()}
        try:
            prepared = prepare(self.config_path, current, self.spare, reloading=True)
        except SupervisorError as exc:
            self._reload_failed(str(exc), exc.exit_status)
        except Exception as exc:  # a bug, or input nobody foresaw: prepare() changed nothing
            self.loop.fault("reload")
            self._reload_failed(f"internal error ({describe(exc)}); see the log", EX_SOFTWARE)
        else:
            try:
                self._switch_to(prepared)
            except Exception as exc:  # a bug: the switch is made of steps that cannot fail
                self.loop.fault("reload")
                self._reload_failed(
                    f"internal error while switching ({describe(exc)}); some servers may run "
                    "the new configuration: see the log",
                    EX_SOFTWARE,
                    switching=True,
                )
        systemd.notify(f"READY=1\nSTATUS={self._summary()}")
        assert self.last_reload is not None  # noqa: S101 (both branches set it)
        return self.last_reload

    def _reload_failed(self, message: str, exit_status: int, switching: bool = False) -> None:
        if switching:
            log.error("reload failed: %s", message)
        else:
            log.error("reload failed, still running the previous configuration: %s", message)
        self.last_reload = ReloadResult(False, message, time.time(), exit_status)
        self.reload_stats.failures += 1
        self.reload_stats.last_ok = False

    def _switch_to(self, prepared: Prepared) -> None:
        """The second half of a reload: everything is ready, switch to it (see _switch)."""
        changes = config.diff(self.config, prepared.config)
        old_log = self.config.supervisor.log_file
        metrics_changed = prepared.config.metrics != self.config.metrics
        old_user = self.config.supervisor.credentials
        user_changed = prepared.config.supervisor.credentials != old_user
        self._switch(prepared)
        log.info("reloaded: %s", changes)
        if prepared.config.supervisor.log_file not in (old_log, None):
            self._reopen_logs("log_file changed")
        self.last_reload = ReloadResult(True, str(changes), time.time())
        self.reload_stats.successes += 1
        self.reload_stats.last_ok = True
        self.reload_stats.last_success = self.last_reload.at
        if metrics_changed:
            log.warning("metrics: changes to [metrics] apply at the next start")
        if user_changed:  # a process that dropped root cannot get it back
            log.warning(
                "supervisor.user: changes to [supervisor] user and group apply at the next start"
            )

    def _switch(self, prepared: Prepared) -> None:
        """Run the prepared configuration: one step, nothing in it can fail."""
        old = self.servers
        for server in old.values():
            self._unlisten(server)
        in_use = {id(listener) for listener in prepared.listeners.values()}
        servers = {}
        moved: list[str] = []  # new servers, and servers on a new socket
        for name, server_config in prepared.config.servers.items():
            handler, listener = prepared.handlers[name], prepared.listeners[name]
            existing = old.get(name)
            if existing is None:
                servers[name] = Server(server_config, handler, listener)
                moved.append(name)
                continue
            previous = existing.listener
            if previous is not listener:
                moved.append(name)
            existing.reconfigure(server_config, handler, listener)
            existing.close_old_sockets()
            if id(previous) not in in_use:
                self._release(previous)
            servers[name] = existing
        for name, server in old.items():
            if name not in servers:
                self._retire(server, released=id(server.listener) not in in_use)
        self.spare = [listener for listener in self.spare if id(listener) not in in_use]
        self.servers, self.config = servers, prepared.config
        self._fd_runs = None
        logs.set_level(prepared.config.supervisor.log_level)
        self._debug = log.isEnabledFor(logging.DEBUG)
        for server in servers.values():
            server.update_saturation()  # max_children or the mode may have changed
            self._refresh(server)
            self._retire_workers(server)
        for name in moved:
            self._log_listening(servers[name])
        _freeze_for_fork(again=True)
        self._start_fork_server()  # the new handlers, imported afresh; the old one drains
        for server in servers.values():
            self._staff(server)

    def _unlisten(self, server: Server) -> None:
        if server.listening:
            self.loop.remove_reader(server.listener.socket)
            server.listening = False

    def _retire(self, server: Server, released: bool) -> None:
        """A server the new configuration removes: stop accepting, let its requests finish."""
        server.retired = True
        if server in self.pools:
            self._close_pool(server)
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
        self._fd_runs = None
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

    # -- metrics ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.state is State.RUNNING

    def _serve_metrics(self, listener: Listener) -> HttpServer:
        collectors = metrics.collectors_for(self)
        rendered: dict[bool, tuple[int, bytes]] = {}  # format -> (loop turn, body)

        def scrape(accept: str) -> Response:
            for pool in self.pools.values():
                pool.collect_reports()  # what workers have written, even if not read yet
            openmetrics = exposition.wants_openmetrics(accept)
            content_type = exposition.OPENMETRICS if openmetrics else exposition.TEXT
            # Scrapes answered in one turn of the loop share one rendering: a flood of them
            # costs one render per turn, with every other server served in between.
            turn, body = rendered.get(openmetrics, (-1, b""))
            if turn != self.loop.turn:
                body = exposition.render(collectors, openmetrics)
                rendered[openmetrics] = (self.loop.turn, body)
            return Response(200, "OK", content_type, body)

        def health(accept: str) -> Response:
            down = [server.name for server in self.servers.values() if not server.up]
            ok = self.running and not down
            if ok:
                body = b"ok\n"
            elif not self.running:
                body = f"{self.state.value}\n".encode()
            else:
                body = f"down: {' '.join(down)}\n".encode()
            return Response(
                200 if ok else 503,
                "OK" if ok else "Service Unavailable",
                "text/plain; charset=utf-8",
                body,
            )

        log.info("metrics: listening on %s (/metrics, /healthz)", listener.bound)
        return HttpServer(self.loop, listener, {"/metrics": scrape, "/healthz": health})

    # -- control ---------------------------------------------------------------------------

    def _on_command(self, command: str) -> dict[str, Any]:
        if command == "status":
            return {"ok": True, **self.status()}
        if command == "reload":
            result = self.reload()
            return {"ok": result.ok, "message": result.message, "exit_status": result.exit_status}
        return {"ok": False, "error": f"unknown command {command!r}"}

    def status(self) -> dict[str, Any]:
        """The state a `supervisor status` shows: plain data, ready for JSON."""
        last = self.last_reload
        return {
            "pid": os.getpid(),
            "state": self.state.value,
            "config": self.config_path,
            "started": self.started,
            "active": self.active,
            "max_children": self.config.supervisor.max_children,
            "last_reload": None
            if last is None
            else {"ok": last.ok, "message": last.message, "at": last.at},
            "servers": [
                {
                    "name": server.name,
                    "address": str(server.listener.bound),
                    "mode": server.mode.value,
                    "active": server.active,
                    "max_children": server.config.max_children,
                    "requests": server.stats.requests,
                    "errors": server.stats.errors,
                    "rejected": sum(server.stats.rejected.values()),
                    "removed": server.retired,
                }
                for server in [*self.servers.values(), *self.draining]
            ],
            "children": [{"pid": child.pid, "server": child.owner.name} for child in self.children],
            "fork_servers": [fork_server.pid for fork_server in self.fork_servers],
        }

    # -- admission -------------------------------------------------------------------------

    def _global_full(self) -> bool:
        cap = self.config.supervisor.max_children
        return cap is not None and self.active >= cap

    def _refresh(self, server: Server) -> None:
        """Put the server's socket in the selector, or take it out, as the invariant says."""
        wanted = (
            self.state is State.RUNNING
            and server.mode is not Mode.PREFORK  # its workers accept, not the parent
            and not server.retired
            and server.has_capacity()
            and not server.backoff
            and not (server.mode is not Mode.INLINE and self._global_full())
        )
        if wanted == server.listening:
            return
        if wanted:
            self.loop.add_reader(server.listener.socket, partial(self._on_readable, server))
        else:
            self.loop.remove_reader(server.listener.socket)
        server.listening = wanted
        log.debug(
            "%s: %s (%d active)", server.name, "accepting" if wanted else "paused", server.active
        )

    def _count(self, server: Server, delta: int, source: Source = None) -> None:
        """Change the server's and the global active count, and re-apply admission; a request
        that ends (-1) no longer counts for its `source` either (guards.py)."""
        if source is not None:
            guards.release(server.sources, source)
        was_full = self._global_full()
        server.active += delta
        self.active += delta
        server.update_saturation()
        if was_full != self._global_full():
            for each in self.servers.values():
                self._refresh(each)
        else:
            self._refresh(server)
        if server.retired and not server.active:
            self.draining.discard(server)
            server.close_handler_socket()
            self._fd_runs = None
            log.info("%s: removed server drained", server.name)
        if self.state is State.STOPPING and (
            not self.active or (self._killing and not self._child_count())
        ):
            self._stopped()

    # -- requests --------------------------------------------------------------------------

    def _on_readable(self, server: Server) -> None:
        fork_server = self._fork_server_for(server) if server.accepts_fd else None
        try:
            self._accept_batch(server, fork_server)
        finally:
            if fork_server is not None:  # what _fork queued for it, in one message
                self._fork_unsent(fork_server.send_queued())

    def _fork_unsent(self, unsent: list[Handover]) -> None:
        """Fork here what the fork server could not be given; each child closes the other
        connections of the batch (_become_child), as it does what belongs to other servers."""
        self._unsent_fds = {handover.fd for handover in unsent}
        for handover in unsent:
            self._unsent_fds.discard(handover.fd)
            self._fork_here(handover.server, handover.fd, handover.client_address, handover.source)

    def _accept_batch(self, server: Server, fork_server: ForkServer | None) -> None:
        """Take up to ACCEPT_BATCH requests, FORK_BATCH of them at most if each is a fork
        here; rejected ones (guards.py) are closed at once and cost no fork."""
        forks_here = server.accepts_fd and fork_server is None
        admitted = rejected = 0
        for _ in range(ACCEPT_BATCH):
            if not server.listening or (forks_here and admitted >= FORK_BATCH):
                return
            request: Request | int
            try:
                if server.accepts_fd:  # fork, stream: only the child needs a socket object
                    request, client_address = server.accept_fd()
                else:
                    request, client_address = server.get_request()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                self._back_off(server, exc)
                return
            source: Source = None
            if server.guard is not None:
                reason, source = server.admit(
                    request, client_address, self._rejections, self._catch_up
                )
                if reason is not None:
                    rejected += 1
                    if rejected >= REJECT_BATCH:
                        return
                    continue
            admitted += 1
            self._dispatch(server, request, client_address, fork_server, source)

    def _back_off(self, server: Server, exc: OSError) -> None:
        log.warning(
            "%s: accept failed (%s); pausing it for %gs",
            server.name,
            exc.strerror or exc,
            ACCEPT_BACKOFF,
        )
        self._pause(server, ACCEPT_BACKOFF)

    def _pause(self, server: Server, delay: float) -> None:
        """Stop accepting on `server` for `delay` seconds (longer if it is paused already):
        new clients wait in its listen queue meanwhile."""
        until = time.monotonic() + delay
        if server.resume is not None:
            if server.resume.deadline >= until:
                return
            server.resume.cancel()
        server.resume = self.loop.call_later(delay, partial(self._resume, server))
        self._refresh(server)

    def _resume(self, server: Server) -> None:
        server.resume = None
        if server.start_failures:
            log.warning(
                "%s: %d more requests could not be started while it was paused; accepting again",
                server.name,
                server.start_failures,
            )
            server.start_failures = 0
        self._refresh(server)

    def _start_failed(self, server: Server, what: str, client_address: Any, reason: str) -> None:
        """A request's process or thread could not be started: its connection is closed, and
        the server stops accepting for a while (START_FAILURE_PAUSE), logged once per pause
        with a count, rather than accept and drop clients at full speed until the shortage
        passes."""
        server.stats.errors += 1
        if server.backoff:
            server.start_failures += 1  # (those already accepted or handed over)
            return
        delay = server.start_pause or START_FAILURE_PAUSE[0]
        server.start_pause = min(delay * 2, START_FAILURE_PAUSE[1])
        log.error(
            "%s: cannot start a %s for client %s (%s); connection closed, not accepting for %gs",
            server.name,
            what,
            client_address,
            reason,
            delay,
        )
        self._pause(server, delay)

    def _dispatch(
        self,
        server: Server,
        request: Request | int,
        client_address: Any,
        fork_server: ForkServer | None = None,
        source: Source = None,
    ) -> None:
        """Run one request as the server's mode says; `fork_server`: the one that takes this
        server's connections, if any (found once per accept batch); `source`: the client's,
        counted by the server's guard until the request is done."""
        server.stats.requests += 1
        if isinstance(request, int) or server.mode is Mode.FORK:  # (an int: a bare descriptor)
            self._count(server, +1)
            if fork_server is not None and isinstance(request, int):
                # Sent at the end of the accept batch (_on_readable), with the others.
                handover = Handover(server, request, client_address, time.monotonic(), source)
                fork_server.queue(handover)
            else:
                self._fork_here(server, request, client_address, source)
        elif server.mode is Mode.THREAD:
            self._count(server, +1)
            self._start_thread(server, request, client_address, source)
        else:
            started = time.monotonic()
            ok = server.handle(request, client_address)
            server.stats.handled(ok, time.monotonic() - started)
            guards.release(server.sources, source)  # (nothing else ran meanwhile)

    def _start_thread(
        self, server: Server, request: Request, client_address: Any, source: Source
    ) -> None:
        done = self._finished.for_thread(server, source)

        def run() -> None:
            ok, started = False, time.monotonic()
            try:
                ok = server.handle(request, client_address, done)
            finally:
                self._thread_requests.discard(request)
                duration = time.monotonic() - started
                self.loop.call_soon_threadsafe(partial(self._thread_done, server, ok, duration))

        if isinstance(request, socket.socket):
            self._thread_requests.add(request)
        server.threads += 1
        try:
            threading.Thread(target=run, name=f"{server.name}-request", daemon=True).start()
        except RuntimeError as exc:
            self._thread_requests.discard(request)
            server.threads -= 1
            server.close_request(request)
            self._start_failed(server, "thread", client_address, str(exc))
            self._count(server, -1, source)
            return
        if server.start_pause:  # threads start again: the next pause is a short one
            server.start_pause = 0.0

    def _thread_done(self, server: Server, ok: bool, duration: float) -> None:
        self._finished.release_threads()  # (its own source among them, if it has one)
        server.stats.handled(ok, duration)
        server.threads -= 1
        if not server.threads:
            closing = server.retired or self.state is not State.RUNNING
            if server.old_sockets or closing:
                self._fd_runs = None  # (sockets close below: the runs a child closes change)
            server.close_old_sockets()
            if closing:
                server.close_handler_socket()
        self._count(server, -1)

    def _fork_here(
        self, server: Server, request: Request | int, client_address: Any, source: Source = None
    ) -> None:
        """Fork the request's child from the supervisor itself."""

        def run() -> int:
            handled = server.socket_for(request) if isinstance(request, int) else request
            done = None if source is None else self._finished.child_done
            return 0 if server.handle(handled, client_address, done) else 1

        try:
            pid = self._spawn(server, run, source)
        except OSError as exc:
            server.close_request(request)
            self._start_failed(server, "process", client_address, exc.strerror or str(exc))
            self._count(server, -1, source)
            return
        if server.start_pause:  # forks work again: the next pause is a short one
            server.start_pause = 0.0
        self._watch(self.children.get(pid))
        server.close_request(request)

    def _spawn(self, server: Server, run: Callable[[], int], source: Source = None) -> int:
        """Fork a child of `server` that runs `run` and exits with its status; raise OSError
        if fork failed. The caller counts it."""
        # Signals stay blocked across fork() until the child has reset its handlers, so a
        # SIGTERM sent to a new child is never swallowed by the parent's no-op handler.
        runs = self._socket_runs()
        mask = block_signals()
        flush_standard_streams()  # or each child would write the parent's buffered output again
        try:
            child = partial(self._child, server, run, mask, runs)
            return self.children.spawn(server, child, source)
        finally:
            set_signal_mask(mask)

    def _child(
        self,
        server: Server,
        run: Callable[[], int],
        mask: set[int],
        runs: list[tuple[int, int]],
    ) -> NoReturn:
        """The forked child: run one request (or a prefork worker's loop) and leave with
        os._exit, whatever happens."""
        status = 1
        try:
            self._become_child(server, runs)
            set_signal_mask(mask)
            if server.child_setup is None or set_up_child(
                server.name, server.child_setup, lambda: log
            ):
                status = run()
        except BaseException:
            log.exception("%s: child %d failed outside its handler", server.name, os.getpid())
        finally:
            flush_standard_streams()
            os._exit(status)

    # -- prefork workers -------------------------------------------------------------------

    def _staff(self, server: Server) -> None:
        """Give a prefork server its workers (a new pool, or one reopened by a reload)."""
        if server.mode is not Mode.PREFORK or self.state is not State.RUNNING:
            return
        pool = self.pools.get(server)
        if pool is None:
            pool = self.pools[server] = Pool(server, self.loop, self._spawn_worker)
        pool.closed = False
        pool.fill()

    def _retire_workers(self, server: Server) -> None:
        """At a reload: the server's workers finish their request and exit; if it is still a
        prefork server, new ones (_staff) run the new code."""
        pool = self.pools.get(server)
        if pool is None:
            return
        if server.mode is Mode.PREFORK:
            pool.retire_all()
        else:
            self._close_pool(server)

    def _close_pool(self, server: Server) -> None:
        """Its workers finish their request and exit; the pool goes with the last of them."""
        self.pools[server].close()
        self._forget_pool(server)

    def _forget_pool(self, server: Server) -> None:
        """Drop a closed pool once its last worker is gone (the server left prefork mode, or
        was removed)."""
        pool = self.pools.get(server)
        if pool is not None and pool.closed and not pool.workers:
            del self.pools[server]

    def _spawn_worker(self, server: Server, run: Callable[[], int]) -> int | None:
        """A prefork worker, or None if fork failed (logged; the pool backs off)."""
        try:
            pid = self._spawn(server, run)
        except OSError as exc:
            log.error("%s: fork failed for a worker (%s)", server.name, exc.strerror or exc)
            return None
        self._count(server, +1)
        return pid

    def _socket_runs(self) -> list[tuple[int, int]]:
        """Every server's sockets (listeners, datagram handler sockets, replaced ones) and the
        spare listeners, as runs [low, high) of descriptor numbers, for a child to close with a
        few closerange() calls: walking the server objects instead would cost every child
        time and copied pages in proportion to the number of servers. Computed in the parent
        when first needed after a change (every place that opens or closes one of those
        sockets forgets the last result)."""
        if self._fd_runs is None:
            servers = [*self.servers.values(), *self.draining]
            fds = {fd for server in servers for fd in server.own_descriptors()}
            fds |= {listener.socket.fileno() for listener in self.spare}
            self._fd_runs = descriptor_runs(fds - {-1})
        return self._fd_runs

    def _become_child(self, server: Server, runs: list[tuple[int, int]]) -> None:
        """Drop what belongs to the parent: signal routing, the loop, other listening sockets."""
        if self._signals is not None:
            self._signals.reset_in_child()
        self.loop.close_in_child()
        if self._control is not None:
            self._control.close_in_child()
        if self._metrics is not None:
            self._metrics.close_in_child()
        # Other servers' sockets by number (no handler can reach their objects); this one's
        # through its objects, which the handler sees as self.server.
        close_runs(runs, keep=server.own_descriptors())
        server.close_in_child(keep_listener=server.mode is Mode.PREFORK)
        for pool in self.pools.values():
            pool.close_in_child()
        for fork_server in self.fork_servers:
            fork_server.close_in_child()
        if self._readiness is not None:
            self._readiness.close_in_child()
        for fd in (*self._unsent_fds, *self._parent_only_fds):
            os.close(fd)
        self._finished.close_in_child()
        for request in list(self._thread_requests):
            if isinstance(request, socket.socket):
                # os.close: socket.close() waits for the handler thread's makefile() objects.
                with contextlib.suppress(OSError):
                    os.close(request.fileno())

    # -- max_per_source: requests done before their process or thread ---------------------

    def _catch_up(self) -> None:
        """Before a client is turned away for max_per_source: note the requests whose handler
        has returned, which the loop has not read about yet (a client that waited for its
        answer and connects again must never be refused because its last request is still
        finishing)."""
        self._read_done()
        self._finished.release_threads()

    def _read_done(self) -> None:
        for forker, seq, pid in self._finished.records():
            self._request_done(forker, seq, pid)

    def _request_done(self, forker: int, seq: int, pid: int) -> None:
        """Child `pid` (forked by fork server `forker` for its request `seq`, or by us when
        `forker` is 0) has finished its handler: its request stops counting for its source.
        Its pid may not have reached us yet: then its handover still holds the source."""
        for fork_server in self.fork_servers if forker else ():
            handover = fork_server.pending.get(seq) if fork_server.pid == forker else None
            if handover is not None:
                guards.release(handover.server.sources, handover.source)
                handover.source = None
                return
        child = self.children.get(pid)
        if child is not None and child.source is not None:
            guards.release(child.owner.sources, child.source)
            child.source = None

    # -- reaping ---------------------------------------------------------------------------

    def _reap(self) -> None:
        # Fork servers first: an unreaped one would head the queue the child table reads.
        for fork_server in list(self.fork_servers):
            if fork_server.reap() and fork_server.gone:
                self.fork_servers.remove(fork_server)
        for reaped in self.children.reap():
            self._reaped(reaped)

    def _reaped(self, reaped: Reaped[Server]) -> None:
        """A child exited: reaped here, or by the fork server that forked it."""
        if reaped.child is None:
            log.debug("reaped pid %d, not a child of ours: %s", reaped.pid, reaped.status)
            return
        server = reaped.child.owner
        pool = self.pools.get(server)
        is_worker = pool is not None and reaped.pid in pool.workers
        self._log_exit(reaped.child, reaped)
        self._timed.pop(reaped.pid, None)
        outcome = exit_outcome(reaped)
        server.stats.child_exited(outcome, reaped.rusage, None if is_worker else reaped.duration)
        if outcome in ("error", "signal") and not is_worker:
            server.stats.errors += 1  # (a worker's death is in the exits metric only)
        self._count(server, -1, reaped.child.source)
        if is_worker:
            assert pool is not None  # noqa: S101 (for mypy: is_worker says so)
            pool.exited(reaped.pid, reaped.status.ok)
            self._forget_pool(server)

    # -- the fork server (forking.py) ------------------------------------------------------

    def _fork_server_for(self, server: Server) -> ForkServer | None:
        fork_server = self.fork_server
        if fork_server is not None and fork_server.serves(server.name):
            return fork_server
        return None

    def _start_fork_server(self) -> None:
        """Start a fork server for the current configuration's fork-mode stream servers; the
        previous one, if any, takes no more requests and exits once its children are done.
        Until the new one is ready, the supervisor forks their requests itself."""
        if self.fork_server is not None:
            self.fork_server.close()
            self.fork_server = None
        servers = [server for server in self.servers.values() if server.accepts_fd]
        if not servers or not self.config.supervisor.fork_server or not self.running:
            return
        setup = setup_for(servers, logs.LOG_FORMAT, self.config.supervisor.log_level)
        try:
            self.fork_server = ForkServer(self.loop, self, setup, self._finished.write_fd)
        except OSError as exc:
            log.warning(
                "cannot start the fork server (%s: %s); the supervisor forks requests itself",
                exc.strerror or exc,
                sys.executable,  # (after a drop of privileges: one its user may not run)
            )
            self._restart_fork_server_later()
            return
        self.fork_servers.append(self.fork_server)

    def _restart_fork_server_later(self) -> None:
        delay = self._fork_server_delay
        self._fork_server_delay = min(delay * 2, FORK_SERVER_RESTART[1])

        def restart() -> None:
            if self.fork_server is None:
                self._start_fork_server()

        self.loop.call_later(delay, restart)

    def forked(self, handover: Handover, pid: int) -> None:
        if handover.server.start_pause:  # forks work again: the next pause is a short one
            handover.server.start_pause = 0.0
        child = self.children.adopt(pid, handover.server, handover.started, handover.source)
        # Handed over before a stop signal went out through its fork server: it got one.
        child.signalled = self._stop_signal
        self._watch(child)

    def fork_failed(self, handover: Handover, reason: str, shortage: bool) -> None:
        owner = handover.server
        if shortage:  # (fork() failed: out of processes or memory)
            self._start_failed(owner, "process", handover.client_address, reason)
        else:
            log.error(
                "%s: not forked for client %s (%s); connection closed",
                owner.name,
                handover.client_address,
                reason,
            )
            owner.stats.errors += 1
        self._count(owner, -1, handover.source)

    def exited(self, pid: int, status: ExitStatus, usage: Usage) -> None:
        self._reaped(self.children.release(pid, status, usage))

    def lost(self, pid: int) -> None:
        reaped = self.children.release(pid, ExitStatus(), None)
        self._timed.pop(pid, None)
        if reaped.child is not None:
            self._count(reaped.child.owner, -1, reaped.child.source)

    def lost_request(self, handover: Handover) -> None:
        self._count(handover.server, -1, handover.source)

    def fork_server_gone(self, fork_server: ForkServer) -> None:
        if fork_server is not self.fork_server:
            return  # a closed one, done
        self.fork_server = None
        if fork_server.serving:
            self._fork_server_delay = FORK_SERVER_RESTART[0]  # it had worked: not a start loop
        if self.running:
            log.warning(
                "fork server %d gone; starting another in %gs",
                fork_server.pid,
                self._fork_server_delay,
            )
            self._restart_fork_server_later()

    def _log_exit(self, child: Child[Server], reaped: Reaped[Server]) -> None:
        server, status = child.owner, reaped.status
        if status.ok and not child.timed_out:
            if not self._debug:  # the common case: no logging call at all
                return
            level = logging.DEBUG
        elif child.signalled is not None and not child.timed_out:
            level = logging.INFO  # we sent it at shutdown
        else:
            level = logging.WARNING
        log.log(
            level,
            "%s: child %d %s after %.3fs%s",
            server.name,
            reaped.pid,
            status,
            reaped.duration,
            " (request_timeout)" if child.timed_out else "",
        )

    # -- request_timeout -------------------------------------------------------------------

    def _watch(self, child: Child[Server] | None) -> None:
        """Give a fork-mode request's child its request_timeout deadline."""
        if child is None:
            return
        timeout = child.owner.config.limits.request_timeout
        if not timeout:
            return
        child.deadline = child.started + timeout
        self._timed[child.pid] = child
        self._deadline_at(child.deadline)

    def _deadline_at(self, deadline: float) -> None:
        """Make sure the deadline timer fires by `deadline` (deadlines mostly come in
        increasing order: the timer is rarely moved)."""
        timer = self._deadline_timer
        if timer is not None and timer.deadline <= deadline:
            return
        if timer is not None:
            timer.cancel()
        delay = max(0.0, deadline - time.monotonic())
        self._deadline_timer = self.loop.call_later(delay, self._deadlines_due)

    def _deadlines_due(self) -> None:
        """Act on every deadline passed: SIGTERM at request_timeout, SIGKILL kill_grace later;
        then wait for the next one (a scan of the live watched children, once per expiry)."""
        self._deadline_timer = None
        now = time.monotonic()
        for child in list(self._timed.values()):
            if child.deadline <= now:
                self._time_out(child, now)
        if self._timed:
            self._deadline_at(min(child.deadline for child in self._timed.values()))

    def _time_out(self, child: Child[Server], now: float) -> None:
        name, timeout = child.owner.name, child.owner.config.limits.request_timeout
        if child.signalled is not None and not child.timed_out:
            del self._timed[child.pid]  # a stop signalled it first: the stop sees it through
            return
        if not child.timed_out:
            child.timed_out = True
            child.signalled = signal.SIGTERM
            child.deadline = now + self.config.supervisor.kill_grace
            log.warning(
                "%s: child %d ran over request_timeout (%gs) after %.3fs; sent SIGTERM",
                name,
                child.pid,
                timeout,
                now - child.started,
            )
            self._signal_child(child, signal.SIGTERM)
            return
        del self._timed[child.pid]
        child.signalled = signal.SIGKILL
        log.warning(
            "%s: child %d still running %.3fs after request_timeout; sent SIGKILL",
            name,
            child.pid,
            now - child.started,
        )
        self._signal_child(child, signal.SIGKILL)

    def _signal_child(self, child: Child[Server], signum: int) -> None:
        """Signal one live child: through the fork server that forked it (which knows whether
        the pid is still its child), else directly (not reaped yet: still ours)."""
        if child.adopted:
            for fork_server in self.fork_servers:
                if child.pid in fork_server.pids:
                    fork_server.signal_child(child.pid, signum)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    # -- stopping --------------------------------------------------------------------------

    def _stop(self, reason: str, fast: bool = False) -> None:
        if self.state is State.STOPPING:
            if not self._terminating:  # once: repeating it must not postpone SIGKILL
                log.info("%s again: terminating the remaining requests now", reason)
                self._terminate()
            return
        self.state = State.STOPPING  # RUNNING -> STOPPING
        systemd.notify("STOPPING=1")
        for pool in self.pools.values():
            pool.close()  # workers finish their request and exit
        for fork_server in self.fork_servers:
            fork_server.close()  # the same for the fork servers' children
        for server in [*self.servers.values(), *self.draining]:
            self._refresh(server)
            self._release(server.listener)  # (which forgets _fd_runs)
            if not server.threads:  # else closed when the last thread is done
                server.close_handler_socket()
        timeout = 0.0 if fast else self.config.supervisor.shutdown_timeout
        workers = sum(len(pool.workers) for pool in self.pools.values())
        log.info(
            "%s: stopping; %d requests in progress%s, waiting up to %gs for them",
            reason,
            self.active - workers,
            f", {workers} prefork workers finishing theirs" if workers else "",
            timeout,
        )
        if not self.active:
            self._stopped()
        elif fast:
            self._terminate()
        else:
            self._stop_timer = self.loop.call_later(timeout, self._terminate)

    def _signal_children(self, signum: int) -> int:
        """Signal every child: ours by pid, and through each fork server all of its own,
        those whose pids have not reached us yet too."""
        self._stop_signal = signum
        for fork_server in self.fork_servers:
            fork_server.signal_children(signum)
        return self.children.signal_all(signum) + self._handed_over()

    def _handed_over(self) -> int:
        """Connections given to a fork server whose child's pid has not come back yet."""
        return sum(len(fork_server.pending) for fork_server in self.fork_servers)

    def _child_count(self) -> int:
        """Children alive or about to be: in the table, or handed to a fork server."""
        return len(self.children) + self._handed_over()

    def _terminate(self) -> None:
        self._terminating = True
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        sent = self._signal_children(signal.SIGTERM)
        log.warning("sent SIGTERM to %d children still running", sent)
        self._stop_timer = self.loop.call_later(self.config.supervisor.kill_grace, self._kill)

    def _kill(self) -> None:
        self._killing = True
        sent = self._signal_children(signal.SIGKILL)
        if sent:
            log.warning("sent SIGKILL to %d children that outlived SIGTERM", sent)
        threads = self.active - self._child_count()
        if threads:
            log.warning("abandoning %d request threads still running", threads)
        # Children killed with SIGKILL are reaped at once, and the supervisor stops as soon as
        # the last one is (_count); it gives up on a child stuck in the kernel after kill_grace.
        self._stop_timer = self.loop.call_later(self.config.supervisor.kill_grace, self._stopped)
        if not self._child_count():
            self._stopped()

    def _stopped(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self.state = State.STOPPED  # STOPPING -> STOPPED
        self.loop.stop()
