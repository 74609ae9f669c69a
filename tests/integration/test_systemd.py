"""systemd for real: sd_notify to a test-owned NOTIFY_SOCKET, the watchdog, and socket activation
with Debian's `systemd-socket-activate` passing a TCP and a UDP socket.

Every notification is awaited as a datagram with a deadline, and the exact messages are asserted
in order, so an unexpected one (a WATCHDOG=1 where none is due) breaks the sequence.

What `systemd-socket-activate` (systemd 252) does when nested, checked by hand before relying on
it: the outer invocation binds its `-l` addresses as fds 3, 4, ... and, on the first connection,
execs the inner one, which passes those fds through ("Received N descriptors via the
environment") and adds its own after them; the queued connection makes the inner one exec at
once, in the same pid. The outer `--fdname` names are lost: LISTEN_FDNAMES is the inner
`--fdname` alone, applied by position to all fds (one single name is repeated for every fd; no
`--fdname` leaves LISTEN_FDNAMES unset). So the inner invocation names all of them here.
"""

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil
import pytest

from tests.configs import TomlValue, metrics_table, server_table, supervisor_table
from tests.conftest import (
    READY,
    STOP_TIMEOUT,
    LoggedProcess,
    StartSupervisor,
    connect,
    exchange,
    readline,
)
from tests.integration.test_upgrade import Load

SYSTEMD_VARIABLES = (
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
)
DEADLINE = 10.0  # seconds to wait for any one event
WATCHDOG_USEC = 200_000  # a WATCHDOG=1 is due every 0.1 s
ATTEMPTS = 3  # tries with fresh ports when systemd-socket-activate cannot bind its addresses

TWO_SERVERS = server_table("echo", "LineEchoHandler", mode="thread") + server_table(
    "echo-udp", "DatagramEchoHandler", address="udp://127.0.0.1:0", mode="thread"
)
THREE_SERVERS = TWO_SERVERS + server_table("base", "BaseEchoHandler", mode="inline")


