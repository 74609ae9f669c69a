"""Echo (RFC 862): send back whatever arrives, on TCP until the client closes, or per datagram."""

from . import InetdHandler

CHUNK = 65536


class EchoHandler(InetdHandler):
    def handle(self) -> None:
        if not self.is_stream:
            self.send(self.received())
            return
        while data := self.request.recv(CHUNK):
            self.request.sendall(data)
