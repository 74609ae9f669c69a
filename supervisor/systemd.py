"""systemd integration: readiness notifications, the watchdog, and socket activation.

Small functions over the process environment, no state kept here. Invariants:

- nothing is sent unless `NOTIFY_SOCKET` is set and not empty; a notification that cannot be
  sent is reported as False, never raised (running under systemd is optional);
- sockets are only taken when `LISTEN_PID` is our own pid (the variables may have been meant
  for the process that started us); taken sockets are made close-on-exec, and by default the
  `LISTEN_*` variables are removed from `os.environ`, as `sd_listen_fds(1)` does, so that a
  forked child never believes the sockets are its own.
"""

import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from supervisor.addresses import Address
from supervisor.loop import Loop
from supervisor.sockets import Listener

# The first inherited fd (SD_LISTEN_FDS_START): 0-2 are stdin, stdout and stderr.
LISTEN_FDS_START = 3
LISTEN_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `message` (such as "READY=1") to $NOTIFY_SOCKET; return whether it was sent.

    A socket is opened and closed per call, so nothing is shared with forked children. The
    send blocks as `sd_notify()` does; systemd reads its notification socket promptly.
    """
    target = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not target:
        return False
    if target.startswith("@"):
        target = "\0" + target[1:]  # an abstract socket address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), target)
    except OSError:
        return False
    return True


def monotonic_usec() -> int:
    """Microseconds of CLOCK_MONOTONIC, the clock systemd's MONOTONIC_USEC= refers to."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def reloading_message() -> str:
    """The notification that starts a reload (Type=notify-reload requires MONOTONIC_USEC=)."""
    return f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec()}"


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two WATCHDOG=1 notifications (half of WATCHDOG_USEC), or None when the
    watchdog is off, malformed, or meant for another process (WATCHDOG_PID)."""
    env = os.environ if environ is None else environ
    usec = _positive_int(env.get("WATCHDOG_USEC", ""))
    if usec is None:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text is not None and _positive_int(pid_text) != os.getpid():
        return None
    return usec / 2 / 1_000_000


def keep_watchdog(loop: Loop, status: Callable[[], str]) -> None:
    """Ping the service manager's watchdog from the loop, with a fresh STATUS=, if it has one
    for us: a loop that stops turning stops the pings, and the service manager acts."""
    interval = watchdog_interval()
    if interval is None:
        return

    def ping() -> None:
        notify(f"WATCHDOG=1\nSTATUS={status()}")
        loop.call_later(interval, ping)

    ping()


@dataclass(frozen=True)
class InheritedSocket:
    """A socket passed by the service manager, with its LISTEN_FDNAMES name ("" if none)."""

    name: str
    socket: socket.socket


def listen_fds(
    environ: Mapping[str, str] | None = None, unset: bool = True
) -> list[InheritedSocket]:
    """The sockets passed by socket activation (fds 3, 4, ...), as `sd_listen_fds_with_names`.

    Returns [] when LISTEN_PID is not our pid or a variable is malformed. With `unset`, the
    LISTEN_* variables are removed from `os.environ` whatever the outcome (as libsystemd does).
    Raises OSError only when a passed fd is not an open socket.
    """
    env = os.environ if environ is None else environ
    try:
        count = _fd_count(env)
        if count == 0:
            return []
        names = env.get("LISTEN_FDNAMES", "").split(":")
        return _wrap(count, names)
    finally:
        if unset:
            for variable in LISTEN_VARIABLES:
                os.environ.pop(variable, None)


def _fd_count(env: Mapping[str, str]) -> int:
    """LISTEN_FDS when LISTEN_PID is ours and both are valid, else 0."""
    if _positive_int(env.get("LISTEN_PID", "")) != os.getpid():
        return 0
    return _positive_int(env.get("LISTEN_FDS", "")) or 0


def _wrap(count: int, names: list[str]) -> list[InheritedSocket]:
    """Wrap fds 3..3+count-1; on failure release the ones wrapped so far and raise OSError."""
    taken: list[InheritedSocket] = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        try:
            sock = socket.socket(fileno=fd)  # family, type and protocol are read from the fd
        except OSError as exc:
            for inherited in taken:
                inherited.socket.detach()  # leave the fds as they were
            raise OSError(
                exc.errno, f"LISTEN_FDS: fd {fd} is not a socket ({exc.strerror})"
            ) from exc
        os.set_inheritable(fd, False)
        name = names[index] if index < len(names) else ""
        taken.append(InheritedSocket(name, sock))
    return taken


def bound_address(sock: socket.socket) -> Address:
    """The address an inherited socket is bound to; ValueError for a socket no server can use
    (another family or type, an unnamed or abstract unix socket)."""
    if sock.type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"unsupported socket type {sock.type!r}")
    stream = sock.type == socket.SOCK_STREAM
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return Address("tcp" if stream else "udp", host=host, port=port)
    if sock.family == socket.AF_UNIX:
        path = sock.getsockname()
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"unsupported unix socket address {path!r} (unnamed or abstract)")
        return Address("unix" if stream else "unixgram", path=path)
    raise ValueError(f"unsupported socket family {sock.family!r}")


def adopt(sock: socket.socket) -> Listener:
    """A Listener for an inherited socket, in the state `sockets.bind` leaves its sockets:
    close-on-exec, a stream socket listening and non-blocking, a datagram socket blocking.
    `created_file` is None: the unix socket file belongs to the service manager."""
    address = bound_address(sock)
    if address.is_stream and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"{address}: the inherited stream socket is not listening")
    sock.set_inheritable(False)
    sock.setblocking(not address.is_stream)
    reuse_port = bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))  # (ReusePort=)
    return Listener(address, sock, address, reuse_port=reuse_port)


def _positive_int(text: str) -> int | None:
    """A decimal integer > 0 written with ASCII digits only, else None."""
    if not text.isascii() or not text.isdigit() or len(text) > 20:  # (beyond any pid or fd)
        return None
    value = int(text)
    return value if value > 0 else None
