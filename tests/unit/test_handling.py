"""The request path (handling.py) on socket pairs: what it logs, returns, reports and shuts."""

import logging
import socket
import socketserver
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from supervisor import handling

LOG = logging.getLogger("supervisor")


class Reader(socketserver.BaseRequestHandler):
    """Wait for the client's first bytes (none come: the socket timeout runs out)."""

    def handle(self) -> None:
        self.request.recv(1)


class OwnTimeout(socketserver.BaseRequestHandler):
    """Set a socket timeout of its own, shorter than the request path's, and let it run out."""

    def handle(self) -> None:
        self.request.settimeout(0.01)
        self.request.recv(1)


def boom() -> None:
    raise RuntimeError("boom")


class Failing(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        boom()


class Answering(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"answer")


@dataclass
class Hosted:
    """The attributes the request path reads of a server."""

    RequestHandlerClass: type[socketserver.BaseRequestHandler]
    socket_timeout: float | None = None
    name: str = "test"
    handler_spec: str = "tests.unit:Handler"
    done: list[bytes] = field(default_factory=list)
    hosted: Any = None
    reports_errors: bool = False


def logger(server: Hosted) -> logging.Logger:
    return LOG


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the client's end, the request's end)"""
    client, request = socket.socketpair()
    client.settimeout(5)
    with client, request:
        yield client, request


def run(server: Hosted, pair: tuple[socket.socket, socket.socket]) -> bool:
    """handle() on the pair's request, recording what the client had received at `done`."""
    client, request = pair

    def done() -> None:
        client.setblocking(False)
        try:
            server.done.append(client.recv(100))
        except BlockingIOError:
            server.done.append(b"")
        client.settimeout(5)

    return handling.handle(server, request, ("client", 1), logger, done)


def test_a_handler_that_returns_is_answered_done_then_shut_down(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    server = Hosted(Answering)
    assert run(server, pair) is True
    # done came after the handler's answer, before the end of the connection.
    assert server.done == [b"answer"]
    assert pair[0].recv(100) == b""
    assert pair[1].fileno() == -1
    assert caplog.records == []


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (Reader, "test: client ('client', 1) timed out (request_timeout 0.05s)"),
        # A timeout the handler set itself is not the request_timeout.
        (OwnTimeout, "test: connection with client ('client', 1) lost (timed out)"),
    ],
)
def test_a_timeout_is_one_warning_and_the_request_still_done_and_shut(
    handler: type[socketserver.BaseRequestHandler],
    message: str,
    pair: tuple[socket.socket, socket.socket],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Hosted(handler, socket_timeout=0.05)
    assert run(server, pair) is False
    assert caplog.messages == [message]
    assert caplog.records[0].levelno == logging.WARNING
    assert server.done == [b""]
    assert pair[0].recv(100) == b""


def test_without_a_socket_timeout_the_request_has_none(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    seen: list[float | None] = []

    class Probe(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request.gettimeout())

    assert run(Hosted(Probe), pair) is True
    assert seen == [None]


def test_a_failing_handler_is_logged_with_its_traceback_and_the_request_still_shut(
    pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    server = Hosted(Failing)
    assert run(server, pair) is False
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "test: handler tests.unit:Handler failed for client ('client', 1)"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "boom"
    assert server.done == [b""]
    assert pair[0].recv(100) == b""


def test_a_datagram_request_is_left_open() -> None:
    received: list[Any] = []

    class Datagram(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            received.append(self.request[0])

    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        request = (b"data", sock)
        assert handling.handle(Hosted(Datagram, socket_timeout=1.0), request, None, logger)
        assert sock.fileno() != -1
        assert sock.gettimeout() is None  # (the request path sets no timeout on it)
    assert received == [b"data"]


def test_handle_error_logs_the_current_exception(caplog: pytest.LogCaptureFixture) -> None:
    try:
        boom()
    except RuntimeError:
        handling.handle_error(Hosted(Answering), ("client", 1), logger)
    (record,) = caplog.records
    assert record.getMessage() == "test: error handling a request from ('client', 1)"
    assert record.exc_info is not None
