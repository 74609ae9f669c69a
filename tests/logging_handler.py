"""A handler that logs with the logging module, as application code does (its own module:
importing logging at load changes how the fork server sets up its children's logging, which
tests.handlers' handlers, importing no logging, check the other way)."""

import logging
import socketserver

log = logging.getLogger("tests.logging_handler")


class LoggingHandler(socketserver.StreamRequestHandler):
    """Log the request's line, then answer `logged`: the line is in the log (flushed: a
    StreamHandler flushes each record) before the client has its answer."""

    def handle(self) -> None:
        line = self.rfile.readline().decode(errors="replace").strip()
        log.info("handled %s", line)
        self.wfile.write(b"logged\n")
