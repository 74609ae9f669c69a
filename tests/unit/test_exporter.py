"""The HTTP endpoint and the control socket in-process: a failing answer is an error answer
(500), never the end of the loop."""

import collections
import gzip
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import control
from supervisor.addresses import Address
from supervisor.exporter import HttpServer, Request, Response
from supervisor.loop import Loop
from supervisor.responder import MAX_SEND, _consume, _next_pieces
from supervisor.sockets import bind


def get(address: tuple[str, int], path: str) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def endpoint() -> Iterator[tuple[str, int]]:
    loop = Loop()
    listener = bind(Address("tcp", host="127.0.0.1", port=0), 16)

    def broken(request: Request, respond: Callable[[Response], None]) -> Response:
        raise RuntimeError("a collector bug")

    def fine(request: Request, respond: Callable[[Response], None]) -> Response:
        return Response(200, "OK", "text/plain", b"fine\n")

    server = HttpServer(loop, listener, {"/broken": broken, "/fine": fine})
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        yield listener.bound.host, listener.bound.port
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()


def test_a_failing_route_answers_500_and_the_loop_goes_on(
    endpoint: tuple[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    assert get(endpoint, "/broken").startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert "internal error in metrics: answering a request; going on" in caplog.text
    assert "a collector bug" in caplog.text  # (with its traceback)
    assert get(endpoint, "/fine").endswith(b"\r\n\r\nfine\n")


def test_a_request_nested_too_deep_for_json_gets_an_error_answer(tmp_path: Path) -> None:
    """`[[[[...` on the control socket: RecursionError in json.loads is a bad request, not the
    end of the loop; and a handler that raises is an internal error answer."""
    loop = Loop()
    listener = control.bind(str(tmp_path / "control.sock"))
    commands: list[str] = []

    def on_command(command: str) -> dict[str, Any]:
        commands.append(command)
        if command == "raise":
            raise ValueError("a bug")
        return {"ok": True}

    server = control.ControlServer(loop, listener, on_command)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        answers = [
            _ask(listener.address.path, b"[" * 100_000 + b"\n"),
            _ask(listener.address.path, b'{"command": "raise"}\n'),
            _ask(listener.address.path, b'{"command": "status"}\n'),
        ]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()
    assert answers[0] == {"ok": False, "error": 'bad request: expected {"command": NAME}'}
    assert answers[1] == {"ok": False, "error": "internal error in the supervisor: see its log"}
    assert answers[2] == {"ok": True}
    assert commands == ["raise", "status"]
    assert loop.faults == 1


def _ask(path: str, request: bytes) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b"".join(iter(lambda: sock.recv(65536), b""))
    return json.loads(data)


@pytest.mark.parametrize(
    ("header", "takes"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("gzip, deflate, br", True),
        ("deflate, gzip;q=0.5", True),
        ("x-gzip", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity", False),
        ("", False),
        ("br;q=1.0, gzip;q=nonsense", True),
        ("gzipped", False),
        ("*;q=0, gzip", True),
        ("gzip;q=0, *", False),
        ("br, *", True),
    ],
)
def test_which_accept_encodings_take_gzip(header: str, takes: bool) -> None:
    assert Request(accept_encoding=header).takes_gzip is takes


def read_answer(address: tuple[str, int], request: bytes) -> tuple[str, bytes]:
    """The head and the body, read slowly: 4 KiB at a time."""
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return head.decode("latin-1"), body


def test_an_answer_given_later_in_pieces_arrives_whole_with_its_headers() -> None:
    """A route that answers from the loop later, with a body of 3 MB in pieces (more than one
    send's worth each), compressed or not as it says."""
    loop = Loop()
    listener = bind(Address("tcp", host="127.0.0.1", port=0), 16)
    pieces = [bytes([index]) * 1_000_000 for index in range(3)]

    def later(request: Request, respond: Callable[[Response], None]) -> None:
        if request.takes_gzip:
            body = gzip.compress(b"".join(pieces))
            loop.call_later(0.01, lambda: respond(Response(200, "OK", "x/y", [body], gzip=True)))
        else:
            loop.call_later(0.01, lambda: respond(Response(200, "OK", "x/y", pieces)))

    server = HttpServer(loop, listener, {"/later": later})
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    address = (listener.bound.host, listener.bound.port)
    try:
        head, body = read_answer(address, b"GET /later HTTP/1.1\r\n\r\n")
        zipped_head, zipped = read_answer(  # (a header on two lines: its values combine)
            address,
            b"GET /later HTTP/1.1\r\nAccept-Encoding: br\r\nAccept-Encoding: gzip\r\n\r\n",
        )
        head_only, nothing = read_answer(
            address, b"HEAD /later HTTP/1.1\r\naccept-encoding: gzip\r\n\r\n"
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        server.close()
        loop.close()
    assert body == b"".join(pieces)
    assert "Content-Length: 3000000\r\n" in head
    assert "Content-Encoding" not in head
    assert "Vary: Accept-Encoding" in head
    assert gzip.decompress(zipped) == body
    assert "Content-Encoding: gzip\r\n" in zipped_head
    assert f"Content-Length: {len(zipped)}\r\n" in zipped_head
    assert head_only == zipped_head
    assert nothing == b""


def test_next_pieces_and_consume_walk_an_answer_in_bounded_sends() -> None:
    out = collections.deque(memoryview(piece) for piece in (b"a" * 10, b"b" * MAX_SEND, b"c"))
    first = _next_pieces(out)
    assert [len(piece) for piece in first] == [10, MAX_SEND - 10]
    _consume(out, 15)  # (the kernel took less than offered)
    assert [len(piece) for piece in out] == [MAX_SEND - 5, 1]
    sent = b""
    while out:
        pieces = _next_pieces(out)
        chunk = b"".join(bytes(piece) for piece in pieces)
        assert len(chunk) <= MAX_SEND
        sent += chunk
        _consume(out, len(chunk))
    assert sent == b"b" * (MAX_SEND - 5) + b"c"
