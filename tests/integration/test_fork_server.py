"""The fork server: fork mode's stream requests are forked from a small process, and nothing a
user sees changes (status, metrics, signals, logs, reload, stop), also when it fails."""

import array
import marshal
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import control, forking, forkserver, handling
from tests.configs import TomlValue, server_table, supervisor_table
from tests.conftest import StartSupervisor, Supervisor, connect, exchange, finish, readline
from tests.integration.test_daemon import LogFile, wait_ready
from tests.integration.test_metrics import idle, scrape, scrape_until

FORKING = r"fork server (\d+): forking for (\d+) servers"

ECHO = "tests.handlers:LineEchoHandler"
# Handover messages: more than the fork server's channel holds unread (278 with this kernel's
# default socket buffers; a machine with much larger ones would need more).
CHANNEL_FILL = 600
PRINT = "tests.handlers:PrintHandler"


def wait_until_accepted(port: int, timeout: float = 10.0) -> None:
    """Until the accept queue of the IPv4 TCP listener on `port` is empty (/proc/net/tcp: a
    listening socket's rx_queue is its accept queue)."""
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                local, state, queues = fields[1], fields[3], fields[4]
                if state == "0A" and int(local.split(":")[1], 16) == port:
                    if int(queues.split(":")[1], 16) == 0:
                        return
                    break
        assert time.monotonic() < deadline, f"port {port}: connections left unaccepted"
        time.sleep(0.001)


def supervisor_settings(sockdir: Path, **settings: TomlValue) -> str:
    """[supervisor] with its pidfile (and control socket) in `sockdir`; `settings` over the
    defaults."""
    defaults: dict[str, TomlValue] = {
        "pidfile": f"{sockdir}/sv.pid",
        "shutdown_timeout": 10,
        "kill_grace": 2,
    }
    return supervisor_table(**{**defaults, **settings})


def config_text(sockdir: Path, *, echo: str = ECHO, **settings: TomlValue) -> str:
    """Two fork-mode servers: `hold` (a PidHandler) and `echo` (the handler `echo`)."""
    return (
        supervisor_settings(sockdir, **settings)
        + server_table("hold", "PidHandler")
        + server_table("echo", echo)
    )


def start(
    start_supervisor: StartSupervisor,
    sockdir: Path,
    *,
    echo: str = ECHO,
    serves: int = 2,
    **settings: TomlValue,
) -> tuple[Supervisor, int]:
    """A supervisor and the pid of its fork server, once that is ready."""
    supervisor = start_supervisor(config_text(sockdir, echo=echo, **settings))
    match = supervisor.wait_for_log(FORKING)
    assert int(match.group(2)) == serves
    return supervisor, int(match.group(1))


def held_child(supervisor: Supervisor) -> tuple[socket.socket, psutil.Process]:
    """A connection to `hold` whose child is running, and that child."""
    client = connect(supervisor.inet("hold"))
    return client, psutil.Process(int(readline(client)))


def status(sockdir: Path) -> dict[str, Any]:
    return control.request(str(sockdir / "sv.sock"), "status")


