"""Forking a child from the supervisor itself: what it closes, and that it never returns.

A child of the supervisor (a fork-mode request forked here, a prefork worker) starts as a copy
of the whole process: the loop, the signal routing, every server's listening socket, the pipes
and channels of other children. `Spawner.spawn` forks with the stop signals blocked (a SIGTERM
sent to a new child is held until it has reset its handlers, never swallowed by the parent's
no-op handler), and the child drops what belongs to the parent before it runs anything:

- every server's sockets but its own, by number, as runs of consecutive descriptors closed with
  a few `closerange()` calls (walking the server objects instead would cost every child time
  and copied pages in proportion to the number of servers); the runs are computed in the
  parent when first needed after a change (`forget` is called wherever such a socket is opened
  or closed);
- its own server's parent-side sockets through their objects (a handler's `server_close()`
  then finds them closed), the listener kept for a prefork worker;
- whatever each part of the supervisor registered with `on_child` (the loop, signals, control
  and metrics sockets, the modes' pipes and connections).

The child then runs its function and leaves with `os._exit`, whatever happens, as
socketserver's ForkingMixIn does: it can never return into the parent's loop.
"""

import logging
import os
from collections.abc import Callable, Iterable
from functools import partial
from typing import NoReturn, Protocol

from supervisor import logs
from supervisor.children import ChildTable, Reaped
from supervisor.forkserver import set_up_child
from supervisor.guards import Source
from supervisor.handling import flush_output
from supervisor.server import Server
from supervisor.signals import block_signals, set_signal_mask

log = logging.getLogger("supervisor")

Runs = list[tuple[int, int]]


def descriptor_runs(fds: Iterable[int]) -> Runs:
    """The descriptors as runs [low, high) of consecutive numbers."""
    runs: Runs = []
    for fd in sorted(fds):
        if runs and runs[-1][1] == fd:
            runs[-1] = (runs[-1][0], fd + 1)
        else:
            runs.append((fd, fd + 1))
    return runs


def close_runs(runs: Runs, keep: set[int]) -> None:
    """Close every descriptor in the runs [low, high), but those in `keep`."""
    for low, high in runs:
        start = low
        for kept in sorted(fd for fd in keep if low <= fd < high):
            os.closerange(start, kept)
            start = kept + 1
        os.closerange(start, high)


class Keeper(Protocol):
    """Whoever starts a child (its server's mode): told of its exit."""

    def child_exited(self, reaped: Reaped[Server]) -> None: ...


class Spawner:
    """Forks the supervisor's children into its child table."""

    def __init__(self, children: ChildTable[Server], sockets: Callable[[], Iterable[int]]) -> None:
        self.children = children
        self._sockets = sockets  # every server's (and spare listener's) descriptor, now
        self._runs: Runs | None = None  # _sockets() as runs; None: to compute again
        self._closers: list[Callable[[], None]] = []

    def on_child(self, close: Callable[[], None]) -> None:
        """Have every child call `close` first thing (to drop something of the parent's)."""
        self._closers.append(close)

    def forget(self) -> None:
        """A server socket was opened or closed: the runs a child closes have changed."""
        self._runs = None

    def spawn(
        self,
        server: Server,
        run: Callable[[], int],
        *,
        keeper: Keeper,
        source: Source = None,
        keep_listener: bool = False,
    ) -> int:
        """Fork a child of `server` that runs `run` and exits with its status; its pid, in
        the child table with `source` and `keeper` (told of its exit). Raises OSError if
        fork failed. The caller counts it."""
        if self._runs is None:
            self._runs = descriptor_runs(set(self._sockets()) - {-1})
        mask = block_signals()
        flush_output()  # or each child would write the parent's buffered output again
        try:
            child = partial(self._child, server, run, mask, self._runs, keep_listener)
            return self.children.spawn(server, child, source, keeper)
        finally:
            set_signal_mask(mask)

    def _child(
        self,
        server: Server,
        run: Callable[[], int],
        mask: set[int],
        runs: Runs,
        keep_listener: bool,
    ) -> NoReturn:
        """The forked child: run one request (or a prefork worker's loop) and leave with
        os._exit, whatever happens."""
        status = 1
        try:
            # Other servers' sockets by number (no handler can reach their objects); this
            # one's through its objects, which the handler sees as self.server.
            close_runs(runs, keep=server.own_descriptors())
            server.close_in_child(keep_listener)
            for close in self._closers:
                close()
            set_signal_mask(mask)
            if server.child_setup is None or set_up_child(
                server.name, server.child_setup, lambda: log
            ):
                status = run()
        except BaseException:
            log.exception(
                "%s: child %d failed outside its handler",
                server.name,
                os.getpid(),
                extra=logs.about(server.name),
            )
        finally:
            flush_output()
            os._exit(status)
