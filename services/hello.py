"""An HTTP "hello" server built on the standard library's `http.server.BaseHTTPRequestHandler`."""

import logging
import os
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

log = logging.getLogger("supervisor.hello")


class HelloHandler(BaseHTTPRequestHandler):
    """Answers GET and HEAD on any path with a short text page naming the server and pid."""

    server_version = "supervisor-hello/1.0"
    timeout = 30  # seconds for the client to send its request

    def do_GET(self) -> None:
        self._reply(with_body=True)

    def do_HEAD(self) -> None:
        self._reply(with_body=False)

    def _reply(self, with_body: bool) -> None:
        name = getattr(self.server, "name", "hello")
        body = f"Hello from {name} (pid {os.getpid()}): {self.path}\n".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def address_string(self) -> str:
        """The client's host; a unix socket client has no address, so show the socket's path."""
        if self.client_address:
            return str(self.client_address[0])
        return str(self.server.server_address) or "unix"

    def log_message(self, format: str, *args: Any) -> None:
        log.info(
            "%s: %s %s", getattr(self.server, "name", "hello"), self.address_string(), format % args
        )
