"""Character generator (RFC 864): the rotating 72-column pattern of the 95 printable ASCII
characters, until the client closes or `limit` bytes are sent (TCP), or one datagram of at most
512 bytes (UDP)."""

from . import InetdHandler

PRINTABLE = bytes(range(32, 127))
LINE_WIDTH = 72
DATAGRAM_SIZE = 512


def lines(start: int = 0) -> bytes:
    """One full cycle of the pattern: 95 lines, each shifted by one character."""
    doubled = PRINTABLE * 2
    return b"".join(
        doubled[(start + i) % 95 : (start + i) % 95 + LINE_WIDTH] + b"\r\n" for i in range(95)
    )


class ChargenHandler(InetdHandler):
    limit = 1 << 20  # bytes per connection; a subclass may change it

    def handle(self) -> None:
        cycle = lines()
        if not self.is_stream:
            self.send(cycle[: DATAGRAM_SIZE - DATAGRAM_SIZE % (LINE_WIDTH + 2)])
            return
        sent = 0
        try:
            while sent < self.limit:
                chunk = cycle[: self.limit - sent]
                self.request.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return  # the client closing the connection is how a chargen session ends
