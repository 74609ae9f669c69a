"""Admission: which servers accept, how many requests they take, and when they pause.

Invariant: a server's socket is in the selector exactly when the supervisor is RUNNING, the
server's mode accepts in the supervisor (not prefork's), the server is below its
`max_children`, the global cap is not reached, and accept is not paused. A full server therefore
waits in the kernel's listen queue while every other server keeps serving; nothing ever blocks
in `waitpid` (socketserver's ForkingMixIn does, at max_children, for every server).

A readable socket gets one accept batch: at most ACCEPT_BATCH requests (fewer if the mode says
so), REJECT_BATCH clients the guards turn away, so that one busy server cannot starve the
others. Accept failing for lack of descriptors, buffers or memory pauses the server for
ACCEPT_BACKOFF; a request's process or thread failing to start pauses it for
START_FAILURE_PAUSE, doubling while it keeps failing. Clients wait in the listen queue
meanwhile.

`Admission` is the supervisor's base class (as socketserver's BaseServer is its servers'):
what it needs of the supervisor is declared at the top of the class.
"""

import logging
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

from supervisor import guards, logs
from supervisor.config import SupervisorConfig
from supervisor.guards import RejectionLog, Source
from supervisor.loop import Loop
from supervisor.modes import Modes
from supervisor.modes.base import ACCEPT_BATCH
from supervisor.server import Request, Server
from supervisor.sockets import TRANSIENT_ERRNOS

log = logging.getLogger("supervisor")

REJECT_BATCH = 4  # clients the guards turn away per batch: each is ~15 us another server waits
ACCEPT_BACKOFF = 0.1  # seconds to stop accepting after EMFILE, ENFILE, ENOBUFS or ENOMEM
# Seconds to stop accepting after a request's process or thread could not be started (out of
# processes or memory): the first pause, doubled while they keep failing, up to the second.
START_FAILURE_PAUSE = (0.1, 5.0)


class Admission:
    """Accepts and admits requests, and keeps the admission invariant."""

    # What the supervisor provides.
    loop: Loop
    servers: Mapping[str, Server]
    modes: Modes

    @property
    def running(self) -> bool:
        raise NotImplementedError

    @property
    def settings(self) -> SupervisorConfig:
        raise NotImplementedError

    def catch_up(self) -> None:
        raise NotImplementedError

    def __init__(self) -> None:
        self.active = 0  # children and busy threads across all servers
        self._rejections = RejectionLog()

    # -- the invariant ---------------------------------------------------------------------

    def _global_full(self) -> bool:
        cap = self.settings.max_children
        return cap is not None and self.active >= cap

    def _refresh(self, server: Server) -> None:
        """Put the server's socket in the selector, or take it out, as the invariant says."""
        mode = self.modes[server.mode]
        wanted = (
            self.running
            and mode.listens
            and not server.retired
            and (not mode.limited or server.active < server.config.max_children)
            and not server.backoff
            and not (mode.limited and self._global_full())
        )
        if wanted == server.listening:
            return
        if wanted:
            self.loop.add_reader(server.listener.socket, partial(self._on_readable, server))
        else:
            self.loop.remove_reader(server.listener.socket)
        server.listening = wanted
        log.debug(
            "%s: %s (%d active)",
            server.name,
            "accepting" if wanted else "paused",
            server.active,
            extra=logs.about(server.name),
        )

    def _unlisten(self, server: Server) -> None:
        if server.listening:
            self.loop.remove_reader(server.listener.socket)
            server.listening = False

    def _update(self, server: Server) -> None:
        """Its count or its configuration changed: saturation and the selector follow."""
        mode = self.modes[server.mode]
        limit = server.config.max_children
        server.stats.set_saturated(mode.saturates and server.active >= limit)
        self._refresh(server)

    def _count(self, server: Server, delta: int, source: Source = None) -> None:
        """Change the server's and the global active count, and re-apply admission; a request
        that ends (-1) no longer counts for its `source` either (guards.py)."""
        if source is not None:
            guards.release(server.sources, source)
        was_full = self._global_full()
        server.active += delta
        self.active += delta
        self._update(server)
        if was_full != self._global_full():
            for each in self.servers.values():
                if each is not server:
                    self._update(each)

    # -- accepting -------------------------------------------------------------------------

    def _on_readable(self, server: Server) -> bool:
        """One accept batch; True if it found the listen queue empty."""
        mode = self.modes[server.mode]
        limit = mode.batch(server)
        try:
            return self._accept_batch(server, limit, mode.bare(server))
        finally:
            mode.batch_done(server)

    def _take_the_queue(self) -> None:
        """Before the listeners close at a stop: accept the clients already in their listen
        queues, as far as each server's limits allow. Their connect() has succeeded; closing
        the listener would reset them. (Not prefork's: its workers accept, and the listener's
        shutdown resets what they have not taken.)"""
        for server in self.servers.values():
            for _ in range(server.config.backlog // ACCEPT_BATCH + 2):
                if not server.listening or self._on_readable(server):
                    break

    def _accept_batch(self, server: Server, limit: int, bare: bool) -> bool:
        """Take up to ACCEPT_BATCH requests, `limit` of them at most admitted; rejected ones
        (guards.py) are closed at once and cost no process or thread. `bare`: accepted as
        descriptors, without socket objects. True if the listen queue was found empty."""
        take = self.modes[server.mode].take
        admitted = rejected = 0
        for _ in range(ACCEPT_BATCH):
            if not server.listening or admitted >= limit:
                return False
            request: Request | int
            try:
                if bare:  # fork, stream: only the child needs a socket object
                    request, client_address = server.accept_fd()
                else:
                    request, client_address = server.get_request()
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                self._back_off(server, exc)
                return False
            source: Source = None
            if server.guard is not None:
                reason, source = server.admit(
                    request, client_address, self._rejections, self.catch_up
                )
                if reason is not None:
                    rejected += 1
                    if rejected >= REJECT_BATCH:
                        return False
                    continue
            if server.verifies and not server.verify(request, client_address):
                # (after the guards, as socketserver asks it before process_request)
                guards.release(server.sources, source)
                rejected += 1
                if rejected >= REJECT_BATCH:
                    return False
                continue
            admitted += 1
            server.stats.requests += 1
            take(server, request, client_address, source)
        return False

    # -- pauses ----------------------------------------------------------------------------

    def _back_off(self, server: Server, exc: OSError) -> None:
        log.warning(
            "%s: accept failed (%s); pausing it for %gs",
            server.name,
            exc.strerror or exc,
            ACCEPT_BACKOFF,
            extra=logs.about(server.name),
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
                extra=logs.about(server.name),
            )
            server.start_failures = 0
        self._refresh(server)

    def start_failed(self, server: Server, what: str, client_address: Any, reason: str) -> None:
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
            extra=logs.about(server.name, client_address),
        )
        self._pause(server, delay)
