"""reuse_port: several supervisors bound to one TCP or UDP port, the kernel spreading new
connections and datagrams among them; and what a reload cannot change on a socket it keeps."""

import contextlib
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.configs import METRICS_ANY_PORT, TomlValue, server_table
from tests.conftest import (
    StartSupervisor,
    Supervisor,
    connect,
    finish,
    one_line_error,
    readline,
    run_cli,
)
from tests.integration.test_reload import reload

EX_OSERR = 71
EX_CONFIG = 78
# Connections (datagrams), each from a new source port: the kernel picks a socket by hashing
# the 4-tuple, so 200 all going to one of two sockets has a chance of 2**-199.
ATTEMPTS = 200
HANDLERS = {"tcp": "PidHandler", "udp": "DatagramPidHandler"}


@contextlib.contextmanager
def held_port(kind: socket.SocketKind) -> Iterator[int]:
    """A port of 127.0.0.1 the kernel picks (port 0 itself cannot be shared), held by a bound
    SO_REUSEPORT socket until the block ends, so that no other process takes it meanwhile (one
    without SO_REUSEPORT cannot bind it). That socket never listens (TCP), and is closed before
    any datagram is sent (UDP): it never gets a connection or a datagram of its own."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def pid_server(scheme: str, port: int, **keys: TomlValue) -> str:
    """A server that answers with the supervisor's pid (thread mode: no child in between)."""
    address = f"{scheme}://127.0.0.1:{port}"
    return server_table("pid", HANDLERS[scheme], address=address, mode="thread", **keys)


def ask_pid(scheme: str, port: int) -> int:
    """The pid that answers one new connection (TCP) or one datagram from a new socket (UDP)."""
    if scheme == "tcp":
        sock = connect(("127.0.0.1", port))
        pid = int(readline(sock))
        finish(sock)
        return pid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.sendto(b"pid?\n", ("127.0.0.1", port))
        return int(sock.recv(64))


def answered_by(ask: Callable[[], int], expected: set[int]) -> set[int]:
    """The pids that answered: asking until all of `expected` have, ATTEMPTS times at most."""
    seen: set[int] = set()
    for _ in range(ATTEMPTS):
        seen.add(ask())
        if seen >= expected:
            break
    return seen


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
def test_two_supervisors_on_one_port_both_answer(
    start_supervisor: StartSupervisor, scheme: str
) -> None:
    kind = socket.SOCK_STREAM if scheme == "tcp" else socket.SOCK_DGRAM
    with held_port(kind) as port:
        toml = pid_server(scheme, port, reuse_port=True)
        first = start_supervisor(toml, name="first.toml")
        second = start_supervisor(toml, name="second.toml")  # the same file, copied
    assert first.inet("pid") == second.inet("pid") == ("127.0.0.1", port)
    pids = {first.pid, second.pid}
    assert answered_by(lambda: ask_pid(scheme, port), pids) == pids

    # One stops (an upgrade, one supervisor after the other): the other takes everything.
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert {ask_pid(scheme, port) for _ in range(20)} == {second.pid}


@pytest.mark.parametrize("scheme", ["tcp", "udp"])
@pytest.mark.parametrize(
    ("first_reuses", "second_reuses"),
    [(False, False), (True, False), (False, True)],
    ids=["neither", "first-only", "second-only"],
)
def test_the_second_supervisor_cannot_bind_unless_both_reuse(
    start_supervisor: StartSupervisor,
    tmp_path: Path,
    scheme: str,
    first_reuses: bool,
    second_reuses: bool,
) -> None:
    first = start_supervisor(pid_server(scheme, 0, **reuse(first_reuses)))
    port = first.inet("pid")[1]
    path = tmp_path / "second.toml"
    path.write_text(pid_server(scheme, port, **reuse(second_reuses)) + METRICS_ANY_PORT)
    assert one_line_error(run_cli("run", "-c", str(path)), EX_OSERR) == (
        f"{path}: servers.pid: cannot bind {scheme}://127.0.0.1:{port} (Address already in use)"
    )


def reuse(on: bool) -> dict[str, TomlValue]:
    """The reuse_port key when `on`; left out (its default, false) otherwise."""
    return {"reuse_port": True} if on else {}


def test_reuse_port_on_a_unix_address_stops_run(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.toml"
    path.write_text(
        server_table("echo", "LineEchoHandler", address="unix:///tmp/sv-r.sock", reuse_port=True)
    )
    assert one_line_error(run_cli("run", "-c", str(path)), EX_CONFIG) == (
        f"{path}: servers.echo.reuse_port: only applies to tcp:// and udp:// addresses"
    )


def kept_socket_warning(port: int, wanted: bool) -> str:
    return (
        f"pid: reuse_port = {str(wanted).lower()} applies when the socket is bound anew (next "
        f"start); until then tcp://127.0.0.1:{port} keeps its socket, bound "
        f"{'without' if wanted else 'with'} SO_REUSEPORT"
    )


def warnings_about_reuse_port(supervisor: Supervisor, start: int) -> list[str]:
    return [
        line.split(": ", 1)[1]
        for line in supervisor.lines[start:]
        if "WARNING" in line and "reuse_port" in line
    ]


def test_a_reload_keeps_the_socket_and_warns_that_reuse_port_waits(
    start_supervisor: StartSupervisor, tmp_path: Path
) -> None:
    supervisor = start_supervisor(pid_server("tcp", 0))
    port = supervisor.inet("pid")[1]
    start = len(supervisor.lines)
    line = reload(supervisor, pid_server("tcp", 0, reuse_port=True) + METRICS_ANY_PORT)
    assert line == "reloaded: changed pid"  # config.diff reports it, as any other key
    assert warnings_about_reuse_port(supervisor, start) == [kept_socket_warning(port, True)]

    # The socket kept is the one bound without SO_REUSEPORT: nobody else can bind the port.
    path = tmp_path / "second.toml"
    path.write_text(pid_server("tcp", port, reuse_port=True) + METRICS_ANY_PORT)
    assert one_line_error(run_cli("run", "-c", str(path)), EX_OSERR) == (
        f"{path}: servers.pid: cannot bind tcp://127.0.0.1:{port} (Address already in use)"
    )
    assert ask_pid("tcp", port) == supervisor.pid

    # Back to what the socket has: nothing to warn about.
    start = len(supervisor.lines)
    assert reload(supervisor, pid_server("tcp", 0) + METRICS_ANY_PORT) == "reloaded: changed pid"
    assert warnings_about_reuse_port(supervisor, start) == []


def test_a_reload_that_turns_reuse_port_off_warns_that_others_may_still_bind(
    start_supervisor: StartSupervisor,
) -> None:
    first = start_supervisor(pid_server("tcp", 0, reuse_port=True), name="first.toml")
    port = first.inet("pid")[1]
    start = len(first.lines)
    reload(first, pid_server("tcp", 0) + METRICS_ANY_PORT)
    assert warnings_about_reuse_port(first, start) == [kept_socket_warning(port, False)]
    # As the warning says: the socket still has SO_REUSEPORT, so another can still join.
    second = start_supervisor(pid_server("tcp", port, reuse_port=True), name="second.toml")
    pids = {first.pid, second.pid}
    assert answered_by(lambda: ask_pid("tcp", port), pids) == pids
