"""The HTTP endpoint and the control socket in-process: a failing answer is an error answer
(500), never the end of the loop."""

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
