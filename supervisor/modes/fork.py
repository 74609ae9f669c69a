"""Fork mode: a child process per request, as socketserver's ForkingMixIn, without its stalls.

A stream server's connections are accepted as bare descriptors and handed, one accept batch
per message, to the fork server (forking.py), a small process that forks them cheaply; its
children are adopted into the child table, so max_children, stop, status and metrics see them
as the supervisor's own. Until a fork server is ready, for the servers it cannot import, for a
batch it could not be given, and for datagram servers, the supervisor forks the request itself
(spawn.py): a stream server's accept batch then takes at most FORK_BATCH requests (each fork
holds the loop for most of a millisecond). A fork server is started at start and after every
reload (the new handlers); the previous one takes no more requests and exits once its children
are done; one that dies is replaced after a back-off (FORK_SERVER_RESTART).

Children are counted from admission to exit. max_per_source stops counting a request when its
handler has returned (finished.py's DONE records), request_timeout is deadlines.py's.
"""

import contextlib
import logging
import os
import sys
import time
from typing import Any

from supervisor import guards, logs
from supervisor.children import Child, ExitStatus, Reaped
from supervisor.finished import DonePipe
from supervisor.forking import ForkServer, Handover, Usage, setup_for
from supervisor.guards import Source
from supervisor.modes.base import ACCEPT_BATCH, Host, Mode, account_exit
from supervisor.modes.deadlines import Deadlines
from supervisor.server import Request, Server

log = logging.getLogger("supervisor")

FORK_BATCH = 2  # requests forked here per accept batch: each holds the loop for most of a ms
FORK_SERVER_RESTART = (1.0, 60.0)  # seconds before replacing a fork server that died: first, most


