"""Thread mode: a thread per request, as socketserver's ThreadingMixIn.

Threads are daemon threads, counted for max_children from start to end. A finished thread
tells the loop through `call_soon_threadsafe`, and its client's source (max_per_source) through
a deque as soon as its handler has returned (finished.py). Connections being served by threads
are closed in every forked child (a child must not keep a client's connection open), and a
datagram server's handler socket, or one replaced by a reload, is closed only once no thread
can be answering on it.
"""

import contextlib
import os
import socket
import threading
import time
from functools import partial
from typing import Any

from supervisor.finished import DoneThreads
from supervisor.guards import Source
from supervisor.modes.base import Host, Mode
from supervisor.server import Request, Server


class Threads(Mode):
    """Start a thread per request; close what the last one leaves."""

    def __init__(self, host: Host) -> None:
        super().__init__(host)
        self._done = DoneThreads()
        # Connections being served by threads: a forked child must not keep them open.
        self._serving: set[Request] = set()
        host.spawner.on_child(self._close_in_child)

    def take(
        self, server: Server, request: Request | int, client_address: Any, source: Source
    ) -> None:
        assert not isinstance(request, int)  # noqa: S101 (bare descriptors are fork mode's)
        self.host.count(server, +1)
        done = self._done.for_thread(server, source)

        def run() -> None:
            ok, started = False, time.monotonic()
            try:
                ok = server.handle(request, client_address, done)
            finally:
                self._serving.discard(request)
                duration = time.monotonic() - started
                self.host.loop.call_soon_threadsafe(partial(self._ended, server, ok, duration))

        if isinstance(request, socket.socket):
            self._serving.add(request)
        server.threads += 1
        try:
            threading.Thread(target=run, name=f"{server.name}-request", daemon=True).start()
        except RuntimeError as exc:
            self._serving.discard(request)
            server.threads -= 1
            server.close_request(request)
            self.host.start_failed(server, "thread", client_address, str(exc))
            self.host.count(server, -1, source)
            return
        if server.start_pause:  # threads start again: the next pause is a short one
            server.start_pause = 0.0

    def _ended(self, server: Server, ok: bool, duration: float) -> None:
        self._done.release()  # (its own source among them, if it has one)
        server.stats.handled(ok, duration)
        server.threads -= 1
        if not server.threads:
            closing = server.retired or not self.host.running
            if server.old_sockets or closing:
                self.host.spawner.forget()  # (sockets close below: the runs a child closes change)
            server.close_old_sockets()
            if closing:
                server.close_handler_socket()
        self.host.count(server, -1)

    def catch_up(self) -> None:
        self._done.release()

    def _close_in_child(self) -> None:
        for request in list(self._serving):
            if isinstance(request, socket.socket):
                # os.close: socket.close() waits for the handler thread's makefile() objects.
                with contextlib.suppress(OSError):
                    os.close(request.fileno())
