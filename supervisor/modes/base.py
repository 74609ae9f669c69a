"""What a mode is: how a server's admitted requests run, and what it may ask of the supervisor.

socketserver splits a server the same way: the loop in `BaseServer`, how a request runs in a
mixin (`ThreadingMixIn`, `ForkingMixIn`) behind a few hooks. Here the supervisor accepts and
admits (max_children, the global cap, the guards, back-off), and hands each admitted request to
the `Mode` of its server's configured mode, one instance per mode for all its servers. A mode
never imports the supervisor: what it needs of it is `Host`, a protocol this module owns.

Counting: a mode counts each request it starts (`host.count(server, +1)`) and each that ends
(`-1`, with the client's source, which the guards then stop counting); the supervisor applies
admission on every change. A mode's forked children carry it as their `keeper`: the supervisor
tells it of their exit (`child_exited`). What a forked child must close of a mode's (its pipes,
connections it serves) the mode registers with `host.spawner.on_child`.
"""

import logging
from typing import Any, ClassVar, Protocol

from supervisor import logs
from supervisor.children import Child, ChildTable, Reaped
from supervisor.config import SupervisorConfig
from supervisor.guards import Source
from supervisor.loop import Loop, Timer
from supervisor.server import Request, Server
from supervisor.spawn import Spawner

log = logging.getLogger("supervisor")

ACCEPT_BATCH = 16  # requests taken per readiness event, so one busy server cannot starve others
SERVICE_INTERVAL = 0.5  # seconds between a hosted server's service_actions (serve_forever's poll)


class Host(Protocol):
    """What a mode needs from the supervisor that runs it."""

    loop: Loop
    children: ChildTable[Server]
    spawner: Spawner

    @property
    def running(self) -> bool:
        """RUNNING: neither stopping nor stopped."""
        ...

    @property
    def settings(self) -> SupervisorConfig:
        """The current [supervisor] table."""
        ...

    def count(self, server: Server, delta: int, source: Source = None) -> None:
        """A request of `server` started (+1) or ended (-1; its `source` released)."""

    def start_failed(self, server: Server, what: str, client_address: Any, reason: str) -> None:
        """A request's process or thread could not be started (its connection is closed)."""


class Mode:
    """How requests run in one mode; the defaults suit a mode with nothing of its own."""

    listens: ClassVar[bool] = True  # the supervisor accepts (prefork: the workers do)
    limited: ClassVar[bool] = True  # max_children and the global cap apply (not inline)
    saturates: ClassVar[bool] = True  # at max_children means saturated (not prefork's workers)
    services: ClassVar[bool] = True  # hosted objects' service_actions run here (prefork: workers)

    def __init__(self, host: Host) -> None:
        self.host = host
        self.debug = False  # logging at DEBUG (asked once per configuration: see start)
        self._serviced: list[Server] = []  # hosted servers with their own service_actions
        self._service_timer: Timer | None = None

    def start(self, servers: list[Server]) -> None:
        """At start and after every reload: `servers` are this mode's now (maybe none)."""
        self.debug = log.isEnabledFor(logging.DEBUG)
        self._serviced = [server for server in servers if server.services and self.services]
        if self._serviced and self._service_timer is None:
            self._service_timer = self.host.loop.call_later(SERVICE_INTERVAL, self._service)

    def _service(self) -> None:
        """socketserver's serve_forever calls service_actions once per poll (0.5 s): here a
        timer does, only while a server of this mode has its own (no idle wake-up else)."""
        self._service_timer = None
        if not self.host.running:
            return
        for server in self._serviced:
            server.service()
        if self._serviced:
            self._service_timer = self.host.loop.call_later(SERVICE_INTERVAL, self._service)

    def batch(self, server: Server) -> int:
        """An accept batch on `server` begins: how many requests it may admit."""
        return ACCEPT_BATCH

    def bare(self, server: Server) -> bool:
        """Whether `server`'s connections are accepted as bare descriptors (see take)."""
        return False

    def take(
        self, server: Server, request: Request | int, client_address: Any, source: Source
    ) -> None:
        """Run an admitted request (an int: a bare descriptor); `source`: the client's, counted
        by the server's guard until the request ends."""
        raise NotImplementedError

    def batch_done(self, server: Server) -> None:
        """The accept batch on `server` is over."""

    def retire(self, server: Server) -> None:
        """A reload removed `server`: start nothing more for it; what runs may finish."""

    def catch_up(self) -> None:
        """Take note now of the requests whose handler has returned (max_per_source)."""

    def collect(self) -> None:
        """Read now what the mode's workers have reported (before a scrape)."""

    def pending(self) -> int:
        """Children about to be, not in the child table yet (handed to a fork server)."""
        return 0

    def workers(self) -> int:
        """Long-lived children that are not requests (prefork workers)."""
        return 0

    def helpers(self) -> list[int]:
        """Pids of the mode's own helper processes (fork servers)."""
        return []

    def child_exited(self, reaped: Reaped[Server]) -> None:
        """A child this mode started has exited."""

    def reap(self) -> None:
        """SIGCHLD: collect the mode's helper processes (before the child table is read)."""

    def logs_reopened(self) -> None:
        """The log file was reopened."""

    def stop(self) -> None:
        """Stopping: start nothing more; what runs may finish."""

    def signal(self, signum: int) -> int:
        """Stopping: signal what the mode runs beyond the child table; how many."""
        return 0

    def close(self) -> None:
        """The very end: the loop has stopped."""


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


def account_exit(
    host: Host, child: Child[Server], reaped: Reaped[Server], debug: bool, request: bool
) -> None:
    """Log and count a child's exit; `request`: the child ran one request (not a worker)."""
    server = child.owner
    log_exit(child, reaped, debug)
    outcome = exit_outcome(reaped)
    server.stats.child_exited(outcome, reaped.rusage, reaped.duration if request else None)
    if outcome in ("error", "signal") and request:
        server.stats.errors += 1  # (a worker's death is in the exits metric only)
    host.count(server, -1, child.source)


def log_exit(child: Child[Server], reaped: Reaped[Server], debug: bool) -> None:
    server, status = child.owner, reaped.status
    if status.ok and not child.timed_out:
        if not debug:  # the common case: no logging call at all
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
        extra=logs.about(server.name),
    )
