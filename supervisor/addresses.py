"""Server addresses: parse `tcp://`, `udp://`, `unix://` and `unixgram://` URLs.

Pure functions and a frozen dataclass; no socket is created here (that is `sockets.py`).
An `Address` always prints back as the canonical URL it was parsed from.
"""

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Literal

Scheme = Literal["tcp", "udp", "unix", "unixgram"]
SCHEMES: tuple[Scheme, ...] = ("tcp", "udp", "unix", "unixgram")

# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
UNIX_PATH_MAX = 107

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)*$")


@dataclass(frozen=True)
class Address:
    """Where a server listens: an IP host and port, or a unix socket path."""

    scheme: Scheme
    host: str = ""
    port: int = 0
    path: str = ""

    @property
    def is_unix(self) -> bool:
        return self.scheme in ("unix", "unixgram")

    @property
    def is_stream(self) -> bool:
        return self.scheme in ("tcp", "unix")

    @property
    def socket_type(self) -> socket.SocketKind:
        return socket.SOCK_STREAM if self.is_stream else socket.SOCK_DGRAM

    def __str__(self) -> str:
        if self.is_unix:
            return f"{self.scheme}://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse(text: str) -> Address:
    """Parse an address URL; raise ValueError with a short reason when it is malformed."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ValueError("expected SCHEME://..., for example tcp://127.0.0.1:7007")
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}, expected one of {', '.join(SCHEMES)}")
    if scheme in ("unix", "unixgram"):
        return Address(scheme, path=_parse_path(rest))
    host, port = _parse_host_port(rest)
    return Address(scheme, host=host, port=port)


def _parse_path(rest: str) -> str:
    if not rest.startswith("/"):
        raise ValueError("a unix socket path must be absolute, as in unix:///run/echo.sock")
    if rest.endswith("/"):
        raise ValueError("a unix socket path must name a file, not a directory")
    if len(rest.encode()) > UNIX_PATH_MAX:
        raise ValueError(f"a unix socket path is at most {UNIX_PATH_MAX} bytes long")
    return rest


def _parse_host_port(rest: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, bracket, port_text = rest[1:].partition("]")
        if not bracket or not port_text.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        port_text = port_text[1:]
        _check_ipv6(host)
    else:
        host, colon, port_text = rest.rpartition(":")
        if not colon:
            raise ValueError("expected HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, as in tcp://[::1]:7007")
        if not _HOSTNAME.match(host):
            raise ValueError(f"invalid host {host!r}")
    return host, _parse_port(port_text)


def _check_ipv6(host: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError as exc:
        raise ValueError(f"invalid IPv6 address {host!r}") from exc


def _parse_port(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ValueError(f"invalid port {text!r}")
    port = int(text)
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return port


def overlaps(a: Address, b: Address) -> bool:
    """Whether two addresses would compete for one socket: the same unix path, or the same
    protocol and port on hosts that are equal or where one is the wildcard of the other's family
    (port 0 never overlaps: each binds its own ephemeral port)."""
    if a.is_unix or b.is_unix:
        return a.is_unix and b.is_unix and _normpath(a.path) == _normpath(b.path)
    if a.scheme != b.scheme or a.port != b.port or a.port == 0:
        return False
    host_a, host_b = _canonical_host(a.host), _canonical_host(b.host)
    if host_a == host_b:
        return True
    return any(
        isinstance(wild, ipaddress.IPv4Address | ipaddress.IPv6Address)
        and wild.is_unspecified
        and (not isinstance(other, str) and other.version == wild.version)
        for wild, other in ((host_a, host_b), (host_b, host_a))
    )


def same(a: Address, b: Address) -> bool:
    """Whether two addresses name the same socket (IP spellings and unix paths normalised)."""
    if a.is_unix or b.is_unix:
        return a.scheme == b.scheme and _normpath(a.path) == _normpath(b.path)
    return (a.scheme, a.port) == (b.scheme, b.port) and _canonical_host(a.host) == _canonical_host(
        b.host
    )


def _canonical_host(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | str:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return host.lower()


def _normpath(path: str) -> str:
    return os.path.normpath(path)
