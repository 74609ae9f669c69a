"""A handler module that configures logging itself when imported, as scripts often do: in the
supervisor (configured first) that call does nothing, and it must do nothing in the fork server
either."""

import logging
import socketserver

logging.basicConfig(level=logging.DEBUG, format="BASICCONFIG %(message)s")


class LoggingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        logging.getLogger("handler").debug("a debug line")
        logging.getLogger("handler").warning("a handler log line")
        self.request.sendall(b"logged\n")
