"""The metrics endpoint: `GET /metrics` and `GET /healthz`, served from the supervisor's loop.

A deliberately small HTTP/1.x responder: one request per connection, `Connection: close`.
Nothing it does can block the loop: sockets are non-blocking, a request is read only up to
`MAX_REQUEST` bytes and `REQUEST_TIMEOUT` seconds, an answer is written as the peer takes it
within `SEND_TIMEOUT`, and at most `MAX_CONNECTIONS` are open at once (more are closed at
once). A slow, stuck or hostile client costs one socket for a bounded time, never a stall.
"""

import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from supervisor.loop import Loop, Timer
from supervisor.sockets import TRANSIENT_ERRNOS, Listener

log = logging.getLogger("supervisor")

MAX_REQUEST = 8192  # bytes of request line and headers
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request
SEND_TIMEOUT = 10.0  # seconds for a client to take the answer
MAX_CONNECTIONS = 64
ACCEPT_BATCH = 16
BACKOFF = 0.1  # seconds without accepting after accept() failed


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes


# A route answers a request's Accept header with a Response.
Route = Callable[[str], Response]


@dataclass
class _Connection:
    buffer: bytearray
    timer: Timer
    out: memoryview | None = None


class HttpServer:
    """Answers GET (and HEAD) on a few paths, from the loop."""

    def __init__(self, loop: Loop, listener: Listener, routes: dict[str, Route]) -> None:
        self.listener = listener
        self._loop = loop
        self._routes = routes
        self._connections: dict[socket.socket, _Connection] = {}
        self._paused = False  # accept() failed: the listener is out of the selector for a while
        loop.add_reader(listener.socket, self._accept)

    def close(self) -> None:
        for conn in list(self._connections):
            self._drop(conn)
        if not self._paused:
            self._loop.remove_reader(self.listener.socket)
        self._paused = False
        self.listener.close()

    def close_in_child(self) -> None:
        """In a forked child: let go of the listener and of open connections."""
        self.listener.created_file = None
        for sock in [self.listener.socket, *self._connections]:
            with contextlib.suppress(OSError):
                os.close(sock.fileno())

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.listener.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    continue
                self._back_off(exc)
                return
            if len(self._connections) >= MAX_CONNECTIONS:
                self._evict()
            conn.setblocking(False)
            timer = self._loop.call_later(REQUEST_TIMEOUT, partial(self._drop, conn))
            self._connections[conn] = _Connection(bytearray(), timer)
            self._loop.add_reader(conn, partial(self._read, conn))

    def _evict(self) -> None:
        """Make room: drop the oldest connection still sending its request (idle ones first
        go this way), so that idle sockets cannot keep a real scraper out."""
        for conn, state in self._connections.items():
            if state.out is None:
                self._drop(conn)
                return
        self._drop(next(iter(self._connections)))

    def _back_off(self, exc: OSError) -> None:
        """accept() failed (out of file descriptors): stop trying for a moment, not spin."""
        log.warning("metrics: accept failed (%s); pausing for %gs", exc.strerror or exc, BACKOFF)
        self._loop.remove_reader(self.listener.socket)
        self._paused = True

        def resume() -> None:
            if self._paused:
                self._paused = False
                self._loop.add_reader(self.listener.socket, self._accept)

        self._loop.call_later(BACKOFF, resume)

    def _read(self, conn: socket.socket) -> None:
        state = self._connections[conn]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        state.buffer += chunk
        if b"\r\n\r\n" in state.buffer or b"\n\n" in state.buffer:
            self._respond(conn, self._answer(bytes(state.buffer)))
        elif not chunk:
            self._drop(conn)
        elif len(state.buffer) >= MAX_REQUEST:
            self._respond(conn, (_error(431, "Request Header Fields Too Large"), True))

    def _answer(self, request: bytes) -> tuple[Response, bool]:
        """The response, and whether to send its body (not for HEAD)."""
        head = request.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _error(400, "Bad Request"), True
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _error(405, "Method Not Allowed"), True
        route = self._routes.get(target)
        if route is None:
            return _error(404, "Not Found"), method == "GET"
        try:
            return route(_header(lines[1:], "accept")), method == "GET"
        except Exception:  # a bug in a collector must not end the supervisor's loop
            log.exception("metrics: %s failed", target)
            return _error(500, "Internal Server Error"), method == "GET"

    def _respond(self, conn: socket.socket, answer: tuple[Response, bool]) -> None:
        response, with_body = answer
        state = self._connections[conn]
        state.timer.cancel()
        state.timer = self._loop.call_later(SEND_TIMEOUT, partial(self._drop, conn))
        head = (
            f"HTTP/1.1 {response.status} {response.reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        state.out = memoryview(head + (response.body if with_body else b""))
        self._loop.remove_reader(conn)
        self._loop.add_writer(conn, partial(self._write, conn))

    def _write(self, conn: socket.socket) -> None:
        state = self._connections[conn]
        if state.out is None:
            self._drop(conn)
            return
        try:
            sent = conn.send(state.out)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        state.out = state.out[sent:]
        if not state.out:
            self._drop(conn, answered=True)

    def _drop(self, conn: socket.socket, answered: bool = False) -> None:
        state = self._connections.pop(conn)
        state.timer.cancel()
        self._loop.remove_reader(conn)
        if answered:
            # Read what the client sent beyond its request (a body, a pipelined request):
            # closing with unread input would send a reset that can destroy the answer.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
                for _ in range(16):  # bounded: a client that never stops sending is cut off
                    if not conn.recv(MAX_REQUEST):
                        break
        conn.close()


def _header(lines: list[str], name: str) -> str:
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def _error(status: int, reason: str) -> Response:
    return Response(status, reason, "text/plain; charset=utf-8", f"{reason}\n".encode())
