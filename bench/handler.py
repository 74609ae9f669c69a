"""The benchmark's exchange, for the supervisor and the standard library's servers alike.

One recv loop (at most 4096 bytes, until the blank line that ends wrk's HTTP request, or end of
file), one sendall of a fixed short HTTP/1.0 reply; the server closes the connection after the
handler, as socketserver does. bench/c/responder.c and bench/c/server.c do the same in C.

Used as `handler = "bench.handler:Handler"` with the repository root on PYTHONPATH.
"""

import os
import socketserver
import time

REPLY = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
LIMIT = 4096
SLOW_SECONDS = 0.05  # SlowHandler's pause, for the isolation scenario
LOADED = time.monotonic_ns()  # when this module was imported: another value after an exec


def exchange(connection: object, reply: bytes = REPLY) -> None:
    """Read the request and write the reply on a connected stream socket."""
    import socket  # noqa: PLC0415 (kept local: the module's only import that handlers need)

    assert isinstance(connection, socket.socket)  # noqa: S101 (a stream handler's request)
    received = b""
    while len(received) < LIMIT and b"\r\n\r\n" not in received:
        chunk = connection.recv(LIMIT - len(received))
        if not chunk:
            break
        received += chunk
    connection.sendall(reply)


class Handler(socketserver.BaseRequestHandler):
    """The tiny exchange: read a short request, write a short reply."""

    def handle(self) -> None:
        exchange(self.request)


class SlowHandler(socketserver.BaseRequestHandler):
    """The same exchange after a pause: a server flooded at its max_children."""

    def handle(self) -> None:
        time.sleep(SLOW_SECONDS)
        exchange(self.request)


class PidHandler(socketserver.BaseRequestHandler):
    """The same exchange, the reply's body the pid of the process that served it and when its
    code was imported: in inline or thread mode, the supervisor's, which the upgrade scenario
    tells from the next one's (an exec in place keeps the pid, not the import time)."""

    def handle(self) -> None:
        body = b"%d %d\n" % (os.getpid(), LOADED)
        head = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        exchange(self.request, head + body)
