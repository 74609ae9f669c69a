"""Every mode (fork, thread, inline) with every address family, using stdlib-style handlers.

One supervisor per mode hosts one server per (handler, family) pair, so each mode starts once.
The handlers in tests/handlers.py are written for the standard library and used unchanged.
"""

import contextlib
import functools
import os
import shutil
import signal
import socket
import socketserver
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.configs import server_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, readline
from tests.handlers import BaseEchoHandler, DatagramEchoHandler, LineEchoHandler, PidHandler

MODES = ("fork", "thread", "inline")
TIMEOUT = 10.0

# family -> address template; {path} is a unix socket path chosen per server.
STREAM_FAMILIES = {
    "tcp4": "tcp://127.0.0.1:0",
    "tcp6": "tcp://[::1]:0",
    "unix": "unix://{path}",
}
DATAGRAM_FAMILIES = {
    "udp4": "udp://127.0.0.1:0",
    "udp6": "udp://[::1]:0",
    "unixgram": "unixgram://{path}",
}
ALL_FAMILIES = {**STREAM_FAMILIES, **DATAGRAM_FAMILIES}
SOCKET_FAMILIES = {
    "tcp4": socket.AF_INET,
    "udp4": socket.AF_INET,
    "tcp6": socket.AF_INET6,
    "udp6": socket.AF_INET6,
    "unix": socket.AF_UNIX,
    "unixgram": socket.AF_UNIX,
}

# server name prefix -> (handler, the families it serves)
SERVERS: dict[str, tuple[type[socketserver.BaseRequestHandler], dict[str, str]]] = {
    "line": (LineEchoHandler, STREAM_FAMILIES),
    "datagram": (DatagramEchoHandler, DATAGRAM_FAMILIES),
    "base": (BaseEchoHandler, ALL_FAMILIES),
}

Address = tuple[str, int] | str


@functools.cache
def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass
class Hosted:
    """A supervisor running every test server in one mode."""

    mode: str
    supervisor: Supervisor
    directory: Path

    def address(self, name: str, family: str) -> Address:
        if family.endswith("6") and not has_ipv6_loopback():
            pytest.skip("this host has no IPv6 loopback address (::1)")
        if family.startswith("unix"):
            return self.supervisor.unix_path(name)
        return self.supervisor.inet(name)


def config_for(mode: str, directory: Path) -> str:
    tables = []
    for prefix, (handler, families) in SERVERS.items():
        for family, template in families.items():
            if family.endswith("6") and not has_ipv6_loopback():
                continue
            name = f"{prefix}-{family}"
            address = template.format(path=directory / f"{name}.sock")
            tables.append(server_table(name, handler.__name__, address=address, mode=mode))
    tables.append(server_table("pid", PidHandler.__name__, mode=mode))
    return "\n".join(tables)


@pytest.fixture(scope="module", params=MODES)
def hosted(request: pytest.FixtureRequest) -> Iterator[Hosted]:
    """One supervisor per mode, hosting every (handler, family) server at once."""
    mode: str = request.param
    directory = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    config = directory / "supervisor.toml"
    config.write_text(config_for(mode, directory))
    supervisor = Supervisor(config)
    try:
        supervisor.wait_ready()
        yield Hosted(mode, supervisor, directory)
    finally:
        supervisor.stop()
        shutil.rmtree(directory, ignore_errors=True)


