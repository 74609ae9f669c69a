"""The metrics endpoint: `GET /metrics` and `GET /healthz`, served from the supervisor's loop.

A deliberately small HTTP/1.x responder: one request per connection, `Connection: close`, GET
and HEAD only. The connection handling, bounded in size, time and number so that no client can
stall the loop, is responder.py's. A route answers at once, or later (a scrape is rendered over
several turns of the loop: scrapes.py); a body it says is gzip goes out with its headers.
"""

from collections.abc import Callable
from dataclasses import dataclass

from supervisor.loop import Loop
from supervisor.responder import Answer, Later, Responder
from supervisor.sockets import Listener


@dataclass(frozen=True)
class Request:
    """What a route reads of a request: its Accept and Accept-Encoding headers."""

    accept: str = ""
    accept_encoding: str = ""

    @property
    def takes_gzip(self) -> bool:
        """Whether the client accepts a gzip body: `gzip` or `x-gzip` listed without `q=0`,
        else `*` without it (a coding named overrides `*`)."""
        accepted: dict[str, bool] = {}
        for part in self.accept_encoding.split(","):
            coding, *params = (item.strip().lower() for item in part.split(";"))
            accepted.setdefault(coding, not any(_zero_q(param) for param in params))
        for coding in ("gzip", "x-gzip", "*"):
            if coding in accepted:
                return accepted[coding]
        return False


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    content_type: str
    body: bytes | list[bytes]  # (a list: the body in pieces, sent as they are)
    gzip: bool = False  # the body is gzip (Content-Encoding: gzip)


# A route's answer to a request: a Response now, or None after it has arranged to call the
# second argument with one (from the loop).
Route = Callable[[Request, Callable[[Response], None]], Response | None]


class HttpServer(Responder):
    """Answers GET (and HEAD) on a few paths, from the loop."""

    name = "metrics"

    def __init__(self, loop: Loop, listener: Listener, routes: dict[str, Route]) -> None:
        super().__init__(loop, listener)
        self._routes = routes

    def complete(self, request: bytes) -> bool:
        return b"\r\n\r\n" in request or b"\n\n" in request

    def answer(self, request: bytes, finished: bool) -> Answer | Later | None:
        if not finished:
            if len(request) < self.max_request:
                return None  # the client went away before finishing its request
            return _encode(_error(431, "Request Header Fields Too Large"), with_body=True)
        return self._route(request)

    def _route(self, request: bytes) -> Answer | Later:
        """The answer: a Response encoded (without its body for HEAD), now or Later."""
        head = request.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("latin-1")
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _encode(_error(400, "Bad Request"), with_body=True)
        method, target = parts[0], parts[1].split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return _encode(_error(405, "Method Not Allowed"), with_body=True)
        route = self._routes.get(target)
        if route is None:
            return _encode(_error(404, "Not Found"), method == "GET")
        asked = Request(_header(lines[1:], "accept"), _header(lines[1:], "accept-encoding"))
        with_body, later = method == "GET", Later()
        response = route(asked, lambda response: later.give(_encode(response, with_body)))
        return later if response is None else _encode(response, with_body)

    def internal_error(self) -> Answer:
        """A route raised (a bug in a collector, say): logged and counted by the responder."""
        return _encode(_error(500, "Internal Server Error"), with_body=True)


def _encode(response: Response, with_body: bool) -> list[bytes]:
    # (Vary on every answer, compressed or not: a cache must not give one for the other)
    encoding = "Content-Encoding: gzip\r\n" if response.gzip else ""
    body = [response.body] if isinstance(response.body, bytes) else response.body
    head = (
        f"HTTP/1.1 {response.status} {response.reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"{encoding}Vary: Accept-Encoding\r\n"
        f"Content-Length: {sum(map(len, body))}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1")
    return [head, *body] if with_body else [head]


def _header(lines: list[str], name: str) -> str:
    """A header's value; the values of a header given on several lines, joined with commas
    (as HTTP says they combine)."""
    values = []
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            values.append(value.strip())
    return ", ".join(values)


def _zero_q(param: str) -> bool:
    """Whether an Accept-Encoding parameter is `q=0` (`q=0.0`, `q=0.000`): not acceptable."""
    key, _, value = param.partition("=")
    if key.strip() != "q":
        return False
    try:
        return float(value) == 0.0
    except ValueError:
        return False


def _error(status: int, reason: str) -> Response:
    return Response(status, reason, "text/plain; charset=utf-8", f"{reason}\n".encode())
