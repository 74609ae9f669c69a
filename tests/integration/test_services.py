"""The bundled inetd services, driven by real clients (nc, socat, curl) as subprocesses.

One supervisor hosts every service, in a mix of modes. Expected replies are built here from the
RFCs, not from the services' own functions (those have unit tests of their own), except the
quote of the day, whose text only the service knows.
"""

import calendar
import os
import re
import selectors
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from supervisor_services.chargen import ChargenHandler
from supervisor_services.qotd import quote_of_the_day

from tests.configs import server_table
from tests.conftest import Supervisor

CLIENT_TIMEOUT = 20.0  # seconds any client subprocess may run
REPLY_TIMEOUT = 10.0  # seconds to wait for a datagram reply
RFC868_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
CHARGEN_LIMIT: int = ChargenHandler.limit
DAYTIME_FORMAT = "%A, %B %d, %Y %H:%M:%S-UTC"

# name -> (address template, handler, mode); {dir} is the supervisor's socket directory.
SERVICES = {
    "echo": ("tcp://127.0.0.1:0", "echo:EchoHandler", "fork"),
    "echo-udp": ("udp://127.0.0.1:0", "echo:EchoHandler", "thread"),
    "echo-unix": ("unix://{dir}/echo.sock", "echo:EchoHandler", "fork"),
    "discard": ("tcp://127.0.0.1:0", "discard:DiscardHandler", "thread"),
    "daytime": ("tcp://127.0.0.1:0", "daytime:DaytimeHandler", "inline"),
    "daytime-unixgram": ("unixgram://{dir}/daytime.sock", "daytime:DaytimeHandler", "fork"),
    "time": ("tcp://127.0.0.1:0", "time:TimeHandler", "inline"),
    "time-udp": ("udp://127.0.0.1:0", "time:TimeHandler", "fork"),
    "qotd": ("tcp://127.0.0.1:0", "qotd:QotdHandler", "thread"),
    "chargen": ("tcp://127.0.0.1:0", "chargen:ChargenHandler", "fork"),
    "chargen-udp": ("udp://127.0.0.1:0", "chargen:ChargenHandler", "inline"),
    "hello": ("tcp://127.0.0.1:0", "hello:HelloHandler", "fork"),
    "hello-unix": ("unix://{dir}/hello.sock", "hello:HelloHandler", "thread"),
}


@dataclass
class Services:
    supervisor: Supervisor
    directory: Path

    def port(self, name: str) -> str:
        return str(self.supervisor.inet(name)[1])

    def path(self, name: str) -> str:
        return self.supervisor.unix_path(name)


@pytest.fixture(scope="module")
def services() -> Iterator[Services]:
    directory = Path(tempfile.mkdtemp(prefix="sv-", dir="/tmp"))
    config = directory / "supervisor.toml"
    config.write_text(
        "".join(
            server_table(
                name,
                f"supervisor_services.{handler}",
                address=address.format(dir=directory),
                mode=mode,
            )
            for name, (address, handler, mode) in SERVICES.items()
        )
    )
    supervisor = Supervisor(config)
    try:
        supervisor.wait_ready()
        yield Services(supervisor, directory)
    finally:
        supervisor.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- clients --------------------------------------------------------------------------------


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def run(args: list[str], data: bytes = b"") -> bytes:
    """Run a client to completion with `data` on its stdin; return its stdout."""
    result = subprocess.run(
        args, input=data, capture_output=True, timeout=CLIENT_TIMEOUT, check=False
    )
    assert result.returncode == 0, f"{args} exited with {result.returncode}: {result.stderr!r}"
    assert result.stderr == b"", f"{args} wrote to stderr: {result.stderr!r}"
    return result.stdout


def read_until(stream: IO[bytes], complete: Callable[[bytes], bool]) -> bytes:
    """Read from a pipe until `complete(data)`, with a deadline."""
    data = b""
    deadline = time.monotonic() + REPLY_TIMEOUT
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while not complete(data):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                raise AssertionError(f"no complete reply within {REPLY_TIMEOUT}s, got {data!r}")
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                raise AssertionError(f"the client exited before a complete reply, got {data!r}")
            data += chunk
    return data


