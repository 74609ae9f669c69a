"""A first end-to-end check of the harness: one server, one request, a clean stop."""

import signal

from tests.configs import server_table
from tests.conftest import StartSupervisor, exchange


def test_echo_round_trip_and_clean_stop(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler"))
    host, port = supervisor.inet("echo")
    assert exchange((host, port), b"hello\n") == b"('127.0.0.1', %d) hello\n" % port
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert "stopped" in supervisor.log
