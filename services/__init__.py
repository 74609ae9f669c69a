"""The classic inetd internal services, as socketserver request handlers.

Installed as the package `supervisor_services` (the source folder is `services/`). Each handler
serves TCP and UDP alike where its RFC defines both: a stream request is a connected socket, a
datagram request is socketserver's `(data, socket)` pair.
"""

import socket
import socketserver
from typing import Any

PRIVILEGED_PORTS = 1024


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
        elif self.may_answer():
            _, sock = self.request
            sock.sendto(data, self.client_address)

    def may_answer(self) -> bool:
        """Whether a datagram may be answered, as inetd decides for its internal services.

        An unbound unix datagram client has no address. A datagram from a privileged port, or
        from our own port, is most likely another service's answer (or a forged one): replying
        would start an endless ping-pong between two such services.
        """
        if not self.client_address:
            return False
        if isinstance(self.client_address, tuple):
            port: int = self.client_address[1]
            own = self.server.server_address
            own_port = own[1] if isinstance(own, tuple) else 0
            return port >= PRIVILEGED_PORTS and port != own_port
        return True

    def received(self) -> Any:
        """The datagram's payload (datagram requests only)."""
        return self.request[0]
