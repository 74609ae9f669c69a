"""Privileges, child limits and unix socket files, on real processes (root only).

A live child is held open by tests.handlers:PidHandler (it waits for a line) while psutil and
/proc say what it runs as: real, effective and saved ids, supplementary groups, rlimits, nice.
"""

import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.configs import METRICS_ANY_PORT, TomlValue, server_table, supervisor_table
from tests.conftest import (
    ALLOW_ROOT,
    FORK_SERVER_READY,
    StartSupervisor,
    Supervisor,
    connect,
    finish,
    one_line_error,
    readline,
    run_cli,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to switch users)")

NOBODY = 65534
LIMITS: dict[str, TomlValue] = {
    "rlimit_as": 2048,
    "rlimit_cpu": 30,
    "rlimit_nofile": 100,
    "nice": 7,
}
EXPECTED_LIMITS = {
    resource.RLIMIT_AS: (2048 * 2**20, 2048 * 2**20),
    resource.RLIMIT_CPU: (30, 30),
    resource.RLIMIT_NOFILE: (100, 100),
}
PROC_LIMITS = {  # /proc/PID/limits row names
    resource.RLIMIT_AS: "Max address space",
    resource.RLIMIT_CPU: "Max cpu time",
    resource.RLIMIT_NOFILE: "Max open files",
}
HELD = server_table("held", "PidHandler")


class Identity:
    """What a live process runs as and with."""

    def __init__(self, pid: int) -> None:
        process = psutil.Process(pid)
        self.uids = tuple(process.uids())
        self.gids = tuple(process.gids())
        self.nice = process.nice()
        status = Path(f"/proc/{pid}/status").read_text()
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        self.groups = [int(group) for group in groups.split()[1:]]
        self.rlimits = {which: rlimit(process, which) for which in EXPECTED_LIMITS}


def rlimit(process: psutil.Process, which: int) -> tuple[int, int]:
    """psutil's rlimit (prlimit); /proc/PID/limits where prlimit is not allowed: on another
    user's process, it needs CAP_SYS_RESOURCE, which root lacks in some containers."""
    try:
        return tuple(process.rlimit(which))  # type: ignore[return-value]
    except psutil.AccessDenied:
        pass
    for line in Path(f"/proc/{process.pid}/limits").read_text().splitlines():
        if line.startswith(PROC_LIMITS[which]):
            soft, hard = line[len(PROC_LIMITS[which]) :].split()[:2]
            return tuple(  # type: ignore[return-value]
                resource.RLIM_INFINITY if value == "unlimited" else int(value)
                for value in (soft, hard)
            )
    raise AssertionError(f"no {PROC_LIMITS[which]} in /proc/{process.pid}/limits")


def held_child(supervisor: Supervisor, name: str = "held") -> tuple[socket.socket, int]:
    """A connection to PidHandler and the pid of the child serving it (alive until a line)."""
    sock = connect(supervisor.inet(name))
    return sock, int(readline(sock))


def assert_nobody(identity: Identity) -> None:
    assert identity.uids == (NOBODY, NOBODY, NOBODY)
    assert identity.gids == (NOBODY, NOBODY, NOBODY)
    assert identity.groups == []


# -- a server's own user and its children's limits -------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fork_server"),
    [("fork", True), ("fork", False), ("prefork", True)],
    ids=["fork-server", "supervisor-fork", "prefork-worker"],
)
def test_children_run_as_their_servers_user_with_its_limits(
    start_supervisor: StartSupervisor, mode: str, fork_server: bool
) -> None:
    workers = {"workers": 1} if mode == "prefork" else {}
    supervisor = start_supervisor(
        supervisor_table(fork_server=fork_server)
        + server_table("held", "PidHandler", mode=mode, user="nobody", **LIMITS, **workers)
    )
    sock, pid = held_child(supervisor)
    try:
        child = Identity(pid)
        assert_nobody(child)
        assert child.rlimits == EXPECTED_LIMITS
        assert child.nice == 7
        parent = psutil.Process(pid).ppid()
        forked_by_fork_server = [process.pid for process in supervisor.fork_servers()]
        if mode == "fork" and fork_server:
            assert parent in forked_by_fork_server
        else:
            assert parent == supervisor.pid
        # The supervisor (and its fork server) keep root for the next child's switch.
        for keeper in [supervisor.pid, *forked_by_fork_server]:
            assert tuple(psutil.Process(keeper).uids()) == (0, 0, 0)
            assert psutil.Process(keeper).nice() == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        finish(sock)


