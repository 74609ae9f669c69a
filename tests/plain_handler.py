"""A handler module importing nothing but socketserver and os: tests.handlers imports
subprocess, which would hide a supervisor that imports it only after dropping privileges (to a
user who cannot read the standard library)."""

import os
import socketserver


class PidHandler(socketserver.StreamRequestHandler):
    """Send our pid, then wait for one line before answering `bye` (as tests.handlers')."""

    def handle(self) -> None:
        self.wfile.write(b"%d\n" % os.getpid())
        self.wfile.flush()
        self.rfile.readline()
        self.wfile.write(b"bye\n")
