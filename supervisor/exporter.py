"""The metrics endpoint: `GET /metrics` and `GET /healthz`, served from the supervisor's loop.

A deliberately small HTTP/1.x responder: one request per connection, `Connection: close`, GET
and HEAD only. The connection handling, bounded in size, time and number so that no client can
stall the loop, is responder.py's.
"""

from collections.abc import Callable
from dataclasses import dataclass

from supervisor.loop import Loop
from supervisor.responder import Responder
from supervisor.sockets import Listener


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes


# A route answers a request's Accept header with a Response.
Route = Callable[[str], Response]


class HttpServer(Responder):
    """Answers GET (and HEAD) on a few paths, from the loop."""

    name = "metrics"

    def __init__(self, loop: Loop, listener: Listener, routes: dict[str, Route]) -> None:
        super().__init__(loop, listener)
        self._routes = routes

    def complete(self, request: bytes) -> bool:
        return b"\r\n\r\n" in request or b"\n\n" in request

    def answer(self, request: bytes, finished: bool) -> bytes | None:
        if not finished:
            if len(request) < self.max_request:
                return None  # the client went away before finishing its request
            return _encode(_error(431, "Request Header Fields Too Large"), with_body=True)
        response, with_body = self._route(request)
        return _encode(response, with_body)

    def _route(self, request: bytes) -> tuple[Response, bool]:
        """The response, and whether to send its body (not for HEAD)."""
        head = request.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _error(400, "Bad Request"), True
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _error(405, "Method Not Allowed"), True
        route = self._routes.get(target)
        if route is None:
            return _error(404, "Not Found"), method == "GET"
        return route(_header(lines[1:], "accept")), method == "GET"

    def internal_error(self) -> bytes:
        """A route raised (a bug in a collector, say): logged and counted by the responder."""
        return _encode(_error(500, "Internal Server Error"), with_body=True)


def _encode(response: Response, with_body: bool) -> bytes:
    head = (
        f"HTTP/1.1 {response.status} {response.reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return head + (response.body if with_body else b"")


def _header(lines: list[str], name: str) -> str:
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return ""


def _error(status: int, reason: str) -> Response:
    return Response(status, reason, "text/plain; charset=utf-8", f"{reason}\n".encode())
