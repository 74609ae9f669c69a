"""One request and one answer per connection, served from the loop without ever blocking it.

The metrics endpoint (exporter.py) and the control socket (control.py) are both this: accept,
read a request up to `max_request` bytes within `REQUEST_TIMEOUT`, write the answer as the peer
takes it within `SEND_TIMEOUT`, close. At most `MAX_CONNECTIONS` are open at once: a new one
evicts the oldest still sending its request, so idle sockets cannot shut out real clients. A
failing accept() pauses the listener instead of spinning. A slow, stuck or hostile peer costs
one socket for a bounded time, never a stall of the servers.

A subclass says when a request is complete (`complete`), what to answer (`answer`: the bytes,
or a `Later` it completes once the answer is known, from the loop), and whom to serve at all
(`admit`). An answer may come in pieces (a list of bytes): a large one is never joined into one
more copy, and at most MAX_SEND bytes go out per call, each time the peer can take more; at
most SEND_PER_TURN per turn of the loop for all of them (32 scrapers of 2.5 MB at once must
not hold the servers for the time it takes to copy 4 MB into the kernel).
"""

import collections
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from supervisor.loop import Loop, Timer
from supervisor.sockets import TRANSIENT_ERRNOS, Listener

log = logging.getLogger("supervisor")

REQUEST_TIMEOUT = 5.0  # seconds for a peer to send its request
SEND_TIMEOUT = 10.0  # seconds for a peer to take the answer
MAX_CONNECTIONS = 64
ACCEPT_BATCH = 16
BACKOFF = 0.1  # seconds without accepting after accept() failed
_DRAIN = 16  # reads of what a peer sent beyond its request, before closing
_DRAIN_READ = 65536  # bytes per read: what a socket's buffer holds, not a request's limit
LATER_TIMEOUT = 300.0  # seconds an answer given `Later` may take
ANSWERS_GRACE = 2.0  # seconds a stopping supervisor gives the answers in progress
# Bytes per send(): on loopback the kernel delivers what is sent inside the call, so the call's
# time grows with it (2.5 MB, a 1,000-server scrape: 0.5 ms on a quiet machine; 128 KiB: 0.05 ms).
# The writer is called again as soon as the peer can take more.
MAX_SEND = 131072
SEND_PER_TURN = 262144  # bytes sent per turn of the loop, all connections together
_MAX_PIECES = 64  # pieces of an answer per sendmsg()

Answer = bytes | list[bytes]  # the bytes to send, whole or in pieces


class Later:
    """An answer not known yet: `give(answer)` sends it once it is (a second one, or one for a
    connection gone meanwhile, is dropped). `conn` is the connection waiting for it."""

    def __init__(self) -> None:
        self.conn: socket.socket | None = None
        self._send: Callable[[Answer], None] | None = None
        self._given: Answer | None = None  # given before the connection was waiting
        self.done = False

    def give(self, answer: Answer) -> None:
        if self.done:
            return
        if self._send is None:
            self._given = answer
            return
        self.done = True
        self._send(answer)

    def attach(self, conn: socket.socket, send: Callable[[Answer], None]) -> None:
        """The connection now waits (Responder)."""
        self.conn = conn
        if self._given is not None:
            self.done = True
            send(self._given)
        else:
            self._send = send


@dataclass
class _Connection:
    buffer: bytearray
    timer: Timer
    out: collections.deque[memoryview] | None = None  # what is still to send, once known
    waiting: bool = False  # the request is read; its answer comes Later


