"""SIGTERM and SIGINT: stop accepting, let requests finish, kill those that outlive the timeout."""

import os
import signal
import socket
from pathlib import Path

import psutil
import pytest

from tests.configs import server_table, supervisor_table
from tests.conftest import StartSupervisor, connect, readline


@pytest.mark.parametrize(("mode", "signum"), [("fork", signal.SIGTERM), ("thread", signal.SIGINT)])
def test_an_in_flight_request_finishes(
    start_supervisor: StartSupervisor, mode: str, signum: int
) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=30) + server_table("hold", "PidHandler", mode=mode)
    )
    address = supervisor.inet("hold")
    with connect(address) as sock:
        assert int(readline(sock)) > 0  # the request is running
        supervisor.signal(signum)
        supervisor.wait_for_log(r"stopping; 1 requests in progress")
        with pytest.raises(ConnectionRefusedError):
            connect(address).close()  # no longer accepting
        assert supervisor.process.poll() is None  # still waiting for the request
        sock.sendall(b"finish\n")
        assert readline(sock) == b"bye\n"
    assert supervisor.wait() == 0
    assert "SIGTERM to" not in supervisor.log


def test_a_request_that_outlives_the_timeout_is_terminated(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=0.2, kill_grace=5) + server_table("hold", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as sock:
        child = psutil.Process(int(readline(sock)))
        supervisor.signal(signal.SIGTERM)
        assert sock.recv(1) == b""  # the child was terminated mid-request
    assert supervisor.wait() == 0
    assert not child.is_running()
    assert "sent SIGTERM to 1 children still running" in supervisor.log
    assert f"hold: child {child.pid} killed by signal SIGTERM" in supervisor.log
    assert "SIGKILL" not in supervisor.log


def test_a_child_that_ignores_sigterm_is_killed(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=0.1, kill_grace=0.3)
        + server_table("stubborn", "StubbornHandler")
    )
    with connect(supervisor.inet("stubborn")) as sock:
        child = psutil.Process(int(readline(sock)))  # it ignores SIGTERM from here on
        supervisor.signal(signal.SIGTERM)
        assert sock.recv(1) == b""
    assert supervisor.wait() == 0
    assert not child.is_running()
    assert "sent SIGKILL to 1 children that outlived SIGTERM" in supervisor.log
    assert f"stubborn: child {child.pid} killed by signal SIGKILL" in supervisor.log


def test_once_the_killed_children_are_reaped_it_stops_without_waiting_for_threads(
    start_supervisor: StartSupervisor,
) -> None:
    """The worst case of a stop is shutdown_timeout + kill_grace (what `docker stop` must allow),
    not one more kill_grace because a thread-mode request is still running."""
    kill_grace = 2.0
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=0.1, kill_grace=kill_grace)
        + server_table("stubborn", "StubbornHandler")
        + server_table("held", "PidHandler", mode="thread")
    )
    with connect(supervisor.inet("stubborn")) as stubborn, connect(supervisor.inet("held")) as held:
        child = int(readline(stubborn))
        readline(held)  # a thread runs this request and will not finish
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(rf"stubborn: child {child} killed by signal SIGKILL", timeout=10)
        # Deadline, not a measurement: the old code waited one more kill_grace here.
        assert supervisor.wait(timeout=kill_grace * 0.75) == 0
    assert "abandoning 1 request threads still running" in supervisor.log


def test_a_second_signal_terminates_at_once(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=600) + server_table("hold", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as sock:
        assert int(readline(sock)) > 0
        supervisor.signal(signal.SIGINT)
        supervisor.wait_for_log("stopping")
        supervisor.signal(signal.SIGINT)
        assert sock.recv(1) == b""
    assert supervisor.wait() == 0
    assert "SIGINT again: terminating the remaining requests now" in supervisor.log


def test_unix_socket_files_are_removed_on_stop(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(
        server_table("stream", "LineEchoHandler", address=f"unix://{sockdir}/stream.sock")
        + server_table("dgram", "DatagramEchoHandler", address=f"unixgram://{sockdir}/dgram.sock")
    )
    paths = [supervisor.unix_path("stream"), supervisor.unix_path("dgram")]
    assert all(os.path.exists(path) for path in paths)
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert not any(os.path.exists(path) for path in paths)


def test_a_stale_unix_socket_file_is_replaced(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    path = f"{sockdir}/stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # the file stays behind, with nobody listening
    supervisor = start_supervisor(server_table("echo", "LineEchoHandler", address=f"unix://{path}"))
    with connect(path) as sock:
        sock.sendall(b"hi\n")
        assert readline(sock).endswith(b" hi\n")
    assert supervisor.process.poll() is None


def test_a_thread_mode_datagram_request_finishes_during_a_stop(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("slow-udp", "SlowDatagramHandler", address="udp://127.0.0.1:0", mode="thread")
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"ping", supervisor.inet("slow-udp"))
        supervisor.wait_for_log("ready: ")
        # The datagram is being handled once the supervisor counts it: then stop.
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log(r"stopping; 1 requests in progress")
        assert client.recv(100) == b"late ping"  # answered on the handler's socket
    assert supervisor.wait() == 0
    assert "Traceback" not in supervisor.log


@pytest.mark.parametrize("mode", ["fork", "thread", "inline"])
def test_clients_in_the_listen_queue_at_a_stop_are_served(
    start_supervisor: StartSupervisor, mode: str
) -> None:
    """Their connect() succeeded before SIGTERM: closing the listener would reset them. Made
    to be queued by stopping the supervisor (SIGSTOP) while they connect, more of them than
    one accept batch (16) takes."""
    clients = 40
    supervisor = start_supervisor(
        server_table("echo", "LineEchoHandler", mode=mode, max_children=clients + 10)
    )
    address = supervisor.inet("echo")
    supervisor.signal(signal.SIGSTOP)
    queued = []
    try:
        for number in range(clients):
            sock = connect(address)  # (the kernel completes the handshake: queued)
            queued.append(sock)
            sock.sendall(b"line %d\n" % number)
            sock.shutdown(socket.SHUT_WR)
        supervisor.signal(signal.SIGTERM)
    finally:
        supervisor.signal(signal.SIGCONT)
    answers = []
    for sock in queued:
        with sock:
            answer = b""
            try:
                while chunk := sock.recv(4096):
                    answer += chunk
            except ConnectionResetError:
                answer = b"reset"
            answers.append(answer)
    assert [answer.endswith(b"line %d\n" % n) for n, answer in enumerate(answers)] == [
        True
    ] * clients, answers
    assert supervisor.wait() == 0