def datagram(
    family: str, address: Address, payload: bytes, client_path: Path | None = None
) -> tuple[bytes, Any]:
    """Send one datagram and return (reply, the reply's sender address)."""
    with socket.socket(SOCKET_FAMILIES[family], socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if client_path is not None:
            sock.bind(str(client_path))
        sock.sendto(payload, address)
        return sock.recvfrom(65536)


def sockaddr(family: str, address: Address) -> Any:
    """The address as getsockname() reports it (what the handler sees as server_address)."""
    if isinstance(address, str):
        return address
    if family in ("tcp6", "udp6"):
        return (*address, 0, 0)
    return address


def talk(family: str, address: Address, payload: bytes, client_path: Path) -> bytes:
    """One request: a stream exchange to EOF, or a datagram and its reply."""
    if family in STREAM_FAMILIES:
        return exchange(address, payload, TIMEOUT)
    reply, sender = datagram(
        family, address, payload, client_path if family == "unixgram" else None
    )
    assert sender == sockaddr(family, address)
    return reply


# -- each handler, each family, each mode --------------------------------------------------


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_stream_request_handler(hosted: Hosted, family: str) -> None:
    address = hosted.address(f"line-{family}", family)
    server_address = repr(sockaddr(family, address)).encode()
    reply = exchange(address, b"one\ntwo\n", TIMEOUT)
    assert reply == b"%s one\n%s two\n" % (server_address, server_address)


@pytest.mark.parametrize("family", DATAGRAM_FAMILIES)
def test_datagram_request_handler(hosted: Hosted, sockdir: Path, family: str) -> None:
    address = hosted.address(f"datagram-{family}", family)
    reply = talk(family, address, b"ping\n", sockdir / "client.sock")
    assert reply == b"echo ping\n"


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_base_request_handler(hosted: Hosted, sockdir: Path, family: str) -> None:
    address = hosted.address(f"base-{family}", family)
    reply = talk(family, address, b"ping\n", sockdir / "client.sock")
    assert reply == b"base ping\n"


def test_unbound_unixgram_client_leaves_the_server_serving(hosted: Hosted, sockdir: Path) -> None:
    """An unbound unix datagram client cannot be answered; the next (bound) one still is."""
    address = hosted.address("datagram-unixgram", "unixgram")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(b"nobody\n", address)
    reply, sender = datagram("unixgram", address, b"somebody\n", sockdir / "client.sock")
    assert (reply, sender) == (b"echo somebody\n", address)


# -- the same handler under socketserver and under the supervisor ---------------------------


@contextlib.contextmanager
def stdlib_server(
    server_class: type[socketserver.TCPServer], handler: type[socketserver.BaseRequestHandler]
) -> Iterator[tuple[str, int]]:
    """A real socketserver server on 127.0.0.1 port 0, serving in a thread of this process."""
    with server_class(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        try:
            host, port = server.socket.getsockname()
            yield host, port
        finally:
            server.shutdown()
            thread.join(TIMEOUT)


@pytest.mark.parametrize(
    ("handler", "family", "expected"),
    [
        (LineEchoHandler, "tcp4", b"<server_address> one\n<server_address> two\n"),
        (BaseEchoHandler, "tcp4", b"base one\ntwo\n"),
        (DatagramEchoHandler, "udp4", b"echo one\ntwo\n"),
        (BaseEchoHandler, "udp4", b"base one\ntwo\n"),
    ],
    ids=["line-tcp", "base-tcp", "datagram-udp", "base-udp"],
)
def test_stdlib_handlers_run_unchanged(
    hosted: Hosted,
    sockdir: Path,
    handler: type[socketserver.BaseRequestHandler],
    family: str,
    expected: bytes,
) -> None:
    """The same class answers the same way under socketserver and under the supervisor."""
    payload = b"one\ntwo\n"
    server_class = socketserver.TCPServer if family == "tcp4" else socketserver.UDPServer
    with stdlib_server(server_class, handler) as reference:
        stdlib_reply = talk(family, reference, payload, sockdir / "client.sock")
    prefix = {LineEchoHandler: "line", DatagramEchoHandler: "datagram", BaseEchoHandler: "base"}
    hosted_address = hosted.address(f"{prefix[handler]}-{family}", family)
    hosted_reply = talk(family, hosted_address, payload, sockdir / "client.sock")

    def normalised(reply: bytes, address: Address) -> bytes:
        return reply.replace(repr(address).encode(), b"<server_address>")

    assert normalised(hosted_reply, hosted_address) == normalised(stdlib_reply, reference)
    assert normalised(hosted_reply, hosted_address) == expected


# -- where the request runs -----------------------------------------------------------------


def test_request_runs_in_a_child_only_in_fork_mode(hosted: Hosted) -> None:
    supervisor = hosted.supervisor
    with connect(supervisor.inet("pid"), TIMEOUT) as sock:
        pid = int(readline(sock))
        if hosted.mode == "fork":
            assert pid != supervisor.pid
            child = psutil.Process(pid)
            forkers = {supervisor.pid} | {each.pid for each in supervisor.fork_servers()}
            assert child.ppid() in forkers  # the supervisor, or its fork server
            assert pid in {each.pid for each in supervisor.live_children()}
        else:
            assert pid == supervisor.pid
        sock.sendall(b"done\n")
        assert readline(sock) == b"bye\n"
        assert sock.recv(1) == b""
    if hosted.mode == "fork":
        child.wait(TIMEOUT)  # returns once the supervisor has reaped it
        assert not psutil.pid_exists(pid)


# -- stopping -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_removes_unix_socket_files_and_exits_0(
    start_supervisor: StartSupervisor, sockdir: Path, mode: str
) -> None:
    stream_path = sockdir / "stream.sock"
    datagram_path = sockdir / "datagram.sock"
    supervisor = start_supervisor(
        server_table("stream", "BaseEchoHandler", address=f"unix://{stream_path}", mode=mode)
        + server_table(
            "datagram", "BaseEchoHandler", address=f"unixgram://{datagram_path}", mode=mode
        )
    )
    for path in (stream_path, datagram_path):
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert exchange(str(stream_path), b"x", TIMEOUT) == b"base x"
    client_path = sockdir / "client.sock"
    assert datagram("unixgram", str(datagram_path), b"y", client_path)[0] == b"base y"
    client_path.unlink()

    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert sorted(os.listdir(sockdir)) == []
    assert supervisor.lines[-1].endswith("stopped")
    assert "Traceback" not in supervisor.log
