"""What a forked child keeps of the parent's file descriptors: its own request, and no socket
of any other server (a child holding a listener would keep a removed server's port taken)."""

import signal
import socket
from pathlib import Path

import psutil

from tests.configs import METRICS_ANY_PORT, server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, readline

ADDED = server_table("added", "LineEchoHandler")


def config_text(sockdir: Path, extra: str = "") -> str:
    """A server of each kind a child could inherit a socket from, then `extra`."""
    return (
        server_table("hold", "PidHandler")
        + server_table("threaded", "LineEchoHandler", mode="thread")
        + server_table("udp", "DatagramEchoHandler", address="udp://127.0.0.1:0")
        + server_table("local", "LineEchoHandler", address=f"unix://{sockdir}/local.sock")
        + extra
    )


def sockets_of(pid: int) -> list[tuple[object, object, str]]:
    """(local address, remote address, status) of every socket the process holds."""
    return [(c.laddr, c.raddr, c.status) for c in psutil.Process(pid).net_connections(kind="all")]


def check_a_child(supervisor: Supervisor) -> None:
    host, port = supervisor.inet("hold")
    with connect((host, port)) as client:
        child = int(readline(client))  # the child is in the middle of this request
        held = sockets_of(child)
        client.sendall(b"done\n")
        assert readline(client) == b"bye\n"
    assert len(held) == 1, held  # the request, and nothing else of the parent's
    ((local, _, status),) = held
    assert local == (host, port)
    assert status == psutil.CONN_ESTABLISHED


def test_a_child_keeps_only_its_request(start_supervisor: StartSupervisor, sockdir: Path) -> None:
    supervisor = start_supervisor(config_text(sockdir))
    check_a_child(supervisor)
    # A datagram child keeps the socket it answers on: its reply arrives.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"ping", supervisor.inet("udp"))
        assert client.recv(100) == b"echo ping"


def test_after_reloads_a_child_keeps_only_its_request(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(config_text(sockdir, ADDED))
    check_a_child(supervisor)
    # Servers removed and added, sockets closed and opened: what a child closes must follow.
    for extra in ("", ADDED, ""):
        seen = len(supervisor.lines)
        supervisor.config.write_text(config_text(sockdir, extra) + METRICS_ANY_PORT)
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log("reloaded: ", start=seen)
        check_a_child(supervisor)


def test_a_child_does_not_keep_the_pidfile_open(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    """Open read-write, it would let a child (one switched to another user, say) write a pid
    that `supervisor stop` then signals."""
    pidfile = sockdir / "sv.pid"
    supervisor = start_supervisor(
        supervisor_table(pidfile=str(pidfile), fork_server=False)
        + server_table("hold", "PidHandler")
    )
    with connect(supervisor.inet("hold")) as client:
        child = int(readline(client))
        files = [opened.path for opened in psutil.Process(child).open_files()]
        parent = [opened.path for opened in psutil.Process(supervisor.pid).open_files()]
        client.sendall(b"done\n")
        assert readline(client) == b"bye\n"
    assert str(pidfile) in parent  # (the check below could not fail otherwise)
    assert str(pidfile) not in files
