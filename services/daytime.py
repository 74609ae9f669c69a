"""Daytime (RFC 867): the date and time as one human-readable ASCII line."""

import time

from . import InetdHandler


def daytime(now: float | None = None) -> bytes:
    """RFC 867 suggests `Weekday, Month Day, Year Time-Zone`; we send it in UTC."""
    return time.strftime("%A, %B %d, %Y %H:%M:%S-UTC\r\n", time.gmtime(now)).encode("ascii")


class DaytimeHandler(InetdHandler):
    def handle(self) -> None:
        self.send(daytime())
