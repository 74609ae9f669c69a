"""Quote of the day (RFC 865): one short quotation, the same for the whole day (UTC)."""

import time

from . import InetdHandler

QUOTES = (
    "Simple is better than complex.\r\n -- The Zen of Python",
    "Errors should never pass silently.\r\n -- The Zen of Python",
    "Do one thing and do it well.\r\n -- the Unix philosophy",
    "Be conservative in what you send, liberal in what you accept.\r\n -- Jon Postel",
    "Premature optimization is the root of all evil.\r\n -- Donald Knuth",
    "The network is reliable.\r\n -- the first fallacy of distributed computing",
)


def quote_of_the_day(now: float | None = None) -> bytes:
    day = int((time.time() if now is None else now) // 86400)
    return (QUOTES[day % len(QUOTES)] + "\r\n").encode("ascii")


class QotdHandler(InetdHandler):
    def handle(self) -> None:
        self.send(quote_of_the_day())
