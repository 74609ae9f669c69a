"""The classic inetd internal services, as socketserver request handlers.

Installed as the package `supervisor_services` (the source folder is `services/`). Each handler
serves TCP and UDP alike where its RFC defines both: a stream request is a connected socket, a
datagram request is socketserver's `(data, socket)` pair.
"""

import socket
import socketserver
from typing import Any


class InetdHandler(socketserver.BaseRequestHandler):
    """A handler that answers a stream connection or a datagram with `reply()`."""

    timeout: float | None = 60.0  # idle limit on a stream connection, as StreamRequestHandler

    def setup(self) -> None:
        if self.is_stream:
            self.request.settimeout(self.timeout)

    @property
    def is_stream(self) -> bool:
        return isinstance(self.request, socket.socket)

    def send(self, data: bytes) -> None:
        """Send `data` back: on the connection, or as a datagram to the client."""
        if self.is_stream:
            self.request.sendall(data)
        elif self.client_address:  # an unbound unix datagram client cannot be answered
            _, sock = self.request
            sock.sendto(data, self.client_address)

    def received(self) -> Any:
        """The datagram's payload (datagram requests only)."""
        return self.request[0]
