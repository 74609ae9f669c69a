"""Stopping: let the requests finish, then SIGTERM, then SIGKILL, then give up.

Once the supervisor is STOPPING (its listeners closed, the modes told to start nothing more),
`Shutdown` waits for the requests in progress: up to shutdown_timeout (none for a fast stop,
SIGQUIT, or a second stop signal), then sends SIGTERM to every child, SIGKILL kill_grace later,
and gives up kill_grace after that on a child stuck in the kernel. Request threads cannot be
killed: once SIGKILL has gone out they are abandoned. The supervisor calls `check` whenever a
request ends; `stopped` is called once, when nothing is left to wait for.
"""

import logging
import signal
from typing import Protocol

from supervisor.children import ChildTable
from supervisor.config import SupervisorConfig
from supervisor.loop import Loop, Timer
from supervisor.modes import Modes
from supervisor.server import Server

log = logging.getLogger("supervisor")


class Stopping(Protocol):
    """What a shutdown needs of the supervisor."""

    loop: Loop
    children: ChildTable[Server]
    modes: Modes
    active: int  # requests (and workers) still running

    @property
    def settings(self) -> SupervisorConfig: ...
    def stopped(self) -> None: ...


class Shutdown:
    """The escalation from draining to SIGKILL."""

    def __init__(self, host: Stopping) -> None:
        self._host = host
        self._loop = host.loop
        self._timer: Timer | None = None
        self.terminating = False  # SIGTERM sent to the children; SIGKILL is next
        self._killing = False  # SIGKILL sent: stop once the children are gone, threads or not

    def begin(self, reason: str, fast: bool) -> None:
        """STOPPING has begun: wait for the requests, or terminate them now if `fast`."""
        timeout = 0.0 if fast else self._host.settings.shutdown_timeout
        workers = sum(mode.workers() for mode in self._host.modes)
        log.info(
            "%s: stopping; %d requests in progress%s, waiting up to %gs for them",
            reason,
            self._host.active - workers,
            f", {workers} prefork workers finishing theirs" if workers else "",
            timeout,
        )
        if not self._host.active:
            self._stop()
        elif fast:
            self.terminate()
        else:
            self._timer = self._loop.call_later(timeout, self.terminate)

    def check(self) -> None:
        """A request ended: stop if it was the last (or the last child, once killing)."""
        if not self._host.active or (self._killing and not self.child_count()):
            self._stop()

    def child_count(self) -> int:
        """Children alive or about to be: in the table, or handed to a fork server."""
        return len(self._host.children) + sum(mode.pending() for mode in self._host.modes)

    def terminate(self) -> None:
        self.terminating = True
        if self._timer is not None:
            self._timer.cancel()
        sent = self._signal_children(signal.SIGTERM)
        log.warning("sent SIGTERM to %d children still running", sent)
        self._timer = self._loop.call_later(self._host.settings.kill_grace, self._kill)

    def _signal_children(self, signum: int) -> int:
        """Signal every child: ours by pid, and through the modes those they know of (a fork
        server's, those whose pids have not reached us yet too)."""
        sent = sum(mode.signal(signum) for mode in self._host.modes)
        return self._host.children.signal_all(signum) + sent

    def _kill(self) -> None:
        self._killing = True
        sent = self._signal_children(signal.SIGKILL)
        if sent:
            log.warning("sent SIGKILL to %d children that outlived SIGTERM", sent)
        threads = self._host.active - self.child_count()
        if threads:
            log.warning("abandoning %d request threads still running", threads)
        # Children killed with SIGKILL are reaped at once, and the supervisor stops as soon as
        # the last one is (check); it gives up on a child stuck in the kernel after kill_grace.
        self._timer = self._loop.call_later(self._host.settings.kill_grace, self._stop)
        if not self.child_count():
            self._stop()

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._host.stopped()
