"""The exchange every contender serves, on loopback only, and the ports it is served on.

Every contender serves the same tiny exchange on a new TCP connection per request: wrk's GET
(with `Connection: close`) is read, a fixed short HTTP/1.0 reply (bench.handler.REPLY) is
written, the server closes. Scenario 9's contenders are HTTP servers of the standard library
(wsgiref, http.server) whose replies carry a date: any `200 OK` reply is theirs (`http_ok`).

Ports: the supervisor, the standard library's servers and the C servers bind port 0 and report
the port; xinetd and tcpserver get a port the harness found free (bound to port 0 and closed
again), which another process could take in between: acceptable for a benchmark.
"""

import socket
import time
from collections.abc import Callable

from bench.handler import REPLY

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


Expected = Callable[[bytes], bool]  # whether a whole reply is the one expected


def is_reply(received: bytes) -> bool:
    """The exchange's reply, exactly."""
    return received == REPLY


def http_ok(received: bytes) -> bool:
    """An HTTP/1.x `200 OK` reply with a body (a standard-library HTTP server's)."""
    head, _, body = received.partition(b"\r\n\r\n")
    status = head.partition(b"\r\n")[0]
    return status in (b"HTTP/1.0 200 OK", b"HTTP/1.1 200 OK") and bool(body)


def exchange_on(connection: socket.socket, expected: Expected = is_reply) -> bool:
    """The request on a connected socket, the reply read to its end: True if it is the
    expected one."""
    connection.sendall(REQUEST)
    received = b""
    while chunk := connection.recv(4096):
        received += chunk
    return expected(received)


def exchange(port: int, timeout: float = 2.0, expected: Expected = is_reply) -> bool:
    """One request on a new connection: True if the reply is the expected one."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as connection:
            return exchange_on(connection, expected)
    except OSError:
        return False


def wait_serving(port: int, timeout: float = 15.0, expected: Expected = is_reply) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exchange(port, expected=expected):
            return True
        time.sleep(0.05)
    return False
