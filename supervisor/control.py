"""The control socket: how `supervisor reload` and `supervisor status` talk to a running process.

A unix stream socket next to the pidfile (`supervisor.pid` -> `supervisor.sock`), mode 0600,
served from the loop without blocking it (responder.py). Every peer is checked with SO_PEERCRED:
only root and the supervisor's own user are answered. One request per connection: a JSON object
on one line, `{"command": "status"}`, answered with one JSON line.
"""

import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Collection
from typing import Any

from supervisor.addresses import Address
from supervisor.logs import Throttle, since
from supervisor.loop import Loop
from supervisor.responder import Later, Responder
from supervisor.sockets import Listener, remove_if_stale

log = logging.getLogger("supervisor")

MAX_REQUEST = 4096  # bytes
BACKLOG = 16
REFUSED_LOG_EVERY = 10.0  # seconds: at most one line per refused user, with a count

Handler = Callable[[str], dict[str, Any] | Later]  # a Later gives the JSON line itself
INTERNAL_ERROR = b'{"ok": false, "error": "internal error in the supervisor: see its log"}\n'


class ControlServer(Responder):
    """Answers control requests on a unix socket, from the loop, to root and our own user."""

    name = "control"
    max_request = MAX_REQUEST

    def __init__(self, loop: Loop, listener: Listener, handler: Handler) -> None:
        super().__init__(loop, listener)
        self._handler = handler
        self._refused = Throttle(REFUSED_LOG_EVERY)

    def admit(self, conn: socket.socket) -> bool:
        uid = peer_uid(conn)
        if uid not in (0, os.geteuid()):
            if (left_out := self._refused(uid)) is not None:
                log.warning("control: refused a request from uid %d%s", uid, since(left_out))
            return False
        return True

    def complete(self, request: bytes) -> bool:
        return b"\n" in request

    def answer(self, request: bytes, finished: bool) -> bytes | Later:
        """One JSON line; a request without its newline is taken as it is (end of input)."""
        line = request.partition(b"\n")[0]
        try:
            command = json.loads(line)["command"]
        except (ValueError, KeyError, TypeError, RecursionError):  # ([[[[... too deep)
            command = None
        if not isinstance(command, str):
            reply: dict[str, Any] = {
                "ok": False,
                "error": 'bad request: expected {"command": NAME}',
            }
        else:
            handled = self._handler(command)
            if isinstance(handled, Later):
                return handled
            reply = handled
        return encode(reply)

    def internal_error(self) -> bytes:
        return INTERNAL_ERROR


def encode(reply: dict[str, Any]) -> bytes:
    """An answer as sent: one JSON line."""
    return json.dumps(reply).encode() + b"\n"


def bind(path: str) -> Listener:
    """Create the control socket at `path`, mode 0600, listening; raise OSError.

    A socket left at `path` by a dead process is replaced; a live one is EADDRINUSE. A client
    checks that the process which called listen() (SO_PEERCRED) is the one holding the
    pidfile: a daemon calls listen() again once it has detached (daemon.run)."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    remove_if_stale(Address("unix", path=path))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
        info = os.stat(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    sock.setblocking(False)
    address = Address("unix", path=path)
    return Listener(address, sock, address, created_file=(info.st_dev, info.st_ino))


def peer(conn: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a unix socket (for a client: the process
    that last called listen() on the server's socket)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _gid = struct.unpack("3i", creds)
    return int(pid), int(uid)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a unix socket."""
    return peer(conn)[1]


class Impostor(Exception):
    """The control socket belongs to another process than the one expected."""


def request(
    path: str,
    command: str,
    timeout: float = 60.0,
    expected_pid: int | None = None,
    trusted_uids: Collection[int] | None = None,
) -> dict[str, Any]:
    """Send one command to the control socket at `path`; raise OSError, ValueError or TypeError,
    or Impostor if the socket is not `expected_pid`'s, or its listener's user is not one of
    `trusted_uids` (checked before anything is sent)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        pid, uid = peer(sock)
        if expected_pid is not None and pid != expected_pid:
            raise Impostor(f"{path}: answered by pid {pid}, not by the supervisor ({expected_pid})")
        if trusted_uids is not None and uid not in trusted_uids:
            raise Impostor(f"{path}: answered as uid {uid}, not as a user trusted there")
        sock.sendall(json.dumps({"command": command}).encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    if not isinstance(answer, dict):
        raise TypeError("the control socket answered something other than an object")
    return answer
