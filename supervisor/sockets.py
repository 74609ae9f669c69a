"""Binding listening sockets, and the unix socket files that come with them.

Invariants: every socket returned is close-on-exec; a listening stream socket is non-blocking,
a datagram socket stays blocking for its handlers and is read with MSG_DONTWAIT (see server.py);
a unix socket file is only ever removed by us if it is a socket nobody is listening on (stale)
or the very file we created; its permissions (`SocketFile`: mode, owner, group) are set
between bind() and listen(), so no client can connect before they are right.
"""

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass, field

from supervisor.addresses import Address
from supervisor.config import SocketFile

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
    # SO_REUSEPORT as the socket was bound with it (inherited: as the service manager set it).
    # It only counts before bind(): a kept socket keeps it as it is.
    reuse_port: bool = False
    # A unix socket file's permissions as configured now, and as they were made by bind()
    # (mode, uid, gid), which is what a setting removed by a reload goes back to.
    socket_file: SocketFile = field(default_factory=SocketFile)
    file_default: tuple[int, int, int] | None = None

    def let_go(self) -> None:
        """Close our descriptor only: the socket (and its file) belong to another process now
        (upgrade.py), which goes on listening on it."""
        self.created_file = None
        self.socket.close()

    def close(self) -> None:
        """Close the socket and remove the unix socket file if it is still ours."""
        self.socket.close()
        if self.created_file is not None:
            remove_socket_file(self.address.path, self.created_file)
            self.created_file = None


class SocketFileError(OSError):
    """The permissions of a unix socket file cannot be set (chmod or chown failed)."""


def bind(
    address: Address, backlog: int, socket_file: SocketFile | None = None, reuse_port: bool = False
) -> Listener:
    """Create, bind and (for stream sockets) listen; raise OSError with errno and reason
    (SocketFileError if a unix socket file's `socket_file` permissions cannot be set).
    `reuse_port`: SO_REUSEPORT before bind() (TCP and UDP only), so that other sockets of the
    same user that set it too can bind the same address, the kernel spreading connections and
    datagrams among them."""
    if address.is_unix:
        return _bind_unix(address, backlog, socket_file or SocketFile())
    return _bind_inet(address, backlog, reuse_port)


def _bind_inet(address: Address, backlog: int, reuse_port: bool) -> Listener:
    infos = socket.getaddrinfo(
        address.host, address.port, type=address.socket_type, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if address.is_stream:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    bound = Address(address.scheme, host=host, port=port)
    return Listener(address, sock, bound, reuse_port=reuse_port)


def _bind_unix(address: Address, backlog: int, socket_file: SocketFile) -> Listener:
    path = address.path
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    remove_if_stale(address)
    sock = socket.socket(socket.AF_UNIX, address.socket_type)
    listener = Listener(address, sock, address)
    try:
        guarded = socket_file != SocketFile() and not address.is_stream
        mode = _bind_file(sock, path, guarded)
        info = os.lstat(path)
        listener.created_file = (info.st_dev, info.st_ino)
        if mode is None:
            mode = stat.S_IMODE(info.st_mode)
        listener.file_default = (mode, info.st_uid, info.st_gid)
        # Before listen(): until then a connect() is refused, whatever the file allows.
        apply_socket_file(listener, socket_file)
        if address.is_stream:
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        listener.close()
        raise
    return listener


def _bind_file(sock: socket.socket, path: str, guarded: bool) -> int | None:
    """bind(). `guarded`: a datagram socket, which takes datagrams from bind() on, that gets
    permissions of its own: it is made with mode 0 until those are set, and the mode it
    would have had is returned."""
    if not guarded:
        sock.bind(path)
        return None
    umask = os.umask(0o777)
    try:
        sock.bind(path)
    finally:
        os.umask(umask)
    return 0o777 & ~umask


def apply_socket_file(listener: Listener, wanted: SocketFile) -> None:
    """Give a unix socket file the configured mode, owner and group; a setting left out gets
    back what bind() made (a reload may remove one). Only what differs is changed: a
    supervisor that dropped its privileges may still keep a file as it is. Raise
    SocketFileError."""
    path = listener.address.path
    # The file is opened (O_PATH, not following a symlink) and changed through that
    # descriptor, never by path again: whoever can write the directory could otherwise swap a
    # symlink in between, and a root supervisor would chmod or chown the link's target.
    try:  # (a symlink opens as itself: _apply_to then finds it is not our socket)
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SocketFileError(exc.errno, exc.strerror or str(exc)) from exc
    try:
        _apply_to(listener, wanted, fd)
    finally:
        os.close(fd)
    listener.socket_file = wanted


def _apply_to(listener: Listener, wanted: SocketFile, fd: int) -> None:
    path = listener.address.path
    info = os.fstat(fd)
    ours = listener.created_file
    if not stat.S_ISSOCK(info.st_mode) or (ours is not None and (info.st_dev, info.st_ino) != ours):
        raise SocketFileError(errno.EEXIST, f"{path} is not our socket any more")
    by_fd = f"/proc/self/fd/{fd}"  # (an O_PATH descriptor: the file itself, no path lookup)
    try:
        current = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
        if listener.file_default is None:  # an inherited socket's file, as it was found
            listener.file_default = current
        mode, uid, gid = listener.file_default
        uid = uid if wanted.uid == -1 else wanted.uid
        gid = gid if wanted.gid == -1 else wanted.gid
        mode = mode if wanted.mode is None else wanted.mode
        if (uid, gid) != current[1:]:
            os.chown(by_fd, -1 if uid == info.st_uid else uid, -1 if gid == info.st_gid else gid)
        if mode != current[0]:
            os.chmod(by_fd, mode)
    except OSError as exc:
        raise SocketFileError(exc.errno, exc.strerror or str(exc)) from exc


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
    # Any error: a supervisor that dropped its privileges may not write the directory any
    # more; the file is left behind, and the next start replaces it (stale).
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
