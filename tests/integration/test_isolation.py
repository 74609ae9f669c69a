"""A failing handler, a child killed by a signal, or an accept error never ends the supervisor."""

import errno
import logging
import os
import resource
import socket
from collections.abc import Iterator

import pytest

from supervisor.children import SystemCalls
from supervisor.core import State, Supervisor
from supervisor.reload import prepare
from tests.configs import server_table
from tests.conftest import StartSupervisor, connect, exchange, readline


@pytest.mark.parametrize("mode", ["fork", "thread", "inline"])
def test_a_handler_exception_is_logged_and_serving_goes_on(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    supervisor = start_supervisor(server_table("bad", "FailingHandler", mode=mode))
    address = supervisor.inet("bad")
    with connect(address) as sock:
        sock.sendall(b"boom\n")
        assert sock.recv(1) == b""  # the connection is closed after the failure
        client_port = sock.getsockname()[1]
    supervisor.wait_for_log(
        rf"bad: handler tests.handlers:FailingHandler failed for client "
        rf"\('127.0.0.1', {client_port}\)"
    )
    supervisor.wait_for_log(r"RuntimeError: handler failure on purpose: b'boom\\n'")
    assert "Traceback (most recent call last)" in supervisor.log
    if mode == "fork":
        supervisor.wait_for_log(r"bad: child \d+ exited with status 1")
    # Still serving: the next request fails the same way, and is answered the same way.
    assert exchange(address, b"again\n") == b""
    supervisor.wait_for_log(r"failure on purpose: b'again\\n'")
    assert supervisor.process.poll() is None


def test_a_child_killed_by_a_signal_is_logged(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        server_table("doomed", "SelfKillingHandler") + server_table("echo", "LineEchoHandler")
    )
    for _ in range(3):
        with connect(supervisor.inet("doomed")) as sock:
            assert sock.recv(1) == b""  # the child died without a word
    supervisor.wait_for_log(r"WARNING .*doomed: child \d+ killed by signal SIGKILL")
    assert exchange(supervisor.inet("echo"), b"still here\n").endswith(b" still here\n")
    assert supervisor.process.poll() is None


def test_running_out_of_file_descriptors_backs_off_instead_of_spinning(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("hold", "PidHandler", mode="thread", max_children=1000)
    )
    address = supervisor.inet("hold")
    open_files = len(os.listdir(f"/proc/{supervisor.pid}/fd"))
    limit = open_files + 5
    resource.prlimit(supervisor.pid, resource.RLIMIT_NOFILE, (limit, limit))
    clients = [connect(address) for _ in range(8)]
    try:
        for sock in clients[:5]:
            assert int(readline(sock)) == supervisor.pid
        first = supervisor.wait_for_log(r"hold: accept failed \(Too many open files\)")
        assert first
        start = len(supervisor.lines)
        # Free descriptors: the waiting clients are then accepted and served.
        for sock in clients[:5]:
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
            sock.close()
        for sock in clients[5:]:
            assert int(readline(sock)) == supervisor.pid
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
    finally:
        for sock in clients:
            sock.close()
    backoffs = sum("accept failed" in line for line in supervisor.lines)
    # One warning per back-off period, not a busy loop of thousands.
    assert backoffs < 100, f"{backoffs} accept failures logged"
    assert start > 0
    assert supervisor.process.poll() is None


@pytest.fixture
def failing_fork_supervisor(tmp_path: os.PathLike[str]) -> Iterator[Supervisor]:
    path = os.path.join(tmp_path, "fork.toml")
    with open(path, "w") as file:
        file.write(server_table("echo", "LineEchoHandler"))

    def no_fork() -> int:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    supervisor = Supervisor(prepare(path), calls=SystemCalls(fork=no_fork))
    supervisor.state = State.RUNNING
    for server in supervisor.servers.values():
        supervisor._refresh(server)
    yield supervisor
    supervisor._close()  # the listeners (a server's server_close() leaves them alone)
    supervisor.loop.close()


def test_a_failed_fork_closes_that_connection_and_pauses_the_server(
    failing_fork_supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    """The client whose process could not be forked is closed; the server stops accepting
    for a moment, so the next client waits in the listen queue instead of being dropped."""
    supervisor = failing_fork_supervisor
    server = supervisor.servers["echo"]
    with (
        socket.create_connection(server.server_address, timeout=5) as first,
        socket.create_connection(server.server_address, timeout=5) as second,
    ):
        client = first.getsockname()
        with caplog.at_level(logging.ERROR, logger="supervisor"):
            supervisor._on_readable(server)
        assert first.recv(1) == b""  # closed by the supervisor
        assert not server.listening  # paused: the second one was not accepted
        second.settimeout(0.2)
        with pytest.raises(TimeoutError):
            second.recv(1)  # still waiting in the listen queue, not closed
    assert caplog.messages == [
        f"echo: cannot start a process for client {client} (Resource temporarily "
        "unavailable); connection closed, not accepting for 0.1s"
    ]
    assert server.active == 0
    assert supervisor.active == 0
    assert server.resume is not None
    server.resume.callback()  # (the pause is over)
    assert server.listening
