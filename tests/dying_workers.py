"""A handler module that breaks every process forked after it is imported, as a broken handler
package might: each child exits with status 3 before it does anything (prefork's back-off)."""

import os
import socketserver

os.register_at_fork(after_in_child=lambda: os._exit(3))


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"never\n")