@pytest.fixture(autouse=True)
def _no_systemd_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gives the supervisor exactly the systemd variables it means to."""
    for variable in SYSTEMD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


# -- processes started with a command line of our own ----------------------------------------


Spawn = Callable[[Sequence[str], dict[str, str]], LoggedProcess]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start commands; every one is stopped, with what it started, at the end."""
    started: list[LoggedProcess] = []

    def start(command: Sequence[str], extra_env: dict[str, str]) -> LoggedProcess:
        process = LoggedProcess(command, extra_env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


# -- NOTIFY_SOCKET ---------------------------------------------------------------------------


class Logged(Protocol):
    """A process whose output can be shown when an expected event does not come."""

    @property
    def log(self) -> str: ...


class NotifyListener:
    """The service manager's end of NOTIFY_SOCKET: one datagram is one notification."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.socket = sock
        self.address = address  # the value for NOTIFY_SOCKET

    def receive(self, sender: Logged, timeout: float = DEADLINE) -> str:
        """The next notification; fail (showing the sender's log) if none comes in time."""
        self.socket.settimeout(timeout)
        try:
            data = self.socket.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no notification in {timeout}s; log:\n{sender.log}") from None
        return data.decode()

    def pending(self) -> list[str]:
        """Every notification already queued, without waiting."""
        self.socket.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(self.socket.recv(65536).decode())
            except BlockingIOError:
                return messages

    def expect_reloading(self, sender: Logged, before: int) -> None:
        """RELOADING=1 with a MONOTONIC_USEC= taken after `before` and before it arrived."""
        message = self.receive(sender)
        after = monotonic_usec()
        match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
        assert match is not None, message
        assert before <= int(match.group(1)) <= after


def bind_listener(sock: socket.socket, address: str) -> NotifyListener:
    sock.bind("\0" + address[1:] if address.startswith("@") else address)
    return NotifyListener(sock, address)


@pytest.fixture(params=["path", "abstract"])
def notify_listener(request: pytest.FixtureRequest, sockdir: Path) -> Iterator[NotifyListener]:
    """A datagram socket at a file path, or at an abstract address ('@name')."""
    if request.param == "path":
        address = str(sockdir / "notify")
    else:
        address = f"@supervisor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        yield bind_listener(sock, address)


@pytest.fixture
def path_listener(sockdir: Path) -> Iterator[NotifyListener]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        yield bind_listener(sock, str(sockdir / "notify"))


def ready_message(servers: int, pid: int) -> str:
    return f"READY=1\nSTATUS={servers} servers, 0 requests in progress\nMAINPID={pid}"


def test_notifications_across_start_reload_failed_reload_and_stop(
    start_supervisor: StartSupervisor, notify_listener: NotifyListener
) -> None:
    supervisor = start_supervisor(TWO_SERVERS, env={"NOTIFY_SOCKET": notify_listener.address})
    assert notify_listener.receive(supervisor) == ready_message(2, supervisor.pid)

    supervisor.config.write_text(THREE_SERVERS)
    before = monotonic_usec()
    supervisor.signal(signal.SIGHUP)
    notify_listener.expect_reloading(supervisor, before)
    assert notify_listener.receive(supervisor) == (
        "READY=1\nSTATUS=3 servers, 0 requests in progress; last reload ok"
    )
    supervisor.wait_for_log(r"reloaded: ")

    supervisor.config.write_text(THREE_SERVERS + "\n[servers.broken\n")
    start = len(supervisor.lines)
    before = monotonic_usec()
    supervisor.signal(signal.SIGHUP)
    notify_listener.expect_reloading(supervisor, before)
    ready = notify_listener.receive(supervisor)
    error = supervisor.wait_for_log(
        r"reload failed, still running the previous configuration: (.*)$", start=start
    ).group(1)
    assert error.startswith(f"{supervisor.config}: TOML syntax error: ")
    assert (
        ready == f"READY=1\nSTATUS=3 servers, 0 requests in progress; last reload failed: {error}"
    )

    supervisor.signal(signal.SIGTERM)
    assert notify_listener.receive(supervisor) == "STOPPING=1"
    assert supervisor.wait() == 0
    assert notify_listener.pending() == []


def test_status_follows_the_requests_without_waiting_for_a_ping(
    start_supervisor: StartSupervisor, path_listener: NotifyListener
) -> None:
    """STATUS= is sent when the numbers change (no watchdog here to carry it), requests in
    progress apart from prefork workers; at most once a second, so the end of the request
    comes by the timer."""
    supervisor = start_supervisor(
        server_table("held", "PidHandler")
        + server_table("pre", "LineEchoHandler", mode="prefork", workers=2),
        env={"NOTIFY_SOCKET": path_listener.address},
    )
    status = "STATUS=2 servers, {} in progress, 2 prefork workers"
    ready = path_listener.receive(supervisor)
    assert ready == f"READY=1\n{status.format('0 requests')}\nMAINPID={supervisor.pid}"
    with connect(supervisor.inet("held")) as held:
        assert int(readline(held)) > 0  # the request is running
        assert path_listener.receive(supervisor) == status.format("1 request")
    assert path_listener.receive(supervisor) == status.format("0 requests")
    assert path_listener.pending() == []


def test_a_reload_error_quoting_a_newline_stays_one_status_line(
    start_supervisor: StartSupervisor, path_listener: NotifyListener
) -> None:
    """A TOML key may hold escaped newlines; the error that quotes it must not split the
    notification, or systemd would read a line of it as an assignment (here STOPPING=1)."""
    supervisor = start_supervisor(TWO_SERVERS, env={"NOTIFY_SOCKET": path_listener.address})
    assert path_listener.receive(supervisor) == ready_message(2, supervisor.pid)

    supervisor.config.write_text(
        TWO_SERVERS
        + """
[servers."bad\\nSTOPPING=1\\nname"]
address = "tcp://127.0.0.1:0"
handler = "tests.handlers:LineEchoHandler"
"""
    )
    before = monotonic_usec()
    supervisor.signal(signal.SIGHUP)
    path_listener.expect_reloading(supervisor, before)
    lines = path_listener.receive(supervisor).split("\n")
    assert len(lines) == 2, lines
    assert lines[0] == "READY=1"
    assert lines[1].startswith(
        "STATUS=2 servers, 0 requests in progress; last reload failed: "
        f"{supervisor.config}: servers."
    )
    assert lines[1].endswith(": a server name is 1-64 letters, digits, '_', '.' or '-'")


@pytest.mark.parametrize("notify_socket", ["unset", "empty", "missing"])
def test_without_a_reachable_notify_socket_nothing_is_sent_and_all_works(
    start_supervisor: StartSupervisor,
    path_listener: NotifyListener,
    sockdir: Path,
    notify_socket: str,
) -> None:
    """NOTIFY_SOCKET unset, empty, or naming no socket: the supervisor runs, reloads and stops
    as usual, and nothing reaches a listener it was not told about."""
    env = {
        "unset": {},
        "empty": {"NOTIFY_SOCKET": ""},
        "missing": {"NOTIFY_SOCKET": str(sockdir / "missing")},
    }[notify_socket]
    supervisor = start_supervisor(TWO_SERVERS, env=env)
    assert exchange(supervisor.inet("echo"), b"one\n").endswith(b" one\n")
    start = len(supervisor.lines)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log(r"reloaded: ", start=start)
    assert exchange(supervisor.inet("echo"), b"two\n").endswith(b" two\n")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.wait() == 0
    assert "stopped" in supervisor.log
    assert path_listener.pending() == []


# -- the watchdog ------------------------------------------------------------------------------

PING = "WATCHDOG=1\nSTATUS=2 servers, 0 requests in progress"


def expect_pings_then_stop(
    listener: NotifyListener, sender: Logged, process: subprocess.Popen[str], began: float
) -> None:
    """After READY=1: three WATCHDOG=1, each within a deadline; then SIGTERM, STOPPING=1 (with
    pings around it) and exit 0; pings never more often than every half WATCHDOG_USEC."""
    for _ in range(3):
        assert listener.receive(sender, timeout=2.0) == PING
    process.send_signal(signal.SIGTERM)
    pings = 3
    while (message := listener.receive(sender)) != "STOPPING=1":
        assert message == PING
        pings += 1
    assert process.wait(STOP_TIMEOUT) == 0
    after = listener.pending()
    assert set(after) <= {PING}, after
    pings += len(after)
    # Pings at least 0.1 s apart fit at most elapsed / 0.1 + 1 times in the supervisor's life.
    assert pings <= (time.monotonic() - began) / (WATCHDOG_USEC / 2 / 1e6) + 1


def test_watchdog_pings_at_half_of_watchdog_usec(
    start_supervisor: StartSupervisor, path_listener: NotifyListener
) -> None:
    began = time.monotonic()
    supervisor = start_supervisor(
        TWO_SERVERS,
        env={"NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    assert path_listener.receive(supervisor) == ready_message(2, supervisor.pid)
    expect_pings_then_stop(path_listener, supervisor, supervisor.process, began)


def test_watchdog_pings_when_watchdog_pid_is_the_supervisor(
    spawn: Spawn, path_listener: NotifyListener, tmp_path: Path
) -> None:
    """WATCHDOG_PID names the supervisor's own pid: the shell execs into it, same pid."""
    config = tmp_path / "supervisor.toml"
    config.write_text(TWO_SERVERS)
    began = time.monotonic()
    process = spawn(
        [
            "sh",
            "-c",
            'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$0" -m supervisor run -c "$1"',
            sys.executable,
            str(config),
        ],
        {"NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)},
    )
    assert path_listener.receive(process) == ready_message(2, process.pid)
    expect_pings_then_stop(path_listener, process, process.process, began)


def test_no_watchdog_pings_when_watchdog_pid_is_another_process(
    start_supervisor: StartSupervisor, path_listener: NotifyListener
) -> None:
    supervisor = start_supervisor(
        TWO_SERVERS,
        env={
            "NOTIFY_SOCKET": path_listener.address,
            "WATCHDOG_USEC": str(WATCHDOG_USEC),
            "WATCHDOG_PID": str(os.getpid()),  # alive, and not the supervisor
        },
    )
    assert path_listener.receive(supervisor) == ready_message(2, supervisor.pid)
    # Reload after reload for 6 watchdog intervals: only the reloads' notifications come.
    ready_at = monotonic_usec()
    while monotonic_usec() - ready_at < 3 * WATCHDOG_USEC:
        before = monotonic_usec()
        supervisor.signal(signal.SIGHUP)
        path_listener.expect_reloading(supervisor, before)
        assert path_listener.receive(supervisor) == (
            "READY=1\nSTATUS=2 servers, 0 requests in progress; last reload ok"
        )
    supervisor.signal(signal.SIGTERM)
    assert path_listener.receive(supervisor) == "STOPPING=1"
    assert supervisor.wait() == 0
    assert path_listener.pending() == []


# -- socket activation with systemd-socket-activate ------------------------------------------

needs_socket_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian's systemd package)",
)


@dataclass(frozen=True)
class Ports:
    tcp: int  # the activated TCP server, "echo", matched by address
    extra: int  # an activated TCP socket no server wants at start
    named: int  # an activated TCP socket matched by its name, "byname"
    udp: int  # the activated UDP server, "echo-udp", matched by address


def pick_ports() -> Ports:
    """Ports free a moment ago (systemd-socket-activate binds them itself: a race, retried)."""
    tcp: set[int] = set()
    while len(tcp) < 3:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            tcp.add(sock.getsockname()[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        udp = sock.getsockname()[1]
    first, extra, named = sorted(tcp)
    return Ports(first, extra, named, udp)


def activated_config(
    ports: Ports, echo: bool = True, late: bool = False, reuse_port: bool = False
) -> str:
    # systemd-socket-activate passes on no environment (SUPERVISOR_ALLOW_ROOT included): the
    # suite runs as root, and so do these handlers.
    tables = [supervisor_table(allow_root=True)]
    keys: dict[str, TomlValue] = {"reuse_port": True} if reuse_port else {}
    if echo:
        tables.append(
            server_table(
                "echo",
                "LineEchoHandler",
                address=f"tcp://127.0.0.1:{ports.tcp}",
                mode="thread",
                **keys,
            )
        )
    tables += [
        server_table(
            "echo-udp",
            "DatagramEchoHandler",
            address=f"udp://127.0.0.1:{ports.udp}",
            mode="thread",
            **keys,
        ),
        server_table("byname", "LineEchoHandler", mode="thread", **keys),
        server_table("local", "LineEchoHandler", **keys),
    ]
    if late:
        tables.append(
            server_table(
                "late",
                "LineEchoHandler",
                address=f"tcp://127.0.0.1:{ports.extra}",
                mode="thread",
                **keys,
            )
        )
    # No metrics endpoint: the test accounts for every socket the supervisor listens on.
    tables.append(metrics_table(enabled=False))
    return "".join(tables)


@dataclass
class Activated:
    process: LoggedProcess
    ports: Ports
    config: Path
    first: socket.socket  # the connection that made systemd-socket-activate exec
    before_exec: dict[int, str]  # fd -> its /proc link, in systemd-socket-activate


def fd_link(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def activate(spawn: Spawn, config: Path, reuse_port: bool = False) -> Activated:
    """Start the supervisor under two nested systemd-socket-activate and trigger the exec."""
    for _ in range(ATTEMPTS):
        ports = pick_ports()
        config.write_text(activated_config(ports, reuse_port=reuse_port))
        process = spawn(
            [
                "systemd-socket-activate",
                *("-l", f"127.0.0.1:{ports.tcp}"),
                *("-l", f"127.0.0.1:{ports.extra}"),
                *("-l", f"127.0.0.1:{ports.named}"),
                "systemd-socket-activate",
                "--datagram",
                *("-l", f"127.0.0.1:{ports.udp}"),
                "--fdname=echo:extra:byname:echo-udp",
                # (an upgrade hands over to a new process: the test, its parent, would not
                # follow it as systemd does, so it would exec in place otherwise)
                "-E",
                "SUPERVISOR_UPGRADE_MODE=handover",
                sys.executable,
                *("-m", "supervisor", "run", "-c", str(config)),
            ],
            {},
        )
        try:
            process.wait_for_log(rf"^Listening on 127\.0\.0\.1:{ports.named} as 5\.$")
        except AssertionError:
            if process.running():
                raise
            continue  # the outer one could not bind (a port was taken meanwhile): retry
        before_exec = {fd: fd_link(process.pid, fd) for fd in (3, 4, 5)}
        first = socket.create_connection(("127.0.0.1", ports.tcp), timeout=DEADLINE)
        try:
            first.sendall(b"first\n")
            first.shutdown(socket.SHUT_WR)
            process.wait_for_log(READY)
        except (AssertionError, OSError):
            first.close()
            if process.running():
                raise
            continue  # the inner one could not bind: retry
        return Activated(process, ports, config, first, before_exec)
    raise AssertionError(f"systemd-socket-activate failed {ATTEMPTS} times; see the output")


@pytest.fixture
def activated(spawn: Spawn, tmp_path: Path) -> Iterator[Activated]:
    started = activate(spawn, tmp_path / "supervisor.toml")
    with started.first:
        yield started


def bound_sockets(pid: int) -> dict[tuple[socket.SocketKind, int], tuple[int, str]]:
    """(type, local port) -> (fd, /proc link) of each listening TCP and bound UDP socket."""
    found = {}
    for conn in psutil.Process(pid).net_connections(kind="inet4"):
        if conn.type == socket.SOCK_DGRAM or conn.status == psutil.CONN_LISTEN:
            found[(conn.type, conn.laddr.port)] = (conn.fd, fd_link(pid, conn.fd))
    return found


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def udp_exchange(port: int, data: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(DEADLINE)
        sock.sendto(data, ("127.0.0.1", port))
        return sock.recv(65536)


def echoes(port: int, data: bytes = b"hello\n") -> bool:
    return exchange(("127.0.0.1", port), data) == b"('127.0.0.1', %d) %s" % (port, data)


def reload_activated(activated: Activated, config: str) -> None:
    start = len(activated.process.lines)
    activated.config.write_text(config)
    activated.process.process.send_signal(signal.SIGHUP)
    activated.process.wait_for_log(r"reloaded: ", start=start)


@needs_socket_activate
def test_socket_activation_of_tcp_and_udp_across_reloads(activated: Activated) -> None:
    process, ports, pid = activated.process, activated.ports, activated.process.pid
    local_match = process.wait_for_log(r"supervisor\[\d+\]: local: listening on \S+:(\d+) ")
    local = int(local_match.group(1))
    tcp, dgram = socket.SOCK_STREAM, socket.SOCK_DGRAM

    # The connection that triggered the exec waited in the queue and is served.
    assert read_all(activated.first) == b"('127.0.0.1', %d) first\n" % ports.tcp
    assert echoes(ports.tcp)
    assert udp_exchange(ports.udp, b"datagram") == b"echo datagram"
    assert echoes(ports.named)  # "byname", configured on port 0, got its named socket
    assert echoes(local)

    # The same pid, now the supervisor, holds the sockets systemd-socket-activate bound.
    assert psutil.Process(pid).cmdline()[1:4] == ["-m", "supervisor", "run"]
    sockets = bound_sockets(pid)
    assert set(sockets) == {
        (tcp, ports.tcp),
        (tcp, ports.extra),
        (tcp, ports.named),
        (dgram, ports.udp),
        (tcp, local),
    }
    assert sockets[(tcp, ports.tcp)] == (3, activated.before_exec[3])
    assert sockets[(tcp, ports.extra)] == (4, activated.before_exec[4])
    assert sockets[(tcp, ports.named)] == (5, activated.before_exec[5])
    assert sockets[(dgram, ports.udp)][0] == 6
    assert sockets[(tcp, local)][0] > 6  # bound by the supervisor itself
    local_line = process.wait_for_log(rf"local: listening on tcp://127\.0\.0\.1:{local} .*").group(
        0
    )
    assert "inherited" not in local_line
    # The log mentions each activated address once: listening (nothing bound), or unused.
    me = f"supervisor[{pid}]:"
    expected_lines = {
        ports.tcp: f"INFO {me} echo: listening on tcp://127.0.0.1:{ports.tcp} "
        "(inherited from systemd, ",
        ports.udp: f"INFO {me} echo-udp: listening on udp://127.0.0.1:{ports.udp} "
        "(inherited from systemd, ",
        ports.named: f"INFO {me} byname: listening on tcp://127.0.0.1:{ports.named} "
        "(inherited from systemd, ",
        ports.extra: f"WARNING {me} inherited socket tcp://127.0.0.1:{ports.extra} "
        "(name 'extra') matches no server",
    }
    own_lines = [line for line in process.lines if me in line]
    for port, text in expected_lines.items():
        about = [line for line in own_lines if re.search(rf"127\.0\.0\.1:{port}\b", line)]
        assert len(about) == 1, (about, process.log)
        assert f" {text}" in about[0], (text, process.log)

    # An unchanged configuration keeps every inherited socket.
    reload_activated(activated, activated_config(ports))
    assert bound_sockets(pid) == sockets
    assert echoes(ports.tcp)
    assert udp_exchange(ports.udp, b"again") == b"echo again"

    # Without "echo", its socket stays open; "late" takes the unmatched inherited socket.
    reload_activated(activated, activated_config(ports, echo=False, late=True))
    assert bound_sockets(pid) == sockets
    assert echoes(ports.extra)

    # "echo" back: served again from the socket systemd-socket-activate bound, not a new one.
    reload_activated(activated, activated_config(ports, late=True))
    assert bound_sockets(pid) == sockets
    assert echoes(ports.tcp)
    assert echoes(ports.extra)
    assert udp_exchange(ports.udp, b"last") == b"echo last"

    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(STOP_TIMEOUT) == 0
    process.wait_for_log(r"supervisor\[\d+\]: stopped$")


@needs_socket_activate
def test_reuse_port_on_an_inherited_socket_is_one_warning(spawn: Spawn, tmp_path: Path) -> None:
    """systemd-socket-activate sets no SO_REUSEPORT: the servers that ask for it and get an
    inherited socket say, once, where to set it; "local", bound by the supervisor, has it."""
    activated = activate(spawn, tmp_path / "supervisor.toml", reuse_port=True)
    process, ports = activated.process, activated.ports
    with activated.first:
        assert read_all(activated.first) == b"('127.0.0.1', %d) first\n" % ports.tcp
    advice = "set ReusePort=yes in its .socket unit"
    expected = [
        f"WARNING supervisor[{process.pid}]: {name}: reuse_port does not apply to the socket "
        f"systemd passed in ({address}): {advice}"
        for name, address in (
            ("echo", f"tcp://127.0.0.1:{ports.tcp}"),
            ("echo-udp", f"udp://127.0.0.1:{ports.udp}"),
            ("byname", f"tcp://127.0.0.1:{ports.named}"),
        )
    ]

    def warnings() -> list[str]:
        found = [line for line in process.lines if "WARNING" in line and ": reuse_port" in line]
        return [line[line.index("WARNING") :] for line in found]

    assert warnings() == expected, process.log
    reload_activated(activated, activated_config(ports, reuse_port=True))
    assert warnings() == expected, process.log  # not again for a socket it keeps
    # A server added by a reload takes the unmatched inherited socket: said as it does.
    reload_activated(activated, activated_config(ports, late=True, reuse_port=True))
    late = (
        f"WARNING supervisor[{process.pid}]: late: reuse_port does not apply to the socket "
        f"systemd passed in (tcp://127.0.0.1:{ports.extra}): {advice}"
    )
    assert warnings() == [*expected, late], process.log
    assert echoes(ports.tcp)
    assert echoes(ports.extra)


# -- upgrades (upgrade.py) -------------------------------------------------------------------


def stop_upgraded(pid: int) -> None:
    """Stop the supervisor that took over (the test's process handles know only the first)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        process.terminate()
        process.wait(STOP_TIMEOUT)


def took_over(process: LoggedProcess, start: int = 0) -> int:
    """The pid of the supervisor that took over, from its log line."""
    pattern = r"supervisor\[(\d+)\]: upgrade: pid \1 \(version [^)]*\) took over from pid"
    return int(process.wait_for_log(pattern, timeout=60, start=start).group(1))


def test_an_upgrade_moves_mainpid_and_readiness_to_the_new_process(
    start_supervisor: StartSupervisor, path_listener: NotifyListener
) -> None:
    supervisor = start_supervisor(
        TWO_SERVERS, env={"NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": "2000000"}
    )
    assert path_listener.receive(supervisor) == ready_message(2, supervisor.pid)
    assert path_listener.receive(supervisor).startswith("WATCHDOG=1\n")
    supervisor.signal(signal.SIGUSR2)
    new = took_over(supervisor)
    try:
        # The old one names its successor; from then on only the successor speaks.
        assert path_listener.receive(supervisor) == f"MAINPID={new}"
        assert path_listener.receive(supervisor) == ready_message(2, new)
        assert path_listener.receive(supervisor).startswith("WATCHDOG=1\n")  # its own pings
        # The old one, drained. (Not supervisor.wait(): the new one holds the log pipe, and
        # a listener that reads nothing for long would fill up and hold the new one still.)
        assert supervisor.process.wait(STOP_TIMEOUT) == 0
        assert echoes(supervisor_port(supervisor, "echo"))
        assert not [message for message in path_listener.pending() if "STOPPING" in message]
    finally:
        stop_upgraded(new)
    assert path_listener.receive(supervisor) == "STOPPING=1"


def supervisor_port(supervisor: LoggedProcess, name: str) -> int:
    match = supervisor.wait_for_log(rf"{name}: listening on tcp://127\.0\.0\.1:(\d+) ")
    return int(match.group(1))


@needs_socket_activate
def test_an_upgrade_hands_on_the_sockets_systemd_passed_in(activated: Activated) -> None:
    process, ports, pid = activated.process, activated.ports, activated.process.pid
    assert read_all(activated.first) == b"('127.0.0.1', %d) first\n" % ports.tcp
    before = bound_sockets(pid)
    start = len(process.lines)
    load = Load()
    load.stream("echo", ("127.0.0.1", ports.tcp))
    try:
        load.wait_for_answers(3)
        process.process.send_signal(signal.SIGUSR2)
        new = took_over(process, start)
        load.wait_for_answers(3)
    finally:
        load.stop()
    assert load.failures == []  # no connection refused on the inherited socket either
    try:
        assert process.process.wait(STOP_TIMEOUT) == 0  # the old one has let go, and exited
        # The very sockets, inherited ones (the unmatched "extra" one too) and the one the
        # first supervisor bound itself: the same inodes, now in the new process.
        after = bound_sockets(new)
        assert {key: link for key, (_, link) in after.items()} == {
            key: link for key, (_, link) in before.items()
        }
        me = f"supervisor[{new}]:"
        line = process.wait_for_log(rf"{re.escape(me)} echo: listening on \S+ (.*)", start=start)
        assert "inherited from systemd" in line.group(1)
        assert echoes(ports.tcp)
        assert udp_exchange(ports.udp, b"upgraded") == b"echo upgraded"
        # A reload of the new one still finds the inherited sockets.
        reloaded = len(process.lines)
        os.kill(new, signal.SIGHUP)
        process.wait_for_log(r"reloaded: ", start=reloaded)
        assert {key: link for key, (_, link) in bound_sockets(new).items()} == {
            key: link for key, (_, link) in before.items()
        }
        assert echoes(ports.tcp)
    finally:
        stop_upgraded(new)