def test_requests_are_forked_by_the_fork_server(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(start_supervisor, sockdir)
    process = psutil.Process(fork_server)
    assert process.ppid() == supervisor.pid
    assert "forkserver.py" in " ".join(process.cmdline())
    client, child = held_child(supervisor)
    assert child.ppid() == fork_server
    # The supervisor knows the child as its own: status, metrics and max_children see it.
    answer = status(sockdir)
    assert answer["children"] == [{"pid": child.pid, "server": "hold"}]
    assert answer["fork_servers"] == [fork_server]
    assert scrape(supervisor).value("supervisor_children", server="hold") == 1
    finish(client)
    current = scrape_until(supervisor, idle("hold"))
    assert current.exits("hold")["ok"] == 1
    assert current.value("supervisor_requests_total", server="hold") == 1
    # No listening socket of the supervisor's in the fork server: only its channel.
    assert process.net_connections(kind="inet") == []


def test_fork_server_off_forks_in_the_supervisor(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    text = config_text(sockdir, fork_server=False)
    supervisor = start_supervisor(text)
    client, child = held_child(supervisor)
    assert child.ppid() == supervisor.pid
    finish(client)
    assert "fork server" not in supervisor.log


def test_a_handler_the_fork_server_cannot_import_is_forked_by_the_supervisor(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(
        start_supervisor, sockdir, echo="tests.no_site_handler:LineEchoHandler", serves=1
    )
    supervisor.wait_for_log(
        r"echo: the fork server cannot import the handler \(ImportError: this module needs the "
        r"site hooks\); the supervisor forks its requests itself"
    )
    with connect(supervisor.inet("echo")) as client:
        client.sendall(b"ping\n")
        assert readline(client).endswith(b" ping\n")
    client, child = held_child(supervisor)  # the other server still goes through it
    assert child.ppid() == fork_server
    finish(client)


def test_a_fork_server_that_dies_is_replaced(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(start_supervisor, sockdir)
    client, child = held_child(supervisor)
    try:
        psutil.Process(fork_server).kill()
        supervisor.wait_for_log(
            rf"fork server {fork_server} exited unexpectedly; 1 requests it had taken are no "
            r"longer tracked"
        )
        # Its orphan finishes its request; the supervisor no longer counts it.
        finish(client)
    finally:
        if child.is_running():  # (an orphan: not the supervisor's to clean up any more)
            child.kill()
    assert status(sockdir)["children"] == []
    scrape_until(supervisor, idle("hold"))
    # Meanwhile the supervisor forks requests itself, then a new fork server takes over.
    assert exchange(supervisor.inet("echo"), b"ping\n").endswith(b" ping\n")
    start_of_log = len(supervisor.lines)
    match = supervisor.wait_for_log(FORKING, start=start_of_log)
    replacement = int(match.group(1))
    assert replacement != fork_server
    client, child = held_child(supervisor)
    assert child.ppid() == replacement
    finish(client)


def test_a_reload_starts_a_new_fork_server_and_the_old_one_drains(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, old = start(start_supervisor, sockdir)
    old_client, old_child = held_child(supervisor)
    start_of_log = len(supervisor.lines)
    supervisor.signal(signal.SIGHUP)
    new = int(supervisor.wait_for_log(FORKING, start=start_of_log).group(1))
    assert new != old
    new_client, new_child = held_child(supervisor)
    assert (old_child.ppid(), new_child.ppid()) == (old, new)
    assert psutil.Process(old).is_running()  # still has a child to see through
    finish(old_client)
    psutil.Process(old).wait(timeout=10)  # (reaped by the supervisor: it was its child)
    finish(new_client)
    current = scrape_until(supervisor, idle("hold"))
    assert current.exits("hold")["ok"] == 2


def test_stop_waits_for_the_fork_servers_children(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(start_supervisor, sockdir)
    client, child = held_child(supervisor)
    start_of_log = len(supervisor.lines)
    supervisor.signal(signal.SIGTERM)
    supervisor.wait_for_log("stopping; 1 requests in progress", start=start_of_log)
    assert supervisor.running()
    assert child.is_running()
    finish(client)
    assert supervisor.wait() == 0
    assert not psutil.pid_exists(fork_server)
    assert not psutil.pid_exists(child.pid)


def test_stop_terminates_the_fork_servers_children_after_the_timeout(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(start_supervisor, sockdir, shutdown_timeout=0.2)
    client, child = held_child(supervisor)
    with client:
        supervisor.signal(signal.SIGTERM)
        # The fork server holds stop signals blocked; its children unblock them.
        supervisor.wait_for_log("sent SIGTERM to 1 children still running")
        supervisor.wait_for_log(rf"hold: child {child.pid} killed by signal SIGTERM")
        assert supervisor.wait() == 0
    assert not psutil.pid_exists(fork_server)


def test_threads_and_subprocesses_work_in_the_fork_servers_children(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    extra = (
        server_table("thread", "ThreadHandler")
        + server_table("shell", "SubprocessHandler")
        + server_table("orphan", "DoubleForkHandler")
        + server_table("forks", "ForkWithThreadHandler")
    )
    supervisor, _ = start(start_supervisor, sockdir, serves=2)
    supervisor.config.write_text(supervisor.config.read_text() + extra)
    start_of_log = len(supervisor.lines)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log(r"fork server \d+: forking for 6 servers", start=start_of_log)
    supervisor.wait_ready()
    # threading works in a child although the fork server skipped its after-fork hook
    assert exchange(supervisor.inet("thread"), b"hi\n") == b"2 HI\n"
    assert exchange(supervisor.inet("shell"), b"go\n") == b"3\n"  # its own child's status
    with connect(supervisor.inet("orphan")) as client:
        assert readline(client).startswith(b"orphan ")  # a handler forking twice (grandchild)
        client.sendall(b"go\n")
        assert readline(client) == b"released\n"
    # A child's own fork() runs threading's after-fork hook again (the fork server skips it
    # only for its own forks): the new process does not count the thread it did not inherit.
    assert exchange(supervisor.inet("forks"), b"") == b"1\n"


def test_handler_output_and_errors_are_logged_as_before(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, _ = start(start_supervisor, sockdir, echo="tests.handlers:FailingHandler")
    with connect(supervisor.inet("echo")) as client:
        client.sendall(b"boom\n")
        assert client.recv(10) == b""
    supervisor.wait_for_log(
        r"ERROR supervisor\[\d+\]: echo: handler tests.handlers:FailingHandler failed for client "
        r"\('127.0.0.1', \d+\)"
    )
    supervisor.wait_for_log(r"RuntimeError: handler failure on purpose: b'boom\\n'")
    current = scrape_until(supervisor, idle("echo"))
    assert current.exits("echo")["error"] == 1
    assert current.value("supervisor_handler_errors_total", server="echo") == 1


def test_a_handler_module_that_starts_a_thread_at_import(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(
        start_supervisor, sockdir, echo="tests.thread_at_import:LineEchoHandler"
    )
    supervisor.wait_for_log(
        rf"fork server {fork_server}: a handler module started a thread at import; its children "
        r"run threading's after-fork hook \(slower\)"
    )
    assert exchange(supervisor.inet("echo"), b"ping\n").endswith(b" ping\n")


def test_a_reopened_log_file_reaches_the_fork_servers_children(
    start_supervisor: StartSupervisor, sockdir: Path, tmp_path: Path
) -> None:
    log_file = tmp_path / "supervisor.log"
    text = config_text(sockdir, echo=PRINT, log_file=str(log_file))
    supervisor = start_supervisor(text, ready=False)
    log = LogFile(log_file)
    log.wait_for(FORKING)
    echo = wait_ready(sockdir / "sv.pid", log).inet("echo")
    assert exchange(echo, b"x\n") == b"printed\n"
    log.wait_for("^print-handler-was-here$")
    rotated = tmp_path / "supervisor.log.1"
    log_file.rename(rotated)  # as logrotate does
    supervisor.signal(signal.SIGUSR1)
    new = LogFile(log_file)
    new.wait_for("SIGUSR1: reopened")
    assert exchange(echo, b"x\n") == b"printed\n"
    new.wait_for("^print-handler-was-here$")  # a fork server's child wrote it
    assert rotated.read_text().count("print-handler-was-here") == 1


def test_each_child_holds_only_its_own_connection_of_a_batch(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(start_supervisor, sockdir)
    supervisor.signal(signal.SIGSTOP)  # the connections queue up: one accept batch takes all
    try:
        clients = [connect(supervisor.inet("hold")) for _ in range(4)]
    finally:
        supervisor.signal(signal.SIGCONT)
    children = [psutil.Process(int(readline(client))) for client in clients]
    assert {child.ppid() for child in children} == {fork_server}
    for child in children:  # its request, and not the later ones of its batch
        assert len(child.net_connections(kind="inet")) == 1, child.net_connections(kind="inet")
    for client in clients:
        finish(client)


def test_a_childs_connection_is_close_on_exec(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, _ = start(start_supervisor, sockdir, echo="tests.handlers:InheritableHandler")
    assert exchange(supervisor.inet("echo"), b"") == b"0\n"


def test_children_ignore_sigint_as_the_supervisors_own_do(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, _ = start(start_supervisor, sockdir)
    client, child = held_child(supervisor)
    child.send_signal(signal.SIGINT)  # (a Ctrl-C in a terminal reaches the whole group)
    finish(client)  # it was still there to answer


def test_a_handler_modules_basicconfig_does_not_change_the_log(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, _ = start(
        start_supervisor, sockdir, echo="tests.basicconfig_handler:LoggingHandler"
    )
    assert exchange(supervisor.inet("echo"), b"") == b"logged\n"
    supervisor.wait_for_log(r"WARNING supervisor\[\d+\]: a handler log line$")
    assert "BASICCONFIG" not in supervisor.log
    assert "a debug line" not in supervisor.log  # log_level (info) still applies


def test_a_fast_stop_with_no_grace_leaves_no_child_behind(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    supervisor, fork_server = start(
        start_supervisor, sockdir, kill_grace=0, echo="tests.handlers:StubbornHandler"
    )
    clients = [connect(supervisor.inet("echo")) for _ in range(3)]
    try:
        children = [psutil.Process(int(readline(client))) for client in clients]  # SIGTERM-proof
        processes = [*children, psutil.Process(fork_server)]
        supervisor.signal(signal.SIGQUIT)
        assert supervisor.wait() == 0
        _, alive = psutil.wait_procs(processes, timeout=5)
        assert alive == []
    finally:
        for client in clients:
            client.close()


def test_what_a_handler_module_prints_at_import_is_not_repeated_by_every_child(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    text = config_text(sockdir, echo="tests.print_at_import:LineEchoHandler")
    supervisor = start_supervisor(text, env={"PYTHONUNBUFFERED": ""})  # (stdout block-buffered)
    for _ in range(3):
        assert exchange(supervisor.inet("echo"), b"x\n").endswith(b" x\n")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert supervisor.log.count("printed-at-import") == 2  # the supervisor and its fork server


def test_a_stuck_fork_server_leaves_requests_to_the_supervisor(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    """With the fork server stopped, its channel fills up; the supervisor then forks new
    requests itself (a batch too, each child with only its own connection), and the queued
    ones are served once the fork server runs again."""
    text = (
        supervisor_settings(sockdir)
        + server_table("hold", "PidHandler")
        + server_table("echo", ECHO, max_children=1000)
    )
    supervisor = start_supervisor(text)
    fork_server = int(supervisor.wait_for_log(FORKING).group(1))
    stuck = psutil.Process(fork_server)
    stuck.suspend()
    queued: list[socket.socket] = []
    try:
        port = supervisor.inet("echo")[1]
        for _ in range(CHANNEL_FILL):  # one handover message each: more than the channel holds
            client = connect(supervisor.inet("echo"))
            client.sendall(b"ping\n")
            queued.append(client)
            # Accepted before the next one comes: else a loaded machine's supervisor accepts
            # several in one batch, sends them in one message, and the channel never fills.
            wait_until_accepted(port)
        assert readline(queued[-1]).endswith(b" ping\n")  # served: by the supervisor itself
        supervisor.signal(signal.SIGSTOP)  # one accept batch of four, while the channel is full
        try:
            held = [connect(supervisor.inet("hold")) for _ in range(4)]
        finally:
            supervisor.signal(signal.SIGCONT)
        children = [psutil.Process(int(readline(client))) for client in held]
        assert {child.ppid() for child in children} == {supervisor.pid}
        for child in children:
            assert len(child.net_connections(kind="inet")) == 1, child.net_connections("inet")
        for client in held:
            finish(client)
    finally:
        stuck.resume()
    queued.pop().close()  # (its reply was read above)
    expected = b"('127.0.0.1', %d) ping\n" % supervisor.inet("echo")[1]
    for client in queued:  # those handed over before, served now, and those forked here
        with client:
            assert readline(client) == expected
    current = scrape_until(supervisor, idle("echo", "hold"))
    assert current.exits("echo")["ok"] == CHANNEL_FILL


def test_a_clean_stop_logs_no_error_about_the_fork_server(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(
        server_table("echo", "LineEchoHandler")
        + server_table("pool", "LineEchoHandler", mode="prefork", workers=2)
    )
    assert exchange(supervisor.inet("echo"), b"ping\n").endswith(b" ping\n")
    supervisor.signal(signal.SIGTERM)  # (the workers' exits keep the loop a moment longer)
    assert supervisor.wait() == 0
    # It exits once told no more requests come; the final kill then finds it gone: that is
    # not worth an error line.
    assert " ERROR " not in supervisor.log, supervisor.log


# Never in the fork server: `typing` and `re` (a megabyte), `logging` (until a line is logged),
# site hooks (-S), the supervisor package (handling.py is loaded by its location).
NOT_IMPORTED = ("typing", "re", "logging", "site", "supervisor")


def imported(stderr: str) -> set[str]:
    """The modules `-X importtime` lists as imported."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            names.add(line.rpartition("|")[2].strip())
    return names


def received(channel: socket.socket) -> list[tuple[Any, ...]]:
    """The fork server's next report message."""
    reports: list[tuple[Any, ...]] = marshal.loads(channel.recv(65536))  # noqa: S302 (ours)
    return reports


@pytest.fixture
def bare_fork_server(tmp_path: Path) -> Iterator[tuple[int, socket.socket, int, Path]]:
    """The fork server script started as the supervisor starts it (-S -P, fds 3 to 5), with
    `-X importtime`, serving `plain` (socketserver's BaseRequestHandler, max_per_source):
    its pid, our end of the channel, the read end of its done pipe, its stderr's file."""
    spec = {
        "name": "plain",
        "handler": "socketserver:BaseRequestHandler",
        "server_address": "",
        "family": int(socket.AF_UNIX),
        "type": int(socket.SOCK_STREAM),
        "proto": 0,
        "max_packet_size": 0,
        "report_done": True,
    }
    setup = {
        "path": list(sys.path),
        "argv": ["supervisor"],
        "locations": {},
        "log_format": "%(message)s",
        "journal_pid": 0,
        "log_level": "INFO",
        "servers": [spec],
    }
    stderr = tmp_path / "stderr"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    done_r, done_w = os.pipe()
    fds = [forking._high_fd(theirs.fileno()), forking._high_fd(done_w)]
    with open(stderr, "wb") as log:
        fds.append(forking._high_fd(log.fileno()))
    setup_fd = forking._setup_file(marshal.dumps(setup))
    fds.append(forking._high_fd(setup_fd))
    os.close(setup_fd)
    command = ["-X", "importtime", *forking.interpreter_flags(), forking.SCRIPT]
    try:
        pid = os.posix_spawn(
            sys.executable,
            [sys.executable, *command],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, fds[0], forkserver.CHANNEL_FD),
                (os.POSIX_SPAWN_DUP2, fds[3], forkserver.SETUP_FD),
                (os.POSIX_SPAWN_DUP2, fds[1], forkserver.DONE_FD),
                (os.POSIX_SPAWN_DUP2, fds[2], 2),
            ],
            setsigmask=forkserver.HELD,
        )
    finally:
        for fd in (*fds, done_w):
            os.close(fd)
        theirs.close()
    ours.settimeout(10)
    try:
        yield pid, ours, done_r, stderr
    finally:
        ours.close()
        os.close(done_r)
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:  # (not reaped by the test: kill it)
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def test_the_fork_server_and_its_children_import_no_typing_or_logging(
    bare_fork_server: tuple[int, socket.socket, int, Path],
) -> None:
    """Under -S, with handling.py for the request path: neither the fork server (start, warm-up)
    nor a child serving a request imports more than the standard library it needs."""
    pid, channel, done_r, stderr = bare_fork_server
    assert received(channel) == [("serves", "plain"), ("ready", True)]
    client, connection = socket.socketpair()
    with client, connection:
        fds = array.array("i", [connection.fileno()])
        channel.sendmsg(
            [marshal.dumps(("R", [("plain", 7, "")]))],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)],
        )
        connection.close()
        client.settimeout(10)
        assert client.recv(1) == b""  # the request was shut down
    reports: list[tuple[Any, ...]] = []
    while not any(report[0] == "X" for report in reports):
        reports.extend(received(channel))
    (child,) = [report[2] for report in reports if report[0] == "F" and report[1] == 7]
    assert [report[2] for report in reports if report[0] == "X"] == [0]  # its exit status
    assert handling.DONE.unpack(os.read(done_r, handling.DONE.size)) == (pid, 7, child)
    channel.shutdown(socket.SHUT_WR)  # no more requests: it exits
    assert channel.recv(65536) == b""
    assert os.waitpid(pid, 0)[1] == 0
    names = imported(stderr.read_text())
    assert "socketserver" in names  # (-X importtime lists what it imports)
    unwanted = {name for name in names if name.partition(".")[0] in NOT_IMPORTED}
    assert not unwanted, stderr.read_text()
