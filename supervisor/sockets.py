"""Binding listening sockets, and the unix socket files that come with them.

Invariants: every socket returned is close-on-exec; a listening stream socket is non-blocking,
a datagram socket stays blocking for its handlers and is read with MSG_DONTWAIT (see server.py);
a unix socket file is only ever removed by us if it is a socket nobody is listening on (stale)
or the very file we created.
"""

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass

from supervisor.addresses import Address

# accept() reports these for the connection at hand, not the listener: drop it and go on.
TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNABORTED,
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EPROTO,
        errno.ENETDOWN,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.EHOSTUNREACH,
        errno.ENOPROTOOPT,
        errno.EOPNOTSUPP,
        errno.EPERM,
    }
)


@dataclass
class Listener:
    """A bound socket and the address it really got (port 0 becomes the real port)."""

    address: Address
    socket: socket.socket
    bound: Address
    created_file: tuple[int, int] | None = None  # (st_dev, st_ino) of the unix socket file
    inherited: bool = False  # passed in by systemd: kept open for the whole life of the process
    fd_name: str = ""  # systemd's FileDescriptorName= for an inherited socket

    def close(self) -> None:
        """Close the socket and remove the unix socket file if it is still ours."""
        self.socket.close()
        if self.created_file is not None:
            remove_socket_file(self.address.path, self.created_file)
            self.created_file = None


def bind(address: Address, backlog: int) -> Listener:
    """Create, bind and (for stream sockets) listen; raise OSError with errno and reason."""
    if address.is_unix:
        return _bind_unix(address, backlog)
    return _bind_inet(address, backlog)


def _bind_inet(address: Address, backlog: int) -> Listener:
    infos = socket.getaddrinfo(
        address.host, address.port, type=address.socket_type, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if address.is_stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if address.is_stream:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    return Listener(address, sock, Address(address.scheme, host=host, port=port))


def _bind_unix(address: Address, backlog: int) -> Listener:
    path = address.path
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    remove_if_stale(address)
    sock = socket.socket(socket.AF_UNIX, address.socket_type)
    try:
        sock.bind(path)
        if address.is_stream:
            sock.listen(backlog)
            sock.setblocking(False)
        info = os.stat(path)
    except OSError:
        sock.close()
        raise
    return Listener(address, sock, address, created_file=(info.st_dev, info.st_ino))


def remove_if_stale(address: Address) -> None:
    """Remove a socket file left behind by a dead process; refuse to touch anything else."""
    try:
        info = os.lstat(address.path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise OSError(errno.EEXIST, f"{address.path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, address.socket_type) as probe:
        probe.setblocking(False)  # a live listener with a full backlog must not hang us
        try:
            probe.connect(address.path)
        except ConnectionRefusedError:
            os.unlink(address.path)
            return
        except BlockingIOError:
            pass  # someone is listening, with a full queue
        except OSError:
            return  # let bind() report the real problem
    raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))


def remove_socket_file(path: str, identity: tuple[int, int]) -> None:
    """Unlink `path` only if it is still the file (device, inode) we created."""
    with contextlib.suppress(FileNotFoundError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
