"""Time (RFC 868): seconds since 1900-01-01 00:00 UTC as a 32-bit big-endian integer."""

import struct
import time

from . import InetdHandler

EPOCH_OFFSET = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01


def rfc868(now: float | None = None) -> bytes:
    seconds = int(time.time() if now is None else now) + EPOCH_OFFSET
    return struct.pack("!I", seconds % 2**32)


class TimeHandler(InetdHandler):
    def handle(self) -> None:
        self.send(rfc868())