def socat_datagram(address: str, payload: bytes, complete: Callable[[bytes], bool]) -> bytes:
    """Send one datagram with socat and return the reply it prints.

    socat keeps waiting for datagrams after its stdin closes (only a fixed -t delay ends it),
    so the reply itself is the signal: read it with a deadline, then stop socat.
    """
    args = [need("socat"), "-", address]
    with subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            process.stdin.write(payload)
            process.stdin.flush()
            return read_until(process.stdout, complete)
        finally:
            process.kill()
            process.wait(CLIENT_TIMEOUT)


def has_length(size: int) -> Callable[[bytes], bool]:
    return lambda data: len(data) >= size


def ends_line(data: bytes) -> bool:
    return data.endswith(b"\r\n")


def chargen_line(index: int) -> bytes:
    """Line `index` of RFC 864's pattern: 72 printable characters, starting one further on."""
    return bytes(32 + (index + column) % 95 for column in range(72)) + b"\r\n"


# -- echo (RFC 862) -------------------------------------------------------------------------


def test_echo_tcp_with_nc(services: Services) -> None:
    data = b"".join(b"line %d of the echo test\n" % number for number in range(5000))
    assert run([need("nc"), "-N", "127.0.0.1", services.port("echo")], data) == data


def test_echo_udp_with_socat(services: Services) -> None:
    payload = b"one datagram\n"
    reply = socat_datagram(
        f"UDP:127.0.0.1:{services.port('echo-udp')}", payload, has_length(len(payload))
    )
    assert reply == payload


def test_echo_unix_with_socat(services: Services) -> None:
    data = b"over a unix socket\n" * 1000
    reply = run(
        [need("socat"), "-t", "10", "-", f"UNIX-CONNECT:{services.path('echo-unix')}"], data
    )
    assert reply == data


# -- discard (RFC 863) ----------------------------------------------------------------------


def test_discard_takes_a_megabyte_and_closes_cleanly(services: Services) -> None:
    """socat exits 0 only if the server read everything and closed without a reset."""
    data = os.urandom(1 << 20)
    reply = run([need("socat"), "-t", "10", "-", f"TCP:127.0.0.1:{services.port('discard')}"], data)
    assert reply == b""


# -- daytime (RFC 867) ----------------------------------------------------------------------


def assert_daytime(reply: bytes, before: float, after: float) -> None:
    assert reply.isascii()
    assert reply.endswith(b"\r\n")
    assert reply.count(b"\n") == 1
    stamp = calendar.timegm(time.strptime(reply[:-2].decode("ascii"), DAYTIME_FORMAT))
    assert int(before) <= stamp <= after


def test_daytime_tcp_with_nc(services: Services) -> None:
    before = time.time()
    reply = run([need("nc"), "-N", "127.0.0.1", services.port("daytime")])
    assert_daytime(reply, before, time.time())


def test_daytime_unixgram_with_socat(services: Services) -> None:
    client = services.directory / "daytime-client.sock"
    before = time.time()
    reply = socat_datagram(
        f"UNIX-SENDTO:{services.path('daytime-unixgram')},bind={client}", b"\n", ends_line
    )
    assert_daytime(reply, before, time.time())


# -- time (RFC 868) -------------------------------------------------------------------------


def assert_rfc868(reply: bytes, before: float, after: float) -> None:
    assert len(reply) == 4
    (seconds,) = struct.unpack("!I", reply)
    assert int(before) + RFC868_OFFSET <= seconds <= int(after) + RFC868_OFFSET


def test_time_tcp_with_socat(services: Services) -> None:
    before = time.time()
    reply = run([need("socat"), "-u", f"TCP:127.0.0.1:{services.port('time')}", "-"])
    assert_rfc868(reply, before, time.time())


def test_time_udp_with_socat(services: Services) -> None:
    before = time.time()
    reply = socat_datagram(f"UDP:127.0.0.1:{services.port('time-udp')}", b"\n", has_length(4))
    assert_rfc868(reply, before, time.time())


# -- quote of the day (RFC 865) -------------------------------------------------------------


def test_qotd_with_nc(services: Services) -> None:
    before = time.time()
    reply = run([need("nc"), "-N", "127.0.0.1", services.port("qotd")])
    assert 0 < len(reply) < 512
    assert reply.isascii()
    assert reply.endswith(b"\r\n")
    assert reply in {quote_of_the_day(before), quote_of_the_day(time.time())}


