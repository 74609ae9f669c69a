"""The HTTP endpoint in-process: a failing route is a 500, never the end of the loop."""

import socket
import threading
from collections.abc import Iterator

import pytest

from supervisor.addresses import Address
from supervisor.exporter import HttpServer, Response
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

    def broken(accept: str) -> Response:
        raise RuntimeError("a collector bug")

    def fine(accept: str) -> Response:
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
    assert "metrics: /broken failed" in caplog.text
    assert get(endpoint, "/fine").endswith(b"\r\n\r\nfine\n")
