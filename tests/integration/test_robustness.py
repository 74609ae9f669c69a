"""What a handler may do to its process, its sockets or its streams never harms the supervisor."""

import signal
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

from tests.configs import server_table, supervisor_table
from tests.conftest import StartSupervisor, connect, exchange, readline


def test_a_thread_handler_keeps_the_exit_status_of_its_subprocess(
    start_supervisor: StartSupervisor,
) -> None:
    """The supervisor reaps its own children only, so subprocess.run sees its child's status."""
    supervisor = start_supervisor(
        server_table("shell", "SubprocessHandler", mode="thread")
        + server_table("forks", "LineEchoHandler")
    )
    shell, forks = supervisor.inet("shell"), supervisor.inet("forks")
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Fork children exit all the while, so SIGCHLD keeps arriving during the subprocesses.
        noise = [pool.submit(exchange, forks, b"x\n") for _ in range(60)]
        statuses = list(pool.map(lambda _: exchange(shell, b"go\n"), range(30)))
        assert all(future.result().endswith(b" x\n") for future in noise)
    assert statuses == [b"3\n"] * 30
    assert "not a child of ours" not in supervisor.log


def test_a_datagram_handler_cannot_make_the_parent_block(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("udp-fork", "BlockingDatagramHandler", address="udp://127.0.0.1:0")
        + server_table(
            "udp-thread", "BlockingDatagramHandler", address="udp://127.0.0.1:0", mode="thread"
        )
        + server_table("tcp", "LineEchoHandler")
    )
    for name in ("udp-fork", "udp-thread"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            for n in range(3):
                client.sendto(b"%d" % n, supervisor.inet(name))
                assert client.recv(100) == b"echo %d" % n
        # The loop is still free: another server answers at once.
        assert exchange(supervisor.inet("tcp"), b"ping\n", timeout=5).endswith(b" ping\n")


def test_forked_children_do_not_repeat_the_parents_buffered_output(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("printer", "PrintHandler", mode="inline")
        + server_table("forks", "LineEchoHandler"),
        env={"PYTHONUNBUFFERED": ""},  # stdout is a pipe: block-buffered, as under systemd
    )
    assert exchange(supervisor.inet("printer"), b"") == b"printed\n"
    for _ in range(5):
        assert exchange(supervisor.inet("forks"), b"x\n").endswith(b" x\n")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert supervisor.log.count("print-handler-was-here") == 1


def test_a_forked_child_does_not_hold_connections_served_by_threads(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("threads", "PidHandler", mode="thread") + server_table("forks", "PidHandler")
    )
    with connect(supervisor.inet("threads")) as held, connect(supervisor.inet("forks")) as forked:
        assert int(readline(held)) == supervisor.pid
        child = psutil.Process(int(readline(forked)))
        remote_ends = {conn.raddr for conn in child.net_connections(kind="tcp") if conn.raddr}
        assert remote_ends == {forked.getsockname()}
        for sock in (held, forked):
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"


def test_a_child_killed_by_a_realtime_signal_is_logged(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("rt", "RealtimeSignalHandler"))
    with connect(supervisor.inet("rt")) as sock:
        assert sock.recv(1) == b""
    supervisor.wait_for_log(r"rt: child \d+ killed by signal SIGRTMIN\+3")
    assert "Logging error" not in supervisor.log


def test_an_idle_client_timing_out_is_one_log_line(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(server_table("idle", "IdleTimeoutHandler", mode="thread"))
    with connect(supervisor.inet("idle")) as sock:
        assert sock.recv(1) == b""  # closed by the handler's timeout
    supervisor.wait_for_log(r"WARNING .*idle: connection with client .* lost \(timed out\)")
    assert "Traceback" not in supervisor.log


def test_server_close_in_a_child_leaves_the_parents_socket_file(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor = start_supervisor(
        server_table("closer", "CloseServerHandler", address=f"unix://{sockdir}/closer.sock")
    )
    path = supervisor.unix_path("closer")
    for _ in range(2):
        # Only read: the handler answers and closes at once, so even an empty send (as
        # exchange() makes) can meet a closed peer (EPIPE).
        with connect(path) as sock:
            assert b"".join(iter(lambda: sock.recv(4096), b"")) == b"closed\n"
    assert Path(path).exists()


def test_repeated_sigterm_does_not_postpone_sigkill(start_supervisor: StartSupervisor) -> None:
    supervisor = start_supervisor(
        supervisor_table(shutdown_timeout=0.1, kill_grace=1)
        + server_table("stubborn", "StubbornHandler")
    )
    with connect(supervisor.inet("stubborn")) as sock:
        assert int(readline(sock)) > 0
        supervisor.signal(signal.SIGTERM)
        supervisor.wait_for_log("sent SIGTERM to 1 children")
        # Keep repeating SIGTERM, faster than kill_grace, until the supervisor has exited.
        while True:
            try:
                supervisor.process.wait(0.2)
                break
            except subprocess.TimeoutExpired:
                supervisor.signal(signal.SIGTERM)
    assert supervisor.process.returncode == 0
    assert "sent SIGKILL to 1 children" in supervisor.log


def test_startup_does_not_hang_on_a_live_unix_listener_with_a_full_queue(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    path = str(sockdir / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(path)
            except BlockingIOError:
                break  # the queue is full
        supervisor = start_supervisor(
            server_table("busy", "LineEchoHandler", address=f"unix://{path}"), ready=False
        )
        assert supervisor.wait(timeout=10) == 71
        assert "servers.busy: cannot bind" in supervisor.log
        assert Path(path).exists()
    finally:
        for sock in fillers:
            sock.close()
        listener.close()
