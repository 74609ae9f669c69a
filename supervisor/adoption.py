"""Adopt a socketserver server object built unbound, so it is what its own class would make.

A `server =` factory returns a `socketserver.BaseServer` built with `bind_and_activate=False`:
it has an unbound socket of its own, and its class's `server_bind()` / `server_activate()` have
not run. The supervisor owns the real listening socket; adoption runs those two hooks once, with
the object's `socket` a stand-in (`Binding`) that knows the real bound address, so that what the
hooks compute (`server_address`, `HTTPServer.server_name` / `server_port`,
`WSGIServer.base_environ`) comes out exactly as in the standard library, while `bind`, `listen`
and `setsockopt` reach nothing. Anything else a hook does to the socket (`connect`, `fileno`, a
wrapped SSL socket's calls) is refused: its effect could not be had on the supervisor's socket.

Afterwards the object's `socket` is the one its handlers may use (server.py: a closed socket of
the listener's kind for a stream server, the datagram reply socket for a datagram one), never the
supervisor's listener; `shutdown()` returns at once (there is no `serve_forever` to stop).

Like handling.py, this imports only the standard library and no `typing` at run time: the fork
server loads it by its location to adopt its own copy of each object (forkserver.py).
"""

from __future__ import annotations  # (no typing module at run time: see above)

import socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socketserver
    from typing import Any

# What server_bind / server_activate may do to the socket: their effect is the supervisor's.
ALLOWED = ("bind", "listen", "setsockopt", "getsockopt", "getsockname")
# Read-only facts of the socket a hook may look at.
FACTS = ("family", "type", "proto")


class Refused(ValueError):
    """The object cannot be hosted; the message is one line."""


class Binding:
    """The object's `socket` while its class's server_bind / server_activate run."""

    def __init__(self, address: Any, family: int, kind: int, proto: int) -> None:
        self._address = address
        self.family = socket.AddressFamily(family)
        self.type = socket.SocketKind(kind)
        self.proto = proto
        self.refused: str | None = None

    def bind(self, address: Any) -> None:
        return None

    def listen(self, backlog: int = 0) -> None:
        return None

    def setsockopt(self, *args: Any) -> None:
        return None

    def getsockopt(self, *args: Any) -> int:
        return 0

    def getsockname(self) -> Any:
        return self._address

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        self.refused = name
        raise Refused(
            f"server_bind() or server_activate() calls socket.{name}(): only "
            f"{', '.join(ALLOWED)} are allowed on the supervisor's listening socket"
        )


def stand_in(family: int, kind: int, proto: int) -> socket.socket:
    """A closed socket of the listener's kind: `socket` for a stream server's handlers (as a
    forked child's would be once it has closed the listener)."""
    sock = socket.socket(family, kind, proto)
    sock.close()
    return sock


def unbound(obj: Any) -> bool:
    """Whether the object's own socket has no address yet (built with bind_and_activate=False)."""
    sock = getattr(obj, "socket", None)
    if sock is None:
        return True
    try:
        name = sock.getsockname()
    except OSError:
        return True  # (closed, or not a socket: nothing bound)
    return name[1] == 0 if isinstance(name, tuple) else not name  # (port 0, or no path)


def adopt(obj: socketserver.BaseServer, address: Any, family: int, kind: int, proto: int) -> None:
    """Run the object's server_bind / server_activate against the bound `address`; raises
    Refused, or whatever its hooks raise. Either way the object's socket is then a closed one
    of the listener's kind (`stand_in`), so that its server_close() has nothing to harm."""
    own = getattr(obj, "socket", None)
    binding = Binding(address, family, kind, proto)
    obj.address_family = binding.family  # type: ignore[attr-defined]  # (IPv6, unix: as bound)
    obj.server_address = address
    obj.socket = binding  # type: ignore[attr-defined]
    try:
        obj.server_bind()  # type: ignore[attr-defined]
        obj.server_activate()  # (a datagram server's too, as BaseServer.__init__ calls it)
    finally:
        if isinstance(own, socket.socket):
            own.close()  # (the unbound socket it was built with: never used)
        obj.socket = stand_in(family, kind, proto)  # type: ignore[attr-defined]
    if binding.refused is not None:
        raise Refused(f"server_bind() or server_activate() calls socket.{binding.refused}()")
    # BaseServer.shutdown() waits for serve_forever to end: there is none here.
    stopped = getattr(obj, "_BaseServer__is_shut_down", None)
    if stopped is not None:
        stopped.set()
