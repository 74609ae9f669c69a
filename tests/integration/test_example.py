"""The bundled example configuration, etc/supervisor.toml, run as shipped.

It binds fixed loopback ports (7007...) and fixed unix paths: if one is already in use, the test
is skipped (not failed), since the cause is outside this checkout.
"""

import calendar
import errno
import os
import re
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from xmlrpc.client import ServerProxy

import pytest

from supervisor import config
from tests.conftest import ROOT, Supervisor, exchange

EXAMPLE = ROOT / "etc" / "supervisor.toml"
TIMEOUT = 10.0
RFC868_OFFSET = 2_208_988_800
ALREADY_RUNNING = r"supervisor already running as pid (\d+)"
BIND_ERROR = r"((?:servers\.)?\S+?)(?:\.address)?: cannot bind (\S+) \((.*)\)"


@pytest.fixture
def example() -> Iterator[Supervisor]:
    """The example running, or a skip if one of its addresses is taken."""
    supervisor = Supervisor(EXAMPLE)
    try:
        match = supervisor.wait_for_log(rf"ready: |{BIND_ERROR}|{ALREADY_RUNNING}", timeout=20)
        if match[4] is not None:
            assert supervisor.wait() == os.EX_UNAVAILABLE
            pytest.skip(f"the example is already running on this host (pid {match[4]})")
        if match[1] is not None:
            assert supervisor.wait() == os.EX_OSERR
            if match[3] == os.strerror(errno.EADDRNOTAVAIL) and "[::1]" in match[2]:
                pytest.skip(f"this host has no IPv6 loopback address for {match[1]}")
            if match[3] != os.strerror(errno.EADDRINUSE):
                pytest.fail(f"the example cannot bind {match[2]}: {match[3]}")
            pytest.skip(f"the example's {match[1]} address {match[2]} is already in use")
        yield supervisor.wait_ready()
    finally:
        supervisor.stop()


def datagram(
    family: socket.AddressFamily, address: tuple[str, int] | str, client: Path | None = None
) -> bytes:
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        if client is not None:
            sock.bind(str(client))
        sock.sendto(b"example\n", address)
        reply, sender = sock.recvfrom(65536)
    assert sender == address
    return reply


def host(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def daytime_stamp(reply: bytes) -> int:
    assert reply.endswith(b"\r\n")
    text = reply[:-2].decode("ascii")
    return calendar.timegm(time.strptime(text, "%A, %B %d, %Y %H:%M:%S-UTC"))


def requests(supervisor: Supervisor, sockdir: Path) -> dict[str, Callable[[], bytes]]:
    """One request per server of the example, returning the reply."""
    inet, unix = supervisor.inet, supervisor.unix_path
    return {
        "echo": lambda: exchange(inet("echo"), b"echo\n"),
        "echo-udp": lambda: datagram(socket.AF_INET, inet("echo-udp")),
        "echo-v6": lambda: exchange(inet("echo-v6"), b"six\n"),
        "discard": lambda: exchange(inet("discard"), b"x" * 100_000),
        "daytime": lambda: exchange(inet("daytime"), b""),
        "qotd": lambda: exchange(inet("qotd"), b""),
        "chargen": lambda: exchange(inet("chargen"), b""),
        "time": lambda: exchange(inet("time"), b""),
        "time-udp": lambda: datagram(socket.AF_INET, inet("time-udp")),
        "hello": lambda: exchange(inet("hello"), b"GET /example HTTP/1.0\r\n\r\n"),
        "hello-prefork": lambda: exchange(inet("hello-prefork"), b"GET /pre HTTP/1.0\r\n\r\n"),
        "xmlrpc": lambda: str(ServerProxy(f"http://{host(inet('xmlrpc'))}").add(2, 3)).encode(),
        "wsgi": lambda: exchange(inet("wsgi"), b"GET /hi HTTP/1.0\r\n\r\n"),
        "echo-unix": lambda: exchange(unix("echo-unix"), b"unix\n"),
        "daytime-unixgram": lambda: datagram(
            socket.AF_UNIX, unix("daytime-unixgram"), sockdir / "client.sock"
        ),
    }


def test_example_serves_every_server_then_stops(example: Supervisor, sockdir: Path) -> None:
    example_config = config.load(str(EXAMPLE))  # (its relative unix paths resolved)
    configured = {name: str(server.address) for name, server in example_config.servers.items()}
    assert example.addresses == {**configured, "metrics": str(example_config.metrics.address)}
    assert example.unix_path("echo-unix") == str(ROOT / "etc" / "run" / "echo.sock")

    before = int(time.time())
    replies = {name: request() for name, request in requests(example, sockdir).items()}
    after = time.time()
    assert set(replies) == set(configured)
    health = exchange(example.inet("metrics"), b"GET /healthz HTTP/1.0\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 OK\r\n")

    assert replies["echo"] == b"echo\n"
    assert replies["echo-udp"] == b"example\n"
    assert replies["echo-v6"] == b"six\n"
    assert replies["discard"] == b""
    assert before <= daytime_stamp(replies["daytime"]) <= after
    assert before <= daytime_stamp(replies["daytime-unixgram"]) <= after
    assert replies["qotd"].endswith(b"\r\n")
    assert 0 < len(replies["qotd"]) < 512
    pattern = bytes(range(32, 127)) * 2
    assert len(replies["chargen"]) == 1 << 20
    assert replies["chargen"].startswith(pattern[:72] + b"\r\n" + pattern[1:73] + b"\r\n")
    for name in ("time", "time-udp"):
        (seconds,) = struct.unpack("!I", replies[name])
        assert before + RFC868_OFFSET <= seconds <= after + RFC868_OFFSET
    head, _, body = replies["hello"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert re.fullmatch(rb"Hello from hello \(pid \d+\): /example\n", body)
    head, _, body = replies["hello-prefork"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    served = re.fullmatch(rb"Hello from hello-prefork \(pid (\d+)\): /pre\n", body)
    assert served is not None
    assert int(served[1]) in {child.pid for child in example.live_children()}  # a worker

    assert replies["xmlrpc"] == b"5"
    head, _, body = replies["wsgi"].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"\r\nServer: WSGIServer/0.2 " in head  # wsgiref's own, as its server_bind set it up
    wsgi = re.fullmatch(rb"hello from WSGIServer/[\d.]+ at (\S+):7083/hi, pid (\d+)\n", body)
    assert wsgi is not None, body
    assert wsgi[1].decode() == socket.getfqdn("127.0.0.1")  # SERVER_NAME, as wsgiref sets it
    assert int(wsgi[2]) in {child.pid for child in example.live_children()}  # a worker

    unix_paths = [example.unix_path(name) for name in ("echo-unix", "daytime-unixgram")]
    assert all(os.path.exists(path) for path in unix_paths)
    example.signal(signal.SIGTERM)
    assert example.wait() == 0
    assert example.lines[-1].endswith("stopped")
    assert not any(os.path.exists(path) for path in unix_paths)
