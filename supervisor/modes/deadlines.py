"""request_timeout for fork mode: a child that runs over it gets SIGTERM, then SIGKILL.

Each watched child has a deadline (Child.deadline): its start plus request_timeout, then, once
it has been sent SIGTERM, kill_grace later. One timer waits for the earliest deadline (they
mostly come in increasing order, so the timer is rarely moved); when it fires, every passed
deadline is acted on with a scan of the live watched children. A child a stop has signalled
first is left to the stop.
"""

import logging
import signal
import time
from collections.abc import Callable

from supervisor import logs
from supervisor.children import Child
from supervisor.loop import Loop, Timer
from supervisor.server import Server

log = logging.getLogger("supervisor")


class Deadlines:
    """The children with a request_timeout, and the timer for the earliest."""

    def __init__(
        self,
        loop: Loop,
        kill_grace: Callable[[], float],
        send: Callable[[Child[Server], int], None],
    ) -> None:
        self._loop = loop
        self._kill_grace = kill_grace  # seconds from SIGTERM to SIGKILL, as configured now
        self._send = send  # signals a live child
        self._timed: dict[int, Child[Server]] = {}
        self._timer: Timer | None = None

    def watch(self, child: Child[Server] | None) -> None:
        """Give a fork-mode request's child its request_timeout deadline."""
        if child is None:
            return
        timeout = child.owner.config.limits.request_timeout
        if not timeout:
            return
        child.deadline = child.started + timeout
        self._timed[child.pid] = child
        self._due_by(child.deadline)

    def forget(self, pid: int) -> None:
        """The child is gone."""
        self._timed.pop(pid, None)

    def _due_by(self, deadline: float) -> None:
        """Make sure the timer fires by `deadline`."""
        timer = self._timer
        if timer is not None and timer.deadline <= deadline:
            return
        if timer is not None:
            timer.cancel()
        delay = max(0.0, deadline - time.monotonic())
        self._timer = self._loop.call_later(delay, self._due)

    def _due(self) -> None:
        """Act on every deadline passed, then wait for the next one."""
        self._timer = None
        now = time.monotonic()
        for child in list(self._timed.values()):
            if child.deadline <= now:
                self._time_out(child, now)
        if self._timed:
            self._due_by(min(child.deadline for child in self._timed.values()))

    def _time_out(self, child: Child[Server], now: float) -> None:
        name, timeout = child.owner.name, child.owner.config.limits.request_timeout
        if child.signalled is not None and not child.timed_out:
            del self._timed[child.pid]  # a stop signalled it first: the stop sees it through
            return
        if not child.timed_out:
            child.timed_out = True
            child.signalled = signal.SIGTERM
            child.deadline = now + self._kill_grace()
            log.warning(
                "%s: child %d ran over request_timeout (%gs) after %.3fs; sent SIGTERM",
                name,
                child.pid,
                timeout,
                now - child.started,
                extra=logs.about(name),
            )
            self._send(child, signal.SIGTERM)
            return
        del self._timed[child.pid]
        child.signalled = signal.SIGKILL
        log.warning(
            "%s: child %d still running %.3fs after request_timeout; sent SIGKILL",
            name,
            child.pid,
            now - child.started,
            extra=logs.about(name),
        )
        self._send(child, signal.SIGKILL)
