"""systemd.py: notifications to a real datagram socket, the watchdog interval, inherited sockets
(in a child process whose fds 3 and 4 are real sockets), addresses of bound sockets."""

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import systemd
from supervisor.addresses import Address, Scheme
from tests.conftest import ROOT

# How long a test waits for a datagram that must arrive.
DEADLINE = 5.0


@pytest.fixture
def receiver(sockdir: Path) -> Iterator[tuple[socket.socket, str]]:
    """A test-owned notification socket, as systemd's, bound at a temporary path."""
    path = str(sockdir / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(DEADLINE)
        yield sock, path


def assert_nothing_received(sock: socket.socket) -> None:
    """Nothing is queued on `sock` (everything sent to it was sent before this call)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        sock.settimeout(timeout)


# notify


def test_notify_sends_the_exact_message_to_a_path(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    assert systemd.notify("STATUS=serving 3 servers\nREADY=1", {"NOTIFY_SOCKET": path})
    assert sock.recv(4096) == b"STATUS=serving 3 servers\nREADY=1"
    assert_nothing_received(sock)


def test_notify_sends_to_an_abstract_address() -> None:
    name = f"supervisor-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(DEADLINE)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == b"READY=1"


def test_notify_reads_os_environ_by_default(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert systemd.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_notify_without_notify_socket_sends_nothing(
    receiver: tuple[socket.socket, str],
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
) -> None:
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # must not be used: `environ` is given
    assert systemd.notify("READY=1", environ) is False
    assert_nothing_received(sock)


def test_notify_without_notify_socket_in_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_notify_to_a_missing_socket_returns_false(sockdir: Path) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(sockdir / "absent")}) is False


def test_notify_to_an_absent_abstract_address_returns_false() -> None:
    environ = {"NOTIFY_SOCKET": f"@supervisor-test-{uuid.uuid4().hex}"}
    assert systemd.notify("READY=1", environ) is False


# clocks


def test_monotonic_usec_is_clock_monotonic_in_microseconds() -> None:
    before = time.monotonic_ns() // 1000
    value = systemd.monotonic_usec()
    after = time.monotonic_ns() // 1000
    assert before <= value <= after


def test_reloading_message() -> None:
    before = time.monotonic_ns() // 1000
    message = systemd.reloading_message()
    after = time.monotonic_ns() // 1000
    match = re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=(\d+)", message)
    assert match is not None, message
    assert before <= int(match.group(1)) <= after


# watchdog


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "abc"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "1.5"},
        {"WATCHDOG_USEC": " 30000000"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "abc"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""},
    ],
    ids=repr,
)
def test_watchdog_interval_off(environ: dict[str, str]) -> None:
    assert systemd.watchdog_interval(environ) is None


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 15.0),
        ("30000000", "self", 15.0),
        ("1000", None, 0.0005),
        ("3", "self", 0.0000015),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str, pid: str | None, expected: float
) -> None:
    environ = {"WATCHDOG_USEC": usec}
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid())
    assert systemd.watchdog_interval(environ) == pytest.approx(expected)


def test_watchdog_interval_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "20000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == pytest.approx(10.0)
    monkeypatch.delenv("WATCHDOG_USEC")
    assert systemd.watchdog_interval() is None


# listen_fds, in a child process: its fds 3, 4, ... are the sockets given to run_child

CHILD = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys
    from supervisor import systemd

    spec = json.loads(sys.argv[1])
    # Move the passed fds out of the way first, then onto 3, 4, ... as systemd passes them.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
    for fd in spec["fds"]:
        os.close(fd)
    for target, fd in enumerate(high, 3):
        os.dup2(fd, target)
        os.close(fd)
    pid = {"self": os.getpid(), "parent": os.getppid()}.get(spec["pid"], spec["pid"])
    os.environ["LISTEN_PID"] = str(pid)
    os.environ["LISTEN_FDS"] = str(spec["count"])
    if spec["names"] is not None:
        os.environ["LISTEN_FDNAMES"] = spec["names"]
    try:
        found = systemd.listen_fds(unset=spec["unset"])
        error = None
    except OSError as exc:
        found, error = [], str(exc)
    print(json.dumps({
        "error": error,
        "names": [inherited.name for inherited in found],
        "fds": [inherited.socket.fileno() for inherited in found],
        "families": [int(inherited.socket.family) for inherited in found],
        "types": [int(inherited.socket.type) for inherited in found],
        "addresses": [str(systemd.bound_address(inherited.socket)) for inherited in found],
        "inheritable": [os.get_inheritable(3 + index) for index in range(len(high))],
        "open": [
            os.path.exists(f"/proc/self/fd/{3 + index}") for index in range(len(high) + 1)
        ],
        "environ": {
            name: os.environ.get(name) for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
        },
    }))
    for inherited in found:
        inherited.socket.close()
    """
)


