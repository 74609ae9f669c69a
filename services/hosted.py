"""Whole socketserver servers for `server = "module:callable"` (README, Hosting existing servers).

Each function returns a standard-library server built with `bind_and_activate=False` (the
address it is given is ignored: the supervisor binds the configured one), with its state set up
the usual way: functions registered with the XML-RPC server, the application set on the WSGI
one. Nothing here knows it is hosted.

    python3 -c 'import xmlrpc.client as x; print(x.ServerProxy("http://127.0.0.1:7082").add(2, 3))'
    curl http://127.0.0.1:7083/hello
"""

import os
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from xmlrpc.server import SimpleXMLRPCServer

UNUSED = ("localhost", 0)  # (the supervisor's socket is used instead)


def add(a: int, b: int) -> int:
    return a + b


def xmlrpc() -> SimpleXMLRPCServer:
    """An XML-RPC server with `add`, `pow` and the introspection functions."""
    server = SimpleXMLRPCServer(UNUSED, logRequests=False, bind_and_activate=False)
    server.register_introspection_functions()
    server.register_function(add)  # type: ignore[arg-type]  # (typeshed: any marshallable argument)
    server.register_function(pow)  # type: ignore[arg-type]  # (typeshed: any marshallable argument)
    return server


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """A WSGI application: says hello, with what the server told it."""
    body = (
        f"hello from {environ['SERVER_SOFTWARE']} at {environ['SERVER_NAME']}:"
        f"{environ['SERVER_PORT']}{environ.get('PATH_INFO', '/')}, pid {os.getpid()}\n"
    ).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class QuietHandler(WSGIRequestHandler):
    """wsgiref's handler without its access log line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        return None


def wsgi() -> WSGIServer:
    """wsgiref's WSGI server, running `application`."""
    server = WSGIServer(UNUSED, QuietHandler, bind_and_activate=False)
    server.set_app(application)
    return server
