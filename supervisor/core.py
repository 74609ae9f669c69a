"""The supervisor: servers, children and signals around one loop.

States: STARTING -> RUNNING (every server bound and registered) -> STOPPING (SIGTERM/SIGINT:
listeners closed, children draining) -> STOPPED (no child left, or given up on).

Admission invariant: a server's socket is in the selector exactly when the supervisor is
RUNNING, the server is below its `max_children`, the global cap is not reached, and accept is not
backing off. A full server therefore waits in the kernel's listen queue while every other server
keeps serving; nothing ever blocks in `waitpid`.
"""

import contextlib
import enum
import errno
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from functools import partial
from typing import Any, NoReturn

from supervisor.children import Child, ChildTable, Reaped, SystemCalls
from supervisor.config import Config, Mode
from supervisor.handlers import HandlerClass
from supervisor.loop import Loop, Timer
from supervisor.server import Request, Server
from supervisor.signals import INTENTS, Intent, SignalWakeup
from supervisor.sockets import Listener

log = logging.getLogger("supervisor")

ACCEPT_BATCH = 16  # requests taken per readiness event, so one busy server cannot starve others
ACCEPT_BACKOFF = 0.1  # seconds to stop accepting after EMFILE, ENFILE, ENOBUFS or ENOMEM
# accept() reports these for the connection at hand, not the listener: drop it and go on.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.EPERM,
    }
)


