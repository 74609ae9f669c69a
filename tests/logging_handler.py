"""A handler that logs with the logging module, as application code does (its own module:
importing logging at load changes how the fork server sets up its children's logging, which
tests.handlers' handlers, importing no logging, check the other way)."""

import logging
import socketserver
import threading
import warnings

log = logging.getLogger("tests.logging_handler")


class LoggingHandler(socketserver.StreamRequestHandler):
    """Log the request's line, then answer `logged`: the line is in the log (flushed: a
    StreamHandler flushes each record) before the client has its answer."""

    def handle(self) -> None:
        line = self.rfile.readline().decode(errors="replace").strip()
        log.info("handled %s", line)
        self.wfile.write(b"logged\n")


class NoisyHandler(socketserver.StreamRequestHandler):
    """What Python itself prints: a warning, and an exception that ends a thread the handler
    starts; then answer `noisy`."""

    def handle(self) -> None:
        warnings.warn("a warning from the handler", UserWarning, stacklevel=1)
        thread = threading.Thread(target=_fail, name="handler-thread")
        thread.start()
        thread.join()
        self.wfile.write(b"noisy\n")


def _fail() -> None:
    raise ValueError("a thread's own failure")