# -- chargen (RFC 864) ----------------------------------------------------------------------


def test_chargen_tcp_sends_exactly_the_limit(services: Services) -> None:
    reply = run([need("socat"), "-u", f"TCP:127.0.0.1:{services.port('chargen')}", "-"])
    assert len(reply) == CHARGEN_LIMIT
    *lines, tail = reply.split(b"\r\n")
    assert len(lines) == CHARGEN_LIMIT // 74
    for index, line in enumerate(lines):
        assert line + b"\r\n" == chargen_line(index), f"line {index}"
    assert tail == chargen_line(len(lines))[: len(tail)]


def test_chargen_udp_sends_one_datagram(services: Services) -> None:
    expected = b"".join(chargen_line(index) for index in range(512 // 74))
    reply = socat_datagram(
        f"UDP:127.0.0.1:{services.port('chargen-udp')}", b"\n", has_length(len(expected))
    )
    assert len(reply) <= 512
    assert reply == expected


# -- HTTP hello -----------------------------------------------------------------------------


def curl(services: Services, name: str, *options: str, path: str) -> tuple[list[bytes], bytes]:
    """Run curl with `options` that put the headers on stdout; return (header lines, body)."""
    if name.endswith("-unix"):
        target = ["--unix-socket", services.path(name), f"http://localhost{path}"]
    else:
        target = [f"http://127.0.0.1:{services.port(name)}{path}"]
    output = run([need("curl"), "-sS", "--max-time", "10", *options, *target])
    head, separator, body = output.partition(b"\r\n\r\n")
    assert separator, f"no end of headers in {output!r}"
    return head.split(b"\r\n"), body


def header(lines: list[bytes], name: bytes) -> bytes:
    values = [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(name)]
    assert len(values) == 1, f"{name!r} in {lines!r}"
    return values[0]


@pytest.mark.parametrize("name", ["hello", "hello-unix"])
def test_hello_get_with_curl(services: Services, name: str) -> None:
    path = f"/get/{name}"
    lines, body = curl(services, name, "--dump-header", "-", path=path)
    assert lines[0] == b"HTTP/1.0 200 OK"
    assert header(lines, b"server:").startswith(b"supervisor-hello/1.0 ")
    assert header(lines, b"content-type:") == b"text/plain; charset=utf-8"
    assert header(lines, b"content-length:") == b"%d" % len(body)
    match = re.fullmatch(rb"Hello from (\S+) \(pid (\d+)\): (\S+)\n", body)
    assert match is not None, body
    assert match[1] == name.encode()
    assert match[3] == path.encode()
    forked = SERVICES[name][2] == "fork"
    assert (int(match[2]) != services.supervisor.pid) is forked
    services.supervisor.wait_for_log(rf'{name}: \S* "GET {path} HTTP/1.1" 200 -')


@pytest.mark.parametrize("name", ["hello", "hello-unix"])
def test_hello_head_with_curl(services: Services, name: str) -> None:
    path = f"/head/{name}"
    lines, body = curl(services, name, "--head", path=path)
    assert lines[0] == b"HTTP/1.0 200 OK"
    without_pid = len(f"Hello from {name} (pid ): {path}\n")
    assert without_pid < int(header(lines, b"content-length:")) <= without_pid + 7
    assert body == b""


def bind_privileged_udp() -> socket.socket:
    for port in range(1023, 900, -1):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        return sock
    pytest.skip("no free privileged UDP port on 127.0.0.1")


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a privileged source port needs root")
def test_udp_services_do_not_answer_privileged_ports(services: Services) -> None:
    """inetd's guard against two UDP services answering each other forever."""
    # chargen-udp is inline: datagrams are handled in order, one at a time, in the loop.
    server = ("127.0.0.1", int(services.port("chargen-udp")))
    with (
        bind_privileged_udp() as privileged,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ordinary,
    ):
        privileged.sendto(b"x", server)
        ordinary.settimeout(REPLY_TIMEOUT)
        ordinary.sendto(b"x", server)
        assert ordinary.recv(1024).startswith(chargen_line(0))  # so the first one was handled
        privileged.setblocking(False)
        with pytest.raises(BlockingIOError):
            privileged.recv(1024)