def test_limits_apply_without_a_user_switch(start_supervisor: StartSupervisor) -> None:
    """The child stays root (allowed for the suite), with its limits."""
    supervisor = start_supervisor(server_table("held", "PidHandler", **LIMITS))
    sock, pid = held_child(supervisor)
    try:
        child = Identity(pid)
        assert child.uids == (0, 0, 0)
        assert child.rlimits == EXPECTED_LIMITS
        assert child.nice == 7
    finally:
        finish(sock)


# -- the supervisor drops to [supervisor] user -----------------------------------------------------


@pytest.fixture
def world_readable_dir(sockdir: Path) -> Path:
    """A directory the dropped supervisor can still read (its configuration, at a reload)."""
    sockdir.chmod(0o755)
    return sockdir


def nobody_can_run_python() -> bool:
    """Whether user nobody can run this interpreter as it is."""
    try:
        subprocess.run(
            [sys.executable, "-S", "-c", ""], user=NOBODY, group=NOBODY, extra_groups=[], check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


@pytest.fixture
def nobody_wrapper(tmp_path: Path) -> list[str]:
    """A command prefix under which user nobody can run this interpreter (the fork server is
    started as `sys.executable` after the drop). Where a directory on the way to it is closed
    to others (a pyenv under /root, mode 0700), it is shown as mode 0755 in a private mount
    namespace: a tmpfs over it, with the one entry on the way bound back in."""
    if nobody_can_run_python():
        return []
    interpreter = Path(os.path.realpath(sys.executable))
    closed = [parent for parent in interpreter.parents if not parent.stat().st_mode & 0o001]
    if len(closed) != 1 or shutil.which("unshare") is None:
        pytest.skip(f"user nobody cannot run {interpreter}")
    entry = interpreter.relative_to(closed[0]).parts[0]
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    script = (
        'set -e; mount --bind "$1" "$2"; mount -t tmpfs -o mode=0755 tmpfs "$1"; '
        'mkdir "$1/$3"; mount --bind "$2/$3" "$1/$3"; shift 3; exec "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        str(closed[0]),
        str(hidden),
        entry,
    ]


@pytest.fixture
def dropped(world_readable_dir: Path, nobody_wrapper: list[str]) -> Iterator[Supervisor]:
    """A supervisor started as root with [supervisor] user = "nobody", serving."""
    config = world_readable_dir / "supervisor.toml"
    config.write_text(
        supervisor_table(user="nobody", pidfile=f"{world_readable_dir}/run/supervisor.pid")
        + HELD
        + METRICS_ANY_PORT
    )
    supervisor = Supervisor(config, {ALLOW_ROOT: None}, wrapper=nobody_wrapper)
    try:
        yield supervisor.wait_ready()
    finally:
        supervisor.stop()


def test_the_supervisor_drops_to_its_user_and_still_serves_reloads_and_stops(
    dropped: Supervisor,
) -> None:
    dropped.wait_for_log("running as nobody:nogroup")
    assert_nobody(Identity(dropped.pid))
    [fork_server] = dropped.fork_servers()
    assert_nobody(Identity(fork_server.pid))
    sock, pid = held_child(dropped)
    try:
        assert_nobody(Identity(pid))
        assert psutil.Process(pid).ppid() == fork_server.pid
    finally:
        finish(sock)
    # The control socket is the dropped user's: it may use status and reload too.
    control = Path(dropped.config.parent / "run" / "supervisor.sock").stat()
    assert (control.st_uid, stat.S_IMODE(control.st_mode)) == (NOBODY, 0o600)
    # So is the pidfile, which nobody else may even read (a shared lock would block a start).
    pidfile = Path(dropped.config.parent / "run" / "supervisor.pid").stat()
    assert (pidfile.st_uid, stat.S_IMODE(pidfile.st_mode)) == (NOBODY, 0o600)
    for where in (
        ["-c", str(dropped.config)],
        ["--pidfile", str(dropped.config.parent / "run" / "supervisor.pid")],
    ):
        status = run_cli("status", *where)  # (as root: the holder runs as nobody, trusted)
        assert status.returncode == 0, status.stderr

    start = len(dropped.lines)
    dropped.config.write_text(
        dropped.config.read_text().replace('user = "nobody"', 'user = "daemon"')
        + server_table("added", "PidHandler")
    )
    dropped.signal(signal.SIGHUP)
    dropped.wait_for_log(r"reloaded: added added", start=start)
    dropped.wait_for_log(
        r"supervisor.user: changes to \[supervisor\] user and group apply at the next start",
        start=start,
    )
    dropped.wait_for_log(FORK_SERVER_READY, start=start)
    dropped.wait_ready()
    sock, pid = held_child(dropped, "added")
    try:
        assert_nobody(Identity(pid))
    finally:
        finish(sock)
    assert_nobody(Identity(dropped.pid))

    dropped.signal(signal.SIGTERM)
    assert dropped.wait() == 0
    dropped.wait_for_log(r"INFO supervisor\[\d+\]: stopped$", start=start)


def test_a_user_who_cannot_read_the_interpreter_gets_requests_forked_by_the_supervisor(
    world_readable_dir: Path,
) -> None:
    """Dropped to a user who cannot read this Python (a pyenv under /root, mode 0700): the
    fork server cannot start as that user, so the supervisor forks requests itself, with a
    warning; what it needs of the standard library was imported before the drop."""
    if nobody_can_run_python():
        pytest.skip(f"user nobody can run {sys.executable} here")
    config = world_readable_dir / "supervisor.toml"
    server = server_table("held", "tests.plain_handler:PidHandler")
    config.write_text(supervisor_table(user="nobody") + server + METRICS_ANY_PORT)
    supervisor = Supervisor(config, {ALLOW_ROOT: None})
    try:
        supervisor.wait_for_log(r"cannot start the fork server \(.*\); the supervisor forks")
        listening = supervisor.wait_for_log(r"held: listening on tcp://127.0.0.1:(\d+)")
        sock = connect(("127.0.0.1", int(listening[1])))
        pid = int(readline(sock))
        try:
            assert psutil.Process(pid).ppid() == supervisor.pid
            assert_nobody(Identity(pid))
        finally:
            finish(sock)
    finally:
        supervisor.stop()
    assert supervisor.process.returncode == 0
    assert "Traceback" not in supervisor.log


NPROC = 6  # processes user nobody may have: the supervisor, its fork server and 4 children


def first_line(sock: socket.socket) -> bytes:
    """The first line of the answer, or b"" for a connection closed without one (reset, if the
    request was never read)."""
    try:
        return readline(sock)
    except ConnectionResetError:
        return b""


def test_a_fork_that_fails_pauses_the_server_and_it_recovers_by_itself(
    world_readable_dir: Path, nobody_wrapper: list[str]
) -> None:
    """Out of processes (RLIMIT_NPROC for the dropped user, `ulimit -u`): the client whose
    fork failed is closed and the server pauses (its next clients wait in the listen queue),
    with a line per pause rather than per client; once processes are free again it serves
    the clients that waited, by itself."""
    config = world_readable_dir / "supervisor.toml"
    config.write_text(supervisor_table(user="nobody") + HELD + METRICS_ANY_PORT)
    wrapper = ["prlimit", f"--nproc={NPROC}:{NPROC}", "--", *nobody_wrapper]
    supervisor = Supervisor(config, {ALLOW_ROOT: None}, wrapper=wrapper)
    held: list[socket.socket] = []
    waiting: list[socket.socket] = []
    try:
        supervisor.wait_ready()
        address = supervisor.inet("held")
        for _ in range(NPROC + 1):  # children until a fork fails
            sock = connect(address)
            line = readline(sock)
            if not line:
                sock.close()
                break
            held.append(sock)
        assert 0 < len(held) < NPROC, "no fork failed"
        supervisor.wait_for_log(
            r"held: cannot start a process for client \('127.0.0.1', \d+\) \(Resource "
            r"temporarily unavailable\); connection closed, not accepting for 0.1s"
        )
        # 40 more while no process can be forked: paused, then one batch closed per pause.
        waiting = [connect(address) for _ in range(40)]
        for sock in waiting:
            sock.sendall(b"done\n")
        assert [first_line(sock) for sock in waiting[:20]] == [b""] * 20  # closed
        for sock in held:
            finish(sock)
        held.clear()
        served = [first_line(sock) for sock in waiting[20:]]  # those left, once forks work
        supervisor.wait_for_log(r"held: \d+ more requests could not be started while it was paused")
    finally:
        for sock in held + waiting:
            sock.close()
        supervisor.stop()
    assert any(line.strip().isdigit() for line in served), served  # it recovered by itself
    lines = [line for line in supervisor.lines if "could not be started" in line]
    lines += [line for line in supervisor.lines if "cannot start a process" in line]
    assert len(lines) <= 8, "\n".join(lines)  # one or two per pause, not one per client
    pauses = re.findall(r"held: cannot start a process .* not accepting for (\S+)s", supervisor.log)
    assert pauses[:2] == ["0.1", "0.2"]  # doubling while forks keep failing
    assert supervisor.process.returncode == 0


# -- handlers as root ------------------------------------------------------------------------------


def test_running_handlers_as_root_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "supervisor.toml"
    config.write_text(HELD + METRICS_ANY_PORT)
    line = one_line_error(run_cli("run", "-c", str(config), env={ALLOW_ROOT: None}), 78)
    assert line.startswith(f"{config}: supervisor.user: the handlers of servers.held would run")
    assert "allow_root = true" in line


def test_allow_root_lets_them_and_a_reload_cannot_take_it_away_quietly(
    start_supervisor: StartSupervisor,
) -> None:
    supervisor = start_supervisor(supervisor_table(allow_root=True) + HELD, env={ALLOW_ROOT: None})
    start = len(supervisor.lines)
    supervisor.config.write_text(HELD + METRICS_ANY_PORT)
    supervisor.signal(signal.SIGHUP)
    supervisor.wait_for_log(
        r"reload failed, still running the previous configuration: .*: supervisor.user: the "
        r"handlers of servers.held would run as root",
        start=start,
    )
    sock, _ = held_child(supervisor)
    finish(sock)


# -- unix socket files -----------------------------------------------------------------------------


def umask() -> int:
    """This process's umask, which the supervisor inherits."""
    current = os.umask(0o022)
    os.umask(current)
    return current


def permissions(path: Path) -> tuple[int, int, int]:
    info = os.lstat(path)
    return stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid


def test_unix_socket_files_get_their_mode_owner_and_group_also_at_reload(
    start_supervisor: StartSupervisor, sockdir: Path
) -> None:
    stream, datagram = sockdir / "held.sock", sockdir / "dgram.sock"
    files = (
        'socket_mode = 0o660\nsocket_owner = "nobody"\nsocket_group = "nogroup"\n',
        'socket_mode = "0600"\n',
    )
    datagram_server = (
        server_table("dgram", "DatagramEchoHandler", address=f"unixgram://{datagram}")
        + "socket_mode = 0o620\n"
    )

    def config(socket_keys: str) -> str:
        """The server `held` with `socket_keys` (TOML lines), and the datagram server."""
        held = server_table("held", "PidHandler", address=f"unix://{stream}")
        return held + socket_keys + datagram_server

    supervisor = start_supervisor(config(files[0]))
    assert permissions(stream) == (0o660, NOBODY, NOBODY)
    assert permissions(datagram) == (0o620, 0, 0)
    inode = os.lstat(stream).st_ino

    for extra, expected in (
        (files[1], (0o600, 0, 0)),
        ("", (0o777 & ~umask(), 0, 0)),  # as bound, with the supervisor's umask
        (files[0], (0o660, NOBODY, NOBODY)),
    ):
        start = len(supervisor.lines)
        supervisor.config.write_text(config(extra) + METRICS_ANY_PORT)
        supervisor.signal(signal.SIGHUP)
        supervisor.wait_for_log(r"reloaded: changed held", start=start)
        assert permissions(stream) == expected
        assert os.lstat(stream).st_ino == inode  # the very socket, kept
        with connect(str(stream)) as sock:
            assert int(readline(sock)) > 0
            sock.sendall(b"done\n")
            assert readline(sock) == b"bye\n"