class Fork(Mode):
    """Fork a child per request: through the fork server, or here."""

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        # The current fork server, and all of them (earlier ones finishing their children).
        self.fork_server: ForkServer | None = None
        self.fork_servers: list[ForkServer] = []
        self._restart_delay = FORK_SERVER_RESTART[0]
        self._streams: list[Server] = []  # the stream servers a fork server is for
        self._batch_to: ForkServer | None = None  # the one taking this accept batch, if any
        self._unsent_fds: set[int] = set()  # a batch the fork server did not get, being forked
        self._stop_signal: int | None = None  # the last signal sent to all children
        self._done = DonePipe()
        self._deadlines = Deadlines(host.loop, lambda: host.settings.kill_grace, self._signal_child)
        host.loop.add_reader(self._done.read_fd, self.catch_up)
        host.spawner.on_child(self._close_in_child)

    # -- requests --------------------------------------------------------------------------

    def bare(self, server: Server) -> bool:
        # Only the child needs a socket object, and the fork server forks it; but a hosted
        # server whose own hooks run in the forking process (verify_request, service_actions)
        # is forked here, from the object those hooks ran on, as ForkingMixIn does.
        return server.config.address.is_stream and not (server.verifies or server.services)

    def batch(self, server: Server) -> int:
        fork_server = self.fork_server
        if fork_server is not None and fork_server.serves(server.name):
            self._batch_to = fork_server
            return ACCEPT_BATCH
        self._batch_to = None
        return FORK_BATCH if server.config.address.is_stream else ACCEPT_BATCH

    def take(
        self, server: Server, request: Request | int, client_address: Any, source: Source
    ) -> None:
        self.host.count(server, +1)
        if self._batch_to is not None and isinstance(request, int):
            # Sent at the end of the accept batch (batch_done), with the others.
            self._batch_to.queue(
                Handover(server, request, client_address, time.monotonic(), source)
            )
        else:
            self._fork_here(server, request, client_address, source)

    def batch_done(self, server: Server) -> None:
        """Hand the batch over in one message; fork here what the fork server could not be
        given (each child closes the other connections of the batch, see _close_in_child)."""
        if self._batch_to is None:
            return
        unsent = self._batch_to.send_queued()
        self._batch_to = None
        self._unsent_fds = {handover.fd for handover in unsent}
        for handover in unsent:
            self._unsent_fds.discard(handover.fd)
            self._fork_here(handover.server, handover.fd, handover.client_address, handover.source)

    def _fork_here(
        self, server: Server, request: Request | int, client_address: Any, source: Source = None
    ) -> None:
        """Fork the request's child from the supervisor itself."""

        def run() -> int:
            handled = server.socket_for(request) if isinstance(request, int) else request
            done = None if source is None else self._done.child_done
            return 0 if server.handle(handled, client_address, done) else 1

        try:
            pid = self.host.spawner.spawn(server, run, keeper=self, source=source)
        except OSError as exc:
            server.close_request(request)
            self.host.start_failed(server, "process", client_address, exc.strerror or str(exc))
            self.host.count(server, -1, source)
            return
        if server.start_pause:  # forks work again: the next pause is a short one
            server.start_pause = 0.0
        self._deadlines.watch(self.host.children.get(pid))
        server.close_request(request)

    def child_exited(self, reaped: Reaped[Server]) -> None:
        assert reaped.child is not None  # noqa: S101 (the supervisor's own children only)
        self._deadlines.forget(reaped.pid)
        account_exit(self.host, reaped.child, reaped, self.debug, request=True)

    # -- max_per_source: requests done before their process --------------------------------

    def catch_up(self) -> None:
        for forker, seq, pid in self._done.records():
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
        child = self.host.children.get(pid)
        if child is not None and child.source is not None:
            guards.release(child.owner.sources, child.source)
            child.source = None

    # -- the fork servers ------------------------------------------------------------------

    def start(self, servers: list[Server]) -> None:
        """Start a fork server for the stream servers; the previous one, if any, takes no more
        requests and exits once its children are done. Until the new one is ready, the
        supervisor forks their requests itself."""
        super().start(servers)
        self._streams = [server for server in servers if self.bare(server)]
        self._start_fork_server()

    def _start_fork_server(self) -> None:
        if self.fork_server is not None:
            self.fork_server.close()
            self.fork_server = None
        settings = self.host.settings
        if not self._streams or not settings.fork_server or not self.host.running:
            return
        setup = setup_for(
            self._streams,
            logs.LOG_FORMAT,
            settings.log_level,
            logs.journal_pid(),
            logs.log_json(),
        )
        try:
            self.fork_server = ForkServer(self.host.loop, self, setup, self._done.write_fd)
        except OSError as exc:
            log.warning(
                "cannot start the fork server (%s: %s); the supervisor forks requests itself",
                exc.strerror or exc,
                sys.executable,  # (after a drop of privileges: one its user may not run)
            )
            self._restart_later()
            return
        self.fork_servers.append(self.fork_server)

    def _restart_later(self) -> None:
        delay = self._restart_delay
        self._restart_delay = min(delay * 2, FORK_SERVER_RESTART[1])

        def restart() -> None:
            if self.fork_server is None:
                self._start_fork_server()

        self.host.loop.call_later(delay, restart)

    def helpers(self) -> list[int]:
        return [fork_server.pid for fork_server in self.fork_servers]

    def reap(self) -> None:
        # Fork servers first: an unreaped one would head the queue the child table reads.
        for fork_server in list(self.fork_servers):
            if fork_server.reap() and fork_server.gone:
                self.fork_servers.remove(fork_server)

    def logs_reopened(self) -> None:
        for fork_server in self.fork_servers:
            fork_server.reopen_log()

    # forking.Events: what the fork servers report

    def forked(self, handover: Handover, pid: int) -> None:
        if handover.server.start_pause:  # forks work again: the next pause is a short one
            handover.server.start_pause = 0.0
        children = self.host.children
        child = children.adopt(pid, handover.server, handover.started, handover.source, self)
        # Handed over before a stop signal went out through its fork server: it got one.
        child.signalled = self._stop_signal
        self._deadlines.watch(child)

    def fork_failed(self, handover: Handover, reason: str, shortage: bool) -> None:
        owner = handover.server
        if shortage:  # (fork() failed: out of processes or memory)
            self.host.start_failed(owner, "process", handover.client_address, reason)
        else:
            log.error(
                "%s: not forked for client %s (%s); connection closed",
                owner.name,
                handover.client_address,
                reason,
                extra=logs.about(owner.name, handover.client_address),
            )
            owner.stats.errors += 1
        self.host.count(owner, -1, handover.source)

    def exited(self, pid: int, status: ExitStatus, usage: Usage) -> None:
        reaped = self.host.children.release(pid, status, usage)
        if reaped.child is None:
            log.debug("reaped pid %d, not a child of ours: %s", pid, status)
        else:
            self.child_exited(reaped)

    def lost(self, pid: int) -> None:
        reaped = self.host.children.release(pid, ExitStatus(), None)
        self._deadlines.forget(pid)
        if reaped.child is not None:
            self.host.count(reaped.child.owner, -1, reaped.child.source)

    def lost_request(self, handover: Handover) -> None:
        self.host.count(handover.server, -1, handover.source)

    def fork_server_gone(self, fork_server: ForkServer) -> None:
        if fork_server is not self.fork_server:
            return  # a closed one, done
        self.fork_server = None
        if fork_server.serving:
            self._restart_delay = FORK_SERVER_RESTART[0]  # it had worked: not a start loop
        if self.host.running:
            log.warning(
                "fork server %d gone; starting another in %gs",
                fork_server.pid,
                self._restart_delay,
            )
            self._restart_later()

    # -- stopping --------------------------------------------------------------------------

    def pending(self) -> int:
        """Connections given to a fork server whose child's pid has not come back yet."""
        return sum(len(fork_server.pending) for fork_server in self.fork_servers)

    def stop(self) -> None:
        for fork_server in self.fork_servers:
            fork_server.close()  # it takes no more; its children finish and it exits

    def signal(self, signum: int) -> int:
        """Signal, through each fork server, all of its children, those whose pids have not
        come back yet too (the table's adopted children are marked, not signalled, there)."""
        self._stop_signal = signum
        for fork_server in self.fork_servers:
            fork_server.signal_children(signum)
        return self.pending()

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

    def _close_in_child(self) -> None:
        for fork_server in self.fork_servers:
            fork_server.close_in_child()
        for fd in self._unsent_fds:
            os.close(fd)
        self._done.close_in_child()

    def close(self) -> None:
        for fork_server in self.fork_servers:
            fork_server.kill()
        self._done.close()
