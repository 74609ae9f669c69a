"""Inline mode: the request runs in the supervisor's own loop, one at a time.

For handlers that answer at once (daytime, a UDP echo): no process or thread to start, nothing
to count. While the handler runs, every other server waits: it is the operator's choice.
"""

import time
from typing import Any

from supervisor import guards
from supervisor.guards import Source
from supervisor.modes.base import Mode
from supervisor.server import Request, Server


class Inline(Mode):
    """Handle the request now, in the loop."""

    limited = False
    saturates = False

    def take(
        self, server: Server, request: Request | int, client_address: Any, source: Source
    ) -> None:
        assert not isinstance(request, int)  # noqa: S101 (bare descriptors are fork mode's)
        started = time.monotonic()
        ok = server.handle(request, client_address)
        server.stats.handled(ok, time.monotonic() - started)
        guards.release(server.sources, source)  # (nothing else ran meanwhile)
