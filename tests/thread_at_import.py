"""A handler module that starts a thread when imported (a background refresher, say)."""

import threading

from tests.handlers import LineEchoHandler

_stop = threading.Event()
threading.Thread(target=_stop.wait, name="refresher", daemon=True).start()

__all__ = ["LineEchoHandler"]
