"""A handler module whose import waits, so a test can act while the supervisor is starting: it
says so on stdout, then reads the FIFO named by $BLOCKING_IMPORT_FIFO until the test writes."""

import os
import socketserver

print("blocking import: waiting", flush=True)
with open(os.environ["BLOCKING_IMPORT_FIFO"], "rb") as fifo:
    fifo.read(1)


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"started late\n")