def run_child(
    sockets: list[socket.socket],
    pid: str = "self",
    names: str | None = None,
    unset: bool = True,
    count: int | None = None,
) -> dict[str, Any]:
    """Run CHILD with `sockets` as its fds 3, 4, ... and LISTEN_FDS = `count` (default: all)."""
    fds = [sock.fileno() for sock in sockets]
    spec = {"fds": fds, "pid": pid, "names": names, "unset": unset, "count": count or len(fds)}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        pass_fds=fds,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


@pytest.fixture
def tcp_udp() -> Iterator[list[socket.socket]]:
    """A listening TCP socket and a bound UDP socket on loopback, ephemeral ports."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        yield [tcp, udp]


def test_listen_fds_takes_the_passed_sockets(tcp_udp: list[socket.socket]) -> None:
    tcp, udp = tcp_udp
    child = run_child(tcp_udp, names="echo:daytime")
    assert child["error"] is None
    assert child["names"] == ["echo", "daytime"]
    assert child["fds"] == [3, 4]
    assert child["families"] == [socket.AF_INET, socket.AF_INET]
    assert child["types"] == [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    assert child["addresses"] == [
        f"tcp://127.0.0.1:{tcp.getsockname()[1]}",
        f"udp://127.0.0.1:{udp.getsockname()[1]}",
    ]
    assert child["inheritable"] == [False, False]
    assert child["environ"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


@pytest.mark.parametrize(
    ("names", "expected"), [(None, ["", ""]), ("echo", ["echo", ""]), ("", ["", ""])]
)
def test_listen_fds_missing_names_are_empty(
    tcp_udp: list[socket.socket], names: str | None, expected: list[str]
) -> None:
    assert run_child(tcp_udp, names=names)["names"] == expected


def test_listen_fds_can_leave_the_environment(tcp_udp: list[socket.socket]) -> None:
    child = run_child(tcp_udp, names="a:b", unset=False)
    assert child["names"] == ["a", "b"]
    assert child["environ"]["LISTEN_FDS"] == "2"
    assert child["environ"]["LISTEN_FDNAMES"] == "a:b"


def test_listen_fds_with_a_missing_fd_raises_and_leaves_the_others(
    tcp_udp: list[socket.socket],
) -> None:
    child = run_child(tcp_udp, count=3)  # fd 5 is not open in the child
    assert child["error"] is not None
    assert "LISTEN_FDS: fd 5 is not a socket" in child["error"]
    assert child["open"] == [True, True, False]  # fds 3 and 4 were released, not closed
    assert child["environ"]["LISTEN_PID"] is None


def test_listen_fds_for_another_process_takes_nothing(tcp_udp: list[socket.socket]) -> None:
    child = run_child(tcp_udp, pid="parent", names="echo:daytime")
    assert child["names"] == []
    assert child["inheritable"] == [True, True]  # the fds were left alone
    # As sd_listen_fds(1): the variables are removed whatever the outcome.
    assert child["environ"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},
        {"LISTEN_PID": "self"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "-1"},
        {"LISTEN_PID": "self", "LISTEN_FDS": "two"},
        {"LISTEN_PID": "self", "LISTEN_FDS": ""},
        {"LISTEN_PID": "abc", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "", "LISTEN_FDS": "1"},
        {"LISTEN_PID": "1", "LISTEN_FDS": "1"},
    ],
    ids=repr,
)
def test_listen_fds_malformed_or_not_ours(environ: dict[str, str]) -> None:
    """Run in this process: each case must return before touching fd 3."""
    environ = {
        name: str(os.getpid()) if value == "self" else value for name, value in environ.items()
    }
    assert systemd.listen_fds(environ, unset=False) == []


def test_listen_fds_unsets_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")  # not ours: nothing is taken from this process
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "echo")
    assert systemd.listen_fds() == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)


# bound_address and adopt


@pytest.mark.parametrize(
    ("family", "kind", "host", "scheme", "shown"),
    [
        (socket.AF_INET, socket.SOCK_STREAM, "127.0.0.1", "tcp", "127.0.0.1"),
        (socket.AF_INET6, socket.SOCK_STREAM, "::1", "tcp", "[::1]"),
        (socket.AF_INET, socket.SOCK_DGRAM, "127.0.0.1", "udp", "127.0.0.1"),
        (socket.AF_INET6, socket.SOCK_DGRAM, "::1", "udp", "[::1]"),
    ],
)
def test_bound_address_inet(
    family: socket.AddressFamily, kind: socket.SocketKind, host: str, scheme: Scheme, shown: str
) -> None:
    with socket.socket(family, kind) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
        address = systemd.bound_address(sock)
    assert address == Address(scheme, host=host, port=port)
    assert str(address) == f"{scheme}://{shown}:{port}"


@pytest.mark.parametrize(
    ("kind", "scheme"), [(socket.SOCK_STREAM, "unix"), (socket.SOCK_DGRAM, "unixgram")]
)
def test_bound_address_unix(sockdir: Path, kind: socket.SocketKind, scheme: Scheme) -> None:
    path = str(sockdir / "s.sock")
    with socket.socket(socket.AF_UNIX, kind) as sock:
        sock.bind(path)
        address = systemd.bound_address(sock)
    assert address == Address(scheme, path=path)
    assert str(address) == f"{scheme}://{path}"


@pytest.mark.parametrize("bind_to", [None, "\0supervisor-test-abstract"])
def test_bound_address_refuses_unnamed_and_abstract_unix_sockets(bind_to: str | None) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        if bind_to is not None:
            sock.bind(bind_to + uuid.uuid4().hex)
        with pytest.raises(ValueError, match="unnamed or abstract"):
            systemd.bound_address(sock)


def test_bound_address_refuses_other_socket_types() -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock,
        pytest.raises(ValueError, match="unsupported socket type"),
    ):
        systemd.bound_address(sock)


def test_adopt_a_listening_stream_socket() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    os.set_inheritable(sock.fileno(), True)
    listener = systemd.adopt(sock)
    try:
        expected = Address("tcp", host="127.0.0.1", port=sock.getsockname()[1])
        assert listener.address == listener.bound == expected
        assert listener.socket is sock
        assert listener.created_file is None
        assert sock.getblocking() is False
        assert sock.get_inheritable() is False
    finally:
        listener.close()
    assert sock.fileno() == -1


def test_adopt_a_datagram_socket_keeps_it_blocking(sockdir: Path) -> None:
    path = sockdir / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.setblocking(False)
        listener = systemd.adopt(sock)
        assert listener.bound == Address("unixgram", path=str(path))
        assert listener.created_file is None
        assert sock.getblocking() is True
        listener.close()
    assert path.exists()  # systemd owns the file: closing the listener leaves it


@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
@pytest.mark.parametrize("reuse_port", [False, True])
def test_adopt_reads_so_reuseport(kind: socket.SocketKind, reuse_port: bool) -> None:
    """What ReusePort= in a .socket unit set: reload.warn_reuse_port compares it."""
    with socket.socket(socket.AF_INET, kind) as sock:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            sock.listen()
        assert systemd.adopt(sock).reuse_port is reuse_port


def test_adopt_refuses_a_stream_socket_that_is_not_listening() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="not listening"):
            systemd.adopt(sock)
