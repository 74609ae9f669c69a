"""The control socket: how `supervisor reload` and `supervisor status` talk to a running process.

A unix stream socket next to the pidfile (`supervisor.pid` -> `supervisor.sock`), mode 0600,
served from the loop without blocking it. Every peer is checked with SO_PEERCRED: only root and
the supervisor's own user are answered. One request per connection: a JSON object on one line,
`{"command": "status"}`, answered with one JSON line. A request is bounded in size and time.
"""

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from supervisor.addresses import Address
from supervisor.loop import Loop, Timer
from supervisor.sockets import Listener, remove_if_stale

log = logging.getLogger("supervisor")

MAX_REQUEST = 4096  # bytes
REQUEST_TIMEOUT = 5.0  # seconds for a peer to send its request
SEND_TIMEOUT = 5.0  # seconds for a peer to take the answer

Handler = Callable[[str], dict[str, Any]]


class ControlServer:
    """Answers control requests on a unix socket, from the loop."""

    def __init__(self, loop: Loop, listener: Listener, handler: Handler) -> None:
        self._listener = listener
        self._socket = listener.socket
        self._loop = loop
        self._handler = handler
        self._pending: dict[socket.socket, tuple[bytearray, Timer]] = {}
        loop.add_reader(self._socket, self._accept)

    def close(self) -> None:
        for conn in list(self._pending):
            self._drop(conn)
        self._loop.remove_reader(self._socket)
        self._listener.close()  # removes the socket file if it is still ours

    def close_in_child(self) -> None:
        """In a forked child: let go of the socket and of requests being answered, or a peer
        waiting for end-of-file would wait for the child too."""
        for sock in [self._socket, *self._pending]:
            with contextlib.suppress(OSError):
                os.close(sock.fileno())

    def _accept(self) -> None:
        try:
            conn, _ = self._socket.accept()
        except (BlockingIOError, ConnectionAbortedError):
            return
        uid = peer_uid(conn)
        if uid not in (0, os.geteuid()):
            log.warning("control: refused a request from uid %d", uid)
            conn.close()
            return
        conn.setblocking(False)
        timer = self._loop.call_later(REQUEST_TIMEOUT, partial(self._drop, conn))
        self._pending[conn] = (bytearray(), timer)
        self._loop.add_reader(conn, partial(self._read, conn))

    def _read(self, conn: socket.socket) -> None:
        buffer, _ = self._pending[conn]
        try:
            chunk = conn.recv(MAX_REQUEST)
        except BlockingIOError:
            return
        except OSError:
            self._drop(conn)
            return
        buffer += chunk
        if chunk and b"\n" not in buffer and len(buffer) < MAX_REQUEST:
            return
        line = bytes(buffer).partition(b"\n")[0]
        self._drop(conn, answer=self._answer(line))

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            command = json.loads(line)["command"]
        except (ValueError, KeyError, TypeError):
            command = None
        if not isinstance(command, str):
            return {"ok": False, "error": 'bad request: expected {"command": NAME}'}
        return self._handler(command)

    def _drop(self, conn: socket.socket, answer: dict[str, Any] | None = None) -> None:
        _, timer = self._pending.pop(conn)
        timer.cancel()
        self._loop.remove_reader(conn)
        if answer is not None:
            with contextlib.suppress(OSError):
                conn.settimeout(SEND_TIMEOUT)  # the peer is root or ourselves: a short wait
                conn.sendall(json.dumps(answer).encode() + b"\n")
        conn.close()


def bind(path: str) -> Listener:
    """Create the control socket at `path`, mode 0600, listening; raise OSError.

    A socket left at `path` by a dead process is replaced; a live one is EADDRINUSE."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    remove_if_stale(Address("unix", path=path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(16)
        info = os.stat(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    address = Address("unix", path=path)
    return Listener(address, sock, address, created_file=(info.st_dev, info.st_ino))


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def request(path: str, command: str, timeout: float = 60.0) -> dict[str, Any]:
    """Send one command to the control socket at `path`; raise OSError, ValueError or TypeError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise TypeError("the control socket answered something other than an object")
    return answer