def flush_standard_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Supervisor:
    """Hosts the configured servers until told to stop."""

    def __init__(
        self,
        config: Config,
        handlers: Mapping[str, HandlerClass],
        listeners: Mapping[str, Listener],
        calls: SystemCalls | None = None,
    ) -> None:
        self.config = config
        self.loop = Loop()
        # As PID 1 (in a container) orphans are re-parented to us: reap them too.
        self.children: ChildTable[Server] = ChildTable(
            calls or SystemCalls(), reap_strangers=os.getpid() == 1
        )
        self.servers = {
            name: Server(server, handlers[name], listeners[name])
            for name, server in config.servers.items()
        }
        self.state = State.STARTING
        self.active = 0  # children and busy threads across all servers
        self._signals: SignalWakeup | None = None
        self._stop_timer: Timer | None = None
        self._terminating = False  # SIGTERM sent to the children; SIGKILL is next
        # Connections being served by threads: a forked child must not keep them open.
        self._thread_requests: set[Request] = set()

    # -- running ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped; return the exit status."""
        self._signals = SignalWakeup(self.loop, self._on_intent)
        self.state = State.RUNNING  # STARTING -> RUNNING
        for server in self.servers.values():
            self._refresh(server)
            limit = (
                "" if server.mode is Mode.INLINE else f", max_children={server.config.max_children}"
            )
            log.info(
                "%s: listening on %s (%s, handler %s%s)",
                server.name,
                server.listener.bound,
                server.mode,
                server.config.handler,
                limit,
            )
        log.info("ready: %d servers, pid %d", len(self.servers), os.getpid())
        try:
            self.loop.run()
        finally:
            self._close()
        log.info("stopped")
        return 0

    def _close(self) -> None:
        for server in self.servers.values():
            server.server_close()
        if self._signals is not None:
            self._signals.close()
        self.loop.close()

    def _on_intent(self, intent: Intent, signum: int) -> None:
        if intent is Intent.REAP:
            self._reap()
        elif intent is Intent.STOP:
            self._stop(signal.Signals(signum).name)

    # -- admission -------------------------------------------------------------------------

    def _global_full(self) -> bool:
        cap = self.config.supervisor.max_children
        return cap is not None and self.active >= cap

    def _refresh(self, server: Server) -> None:
        """Put the server's socket in the selector, or take it out, as the invariant says."""
        wanted = (
            self.state is State.RUNNING
            and server.has_capacity()
            and not server.backoff
            and not (server.mode is not Mode.INLINE and self._global_full())
        )
        if wanted == server.listening:
            return
        if wanted:
            self.loop.add_reader(server.socket, partial(self._on_readable, server))
        else:
            self.loop.remove_reader(server.socket)
        server.listening = wanted
        log.debug(
            "%s: %s (%d active)", server.name, "accepting" if wanted else "paused", server.active
        )

    def _count(self, server: Server, delta: int) -> None:
        """Change the server's and the global active count, and re-apply admission."""
        was_full = self._global_full()
        server.active += delta
        self.active += delta
        if was_full != self._global_full():
            for each in self.servers.values():
                self._refresh(each)
        else:
            self._refresh(server)
        if self.state is State.STOPPING and not self.active:
            self._stopped()

    # -- requests --------------------------------------------------------------------------

    def _on_readable(self, server: Server) -> None:
        for _ in range(ACCEPT_BATCH):
            if not server.listening:
                return
            try:
                request, client_address = server.get_request()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                self._back_off(server, exc)
                return
            self._dispatch(server, request, client_address)

    def _back_off(self, server: Server, exc: OSError) -> None:
        log.warning(
            "%s: accept failed (%s); pausing it for %gs",
            server.name,
            exc.strerror or exc,
            ACCEPT_BACKOFF,
        )
        server.backoff = True
        self._refresh(server)

        def resume() -> None:
            server.backoff = False
            self._refresh(server)

        self.loop.call_later(ACCEPT_BACKOFF, resume)

    def _dispatch(self, server: Server, request: Request, client_address: Any) -> None:
        if server.mode is Mode.INLINE:
            server.handle(request, client_address)
            return
        self._count(server, +1)
        if server.mode is Mode.THREAD:
            self._start_thread(server, request, client_address)
        else:
            self._fork(server, request, client_address)

    def _start_thread(self, server: Server, request: Request, client_address: Any) -> None:
        def run() -> None:
            try:
                server.handle(request, client_address)
            finally:
                self._thread_requests.discard(request)
                self.loop.call_soon_threadsafe(partial(self._count, server, -1))

        if isinstance(request, socket.socket):
            self._thread_requests.add(request)
        try:
            threading.Thread(target=run, name=f"{server.name}-request", daemon=True).start()
        except RuntimeError as exc:
            self._thread_requests.discard(request)
            log.error(
                "%s: cannot start a thread for client %s (%s); connection closed",
                server.name,
                client_address,
                exc,
            )
            server.close_request(request)
            self._count(server, -1)

    def _fork(self, server: Server, request: Request, client_address: Any) -> None:
        # Signals stay blocked across fork() until the child has reset its handlers, so a
        # SIGTERM sent to a new child is never swallowed by the parent's no-op handler.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, INTENTS)
        flush_standard_streams()  # or each child would write the parent's buffered output again
        try:
            child = partial(self._child, server, request, client_address, mask)
            self.children.spawn(server, child)
        except OSError as exc:
            log.error(
                "%s: fork failed for client %s (%s); connection closed",
                server.name,
                client_address,
                exc.strerror or exc,
            )
            self._count(server, -1)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        server.close_request(request)

    def _child(
        self, server: Server, request: Request, client_address: Any, mask: set[int | signal.Signals]
    ) -> NoReturn:
        """The forked child: run one request and leave with os._exit, whatever happens."""
        status = 1
        try:
            self._become_child(server)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            status = 0 if server.handle(request, client_address) else 1
        finally:
            flush_standard_streams()
            os._exit(status)

    def _become_child(self, server: Server) -> None:
        """Drop what belongs to the parent: signal routing, the loop, other listening sockets."""
        if self._signals is not None:
            self._signals.close()
            self._signals.restore_defaults()
        # A terminal's Ctrl-C reaches the whole process group: let the parent drain children.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.loop.close()
        for other in self.servers.values():
            other.close_in_child(keep_handler_socket=other is server)
        for request in list(self._thread_requests):
            if isinstance(request, socket.socket):
                # os.close: socket.close() waits for the handler thread's makefile() objects.
                with contextlib.suppress(OSError):
                    os.close(request.fileno())

    # -- reaping ---------------------------------------------------------------------------

    def _reap(self) -> None:
        for reaped in self.children.reap():
            if reaped.child is None:
                log.debug("reaped pid %d, not a child of ours: %s", reaped.pid, reaped.status)
                continue
            self._log_exit(reaped.child, reaped)
            self._count(reaped.child.owner, -1)

    def _log_exit(self, child: Child[Server], reaped: Reaped[Server]) -> None:
        server, status = child.owner, reaped.status
        if status.ok:
            level = logging.DEBUG
        elif child.signalled is not None:
            level = logging.INFO  # we sent it at shutdown
        else:
            level = logging.WARNING
        log.log(
            level, "%s: child %d %s after %.3fs", server.name, reaped.pid, status, reaped.duration
        )

    # -- stopping --------------------------------------------------------------------------

    def _stop(self, reason: str) -> None:
        if self.state is State.STOPPING:
            if not self._terminating:  # once: repeating it must not postpone SIGKILL
                log.info("%s again: terminating the remaining requests now", reason)
                self._terminate()
            return
        self.state = State.STOPPING  # RUNNING -> STOPPING
        for server in self.servers.values():
            self._refresh(server)
            server.server_close()
        timeout = self.config.supervisor.shutdown_timeout
        log.info(
            "%s: stopping; %d requests in progress, waiting up to %gs for them",
            reason,
            self.active,
            timeout,
        )
        if not self.active:
            self._stopped()
            return
        self._stop_timer = self.loop.call_later(timeout, self._terminate)

    def _terminate(self) -> None:
        self._terminating = True
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        sent = self.children.signal_all(signal.SIGTERM)
        log.warning("sent SIGTERM to %d children still running", sent)
        self._stop_timer = self.loop.call_later(self.config.supervisor.kill_grace, self._kill)

    def _kill(self) -> None:
        sent = self.children.signal_all(signal.SIGKILL)
        if sent:
            log.warning("sent SIGKILL to %d children that outlived SIGTERM", sent)
        threads = self.active - len(self.children)
        if threads:
            log.warning("abandoning %d request threads still running", threads)
        # Children killed with SIGKILL are reaped at once; give up on anything stuck beyond that.
        self._stop_timer = self.loop.call_later(self.config.supervisor.kill_grace, self._stopped)
        if not len(self.children):
            self._stopped()

    def _stopped(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.cancel()
        self.state = State.STOPPED  # STOPPING -> STOPPED
        self.loop.stop()