class Responder:
    """Serves one request per connection on `listener`, from `loop`."""

    name = "responder"  # in log lines
    max_request = 8192  # bytes

    def __init__(self, loop: Loop, listener: Listener) -> None:
        self.listener = listener
        self._loop = loop
        self._connections: dict[socket.socket, _Connection] = {}
        self._paused = False  # accept() failed: the listener is out of the selector for a while
        self._stopped = False  # stop_listening(): for good
        self._changed: Callable[[], object] | None = None  # finish(): told of each end
        self._turn, self._sent = -1, 0  # bytes sent in this turn of the loop, all answers
        loop.add_reader(listener.socket, self._accept)

    # -- what a subclass decides ------------------------------------------------------------

    def admit(self, conn: socket.socket) -> bool:
        """Whether to serve this peer at all."""
        return True

    def complete(self, request: bytes) -> bool:
        """Whether `request` is all there is to read."""
        raise NotImplementedError

    def answer(self, request: bytes, finished: bool) -> "Answer | Later | None":
        """The bytes to send back (or a `Later`); `finished` is False when the peer closed its
        side or sent too much first. None: close without an answer."""
        raise NotImplementedError

    def internal_error(self) -> Answer | None:
        """What to send when `answer` raised (a bug; the loop has logged and counted it)."""
        return None

    # -- the machinery ---------------------------------------------------------------------

    def close(self) -> None:
        for conn in list(self._connections):
            self._drop(conn)
        if not self._paused:
            self._loop.remove_reader(self.listener.socket)
        self._paused = False
        self.listener.close()

    @property
    def answering(self) -> bool:
        """Whether a request is read and its answer not all sent yet."""
        return any(state.waiting or state.out is not None for state in self._connections.values())

    def finish(self, changed: Callable[[], object]) -> None:
        """Accept no more, and read the requests already sent (they are answered too);
        `changed` is called each time a connection ends from now on."""
        if not self._paused:
            self._loop.remove_reader(self.listener.socket)
        self._paused = self._stopped = True
        self._changed = changed
        for conn, state in list(self._connections.items()):
            if state.out is None and not state.waiting:
                self._read(conn)

    def stop_listening(self) -> None:
        """Accept no more: the listener is another process's now (its descriptor is closed
        here, its file left alone); the open connections are still answered."""
        if not self._paused:
            self._loop.remove_reader(self.listener.socket)
        self._paused = self._stopped = True
        self.listener.let_go()

    def close_in_child(self) -> None:
        """In a forked child: let go of the listener and of open connections, or a peer
        waiting for the end of its answer would wait for the child too."""
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
            if not self.admit(conn):
                conn.close()
                continue
            if len(self._connections) >= MAX_CONNECTIONS:
                self._evict()
            conn.setblocking(False)
            timer = self._loop.call_later(REQUEST_TIMEOUT, partial(self._drop, conn))
            self._connections[conn] = _Connection(bytearray(), timer)
            self._loop.add_reader(conn, partial(self._read, conn))

    def _evict(self) -> None:
        """Drop the oldest connection still sending its request (else the oldest of all)."""
        for conn, state in self._connections.items():
            if state.out is None and not state.waiting:
                self._drop(conn)
                return
        self._drop(next(iter(self._connections)))

    def _back_off(self, exc: OSError) -> None:
        """accept() failed (out of file descriptors): stop trying for a moment, not spin."""
        log.warning(
            "%s: accept failed (%s); pausing for %gs", self.name, exc.strerror or exc, BACKOFF
        )
        self._loop.remove_reader(self.listener.socket)
        self._paused = True

        def resume() -> None:
            if self._paused and not self._stopped:
                self._paused = False
                self._loop.add_reader(self.listener.socket, self._accept)

        self._loop.call_later(BACKOFF, resume)

    def _read(self, conn: socket.socket) -> None:
        state = self._connections.get(conn)
        if state is None:
            return  # evicted by an accept earlier in the same turn
        try:
            chunk = conn.recv(self.max_request)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        state.buffer += chunk
        request = bytes(state.buffer)
        if self.complete(request):
            self._respond(conn, self._answer(request, finished=True))
        elif not chunk or len(request) >= self.max_request:
            self._respond(conn, self._answer(request, finished=False))

    def _answer(self, request: bytes, finished: bool) -> "Answer | Later | None":
        """`answer`, behind a fault barrier: whatever one request makes it raise costs that
        request an error answer, never the loop."""
        try:
            return self.answer(request, finished)
        except Exception:
            self._loop.fault(f"{self.name}: answering a request")
            return self.internal_error()

    def _respond(self, conn: socket.socket, answer: "Answer | Later | None") -> None:
        if answer is None:
            self._drop(conn)
            return
        state = self._connections[conn]
        state.timer.cancel()
        with contextlib.suppress(KeyError):  # (a Later's connection is not registered)
            self._loop.remove_reader(conn)
        if isinstance(answer, Later):
            state.timer = self._loop.call_later(LATER_TIMEOUT, partial(self._drop, conn))
            state.waiting = True
            answer.attach(conn, partial(self._respond_later, conn))
            return
        state.timer = self._loop.call_later(SEND_TIMEOUT, partial(self._drop, conn))
        pieces = [answer] if isinstance(answer, bytes) else answer
        state.out = collections.deque(memoryview(piece) for piece in pieces if piece)
        self._write(conn)  # (most answers fit the socket's buffer: sent at once)
        if conn in self._connections:
            self._loop.add_writer(conn, partial(self._write, conn))

    def _respond_later(self, conn: socket.socket, answer: Answer) -> None:
        if conn in self._connections:
            self._respond(conn, answer)

    def _write(self, conn: socket.socket) -> None:
        state = self._connections.get(conn)
        if state is None:
            return  # evicted by an accept earlier in the same turn
        if state.out is None:
            self._drop(conn)
            return
        if state.out:
            if self._loop.turn != self._turn:
                self._turn, self._sent = self._loop.turn, 0
            if self._sent >= SEND_PER_TURN:
                return  # (still writable: called again next turn, other sockets served first)
            try:
                sent = conn.sendmsg(_next_pieces(state.out))
            except BlockingIOError:
                return
            except OSError:
                self._drop(conn)
                return
            self._sent += sent
            _consume(state.out, sent)
        if not state.out:
            self._drop(conn, answered=True)

    def _drop(self, conn: socket.socket, answered: bool = False) -> None:
        state = self._connections.pop(conn)
        state.timer.cancel()
        with contextlib.suppress(KeyError):  # (not registered: waiting `Later`, or sent at once)
            self._loop.remove_reader(conn)
        if answered:
            # Read what the peer sent beyond its request (a body, a pipelined request):
            # closing with unread input would send a reset that can destroy the answer.
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
                for _ in range(_DRAIN):  # bounded: a peer that never stops sending is cut off
                    if not conn.recv(_DRAIN_READ):
                        break
        conn.close()
        if self._changed is not None:
            self._changed()


def _next_pieces(out: collections.deque[memoryview]) -> list[memoryview]:
    """The pieces to send next: up to MAX_SEND bytes (the last one cut there)."""
    pieces, size = [], 0
    for piece in itertools.islice(out, _MAX_PIECES):
        pieces.append(piece[: MAX_SEND - size])
        size += len(pieces[-1])
        if size >= MAX_SEND:
            break
    return pieces


def _consume(out: collections.deque[memoryview], sent: int) -> None:
    """Drop the `sent` bytes from the front of `out`."""
    while sent and sent >= len(out[0]):
        sent -= len(out.popleft())
    if sent:
        out[0] = out[0][sent:]


def after_answers(loop: Loop, responders: Sequence[Responder], then: Callable[[], object]) -> None:
    """Stop accepting on every responder, and call `then` once none has an answer in progress
    (a scrape being rendered or sent, a status), or after ANSWERS_GRACE seconds."""
    called = False

    def once() -> None:
        nonlocal called
        if not called:
            called = True
            deadline.cancel()
            then()

    def check() -> None:
        if not any(responder.answering for responder in responders):
            once()

    deadline = loop.call_later(ANSWERS_GRACE, once)
    for responder in responders:
        responder.finish(check)
    check()
