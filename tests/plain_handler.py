"""A handler module importing nothing but socketserver and os: tests.handlers imports
subprocess, which would hide a supervisor that imports it only after dropping privileges (to a
user who cannot read the standard library)."""

import os
import socketserver


class PidHandler(socketserver.StreamRequestHandler):
    """Send our pid, then wait for one line before answering `bye`: holds a request open.
    (A copy of tests.handlers:PidHandler, on purpose: importing that module imports
    subprocess.)"""

    def handle(self) -> None:
        self.wfile.write(b"%d\n" % os.getpid())
        self.wfile.flush()
        self.rfile.readline()
        self.wfile.write(b"bye\n")
