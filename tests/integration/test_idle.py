"""An idle supervisor sleeps in select(): no polling tick, no wake-ups."""

import time

import psutil

from tests.configs import server_table
from tests.conftest import StartSupervisor, exchange

WINDOW = 1.5  # seconds observed; the standard library's serve_forever wakes 3 times in it


def test_an_idle_supervisor_does_not_wake_up(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("a", "LineEchoHandler")
        + server_table("b", "DatagramEchoHandler", address="udp://127.0.0.1:0", mode="thread")
    )
    assert exchange(supervisor.inet("a"), b"warm up\n").endswith(b" warm up\n")
    process = psutil.Process(supervisor.pid)
    before = process.num_ctx_switches().voluntary
    time.sleep(WINDOW)  # an observation window, not a synchronisation
    woke = process.num_ctx_switches().voluntary - before
    # The reap of the warm-up child may still land in the window: allow that one wake-up.
    assert woke <= 2, f"{woke} voluntary context switches in {WINDOW}s while idle"
