"""Discard (RFC 863): read and throw away everything the client sends."""

from . import InetdHandler

CHUNK = 65536


class DiscardHandler(InetdHandler):
    def handle(self) -> None:
        if self.is_stream:
            while self.request.recv(CHUNK):
                pass
