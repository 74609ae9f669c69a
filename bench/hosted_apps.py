"""What scenario 9 hosts: a WSGI application, a quiet HTTP handler, and `server =` factories.

- `application`: a tiny WSGI application, a fixed 3-byte body for every request;
- `QuietWSGIHandler`: wsgiref's request handler without its access line per request on stderr
  (as `supervisor_services.hosted.QuietHandler`), for the supervisor and the standard library's
  WSGI servers (bench/wsgi_server.py) alike;
- `wsgi_server()`: the `server =` factory, wsgiref's `WSGIServer` built unbound, its
  application set;
- `QuietHello`: `supervisor_services.hello:HelloHandler`'s reply, without its log line per
  request (a line per request would measure logging, and the harness reading it), for
  `handler =`: a handler that needs nothing of its server but `name`, which it may lack;
- `hello_server()`: the `server =` factory for the same handler, a plain `TCPServer`.

Factories build their server with `bind_and_activate=False`; the supervisor binds the
configured address. Used with the repository root on PYTHONPATH.

Only the standard library is imported: the supervisor's fork server runs without site hooks
(`python -S`) and finds, by location, the top-level package of the configured module only, so a
module importing another editable-installed package (`supervisor_services` in the development
virtual environment) would not import there, and fork mode would fall back to forking from the
supervisor itself (logged as a warning). Hence HelloHandler's reply copied, not imported.
"""

import os
import socketserver
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

UNUSED = ("", 0)  # (the supervisor's socket is used instead)
BODY = b"ok\n"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI application: a fixed short body."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


class QuietWSGIHandler(WSGIRequestHandler):
    """wsgiref's handler without its access log line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def wsgi_server() -> WSGIServer:
    """wsgiref's WSGI server running `application`, for `server =`."""
    server = WSGIServer(UNUSED, QuietWSGIHandler, bind_and_activate=False)
    server.set_app(application)
    return server


class QuietHello(BaseHTTPRequestHandler):
    """supervisor_services.hello's HelloHandler (GET: a short page naming the server and the
    pid), without its log line per request."""

    server_version = "supervisor-hello/1.0"
    timeout = 30  # seconds for the client to send its request

    def do_GET(self) -> None:
        name = getattr(self.server, "name", "hello")
        body = f"Hello from {name} (pid {os.getpid()}): {self.path}\n".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def hello_server() -> socketserver.TCPServer:
    """A plain TCPServer with the hello handler, for `server =` (against `handler =`)."""
    return socketserver.TCPServer(UNUSED, QuietHello, bind_and_activate=False)
